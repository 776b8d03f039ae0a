"""The token explorer: its data built from hand-made tables, and the page used as a reader uses it, in
headless Chromium, on tables the real stages wrote for a tiny pair of models."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import save_checkpoint
from helpers import chromium_driver, cross_run

from tokenshift.explorer import (
    agreeing_points,
    crosssample_groups,
    crosssample_records,
    draw_order,
    page_data,
    pick,
    render,
    rollout_group,
    rollout_records,
    rounded,
    used_ids,
)
from tokenshift.settings import ExplorerConfig

# --- the data, from hand-made tables --------------------------------------------------------


def score_table(with_candidates: bool = True, source: str = "base") -> pl.DataFrame:
    rows = []
    for pid, sample, ok, ids in (("p1", 0, True, [5, 6, 7]), ("p1", 1, False, [5, 8]), ("p2", 0, True, [9])):
        for pos, tok in enumerate(ids):
            rows.append(
                {
                    "problem_id": pid,
                    "sample_index": sample,
                    "correct": ok,
                    "position": pos,
                    "token_id": tok,
                    "js": 0.123456 * (pos + 1),
                    "kl_base_rl": 0.5,
                    "kl_rl_base": float("inf"),
                    "entropy_base": 1.0,
                    "entropy_rl": 2.0,
                    "logp_base": -0.25,
                    "logp_rl": -0.5,
                    "source": source,
                }
            )
    t = pl.DataFrame(rows)
    if with_candidates:
        n = t.height
        t = t.with_columns(
            pl.Series("top_ids_base", [[tok, 1] for tok in t["token_id"]], dtype=pl.Array(pl.Int32, 2)),
            pl.Series("top_probs_base", [[0.6, 0.3]] * n, dtype=pl.Array(pl.Float32, 2)),
            pl.Series("top_ids_rl", [[2, 3]] * n, dtype=pl.Array(pl.Int32, 2)),
            pl.Series("top_probs_rl", [[0.7, 0.2]] * n, dtype=pl.Array(pl.Float32, 2)),
        )
    return t


def run_table(budget: str, responses: dict, direction: str = "forward") -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "pair": "toy",
                "dataset": "toy",
                "direction": direction,
                "policy": "js",
                "budget": budget,
                "problem_id": pid,
                "sample_index": s,
                "correct": ok,
                "response_ids": ids,
                "step_js": [0.01 * (i + 1) for i in range(len(ids))],
                "switched_positions": sw,
                "finish_reason": "stop",
            }
            for (pid, s), (ok, ids, sw) in responses.items()
        ]
    )


def test_rounding_keeps_four_digits_and_drops_non_finite_values():
    assert rounded(0.123456) == 0.1235 and rounded(1.5e-7) == 1.5e-7 and rounded(0.0) == 0.0
    assert rounded(float("inf")) == "inf" and rounded(float("nan")) is None


def test_every_group_draws_the_same_keys_whatever_its_row_order():
    keys = [(f"p{i}", j) for i in range(20) for j in range(3)]
    order = draw_order(keys, seed=0)
    assert sorted(order) == sorted(keys) and order != sorted(keys)
    assert draw_order(reversed(keys), seed=0) == order and draw_order(keys, seed=1) != order
    t = pl.DataFrame(keys, schema={"problem_id": pl.Utf8, "sample_index": pl.Int64}, orient="row")
    chosen = pick(t, 5, seed=0)
    assert list(chosen.iter_rows()) == order[:5]
    # a group holding a subset of the keys takes the first of the same order it has
    sub = t.filter(pl.col("sample_index") == 0)
    assert list(pick(sub, 3, 0).iter_rows()) == [k for k in order if k[1] == 0][:3]


def test_decision_points_are_marked_only_where_the_response_follows_the_trace():
    trace = [1, 2, 3, 4, 5]
    assert agreeing_points([1, 2, 3, 4, 5], trace, [1, 3]) == [1, 3]
    # the response departs at position 2: the point there is where it erred; the one after means nothing
    assert agreeing_points([1, 2, 9, 4, 5], trace, [2, 3]) == [2]
    assert agreeing_points([1, 2], trace, [1, 2, 4]) == [1]  # none past the response's end


def test_rollout_records_carry_the_table_values_token_by_token():
    scores = score_table()
    keys = pl.DataFrame({"problem_id": ["p1", "p2"], "sample_index": [0, 0]})
    recs = rollout_records(scores, keys, decision_points=lambda pid, ids: [0] if pid == "p1" else [])
    assert [(r["problem_id"], r["sample_index"]) for r in recs] == [("p1", 0), ("p2", 0)]
    r = recs[0]
    assert r["tokens"] == [5, 6, 7] and r["correct"] is True and r["decision_points"] == [0]
    assert r["js"] == [0.1235, 0.2469, 0.3704] and r["max_js"] == 0.3704
    assert r["kl_br"] == [0.5] * 3 and r["kl_rb"] == ["inf"] * 3  # JSON has no infinity
    assert r["ids_base"] == [[5, 1], [6, 1], [7, 1]] and r["p_rl"] == [[0.7, 0.2]] * 3
    assert r["h_base"] == [1.0] * 3 and r["logp_rl"] == [-0.5] * 3
    plain = rollout_records(score_table(with_candidates=False), keys)
    assert "ids_base" not in plain[0] and plain[0]["decision_points"] == []
    g = rollout_group("toy", "toy", "base", scores, ExplorerConfig(responses_per_group=2))
    assert g.candidates == 2 and g.n_total == 3 and len(g.records) == 2


def test_a_cross_sample_is_paired_with_its_budget0_twin():
    zero = run_table("0", {("p1", 0): (False, [5, 6, 7, 8], []), ("p1", 1): (True, [5, 6], [])})
    two = run_table("2", {("p1", 0): (True, [5, 9, 7], [1, 3]), ("p1", 1): (True, [5, 6], [])})
    keys = pick(two, 10, 0)
    recs = {(r["problem_id"], r["sample_index"]): r for r in crosssample_records(two, keys, zero)}
    r = recs[("p1", 0)]
    # the switch at position 3 = len(response) drew EOS: it ended the response, it is no token's
    assert r["switched"] == [1] and r["n_switched"] == 2 and r["eos_switched"]
    assert r["twin"]["tokens"] == [5, 6, 7, 8] and r["twin"]["first_difference"] == 1 and not r["twin"]["correct"]
    assert recs[("p1", 1)]["twin"]["first_difference"] is None  # no switch: the twin is the same response
    groups = crosssample_groups("toy", "toy", [two, zero], ExplorerConfig())
    assert [g.budget for g in groups] == ["0", "2"]  # budget order, whatever the order given
    assert "twin" not in groups[0].records[0] and "twin" in groups[1].records[0]
    assert groups[1].as_json()["injected"] == "rl" and groups[1].as_json()["generator"] == "base"


def test_the_page_embeds_only_what_it_shows_and_no_text_can_close_its_script():
    g = rollout_group("toy", "toy", "base", score_table(), ExplorerConfig(responses_per_group=1))
    ids = used_ids([g])["toy"]
    assert ids == set(g.records[0]["tokens"]) | {1, 2, 3}  # tokens and both models' candidates
    vocab = {"toy": {i: "</script><b>x" for i in ids}}
    problems = {"toy": {"p1": {"question": "1+1", "gold": "2"}, "p2": {"question": "2+2", "gold": "4"}}}
    data = page_data([g], problems=problems, vocab=vocab)
    assert set(data["problems"]["toy"]) == {g.records[0]["problem_id"]}
    page = render(data)
    assert page.count("</script>") == 2  # the data's and the code's, none from a token's text
    embedded = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', page, re.S)[1]
    assert json.loads(embedded)["groups"][0]["responses"] == g.records
    assert "http://" not in page and "https://" not in page  # nothing to fetch: it works offline


# --- the page in a real browser, on tables written by the real stages ----------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory, toy_tokenizer):
    """A results directory as the workflow lays it out, written by the real stages for a pair of tiny
    random checkpoints on four toy problems, and the explorer page built from it."""
    from tokenshift.checkpoints import write_manifest
    from tokenshift.crosssample import run_crosssample
    from tokenshift.datasets import prepare_dataset
    from tokenshift.explorer import build_explorer
    from tokenshift.rollout import run_rollouts
    from tokenshift.scoring import run_scoring
    from tokenshift.settings import DatasetSpec, PromptConfig, SamplingConfig, ScoringConfig
    from tokenshift.tokenizer import check_pair

    root = tmp_path_factory.mktemp("explorer")
    models = {}
    for role, seed in (("base", 0), ("rl", 1)):
        save_checkpoint(root / "models" / role, toy_tokenizer, seed=seed)
        write_manifest(root / "models" / role, name=role, spec={"path": str(root / "models" / role)})
        models[role] = root / "models" / f"{role}.json"
    check_pair("p", models["base"], models["rl"], root / "pair.json")
    problems = root / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=4), problems)
    res = root / "results" / "p" / "toy"
    prompt = PromptConfig(template="{question}", chat_template=False)
    sampling = SamplingConfig(n=2, max_new_tokens=10)
    for role in ("base", "rl"):
        rollouts = res / "rollouts" / f"{role}.parquet"
        run_rollouts(models[role], problems, rollouts, prompt=prompt, sampling=sampling, progress=False)
        run_scoring(
            models["base"],
            models["rl"],
            root / "pair.json",
            rollouts,
            role,
            res / "scores" / f"{role}.parquet",
            cfg=ScoringConfig(top_k_candidates=3),
        )
    runs = []
    for budget in ("0", "3"):
        runs.append(res / "crosssample" / "forward" / "js" / f"budget-{budget}.parquet")
        run_crosssample(
            models["base"],
            models["rl"],
            problems,
            runs[-1],
            direction="forward",
            policy="js",
            budget=budget,
            threshold={"threshold": 0.0},
            pair="p",
            prompt=prompt,
            sampling=sampling,
            progress=False,
        )
    page = root / "results" / "explorer.html"
    scores = {role: res / "scores" / f"{role}.parquet" for role in ("base", "rl")}
    build_explorer({("p", "toy"): scores}, page, runs=runs, problems=[problems], tokenizers={"p": models["base"]})
    return page, res


def choose(driver, element_id: str, text: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_visible_text(text)


def shown_number(text: str) -> float:
    return {"n/a": math.nan, "∞": math.inf}.get(text) or float(text)


def selected_key(driver) -> tuple[str, int]:
    from selenium.webdriver.support.ui import Select

    text = Select(driver.find_element("id", "responses")).first_selected_option.text
    pid, sample = re.match(r"(\S+) #(\d+)", text).groups()
    return pid, int(sample)


def check_page(driver, page: Path, results: Path, screenshot: Path) -> None:
    """Use the page as a reader does and check what it shows against the tables under ``results``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(page.resolve().as_uri())
    assert driver.find_element(By.ID, "pair").get_attribute("value")
    # the RL model's rollouts, the response with the highest JS; Tab from the list into its tokens
    choose(driver, "group", "RL model's rollouts")
    choose(driver, "sort", "max JS")
    pid, sample = selected_key(driver)
    driver.find_element(By.ID, "responses").send_keys(Keys.TAB)
    first = driver.switch_to.active_element
    assert first.get_attribute("data-pos") == "0", "Tab from the list does not reach the first token"
    first.send_keys(Keys.ARROW_RIGHT)
    focused = driver.switch_to.active_element
    assert focused.get_attribute("data-pos") == "1", "the right arrow does not move to the next token"
    scores = pl.read_parquet(results / "scores" / "rl.parquet").filter(
        (pl.col("problem_id") == pid) & (pl.col("sample_index") == sample)
    )
    row = scores.filter(pl.col("position") == 1).row(0, named=True)
    panel = driver.find_element(By.ID, "panel")
    assert f"(id {row['token_id']})" in panel.text
    stats = {dd.get_attribute("data-stat"): dd.text for dd in panel.find_elements(By.CSS_SELECTOR, "dd")}
    for col, name in (
        ("js", "js"),
        ("kl_base_rl", "kl_br"),
        ("kl_rl_base", "kl_rb"),
        ("entropy_base", "h_base"),
        ("entropy_rl", "h_rl"),
    ):
        assert shown_number(stats[name]) == pytest.approx(row[col], rel=1e-3, abs=1e-9), col
    for role in ("base", "rl"):
        table = panel.find_element(By.CSS_SELECTOR, f"table[data-model={role}]")
        ids = [int(tr.get_attribute("data-id")) for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        probs = [float(td.text) for td in table.find_elements(By.CSS_SELECTOR, "tbody td.cp")]
        assert ids == list(row[f"top_ids_{role}"])
        assert probs == pytest.approx(list(row[f"top_probs_{role}"]), rel=1e-3)
        # the token itself, below the table where it is not a candidate
        outside = table.find_elements(By.CSS_SELECTOR, "tfoot td.cp")
        assert len(outside) == (row["token_id"] not in ids)
        if outside:
            assert float(outside[0].text) == pytest.approx(math.exp(row[f"logp_{role}"]), rel=2e-3)

    # the forward run with a budget: a response with a switch, sorted by switches; its first switched token
    label = next(
        o.text
        for o in driver.find_elements(By.CSS_SELECTOR, "#group option")
        if "forward" in o.text and "budget 0" not in o.text
    )
    choose(driver, "group", label)
    driver.find_element(By.ID, "has-switch").click()
    choose(driver, "sort", "switches")
    pid, sample = selected_key(driver)
    policy, budget = re.search(r"· (\S+) · budget (\S+)", label).groups()
    run = pl.read_parquet(results / "crosssample" / "forward" / policy / f"budget-{budget}.parquet")
    row = run.filter((pl.col("problem_id") == pid) & (pl.col("sample_index") == sample)).row(0, named=True)
    switched = [p for p in row["switched_positions"] if p < len(row["response_ids"])]
    assert switched, "a response listed under 'has a switch' has none"
    marked = driver.find_elements(By.CSS_SELECTOR, "#view .tok.sw-rl[data-row=main]")
    assert [int(s.get_attribute("data-pos")) for s in marked] == switched
    # by keyboard: Tab from the list to the first token, then right arrows to the switch
    driver.find_element(By.ID, "responses").send_keys(Keys.TAB)
    for _ in range(switched[0]):
        driver.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert driver.switch_to.active_element == marked[0]
    panel = driver.find_element(By.ID, "panel")
    js = float(panel.find_element(By.CSS_SELECTOR, "dd[data-stat=js]").text)
    assert js == pytest.approx(row["step_js"][switched[0]], rel=1e-3)
    assert "drawn from the RL model" in panel.find_element(By.CSS_SELECTOR, "[data-stat=switched]").text
    # its budget-0 twin, aligned below it: the same tokens up to the first switch
    twin_tokens = driver.find_elements(By.CSS_SELECTOR, "#view .tok[data-row=twin]")
    zero = pl.read_parquet(next((results / "crosssample" / "forward").glob("*/budget-0.parquet")))
    twin = zero.filter((pl.col("problem_id") == pid) & (pl.col("sample_index") == sample)).row(0, named=True)
    assert len(twin_tokens) == len(twin["response_ids"])
    driver.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    below = driver.switch_to.active_element
    assert (below.get_attribute("data-row"), below.get_attribute("data-pos")) == ("twin", str(switched[0]))
    assert "twin" in driver.find_element(By.ID, "panel").text
    below.send_keys(Keys.ARROW_UP)
    assert driver.switch_to.active_element == marked[0]
    driver.save_screenshot(str(screenshot))
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@pytest.mark.browser
def test_a_reader_finds_the_tables_values_in_the_explorer(study, tmp_path):
    page, results = study
    driver = chromium_driver()
    try:
        shot = tmp_path / "explorer.png"
        check_page(driver, page, results, shot)
        assert shot.stat().st_size > 10_000
        if os.environ.get("TOKENSHIFT_SCREENSHOTS"):  # to look at it: a directory to copy it into
            shutil.copy(shot, Path(os.environ["TOKENSHIFT_SCREENSHOTS"]) / "explorer.png")
    finally:
        driver.quit()


HOSTILE = ["<!--<script>", "</script><b>x", 'a"b&amp;c', "`${x}`", "line\u2028sep", "<!-- -->"]
"""Texts a real vocabulary or dataset holds that HTML or JS could take for markup or code."""


@pytest.mark.browser
def test_text_that_looks_like_markup_is_shown_literally_and_the_page_still_runs(tmp_path):
    # "<!--" then "<script>" in a script's text makes the HTML parser skip the next "</script>" (the
    # script data double-escaped state): the page's code would become part of its data
    from selenium.webdriver.common.by import By

    pair, dataset = "q<w&\"e'", "d<!--<script>"
    g = rollout_group(pair, dataset, "base", score_table(with_candidates=False), ExplorerConfig())
    ids = sorted(used_ids([g])[pair])
    vocab = {pair: {i: HOSTILE[k % len(HOSTILE)] for k, i in enumerate(ids)}}
    problems = {dataset: {"p1": {"question": "<!--<script>1+1", "gold": "</script>"}}}
    page = tmp_path / "explorer.html"
    page.write_text(render(page_data([g], problems=problems, vocab=vocab)), encoding="utf-8")
    driver = chromium_driver()
    try:
        driver.get(page.resolve().as_uri())
        assert driver.find_element(By.ID, "pair").get_attribute("value") == pair
        assert driver.find_element(By.ID, "dataset").get_attribute("value") == dataset
        choose(driver, "problem", "p1")
        choose(driver, "sort", "problem")
        assert selected_key(driver) == ("p1", 0)
        spans = driver.find_elements(By.CSS_SELECTOR, "#view .tok[data-row=main]")
        texts = [s.get_attribute("textContent") for s in spans]
        assert texts == [vocab[pair][i] for i in (5, 6, 7)]
        assert driver.find_element(By.CSS_SELECTOR, "#view .q").get_attribute("textContent") == "<!--<script>1+1"
        assert driver.find_element(By.CSS_SELECTOR, "#view .gold").get_attribute("textContent") == "</script>"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


def explorer_inputs(root: Path, tokenizer) -> Path:
    """A checkpoint ``root/tok`` and ``root/results/toy/toy`` with both score tables: explorer input."""
    save_checkpoint(root / "tok", tokenizer, seed=0)
    res = root / "results" / "toy" / "toy"
    (res / "scores").mkdir(parents=True)
    for source in ("base", "rl"):
        score_table(source=source).write_parquet(res / "scores" / f"{source}.parquet")
    return res


def test_a_table_without_a_column_the_page_needs_is_named_and_nothing_is_written(toy_tokenizer, tmp_path, capsys):
    from tokenshift.cli import main

    res = explorer_inputs(tmp_path, toy_tokenizer)
    run = tmp_path / "budget-2.parquet"
    run_table("2", {("p1", 0): (True, [5, 6], [1])}).drop("switched_positions").write_parquet(run)
    out = tmp_path / "explorer.html"
    scores = ["--scores", "toy", "toy", str(res / "scores" / "base.parquet"), str(res / "scores" / "rl.parquet")]
    args = ["explorer", *scores, "--tokenizer", f"toy={tmp_path / 'tok'}", "--out", str(out)]
    assert main([*args, "--runs", str(run)]) == 2
    assert f"{run}: has no column 'switched_positions'" in capsys.readouterr().err and not out.exists()
    # the two score tables swapped: the base model's responses were shown as the RL model's (eleventh pass, H3)
    assert main(["explorer", *scores[:3], scores[4], scores[3], *args[6:]]) == 2
    assert f"{scores[4]}: scores of the rl rollouts, given as the base scores" in capsys.readouterr().err
    # eleventh hostile pass (H4): a run of a pair whose scores are not given, a tokenizer of no pair given, one
    # dataset's problems twice: each left out, or taken twice, without a word
    other = tmp_path / "other.parquet"
    run_table("2", {("p1", 0): (True, [5, 6], [1])}).with_columns(pl.lit("ghost").alias("pair")).write_parquet(other)
    assert main([*args, "--runs", str(other)]) == 2
    assert "--runs: a run of pair 'ghost' on dataset" in capsys.readouterr().err
    assert main([*args, f"--tokenizer=ghost={tmp_path / 'tok'}"]) == 2
    assert "--tokenizer ghost=...: no such pair among the scores" in capsys.readouterr().err
    # one pair and dataset twice, or one run twice: each of its responses embedded twice (the tenth hostile pass, G3)
    assert main([*args, *scores]) == 2
    assert "--scores toy toy: given twice" in capsys.readouterr().err and not out.exists()
    good = tmp_path / "budget-2-good.parquet"
    run_table("2", {("p1", 0): (True, [5, 6], [1])}).write_parquet(good)
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(good.read_bytes())
    assert main([*args, "--runs", str(good), str(copy)]) == 2
    assert f"{copy}: the same run as {good} (" in capsys.readouterr().err and not out.exists()
    # sixteenth pass: a null source was a TypeError traceback; and the cross-sampling table's averaged counts
    null = tmp_path / "null_source.parquet"
    score_table(source="base").with_columns(pl.lit(None, pl.String).alias("source")).write_parquet(null)
    assert main(["explorer", "--scores", "toy", "toy", str(null), scores[4], *args[6:]]) == 2
    assert f"{null}: column 'source' is null" in capsys.readouterr().err and not out.exists()
    # the base model's scores of one scoring setting (top_k 5) beside the RL model's of another ran (sixteenth pass)
    labelled = {s: tmp_path / f"{s}_labelled.parquet" for s in ("base", "rl")}
    for source, label in (("base", "7fb1a490052e3626"), ("rl", "e43ac83c64916d35")):
        score_table(source=source).with_columns(settings=pl.lit(label)).write_parquet(labelled[source])
    assert main(["explorer", "--scores", "toy", "toy", str(labelled["base"]), str(labelled["rl"]), *args[6:]]) == 2
    assert f"{labelled['rl']}: column 'settings' holds ['e43ac83c64916d35']" in capsys.readouterr().err
    assert not out.exists()
    for column, value in (("n_forced", None), ("n_removed", "two")):
        bad = tmp_path / f"{column}.parquet"
        cross_run("forward", "js", "2", 0.5, 1).with_columns(pl.lit(value).alias(column)).write_parquet(bad)
        table = [
            "crosssample-table",
            str(bad),
            "--pair",
            "toy",
            "--dataset",
            "toy",
            "--out",
            str(tmp_path / "t.parquet"),
        ]
        assert main(table) == 2
        assert f"{bad}: column {column!r} " in capsys.readouterr().err and not (tmp_path / "t.parquet").exists()
    # scores from before scoring kept log-probabilities
    score_table(source="rl").drop("logp_rl").write_parquet(res / "scores" / "rl.parquet")
    assert main(args) == 2
    assert f"{res / 'scores' / 'rl.parquet'}: has no column 'logp_rl'" in capsys.readouterr().err
    assert not out.exists()


def test_the_page_is_utf8_whatever_the_locale(toy_tokenizer, tmp_path):
    # the page says <meta charset="utf-8"> and its template holds non-ASCII text (∞, ✓, ↵): under a
    # non-UTF-8 locale (LC_ALL=C without Python's UTF-8 mode) reading the template failed
    import subprocess
    import sys

    res = explorer_inputs(tmp_path, toy_tokenizer)
    out = tmp_path / "explorer.html"
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8"}
    scores = ["--scores", "toy", "toy", str(res / "scores" / "base.parquet"), str(res / "scores" / "rl.parquet")]
    args = ["explorer", *scores, "--tokenizer", f"toy={tmp_path / 'tok'}", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "tokenshift.cli", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = out.read_bytes().decode("utf-8")
    assert 'return "∞"' in page and '<meta charset="utf-8">' in page


def test_odd_runs_scores_and_problems_are_named_or_shown_not_tracebacks(toy_tokenizer, tmp_path, capsys):
    """Fifteenth hostile pass (M4-M7): a run whose direction or budget is none was a KeyError or a float()
    traceback, a categorical problem_id a polars SchemaError on the join, a problems table without rows an
    IndexError, candidates kept as lists (not arrays) an AttributeError."""
    from tokenshift.cli import main
    from tokenshift.datasets import DatasetSpec, prepare_dataset

    res = explorer_inputs(tmp_path, toy_tokenizer)
    out = tmp_path / "explorer.html"
    scores = ["--scores", "toy", "toy", str(res / "scores" / "base.parquet"), str(res / "scores" / "rl.parquet")]
    args = ["explorer", *scores, "--tokenizer", f"toy={tmp_path / 'tok'}", "--out", str(out)]
    good = run_table("2", {("p1", 0): (True, [5, 6], [1])})
    odd = [
        ("direction", "sideways", "direction 'sideways': expected one of forward, reverse"),
        ("budget", "two", "budget 'two': expected a non-negative integer or 'all'"),
    ]
    for col, value, needle in odd:
        bad = tmp_path / f"bad-{col}.parquet"
        good.with_columns(pl.lit(value).alias(col)).write_parquet(bad)
        assert main([*args, "--runs", str(bad)]) == 2
        assert f"{bad}: column {col!r}: {needle}" in capsys.readouterr().err and not out.exists()
    problems = tmp_path / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=2), problems)
    empty = tmp_path / "empty.parquet"
    pl.read_parquet(problems).head(0).write_parquet(empty)
    assert main([*args, "--problems", str(empty)]) == 2
    assert f"{empty}: has no rows" in capsys.readouterr().err and not out.exists()
    # a dictionary-encoded problem_id, and candidates as lists: the same page
    for source in ("base", "rl"):
        path = res / "scores" / f"{source}.parquet"
        table = pl.read_parquet(path).with_columns(pl.col("problem_id").cast(pl.Categorical))
        arrays = [c for c, t in table.schema.items() if isinstance(t, pl.Array)]
        table.with_columns(pl.col(c).arr.to_list() for c in arrays).write_parquet(path)
    run = tmp_path / "budget-2.parquet"
    good.with_columns(pl.col("problem_id").cast(pl.Categorical)).write_parquet(run)
    assert main([*args, "--runs", str(run)]) == 0, capsys.readouterr().err
    assert out.is_file()
