"""Results always match their inputs: a real workflow on a tiny local pair, then edits and faults.

The pair is two copies of one small random checkpoint, so cross-sampling never switches (JS is
exactly 0 everywhere): a legitimate result that once made `all` fail. The dataset is a local
file with a prompt template. Each test changes one input or setting and checks, with
Snakemake's own dry run, that exactly what depends on it is planned again (issue 13).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import polars as pl
import pytest
import yaml
from conftest import run, save_checkpoint, tokenshift_cmd
from helpers import failing_at, local_study_config, plan, snakemake, tiny_problems

pytestmark = pytest.mark.slow

PROBLEMS = tiny_problems(6)
CONFIG = local_study_config("same", n=2, max_new_tokens=8, shard=2, policies=["js", "random"])


@pytest.fixture(scope="module")
def study(tmp_path_factory, toy_tokenizer):
    work = tmp_path_factory.mktemp("local")
    save_checkpoint(work / "ckpt" / "a", toy_tokenizer, seed=0)
    shutil.copytree(work / "ckpt" / "a", work / "ckpt" / "b")
    (work / "data").mkdir()
    (work / "data" / "tiny.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    (work / "config").mkdir()
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    r = snakemake(work, "--cores", "2", "all", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work


AFTER_DATASET = {
    "dataset": 1,
    "rollout": 2,
    "gather_rollouts": 2,
    "accuracy": 1,
    "score": 2,
    "gather_scores": 2,
    "divergence": 1,
    "crosssample": 3,
    "gather_crosssample": 3,
    "crosssample_table": 1,
    "csv_table": 6,  # the CSV copies of accuracy, the four divergence tables and cross-sampling
    "figures": 1,
    "figure_overview": 1,
    "explorer": 1,
    "report": 1,
    "all": 1,
}


def test_two_copies_of_one_model_still_give_a_report(study):
    runs = study / "results" / "same" / "tiny" / "crosssample" / "forward"
    assert (pl.read_parquet(runs / "js" / "budget-2.parquet")["n_switched"] == 0).all()  # JS is 0 everywhere
    example = pl.read_parquet(study / "results" / "same" / "tiny" / "figures" / "example.parquet")
    assert example.height == 0  # nothing to show, and the figure says so instead of failing the run
    assert (study / "results" / "same" / "tiny" / "figures" / "example.png").stat().st_size > 5000
    assert (study / "results" / "report.html").is_file()
    table = pl.read_parquet(study / "results" / "same" / "tiny" / "crosssample.parquet")
    assert set(table["pair"]) == {"same"} and set(table["dataset"]) == {"tiny"}


def test_the_prompt_template_is_the_one_configured(study):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(study / "ckpt" / "a")
    rollouts = pl.read_parquet(study / "results" / "same" / "tiny" / "rollouts" / "base.parquet")
    assert tok.decode(rollouts["prompt_ids"][0]) == "Q:1a+1=?\n"
    assert not list((study / "results").rglob("*.shards"))  # finished runs keep no shards


def test_a_rerun_is_a_no_op(study):
    assert plan(study) == {}


def test_a_study_moved_whole_reruns_nothing_and_finds_its_checkpoints(study):
    # eighteenth hostile pass: the fetch's --path was the checkpoint's absolute path, so a study moved with its
    # checkpoints beside it (`path: ckpt/a`) re-ran every job, and its links pointed where the files no longer were
    from tokenshift.checkpoints import resolve_checkpoint
    from tokenshift.loading import load_causal_lm

    moved = study.with_name(study.name + "-moved")
    study.rename(moved)
    try:
        assert plan(moved) == {}
        ckpt = resolve_checkpoint(moved / "resources" / "models" / "a.json")  # verified against its manifest
        assert all(os.path.realpath(f).startswith(str(moved)) for f in ckpt.iterdir())
        assert load_causal_lm(ckpt, "cpu").config.vocab_size > 0
    finally:
        moved.rename(study)


def test_an_edited_gold_answer_reruns_the_dataset_and_everything_after_it(study):
    data = study / "data" / "tiny.jsonl"
    before, stat = data.read_text(), data.stat()
    try:
        data.write_text(before.replace('"answer": "2"', '"answer": "3"'))
        assert plan(study) == AFTER_DATASET
    finally:
        data.write_text(before)
        os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # the old bytes under the old mtime: a copy all the same (its ctime), so the dataset is loaded again;
    # it writes the same table, so nothing after it re-runs
    assert plan(study) == AFTER_DATASET
    r = snakemake(study, "--cores", "1", "resources/datasets/tiny.parquet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert plan(study) == {}


def test_a_job_that_fails_after_a_changed_setting_leaves_nothing_made_before_it_looking_up_to_date(study, tmp_path):
    """Sixteenth hostile pass: with a rollout setting changed, the base model's rollout job was killed; Snakemake
    deleted its part, and with it the record of the settings it was made with, and then planned no rollout for
    the base model: the gathered rollouts, and all made from them, stayed under the old setting for good."""
    config = study / "config" / "config.yaml"
    before = config.read_text()
    part = "results/same/tiny/rollouts/base.parts/1-of-1.parquet"
    try:
        config.write_text(yaml.safe_dump({**CONFIG, "rollout": {**CONFIG["rollout"], "threads": 1}}, sort_keys=False))
        r = snakemake(study, "--cores", "1", "all", env=failing_at(tmp_path, part))
        assert r.returncode != 0 and not (study / part).exists(), r.stderr[-3000:]
        r = snakemake(study, "-n", "all")
        assert r.returncode == 0 and f"output: {part}" in r.stdout, r.stdout[-3000:]
        assert {"rollout", "gather_rollouts", "accuracy", "score", "report"} <= plan(study).keys()
    finally:
        config.write_text(before)
    r = snakemake(study, "--cores", "2", "all", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert plan(study) == {}


def test_weights_copied_over_a_local_checkpoint_are_refused_and_rerun(study, tmp_path, toy_tokenizer):
    weights = study / "ckpt" / "b" / "model.safetensors"
    saved = tmp_path / "saved.safetensors"
    shutil.copy2(weights, saved)
    try:
        other = save_checkpoint(tmp_path / "other", toy_tokenizer, seed=1)
        shutil.copyfile(other / "model.safetensors", weights)
        # a stage run on the old manifest refuses before loading anything
        r = run(
            tokenshift_cmd()
            + [
                "score",
                "--base",
                "resources/models/a.json",
                "--rl",
                "resources/models/b.json",
                "--pair",
                "resources/pairs/same.json",
                "--rollouts",
                "results/same/tiny/rollouts/rl.parquet",
                "--source",
                "rl",
                "--out",
                str(tmp_path / "s.parquet"),
            ],
            cwd=study,
        )
        assert r.returncode == 2 and "model 'b'" in r.stderr and "model.safetensors" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "s.parquet").exists()
        # and the workflow plans the checkpoint again, with every job that read it
        rl_side = {k: v for k, v in AFTER_DATASET.items() if k != "dataset"} | {"rollout": 1, "gather_rollouts": 1}
        assert plan(study) == {"fetch_model": 1, "check_pair": 1, **rl_side}
    finally:
        shutil.copy2(saved, weights)
    # the old weights under their old mtime: the fetch runs again, writes the same manifest, and nothing
    # after it re-runs
    r = snakemake(study, "--cores", "1", "resources/models/b.json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert plan(study) == {}


def test_a_changed_threshold_reruns_the_runs_that_use_it(study, tmp_path):
    changed = yaml.safe_load((study / "config" / "config.yaml").read_text())
    changed["crosssample"]["thresholds"] = {"js": {"percentile": 50}}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    got = plan(study, "--configfile", str(tmp_path / "changed.yaml"))
    # the js run of budget 2, not budget 0 (which takes no threshold) nor the random one; then the table,
    # figures and report
    assert got == {
        "crosssample": 1,
        "gather_crosssample": 1,
        "crosssample_table": 1,
        "csv_table": 1,
        "figures": 1,
        "explorer": 1,
        "run_config": 1,
        "report": 1,
        "all": 1,
    }


def test_forcing_one_run_recomputes_it(study):
    target = "results/same/tiny/crosssample/forward/js/budget-2.parquet"
    before = pl.read_parquet(study / target)
    r = snakemake(study, "--cores", "1", target, "--forcerun", "crosssample")
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"^crosssample\s+1$", r.stdout + r.stderr, re.M)
    log = (study / "logs" / "crosssample" / "same" / "tiny" / "forward" / "js" / "budget-2" / "1-of-1.log").read_text()
    assert "already written" not in log and "resuming" not in log  # computed again, not re-joined from shards
    assert pl.read_parquet(study / target).drop("response_text").equals(before.drop("response_text"))
    assert plan(study) == {}  # the same bytes again: nothing downstream to redo


def test_another_spelling_of_a_checkpoints_path_reruns_nothing(study):
    # twenty-second pass: `ckpt/a/` for `ckpt/a` re-ran every job of the model (the fetch's param, and the path its
    # manifest records, were the spelling)
    config = study / "config" / "config.yaml"
    before = config.read_text()
    assert before.count("path: ckpt/a\n") == 1
    try:
        for spelling in ("ckpt/a/", "./ckpt//a"):
            config.write_text(before.replace("path: ckpt/a\n", f"path: {spelling}\n"))
            assert plan(study) == {}, spelling
    finally:
        config.write_text(before)
