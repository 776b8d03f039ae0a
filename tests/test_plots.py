"""Every figure renders from small tables made by the real table builders, and the report holds them."""

from __future__ import annotations

import hashlib
import html
import html.parser
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import cross_table, fake_scores, figure_tables, report_inputs, rollouts
from markupsafe import escape
from matplotlib.image import imread

from tokenshift import headlines
from tokenshift.plots.figures import FIGURES, advantages, training_shifts
from tokenshift.plots.style import save
from tokenshift.report import PairResult, sentences, write_report
from tokenshift.tables import accuracy_table, divergence_tables, example_table


def test_a_regenerate_runs_dense_curve_is_drawn_through_every_budget(tables):
    from tokenshift.plots.figures import crosssample

    _, acc, cross = tables
    dense = [0.4, 0.45, 0.5]  # forward js at budgets 0, 1, 2, as a regenerate run at budget 2 records them
    at_two = (pl.col("direction") == "forward") & (pl.col("policy") == "js") & (pl.col("budget") == "2")
    with_dense = cross.with_columns(
        *(
            pl.when(at_two).then(pl.lit(values, dtype=pl.List(pl.Float64))).otherwise(pl.col(name)).alias(name)
            for name, values in (
                ("dense_accuracy", dense),
                ("dense_ci_low", [v - 0.05 for v in dense]),
                ("dense_ci_high", [v + 0.05 for v in dense]),
            )
        )
    )
    plain = crosssample(cross, acc).axes[0]
    drawn = crosssample(with_dense, acc).axes[0]
    new = [line for line in drawn.lines if list(line.get_xdata()) == [0, 1, 2]]
    assert len(drawn.lines) == len(plain.lines) + 1 and len(new) == 1
    assert list(new[0].get_ydata()) == pytest.approx(dense)


@pytest.fixture(scope="module")
def tables():
    div = divergence_tables({"base": fake_scores(), "rl": fake_scores()}, {"pair": "toy", "dataset": "toy"})
    acc = accuracy_table({"base": rollouts(0.4), "rl": rollouts(0.75)}, ks=[1])
    return div, acc, cross_table()


@pytest.fixture(scope="module")
def example(toy_tokenizer):
    ids = toy_tokenizer.encode("8a+6=14.\n14b+8=22.\n\\boxed{22}")
    run = pl.DataFrame(
        {
            "problem_id": ["q1", "q2"],
            "sample_index": [0, 0],
            "correct": [True, True],
            "n_switched": [2, 1],
            "n_response_tokens": [len(ids)] * 2,
            "response_ids": [ids, ids],
            "prompt_ids": [toy_tokenizer.encode("Q:8a+6b+8c-4=?\n")] * 2,
            "switched_positions": [[3, 9], [3]],
            "step_js": [[0.001 * (i % 5) for i in range(len(ids))]] * 2,
            "gold": ["22", "22"],
            "direction": "forward",
            "budget": "all",
        }
    )
    baseline = pl.DataFrame({"problem_id": ["q1", "q2"], "sample_index": [0, 0], "correct": [False, True]})
    return example_table(run, toy_tokenizer, baseline=baseline)


def assert_drawn(path):
    img = imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 400
    rgb = img[..., :3]
    assert (rgb < 0.95).mean() > 0.02, f"{path} is nearly blank"
    assert rgb.std() > 0.05


def test_every_figure_renders_to_png_and_pdf(tables, example, tmp_path):
    div, acc, cross = tables
    sp = div["sparsity"].with_columns(pl.lit("rlvr").alias("pair_kind"))
    figs = {
        "sparsity": FIGURES["sparsity"](sp),
        "position": FIGURES["position"](div["position"]),
        "entropy": FIGURES["entropy"](div["entropy"]),
        "reallocation": FIGURES["reallocation"](div["reallocation"]),
        "crosssample": FIGURES["crosssample"](cross, acc),
        "example": FIGURES["example"](example),
    }
    assert set(figs) == set(FIGURES)
    for name, fig in figs.items():
        png, pdf = save(fig, tmp_path / name)
        assert_drawn(png)
        # text is not mathtext here, so a log axis's ticks (figures 1, 3 and 4's, the example's colour bar) were
        # drawn as `$\mathdefault{10^{-2}}$`: they are plain text, as drawn in the last save
        labels = [t.get_text() for ax in fig.axes for a in (ax.xaxis, ax.yaxis) for t in a.get_ticklabels(which="both")]
        assert not [t for t in labels if "$" in t or "\\" in t], (name, labels)
        assert pdf.read_bytes()[:4] == b"%PDF"
    logs = [t.get_text() for ax in figs["sparsity"].axes for t in ax.yaxis.get_ticklabels(which="both")]
    assert any(re.fullmatch("10[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+", t) for t in logs), logs
    # drawn again, a moment later: the same bytes (a PDF recorded the time it was drawn: the tenth hostile pass, G2)
    import time

    time.sleep(1.1)
    again = save(FIGURES["position"](div["position"]), tmp_path / "again")
    assert [p.read_bytes() for p in again] == [(tmp_path / f"position{p.suffix}").read_bytes() for p in again]


def test_a_question_gold_answer_or_token_in_latex_is_drawn_as_text(example, tmp_path):
    """Twelfth hostile pass (J1): a MATH-style question, `$(r,\\theta)$`, in figure 6's title raised matplotlib's
    mathtext ParseException, and the report was never built."""
    latex = {"question": "Enter the point in the form $(r,\\theta).$", "gold": "$\\boxed{18}$"}
    odd = example.with_columns(*(pl.lit(v).alias(k) for k, v in latex.items() if k in example.columns))
    assert {"question", "gold"} <= set(example.columns)
    odd = odd.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("$$")).otherwise("token").alias("token"))
    png, _ = save(FIGURES["example"](odd), tmp_path / "example")
    assert_drawn(png)


def test_saving_a_pdf_logs_nothing_of_its_font_subsetting(tables, tmp_path, caplog):
    """Eleventh hostile pass, noted: fontTools logged ~380 INFO lines into a figures job's log (the command
    logs at INFO)."""
    import logging

    div, _, _ = tables
    with caplog.at_level(logging.INFO):
        save(FIGURES["position"](div["position"]), tmp_path / "position")
    assert [r for r in caplog.records if r.name.startswith("fontTools")] == []


def test_a_reallocation_table_without_the_headlines_k_is_named(tables):
    from tokenshift.headlines import reallocation_summary
    from tokenshift.io import InputError

    table = tables[0]["reallocation"]
    assert list(reallocation_summary(table)) == [1, 3, 5]
    without_3 = table.filter(pl.col("metric") != "rl_top1_in_base_top3")
    with pytest.raises(InputError, match=r"top k for k = \[1, 5\]: expected 1, 3 among them"):
        reallocation_summary(without_3)


def test_sparsity_figure_puts_rlvr_and_sft_pairs_on_one_axis(tables, tmp_path):
    div, _, _ = tables
    both = pl.concat(
        [
            div["sparsity"].with_columns(pl.lit("rlvr").alias("pair_kind")),
            div["sparsity"].with_columns(pl.lit("sft-pair").alias("pair"), pl.lit("sft").alias("pair_kind")),
        ]
    )
    fig = FIGURES["sparsity"](both)
    styles = {line.get_linestyle() for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 2}
    assert styles == {"-", ":"}  # one line per pair, kinds told apart
    assert_drawn(save(fig, tmp_path / "both")[0])


def test_example_prefers_a_response_whose_baseline_was_wrong(example):
    assert example["problem_id"][0] == "q1" and example["baseline_correct"][0] is False
    assert example["switched"].to_list().count(True) == 2
    assert "".join(example["token"]) == "8a+6=14.\n14b+8=22.\n\\boxed{22}"


def test_headlines_and_report(tables, example, tmp_path):
    div, acc, cross = tables
    h = headlines.crosssample_summary(cross, acc)
    gap = h["accuracy_rl"] - h["accuracy_base"]
    assert h["forward_recovery_by_budget"]["all"] == pytest.approx(
        (
            cross.filter((pl.col("direction") == "forward") & (pl.col("policy") == "js") & (pl.col("budget") == "all"))[
                "accuracy"
            ][0]
            - h["accuracy_base"]
        )
        / gap
    )
    assert h["random_recovery"] is not None and h["random_recovery"] < h["forward_recovery"]
    # without js the headline takes another policy and keeps random as its control, never random against itself
    js_and_random = cross.filter(pl.col("policy").is_in(["js", "random"]))
    no_js = headlines.crosssample_summary(js_and_random.with_columns(pl.col("policy").replace("js", "entropy")), acc)
    assert no_js["policy"] == "entropy" and no_js["forward_recovery"] == h["forward_recovery"]
    assert no_js["random_recovery"] == h["random_recovery"]
    only_random = headlines.crosssample_summary(cross.filter(pl.col("policy") == "random"), acc)
    assert only_random["policy"] == "random" and only_random["random_recovery"] is None
    # budget 0 alone switches nothing: the gap, and no headline budget to quote
    zero = headlines.crosssample_summary(cross.filter(pl.col("budget") == "0"), acc)
    assert zero["gap"] == pytest.approx(gap) and "forward_recovery" not in zero and "reverse_loss" not in zero
    figs = {}
    for name, fig in (("crosssample", FIGURES["crosssample"](cross, acc)), ("example", FIGURES["example"](example))):
        figs[name] = save(fig, tmp_path / name)[0]
    overview = save(FIGURES["sparsity"](div["sparsity"]), tmp_path / "sparsity")[0]
    result = PairResult("toy", "toy", "rlvr", acc, div, cross, figs)
    summary = write_report(
        [result],
        overview_figures={"sparsity": overview},
        config_text="models: {}",
        html_out=tmp_path / "report.html",
        json_out=tmp_path / "summary.json",
    )
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    saved = json.loads((tmp_path / "summary.json").read_text())["results"][0]
    assert sentences(saved) == sentences(summary["results"][0])  # the JSON says what the page says
    # the settings the study ran with, which tokenshift.load_results compares with results/config.yaml
    recorded = json.loads((tmp_path / "summary.json").read_text())["config_sha256"]
    assert recorded == hashlib.sha256(b"models: {}").hexdigest()
    for text in sentences(saved):
        assert escape(text) in page
    share = headlines.sparsity_summary(div["sparsity"])["0.001"]
    assert f"{100 * share:.1f}% of positions" in page
    assert json.loads((tmp_path / "summary.json").read_text())["results"][0]["share_js_below"][
        "0.001"
    ] == pytest.approx(share)


def write_results(tables, results: Path) -> Path:
    """The tables as the workflow leaves them in ``results/<pair>/<dataset>``."""
    div, acc, cross = tables
    (results / "divergence").mkdir(parents=True)
    for name, t in div.items():
        t.write_parquet(results / "divergence" / f"{name}.parquet")
    acc.with_columns(pl.lit("toy").alias("pair"), pl.lit("toy").alias("dataset")).write_parquet(
        results / "accuracy.parquet"
    )
    cross.write_parquet(results / "crosssample.parquet")
    return results


def test_figure_and_report_stages_read_a_results_directory(tables, example, tmp_path):
    from tokenshift.io import InputError
    from tokenshift.plots.draw import draw_overview, draw_pair_figures
    from tokenshift.registry import PAIR_FIGURES
    from tokenshift.report import build_report
    from tokenshift.tables import EXAMPLE_SCHEMA

    results = write_results(tables, tmp_path / "results" / "toy" / "toy")
    # no example run: figure 6 says there is none, and its table, asked for, has no rows but every column
    drawn = draw_pair_figures(
        figure_tables(results), results / "figures", example_out=results / "figures" / "example.parquet"
    )
    assert set(drawn) == set(PAIR_FIGURES)
    assert pl.read_parquet(results / "figures" / "example.parquet").schema == pl.Schema(EXAMPLE_SCHEMA)
    for name in PAIR_FIGURES:
        assert_drawn(results / "figures" / f"{name}.png")
    draw_overview([results / "divergence" / "sparsity.parquet"], tmp_path / "sparsity", kinds={"toy": "sft"})
    config = tmp_path / "config.yaml"
    config.write_text("models: {}\n")
    (tmp_path / "results" / "explorer.html").write_text("<!doctype html>")
    summary = build_report(
        [report_inputs(results)],
        html_out=tmp_path / "results" / "r.html",
        json_out=tmp_path / "s.json",
        kinds={"toy": "sft"},
        overview=[tmp_path / "sparsity.png"],
        config=config,
        explorer=tmp_path / "results" / "explorer.html",
    )
    assert summary["results"][0]["kind"] == "sft" and summary["results"][0]["pair"] == "toy"
    page = (tmp_path / "results" / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 1 + len(PAIR_FIGURES) and "models: {}" in page
    assert "<a href='explorer.html'>" in page  # relative to the report, so the pair moves together
    # tenth hostile pass (G3): one pair and dataset given twice was said twice; a table linked as the explorer
    for twice, explorer, needle in (
        (
            [report_inputs(results)] * 2,
            tmp_path / "results" / "explorer.html",
            "which .*accuracy.parquet holds already",
        ),
        ([report_inputs(results)], results / "accuracy.parquet", r"accuracy\.parquet: not an HTML page"),
    ):
        with pytest.raises(InputError, match=needle):
            build_report(twice, html_out=tmp_path / "x.html", json_out=tmp_path / "x.json", explorer=explorer)
        assert not (tmp_path / "x.json").exists()
    # eleventh hostile pass: one PNG under two figures' names (H2), an overview given twice, a training-shifts
    # table of a pair the report has not (H1), a table of another statistic among a pair's (H10)
    files = report_inputs(results)
    shifts_png = tmp_path / "sparsity.png"
    for given, extra, needle in (
        ({**files, "entropy.png": files["position.png"]}, {}, r"position\.png: given as position\.png and as entropy"),
        (files, {"overview": [shifts_png, shifts_png]}, r"given as --overview .* and as --overview"),
        (files, {"training_shifts": {"ghost": (results / "x.parquet", shifts_png)}}, r"--training-shifts ghost: no"),
    ):
        with pytest.raises(InputError, match=needle):
            build_report([given], html_out=tmp_path / "x.html", json_out=tmp_path / "x.json", **extra)
    labelled = {}
    for name, statistic in (("sparsity", "exact"), ("position", "exact"), ("reallocation", "topk:50")):
        labelled[name] = tmp_path / f"{name}-{statistic}.parquet"
        table = pl.read_parquet(files[name]).with_columns(pl.lit(statistic).alias("statistic"))
        table.write_parquet(labelled[name])
    with pytest.raises(InputError, match=r"holds statistic 'topk:50', where the other tables hold 'exact'"):
        build_report([{**files, **labelled}], html_out=tmp_path / "x.html", json_out=tmp_path / "x.json")
    # a pair's figure that is not a PNG (text, a table) was embedded as one (the fourth hostile pass): named
    from tokenshift.report import load_result

    (results / "figures" / "position.png").write_text("not a png")
    with pytest.raises(InputError, match=r"position\.png: not a PNG image"):
        load_result(report_inputs(results))
    # one missing dropped out of the page, unsaid (issue 27): a cross-sampled pair's page has every figure
    (results / "figures" / "example.png").unlink()
    (results / "figures" / "position.png").write_bytes((results / "figures" / "entropy.png").read_bytes())
    with pytest.raises(InputError, match=r"example\.png: no such file"):
        load_result(report_inputs(results))
    # nor may one be left out of the files given, nor one given that the report has no place for
    given = report_inputs(results)
    with pytest.raises(InputError, match=r": missing example\.png; expected accuracy, sparsity, "):
        load_result({n: p for n, p in given.items() if n != "example.png"})
    with pytest.raises(InputError, match=r": unknown entropy; expected accuracy, "):
        load_result({**given, "entropy": results / "divergence" / "entropy.parquet"})


def test_figures_refuse_swapped_example_runs_and_overview_tables_given_twice(tables, tmp_path):
    # fourth hostile pass: a reverse run as the example, or the example and its budget-0 twin swapped, drew
    # figure 6 from the wrong run; one pair's sparsity table twice drew its curve twice; a --kind for a pair
    # no table holds was ignored. Each exit 0
    from tokenshift.io import InputError
    from tokenshift.plots.draw import draw_overview, draw_pair_figures

    results = write_results(tables, tmp_path / "results" / "toy" / "toy")

    def run_file(name, direction, budget):
        run = pl.DataFrame(
            {
                "problem_id": ["q1"],
                "sample_index": [0],
                "correct": [True],
                "direction": direction,
                "policy": "js",
                "budget": budget,
                "threshold": 0.01,
                "n_switched": [0 if budget == "0" else 1],
                "switched_js": [[] if budget == "0" else [0.1]],
                "n_response_tokens": [3],
                "finish_reason": ["stop"],
            },
            schema_overrides={"switched_js": pl.List(pl.Float64)},
        )
        run.write_parquet(tmp_path / name)
        return tmp_path / name

    forward, zero, reverse = run_file("f.parquet", "forward", "4"), run_file("z.parquet", "forward", "0"), None
    reverse = run_file("r.parquet", "reverse", "4")
    out = results / "figures"
    for run, baseline, needle in (
        (reverse, zero, r"r\.parquet: a reverse run; expected a forward run"),
        (zero, forward, r"f\.parquet: a forward run at budget 4; expected the forward run at budget 0"),
    ):
        with pytest.raises(InputError, match=needle):
            draw_pair_figures(
                figure_tables(results), out, example_run=run, example_baseline=baseline, tokenizer=tmp_path
            )
    # eleventh hostile pass (H11): a baseline without its run was ignored without a word
    with pytest.raises(InputError, match=r"--example-baseline: expected it beside --example-run"):
        draw_pair_figures(figure_tables(results), out, example_baseline=zero, tokenizer=tmp_path)
    # seventh hostile pass (C7): another pair's example response drawn among this pair's figures
    theirs = tmp_path / "theirs.parquet"
    pl.read_parquet(forward).with_columns(pl.lit("toy-sft").alias("pair")).write_parquet(theirs)
    with pytest.raises(InputError, match=rf"^{theirs}: holds pair 'toy-sft', where the other tables hold 'toy'"):
        draw_pair_figures(figure_tables(results), out, example_run=theirs, example_baseline=zero, tokenizer=tmp_path)
    sparsity = results / "divergence" / "sparsity.parquet"
    with pytest.raises(InputError, match=r"holds pair 'toy' on dataset 'toy', which .* holds already"):
        draw_overview([sparsity, sparsity], tmp_path / "overview")
    with pytest.raises(InputError, match=r"--kind toy-sft: no such pair in the tables"):
        draw_overview([sparsity], tmp_path / "overview", kinds={"toy-sft": "sft"})
    assert not (tmp_path / "overview.png").exists()


def test_an_example_with_nothing_to_show_says_so(toy_tokenizer, tmp_path):
    # two copies of one model never switch where a response came out right: a result, not an error
    run = pl.DataFrame(
        {
            "problem_id": ["q1"],
            "sample_index": [0],
            "correct": [True],
            "n_switched": [0],
            "n_response_tokens": [3],
            "response_ids": [[1, 2, 3]],
            "prompt_ids": [[4]],
            "switched_positions": [[]],
            "step_js": [[0.0, 0.0, 0.0]],
            "gold": ["1"],
            "direction": "forward",
            "budget": "2",
        },
        schema_overrides={"switched_positions": pl.List(pl.Int32)},
    )
    empty = example_table(run, toy_tokenizer)
    assert empty.height == 0
    fig = FIGURES["example"](empty)
    assert "no example" in fig.axes[0].texts[0].get_text().lower()
    save(fig, tmp_path / "example")


def _training_tables():
    from tokenshift.toy.training import advantage_tables

    rng = np.random.default_rng(0)
    rows = [
        {
            "variant": v,
            "seed": s,
            "step": step,
            "problem_id": f"p{i}",
            "correct": float(rng.random() < 0.3 + 0.02 * step),
        }
        for v in ("none", "js", "topq")
        for s in (0, 1)
        for step in (0, 6, 12)
        for i in range(40)
    ]
    tables = advantage_tables(pl.DataFrame(rows))
    shifts = pl.DataFrame(
        {
            "step": [20, 40, 60],
            "checkpoint": ["step-20", "step-40", "final"],
            "n_positions": [900] * 3,
            "share_js_below_1e-3": [0.9, 0.85, 0.8],
            "share_js_above_1e-2": [0.05, 0.08, 0.11],
            "top5_precision": [0.5, 0.6, 0.7],
            "top5_lift": [4.0, 5.0, 6.0],
            "base_rate": [0.1] * 3,
            "js_share_on_decision_points": [0.3, 0.4, 0.5],
        }
    )
    return tables, shifts


def test_the_report_refuses_a_training_table_whose_figure_is_missing(tmp_path):
    """Issue 27.1: the training analyses' figures were looked up beside their tables and left out of the report
    without a word where missing (and the shifts figure's name was spelled again): each is now required, as a
    pair's figures are, and named where absent."""
    from tokenshift import layout
    from tokenshift.io import InputError
    from tokenshift.report import load_training

    adv, shifts = _training_tables()
    adv_dir, shifts_table = tmp_path / "advantages", tmp_path / "results" / "toy" / "training" / layout.SHIFTS
    adv_dir.mkdir()
    shifts_table.parent.mkdir(parents=True)
    adv["comparison"].write_parquet(adv_dir / layout.COMPARISON)
    shifts.write_parquet(shifts_table)
    adv_figure, shifts_figure = adv_dir / layout.advantages_figure(), shifts_table.with_name(layout.shifts_figure())
    with pytest.raises(InputError, match=rf"^{adv_figure}: no such file \(expected a figure"):
        load_training((adv_dir / layout.COMPARISON, adv_figure))
    with pytest.raises(InputError, match=rf"^{shifts_figure}: no such file"):
        load_training(None, {"toy": (shifts_table, shifts_figure)})
    save(advantages(adv["curve"], adv["comparison"]), adv_dir / "advantages")
    save(training_shifts(shifts), shifts_table.parent / "training_shifts")
    loaded = load_training((adv_dir / layout.COMPARISON, adv_figure), {"toy": (shifts_table, shifts_figure)})
    assert loaded.advantage_figure == adv_figure and loaded.shift_figures == {"toy": shifts_figure}


def test_training_figures_and_report_sections(tables, tmp_path):
    from tokenshift.report import TrainingResult, advantage_sentences, contrast_sentences

    (adv, shifts), (div, acc, cross) = _training_tables(), tables
    drawn = {
        "advantages": save(advantages(adv["curve"], adv["comparison"]), tmp_path / "adv")[0],
        "shifts": save(training_shifts(shifts), tmp_path / "shifts")[0],
    }
    for png in drawn.values():
        assert_drawn(png)
    # an SFT pair whose distribution moved at more positions than the RL pair's
    denser = div["sparsity"].with_columns(
        pl.when(pl.col("kind") == "share_below").then(pl.col("share") / 2).otherwise(pl.col("share")).alias("share")
    )
    results = [
        PairResult("toy", "toy", "rlvr", acc, div, cross),
        PairResult("toy-sft", "toy", "sft", acc, {**div, "sparsity": denser}),
    ]
    training = TrainingResult(
        comparison=adv["comparison"],
        advantage_figure=drawn["advantages"],
        shifts={"toy": shifts},
        shift_figures={"toy": drawn["shifts"]},
    )
    summary = write_report(
        results,
        overview_figures={},
        config_text="",
        html_out=tmp_path / "report.html",
        json_out=tmp_path / "summary.json",
        training=training,
    )
    saved = json.loads((tmp_path / "summary.json").read_text())
    (contrast,) = saved["rl_vs_sft"]
    rl_below = headlines.sparsity_summary(div["sparsity"])["0.001"]
    assert contrast["share_js_at_least"]["rlvr"]["0.001"] == pytest.approx(1 - rl_below)
    assert contrast["share_js_at_least"]["sft"]["0.001"] == pytest.approx(1 - rl_below / 2)
    assert contrast["sft_denser"] == {"0.001": True, "0.01": True}
    assert saved["advantages"]["step"] == 12 and set(saved["advantages"]["diff_vs_none"]) == {"js", "topq"}
    assert saved["training_shifts"]["toy"]["last"]["top5_precision"] == 0.7
    page = (tmp_path / "report.html").read_text()
    for text in [*contrast_sentences(contrast), *advantage_sentences(summary["advantages"])]:
        assert escape(text) in page
    assert page.count("data:image/png;base64,") == 2


def test_the_explorer_link_reaches_the_page_whatever_its_path_holds(tables, tmp_path):
    # '#' and '?' in a path would start a fragment or a query, '%' an escape
    import re
    from urllib.parse import unquote, urljoin

    div, acc, _ = tables
    explorer = tmp_path / "run #2 ?a=%41" / "explorer.html"
    explorer.parent.mkdir()
    explorer.write_text("<!doctype html>")
    html_out = tmp_path / "report" / "report.html"
    result = PairResult("toy", "toy", "rlvr", acc, div)
    write_report(
        [result],
        overview_figures={},
        config_text="",
        html_out=html_out,
        json_out=tmp_path / "s.json",
        explorer=explorer,
    )
    href = html.unescape(re.search(r"<a href='([^']*)'>", html_out.read_text())[1])
    target = urljoin(html_out.as_uri(), href)
    assert "#" not in target and "?" not in target and unquote(target) == unquote(explorer.as_uri())


def test_report_tables_show_a_missing_value_as_a_dash(tables, tmp_path):
    from tokenshift.report import _table

    table = _table(pl.DataFrame({"pass@k": [0.5, None], "pair": ["toy", None]}))
    assert table == {"columns": ["pass@k", "pair"], "rows": [["0.500", "toy"], ["–", "–"]]}
    # as the page shows it: a missing statistic of the accuracy table is a dash
    div, acc, _ = tables
    acc = acc.with_columns(
        pl.when(pl.col("role") == "base").then(None).otherwise(pl.col("n_problems")).alias("n_problems")
    )
    write_report(
        [PairResult("toy", "toy", "rlvr", acc, div)],
        overview_figures={},
        config_text="",
        html_out=tmp_path / "report.html",
        json_out=tmp_path / "summary.json",
    )
    page = (tmp_path / "report.html").read_text()
    assert "None" not in page and "<td>–</td>" in page


HOSTILE = ("<script>alert(1)</script>", "\"'><img src=x onerror=alert(2)>", "</pre><script>alert(3)</script>")


class _Tags(html.parser.HTMLParser):
    """The elements of a page and its text, as a browser's parser meets them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_hostile_text_in_every_string_the_report_shows_is_shown_literally(tables, tmp_path, monkeypatch):
    """Markup in a pair's or dataset's name, the kind, a metric, a policy, a grading mode, a weighting, a
    figure's name, the explorer's path, the config and the version (so in the sentences, the tables, the
    figures' alternative text and the link) is text on the page: escaped, never an element or attribute."""
    from tokenshift import report
    from tokenshift.report import TrainingResult

    div, acc, cross = tables
    a, b, c = HOSTILE
    monkeypatch.setattr(report, "__version__", a)
    acc = acc.with_columns(pl.col("metric") + a, pl.lit(b).alias("grading"))
    cross = cross.with_columns(pl.col("policy").replace("dlogp", c), pl.lit(a).alias("grading"))
    png = save(FIGURES["sparsity"](div["sparsity"]), tmp_path / "sparsity")[0]
    results = [
        PairResult(f"rl {a}", f"data {b}", "rlvr", acc, div, cross, {c: png}),
        PairResult(f"sft {b}", f"data {b}", "sft", acc, div),
        PairResult(f"other {c}", a, f"kind {b}", acc, div),
    ]
    (adv, shifts) = _training_tables()
    training = TrainingResult(
        comparison=adv["comparison"].with_columns(pl.col("variant").replace("topq", b)),
        advantage_figure=png,
        shifts={c: shifts},
        shift_figures={c: png},
    )
    explorer = tmp_path / b / "explorer.html"
    explorer.parent.mkdir()
    explorer.write_text("<!doctype html>")
    summary = write_report(
        results,
        overview_figures={a: png},
        config_text=f"models: {{}}\n# {a}\n# {b}\n# {c}\n",
        html_out=tmp_path / "report.html",
        json_out=tmp_path / "summary.json",
        training=training,
        explorer=explorer,
    )
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page and "<img src=x" not in page  # none of it is an element
    for text in HOSTILE:
        assert page.count(escape(text)) >= 5, text  # shown, escaped, wherever it is named
    shown = _Tags()
    shown.feed(page)
    tags = {t for t, _ in shown.tags}
    page_tags = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "em", "strong", "a"}
    assert tags == page_tags | {"table", "thead", "tbody", "tr", "th", "td", "ul", "li", "figure", "img", "pre"}, tags
    for tag, attrs in shown.tags:  # the page's own attributes only: no handler, no source but the figures
        assert set(attrs) <= {"charset", "href", "src", "alt"}, (tag, attrs)
        assert tag != "img" or attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:80]
    assert {attrs["alt"] for tag, attrs in shown.tags if tag == "img"} >= {
        a,
        f"rl {a} data {b} {c}",
        f"{c} shifts over training",
        "advantage weighting experiment",
    }
    (href,) = [attrs["href"] for tag, attrs in shown.tags if tag == "a"]
    assert "<" not in href and "'" not in href and '"' not in href
    text = "".join(shown.text)  # the parsed page's text holds each string as it was given
    for s in [*(t for r in summary["results"] for t in sentences(r)), f"rl {a} on data {b}", f"# {c}\n", a, b, c]:
        assert s in text, s
    assert f"{b}/explorer.html" in text and f"tokenshift {a}." in text and f"other {c}kind {b}" in text


NUMBER = r"(-?[\d.]+)"


@pytest.mark.parametrize("headline_budget", ["all", "2"])
def test_every_headline_number_is_the_one_its_table_gives(tables, tmp_path, headline_budget):
    """The report's sentences about a pair, parsed back into numbers, each against the value computed
    here from the parquet table it cites (not through ``tokenshift.headlines``); every sentence must
    be one of those read here, so a number added to the report without a check fails this test. Once
    with a cross-sampling table whose largest budget is the first to recover 80% of the gap, once with
    one where budget 2 does (its random control is then the budget-2 one)."""
    from tokenshift.report import build_report

    if headline_budget == "2":
        tables = (*tables[:2], cross_table(forward_js_2=0.78))
    from tokenshift.plots.draw import draw_pair_figures

    results = write_results(tables, tmp_path / "results" / "toy" / "toy")
    draw_pair_figures(figure_tables(results), results / "figures")
    build_report([report_inputs(results)], html_out=tmp_path / "report.html", json_out=tmp_path / "summary.json")
    page = (tmp_path / "report.html").read_text()
    said = [html.unescape(t) for t in re.findall(r"<li>(.*?)</li>", page)]
    acc = pl.read_parquet(results / "accuracy.parquet")
    div = {
        n: pl.read_parquet(results / "divergence" / f"{n}.parquet") for n in ("sparsity", "position", "reallocation")
    }
    cross = pl.read_parquet(results / "crosssample.parquet")
    rl = {n: t.filter(pl.col("source") == "rl") for n, t in div.items()}  # the RL model's responses

    def shown(text: str, value: float, places: int) -> bool:
        """``text`` is ``value`` rounded to ``places`` decimals."""
        return abs(float(text) - value) <= 0.5 * 10**-places + 1e-12

    def pct(text: str, value: float) -> bool:
        return shown(text, 100 * value, 1)

    def accuracy(m):
        metric = m[7]
        assert metric.startswith("avg@") and metric in acc["metric"].to_list()
        for role, (value, lo, hi) in (("rl", m.groups()[0:3]), ("base", m.groups()[3:6])):
            row = acc.filter((pl.col("role") == role) & (pl.col("metric") == metric)).row(0, named=True)
            for text, key in zip((value, lo, hi), ("value", "ci_low", "ci_high")):
                assert shown(text, row[key], 3), (role, key, text, row[key])

    def sparsity(m):
        t = rl["sparsity"].filter(pl.col("kind") == "share_below")
        for text, cut in ((m[1], 1e-3), (m[2], 1e-2)):
            assert pct(text, t.filter(pl.col("js_nats") == cut)["share"][0]), (cut, text)

    def reallocation(m):
        t = rl["reallocation"]
        for text, k in ((m[1], 1), (m[2], 3)):
            value = t.filter(pl.col("metric") == f"rl_top1_in_base_top{k}")["value"][0]
            assert pct(text, value), (k, text, value)

    def position(m):
        t = rl["position"]
        mean = {
            region: float((g["mean_js"] * g["n_positions"]).sum() / g["n_positions"].sum())
            for (region,), g in t.group_by("region")
        }
        assert (m[1], m[2]) == (max(mean, key=mean.get), min(mean, key=mean.get))
        for region, text in zip(("start", "middle", "end"), m.groups()[2:]):
            assert float(text) == pytest.approx(mean[region], rel=0.05)  # two significant digits

    def run(direction, policy, budget):
        return cross.filter(
            (pl.col("direction") == direction) & (pl.col("policy") == policy) & (pl.col("budget") == budget)
        ).row(0, named=True)

    # the two models alone on the cross-sampled problems: each direction's budget-0 run
    base, rlacc = run("forward", "js", "0")["accuracy"], run("reverse", "js", "0")["accuracy"]
    gap = rlacc - base

    def forward(m):
        recovery = {b: (run("forward", "js", b)["accuracy"] - base) / gap for b in ("2", "all")}
        budget = next((b for b, r in recovery.items() if r >= 0.8), "all")
        assert (m[1], m[2]) == ("js", budget) and budget == headline_budget, recovery
        assert shown(m[3], run("forward", "js", budget)["mean_switched"], 1)
        assert pct(m[4], recovery[budget]), (m[4], recovery)
        control = run("forward", "random", budget)
        assert shown(m[5], control["mean_switched"], 1)
        assert pct(m[6], (control["accuracy"] - base) / gap)

    def by_policy(m):
        assert m[1] == headline_budget
        said = dict(re.findall(r"(\w+) (-?[\d.]+)%", m[2]))
        assert set(said) == {"js", "random", "dlogp"}, said
        for policy, text in said.items():
            assert pct(text, (run("forward", policy, headline_budget)["accuracy"] - base) / gap), (policy, text)

    def extrapolation(m):
        row = cross.filter(pl.col("extrapolation")).row(0, named=True)
        assert (m[1], m[2], float(m[3])) == ("dlogp", "all", 0.1) == (row["policy"], row["budget"], row["gamma"])
        for text, key in zip(m.groups()[3:6], ("accuracy", "ci_low", "ci_high")):
            assert shown(text, row[key], 3), (key, text)
        assert shown(m[7], row["mean_switched"], 1)
        assert pct(m[8], (row["accuracy"] - base) / gap)
        replaced = cross.filter(~pl.col("extrapolation") & (pl.col("policy") == "dlogp") & (pl.col("budget") == "all"))
        assert pct(m[9], (replaced["accuracy"][0] - base) / gap)

    def reverse(m):
        assert m[1] == "all"
        assert shown(m[2], run("reverse", "js", "all")["mean_switched"], 1)
        assert pct(m[3], (rlacc - run("reverse", "js", "all")["accuracy"]) / gap)

    checks = {
        rf"The RL model scores {NUMBER} \[{NUMBER}, {NUMBER}\] against the base model's {NUMBER} \[{NUMBER}, "
        rf"{NUMBER}\] \((avg@\d+), 95% bootstrap CI\)\.": accuracy,
        rf"{NUMBER}% of positions in the RL model's responses have JS < 1e-3, {NUMBER}% have JS < 1e-2\.": sparsity,
        rf"The RL model's top token is the base model's own top token at {NUMBER}% of positions and within its "
        rf"top 3 at {NUMBER}%: .*": reallocation,
        rf"Mean JS is highest at the (\w+) of a response and lowest at the (\w+) \(start {NUMBER}, middle "
        rf"{NUMBER}, end {NUMBER} nats\)\.": position,
        rf"Forward cross-sampling \((\w+) policy\) with budget (\w+) \({NUMBER} switched tokens per response on "
        rf"average\) recovers {NUMBER}% of the base→RL accuracy gap; switching {NUMBER} tokens at random "
        rf"positions recovers {NUMBER}%\.": forward,
        r"At budget (\w+), forward recovery by policy: (.*)\.": by_policy,
        rf"The follow-up's extrapolation \((\w+) policy, budget (\w+), gamma {NUMBER}\) scores {NUMBER} \[{NUMBER}, "
        rf"{NUMBER}\] with {NUMBER} switched tokens per response, recovering {NUMBER}% of the gap \(replacement, "
        rf"gamma 0: {NUMBER}%\)\.": extrapolation,
        rf"Reverse cross-sampling \(budget (\w+), {NUMBER} base tokens injected per response\) loses "
        rf"{NUMBER}% of the gap\.": reverse,
    }
    assert gap > 0 and len(said) == len(checks), said
    for sentence, (pattern, check) in zip(said, checks.items()):
        m = re.fullmatch(pattern, sentence)
        assert m, (sentence, pattern)
        check(m)
