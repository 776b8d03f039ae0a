"""Divergence tables against direct numpy computations on synthetic per-token scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tokenshift.settings import DivergenceConfig
from tokenshift.tables import (
    divergence_tables,
    entropy_table,
    position_table,
    reallocation_table,
    sparsity_table,
)


@pytest.fixture()
def scores():
    g = np.random.default_rng(0)
    n = 5000
    js = g.exponential(0.002, n) * (g.random(n) < 0.3)
    return pl.DataFrame(
        {
            "js": js,
            "norm_position": g.random(n),
            "entropy_base": g.exponential(0.3, n) + 50 * js,
            "rl_top1_rank_in_base": g.choice([0, 0, 0, 1, 2, 7], n),
            "topk_overlap": g.choice([0.6, 0.8, 1.0], n),
            "p_base_of_rl_top1": g.random(n) * 0.5,
            "p_rl_of_rl_top1": 0.5 + g.random(n) * 0.5,
        }
    )


def test_sparsity_shares_and_percentiles(scores):
    t = sparsity_table(scores)
    js = scores["js"].to_numpy()
    for row in t.filter(pl.col("kind") == "share_below").iter_rows(named=True):
        assert row["share"] == pytest.approx((js < row["js_nats"]).mean())
    p = t.filter(pl.col("kind") == "percentile")
    assert p.height == 101
    np.testing.assert_allclose(p["js_nats"].to_numpy(), np.percentile(js, np.arange(101)), rtol=1e-9, atol=1e-12)


def test_position_bins(scores):
    t = position_table(scores, bins=4)
    pos, js = scores["norm_position"].to_numpy(), scores["js"].to_numpy()
    cut = np.quantile(js, DivergenceConfig().high_js_quantile)
    for row in t.iter_rows(named=True):
        inside = np.minimum(np.floor(pos * 4), 3) == row["bin"]
        assert row["n_positions"] == inside.sum()
        assert row["mean_js"] == pytest.approx(js[inside].mean())
        assert row["share_high_js"] == pytest.approx(((js > cut) & (js > 0))[inside].mean())
    assert t["region"].to_list() == ["start", "middle", "middle", "end"]
    # an absolute cut instead of the quantile: the same for every table, as the paper's fixed thresholds
    fixed = position_table(scores, bins=4, cfg=DivergenceConfig(high_js_cut=0.05))
    for row in fixed.iter_rows(named=True):
        inside = np.minimum(np.floor(pos * 4), 3) == row["bin"]
        assert row["share_high_js"] == pytest.approx((js > 0.05)[inside].mean())


def test_reallocation_over_the_configured_k(scores):
    t = reallocation_table(scores, cfg=DivergenceConfig(rank_k=(1, 2, 10)))
    rank = scores["rl_top1_rank_in_base"].to_numpy()
    got = {r["metric"]: r["value"] for r in t.iter_rows(named=True)}
    for k in (1, 2, 10):
        assert got[f"rl_top1_in_base_top{k}"] == pytest.approx((rank < k).mean())
    assert "rl_top1_in_base_top3" not in got
    with pytest.raises(ValueError, match=r"high_js_cut 0\.9"):
        DivergenceConfig(high_js_cut=0.9)


def test_entropy_table_finds_divergence_at_high_entropy(scores):
    t = entropy_table(scores)
    assert t["n_positions"].sum() == scores.height
    assert t["mean_js"][-1] > t["mean_js"][0]  # built in: entropy grows with JS
    assert t["share_high_js_among_high_entropy"][0] > t["share_high_js_overall"][0]


def test_reallocation_shares(scores):
    t = dict(reallocation_table(scores).iter_rows())
    rank = scores["rl_top1_rank_in_base"].to_numpy()
    assert t["rl_top1_in_base_top1"] == pytest.approx((rank < 1).mean())
    assert t["rl_top1_in_base_top3"] == pytest.approx((rank < 3).mean())
    assert t["rl_top1_rank_in_base>=5"] == pytest.approx((rank >= 5).mean())
    moved = scores["p_rl_of_rl_top1"].to_numpy() - scores["p_base_of_rl_top1"].to_numpy()
    assert t["mean_mass_moved_onto_rl_top1"] == pytest.approx(moved.mean())
    assert sum(v for k, v in t.items() if k.startswith("topk_overlap=")) == pytest.approx(1.0)


def test_tables_stack_sources_with_labels(scores):
    tables = divergence_tables({"base": scores, "rl": scores.head(100)}, {"pair": "p", "dataset": "d"})
    assert set(tables) == {"sparsity", "position", "entropy", "reallocation"}
    for t in tables.values():
        assert set(t["source"]) == {"base", "rl"} and set(t["pair"]) == {"p"}


def test_a_score_table_without_positions_is_refused_naming_it(scores, tmp_path):
    # every response empty or skipped: the tables' quantiles are None, and the stage died in a
    # TypeError traceback; it must say which file holds nothing, and write no table
    from tokenshift.io import InputError
    from tokenshift.tables import SCORE_COLUMNS, write_divergence

    full = scores.with_columns(
        pl.lit("p").alias("problem_id"),
        pl.lit(0).alias("sample_index"),
        pl.int_range(pl.len()).alias("position"),  # one row a position, as the scoring stage writes
        pl.lit(0).alias("token_id"),
        pl.lit("exact").alias("statistic"),
    ).select(list(SCORE_COLUMNS))
    full.write_parquet(tmp_path / "base.parquet")
    full.clear().write_parquet(tmp_path / "rl.parquet")
    paths = {"base": tmp_path / "base.parquet", "rl": tmp_path / "rl.parquet"}
    with pytest.raises(InputError, match=f"{tmp_path / 'rl.parquet'}: no scored positions"):
        write_divergence(paths, tmp_path / "out", pair="p", dataset="d")
    assert not (tmp_path / "out").exists()


def test_divergence_tables_carry_the_scores_statistic_and_refuse_two(scores, tmp_path):
    # top-K scores (scoring.statistic topk:K) must not pass for exact ones, nor be mixed with them
    from tokenshift.io import InputError
    from tokenshift.tables import SCORE_COLUMNS, write_divergence

    def table(path, statistic):
        scores.with_columns(
            pl.lit("p").alias("problem_id"),
            pl.lit(0).alias("sample_index"),
            pl.int_range(pl.len()).alias("position"),
            pl.lit(0).alias("token_id"),
            pl.lit(statistic).alias("statistic"),
        ).select(list(SCORE_COLUMNS)).write_parquet(path)
        return path

    paths = {"base": table(tmp_path / "base.parquet", "topk:50"), "rl": table(tmp_path / "rl.parquet", "topk:50")}
    tables = write_divergence(paths, tmp_path / "out", pair="p", dataset="d")
    assert all(t["statistic"].unique().to_list() == ["topk:50"] for t in tables.values())
    paths["rl"] = table(tmp_path / "rl.parquet", "exact")
    with pytest.raises(
        InputError,
        match=r"different statistics cannot be compared: .*base.parquet holds topk:50, .*rl.parquet holds exact",
    ):
        write_divergence(paths, tmp_path / "out2", pair="p", dataset="d")
    assert not (tmp_path / "out2").exists()


def test_another_datasets_rollouts_and_scores_are_refused_under_this_ones_name(scores, tmp_path):
    """Sixth hostile pass (C3b): dataset toy's rollouts copied over toyb's gave toyb an accuracy table, scores
    and divergence tables of toy's problems, without a word."""
    from helpers import rollouts

    from tokenshift.datasets import dataset_label
    from tokenshift.io import InputError
    from tokenshift.tables import SCORE_COLUMNS, write_accuracy, write_divergence

    problems = tmp_path / "toyb.parquet"
    pl.DataFrame({"problem_id": ["q1"], "question": ["?"], "answer": ["1"], "dataset": ["toyb"]}).write_parquet(
        problems
    )
    assert dataset_label(problems).startswith("toyb@")
    paths = {role: tmp_path / f"{role}.parquet" for role in ("base", "rl")}
    for path in paths.values():  # as tokenshift rollout labels the rollouts of dataset toy's problems
        rollouts(0.5).with_columns(pl.lit("toy@0123456789abcdef").alias("dataset")).write_parquet(path)
    assert write_accuracy(paths, tmp_path / "a.parquet", dataset="toy").height
    with pytest.raises(InputError, match=r"rollouts of dataset toy@0123456789abcdef, given as dataset 'toyb'"):
        write_accuracy(paths, tmp_path / "b.parquet", dataset="toyb")
    with pytest.raises(InputError, match=r"given as dataset '''s"):  # ninth hostile pass (F15): '' skipped the check
        write_accuracy(paths, tmp_path / "b.parquet", dataset="")
    assert not (tmp_path / "b.parquet").exists()
    scored = {}
    for role in ("base", "rl"):
        scored[role] = tmp_path / f"scores_{role}.parquet"
        scores.with_columns(
            pl.lit("q7").alias("problem_id"),
            pl.lit(0).alias("sample_index"),
            pl.int_range(pl.len()).alias("position"),
            pl.lit(0).alias("token_id"),
            pl.lit("exact").alias("statistic"),
            pl.lit(role).alias("source"),
        ).select([*SCORE_COLUMNS, "source"]).write_parquet(scored[role])
    with pytest.raises(InputError, match=rf"scores of 1 problem\(s\) that {problems} does not hold \(e.g. 'q7'\)"):
        write_divergence(scored, tmp_path / "div", pair="p", dataset="toyb", problems=problems)
    assert not (tmp_path / "div").exists()
    # thirteenth hostile pass (K7): dataset toyb's problems given with another dataset's name labelled every table so
    with pytest.raises(InputError, match=r"the problems of dataset toyb, given with --dataset 'math500'"):
        write_divergence(scored, tmp_path / "div", pair="p", dataset="math500", problems=problems)
    assert not (tmp_path / "div").exists()
    # seventh hostile pass (C3): a rollout table given as the problems (it has problem ids) dropped the toy's
    # decision-point table without a word
    with pytest.raises(InputError, match=rf"^{paths['base']}: has no column 'question' \(expected a problems table"):
        write_divergence(scored, tmp_path / "div", pair="p", dataset="toyb", problems=paths["base"])
    assert not (tmp_path / "div").exists()


def test_a_wrong_dataset_flag_is_not_blamed_on_the_workflows_rollouts(tmp_path, monkeypatch):
    """Ninth hostile pass leftover: `tokenshift accuracy --dataset toyb` given dataset toy's rollouts, in a
    workflow's folder, said the rollouts "changed after the job that made it finished" and told the user to
    force their job: the flag was what was wrong. The hint is given only for the workflow's own file of that
    dataset; elsewhere the error says the flag may be the mistake."""
    from helpers import made_by_a_run, rollouts

    from tokenshift.io import InputError
    from tokenshift.tables import write_accuracy

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".snakemake").mkdir()
    for dataset in ("toy", "toyb"):
        for role in ("base", "rl"):
            path = tmp_path / "results" / "p" / dataset / "rollouts" / f"{role}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            rollouts(0.5).with_columns(pl.lit("toy@0123456789abcdef").alias("dataset")).write_parquet(path)

    def accuracy(folder, dataset):
        paths = {role: Path("results", "p", folder, "rollouts", f"{role}.parquet") for role in ("base", "rl")}
        with pytest.raises(InputError) as refused:
            write_accuracy(paths, tmp_path / "a.parquet", dataset=dataset)
        return str(refused.value)

    # toy's own rollouts, given as toyb's: the flag is wrong, nothing to re-make
    said = accuracy("toy", "toyb")
    assert said.endswith(", or `--dataset` naming theirs") and "forcerun" not in said
    # toyb's place holds toy's rollouts, but no run made them there: no job to force (F9)
    assert "forcerun" not in accuracy("toyb", "toyb")
    # a run made toyb's rollouts, as its job left them: nothing to make again (K6)
    made = [tmp_path / "results" / "p" / "toyb" / "rollouts" / f"{role}.parquet" for role in ("base", "rl")]
    made_by_a_run(tmp_path, *(str(m.relative_to(tmp_path)) for m in made))
    assert "forcerun" not in accuracy("toyb", "toyb")
    # since changed: the hint says how to make them again
    for m in made:
        m.write_bytes(m.read_bytes())
    said = accuracy("toyb", "toyb")
    assert said.endswith("--forcerun results/p/toyb/rollouts/base.parquet`"), said
    assert not (tmp_path / "a.parquet").exists()


def test_a_tables_csv_copy_holds_its_rows_and_each_list_as_json(tmp_path):
    """Issue 28.6: what a spreadsheet or R reads, the same rows and columns; a list column's cells are JSON."""
    import json

    from tokenshift.tables import csv_copy

    table = pl.DataFrame(
        {
            "policy": ["js", "random"],
            "accuracy": [0.75, float("nan")],
            "n": [4, 5],
            "dense_accuracy": [[0.5, 0.75], None],
        }
    )
    table.write_parquet(tmp_path / "t.parquet")
    csv_copy(tmp_path / "t.parquet", tmp_path / "t.csv")
    back = pl.read_csv(tmp_path / "t.csv")
    assert back.columns == table.columns and back.height == table.height
    assert back.drop("dense_accuracy").equals(table.drop("dense_accuracy"))
    assert [None if v is None else json.loads(v) for v in back["dense_accuracy"]] == [[0.5, 0.75], None]


def test_a_csv_copy_writes_bytes_as_hex_and_durations_as_iso_text(tmp_path):
    # eighth hostile pass: a polars ComputeError traceback ("cannot be written to CSV")
    import datetime

    from tokenshift.tables import csv_copy

    table = pl.DataFrame({"raw": [b"\x02\xff", None], "took": [datetime.timedelta(seconds=3), None]})
    table.write_parquet(tmp_path / "t.parquet")
    csv_copy(tmp_path / "t.parquet", tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines() == ["raw,took", "02ff,PT3S", ","]
    # seventeenth pass: inside a list or struct, bytes, dates and decimals were json's TypeError traceback
    import decimal

    nested = pl.DataFrame(
        {
            "raws": [[b"\xff"]],
            "days": [[datetime.date(2020, 1, 1)]],
            "prices": pl.Series([[decimal.Decimal("1.5")]], dtype=pl.List(pl.Decimal(4, 1))),
            "kv": [{"x": b"\x01"}],
        }
    )
    nested.write_parquet(tmp_path / "n.parquet")
    csv_copy(tmp_path / "n.parquet", tmp_path / "n.csv")
    assert pl.read_csv(tmp_path / "n.csv").row(0) == ('["ff"]', '["2020-01-01"]', '["1.5"]', '{"x": "01"}')


def test_a_csv_copy_writes_a_text_cell_a_spreadsheet_would_run_as_text(tmp_path):
    """Ninth hostile pass (F14): a cell beginning with =, +, -, @, a tab or a carriage return (a token, or a
    name from a stranger's config) is a formula to a spreadsheet; the copy writes it after an apostrophe."""
    from tokenshift.tables import csv_copy

    texts = ['=HYPERLINK("http://x")', "+1", "-", "@SUM(A1)", "\tx", "\r=1", "a=b", " =1", "", None]
    table = pl.DataFrame({"token": texts, "kind": pl.Series(texts, dtype=pl.Categorical), "x": [-1.5] * 10})
    table.write_parquet(tmp_path / "t.parquet")
    csv_copy(tmp_path / "t.parquet", tmp_path / "t.csv")
    back = pl.read_csv(tmp_path / "t.csv", schema=table.schema | {"kind": pl.String})
    expected = ['\'=HYPERLINK("http://x")', "'+1", "'-", "'@SUM(A1)", "'\tx", "'\r=1", "a=b", " =1", "", None]
    assert back["token"].to_list() == expected and back["kind"].to_list() == expected
    assert back["x"].to_list() == [-1.5] * 10  # numbers stay numbers
    assert pl.read_parquet(tmp_path / "t.parquet")["token"].to_list() == texts  # the table itself is untouched


def test_a_csv_copy_escapes_full_width_formula_signs_and_column_names_too(tmp_path):
    """Eleventh hostile pass, noted: a full-width ＝ (what an East Asian input method types) and a column name
    are read by some spreadsheets as formulas too."""
    from tokenshift.tables import csv_copy

    texts = ["＝SUM(A1)", "＋1", "－1", "＠A1", "a＝b"]
    pl.DataFrame({"=x": texts, "y": [1] * 5}).write_parquet(tmp_path / "t.parquet")
    csv_copy(tmp_path / "t.parquet", tmp_path / "t.csv")
    back = pl.read_csv(tmp_path / "t.csv")
    assert back.columns == ["'=x", "y"]
    assert back["'=x"].to_list() == ["'＝SUM(A1)", "'＋1", "'－1", "'＠A1", "a＝b"]


def test_every_divergence_table_the_workflow_declares_has_its_builder_and_no_other():
    from tokenshift.registry import DIVERGENCE_TABLES
    from tokenshift.tables import DIVERGENCE_BUILDERS

    assert tuple(DIVERGENCE_BUILDERS) == DIVERGENCE_TABLES


def test_a_rollout_table_of_two_models_is_refused(tmp_path):
    """Ninth hostile pass (F15): a rollout table whose `model` column names two checkpoints (another model's
    rows gathered in) was graded as one model's."""
    from helpers import rollouts

    from tokenshift.io import InputError
    from tokenshift.tables import write_accuracy

    paths = {role: tmp_path / f"{role}.parquet" for role in ("base", "rl")}
    for role, path in paths.items():
        table = rollouts(0.5)
        models = pl.Series([f"{role}@0123"] * (table.height - 1) + ["other@4567"])
        table.with_columns(models.alias("model")).write_parquet(path)
    with pytest.raises(
        InputError, match=r"base.parquet: rollouts of 2 models \(base@0123, other@4567\): expected the base"
    ):
        write_accuracy(paths, tmp_path / "a.parquet")
    assert not (tmp_path / "a.parquet").exists()
