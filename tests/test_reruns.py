"""What Snakemake plans again, and only that: after a copy that sets an old mtime, after a code change,
after a setting results do not depend on (issue 24). Each test runs the real workflow on a tiny local
pair in a folder of its own, changes one thing, and reads Snakemake's own dry run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest
import yaml
from conftest import save_checkpoint
from helpers import failing_at, local_study_config, patched_source, planned, snakemake, tiny_problems

pytestmark = pytest.mark.slow

PROBLEMS = tiny_problems(3)
CONFIG = local_study_config(
    "ab",
    n=1,
    max_new_tokens=4,
    shard=1,
    policies=["random", "js"],  # budget 0 runs under js all the same: the registry's first
    thresholds={"random": {"percentile": 90}, "js": {"threshold": 0.01}},  # no scores needed
)
SOURCES = ["resources/models/a.json", "resources/models/b.json", "resources/datasets/tiny.parquet"]
DAY_AGO = time.time() - 86400


def workdir(path, tokenizer, config=CONFIG):
    save_checkpoint(path / "ckpt" / "a", tokenizer, seed=0)
    save_checkpoint(path / "ckpt" / "b", tokenizer, seed=1)
    (path / "data").mkdir()
    (path / "data" / "tiny.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    (path / "config").mkdir()
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def make(work, *targets, env=None):
    r = snakemake(work, "--cores", "2", *targets, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def plan_of(work, *targets, env=None):
    return planned(snakemake(work, "-n", *targets, env=env))


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, toy_tokenizer):
    """A workdir whose two local checkpoints are fetched and whose dataset is loaded (each test that
    changes a source makes its targets again, so the next one starts with nothing to do)."""
    work = workdir(tmp_path_factory.mktemp("fetched"), toy_tokenizer)
    make(work, *SOURCES)
    return work


def older_copy(src, dst, tool):
    """Put ``src``'s bytes at ``dst`` with an mtime about a day old, as ``tool`` does when it keeps the source's
    (one of its own for each tool: rsync skips a file whose size and mtime are those it would write)."""
    old = DAY_AGO - sum(map(ord, tool))
    os.utime(src, (old, old))
    if tool == "cp -p":
        subprocess.run(["cp", "-p", str(src), str(dst)], check=True)
    elif tool == "rsync -a":
        subprocess.run(["rsync", "-a", str(src), str(dst)], check=True)
    elif tool == "tar -x":
        assert src.name == dst.name
        archive = src.with_suffix(".tar")
        subprocess.run(["tar", "-cf", str(archive), "-C", str(src.parent), src.name], check=True)
        subprocess.run(["tar", "-xf", str(archive), "-C", str(dst.parent)], check=True)
    else:  # touch -d: written, then dated back
        shutil.copyfile(src, dst)
        subprocess.run(["touch", "-d", f"@{int(old)}", str(dst)], check=True)
    assert os.stat(dst).st_mtime < time.time() - 3600


COPY_TOOLS = [
    "cp -p",
    pytest.param("rsync -a", marks=pytest.mark.skipif(not shutil.which("rsync"), reason="rsync is not installed")),
    "tar -x",
    "touch -d",
]


@pytest.mark.parametrize("tool", COPY_TOOLS)
def test_weights_copied_with_an_old_mtime_rerun_the_fetch_and_are_refused(fetched, tool, toy_tokenizer, tmp_path):
    from tokenshift.checkpoints import ModelFetchError, resolve_checkpoint

    assert plan_of(fetched, *SOURCES) == {}
    other = save_checkpoint(tmp_path / "other", toy_tokenizer, seed=2 + sum(map(ord, tool)))  # new weights each time
    older_copy(other / "model.safetensors", fetched / "ckpt" / "b" / "model.safetensors", tool)
    assert plan_of(fetched, *SOURCES) == {"fetch_model": 1}
    # a stage run on the old manifest hashes the weights again and refuses them
    with pytest.raises(ModelFetchError, match="model 'b'"):
        resolve_checkpoint(fetched / "resources" / "models" / "b.json")
    make(fetched, *SOURCES)
    assert plan_of(fetched, *SOURCES) == {}
    resolve_checkpoint(fetched / "resources" / "models" / "b.json")


CHANGES = {
    "config.json": lambda c: c | {"rope_theta": 1234.0},
    "generation_config.json": lambda c: c | {"eos_token_id": [c["eos_token_id"], 3]},  # one more stop token
    # not a chat template: one on b alone would be refused at once (the pair would prompt differently)
    "tokenizer_config.json": lambda c: c | {"model_max_length": 77},
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_config_or_tokenizer_file_copied_with_an_old_mtime_reruns_the_fetch_and_what_reads_it(
    fetched, name, tmp_path
):
    from tokenshift.checkpoints import ModelFetchError, resolve_checkpoint

    targets = [*SOURCES, "resources/pairs/ab.json"]
    make(fetched, *targets)
    assert plan_of(fetched, *targets) == {}
    source = fetched / "ckpt" / "b" / name
    edited = tmp_path / name
    edited.write_text(json.dumps(CHANGES[name](json.loads(source.read_text()))))
    older_copy(edited, source, "cp -p")
    # a stage run on the old manifest refuses the changed file before loading anything
    with pytest.raises(ModelFetchError, match=f"model 'b': .*{name} is not the file its manifest"):
        resolve_checkpoint(fetched / "resources" / "models" / "b.json")
    # the fetch runs again, and its new manifest re-runs what reads it (not only a dry run's plan)
    make(fetched, "resources/models/b.json")
    assert plan_of(fetched, *targets) == {"check_pair": 1}
    make(fetched, *targets)
    assert plan_of(fetched, *targets) == {}
    resolve_checkpoint(fetched / "resources" / "models" / "b.json")


@pytest.mark.parametrize("tool", ["cp -p", "touch -d"])
def test_a_dataset_file_copied_with_an_old_mtime_reruns_the_dataset(fetched, tool, tmp_path):
    assert plan_of(fetched, *SOURCES) == {}
    edited = tmp_path / "tiny.jsonl"
    edited.write_text((fetched / "data" / "tiny.jsonl").read_text() + json.dumps(PROBLEMS[0] | {"id": tool}) + "\n")
    older_copy(edited, fetched / "data" / "tiny.jsonl", tool)
    assert plan_of(fetched, *SOURCES) == {"dataset": 1}
    make(fetched, *SOURCES)
    assert plan_of(fetched, *SOURCES) == {}


STUDY = ["results/ab/tiny/accuracy.parquet", "results/ab/tiny/crosssample.parquet"]
"""The tables of the tiny study: rollouts and their accuracy, and three cross-sampling runs."""
AFTER_ROLLOUTS = {"rollout": 2, "gather_rollouts": 2, "accuracy": 1}
AFTER_CROSSSAMPLES = {"crosssample": 3, "gather_crosssample": 3, "crosssample_table": 1}


@pytest.fixture(scope="module")
def study(tmp_path_factory, toy_tokenizer):
    work = workdir(tmp_path_factory.mktemp("study"), toy_tokenizer)
    make(work, *STUDY)
    return work


def patched(tmp_path, module: str, function: str | None = None) -> dict[str, str]:
    """The environment of a tokenshift whose ``module`` (a path in the package) has changed: a copy of
    src/ with a line added to ``function`` (None: an unused setting at its end), first on PYTHONPATH."""
    return {"PYTHONPATH": str(patched_source(tmp_path, module, function))}


def test_a_code_change_reruns_the_stages_that_run_it_and_no_other(study, tmp_path):
    assert plan_of(study, *STUDY) == {}
    # the grader: the rollouts and cross-samples grade, and all that reads them follows
    assert (
        plan_of(study, *STUDY, env=patched(tmp_path, "grading.py", "grade_one")) == AFTER_ROLLOUTS | AFTER_CROSSSAMPLES
    )
    # the tables' code: the table that runs it, not the runs it aggregates
    assert plan_of(study, *STUDY, env=patched(tmp_path, "tables.py", "accuracy_table")) == {"accuracy": 1}
    assert plan_of(study, *STUDY, env=patched(tmp_path, "tables.py", "crosssample_table")) == {"crosssample_table": 1}
    # the rollout stage's own module: the rollouts, not the cross-samples
    assert plan_of(study, *STUDY, env=patched(tmp_path, "rollout.py", "run_rollouts")) == AFTER_ROLLOUTS
    # the cross-sampling stage: the cross-samples, not the rollouts, though they decode with one decoder...
    assert plan_of(study, *STUDY, env=patched(tmp_path, "crosssample.py", "run_crosssample")) == AFTER_CROSSSAMPLES
    # ...which both run: a change to it re-runs both
    assert plan_of(study, *STUDY, env=patched(tmp_path, "decoding.py", "_decode_batch")) == (
        AFTER_ROLLOUTS | AFTER_CROSSSAMPLES
    )
    # the scores' statistics, a setting nothing reads, the figures' style: nothing these tables need
    assert plan_of(study, *STUDY, env=patched(tmp_path, "divergence.py", "token_stats_unchecked")) == {}
    assert plan_of(study, *STUDY, env=patched(tmp_path, "crosssample.py")) == {}
    assert plan_of(study, *STUDY, env=patched(tmp_path, "plots/style.py")) == {}
    assert plan_of(study, *STUDY) == {}


def overridden(tmp_path, overrides: dict) -> list[str]:
    """Snakemake's arguments to read ``overrides`` over the config (sections are merged key by key)."""
    path = tmp_path / f"override-{len(list(tmp_path.glob('override-*')))}.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return ["--configfile", str(path)]


def test_settings_results_do_not_depend_on_rerun_nothing(study, tmp_path):
    targets = [*STUDY, "results/config.yaml"]  # the settings the report quotes, too
    make(study, "results/config.yaml")
    assert plan_of(study, *targets) == {}
    # documented: results do not depend on them
    batches = {"rollout": {"batch_size": 3}, "crosssample": {"batch_size": 2}, "cluster": {"gpu_memory_gb": 40}}
    assert plan_of(study, *targets, *overridden(tmp_path, batches)) == {}
    # a dataset's defaults written out in full (twelfth hostile pass: the default study's 37 jobs re-planned)
    defaults = {"datasets": {"tiny": {"question_field": "problem", "answer_field": "answer"}}}
    assert plan_of(study, *STUDY, *overridden(tmp_path, defaults)) == {}
    # the grid's policies in another order: budget 0 keeps its path and its settings
    assert plan_of(study, *STUDY, *overridden(tmp_path, {"crosssample": {"policies": ["js", "random"]}})) == {}
    # the same numbers written otherwise (90.0 for 90, 1 for 1.0) are the same settings
    same = {"crosssample": {"thresholds": {"random": {"percentile": 90.0}}}, "sampling": {"temperature": 1}}
    assert plan_of(study, *targets, *overridden(tmp_path, same)) == {}
    # a setting results depend on rewrites the quoted config
    assert plan_of(study, "results/config.yaml", *overridden(tmp_path, {"sampling": {"top_p": 0.5}})) == {
        "run_config": 1
    }


def test_a_threshold_spelled_another_way_reruns_no_computation(study, tmp_path):
    # second hostile pass: this planned the cross-sampling runs again, with the same result (a --configfile
    # adds to the study's random: {percentile: 90}); a blind draw's percentile is the same at every level.
    # Other spellings (a tau, level: dataset written out) are one rule in test_crosssample.
    same = {"random": {"level": "response"}}
    assert plan_of(study, *STUDY, *overridden(tmp_path, {"crosssample": {"thresholds": same}})) == {}


def test_a_key_of_the_other_engine_reruns_nothing_and_the_engine_reruns_the_cross_samples(study, tmp_path):
    assert plan_of(study, *STUDY) == {}
    # the vLLM engines' settings: read by engine regenerate (and the vllm rollout backend), so by no job here
    vllm = {"rollout": {"vllm_dtype": "float32", "vllm_enforce_eager": True, "vllm_gpu_memory_utilization": 0.5}}
    assert plan_of(study, *STUDY, *overridden(tmp_path, vllm)) == {}
    regenerate = overridden(tmp_path, {"crosssample": {"engine": "regenerate"}})
    assert plan_of(study, *STUDY, *regenerate) == AFTER_CROSSSAMPLES


def test_a_new_threshold_reruns_that_policys_runs_not_budget_0(study, tmp_path):
    one_run = {"crosssample": 1, "gather_crosssample": 1, "crosssample_table": 1}
    for policy, spec in (("js", {"threshold": 0.02}), ("random", {"percentile": 80})):
        changed = overridden(tmp_path, {"crosssample": {"thresholds": {policy: spec}}})
        assert plan_of(study, *STUDY, *changed) == one_run, policy


def test_a_pair_with_its_models_swapped_reruns_every_job_that_reads_both(study, tmp_path):
    """Seventh hostile pass (L1): with a pair's base and rl swapped in the config, the pair check and the
    cross-sampling runs that read no scores stayed "up to date" (Snakemake compares a job's inputs as a
    set of files), though the forward runs' generator was now the other model."""
    assert plan_of(study, *STUDY, "resources/pairs/ab.json") == {}
    swapped = [{**CONFIG["pairs"][0], "base": "b", "rl": "a"}]
    plan = plan_of(study, *STUDY, "resources/pairs/ab.json", *overridden(tmp_path, {"pairs": swapped}))
    assert plan == {"check_pair": 1, **AFTER_ROLLOUTS, **AFTER_CROSSSAMPLES}


def test_a_damaged_part_is_named_with_the_command_that_makes_it_again(study):
    import polars as pl

    assert plan_of(study, *STUDY) == {}
    rel = "results/ab/tiny/rollouts/base.parts/1-of-1.parquet"
    part = study / rel
    part.write_bytes(part.read_bytes()[:200])  # a finished part, truncated since (a full disk, a bad copy)
    assert snakemake(study, "--cores", "1", *STUDY).returncode != 0
    log = (study / "logs" / "rollouts" / "ab" / "tiny" / "base.log").read_text()
    # the failed gather's table is gone, and Snakemake would plan nothing more: the log says what to run
    command = re.search(r"`snakemake (--cores all all --forcerun (\S+))`", log)
    assert command and command[2] == rel, log
    make(study, *STUDY, *command[1].split()[3:])  # that command, for this test's targets
    assert pl.read_parquet(part).height == len(PROBLEMS)
    assert plan_of(study, *STUDY) == {}


def test_a_damaged_table_is_named_with_the_command_that_makes_it_again(study):
    import polars as pl

    assert plan_of(study, *STUDY) == {}
    rel = "results/ab/tiny/rollouts/base.parquet"
    table = study / rel
    table.write_bytes(table.read_bytes()[:200])  # a finished table, truncated since
    assert snakemake(study, "--cores", "1", *STUDY).returncode != 0
    # the job that reads it fails, and would fail again at each run: its log names the job to force
    log = (study / "logs" / "accuracy" / "ab" / "tiny.log").read_text()
    command = re.search(r"`snakemake (--cores all all --forcerun (\S+))`", log)
    assert command and command[2] == rel, log
    make(study, *STUDY, *command[1].split()[3:])
    assert pl.read_parquet(table).height == len(PROBLEMS)
    assert plan_of(study, *STUDY) == {}


def interrupted(work, part: str, tmp_path, env=None) -> None:
    """Run the job of ``part`` as Snakemake would, and have it die after its last shard, as it puts the
    part in place (a ``sitecustomize`` in the job's Python fails that one rename: a full disk there, or
    a job killed at that moment, leaves the same files)."""
    r = snakemake(work, "-n", "-p", part, "--forcerun", "crosssample", env=env)
    command = re.search(r"^Shell command: (tokenshift crosssample .*?2>&1)$", r.stdout, re.M | re.S)  # one job
    assert command and part in command[1], r.stdout[-3000:]
    (work / part).unlink()  # Snakemake removes a job's output before it runs the job
    # the job imports the tokenshift Snakemake's jobs import (a patched copy, or the one the tests run)
    done = subprocess.run(["bash", "-c", command[1]], cwd=work, env={**os.environ, **failing_at(tmp_path, part, env)})
    assert done.returncode != 0 and not (work / part).exists()
    assert sorted(p.name for p in (work / f"{part}.shards").glob("shard-*.parquet")) == [
        f"shard-{i:05d}.parquet" for i in range(len(PROBLEMS))
    ]


def test_a_forced_job_reuses_an_interrupted_runs_shards_only_when_made_as_it_would_make_them(study, tmp_path):
    part = "results/ab/tiny/crosssample/forward/random/budget-2.parts/1-of-1.parquet"
    log = study / "logs" / "crosssample" / "ab" / "tiny" / "forward" / "random" / "budget-2" / "1-of-1.log"
    # the same settings, inputs and code: the shards hold what the job computes, and are taken (docs/targets.md)
    interrupted(study, part, tmp_path)
    make(study, part, "--forcerun", "crosssample")
    assert f"{len(PROBLEMS)} of {len(PROBLEMS)} shards already written" in log.read_text()
    # other code (an upgrade since): the shards are discarded and the job recomputes from nothing
    interrupted(study, part, tmp_path)
    make(study, part, "--forcerun", "crosssample", env=patched(tmp_path, "crosssample.py", "run_crosssample"))
    text = log.read_text()
    assert "starting over" in text and "already written" not in text
    assert not (study / f"{part}.shards").exists()
