"""Tables spoiled as a careless copy or a hostile hand would (the second hostile pass of issue 24): a
column of another type, a row given twice, a value no stage writes. Each is refused in one line naming the
file, before any result is written, where it was a traceback or, worse, a silently wrong number."""

from __future__ import annotations

import polars as pl
import pytest
from helpers import cli, cross_run, cross_table, fake_scores, one_line_error, rollouts

from tokenshift.io import InputError
from tokenshift.registry import DIVERGENCE_TABLES
from tokenshift.settings import AccuracyConfig
from tokenshift.tables import (
    TABLES,
    accuracy_table,
    divergence_tables,
    read_table,
    write_accuracy,
    write_crosssample_table,
    write_divergence,
)


def spoiled(table: pl.DataFrame, how: str, column: str) -> pl.DataFrame:
    if how == "as text":
        return table.with_columns(pl.col(column).cast(pl.String))
    assert how == "twice"
    return pl.concat([table, table.head(1)])


@pytest.fixture(scope="module")
def good_tables():
    """Every table of ``TABLES`` as its real builder makes it (training shifts: as their writer's rows)."""
    from tokenshift.toy.training import advantage_tables

    div = divergence_tables({"base": fake_scores(), "rl": fake_scores()}, {"pair": "toy", "dataset": "toy"})
    evals = pl.DataFrame(
        [
            {"variant": v, "seed": s, "step": t, "problem_id": f"q{i}", "correct": float((i + s + t) % 3 == 0)}
            for v in ("none", "js")
            for s in (0, 1)
            for t in (0, 5)
            for i in range(6)
        ]
    )
    shifts = pl.DataFrame(
        {
            "step": [0, 20, 40],
            "share_js_below_1e-3": [1.0, 0.9, 0.85],
            "share_js_above_1e-2": [0.0, 0.02, 0.04],
            "top5_precision": [float("nan"), 0.4, 0.5],
            "base_rate": [0.1, 0.1, 0.1],
        }
    )
    return {
        **{name: div[name] for name in DIVERGENCE_TABLES if name in TABLES},
        "accuracy": accuracy_table(
            {"base": rollouts(0.4), "rl": rollouts(0.75)}, labels={"pair": "toy", "dataset": "toy"}
        ),
        "crosssample": cross_table(),
        **advantage_tables(evals),
        "training_shifts": shifts,
    }


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_a_figure_or_the_report_reads_is_checked_by_kind_and_key(good_tables, name, tmp_path):
    columns, key = TABLES[name]
    path = tmp_path / f"{name}.parquet"
    good_tables[name].write_parquet(path)
    read_table(path, name, "the table")  # as its builder writes it
    # a column of each kind that is not text, as text; then the row key given twice
    column = next(c for c, kind in columns.items() if not kind.startswith("string") and c in good_tables[name].columns)
    for how, needle in (("as text", f"column {column!r} holds String"), ("twice", f"share their {', '.join(key)}")):
        spoiled(good_tables[name], how, column).write_parquet(path)
        with pytest.raises(InputError, match=f"^{path}: .*{needle}"):
            read_table(path, name, "the table")


def test_the_report_and_the_figures_read_every_table_through_its_check(good_tables, tmp_path):
    """The report's and the figure stage's readers, on a results folder of real tables with one spoiled."""
    from helpers import figure_tables, report_inputs

    from tokenshift.plots.draw import draw_pair_figures
    from tokenshift.report import load_result

    results = tmp_path / "results" / "toy" / "toy"
    (results / "divergence").mkdir(parents=True)
    for name in DIVERGENCE_TABLES:
        good_tables.get(name, good_tables["sparsity"]).write_parquet(results / "divergence" / f"{name}.parquet")
    good_tables["accuracy"].write_parquet(results / "accuracy.parquet")
    good_tables["crosssample"].write_parquet(results / "crosssample.parquet")
    for target, column in (("accuracy.parquet", "value"), ("crosssample.parquet", "accuracy")):
        table = pl.read_parquet(results / target)
        table.with_columns(pl.col(column).cast(pl.String)).write_parquet(results / target)
        for reader in (
            lambda: load_result(report_inputs(results)),
            lambda: draw_pair_figures(figure_tables(results), tmp_path / "figures"),
        ):
            with pytest.raises(InputError, match=f"{results / target}: column '{column}' holds String"):
                reader()
        table.write_parquet(results / target)
    # third hostile pass: a report with a role missing (KeyError, and a summary.json left behind) or a share past 1
    accuracy = pl.read_parquet(results / "accuracy.parquet")
    for spoiled, needle in (
        (accuracy.filter(pl.col("role") == "base"), "holds roles \\['base'\\]"),
        (accuracy.with_columns(pl.col("value") * 2), "base avg@4 is .* expected a share in \\[0, 1\\] inside its CI"),
    ):
        spoiled.write_parquet(results / "accuracy.parquet")
        with pytest.raises(InputError, match=f"^{results / 'accuracy.parquet'}: {needle}"):
            load_result(report_inputs(results))
    accuracy.write_parquet(results / "accuracy.parquet")
    # seventh hostile pass (C5): another pair's divergence table copied in was summarised as this pair's
    position = pl.read_parquet(results / "divergence" / "position.parquet")
    position.with_columns(pl.lit("toy-sft").alias("pair")).write_parquet(results / "divergence" / "position.parquet")
    for reader in (
        lambda: load_result(report_inputs(results)),
        lambda: draw_pair_figures(figure_tables(results), tmp_path / "figures"),
    ):
        with pytest.raises(InputError, match=f"^{results / 'divergence' / 'position.parquet'}: holds pair 'toy-sft', "):
            reader()
    position.write_parquet(results / "divergence" / "position.parquet")
    from tokenshift.report import build_report

    draw_pair_figures(figure_tables(results), results / "figures")
    with pytest.raises(InputError, match=r"^--kind nosuch=\.\.\.: no such pair among the results"):
        build_report(
            [report_inputs(results)],
            kinds={"nosuch": "sft"},
            html_out=tmp_path / "r.html",
            json_out=tmp_path / "s.json",
        )
    assert not (tmp_path / "s.json").exists()


# --- the stages' own inputs ------------------------------------------------------------------


def test_rollouts_with_a_row_twice_a_lost_sample_or_other_problems_are_refused(tmp_path):
    """Each changed avg@n or pass@k silently before: a row counted twice, a problem's sample lost, all of
    them (pass@4 silently left out), or the two models rolled out on other problems."""
    good = rollouts(0.5, n_problems=6)
    cases = {
        "twice": (pl.concat([good, good.head(1)]), "share their problem_id, sample_index"),
        "lost": (good.filter(~((pl.col("problem_id") == "q2") & (pl.col("sample_index") == 1))), "problem 'q2'"),
        "all-lost": (good.filter(pl.col("sample_index") < 3), "3 samples per problem, too few for pass@4"),
        "other-problems": (good.filter(pl.col("problem_id") != "q5"), "holds other problems"),
        # third hostile pass: the two models graded by two rules, or rolled out over two versions of the dataset
        "lenient": (good.with_columns(grading=pl.lit("lenient")), "column 'grading' holds \\['lenient'\\]"),
        "version": (good.with_columns(dataset_version=pl.lit("w")), "column 'dataset_version' holds \\['w'\\]"),
    }
    good = good.with_columns(grading=pl.lit("strict"))
    (tmp_path / "good.parquet").write_bytes(b"")
    good.write_parquet(tmp_path / "good.parquet")
    for name, (table, needle) in cases.items():
        table.write_parquet(tmp_path / f"{name}.parquet")
        with pytest.raises(InputError, match=needle) as e:
            write_accuracy(
                {"base": tmp_path / "good.parquet", "rl": tmp_path / f"{name}.parquet"},
                tmp_path / "accuracy.parquet",
                cfg=AccuracyConfig(pass_k=(1, 4)),
            )
        assert str(e.value).startswith(str(tmp_path / f"{name}.parquet")), name
    assert not (tmp_path / "accuracy.parquet").exists()


def test_gathering_a_part_twice_parts_of_two_runs_or_rows_twice_is_refused(tmp_path):
    """Third hostile pass: each made a table with rows twice (or another model's rows), exit 0."""
    from tokenshift.sharding import gather_parts, write_part

    table = rollouts(0.5, n_problems=4).with_columns(position=pl.col("sample_index"))
    parts = {}
    for role in ("base", "rl"):
        for i in (1, 2):
            parts[role, i] = tmp_path / f"{role}.parts" / f"{i}-of-2.parquet"
            parts[role, i].parent.mkdir(exist_ok=True)
            mine = ["q0", "q1"] if i == 1 else ["q2", "q3"]
            write_part(table.filter(pl.col("problem_id").is_in(mine)), parts[role, i])
    assert gather_parts([parts["base", 1], parts["base", 2]], tmp_path / "ok.parquet").equals(table)
    for given, needle in (
        ([parts["base", 1], parts["base", 1]], "given twice"),
        ([parts["base", 1]], "expected 1-of-n to n-of-n of one run"),  # a part lost
        ([parts["base", 1], parts["rl", 1]], "expected 1-of-n to n-of-n of one run"),  # the two models' parts
    ):
        with pytest.raises(InputError, match=needle):
            gather_parts(given, tmp_path / "out.parquet")
    twice = tmp_path / "twice" / "1-of-1.parquet"
    twice.parent.mkdir()
    write_part(pl.concat([table, table.head(1)]), twice)
    key = ["problem_id", "sample_index", "position"]
    with pytest.raises(InputError, match=r"two rows have the same --sort-by problem_id, sample_index, position \{"):
        gather_parts([twice], tmp_path / "out.parquet", sort_by=key)
    assert not (tmp_path / "out.parquet").exists()
    # fourteenth hostile pass (L8): a sort key that does not tell rows apart was blamed on a row held twice, printed
    # whole; the message gives the key's values alone
    with pytest.raises(
        InputError, match=r"same --sort-by problem_id \{'problem_id': 'q0'\}: expected .* tell its rows"
    ):
        gather_parts([parts["base", 1], parts["base", 2]], tmp_path / "out.parquet", sort_by=["problem_id"])


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda t: pl.concat([t, t.head(1)]), "share their problem_id, sample_index"),  # n_samples doubled
        (lambda t: t.with_columns(pl.lit("sideways").alias("direction")), "column 'direction' holds 'sideways'"),
        (lambda t: t.with_columns(pl.lit("budget-7").alias("budget")), "column 'budget' holds 'budget-7'"),
        (lambda t: t.with_columns(pl.lit("bogus").alias("policy")), "column 'policy' holds 'bogus'"),
        # third hostile pass: well-typed, and the table's numbers were wrong with exit 0
        (lambda t: t.filter(pl.col("problem_id") != "q3"), "other samples than .*good.parquet \\(4 missing"),
        (lambda t: t.filter(pl.col("sample_index") != 3), "other samples than"),
        (lambda t: t.with_columns(pl.lit("1").alias("budget")), "switched 2 tokens, past its budget 1"),
        (
            lambda t: pl.concat([t, t.with_columns(pl.lit("reverse").alias("direction"), pl.col("sample_index") + 4)]),
            "'direction' holds 2 values",
        ),
        (lambda t: t.with_columns(pl.lit(float("nan")).alias("threshold")), "threshold is NaN"),
        (
            lambda t: t.with_columns(pl.lit("sample").alias("injection"), pl.lit(0.5).alias("gamma")),
            "injection sample\\) with gamma 0.5",
        ),
        # fifteenth hostile pass (M8): an IndexError, a TypeError and a polars error in the table's build
        (
            lambda t: t.with_columns(pl.lit([], dtype=pl.List(pl.Boolean)).alias("correct_by_budget")),
            "correct_by_budget is empty",
        ),
        (lambda t: t.with_columns(pl.lit("yes").alias("correct_by_budget")), "column 'correct_by_budget' "),
        (lambda t: t.with_columns(pl.lit("3").alias("switched_positions")), "column 'switched_positions' "),
    ],
    ids=[
        "twice",
        "direction",
        "budget",
        "policy",
        "lost-problem",
        "lost-sample",
        "relabelled",
        "two-runs",
        "nan",
        "gamma",
        "empty-grades",
        "string-grades",
        "string-positions",
    ],
)
def test_a_cross_sampling_run_of_no_stage_is_refused_naming_it(change, needle, tmp_path):
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    cross_run("forward", "js", "0", 0.4, 0).write_parquet(good)
    change(cross_run("forward", "js", "2", 0.6, 2)).write_parquet(bad)
    with pytest.raises(InputError, match=f"^{bad}: .*{needle}"):
        write_crosssample_table([good, bad], tmp_path / "t.parquet", pair="toy", dataset="toy")
    assert not (tmp_path / "t.parquet").exists()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda t: t.with_columns(pl.lit(float("nan")).alias("js")), "column 'js' holds NaN or infinity"),
        (lambda t: t.with_columns(pl.col("position") - 5), "column 'position' holds -5"),
        (lambda t: pl.concat([t, t.head(3)]), "share their problem_id, sample_index, position"),
        (lambda t: t.with_columns(pl.col("js").cast(pl.String)), "column 'js' holds String"),
        # third hostile pass: well-typed, and every table was wrong with exit 0
        (lambda t: t.with_columns(source=pl.lit("base")), "holds scores of 'base' responses, given as the 'rl'"),
        (lambda t: t.with_columns(-pl.col("js")), "js runs from .* outside \\[0, ln 2\\]"),
        (lambda t: t.with_columns(pl.col("js") * 100 + 0.7), "outside \\[0, ln 2\\]"),
        (lambda t: t.with_columns(pl.col("norm_position") + 1), "norm_position runs from"),
        # a position lost from every response (the third pass): each share silently over fewer positions
        (lambda t: t.filter(pl.col("position") != 3), "holds 9 positions from 0 to 9, 6 response"),
        (lambda t: t.filter(pl.col("position") != 0), "holds 9 positions from 1 to 9"),
        # eighth hostile pass: a TypeError sorting the responses' sources
        (
            lambda t: t.with_columns(source=pl.when(pl.col("position") == 0).then(None).otherwise(pl.col("source"))),
            "column 'source' is null in 6 of 60 rows",
        ),
    ],
    ids=[
        "nan-js",
        "negative-position",
        "twice",
        "js-as-text",
        "swapped",
        "negative-js",
        "js-past-ln2",
        "position",
        "gap",
        "no-first",
        "null-source",
    ],
)
def test_scores_of_no_scoring_stage_are_refused_by_the_divergence_stage(change, needle, tmp_path):
    good, bad = tmp_path / "base.parquet", tmp_path / "rl.parquet"
    scores = fake_scores(n_resp=6, length=10).with_columns(token_id=pl.col("position"), p_base_of_rl_top1=0.5)
    scores.with_columns(source=pl.lit("base")).write_parquet(good)
    change(scores.with_columns(source=pl.lit("rl"))).write_parquet(bad)
    with pytest.raises(InputError, match=f"^{bad}: .*{needle}"):
        write_divergence({"base": good, "rl": bad}, tmp_path / "divergence", pair="t", dataset="d")
    assert not (tmp_path / "divergence").exists()


def test_toy_problems_of_another_type_or_operation_are_refused_naming_the_file(tmp_path):
    from tokenshift.datasets import read_toy_problems

    good = pl.DataFrame({"problem_id": ["a", "b"], "toy_first": [3, 4], "toy_ops": [["+2"], ["-1", "+5"]]})
    good = good.with_columns(toy_max_total=pl.lit(99))
    path = tmp_path / "problems.parquet"
    good.write_parquet(path)
    assert read_toy_problems(path).height == 2
    for table, needle in (
        (good.with_columns(pl.col("toy_first").cast(pl.String)), "column 'toy_first' holds String"),
        (good.with_columns(toy_ops=pl.lit(["*2"])), "column 'toy_ops' holds '\\*2'"),
        (
            good.with_columns(toy_ops=pl.lit([1, 2])),
            "column 'toy_ops' holds List\\(Int64\\), where a list\\[string\\] was",
        ),
    ):
        table.write_parquet(path)
        with pytest.raises(InputError, match=f"^{path}: {needle}"):
            read_toy_problems(path)


def test_an_advantage_run_of_another_type_given_twice_or_relabelled_is_refused(tmp_path):
    from tokenshift.toy.training import read_runs

    def run(variant, seed):
        return pl.DataFrame(
            {"step": [0, 0, 5, 5], "problem_id": ["a", "b", "a", "b"], "correct": [0.0, 0.5, 0.5, 1.0]}
        ).with_columns(variant=pl.lit(variant), seed=pl.lit(seed, dtype=pl.Int32))

    paths = {}
    for v, s in (("none", 0), ("js", 0)):
        paths[v, s] = tmp_path / f"{v}-{s}.parquet"
        run(v, s).write_parquet(paths[v, s])
    assert read_runs(list(paths.values())).height == 8
    bad = tmp_path / "bad.parquet"
    for table, needle in (
        (run("js", 0).with_columns(pl.col("correct").cast(pl.String)), "column 'correct' holds String"),
        (run("js", 0).with_columns(pl.col("seed").cast(pl.String)), "column 'seed' holds String"),
        (run("jss", 0), "holds the weighting 'jss'"),
        (run("none", 0), f"the run none seed 0, as {paths['none', 0]}"),  # a js run relabelled none
        (pl.concat([run("js", 1), run("topq", 1)]), "holds the runs"),
        # third hostile pass: a share doubled, and a seed relabelled, gave a table with exit 0
        (run("js", 0).with_columns(pl.col("correct") * 2), "column 'correct' runs from 0 to 2"),
        (run("js", 2), "weighting js was run with seeds \\[2\\], weighting none with \\[0\\]"),
    ):
        table.write_parquet(bad)
        with pytest.raises(InputError, match=f"^{bad}: {needle}"):
            read_runs([paths["none", 0], bad])


def test_the_explorer_refuses_candidates_of_another_type(tmp_path):
    from tokenshift.explorer import CANDIDATE_KINDS
    from tokenshift.io import read_parquet

    path = tmp_path / "scores.parquet"
    pl.DataFrame({"top_ids_base": [[1, 2]], "top_probs_base": [["0.5", "0.2"]]}).write_parquet(path)
    with pytest.raises(
        InputError, match=f"^{path}: column 'top_probs_base' holds List\\(String\\), where a list\\[finite\\]"
    ):
        read_parquet(path, "scores", {c: k for c, k in CANDIDATE_KINDS.items() if c.endswith("_base")})


def test_crosssample_with_scores_of_text_or_nan_names_the_scores(make_checkpoint, tmp_path):
    """Through the command: a js percentile over scores whose js is text, or NaN everywhere, was a traceback
    and 'js threshold nan', naming no file."""
    from tokenshift.datasets import DatasetSpec, prepare_dataset

    problems = tmp_path / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=2), problems)
    base, rl = make_checkpoint("base"), make_checkpoint("rl", seed=1)
    scores = fake_scores(n_resp=2, length=4)
    for name, bad, needle in (
        ("text", scores.with_columns(pl.col("js").cast(pl.String)), "column 'js' holds String"),
        ("nan", scores.with_columns(pl.lit(float("nan")).alias("js")), "js is NaN at 8 of 8 positions"),
    ):
        path = tmp_path / f"{name}.parquet"
        bad.write_parquet(path)
        r = cli(
            ["crosssample", "--base", str(base), "--rl", str(rl), "--dataset", str(problems)]
            + ["--direction", "forward", "--policy", "js", "--budget", "2", "--percentile", "90"]
            + ["--scores", str(path), "--out", str(tmp_path / "o.parquet")]
        )
        one_line_error(r, f"{path}: ", needle)


def test_a_run_given_twice_or_as_its_own_extrapolation_is_refused_naming_it(tmp_path):
    """Seventh hostile pass (C4): a grid run given again as the extrapolation run was a second row of itself."""
    run = tmp_path / "budget-1.parquet"
    cross_run("forward", "js", "1", 0.6, 1).write_parquet(run)
    (tmp_path / "again").symlink_to(run)
    for runs, beside in (([run], [run]), ([run, tmp_path / "again"], [])):
        with pytest.raises(InputError, match=f"^{runs[-1] if not beside else run}: given twice"):
            write_crosssample_table(runs, tmp_path / "t.parquet", pair="toy", dataset="toy", extrapolation=beside)
    assert not (tmp_path / "t.parquet").exists()


def test_a_run_made_under_other_settings_is_refused_in_the_cross_sampling_table(tmp_path):
    """Seventh hostile pass (X1), for cross-sampling: a run copied in from a study run otherwise."""
    made = {"a": "0" * 16, "b": "f" * 16}
    paths = []
    for budget, label in (("0", "a"), ("2", "a"), ("4", "b")):
        paths.append(tmp_path / f"budget-{budget}.parquet")
        run = cross_run("forward", "js", budget, 0.5, int(budget))
        run.with_columns(pl.lit(made[label]).alias("settings")).write_parquet(paths[-1])
    write_crosssample_table(paths[:2], tmp_path / "t.parquet", pair="toy", dataset="toy")
    with pytest.raises(InputError, match=f"^{paths[2]}: column 'settings' holds \\['f+'\\], .* made under other"):
        write_crosssample_table(paths, tmp_path / "t2.parquet", pair="toy", dataset="toy")
    assert not (tmp_path / "t2.parquet").exists()


def test_a_row_that_does_not_say_what_made_it_is_refused(tmp_path):
    """Eighth hostile pass (m5): a null model or settings label passed every comparison of what made the rows."""
    base, out = tmp_path / "base.parquet", tmp_path / "accuracy.parquet"
    good = rollouts(0.5, n_problems=6).with_columns(settings=pl.lit("a" * 16))
    good.with_columns(model=pl.lit("toy-base@0")).write_parquet(base)
    for column in ("model", "settings"):
        bad = tmp_path / f"null-{column}.parquet"
        labelled = good.with_columns(model=pl.lit("toy-rl@1"))
        first = pl.when(pl.col("sample_index") == 0).then(None).otherwise(pl.col(column)).alias(column)
        labelled.with_columns(first).write_parquet(bad)
        with pytest.raises(InputError, match=f"^{bad}: column '{column}' is null in 6 of 24 rows"):
            write_accuracy({"base": base, "rl": bad}, out, cfg=AccuracyConfig(pass_k=(1, 4)))
    assert not out.exists()
    runs = [tmp_path / "budget-0.parquet", tmp_path / "budget-2.parquet"]
    cross_run("forward", "js", "0", 0.5, 0).with_columns(settings=pl.lit("a" * 16)).write_parquet(runs[0])
    cross_run("forward", "js", "2", 0.5, 2).with_columns(settings=pl.lit(None, pl.String)).write_parquet(runs[1])
    with pytest.raises(InputError, match=f"^{runs[1]}: column 'settings' is null in 160 of 160 rows"):
        write_crosssample_table(runs, tmp_path / "t.parquet", pair="toy", dataset="toy")
    assert not (tmp_path / "t.parquet").exists()


def test_a_file_whose_name_is_not_utf8_beside_a_checkpoint_passes_the_tokenizer_comparison(make_checkpoint):
    """Seventeenth pass: a file named in Latin-1 in a local checkpoint's folder (a README) made `snakemake -n` a
    UnicodeEncodeError traceback in the key of the tokenizer comparison's record; the fetch took the folder."""
    import os

    from tokenshift.config import _tokenizer_check_record

    base, rl = make_checkpoint("base"), make_checkpoint("rl", seed=1)
    before = _tokenizer_check_record(base, rl, chat=False)
    (base / os.fsdecode(b"notes\xe9.md")).write_text("a note")
    after = _tokenizer_check_record(base, rl, chat=False)
    assert after is not None and after != before  # a new file a tokenizer may read: the comparison runs again


def test_the_comparison_table_and_graded_rows_labels_are_checked(good_tables, tmp_path):
    """Seventeenth pass: the comparison's n_problems (null, text, missing), a NaN or infinite difference and a
    difference without its CI were tracebacks in figure-training and the report; an integer grade_status or model
    in rollouts or a cross-sampling run, tracebacks in accuracy and crosssample-table."""
    comparison = good_tables["comparison"]
    diffed = pl.col("diff_vs_none").is_not_null()
    for change, needle in (
        (pl.lit(None, pl.Int64).alias("n_problems"), "column 'n_problems' is null"),
        (pl.col("n_problems").cast(pl.String), "column 'n_problems' holds String"),
        (pl.when(diffed).then(float("nan")).alias("diff_vs_none"), "column 'diff_vs_none' holds NaN or infinity"),
        (pl.when(diffed).then(None).otherwise(pl.col("diff_ci_low")).alias("diff_ci_low"), "without its CI"),
    ):
        path = tmp_path / "comparison.parquet"
        comparison.with_columns(change).write_parquet(path)
        with pytest.raises(InputError, match=needle):
            read_table(path, "comparison", "the table")
    for column in ("grade_status", "model"):
        base = tmp_path / f"{column}.parquet"
        rollouts(0.5).with_columns(pl.lit(3).alias(column)).write_parquet(base)
        rl = tmp_path / "rl.parquet"
        rollouts(0.5).write_parquet(rl)
        r = cli(["accuracy", "--rollouts-base", base, "--rollouts-rl", rl, "--out", tmp_path / "a.parquet"])
        one_line_error(r, f"column {column!r} holds Int32, where a string was expected")
        run = tmp_path / f"run_{column}.parquet"
        cross_run("forward", "js", "2", 0.5, 1).with_columns(pl.lit(3).alias(column)).write_parquet(run)
        r = cli(["crosssample-table", run, "--pair", "p", "--dataset", "d", "--out", tmp_path / "c.parquet"])
        one_line_error(r, f"column {column!r} holds Int32, where a string was expected")


def test_a_device_or_a_pipe_given_as_a_json_or_text_file_is_refused_at_once(tmp_path):
    # nineteenth hostile pass: a pair manifest given as /dev/zero was read to its end (memory without bound); a FIFO
    # would wait for a writer
    import os

    from tokenshift.io import read_json, read_text

    os.mkfifo(tmp_path / "pipe.json")
    for path in ("/dev/zero", tmp_path / "pipe.json"):
        for read in (read_json, read_text):
            with pytest.raises(InputError, match=r"not a regular file \(a device, a pipe or a socket\)"):
                read(path, "a pair manifest")
    with pytest.raises(InputError, match=r"a folder, not a file \(expected a pair manifest\)"):
        read_json(tmp_path, "a pair manifest")


DEEP = "[" * 100_000 + "]" * 100_000
"""JSON nested past what Python's parser recurses."""
HUGE = "9" * 5000
"""An integer past the 4,300 digits Python turns text into."""


@pytest.mark.parametrize("text", [DEEP, '{"a": ' + HUGE + "}"], ids=["nested", "5000-digits"])
def test_json_files_python_cannot_read_are_input_errors_or_taken_as_no_record(text, tmp_path):
    """Twenty-second pass: readers caught JSON's syntax error alone, and these two passed as tracebacks (a pair
    manifest, a summary, a shard's record, a checkpoint's fingerprints, a table's models record)."""
    from tokenshift.checkpoints import _fingerprints, custom_code, fingerprints_path
    from tokenshift.io import MODELS_RECORD, models_record, read_json
    from tokenshift.sharding import ShardStore

    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(InputError, match=r"m\.json: not valid JSON \(expected a manifest\)"):
        read_json(path, "a manifest")
    assert models_record({MODELS_RECORD: text}) is None
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    fingerprints_path(ckpt).write_text(text)
    assert _fingerprints(ckpt) == {}  # none: the files are hashed again
    (ckpt / "config.json").write_text(text)
    assert custom_code(ckpt) is False  # the plan's question; the fetch's own check names the file
    shard = tmp_path / "part.parquet.shards" / "shard-00000.parquet"
    shard.parent.mkdir()
    shard.with_suffix(".json").write_text(text)
    assert "is unreadable" in ShardStore._record_fails(shard, 4)


def test_a_shard_folder_whose_stamp_is_not_text_starts_over_and_one_that_is_a_link_is_named(tmp_path):
    """Twenty-second pass: a stamp of bytes not text was a UnicodeDecodeError traceback; a folder of shards that
    is a link, rmtree's "Cannot call rmtree on a symbolic link", naming no path."""
    from tokenshift.sharding import ShardStore

    out = tmp_path / "part.parquet"
    shards = tmp_path / "part.parquet.shards"
    shards.mkdir()
    (shards / "settings.sha256").write_bytes(b"\xff\xfe")
    (shards / "shard-00000.parquet").write_bytes(b"left by another run")
    store = ShardStore(out, "key")
    assert (shards / "settings.sha256").read_text() == "key\n" and not store.path(0).exists()
    shards.rename(tmp_path / "elsewhere")
    shards.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match=r"part\.parquet\.shards: a symbolic link, expected the folder of shards"):
        ShardStore(out, "key")
