"""The whole default workflow from nothing, as a user runs it: slow (minutes), run in CI."""

from __future__ import annotations

import copy
import itertools
import json
import re
import shlex
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import REPO
from helpers import DEFAULT_RUN_LIMIT_S, SECTIONS, plan, planned, run_workflow, snakemake

from tokenshift.config import SCHEMA_PATH
from tokenshift.settings import CrossSampleGrid

# every test here may be the first to wait on the default run: its timeout is the run's limit and its own time
pytestmark = [pytest.mark.slow, pytest.mark.timeout(DEFAULT_RUN_LIMIT_S + 600)]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("study")
    shutil.copytree(REPO / "config", work / "config")
    run_workflow(work, "--cores", "2", "all", limit_s=DEFAULT_RUN_LIMIT_S)
    return work


def test_toy_pair_is_built_as_ordinary_checkpoints(default_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("toy-base", "toy-rl"):
        manifest = json.loads((default_run / "resources" / "models" / f"{name}.json").read_text())
        assert manifest["source"] == "toy" and manifest["tokenizer_roundtrip"] == "ok"
        model = AutoModelForCausalLM.from_pretrained(default_run / "resources" / "models" / name)
        assert type(model).__name__ == "Qwen2ForCausalLM"
        assert (
            len(AutoTokenizer.from_pretrained(default_run / "resources" / "models" / name))
            == manifest["tokenizer_size"]
        )
    pair = json.loads((default_run / "resources" / "pairs" / "toy.json").read_text())
    assert pair["identical_tokenizers"]


def test_rl_beats_base_by_a_quarter_at_temperature_one(default_run):
    acc = pl.read_parquet(default_run / "results" / "toy" / "toy_check" / "accuracy.parquet")
    sampled = {r["role"]: r for r in acc.filter(pl.col("decoding") == "sampled_t1").iter_rows(named=True)}
    n_eval = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"]["toy"]["n_problems"]
    assert sampled["base"]["n_problems"] == n_eval >= 500
    assert sampled["rl"]["accuracy"] >= sampled["base"]["accuracy"] + 0.25
    assert sampled["rl"]["ci_low"] > sampled["base"]["ci_high"]


def test_shift_is_sparse_and_falls_on_decision_points(default_run):
    dp = pl.read_parquet(default_run / "results" / "toy" / "toy_check" / "decision_points.parquet")
    overall = dp.filter(pl.col("selection") == "all").row(0, named=True)
    assert overall["share_js_below_1e-3"] > 0.5  # most positions barely move
    top10 = dp.filter((pl.col("selection") == "top_share") & (pl.col("value") == 0.10)).row(0, named=True)
    assert top10["lift"] > 3  # the highest-JS positions are decision points far more often than chance
    assert overall["js_share_on_decision_points"] > 2 * overall["base_rate"]


def test_rerun_is_a_no_op(default_run):
    r = snakemake(default_run, "--cores", "2", "all")
    assert r.returncode == 0
    assert "Nothing to be done" in r.stdout + r.stderr


def test_rollouts_and_accuracy_tables(default_run):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    n = config["sampling"]["n"]
    for role in ("base", "rl"):
        t = pl.read_parquet(default_run / "results" / "toy" / "toy" / "rollouts" / f"{role}.parquet")
        assert t.height == config["datasets"]["toy"]["n_problems"] * n
        assert (t["grade_status"] == "ok").mean() > 0.95  # the toy models answer in \boxed{}
    acc = pl.read_parquet(default_run / "results" / "toy" / "toy" / "accuracy.parquet")
    avg = {r["role"]: r for r in acc.filter(pl.col("metric") == f"avg@{n}").iter_rows(named=True)}
    assert avg["rl"]["ci_low"] > avg["base"]["ci_high"]
    assert set(acc["metric"]) == {f"avg@{n}"} | {f"pass@{k}" for k in config["rollout"]["pass_k"]}


def test_divergence_tables_show_a_sparse_reallocating_shift(default_run):
    d = default_run / "results" / "toy" / "toy" / "divergence"
    sp = pl.read_parquet(d / "sparsity.parquet").filter((pl.col("kind") == "share_below") & (pl.col("js_nats") == 1e-3))
    assert sorted(sp["source"]) == ["base", "rl"] and (sp["share"] > 0.5).all()
    re = pl.read_parquet(d / "reallocation.parquet").filter(pl.col("metric") == "rl_top1_in_base_top3")
    assert (re["value"] > 0.9).all()  # RL reallocates mass among the base model's own candidates
    dp = pl.read_parquet(d / "decision_points.parquet")
    top10 = dp.filter((pl.col("selection") == "top_share") & (pl.col("value") == 0.10))
    assert (top10["lift"] > 3).all() and (top10["n_responses"] > 100).all()
    for source in ("base", "rl"):
        scores = pl.read_parquet(default_run / "results" / "toy" / "toy" / "scores" / f"{source}.parquet")
        rollouts = pl.read_parquet(default_run / "results" / "toy" / "toy" / "rollouts" / f"{source}.parquet")
        assert scores.height == rollouts["n_response_tokens"].sum()  # every response token scored once


def _accuracy(default_run):
    n = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["sampling"]["n"]
    acc = pl.read_parquet(default_run / "results" / "toy" / "toy" / "accuracy.parquet")
    return {r["role"]: r for r in acc.filter(pl.col("metric") == f"avg@{n}").iter_rows(named=True)}


def _cross(default_run):
    t = pl.read_parquet(default_run / "results" / "toy" / "toy" / "crosssample.parquet")
    return {
        (r["direction"], r["policy"], r["budget"]): r for r in t.filter(~pl.col("extrapolation")).iter_rows(named=True)
    }


def _overlap(a, b):
    return a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"]


def _above(a, b):
    return a["ci_low"] > b["ci_high"]


def test_forward_cross_sampling_recovers_rl_accuracy_with_few_tokens(default_run):
    acc, cs = _accuracy(default_run), _cross(default_run)
    budgets = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["crosssample"]["budgets"]
    labels = [str(b) for b in budgets]
    f = {b: cs[("forward", "js", b)] for b in labels}
    # the two ends are the two models: budget 0 is the base model, no limit is (about) the RL model;
    # the cross-sampled problems are the first n_problems of the same eval set
    assert _overlap(f["0"], acc["base"]) and f["0"]["mean_switched"] == 0
    assert _overlap(f["all"], acc["rl"]) and _above(f["all"], f["0"])
    # accuracy rises with the budget (each step within the CIs' noise), bought with a few tokens
    for lo, hi in itertools.pairwise(labels):
        assert f[hi]["accuracy"] >= f[lo]["ci_low"] - (f[lo]["ci_high"] - f[lo]["ci_low"]) / 2
    assert f["all"]["switched_share"] < 0.15 and f["all"]["mean_switched"] < 10
    # the same number of tokens switched at random positions does far less
    for b in labels[1:]:
        rnd = cs[("forward", "random", b)]
        assert rnd["mean_switched"] >= 0.8 * f[b]["mean_switched"]
    assert _above(f["all"], cs[("forward", "random", "all")])
    assert _above(f["all"], cs[("forward", "argmax", "all")]) or _overlap(f["all"], cs[("forward", "argmax", "all")])


def test_the_follow_ups_direction_and_its_extrapolation_recover_rl_accuracy(default_run):
    cs = _cross(default_run)
    table = pl.read_parquet(default_run / "results" / "toy" / "toy" / "crosssample.parquet")
    beside = table.filter(pl.col("extrapolation"))
    gammas = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["crosssample"]["gammas"]
    assert beside["gamma"].to_list() == gammas and set(beside["injection"]) == {"extrapolate"}
    assert set(table.filter(~pl.col("extrapolation"))["injection"]) == {"sample"}
    base = cs[("forward", "js", "0")]
    # Δlog p switching lifts the base model as JS switching does, and above as many random switches
    assert _above(cs[("forward", "dlogp", "all")], base)
    assert _above(cs[("forward", "dlogp", "all")], cs[("forward", "random", "all")])
    # extrapolating one step past the RL model at the same positions: above the base model, switching
    # where the same policy does
    for r in beside.iter_rows(named=True):
        assert (r["direction"], r["policy"], r["budget"]) == ("forward", "dlogp", "all")
        assert _above(r, base) and r["mean_switched"] > 0


def test_reverse_cross_sampling_falls_toward_base_accuracy(default_run):
    acc, cs = _accuracy(default_run), _cross(default_run)
    r0, rall = cs[("reverse", "js", "0")], cs[("reverse", "js", "all")]
    assert _overlap(r0, acc["rl"])
    assert _above(r0, rall) and rall["accuracy"] < acc["rl"]["ci_low"]
    assert rall["accuracy"] - acc["base"]["value"] < 0.6 * (acc["rl"]["value"] - acc["base"]["value"])


def readme_rerun_commands() -> list[list[str]]:
    """The commands of docs/targets.md's "Re-running" section (README's until issue 27.5)."""
    text = (REPO / "docs" / "targets.md").read_text()
    section = text[text.index("## Re-running") : text.index("Nothing else needs forcing")]
    return [shlex.split(c) for c in re.findall(r"```bash\n(snakemake [^\n]*)\n```", section)]


def test_readmes_notebook_example_runs_on_the_default_study(default_run, monkeypatch):
    # issue 28's done-when: README shows the notebook calls; here they run as written, in the study's folder
    block = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)[1]
    monkeypatch.chdir(default_run)
    names: dict = {}
    exec(compile(block, "README.md", "exec"), names)
    tokens, tables = names["tokens"], names["tables"]
    assert tokens.height > 0 and tokens["js"].is_finite().all() and (tokens["js"] >= 0).all()
    assert {"accuracy", "crosssample"} <= set(tables) and tables["crosssample"].height > 0


def test_readme_rerun_commands_do_what_they_say(default_run):
    force_rollout, force_budget, force_rule = readme_rerun_commands()
    for cmd, rule, log in (
        (force_rollout, "rollout", "logs/rollouts/toy/toy/rl/1-of-1.log"),
        (force_budget, "crosssample", "logs/crosssample/toy/toy/forward/js/budget-4/1-of-1.log"),
    ):
        target = next(a for a in cmd if a.endswith(".parquet"))
        before = pl.read_parquet(default_run / target)
        r = snakemake(default_run, *cmd[1:])
        assert r.returncode == 0, r.stderr[-2000:]
        stats = r.stdout + r.stderr
        # the job that computes the table, and the (local) one that gathers its parts
        assert re.search(rf"^{rule}\s+1$", stats, re.M) and re.search(r"^total\s+2$", stats, re.M), stats[-2000:]
        assert "already written" not in (default_run / log).read_text()  # recomputed, not re-joined from shards
        after = pl.read_parquet(default_run / target)
        assert after.drop("response_text").equals(before.drop("response_text"))  # seeded: the same run again
    assert plan(default_run) == {}  # the same bytes again: nothing downstream to redo
    # every job of the rule: the grid's runs (the extrapolation runs beside it are a rule of their own)
    config = yaml.safe_load((default_run / "config" / "config.yaml").read_text())
    runs = len(CrossSampleGrid.from_config(config["crosssample"]).runs(config["sampling"]["max_new_tokens"]))
    assert planned(snakemake(default_run, "-n", *force_rule[1:])) == {
        "crosssample": runs,
        "gather_crosssample": runs,
        "crosssample_table": 1,
        "csv_table": 1,  # its CSV copy
        "figures": 1,
        "explorer": 1,
        "report": 1,
        "all": 1,
    }


# Which jobs read each config key (the jobs after them follow from the DAG): an independent
# statement of the workflow's contract, checked against Snakemake's own change detection.
# the grid's cross-sampling runs and the extrapolation run beside it (crosssample.gammas)
CROSSSAMPLERS = ("crosssample", "crosssample_extrapolated")
SAMPLERS = ("rollout", *CROSSSAMPLERS)
CONSUMERS = {
    "sampling.n": (*SAMPLERS, "toy_check"),
    "sampling.temperature": SAMPLERS,
    "sampling.top_p": SAMPLERS,
    "sampling.max_new_tokens": SAMPLERS,
    "sampling.seed": (*SAMPLERS, "toy_check"),
    **{f"rollout.{k}": ("rollout",) for k in ("backend", "threads")},
    # results do not depend on a batch size, nor on where a rollout's shards split the problems (each response
    # draws from its own seed): they reach their jobs unrecorded, and nothing is redone
    "rollout.batch_size": (),
    "rollout.problems_per_shard": (),
    "crosssample.batch_size": (),
    # nor on where a cross-sampling run's shards split them: as its batch size, they move the rows' divergence
    # columns in their last float bits only (the tenth hostile pass, G5, found it re-ran all 34 jobs)
    "crosssample.problems_per_shard": (),
    "grading.mode": SAMPLERS,
    **{f"divergence.{k}": ("divergence_toy",) for k in ("high_js_quantile", "high_js_cut", "rank_k")},
    "grading.timeout_s": SAMPLERS,
    "rollout.pass_k": ("accuracy",),
    **{
        f"scoring.{k}": ("score",)
        for k in (
            "chunk_memory_mb",
            "chunk_size",
            "max_batch_tokens",
            "device_base",
            "device_rl",
            "compile",
            "top_k",
            "top_k_candidates",
            "threads",
        )
    },
    # which responses the explorer embeds
    **{f"explorer.{k}": ("explorer",) for k in ("responses_per_group", "seed")},
    **{
        f"crosssample.{k}": CROSSSAMPLERS
        for k in (
            "n_problems",
            "threads",
            "device_base",
            "device_rl",
            "force_switch",
            "injected_eos",
            "length_rule",
        )
    },
    # the grid's injection: an extrapolation run extrapolates whatever it says
    "crosssample.injection": ("crosssample",),
    # the extrapolation's step: read under injection extrapolate only, so the default (sample) reads none
    "crosssample.gamma": (),
    # the after_switch length rule's ceiling: a run under the default response rule reads none
    "crosssample.max_total_tokens": (),
    # a policy's threshold: that policy's runs only, budget 0 aside (it switches nowhere and takes none)
    # (dlogp's: the extrapolation run's too)
    **{f"crosssample.thresholds.{p}": (f"/{p}/",) for p in ("js", "random", "entropy", "dlogp")},
    # thresholds of policies the default grid does not run
    **{f"crosssample.thresholds.{p}": () for p in ("logprob", "rank", "kl", "kl_r", "entropy_other")},
    # the toy task's keys also draw the toy eval problems; the GRPO keys build only the RL model
    **{f"toy.{k}": ("toy_base", "toy_rl", "dataset") for k in ("seed", "min_steps", "max_steps", "mistake_rate")},
    **{
        f"toy.{k}": ("toy_base", "toy_rl")
        for k in (
            "n_train_problems",
            "n_traces",
            "hidden_size",
            "num_layers",
            "pretrain_steps",
            "pretrain_lr",
            "threads",
        )
    },
    "toy.grpo_steps": ("toy_rl",),
    "toy.checkpoint_every": ("toy_rl",),
    # the advantage experiment trains at the toy RL model's learning rate
    "toy.grpo_lr": ("toy_rl", "advantage_run"),
    **{f"toy.{k}": ("toy_sft",) for k in ("sft_steps", "sft_lr")},
    **{
        f"advantages.{k}": ("advantage_run",)
        for k in (
            "steps",
            "prompts_per_step",
            "group_size",
            "q",
            "alpha",
            "c",
            "eval_every",
            "eval_samples",
            "eval_seed",
            "threads",
        )
    },
    # the shifts over training score the traces of the same eval problems
    "advantages.eval_problems": ("advantage_run", "training_shifts"),
    "datasets.toy.n_problems": ("dataset", "toy_check"),
    **{f"datasets.toy.sampling.{k}": SAMPLERS for k in ("n", "temperature", "top_p", "max_new_tokens", "seed")},
    "pairs[0].kind": ("figure_overview",),
    # how many jobs a table is split over: its parts are other files (the table they gather to is the same)
    "rollout.jobs": ("rollout",),
    "scoring.jobs": ("score",),
    "crosssample.jobs": CROSSSAMPLERS,
    # the vLLM engines' settings: an hf rollout and a lockstep cross-sample read none of them
    **{
        f"rollout.vllm_{k}": ()
        for k in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "dtype", "enforce_eager")
    },
    # what jobs ask a scheduler for: no stage reads these, so no result is redone (only the report quotes them)
    **{f"cluster.{k}": () for k in ("gpu_memory_gb", "gpu_model", "gpu_request")},
    **{f"cluster.runtime.{k}": () for k in ("default", "fetch", "toy", "rollout", "score", "crosssample")},
}
# they change the DAG
GRID_KEYS = {
    "crosssample.directions",
    "crosssample.policies",
    "crosssample.budgets",
    "crosssample.gammas",
    "advantages.variants",
    "advantages.seeds",
}
# a top-K statistic is refused beside the default dataset-level percentiles, and the vllm scoring
# backend without a top-K statistic: they cannot change alone (tests/test_workflow.py checks that they
# reach their jobs: the cross-sampling ones with the authors' levels, the score ones beside them); the
# regenerate engine beside the default study's extrapolation run, which it cannot draw (tests/test_reruns.py
# re-plans an engine change on a study without one)
UNRECORDED = {
    "rollout.batch_size",
    "rollout.problems_per_shard",
    "crosssample.batch_size",
    "crosssample.problems_per_shard",
}
"""Keys of settings no result depends on (``recorded=False``; and the whole ``cluster:`` section): they reach
their jobs unrecorded and ``results/config.yaml`` leaves them out, so changing one plans nothing at all."""
NOT_ALONE = {"crosssample.statistic", "scoring.statistic", "scoring.backend", "crosssample.engine"}


COMPANIONS = {"crosssample.length_rule": {"crosssample.max_total_tokens": 200}}
"""Keys a changed value needs beside it: after_switch's ceiling, under the toy models' context of 256 positions
(the config check refuses the default 16384 there)."""


def changed_value(key: str, value):
    if key.endswith("thresholds.rank"):  # no score table holds ranks: a percentile needs a level
        return {"percentile": 80, "level": "prompt"}
    if key.endswith("thresholds.js") or key.split(".")[-2:-1] == ["thresholds"]:
        return {"percentile": 80}
    special = {
        "cluster.gpu_model": "a100",
        "cluster.gpu_request": "gres",
        "grading.mode": "lenient",
        "divergence.high_js_quantile": 0.9,
        "divergence.high_js_cut": 0.1,
        "divergence.rank_k": [1, 3],  # the report's headline reads k = 1 and 3: both stay
        "rollout.vllm_tensor_parallel_size": 2,
        "rollout.vllm_gpu_memory_utilization": 0.8,
        "rollout.vllm_max_model_len": 4096,
        "rollout.vllm_dtype": "float16",
        "crosssample.injected_eos": "drop",
        "crosssample.injection": "extrapolate",
        "crosssample.gamma": 0.1,
        "advantages.c": 0.3,
        "crosssample.length_rule": "after_switch",
        "rollout.batch_size": 64,
        "crosssample.batch_size": 64,
        "scoring.max_batch_tokens": 4096,
        "rollout.backend": "vllm",
        "rollout.pass_k": [1, 2],
        "sampling.temperature": 0.7,
        "sampling.top_p": 0.9,
        "scoring.chunk_size": 64,
        "pairs[0].kind": "sft",
        "toy.grpo_lr": 2e-4,
        "toy.pretrain_lr": 3e-3,  # rates are at most 1
        "toy.sft_lr": 2e-3,
        "advantages.q": 0.3,
        "advantages.alpha": 0.25,
        "toy.mistake_rate": 0.2,
        "toy.hidden_size": 136,  # a multiple of 8, as the heads' rotary embeddings need
    }
    for suffix, v in special.items():
        if key.endswith(suffix):
            return v
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return "cpu" if value != "cpu" else "cuda"
    raise AssertionError(f"no changed value for {key} = {value!r}")


def walked_keys(config: dict) -> dict[str, object]:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]
    keys = {}
    for section in SECTIONS:
        for key, spec in schema[section]["properties"].items():
            if key in ("thresholds", "runtime"):
                keys.update({f"{section}.{key}.{p}": v.get("default") for p, v in spec["properties"].items()})
            elif f"{section}.{key}" not in GRID_KEYS | NOT_ALONE:
                keys[f"{section}.{key}"] = config.get(section, {}).get(key, spec["default"])
    sampling = schema["sampling"]["properties"]
    keys["datasets.toy.n_problems"] = config["datasets"]["toy"]["n_problems"]
    keys.update({f"datasets.toy.sampling.{k}": config["sampling"].get(k, v["default"]) for k, v in sampling.items()})
    keys["pairs[0].kind"] = config["pairs"][0]["kind"]
    return keys


def with_key(config: dict, key: str, value) -> dict:
    config = copy.deepcopy(config)
    if key.startswith("pairs[0]."):
        config["pairs"][0][key.split(".")[-1]] = value
        return config
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    return config


def test_a_changed_setting_reruns_the_jobs_that_read_it_and_no_others(default_run, tmp_path):
    config = yaml.safe_load((default_run / "config" / "config.yaml").read_text())
    keys = walked_keys(config)
    assert set(keys) == set(CONSUMERS), "every consumed config key needs its readers in CONSUMERS"
    # the jobs that compute each cross-sampling run (one part each here)
    runs = sorted(str(p.relative_to(default_run)) for p in (default_run / "results").glob("*/*/crosssample/*/*/*/*"))
    assert runs and all(".parts/" in r for r in runs)

    def readers_plan(readers: tuple) -> dict:  # Snakemake's own account of those jobs and all after them
        by_file = bool(readers) and readers[0].startswith("/")  # a policy's threshold: its runs' jobs
        targets = (
            [r for r in runs if any(pat in r for pat in readers) and "/budget-0.parts/" not in r]
            if by_file
            else list(readers)
        )
        forced = plan(default_run, "--nolock", "--forcerun", *targets) if targets else {}
        return {**forced, "run_config": 1, "report": 1, "all": 1}

    def changed_plan(key: str) -> dict:
        changed = tmp_path / f"{key}.yaml"
        new = with_key(config, key, changed_value(key, keys[key]))
        for companion, value in COMPANIONS.get(key, {}).items():  # read by the same jobs, under this key only
            new = with_key(new, companion, value)
        changed.write_text(yaml.safe_dump(new))
        return plan(default_run, "--nolock", "--configfile", str(changed))

    with ThreadPoolExecutor(2) as pool:  # dry runs only: two at a time, on two cores
        all_readers = sorted(set(CONSUMERS.values()))
        expected = dict(zip(all_readers, pool.map(readers_plan, all_readers)))
        got = dict(zip(keys, pool.map(changed_plan, keys)))
    wrong = {}
    for key in keys:
        # a setting no result depends on is not even in the config the report quotes: nothing is re-planned
        want = {} if key in UNRECORDED or key.startswith("cluster.") else dict(expected[CONSUMERS[key]])
        if key.endswith(".jobs"):  # as many jobs per table as asked for (the gathers stay one a table)
            for runner in CONSUMERS[key]:
                want[runner] *= changed_value(key, keys[key])
        if got[key] != want:
            wrong[key] = (got[key], want)
    assert not wrong, wrong
    changed = tmp_path / "budget.yaml"
    # a new budget adds its runs (both directions, every policy) and redoes what aggregates them
    changed.write_text(yaml.safe_dump(with_key(config, "crosssample.budgets", [*config["crosssample"]["budgets"], 8])))
    assert plan(default_run, "--configfile", str(changed)) == {
        "crosssample": 10,
        "gather_crosssample": 10,
        "crosssample_table": 1,
        "csv_table": 1,  # its CSV copy
        "figures": 1,
        "explorer": 1,
        "run_config": 1,
        "report": 1,
        "all": 1,
    }
    # a new gamma adds its extrapolation run, and what reads it (the explorer shows the grid's runs only)
    gammas = [*config["crosssample"]["gammas"], 0.2]
    changed.write_text(yaml.safe_dump(with_key(config, "crosssample.gammas", gammas)))
    assert plan(default_run, "--configfile", str(changed)) == {
        "crosssample_extrapolated": 1,
        "gather_crosssample_extrapolated": 1,
        "crosssample_table": 1,
        "csv_table": 1,  # its CSV copy
        "figures": 1,
        "run_config": 1,
        "report": 1,
        "all": 1,
    }


def test_report_holds_every_figure_and_the_headline_numbers(default_run):
    from markupsafe import escape

    from tokenshift.report import sentences

    figures = default_run / "results" / "toy" / "toy" / "figures"
    for name in ("position", "entropy", "reallocation", "crosssample", "example"):
        for suffix in (".png", ".pdf"):
            assert (figures / f"{name}{suffix}").stat().st_size > 5000, name
    assert (default_run / "results" / "figures" / "sparsity.png").is_file()
    page = (default_run / "results" / "report.html").read_text()
    # self-contained, every figure embedded: the overview, the RL pair's five, the SFT pair's three
    # (not cross-sampled), the advantage experiment's and the shifts over training
    assert page.count('src="data:image/png;base64,') == 1 + 5 + 3 + 2
    summary = json.loads((default_run / "results" / "summary.json").read_text())
    result, sft = summary["results"]
    assert (result["pair"], sft["pair"], sft["kind"]) == ("toy", "toy-sft", "sft")
    for text in sentences(result):
        assert escape(text) in page  # as the page's template escapes it (' is &#39;)
    # the JSON's numbers are the tables' numbers
    sp = pl.read_parquet(default_run / "results" / "toy" / "toy" / "divergence" / "sparsity.parquet").filter(
        (pl.col("kind") == "share_below") & (pl.col("js_nats") == 1e-3) & (pl.col("source") == "rl")
    )
    assert result["share_js_below"]["0.001"] == pytest.approx(sp["share"][0])
    assert 0.5 < result["crosssample"]["forward_recovery"] <= 1.2
    assert result["crosssample"]["random_recovery"] < result["crosssample"]["forward_recovery"] - 0.3


def test_the_training_analyses_reach_the_report(default_run):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["advantages"]
    comparison = pl.read_parquet(default_run / "results" / "advantages" / "comparison.parquet")
    assert comparison["variant"].to_list() == config["variants"]
    assert (comparison["n_seeds"] == len(config["seeds"])).all()
    shifts = pl.read_parquet(default_run / "results" / "toy" / "training" / "shifts.parquet")
    assert shifts["checkpoint"].to_list() == ["step-20", "step-40", "final"]
    summary = json.loads((default_run / "results" / "summary.json").read_text())
    assert set(summary["advantages"]["diff_vs_none"]) == set(config["variants"]) - {"none"}
    assert summary["training_shifts"]["toy"]["steps"] == [20, 40, 60]
    page = (default_run / "results" / "report.html").read_text()
    for heading in ("Divergence-weighted advantages", "Shifts over RL training", "RL against SFT"):
        assert heading in page


def test_sft_moves_more_positions_than_rl(default_run):
    """The paper's contrast, where it holds on the toy: the SFT model, about as accurate as the RL
    model, leaves fewer positions of the base model's distribution unchanged (JS < 1e-3). At
    JS >= 1e-2 the two shares are within a point of each other, and which is the larger depends on
    the machine the toy pair was trained on (docs/training.md), so the report must say which it is."""
    acc = {
        pair: pl.read_parquet(default_run / "results" / pair / "toy" / "accuracy.parquet")
        .filter((pl.col("metric") == "avg@4") & (pl.col("role") == "rl"))
        .row(0, named=True)
        for pair in ("toy", "toy-sft")
    }
    assert abs(acc["toy-sft"]["value"] - acc["toy"]["value"]) < 0.05  # comparable models
    (contrast,) = json.loads((default_run / "results" / "summary.json").read_text())["rl_vs_sft"]
    shares = {
        pair: pl.read_parquet(default_run / "results" / pair / "toy" / "divergence" / "sparsity.parquet")
        for pair in ("toy", "toy-sft")
    }
    # the summary's shares are the tables', on the tuned model's responses
    for pair, kind in (("toy", "rlvr"), ("toy-sft", "sft")):
        below = shares[pair].filter((pl.col("kind") == "share_below") & (pl.col("source") == "rl"))
        below = dict(zip(below["js_nats"].to_list(), below["share"].to_list(), strict=True))
        for cut, share in contrast["share_js_at_least"][kind].items():
            assert share == pytest.approx(1 - below[float(cut)]), (pair, cut)
    assert contrast["sft_denser"]["0.001"], contrast
    high = contrast["share_js_at_least"]
    assert abs(high["sft"]["0.01"] - high["rlvr"]["0.01"]) < 0.01, contrast
    page = (default_run / "results" / "report.html").read_text()
    verdict = (
        "SFT&#39;s shifts are denser than RL&#39;s, as the paper found"
        if contrast["sft_denser"]["0.01"]
        else "SFT&#39;s shifts are denser than RL&#39;s at JS &gt;= 0.001 only"
    )
    assert verdict in page


@pytest.mark.browser
def test_the_explorer_opens_offline_and_shows_what_the_tables_hold(default_run, tmp_path):
    from helpers import chromium_driver
    from test_explorer import check_page

    page = default_run / "results" / "explorer.html"
    assert "href='explorer.html'" in (default_run / "results" / "report.html").read_text()
    assert page.stat().st_size < 10e6  # docs/explorer.md quotes its size; the cap keeps it small
    driver = chromium_driver()
    try:
        check_page(driver, page, default_run / "results" / "toy" / "toy", tmp_path / "explorer.png")
    finally:
        driver.quit()


def test_snakemakes_own_report_holds_every_figure_table_and_both_pages(default_run, tmp_path):
    import zipfile

    out = tmp_path / "report.zip"
    r = snakemake(default_run, "--report", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    names = [Path(n).name for n in zipfile.ZipFile(out).namelist() if "/data/raw/" in n]
    figures = sorted(p.name for p in (default_run / "results").rglob("*.png"))
    assert sorted(n for n in names if n.endswith(".png")) == figures
    tables = sorted(p.name for p in (default_run / "results").rglob("*.csv"))  # each aggregate table's CSV copy
    assert sorted(n for n in names if n.endswith(".csv")) == tables and tables
    assert {"report.html", "explorer.html"} <= set(names)


@pytest.mark.browser
def test_snakemakes_report_opens_in_chromium_and_shows_every_figure(default_run, tmp_path):
    """Issue 28's done-when: the report Snakemake builds opens in headless Chromium, lists the report's
    categories, and each figure of the study is an entry that its own viewer shows (each image loaded)."""
    import time
    import zipfile

    from helpers import chromium_driver

    out = tmp_path / "report.zip"
    r = snakemake(default_run, "--report", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    zipfile.ZipFile(out).extractall(tmp_path / "unzipped")
    (page,) = (tmp_path / "unzipped").glob("*/report.html")
    figures = sorted(str(p.relative_to(default_run)) for p in (default_run / "results").rglob("*.png"))
    driver = chromium_driver()

    def wait(script, *args, limit_s=30):
        t0 = time.monotonic()
        while not (got := driver.execute_script(script, *args)) and time.monotonic() - t0 < limit_s:
            time.sleep(0.1)
        return got

    try:
        driver.get(page.resolve().as_uri())  # offline: the zip's page and its data folder only
        assert wait("return typeof app !== 'undefined' && !!app"), "the report's app never started"
        categories = driver.execute_script("return Object.keys(categories)")
        assert {"Figures", "Tables", "Training", "Report"} <= set(categories), categories
        assert sorted(driver.execute_script("return Object.keys(results).filter(p => p.endsWith('.png'))")) == figures
        for figure in figures:  # what its eye button does: the report's own image view
            driver.execute_script(
                "app.setView({content: 'img', contentPath: results[arguments[0]].data_uri, resultPath: arguments[0]})",
                figure,
            )
            shown = wait(
                "const uri = results[arguments[0]].data_uri;"
                "const im = [...document.querySelectorAll('img')].find(i => i.getAttribute('src') === uri);"
                "return im && im.complete && im.naturalWidth > 0",
                figure,
                limit_s=10,
            )
            assert shown, f"{figure}: not shown by the report's image view"
        driver.execute_script("app.showCategory('Figures')")  # what clicking it does: its subcategories listed
        pairs = driver.execute_script("return Object.keys(categories['Figures'])")
        assert {"toy / toy", "toy-sft / toy"} <= set(pairs), pairs
        assert wait("return arguments[0].every(s => document.querySelector('#app').innerText.includes(s))", pairs)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


def test_every_file_the_study_writes_under_results_is_an_output_of_a_job(default_run):
    """Snakemake tracks (re-runs, removes, reports) only what a rule declares: figure 6's table was written
    beside its figure undeclared (issue 27). Files inside a declared directory (a checkpoint) are listed too,
    so only results/ is checked."""
    r = snakemake(default_run, "--nolock", "--list-untracked")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("results/")] == []


def test_each_aggregate_table_has_a_csv_copy_beside_it(default_run):
    csvs = sorted((default_run / "results").rglob("*.csv"))
    names = {c.name for c in csvs}
    assert names >= {"accuracy.csv", "crosssample.csv", "sparsity.csv", "decision_points.csv", "comparison.csv"}
    for csv in csvs:
        assert pl.read_csv(csv).height == pl.read_parquet(csv.with_suffix(".parquet")).height, csv
    assert not list((default_run / "results" / "toy" / "toy" / "scores").glob("*.csv"))  # per-token tables: none
