"""The Snakemake workflow: config validation through real `snakemake -n`, and the DAG."""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run, save_checkpoint, tokenshift_cmd
from helpers import DEFAULT, planned, shell_commands, snakemake, with_config

from tokenshift.config import SCHEMA_PATH


def test_default_config_builds_the_dag(tmp_path):
    r = snakemake(with_config(tmp_path, DEFAULT), "-n", "all")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    for rule in ("toy_base", "toy_rl", "check_pair", "crosssample", "crosssample_table", "figures", "report", "all"):
        assert rule in out
    jobs = planned(r)
    adv = DEFAULT.get("advantages", {})
    assert jobs["advantage_run"] == len(adv.get("variants", ("none", "js", "topq"))) * len(adv.get("seeds", (0, 1)))
    assert jobs["toy_sft"] == jobs["training_shifts"] == jobs["figures_divergence"] == jobs["figures"] == 1
    assert jobs["toy_check"] == 1  # the RL pair's; the SFT pair's decision points are in its divergence tables
    assert jobs["crosssample_table"] == 1  # the SFT contrast pair is not cross-sampled


def _mutations():
    def m(f):
        c = copy.deepcopy(DEFAULT)
        f(c)
        return c

    def add_pair(c, **kw):
        c["pairs"].append({"name": "toy2", "base": "toy-base", "rl": "toy-rl", **kw})

    return [
        # (id, config, text that must appear in the error)
        ("unknown-top-level-key", m(lambda c: c.update(modles={})), "modles"),
        ("unknown-pair-key", m(lambda c: c["pairs"][0].update(bse="toy-base")), "bse"),
        ("wrong-type", m(lambda c: c["sampling"].update(temperature="hot")), "temperature"),
        ("negative-budget", m(lambda c: c["crosssample"].update(budgets=[0, -2])), "budgets"),
        ("budget-not-integer-nor-fraction", m(lambda c: c["crosssample"].update(budgets=[1.5])), "budgets"),
        ("budget-word", m(lambda c: c["crosssample"].update(budgets=["half"])), "budgets"),
        ("duplicate-budgets", m(lambda c: c["crosssample"].update(budgets=[2, 2.0])), "crosssample.budgets"),
        (
            "topk-statistic-with-a-dataset-percentile",
            m(lambda c: c["crosssample"].update(statistic="topk:50")),
            "crosssample.thresholds.js",
        ),
        (
            "statistic-not-exact-nor-topk",
            m(lambda c: c["crosssample"].update(statistic="top50")),
            "crosssample.statistic",
        ),
        # vLLM returns at most K log-probs per position: no exact JS, KL or entropy
        ("vllm-scoring-of-the-exact-statistic", m(lambda c: c.update(scoring={"backend": "vllm"})), "scoring.backend"),
        (
            "topk-scores-beside-a-dataset-percentile",
            m(lambda c: c.update(scoring={"backend": "vllm", "statistic": "topk:50"})),
            "crosssample.thresholds.js",
        ),
        (
            "topk-scores-with-a-rank-past-k",
            m(lambda c: c.update(scoring={"statistic": "topk:4"})),
            "divergence.rank_k[2]",
        ),
        (
            "topk-scores-below-the-reallocation-ranks",
            m(lambda c: c.update(scoring={"statistic": "topk:3"}, divergence={"rank_k": [1, 2]})),
            "scoring.statistic",
        ),
        (
            "threshold-level-unknown",
            m(lambda c: c["crosssample"]["thresholds"].update(js={"percentile": 90, "level": "problem"})),
            "crosssample.thresholds.js",
        ),
        (
            "threshold-above-ln2",
            m(lambda c: c["crosssample"]["thresholds"].update(js={"threshold": 0.9})),
            "crosssample.thresholds.js.threshold",
        ),
        (
            "percentile-above-100",
            m(lambda c: c["crosssample"]["thresholds"].update(random={"percentile": 101})),
            "crosssample.thresholds.random.percentile",
        ),
        ("unknown-policy", m(lambda c: c["crosssample"].update(policies=["js", "klx"])), "crosssample.policies[1]"),
        # NaN compares false with a schema's bounds, so it passed them all (a NaN temperature sampled garbage)
        ("nan-temperature", m(lambda c: c["sampling"].update(temperature=float("nan"))), "sampling.temperature"),
        (
            "nan-percentile",
            m(lambda c: c["crosssample"]["thresholds"].update(js={"percentile": float("nan")})),
            "crosssample.thresholds.js.percentile",
        ),
        ("infinite-gamma", m(lambda c: c["crosssample"].update(gamma=float("inf"))), "crosssample.gamma"),
        # what the regenerate engine does not implement is refused before any job, naming the key
        (
            "regenerate-with-injected-eos-drop",
            m(lambda c: c["crosssample"].update(engine="regenerate", injected_eos="drop")),
            "crosssample.injected_eos",
        ),
        (
            "regenerate-with-injection-extrapolate",
            m(lambda c: c["crosssample"].update(engine="regenerate", injection="extrapolate", gamma=0.1)),
            "crosssample.injection",
        ),
        (
            "regenerate-kl-from-top-k-log-probs",
            m(
                lambda c: (
                    c["crosssample"].update(engine="regenerate", statistic="topk:50", policies=["random", "kl"]),
                    c["crosssample"]["thresholds"].update(kl={"threshold": 0.1}),
                )
            ),
            "crosssample.statistic",
        ),
        (
            "nan-in-a-datasets-sampling",
            m(lambda c: c["datasets"]["toy"].update(sampling={"top_p": float("nan")})),
            "datasets.toy.sampling.top_p",
        ),
        (
            "rank-percentile-over-the-dataset",  # no score table holds the sampled token's ranks
            m(lambda c: c["crosssample"]["thresholds"].update(rank={"percentile": 90})),
            "crosssample.thresholds.rank",
        ),
        (
            "advantage-variants-without-the-baseline",
            m(lambda c: c["advantages"].update(variants=["js", "topq"])),
            "advantages.variants",
        ),
        ("unknown-direction", m(lambda c: c["crosssample"].update(directions=["sideways"])), "sideways"),
        ("duplicate-pair-name", m(lambda c: add_pair(c, name="toy")), f"pairs[{len(DEFAULT['pairs'])}].name"),
        ("unknown-model", m(lambda c: c["pairs"][0].update(rl="toy-rll")), "pairs[0].rl"),
        ("unknown-dataset", m(lambda c: c["pairs"][0].update(datasets=["aime24"])), "pairs[0].datasets"),
        ("pair-kind", m(lambda c: c["pairs"][0].update(kind="rlhf")), "kind"),
        ("hub-without-revision", m(lambda c: c["models"].update(q={"hub": "Qwen/Qwen2.5-0.5B"})), "revision"),
        ("two-sources", m(lambda c: c["models"].update(q={"path": "x", "hub": "a/b", "revision": "r"})), "models.q"),
        ("toy-rl-without-init", m(lambda c: c["models"]["toy-rl"].pop("init")), "init"),
        # the toy builds choose their own dtype (float32 on CPU): an entry's would be without effect
        ("toy-with-dtype", m(lambda c: c["models"]["toy-rl"].update(dtype="float16")), "models.toy-rl"),
        ("dtype-unknown", m(lambda c: c["models"].update(q={"hub": "a/b", "revision": "r", "dtype": "fp8"})), "dtype"),
        (
            "attention-with-a-space",
            m(lambda c: c["models"].update(q={"hub": "a/b", "revision": "r", "attn_implementation": "sdpa; x"})),
            "attn_implementation",
        ),
        ("toy-sft-init-not-base", m(lambda c: c["models"]["toy-sft"].update(init="toy-rl")), "models.toy-sft.init"),
        ("advantage-variant-unknown", m(lambda c: c["advantages"].update(variants=["none", "entropy"])), "variants"),
        ("toy-rl-init-not-base", m(lambda c: c["models"]["toy-rl"].update(init="toy-rl")), "models.toy-rl.init"),
        ("missing-local-path", m(lambda c: c["models"].update(loc={"path": "no/such/dir"})), "models.loc.path"),
        ("name-with-slash", m(lambda c: c["models"].update({"a/b": {"toy": "base"}})), "a/b"),
        ("base-equals-rl", m(lambda c: c["pairs"][0].update(rl="toy-base")), "pairs[0].rl"),
        # two names for one checkpoint: every divergence would be zero
        (
            "base-and-rl-one-hub-checkpoint",
            m(
                lambda c: (
                    c["models"].update(q={"hub": "o/m", "revision": "r"}, q2={"hub": "o/m", "revision": "r"}),
                    c["pairs"].append({"name": "qq", "base": "q", "rl": "q2"}),
                )
            ),
            f"pairs[{len(DEFAULT['pairs'])}].rl",
        ),
        (
            "missing-dataset-file",
            m(lambda c: c["datasets"].update(aime={"path": "no/aime.jsonl"})),
            "datasets.aime.path",
        ),
        ("dataset-wrong-suffix", m(lambda c: c["datasets"].update(aime={"path": "aime.csv"})), "aime.csv"),
        (
            "dataset-preset-without-revision",
            m(lambda c: c["datasets"].update(aime={"preset": "aime24"})),
            "datasets.aime",
        ),
        ("pass-k-above-n", m(lambda c: c["rollout"].update(pass_k=[1, 8])), "rollout.pass_k[1]"),
        # a k given twice is one metric twice in a tidy table
        ("pass-k-twice", m(lambda c: c["rollout"].update(pass_k=[1, 1])), "rollout.pass_k"),
        ("pass-k-empty", m(lambda c: c["rollout"].update(pass_k=[])), "config key rollout.pass_k: got []"),
        ("rank-k-twice", m(lambda c: c.setdefault("divergence", {}).update(rank_k=[1, 3, 3])), "divergence.rank_k"),
        # tenth hostile pass (G8): the extrapolation run is forward, drawn beside the forward grid: the figures job
        # ended in KeyError 'forward'
        (
            "extrapolation-without-forward-runs",
            m(lambda c: c["crosssample"].update(directions=["reverse"], gammas=[0.1])),
            "config key crosssample.gammas: got [0.1]; the extrapolation runs are forward runs",
        ),
        # tenth hostile pass (G1): the report's headline and the reallocation figure read k = 1 and 3, which the
        # figures job found missing in a traceback
        (
            "rank-k-without-3",
            m(lambda c: c.setdefault("divergence", {}).update(rank_k=[1, 1000000000])),
            "config key divergence.rank_k: got [1, 1000000000]; the report's headline",
        ),
        ("rank-k-without-1", m(lambda c: c.setdefault("divergence", {}).update(rank_k=[3, 5])), "holding 1 too"),
        # twelfth hostile pass (J6): passed -n, then overflowed inside torch.optim in the toy build
        ("toy-rate-overflowing", m(lambda c: c["toy"].update(pretrain_lr=1e308)), "toy.pretrain_lr"),
        # eleventh hostile pass, noted: the job asked the scheduler for 100,000 GPUs, or one GPU twice
        (
            "device-index-past-a-node",
            m(lambda c: c.setdefault("scoring", {}).update(device_base="cuda:99999")),
            "config key scoring.device_base: got 'cuda:99999'; a job's GPUs are numbered from 0 on one node",
        ),
        (
            "device-one-gpu-twice",
            m(lambda c: c["crosssample"].update(device_rl="cuda:1,1")),
            "config key crosssample.device_rl: got 'cuda:1,1'; expected each GPU once",
        ),
        ("pass-k-above-dataset-n", m(lambda c: c["datasets"]["toy"].update(sampling={"n": 2})), "dataset 'toy'"),
        ("unknown-backend", m(lambda c: c["rollout"].update(backend="sglang")), "sglang"),
        # names the workflow's own paths take (issue 13: AmbiguousRuleException / ChildIOException before)
        (
            "dataset-named-toy_check",
            m(
                lambda c: (
                    c["datasets"].update(toy_check={"toy": "eval"}),
                    c["pairs"][0].update(datasets=["toy_check"]),
                )
            ),
            "datasets",
        ),
        ("pair-named-report.html", m(lambda c: c["pairs"][0].update(name="report.html")), "pairs[0].name"),
        # the hostile pass of 2026-12-04: each accepted, then two rules shared a path or a log
        *(
            (f"pair-named-{name}", m(lambda c, n=name: c["pairs"][0].update(name=n)), "pairs[0].name")
            for name in ("advantages", "overview.log", "advantages.log")
        ),
        *(
            (
                f"dataset-named-{name}",
                m(lambda c, n=name: (c["datasets"].update({n: {"toy": "eval"}}), c["pairs"][0].update(datasets=[n]))),
                "datasets",
            )
            for name in ("training", "training_shifts")
        ),
        ("model-named-x.json", m(lambda c: c["models"].update({"x.json": {"toy": "base"}})), "x.json"),
        # a toy dataset's prompt is its own: a template there would be silently ignored
        (
            "toy-dataset-with-template",
            m(lambda c: c["datasets"]["toy"].update(template="Solve: {question}")),
            "datasets.toy.template",
        ),
        # a template is filled by str.format: single braces elsewhere (\\boxed{}) break it, and one
        # without {question} gives every problem the same prompt
        (
            "template-with-single-braces",
            m(
                lambda c: (
                    c["datasets"].update(h={"hub": "a/b", "revision": "r", "template": "{question} \\boxed{}"}),
                    c["pairs"][0]["datasets"].append("h"),
                )
            ),
            "datasets.h.template",
        ),
        (
            "template-without-question",
            m(
                lambda c: (
                    c["datasets"].update(h={"hub": "a/b", "revision": "r", "template": "Solve it."}),
                    c["pairs"][0]["datasets"].append("h"),
                )
            ),
            "datasets.h.template",
        ),
        # issue 24.7: accepted by `snakemake -n all`, then failing inside jobs (or silently wrong)
        (
            "budget-1.0-read-as-a-share",
            m(lambda c: c["crosssample"].update(budgets=[0, 1.0])),
            "crosssample.budgets[1]",
        ),
        ("budget-2.0-read-as-a-share", m(lambda c: c["crosssample"].update(budgets=[2.0])), "crosssample.budgets[0]"),
        ("max-new-tokens-10**12", m(lambda c: c["sampling"].update(max_new_tokens=10**12)), "sampling.max_new_tokens"),
        (
            "dataset-max-new-tokens-10**12",
            m(lambda c: c["datasets"]["toy"].update(sampling={"max_new_tokens": 10**12})),
            "datasets.toy.sampling.max_new_tokens",
        ),
        (  # 226 fits after the longest toy prompt (30 tokens at toy.max_steps 8): 227 does not
            "dataset-max-new-tokens-past-the-toy-prompt",
            m(lambda c: c["datasets"]["toy"].update(sampling={"max_new_tokens": 227})),
            "datasets.toy.sampling.max_new_tokens: got 227; at most 226",
        ),
        # a thread count torch.set_num_threads overflows on (past 2**31), in every section that has one
        *(
            (
                f"{section}-threads-2**40",
                m(lambda c, s=section: c.setdefault(s, {}).update(threads=2**40)),
                f"{section}.threads",
            )
            for section in ("rollout", "scoring", "crosssample", "toy", "advantages")
        ),
        # second hostile pass: an answer's timeout past math-verify's alarm (OverflowError in the grader), and
        # samples per problem past any memory (the rollout job grew until killed)
        ("grading-timeout-10**10", m(lambda c: c.update(grading={"timeout_s": 10**10})), "grading.timeout_s"),
        ("sampling-n-2**63", m(lambda c: c["sampling"].update(n=2**63 - 1)), "sampling.n"),
        (
            "dataset-sampling-n-2**63",
            m(lambda c: c["datasets"]["toy"].update(sampling={"n": 2**63 - 1})),
            "datasets.toy.sampling.n",
        ),
        # names that differ in case only are one folder on macOS's and Windows' disks
        ("pair-name-in-another-case", m(lambda c: add_pair(c, name="TOY")), f"pairs[{len(DEFAULT['pairs'])}].name"),
        (
            "dataset-name-in-another-case",
            m(lambda c: c["datasets"].update(TOY=c["datasets"]["toy"])),
            "datasets.TOY",
        ),
        (
            "model-name-in-another-case",
            m(lambda c: c["models"].update({"Toy-Base": c["models"]["toy-base"]})),
            "Toy-Base",
        ),
        ("pair-named-Figures", m(lambda c: add_pair(c, name="Figures")), "taken by the workflow's own paths"),
        ("toy-min-steps-above-max", m(lambda c: c["toy"].update(min_steps=5, max_steps=3)), "toy.min_steps"),
        ("toy-max-steps-past-z", m(lambda c: c["toy"].update(max_steps=27)), "toy.max_steps"),
        ("scoring-device-banana", m(lambda c: c.update(scoring={"device_base": "banana"})), "scoring.device_base"),
        (
            "crosssample-device-banana",
            m(lambda c: c["crosssample"].update(device_rl="banana")),
            "crosssample.device_rl",
        ),
        (
            "after-switch-total-below-max-new",
            m(lambda c: c["crosssample"].update(length_rule="after_switch", max_total_tokens=50)),
            "crosssample.max_total_tokens",
        ),
        ("pair-without-datasets", m(lambda c: c["pairs"][1].update(datasets=[])), "pairs[1].datasets"),
        (
            "gpu-model-with-shell-syntax",
            m(lambda c: c.update(cluster={"gpu_model": "h100; rm -rf ~"})),
            "cluster.gpu_model",
        ),
        # the JSON schema's draft counts 4.0 an integer: it passed, then failed in a job
        ("sampling-n-4.0", m(lambda c: c["sampling"].update(n=4.0)), "config key sampling.n: got 4.0"),
        ("pass-k-a-float", m(lambda c: c["rollout"].update(pass_k=[1, 2.0])), "rollout.pass_k[1]"),
        # huge numbers: an OverflowError in a job, a PeriodicWildcardError, a DAG of 10**6 jobs per table
        ("budget-10**23", m(lambda c: c["crosssample"].update(budgets=[0, 10**23])), "crosssample.budgets[1]: got"),
        ("budget-past-the-longest-response", m(lambda c: c["crosssample"].update(budgets=[131073])), "131072"),
        ("jobs-10**6", m(lambda c: c["rollout"].update(jobs=10**6)), "config key rollout.jobs"),
        ("toy-seed-2**64", m(lambda c: c["toy"].update(seed=2**64)), "config key toy.seed"),
        ("advantage-seed-2**40", m(lambda c: c["advantages"].update(seeds=[0, 2**40])), "advantages.seeds[1]"),
        ("top-k-10**23", m(lambda c: c.update(scoring={"top_k": 10**23})), "config key scoring.top_k"),
        # Snakemake reads {x} in an input's path as a wildcard (WildcardError), with no escape
        # seventh hostile pass (W1): an output of the workflow taken as the dataset, its settings ignored
        (
            "dataset-path-an-output",
            m(lambda c: c["datasets"].update(y={"path": "resources/datasets/y.parquet"})),
            "datasets.y.path: got 'resources/datasets/y.parquet'; expected a file outside resources/, results/",
        ),
        (
            "dataset-path-a-result",
            m(lambda c: c["datasets"].update(y={"path": "./results/toy/toy/rollouts/base.parquet"})),
            "datasets.y.path: got './results/toy/toy/rollouts/base.parquet'; expected a file outside",
        ),
        (
            "dataset-path-with-braces",
            m(lambda c: c["datasets"].update(d={"path": "data/{x}.jsonl"})),
            "datasets.d.path: got 'data/{x}.jsonl'; expected a path without { or }",
        ),
        (
            "model-path-with-braces",
            m(lambda c: c["models"].update(loc={"path": "ckpt/{x}"})),
            "models.loc.path: got 'ckpt/{x}'; expected a path without { or }",
        ),
        # more toy problems than the toy task's settings allow: a traceback in the job
        (
            "toy-dataset-past-the-task",
            m(lambda c: c["toy"].update(min_steps=1, max_steps=1)),
            "config key datasets.toy.n_problems: got 500; the toy task with 1 to 1 operations per problem",
        ),
        (
            "toy-training-past-the-task",
            m(
                lambda c: (
                    c["toy"].update(min_steps=2, max_steps=2),
                    c["datasets"]["toy"].update(n_problems=100),
                    c["advantages"].update(eval_problems=100),
                )
            ),
            "config key toy.n_train_problems: got 20000",
        ),
        # greedy decoding repeated n times is one response n times
        ("greedy-with-n-samples", m(lambda c: c["sampling"].update(temperature=0)), "sampling.n"),
        (
            "dataset-greedy-with-n",
            m(lambda c: c["datasets"]["toy"].update(sampling={"temperature": 0, "n": 4})),
            "datasets.toy.sampling.n",
        ),
        # third hostile pass: accepted, then a job failed or drew garbage
        ("pair-name-ending-in-a-newline", m(lambda c: c["pairs"][0].update(name="toy\n")), "pairs[0].name"),
        ("hub-ending-in-a-newline", m(lambda c: c["models"].update(q={"hub": "a/b\n", "revision": "r"})), "hub"),
        ("name-past-a-file-name", m(lambda c: c["models"].update({"m" * 101: {"toy": "base"}})), "models"),
        ("model-named-as-a-manifest", m(lambda c: c["models"].update({"toy-rl.JSON": {"toy": "base"}})), ".JSON"),
        ("dataset-hub-a-local-folder", m(lambda c: c["datasets"].update(d={"hub": "./d", "revision": "r"})), "hub"),
        (
            "path-dataset-with-a-revision",
            m(lambda c: c["datasets"].update(d={"path": "d.jsonl", "revision": "r"})),
            "config key datasets.d:",
        ),
        (
            "empty-question-field",
            m(lambda c: c["datasets"].update(d={"path": "d.jsonl", "question_field": ""})),
            "datasets.d.question_field",
        ),
        ("temperature-1e-300", m(lambda c: c["sampling"].update(temperature=1e-300)), "sampling.temperature"),
        (
            "dataset-temperature-1e-300",
            m(lambda c: c["datasets"]["toy"].update(sampling={"temperature": 1e-300})),
            "datasets.toy.sampling.temperature",
        ),
        ("toy-head-of-odd-width", m(lambda c: c["toy"].update(hidden_size=12)), "toy.hidden_size"),
        (
            "max-new-tokens-past-the-toy-context",
            m(lambda c: c["sampling"].update(max_new_tokens=300)),
            "sampling.max_new_tokens: got 300",
        ),
        (
            "dataset-max-new-tokens-past-the-toy-context",
            m(lambda c: c["datasets"]["toy"].update(sampling={"max_new_tokens": 256})),
            "datasets.toy.sampling.max_new_tokens",
        ),
        ("gpu-memory-1e-300", m(lambda c: c.update(cluster={"gpu_memory_gb": 1e-300})), "cluster.gpu_memory_gb"),
        # fourth hostile pass: accepted, then a job failed
        (  # the budget-all job's responses ran to the default 16384 tokens in a 256-position context
            "after-switch-past-the-toy-context",
            m(lambda c: c["crosssample"].update(length_rule="after_switch")),
            "crosssample.max_total_tokens: got 16384; at most 226 under length_rule after_switch",
        ),
        (  # no command-line argument can hold one
            "nul-byte-in-a-template",
            m(
                lambda c: (
                    c["datasets"].update(h={"hub": "a/b", "revision": "r", "template": "{question}\0"}),
                    c["pairs"][0]["datasets"].append("h"),
                )
            ),
            "datasets.h.template: got '{question}\\x00'; expected a string without a NUL byte",
        ),
        (  # "Argument list too long" as the job started
            "template-of-200k-characters",
            m(
                lambda c: (
                    c["datasets"].update(h={"hub": "a/b", "revision": "r", "template": "x" * 200_000 + "{question}"}),
                    c["pairs"][0]["datasets"].append("h"),
                )
            ),
            "datasets.h.template: got 'xxx",
        ),
        # fifth hostile pass (c15, c95): a format spec ran at the check (a terabyte's padding) or failed in the job
        *(
            (
                f"template-{name}",
                m(
                    lambda c, t=template: (
                        c["datasets"].update(h={"hub": "a/b", "revision": "r", "template": t}),
                        c["pairs"][0]["datasets"].append("h"),
                    )
                ),
                f"datasets.h.template: got {template!r}; prompt template field",
            )
            for name, template in (
                ("padded-a-terabyte", "{question:>999999999999}"),
                ("nested-spec", "{question:{question}}"),
                ("conversion", "{question!r}"),
                ("attribute", "{question.upper}"),
            )
        ),
        (  # fifth hostile pass (c92): a JSON escape of half a surrogate pair is no character: 12 logging tracebacks
            "lone-surrogate-in-a-template",
            m(
                lambda c: (
                    c["datasets"].update(h={"hub": "a/b", "revision": "r", "template": "X\ud800Y {question}"}),
                    c["pairs"][0]["datasets"].append("h"),
                )
            ),
            "datasets.h.template: got 'X\\ud800Y {question}'; expected text",
        ),
        ("toy-hidden-size-past-a-toy", m(lambda c: c["toy"].update(hidden_size=4096)), "toy.hidden_size: got 4096"),
        ("toy-layers-past-a-toy", m(lambda c: c["toy"].update(num_layers=100)), "toy.num_layers: got 100"),
        ("toy-traces-10**8", m(lambda c: c["toy"].update(n_traces=10**8)), "toy.n_traces: got 100000000"),
        (
            "grpo-round-past-4096-responses",
            m(lambda c: c["advantages"].update(prompts_per_step=128, group_size=64)),
            "advantages.group_size: got 64; at most 32",
        ),
        ("eval-samples-10**6", m(lambda c: c["advantages"].update(eval_samples=10**6)), "advantages.eval_samples"),
        (
            "attention-transformers-lacks",
            m(lambda c: c["models"].update(q={"hub": "a/b", "revision": "r", "attn_implementation": "bogus_impl"})),
            "models.q.attn_implementation: got 'bogus_impl'; expected one of transformers' attention implementations",
        ),
        # eighth hostile pass: an OSError traceback from pathlib naming no key, or a key with no effect
        (
            "model-path-with-a-name-too-long",
            m(lambda c: c["models"].update(q={"path": "x" * 300})),
            "expected a path this system can look up (File name too long)",
        ),
        (
            "dataset-path-past-the-systems-limit",
            m(
                lambda c: (
                    c["datasets"].update(h={"path": "/".join(["d" * 200] * 30) + ".jsonl"}),
                    c["pairs"][0]["datasets"].append("h"),
                )
            ),
            "expected a path this system can look up (File name too long)",
        ),
        # ninth hostile pass (F13): short once resolved, past the limit as spelt (what the jobs are given)
        (
            "model-path-of-dots-past-the-systems-limit",
            m(lambda c: c["models"].update(q={"path": "./" * 2100})),
            "models.q.path: got '././././",
        ),
        (
            "model-path-of-ups-past-the-systems-limit",
            m(lambda c: c["models"].update(q={"path": "x/../" * 900})),
            "expected a path this system can look up (File name too long)",
        ),
        (
            "init-on-a-toy-base",
            m(lambda c: c["models"]["toy-base"].update(init="toy-rl")),
            "models.toy-base.init: got 'toy-rl'; expected no init on a `toy: base` model",
        ),
    ]


@pytest.mark.parametrize(
    ("config", "needle"), [(c, n) for _, c, n in _mutations()], ids=[i for i, _, _ in _mutations()]
)
def test_bad_config_is_refused_naming_the_key(tmp_path, config, needle):
    """The workflow's own checks (common.smk calls check_workflow_config), in-process: one line naming the key."""
    from snakemake.utils import validate

    from tokenshift.config import ConfigError, check_workflow_config

    with pytest.raises(ConfigError) as e:
        check_workflow_config(copy.deepcopy(config), SCHEMA_PATH, validate)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_config_path_in_a_loop_of_links_is_refused_naming_its_key(tmp_path):
    # eighth hostile pass: a RuntimeError ("Symlink loop") traceback out of pathlib, naming no key
    from tokenshift.config import ConfigError, check_workflow_config

    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for section, entry in (("models", {"path": "loop"}), ("datasets", {"path": "loop/d.jsonl"})):
        config = copy.deepcopy(DEFAULT)
        config[section]["q"] = entry
        with pytest.raises(ConfigError) as e:
            check_workflow_config(config, SCHEMA_PATH, lambda *_: None, base_dir=tmp_path)
        assert str(e.value).startswith(f"config key {section}.q.path: got") and "look up" in str(e.value)


def test_a_local_datasets_field_its_rows_do_not_have_is_refused_naming_the_key(tmp_path):
    # a question_field missing from the file passed `snakemake -n`; its dataset job then failed
    import polars as pl

    from tokenshift.config import ConfigError, check_workflow_config

    (tmp_path / "d.jsonl").write_text('{"question": "1+1", "answer": "2", "id": "a"}\n')
    pl.DataFrame({"problem": ["1+1"], "gold": ["2"]}).write_parquet(tmp_path / "d.parquet")
    cases = [
        ({"path": "d.jsonl"}, "datasets.h.question_field: got 'problem'; expected a field of the rows of d.jsonl"),
        ({"path": "d.jsonl", "question_field": "question", "id_field": "uid"}, "datasets.h.id_field: got 'uid'"),
        ({"path": "d.parquet"}, "datasets.h.answer_field: got 'answer'; expected a field of the rows of d.parquet"),
    ]
    for entry, needle in cases:
        config = copy.deepcopy(DEFAULT)
        config["datasets"]["h"] = entry
        config["pairs"][0]["datasets"].append("h")
        with pytest.raises(ConfigError, match=re.escape(needle)):
            check_workflow_config(config, SCHEMA_PATH, lambda *_: None, base_dir=tmp_path)
    config["datasets"]["h"] = {"path": "d.parquet", "answer_field": "gold"}  # the fields it has: passes
    check_workflow_config(config, SCHEMA_PATH, lambda *_: None, base_dir=tmp_path)
    # ninth hostile pass (F2): a file of no rows, and more problems asked for than it has, passed too
    (tmp_path / "empty.jsonl").write_text("\n\n")
    pl.DataFrame({"problem": [], "answer": []}, schema={"problem": pl.String, "answer": pl.String}).write_parquet(
        tmp_path / "empty.parquet"
    )
    cases = [
        ({"path": "empty.jsonl"}, "datasets.h.path: got 'empty.jsonl'; holds no rows"),
        ({"path": "empty.parquet"}, "datasets.h.path: got 'empty.parquet'; holds no rows"),
        (
            {"path": "d.parquet", "answer_field": "gold", "n_problems": 2},
            "datasets.h.n_problems: got 2; expected at most",
        ),
        ({"path": "d.jsonl", "question_field": "question", "n_problems": 3}, "at most the 1 rows of d.jsonl"),
    ]
    for entry, needle in cases:
        config["datasets"]["h"] = entry
        with pytest.raises(ConfigError, match=re.escape(needle)):
            check_workflow_config(config, SCHEMA_PATH, lambda *_: None, base_dir=tmp_path)
    config["datasets"]["h"] = {"path": "d.parquet", "answer_field": "gold", "n_problems": 1}
    check_workflow_config(config, SCHEMA_PATH, lambda *_: None, base_dir=tmp_path)


def test_the_cross_sampling_section_is_not_held_against_a_config_where_no_pair_cross_samples():
    """Eleventh hostile pass, noted: gammas beside directions [reverse] were refused though no job reads them."""
    from snakemake.utils import validate

    from tokenshift.config import ConfigError, check_workflow_config

    config = copy.deepcopy(DEFAULT)
    config["crosssample"].update(directions=["reverse"], gammas=[0.1])
    for pair in config["pairs"]:
        pair["crosssample"] = False
    check_workflow_config(copy.deepcopy(config), SCHEMA_PATH, validate)
    config["pairs"][0]["crosssample"] = True
    with pytest.raises(ConfigError, match=r"crosssample\.gammas"):
        check_workflow_config(config, SCHEMA_PATH, validate)


def test_a_random_thresholds_level_is_accepted_with_a_warning_that_it_does_nothing():
    # eighth hostile pass: accepted silently; a --configfile may merge it in (test_reruns), so it is not refused
    from tokenshift.config import config_warnings

    config = copy.deepcopy(DEFAULT)
    config["crosssample"]["thresholds"] = {"random": {"percentile": 90, "level": "prompt"}}
    assert [w for w in config_warnings(config) if "random" in w] == [
        "config key crosssample.thresholds.random.level: 'prompt' has no effect: a uniform draw's percentile q is "
        "the threshold q / 100 over any level"
    ]


def test_an_error_quoting_a_huge_value_stays_one_short_line():
    # fourth hostile pass (7l): jsonschema's message quotes the value whole: a 100,000-character line
    from tokenshift.config import ConfigError, check_workflow_config

    config = copy.deepcopy(DEFAULT)
    config["pairs"][0]["name"] = "p" * 30_000  # under the string limit: the schema's maxLength refuses it
    with pytest.raises(ConfigError) as e:
        check_workflow_config(config, SCHEMA_PATH, lambda *_: None)
    assert "pairs[0].name" in str(e.value) and "is too long" in str(e.value)
    assert len(str(e.value)) < 1000 and "\n" not in str(e.value)


def test_a_refused_template_is_not_quoted_whole_in_the_error():
    # fifth hostile pass (c96): a 32,000-character template with a stray brace, quoted twice: a 32,300-character line
    from tokenshift.config import ConfigError, check_workflow_config

    config = copy.deepcopy(DEFAULT)
    config["datasets"]["h"] = {"hub": "a/b", "revision": "r", "template": "{question}" + "x" * 32_000 + "{"}
    config["pairs"][0]["datasets"].append("h")
    with pytest.raises(ConfigError) as e:
        check_workflow_config(config, SCHEMA_PATH, lambda *_: None)
    assert "datasets.h.template" in str(e.value) and len(str(e.value)) < 1000


def test_a_budget_that_rounds_to_another_is_named_in_a_warning():
    # fourth hostile pass (7i): 0.01 of 96 new tokens rounds up to 1 token, budget 1's run: merged silently
    from tokenshift.config import config_warnings

    config = copy.deepcopy(DEFAULT)
    config["crosssample"]["budgets"] = [0, 1, 0.01, 0.5]
    warnings = [w for w in config_warnings(config) if "the same run as" in w]
    assert warnings == [
        "config key crosssample.budgets[2]: budget 0.01 is 1 of dataset 'toy''s 96 new tokens, the same run as "
        "crosssample.budgets[1] (1): it is run once"
    ]


@pytest.mark.parametrize(
    ("section", "key", "value", "hinted"),
    [
        ("sampling", "n", 4.0, True),  # an integer key: say how a whole number is written
        ("crosssample", "budgets", [2.0], True),  # an integer among a key's choices (or a fraction below 1)
        ("sampling", "top_p", 0.0, False),  # number keys: 0.0 is a number, and the hint would mislead
        ("crosssample", "gammas", [0.0], False),
    ],
)
def test_the_whole_number_hint_is_given_only_where_an_integer_is_expected(section, key, value, hinted):
    from tokenshift.config import ConfigError, validate_schema

    config = copy.deepcopy(DEFAULT)
    config.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as e:
        validate_schema(config)
    assert ("without a decimal point" in str(e.value)) == hinted, str(e.value)


THROUGH_SNAKEMAKE = (
    "unknown-top-level-key",
    "budget-2.0-read-as-a-share",
    "sampling-n-4.0",
    "budget-10**23",
    "toy-dataset-past-the-task",
    "pair-without-datasets",
)
"""A few of the mutations above, one per kind of check (schema keys, schema values, cross-references),
also through a real `snakemake -n all`: the error reaches the user as that one line, before any job."""


@pytest.mark.parametrize(
    ("config", "needle"),
    [(c, n) for i, c, n in _mutations() if i in THROUGH_SNAKEMAKE],
    ids=[i for i, _, _ in _mutations() if i in THROUGH_SNAKEMAKE],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, config, needle):
    r = snakemake(with_config(tmp_path, config), "-n", "all")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert needle in out
    assert "config key " in out and "Failed validating" not in out  # one line, not a schema dump
    # Snakemake's summary names the Snakefile's line alone, no frame of the library below it
    assert "src/tokenshift" not in out and len([x for x in out.splitlines() if x.lstrip().startswith("File ")]) <= 1
    assert not (tmp_path / "resources").exists()


def test_a_config_of_nested_yaml_aliases_is_refused_at_once(tmp_path):
    # issue 24.10: nine aliases of nine aliases... ('billion laughs') made `snakemake -n` walk 9**9 values
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("\n".join([*lines, "models: *a8", ""]))
    r = snakemake(tmp_path, "-n", "all", timeout=300)
    assert r.returncode != 0
    assert "config key a" in r.stdout + r.stderr and "billion laughs" in r.stdout + r.stderr


def test_an_alias_cycle_in_the_config_is_refused_in_one_line_naming_the_key(tmp_path):
    # seventh hostile pass (Y1): Snakemake's config merge recursed over the cycle to a RecursionError
    (tmp_path / "config").mkdir()
    text = (REPO / "config" / "config.yaml").read_text() + "loop: &L\n  a: *L\n"
    (tmp_path / "config" / "config.yaml").write_text(text)
    r = snakemake(tmp_path, "-n", "all")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "RecursionError" not in out, out[-3000:]
    assert "config key loop.a: got '<an alias *L inside the collection &L names, at line" in out
    assert "src/tokenshift" not in out


def test_a_key_given_twice_in_a_configfile_is_refused_too(tmp_path):
    # ninth hostile pass (F17): only config/config.yaml was checked; in a --configfile (docs/paper-protocol.md
    # has users give one) the first `sampling:` block was dropped without a word
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    (tmp_path / "over.yaml").write_text("sampling:\n  seed: 1\nsampling:\n  n: 2\n")
    r = snakemake(tmp_path, "-n", "all", "--configfile", str(tmp_path / "over.yaml"))
    out = r.stdout + r.stderr
    assert (
        r.returncode != 0
        and f"config key sampling: got \"<a second 'sampling' in one mapping, at line 3 of {tmp_path}" in out
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("toy:\n  seed: 1\ntoy:\n  seed: 7\n", "config key toy: got \"<a second 'toy' in one mapping, at line 3"),
        ("datasets:\n  toy:\n    n_problems: 5\n    n_problems: 40\n", "config key datasets.toy.n_problems: got"),
        ("pairs:\n- name: a\n  datasets: [x]\n  name: b\n", "config key pairs[0].name: got"),
        ("a: &A\n  b: [1, *A]\n", "config key a.b[1]: got '<an alias *A inside the collection &A names"),
        ('models: {m: {path: "\\xff"}}\n# caf\xe9\n', "config key (the file): got '<the byte 0xe9 at line 2 of"),
        # ninth hostile pass (F1): not YAML, and Snakemake's one message ("not valid JSON or YAML") named no line
        ("a: 1\nb: *nowhere\n", "got \"<found undefined alias 'nowhere' at line 2, column 4 of"),
        ("a:\n\t- 1\n", "found character '\\\\t' that cannot start any token at line 2, column 1 of"),
        ("a: !local x\n", "could not determine a constructor for the tag '!local' at line 1, column 4 of"),
        ("a: [1, 2\n", "but got '<stream end>' at line 2, column 1 of"),
        ("? [a, b]\n: 1\nc: {d: 2}\n", "found unhashable key at line 1, column 3 of"),  # no loader makes a list a key
        # thirteenth hostile pass (K4, K5): JSON indented with tabs, which YAML refuses and Snakemake reads
        ('{\n\t"sampling": {"n": 2},\n\t"sampling": {"n": 4}\n}\n', "config key sampling: got \"<a second 'sampling'"),
        ('{\n\t"sampling": {"n": 2, "n": 4}\n}\n', "config key sampling.n: got \"<a second 'n' in one mapping"),
        ('{\n\t"x": ' + "[" * 40 + "]" * 40 + "\n}\n", "config key x: got '<more than 32 levels of nesting"),
        ('{\n\t"x": ' + "[" * 100_000 + "]" * 100_000 + "\n}\n", "got \"<nested past what JSON's parser reads"),
        # twenty-second pass: PyYAML's ValueError for an integer past Python's 4,300 digits named no key
        ("sampling:\n  max_new_tokens: " + "9" * 5000 + "\n", "config key sampling.max_new_tokens: got '<an integer"),
    ],
)
def test_a_config_file_yaml_would_take_wrongly_is_refused_naming_the_key(tmp_path, text, needle):
    """Seventh hostile pass (Y2, Y3): a key given twice kept the last silently (a second ``toy:`` block
    replaced the first whole); bytes not UTF-8 ended in a codec traceback naming neither file nor line."""
    from tokenshift.config import ConfigError, check_config_file

    path = tmp_path / "config.yaml"
    path.write_bytes(text.encode("utf-8") if "\xe9" not in text else text.encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        check_config_file(path)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_anchors_aliases_and_merge_keys_a_config_may_use_pass_the_file_check(tmp_path):
    from tokenshift.config import check_config_file

    path = tmp_path / "config.yaml"
    text = "base: &B {n: 4, seed: 0}\nsampling:\n  <<: *B\n  n: 8\nlists: [&L [1, 2], *L]\nsame: {a: 1, b: {a: 2}}\n"
    path.write_text(text)
    check_config_file(path)  # an override of a merged key is not a key given twice
    check_config_file(REPO / "config" / "config.yaml")
    path.write_text('{\n\t"models": {"m": {"path": "ckpt"}}\n}\n')  # JSON, which Snakemake reads first, with tabs
    check_config_file(path)
    for other in sorted((REPO / "config").glob("*.yaml")):
        check_config_file(other)


def test_a_yte_template_config_is_refused_before_snakemake_runs_its_python(tmp_path):
    """Tenth hostile pass (G4, security): Snakemake loads a YAML config that says `__use_yte__: true` as a YTE
    template, whose Python it runs; config/config.yaml is now refused before Snakemake reads it."""
    (tmp_path / "config").mkdir()
    canary = tmp_path / "PWNED"
    template = f'__use_yte__: true\n__definitions__:\n  - import pathlib\n  - pathlib.Path("{canary}").touch()\n'
    (tmp_path / "config" / "config.yaml").write_text(template + (REPO / "config" / "config.yaml").read_text())
    r = snakemake(tmp_path, "-n", "all")
    assert r.returncode != 0 and not canary.exists()
    assert "config key __use_yte__: got True; a YTE template (config/config.yaml) is Python" in r.stdout + r.stderr


def test_a_config_nested_thousands_of_levels_deep_is_refused_in_one_line(tmp_path):
    # issue 24 (F18): Snakemake's load of it ended in a RecursionError and a thousand lines of traceback
    (tmp_path / "config").mkdir()
    deep = "".join(f"{'  ' * i}k{i}:\n" for i in range(3000)) + "  " * 3000 + "x: 1\n"
    (tmp_path / "config" / "config.yaml").write_text("pairs: []\nmodels:\n" + "  " + deep.replace("\n", "\n  ")[:-2])
    r = snakemake(tmp_path, "-n", "all")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "RecursionError" not in out and len(out.splitlines()) < 20, out[-3000:]
    assert "config key models: got '<more than 32 levels of nesting, at line 34 of config/config.yaml>'" in out


def with_local_pair(tmp_path, base_tokenizer, rl_tokenizer) -> Path:
    """The default config plus a pair ``ab`` of two local checkpoints, ckpt/a and ckpt/b, saved here."""
    save_checkpoint(tmp_path / "ckpt" / "a", base_tokenizer)
    save_checkpoint(tmp_path / "ckpt" / "b", rl_tokenizer, seed=1)
    config = copy.deepcopy(DEFAULT)
    config["models"].update(a={"path": "ckpt/a"}, b={"path": "ckpt/b"})
    config["pairs"].append({"name": "ab", "base": "a", "rl": "b"})
    return with_config(tmp_path, config)


def test_a_path_with_braces_is_refused_naming_its_key(tmp_path, toy_tokenizer):
    """A local dataset or a checkpoint's file whose path holds {x}: a WildcardError before (issue 24, F13)."""
    from tokenshift.config import ConfigError, check_config

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "{x}.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    config = copy.deepcopy(DEFAULT)
    config["models"].update(q={"hub": "o/m", "revision": "r"}, q2={"hub": "o/m2", "revision": "r"})
    config["datasets"]["local"] = {"path": "data/{x}.jsonl"}
    config["pairs"].append({"name": "qq", "base": "q", "rl": "q2", "datasets": ["local"]})
    r = snakemake(with_config(tmp_path, config), "-n", "all")
    assert r.returncode != 0
    assert "config key datasets.local.path: got 'data/{x}.jsonl'; expected a path without { or }" in r.stdout + r.stderr
    save_checkpoint(tmp_path / "ckpt" / "a", toy_tokenizer)
    (tmp_path / "ckpt" / "a" / "model.safetensors").rename(tmp_path / "ckpt" / "a" / "model-{shard}.safetensors")
    config = {"models": {"a": {"path": "ckpt/a"}}, "pairs": []}
    with pytest.raises(ConfigError, match=r"models\.a\.path: got 'ckpt/a'; .*its file 'model-\{shard\}.safetensors'"):
        check_config(config, base_dir=tmp_path)


def test_a_dry_run_runs_no_checkpoint_code_even_where_it_is_trusted(tmp_path, toy_tokenizer):
    # issue 24 (N1): `snakemake -n` loaded a trusted checkpoint's tokenizer, running its code, to compare the pair
    from helpers import custom_code_checkpoint

    for name in ("a", "b"):
        custom_code_checkpoint(tmp_path / "ckpt" / name, toy_tokenizer)
    config = copy.deepcopy(DEFAULT)
    config["models"].update(
        a={"path": "ckpt/a", "trust_remote_code": True}, b={"path": "ckpt/b", "trust_remote_code": True}
    )
    config["pairs"].append({"name": "ab", "base": "a", "rl": "b"})
    ran = tmp_path / "custom-code-ran"
    env = {"CUSTOM_CODE_RAN": str(ran), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    jobs = planned(snakemake(with_config(tmp_path, config), "-n", "all", env=env))
    assert jobs["check_pair"] == len(config["pairs"]) and jobs["fetch_model"] == 2  # the pair is compared by its job
    assert not ran.exists() and not (tmp_path / "modules").exists()


def test_pair_with_incomparable_tokenizers_fails_at_once(tmp_path, toy_tokenizer):
    from helpers import other_tokenizer

    work = with_local_pair(tmp_path, toy_tokenizer, other_tokenizer(["other words entirely, nothing alike"] * 20))
    r = snakemake(work, "-n", "all")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    # the key's value, the model's name (it quoted b's path under pairs[N].rl: the eighteenth pass), and both paths
    assert f"pairs[{len(DEFAULT['pairs'])}].rl: got 'b'; the tokenizer of ckpt/b cannot be compared" in out
    assert "the base model's, of ckpt/a" in out and "token ids differ" in out


def test_a_passed_tokenizer_check_is_remembered_by_content_and_a_changed_file_is_checked_again(
    tmp_path, toy_tokenizer, monkeypatch
):
    # issue 23: loading both tokenizers cost ~8 s of a 10 s `snakemake -n` on every start of a local pair
    from helpers import other_tokenizer

    import tokenshift.tokenizer
    from tokenshift.config import ConfigError, check_config

    monkeypatch.setenv("TOKENSHIFT_CACHE", str(tmp_path / "cache"))
    save_checkpoint(tmp_path / "ckpt" / "a", toy_tokenizer)
    save_checkpoint(tmp_path / "ckpt" / "b", toy_tokenizer, seed=1)
    config = {
        "models": {"a": {"path": "ckpt/a"}, "b": {"path": "ckpt/b"}},
        "pairs": [{"name": "ab", "base": "a", "rl": "b"}],
    }
    check_config(config, base_dir=tmp_path)
    assert len(list((tmp_path / "cache" / "tokenizer-pairs").glob("*.ok"))) == 1
    with monkeypatch.context() as m:
        m.setattr(tokenshift.tokenizer, "load_tokenizer", lambda *a, **k: pytest.fail("the remembered check ran again"))
        check_config(config, base_dir=tmp_path)
        # other weights alone: the same tokenizers, still remembered
        save_checkpoint(tmp_path / "ckpt" / "b", toy_tokenizer, seed=2)
        check_config(config, base_dir=tmp_path)
    # the same folders with another tokenizer inside: checked again, and refused
    save_checkpoint(tmp_path / "ckpt" / "b", other_tokenizer(["other words entirely, nothing alike"] * 20))
    with pytest.raises(ConfigError, match=r"pairs\[0\]\.rl.*token ids differ"):
        check_config(config, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="token ids differ"):  # a refusal is never remembered
        check_config(config, base_dir=tmp_path)
    assert len(list((tmp_path / "cache" / "tokenizer-pairs").glob("*.ok"))) == 1


def test_a_local_pair_whose_chat_templates_prompt_differently_fails_at_once_where_its_prompts_use_them(
    tmp_path, toy_tokenizer, monkeypatch
):
    # twelfth hostile pass: with a template on the rl checkpoint only, base and RL rollouts answered different
    # prompts, and the cross-sampling runs the base model's, with nothing said
    import copy

    from tokenshift.config import ConfigError, check_config

    monkeypatch.setenv("TOKENSHIFT_CACHE", str(tmp_path / "cache"))
    chat = copy.deepcopy(toy_tokenizer)
    chat.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"
    save_checkpoint(tmp_path / "ckpt" / "a", toy_tokenizer)
    save_checkpoint(tmp_path / "ckpt" / "b", chat, seed=1)
    (tmp_path / "d.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    config = {
        "models": {"a": {"path": "ckpt/a"}, "b": {"path": "ckpt/b"}},
        "datasets": {"d": {"path": "d.jsonl"}},
        "pairs": [{"name": "ab", "base": "a", "rl": "b", "datasets": ["d"]}],
    }
    with pytest.raises(ConfigError, match=r"pairs\[0\]\.rl.*only the rl model has a chat template.*template: false"):
        check_config(config, base_dir=tmp_path)
    # prompted without the templates, or with no dataset, the pair is as good as any
    config["datasets"]["d"]["chat_template"] = False
    check_config(config, base_dir=tmp_path)
    check_config({**config, "pairs": [{"name": "ab", "base": "a", "rl": "b"}]}, base_dir=tmp_path)
    # two templates that write the prompt alike pass; two that differ are refused, naming what each writes
    save_checkpoint(tmp_path / "ckpt" / "a", chat)
    config["datasets"]["d"]["chat_template"] = True
    check_config(config, base_dir=tmp_path)
    chat.chat_template = chat.chat_template.replace("<a>", "<assistant>")
    save_checkpoint(tmp_path / "ckpt" / "b", chat, seed=1)
    with pytest.raises(ConfigError, match=r"different prompts of one question \(base: '<u>.*<a>', rl: '.*<assistant>'"):
        check_config(config, base_dir=tmp_path)


def test_local_checkpoint_without_its_tokenizer_fails_at_once(tmp_path, toy_tokenizer):
    work = with_local_pair(tmp_path, toy_tokenizer, toy_tokenizer)
    for f in (tmp_path / "ckpt" / "b").glob("tokenizer*"):
        f.unlink()
    r = snakemake(work, "-n", "all")
    assert r.returncode != 0
    assert "config key models.b.path" in r.stdout + r.stderr and "tokenizer" in r.stdout + r.stderr


def test_local_checkpoint_with_a_damaged_tokenizer_fails_at_once(tmp_path, toy_tokenizer):
    work = with_local_pair(tmp_path, toy_tokenizer, toy_tokenizer)
    tok = tmp_path / "ckpt" / "b" / "tokenizer.json"
    tok.write_text(tok.read_text()[:1000])  # a partial copy
    r = snakemake(work, "-n", "all")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert f"config key pairs[{len(DEFAULT['pairs'])}].rl: got 'b'; ckpt/b's tokenizer does not load" in out


def test_local_checkpoint_inside_the_workflows_model_folder_is_refused(tmp_path, toy_tokenizer):
    # resources/models/<name> is the fetch job's output, which Snakemake deletes before running it
    save_checkpoint(tmp_path / "resources" / "models" / "a", toy_tokenizer)
    config = copy.deepcopy(DEFAULT)
    config["models"]["a"] = {"path": "resources/models/a"}
    r = snakemake(with_config(tmp_path, config), "-n", "all")
    assert r.returncode != 0
    assert "config key models.a.path" in r.stdout + r.stderr
    assert (tmp_path / "resources" / "models" / "a" / "model.safetensors").is_file()


def test_toy_model_paired_with_a_local_one_fails_at_once(tmp_path, toy_tokenizer):
    save_checkpoint(tmp_path / "ckpt" / "a", toy_tokenizer)
    config = copy.deepcopy(DEFAULT)
    config["models"]["a"] = {"path": "ckpt/a"}
    config["pairs"].append({"name": "mixed", "base": "toy-base", "rl": "a"})
    r = snakemake(with_config(tmp_path, config), "-n", "all")
    assert r.returncode != 0
    assert f"config key pairs[{len(DEFAULT['pairs'])}]" in r.stdout + r.stderr and "toy model" in r.stdout + r.stderr


@pytest.mark.parametrize("odd", ["dangling", "loop", "directory", "fifo"])
def test_a_checkpoint_file_that_is_no_regular_file_is_refused_naming_it(tmp_path, toy_tokenizer, odd):
    """Ninth hostile pass (F4, F5): a tokenizer.json that was a broken or looping link passed `snakemake -n` (the
    fetch links regular files alone, so the checkpoint went without it); weights that were a FIFO failed the fetch
    with "has no safetensors weights", naming the output, not the file."""
    import os

    from tokenshift.checkpoints import ModelFetchError, fetch_model
    from tokenshift.config import ConfigError, check_workflow_config

    ckpt = tmp_path / "ckpt" / "a"
    save_checkpoint(ckpt, toy_tokenizer)
    name = "model.safetensors" if odd == "fifo" else "tokenizer.json"
    (ckpt / name).unlink()
    if odd == "dangling":
        (ckpt / name).symlink_to(tmp_path / "gone.json")
    elif odd == "loop":
        (ckpt / name).symlink_to(ckpt / name)
    elif odd == "directory":
        (ckpt / name).mkdir()
    else:
        os.mkfifo(ckpt / name)
    config = copy.deepcopy(DEFAULT)
    config["models"]["a"] = {"path": "ckpt/a"}
    with pytest.raises(ConfigError, match=rf"^config key models.a.path: got 'ckpt/a'; its {name} is no regular file"):
        check_workflow_config(config, SCHEMA_PATH, lambda *_: None, base_dir=tmp_path)
    with pytest.raises(ModelFetchError, match=rf"{ckpt / name} is no regular file"):
        fetch_model("a", {"path": str(ckpt)}, tmp_path / "out" / "a")
    assert not (tmp_path / "out" / "a").exists()


@pytest.mark.slow  # a run of the workflow's jobs, from fetch to accuracy
def test_adding_a_local_pair_is_a_few_lines_of_yaml(tmp_path, toy_tokenizer):
    import json

    save_checkpoint(tmp_path / "ckpt" / "a", toy_tokenizer)
    save_checkpoint(tmp_path / "ckpt" / "b", toy_tokenizer, seed=1)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mini.jsonl").write_text(
        "\n".join(json.dumps({"problem": f"{i}+{i}", "answer": str(2 * i)}) for i in range(3))
    )
    config = copy.deepcopy(DEFAULT)
    config["models"].update(a={"path": "ckpt/a"}, b={"path": "ckpt/b"})
    # an apostrophe in the template must survive the trip through the shell
    config["datasets"]["mini"] = {"path": "data/mini.jsonl", "template": "Let's add: {question}"}
    config["pairs"].append({"name": "ab", "base": "a", "rl": "b", "datasets": ["mini"]})
    config["datasets"]["mini"]["sampling"] = {"n": 2, "max_new_tokens": 8}  # per-dataset overrides
    config["rollout"]["pass_k"] = [1, 2]
    r = snakemake(with_config(tmp_path, config), "--cores", "2", "results/ab/mini/accuracy.parquet")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "resources" / "models" / "a.json").is_file()
    assert "shared_vocab_size" in (tmp_path / "resources" / "pairs" / "ab.json").read_text()
    import polars as pl

    rl = pl.read_parquet(tmp_path / "results" / "ab" / "mini" / "rollouts" / "rl.parquet")
    assert rl.height == 6
    assert toy_tokenizer.decode(rl["prompt_ids"][0].to_list()) == "Let's add: 0+0"
    assert rl["n_response_tokens"].max() <= 8
    acc = pl.read_parquet(tmp_path / "results" / "ab" / "mini" / "accuracy.parquet")
    assert set(acc["metric"]) == {"avg@2", "pass@1", "pass@2"}


def test_light_rules_run_on_the_submit_node_and_model_rules_do_not(tmp_path):
    # `use rule ... with:` does not carry `localrule` over, so a derived gather or figure rule once
    # went to the cluster queue: every rule the workflow defines is checked here by its name
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ResourceSettings

    with_config(tmp_path, DEFAULT)
    with SnakemakeApi() as api:
        workflow = api.workflow(
            snakefile=REPO / "Snakefile", resource_settings=ResourceSettings(), workdir=tmp_path
        )._workflow
        # what Workflow.is_local reads once a cluster executor is set (a plain load executes locally)
        local = {r.name: r.name in workflow._localrules or r.norun for r in workflow.rules}
    light = re.compile(
        r"(gather|figures?|accuracy|report|explorer|dataset|check_pair|run_config|all)(_|$)|\w+_tables?$"
    )
    assert {n for n, is_local in local.items() if bool(light.match(n)) != is_local} == set()
    assert {"gather_crosssample_extrapolated", "figures_divergence", "crosssample", "toy_base"} <= set(local)


def test_the_workflow_profile_is_read_by_every_run_and_lets_a_run_go_without_cores(tmp_path):
    """profiles/default (Snakemake's workflow profile, found beside the Snakefile): `snakemake <target>` runs on
    all cores with no `--cores`, as Snakemake itself refuses to (`--workflow-profile none` shows it)."""
    work = with_config(tmp_path, DEFAULT)
    r = snakemake(work, "results/config.yaml")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Using workflow specific profile profiles/default" in r.stderr
    assert (work / "results" / "config.yaml").is_file()
    (work / "results" / "config.yaml").unlink()
    r = snakemake(work, "--workflow-profile", "none", "results/config.yaml")
    assert r.returncode != 0 and "--cores" in r.stdout + r.stderr
    assert not (work / "results" / "config.yaml").exists()


def test_a_prompt_template_reaches_its_jobs_as_a_recorded_setting(tmp_path):
    # issue 13: a template holding {question} made every dry run fail (WildcardError in rule report)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "set.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    config = copy.deepcopy(DEFAULT)
    config["datasets"]["local"] = {"path": "data/set.jsonl", "template": "Solve: {question} {{braces}}"}
    config["pairs"][0]["datasets"] = ["toy", "local"]
    r = snakemake(with_config(tmp_path, config), "-n", "-p", "all")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'--template=Solve: {question} {{braces}}'" in r.stdout


SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def hostile(tag: str) -> str:
    """A config string that runs `touch PWNED` wherever it reaches a shell unquoted, and splits into words."""
    return f"{tag} x; touch PWNED # $(touch PWNED) `touch PWNED` 'q' \"dq\" \\ $HOME"


def schema_strings(node: dict, key: str = "") -> dict[str, dict]:
    """Every string-valued key of the config schema (``models.*.path``, ``pairs[].name``, a map's keys as
    ``models.<name>``) -> the schema node that admits its value."""
    if "$ref" in node:
        node = {**SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
    found = {}
    if "string" in ([node["type"]] if isinstance(node.get("type"), str) else node.get("type", [])):
        found[key] = node
    for name, sub in node.get("properties", {}).items():
        found.update(schema_strings(sub, f"{key}.{name}" if key else name))
    if isinstance(node.get("additionalProperties"), dict):
        found.update(schema_strings(node["additionalProperties"], f"{key}.*"))
    if "propertyNames" in node:
        found.update(schema_strings(node["propertyNames"], f"{key}.<name>"))
    if isinstance(node.get("items"), dict):
        found.update(schema_strings(node["items"], f"{key}[]"))
    for alternative in node.get("oneOf", []) + node.get("anyOf", []):
        found.update(schema_strings(alternative, key))
    return found


# the free-text config values: each reaches a shell command (a job's) as one argument, whatever it holds
SHELL_STRINGS = {
    "models.*.path",
    "models.*.revision",
    "datasets.*.path",
    "datasets.*.hub",
    "datasets.*.revision",
    "datasets.*.split",
    "datasets.*.question_field",
    "datasets.*.answer_field",
    "datasets.*.id_field",
    "datasets.*.template",
    "datasets.*.opening",
}


def test_every_other_config_string_refuses_shell_syntax():
    """A string key not in SHELL_STRINGS is a name, an id or a choice: its pattern refuses a hostile value
    (a new free-text key fails here until it is quoted on its way to a shell and added above)."""
    import jsonschema

    strings = schema_strings(SCHEMA)
    assert set(strings) >= SHELL_STRINGS
    for key, node in strings.items():
        if key not in SHELL_STRINGS:
            assert not jsonschema.Draft202012Validator(node).is_valid(hostile(key)), key


def test_config_strings_reach_shell_commands_as_one_argument(tmp_path, toy_tokenizer):
    # issue 24.1: `revision: "main --help; touch PWNED #"` ran `touch PWNED` in the fetch job
    import json

    import polars as pl

    work = tmp_path / hostile("work")  # the working directory too: the jobs run in it
    work.mkdir()
    save_checkpoint(work / "ckpt" / hostile("a"), toy_tokenizer)
    save_checkpoint(work / "ckpt" / "b", toy_tokenizer, seed=1)
    fields = {k: hostile(k) for k in ("question_field", "answer_field", "id_field")}
    data = work / "data" / f"{hostile('data')}.jsonl"
    data.parent.mkdir()
    data.write_text(
        "".join(
            json.dumps(
                {fields["question_field"]: f"{i}+1", fields["answer_field"]: str(i + 1), fields["id_field"]: f"p{i}"}
            )
            + "\n"
            for i in range(2)
        )
    )
    prompt = {"template": "Q: {question} " + hostile("template"), "opening": hostile("opening")}
    config = copy.deepcopy(DEFAULT)
    config["models"].update(
        a={"path": f"ckpt/{hostile('a')}"}, b={"path": "ckpt/b"}, q={"hub": "o/m", "revision": hostile("revision")}
    )
    config["datasets"].update(
        local={"path": f"data/{data.name}", **fields, **prompt},
        # a hub id is owner/name by the schema (test_bad_config_is_refused_naming_the_key): none hostile passes
        h={"hub": "o/d", "revision": hostile("hub-revision"), "split": hostile("split")},
    )
    config["pairs"].append({"name": "ab", "base": "a", "rl": "b", "datasets": ["local", "h"]})
    # as each reaches its command (a local checkpoint's path as given, relative to the working directory)
    values = {
        "models.*.path": f"ckpt/{hostile('a')}",
        "models.*.revision": hostile("revision"),
        "datasets.*.path": f"data/{data.name}",
        **{f"datasets.*.{k}": v for k, v in {**fields, **prompt}.items()},
        "datasets.*.hub": "o/d",
        "datasets.*.revision": hostile("hub-revision"),
        "datasets.*.split": hostile("split"),
    }
    assert set(values) == SHELL_STRINGS
    intact = set(values.values())

    r = snakemake(with_config(work, config), "-n", "-p", "all", "resources/models/q.json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    commands = [shlex.split(c) for c in re.findall(r"^Shell command: (?!None$)(.*?2>&1)$", r.stdout, flags=re.S | re.M)]
    # the recorded settings reach their job as one JSON argument, each value in it as given
    (record,) = [c for c in commands if c[:2] == ["tokenshift", "record-config"]]
    recorded = json.loads(record[2])
    assert recorded["datasets"]["local"]["template"] == prompt["template"]
    assert recorded["models"]["q"]["revision"] == hostile("revision") and record[3:5] == [
        "--out",
        "results/config.yaml",
    ]
    commands.remove(record)
    tokens = [re.sub(r"^--[a-z-]+=", "", t) for c in commands for t in c]  # each value joined to its flag
    for key, value in values.items():
        assert value in tokens, key
    hostile_values = {v for v in intact if "PWNED" in v}
    assert {t for t in tokens if "PWNED" in t} == hostile_values  # no value split over several arguments

    # the jobs that read these values run, and the shell runs none of their words
    r = snakemake(
        work,
        "--cores",
        "1",
        "-k",
        "resources/datasets/local.parquet",
        "resources/models/a.json",
        "resources/models/q.json",
    )
    assert r.returncode != 0  # no hub here: q's fetch fails, on the revision given
    assert not list(tmp_path.rglob("PWNED"))
    assert repr(hostile("revision")) in (work / "logs" / "models" / "q.log").read_text()
    assert (work / "resources" / "models" / "a.json").is_file()
    assert pl.read_parquet(work / "resources" / "datasets" / "local.parquet").height == 2


def test_recorded_settings_too_long_for_a_command_line_are_refused_naming_the_longest(tmp_path):
    """Eleventh hostile pass (H5): each string may be 32 KiB, but five long templates together passed `-n` and
    the job writing results/config.yaml failed with "Argument list too long" (Linux's 128 KiB per argument)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    config = copy.deepcopy(DEFAULT)
    for i in range(5):
        config["datasets"][f"long{i}"] = {"path": "data/d.jsonl", "template": "{question}" + "x" * (32_000 + i)}
    r = snakemake(with_config(tmp_path, config), "-n", "all")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "config key datasets.long4.template: got" in out and "results/config.yaml" in out
    # a CJK template is taken as its UTF-8 bytes, not JSON's six-byte escapes: two of 10,900 characters pass
    config = copy.deepcopy(DEFAULT)
    for i in range(2):
        config["datasets"][f"cjk{i}"] = {"path": "data/d.jsonl", "template": "{question}" + "漢" * 10_900}
    r = snakemake(with_config(tmp_path, config), "-n", "-p", "results/config.yaml")
    assert r.returncode == 0 and "漢" * 10_900 in r.stdout, r.stderr[-2000:]


def test_a_working_directory_named_with_quotes_and_a_command_runs_no_command(tmp_path):
    """Tenth hostile pass (G6): Snakemake ran the one `run:` rule (results/config.yaml) by a shell line that
    quoted the workflow's folder wrongly: a folder named x'$(touch PWNED)' ran the command. Every rule is a
    shell command of its own now, whose paths Snakemake quotes (and are relative to the working directory)."""
    work = tmp_path / "wq'$(touch PWNED)'"
    work.mkdir()
    for part in ("Snakefile", "workflow", "config", "profiles", "envs"):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, work / part)
    r = run([sys.executable, "-m", "snakemake", "--cores", "1", "results/config.yaml"], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list(tmp_path.rglob("PWNED"))
    recorded = yaml.safe_load((work / "results" / "config.yaml").read_text())
    assert [p["name"] for p in recorded["pairs"]] == [p["name"] for p in DEFAULT["pairs"]]


def test_values_that_start_with_a_dash_reach_their_jobs_as_values(tmp_path):
    """A threshold of -2.5e-07, a path, an opening or a revision starting with '-': apart from its flag, argparse
    read such a value as an option of its own (issue 24, F12/F13); each command of the dry run parses here. A tau
    reaches its jobs as the threshold it is (-tau), one spelling for one rule."""
    from tokenshift.cli import build_parser

    (tmp_path / "-set.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    config = copy.deepcopy(DEFAULT)
    config["models"].update(
        q={"hub": "o/m", "revision": "-rev", "dtype": "float16", "attn_implementation": "eager"},
        q2={"hub": "o/m2", "revision": "r"},
    )
    config["datasets"]["local"] = {"path": "-set.jsonl", "opening": "-x -y"}
    config["datasets"]["hubbed"] = {"hub": "o/d", "revision": "-r", "split": "-s"}
    config["pairs"].append({"name": "qq", "base": "q", "rl": "q2", "datasets": ["local", "hubbed"]})
    config["crosssample"].update(policies=["dlogp", "logprob"], thresholds={"dlogp": {"tau": -1e-05}})
    config["crosssample"]["thresholds"]["logprob"] = {"threshold": -2.5e-07}
    r = snakemake(with_config(tmp_path, config), "-n", "-p", "all")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    commands = re.findall(r"^Shell command: (tokenshift .*?) > \S+ 2>&1$", r.stdout, flags=re.S | re.M)
    parser, parsed = build_parser(), {}
    for command in commands:
        argv = shlex.split(command)[1:]
        parsed.setdefault(argv[0], []).append(vars(parser.parse_args(argv)))
    dlogp = [a for a in parsed["crosssample"] if a["policy"] == "dlogp" and a["budget"] != "0"]
    assert {(a["tau"], a["threshold"]) for a in dlogp} == {(None, 1e-05)}
    assert {a["threshold"] for a in parsed["crosssample"] if a["policy"] == "logprob" and a["budget"] != "0"} == {
        -2.5e-07
    }
    assert {a["opening"] for a in parsed["rollout"] if "local" in a["dataset"]} == {"-x -y"}
    assert {(a["path"], a["split"]) for a in parsed["dataset"] if a["path"]} == {("-set.jsonl", None)}
    assert {(a["hub"], a["revision"], a["split"]) for a in parsed["dataset"] if a["hub"]} == {("o/d", "-r", "-s")}
    assert {a["revision"] for a in parsed["models"] if a.get("name") == "q"} == {"-rev"}
    # the loaders' settings reach the fetch, which records them in the manifest (test_models)
    fetch = {a["name"]: (a["dtype"], a["attn_implementation"]) for a in parsed["models"] if a.get("action") == "fetch"}
    assert fetch == {"q": ("float16", "eager"), "q2": (None, None)}


def test_the_authors_protocol_options_reach_the_jobs_and_a_prompt_level_percentile_needs_no_scores(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["crosssample"].update(
        policies=["js", "entropy"],
        thresholds={"js": {"percentile": 90, "level": "response"}, "entropy": {"level": "prompt", "percentile": 90}},
        force_switch=True,
        injected_eos="drop",
        statistic="topk:50",
        length_rule="after_switch",
        max_total_tokens=200,  # the toy context (256) holds a prompt of up to 30 tokens too
    )
    config["grading"] = {"mode": "lenient"}
    r = snakemake(with_config(tmp_path, config), "-n", "-p", "all")
    assert r.returncode == 0, r.stderr[-3000:]
    # the grid's runs (an extrapolation run beside it draws otherwise: tested below)
    commands = [c for c in r.stdout.split("\n") if "tokenshift crosssample " in c and ".gamma-" not in c]
    entropy = [c for c in commands if "--policy entropy" in c and "--budget 0 " not in c]
    js = [c for c in commands if "--policy js" in c and "--budget 0 " not in c]
    assert entropy and js
    assert all("--level=prompt --percentile=90" in c and "--scores" not in c for c in entropy)
    assert all("--level=response --percentile=90" in c and "--scores" not in c for c in js)
    for c in commands:
        argv = shlex.split(c.removeprefix("Shell command: "))
        assert {"--mode=lenient", "--injected-eos=drop", "--statistic=topk:50"} <= set(argv), c
        assert {"--length-rule=after_switch", "--max-total-tokens=200", "--injection=sample"} <= set(argv), c
        assert "--force-switch" in argv and not any(a.startswith("--gamma") for a in argv)  # extrapolate reads it


def test_vllm_scoring_reaches_the_score_jobs_with_its_engine_settings_and_no_other_job(tmp_path):
    config = copy.deepcopy(DEFAULT)
    levels = {"js": {"percentile": 90, "level": "prompt"}, "entropy": {"percentile": 90, "level": "prompt"}}
    config["crosssample"]["thresholds"] = levels
    config["rollout"] = {"vllm_dtype": "float32", "vllm_max_model_len": 512}
    config["scoring"] = {"backend": "vllm", "statistic": "topk:50"}
    r = snakemake(with_config(tmp_path, config), "-n", "-p", "all")
    assert r.returncode == 0, r.stderr[-3000:]
    scores = shell_commands(r.stdout, "score")
    assert scores
    for flags in scores:
        wanted = {
            "--backend": "vllm",
            "--statistic": "topk:50",
            "--vllm-dtype": "float32",
            "--vllm-max-model-len": "512",
        }
        assert wanted.items() <= flags.items(), flags
        assert "--device-base" not in flags and "--compile" not in flags  # hf's settings: vllm reads none
    # the rollouts stay on hf, which reads no engine setting
    rollouts = shell_commands(r.stdout, "rollout")
    assert rollouts and all(f["--backend"] == "hf" and "--vllm-dtype" not in f for f in rollouts)
    # the hf backend's score jobs record none of the engine's settings
    config["scoring"] = {}
    r = snakemake(with_config(tmp_path, config), "-n", "-p", "all")
    assert r.returncode == 0, r.stderr[-3000:]
    scores = shell_commands(r.stdout, "score")
    assert scores and all(f["--backend"] == "hf" and f["--statistic"] == "exact" for f in scores)
    assert not any(k.startswith("--vllm-") for f in scores for k in f)


def crosssample_commands(tmp_path, config) -> dict[str, list[str]]:
    """The shell command of each cross-sampling job `snakemake -n -p all` plans for ``config``, by output."""
    tmp_path.mkdir()
    r = snakemake(with_config(tmp_path, config), "-n", "-p", "all")
    assert r.returncode == 0, r.stderr[-3000:]
    commands = [
        shlex.split(c) for c in re.findall(r"^Shell command: (tokenshift crosssample .*?2>&1)$", r.stdout, re.M | re.S)
    ]
    return {c[c.index("--out") + 1]: c for c in commands}


def test_the_engine_reaches_the_jobs_and_its_own_keys_reach_its_jobs_only(tmp_path):
    def flags(command):
        return {a.split("=")[0] for a in command if a.startswith("--")}

    lockstep = copy.deepcopy(DEFAULT)
    # (no extrapolation runs beside the grid: regenerate draws by sampling only)
    lockstep["crosssample"].update(device_base="cpu", batch_size=8, gammas=[])
    regenerate = copy.deepcopy(lockstep)
    regenerate["crosssample"]["engine"] = "regenerate"
    plans = {
        name: crosssample_commands(tmp_path / name, config)
        for name, config in (("lockstep", lockstep), ("regenerate", regenerate))
    }
    assert plans["lockstep"].keys() == plans["regenerate"].keys() and plans["lockstep"]
    for out, command in plans["lockstep"].items():
        argv = " ".join(command)
        assert "--engine=lockstep" in argv and "--device-base=cpu" in argv and "--batch-size=8" in argv
        assert not {f for f in flags(command) if f.startswith("--vllm")}, out
        # the regenerate job of the same run: the engine, the vLLM engines' settings, none of lockstep's
        other = plans["regenerate"][out]
        assert "--engine=regenerate" in " ".join(other) and "--vllm-dtype=bfloat16" in " ".join(other)
        assert flags(other) - flags(command) == {
            "--vllm-gpu-memory-utilization",
            "--vllm-dtype",
            "--no-vllm-enforce-eager",
        }
        assert flags(command) - flags(other) == {"--device-base", "--device-rl", "--batch-size"}
    # a key one engine reads changes nothing in the other engine's jobs, so re-runs none of them
    vllm_changed = copy.deepcopy(lockstep)
    vllm_changed["rollout"].update(vllm_dtype="float32", vllm_enforce_eager=True)
    assert crosssample_commands(tmp_path / "vllm", vllm_changed) == plans["lockstep"]
    devices_changed = copy.deepcopy(regenerate)
    devices_changed["crosssample"].update(device_base="cuda:1", device_rl="cpu", batch_size=64)
    assert crosssample_commands(tmp_path / "devices", devices_changed) == plans["regenerate"]
    # and where they are set, the user is told regenerate reads them not
    from snakemake.utils import validate

    from tokenshift.config import check_workflow_config

    warned = check_workflow_config(devices_changed, SCHEMA_PATH, validate)
    assert [w.split(":")[0] for w in warned if "engine lockstep only" in w] == [
        f"config key crosssample.{k}" for k in ("batch_size", "device_base", "device_rl")
    ]


def test_budget_past_the_length_limit_is_warned_about(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["crosssample"]["budgets"] = [0, 2, 500]
    r = snakemake(with_config(tmp_path, config), "-n", "all")
    assert r.returncode == 0
    assert "crosssample.budgets[2]: budget 500 exceeds the 96 new tokens of dataset 'toy'" in r.stdout + r.stderr


def test_jobs_ask_for_gpus_by_their_models_and_tables_split_into_parts(tmp_path, toy_tokenizer):
    from tokenshift.settings import CrossSampleGrid

    # a local pair of two 'large' models: 90 GB of GPU memory on 80 GB cards takes 2 GPUs each
    save_checkpoint(tmp_path / "ckpt" / "a", toy_tokenizer)
    save_checkpoint(tmp_path / "ckpt" / "b", toy_tokenizer, seed=1)
    config = copy.deepcopy(DEFAULT)
    config["models"].update(a={"path": "ckpt/a", "resources": {"gpus": 2}}, b={"path": "ckpt/b"})
    config["pairs"].append({"name": "ab", "base": "a", "rl": "b", "datasets": ["toy"]})
    config["rollout"]["jobs"] = 3
    config["crosssample"].update(jobs=2, device_base="cpu", device_rl="cpu")  # cross-sampled on the CPU
    config["cluster"] = {"gpu_model": "h100"}
    with_config(tmp_path, config)
    # the manifests are what the resources are read from: make the checkpoints first
    r = snakemake(tmp_path, "--cores", "2", "resources/models/a.json", "resources/models/b.json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = snakemake(tmp_path, "-n", "all")
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    jobs = {}
    for block in re.split(r"^\[.*\]$", text, flags=re.M):  # one block per job
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        output = re.search(r"output: (\S+)", block)
        res = re.search(r"resources: (.*)", block)
        if rule and output and res:
            jobs[output[1].rstrip(",")] = (rule[1], dict(kv.split("=", 1) for kv in res[1].split(", ")))
    rollout = {o: r for o, (rule, r) in jobs.items() if rule == "rollout" and "/ab/" in o}
    assert sorted(rollout) == [
        f"results/ab/toy/rollouts/{role}.parts/{i}-of-3.parquet" for role in ("base", "rl") for i in (1, 2, 3)
    ]
    assert rollout["results/ab/toy/rollouts/base.parts/1-of-3.parquet"]["gpu"] == "2"  # as model a's entry says
    assert rollout["results/ab/toy/rollouts/rl.parts/1-of-3.parquet"]["gpu"] == "1"  # b's size: one 80 GB card
    assert rollout["results/ab/toy/rollouts/rl.parts/1-of-3.parquet"]["gpu_model"] == "h100"
    score = next(r for o, (rule, r) in jobs.items() if rule == "score" and "/ab/" in o)
    assert score["gpu"] == "3"  # both models
    crosssample = [
        r for o, (rule, r) in jobs.items() if rule in ("crosssample", "crosssample_extrapolated") and "/ab/" in o
    ]
    grid = CrossSampleGrid.from_config(config["crosssample"])
    runs = len(grid.runs(config["sampling"]["max_new_tokens"])) + len(grid.extrapolation_runs())
    assert len(crosssample) == 2 * runs and {r["gpu"] for r in crosssample} == {"0"}  # both models on the CPU
    # the regenerate engine's vLLM engines share the job's GPUs wherever the lockstep devices say: both models'
    (tmp_path / "regenerate.yaml").write_text(yaml.safe_dump({"crosssample": {"engine": "regenerate", "gammas": []}}))
    out = snakemake(tmp_path, "-n", "all", "--configfile", str(tmp_path / "regenerate.yaml"))
    assert out.returncode == 0, out.stderr[-3000:]
    blocks = re.split(r"^\[.*\]$", out.stdout + out.stderr, flags=re.M)
    gpus = {re.search(r"gpu=(\d+)", b)[1] for b in blocks if re.search(r"^rule crosssample:", b, re.M) and "/ab/" in b}
    assert gpus == {"3"}


def test_the_paper_config_plans_the_paper_study_on_slurm_with_gpus_per_model(tmp_path):
    """`snakemake -n --profile slurm all --configfile config/paper.yaml`, as docs/paper-protocol.md shows it
    (tests/test_readme.py runs that line itself)."""
    from tokenshift.settings import AUTHORS_PROMPT

    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    for name, entry in paper["datasets"].items():  # the authors' prompt, spelled as the library knows it
        assert {k: entry[k] for k in AUTHORS_PROMPT} == AUTHORS_PROMPT, name
    shutil.copytree(REPO / "config", tmp_path / "config")
    xdg = tmp_path / "xdg"
    r = run(
        tokenshift_cmd() + ["profile", "install", "slurm", "--partition", "cpu", "--gpu-partition", "gpu"],
        env={"XDG_CONFIG_HOME": str(xdg)},
    )
    assert r.returncode == 0, r.stderr
    r = run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--profile", "slurm"]
        + ["--configfile", "config/paper.yaml", "-n", "-p", "all"],
        env={"XDG_CONFIG_HOME": str(xdg), "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]},
        cwd=tmp_path,
        timeout=600,
    )
    jobs = planned(r)
    # 2 pairs x 4 datasets x 2 roles (rollouts) or sources (scores) in 8 jobs per table; cross-sampling: 2 directions x
    # (3 policies x 3 budgets + budget 0) runs of 8 jobs each; the default config's toy models unused
    assert jobs["fetch_model"] == 4 and "toy_base" not in jobs and jobs["dataset"] == 4
    assert jobs["rollout"] == 2 * 4 * 2 * 8 and jobs["score"] == 2 * 4 * 2 * 8
    assert jobs["crosssample"] == 2 * 4 * 2 * (3 * 3 + 1) * 8
    # docs/paper-protocol.md gives the plan's size and the rules its table does not list one by one
    doc = (REPO / "docs" / "paper-protocol.md").read_text()
    listed = ("fetch_model", "rollout", "score", "crosssample")
    assert int(re.search(r"^plans (\d+) jobs", doc, re.M)[1]) == sum(jobs.values())
    assert int(re.search(r"^\| the others .*\| (\d+) \| 0 \|$", doc, re.M)[1]) == sum(
        n for rule, n in jobs.items() if rule not in listed
    )
    # rollouts on vLLM, cross-sampling by the authors' regeneration (on vLLM too)
    commands = [shlex.split(c) for c in re.findall(r"^Shell command: (tokenshift \w+ .*?2>&1)$", r.stdout, re.M | re.S)]
    engines = {(c[1], a) for c in commands for a in c if a.startswith(("--backend=", "--engine="))}
    assert engines == {("rollout", "--backend=vllm"), ("crosssample", "--engine=regenerate"), ("score", "--backend=hf")}
    vllm_set = [c for c in commands if any(a.startswith("--vllm-dtype=") for a in c)]
    assert sum(c[1] == "crosssample" for c in vllm_set) == jobs["crosssample"]
    gpus = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", r.stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        pair = re.search(r"pair=([\w.-]+)", block)
        gpu = re.search(r"gpu=(\d+)", block)
        if head and pair and head[1] in ("rollout", "score", "crosssample"):
            gpus.setdefault((head[1], pair[1]), set()).add(int(gpu[1]) if gpu else 0)
    # GPUs per job from the config's resources: 2 per 32B model, 1 per 7B model, summed over a job's models
    assert gpus == {
        ("rollout", "dapo-32b"): {2},
        ("score", "dapo-32b"): {4},
        ("crosssample", "dapo-32b"): {4},
        ("rollout", "simplerl-7b"): {1},
        ("score", "simplerl-7b"): {2},
        ("crosssample", "simplerl-7b"): {2},
    }


def test_an_extrapolation_run_draws_at_its_gamma_beside_a_grid_that_samples(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["crosssample"].update(policies=["js", "dlogp"], gammas=[0.1, 0.25], injected_eos="drop")
    (tmp_path / "ok").mkdir()
    r = snakemake(with_config(tmp_path / "ok", config), "-n", "-p", "all")
    assert r.returncode == 0, r.stderr[-3000:]
    commands = shell_commands(r.stdout, "crosssample")
    beside = sorted((c for c in commands if ".gamma-" in c["--out"]), key=lambda c: c["--gamma"])
    grid = [c for c in commands if ".gamma-" not in c["--out"]]
    assert len(beside) == 2 and len(grid) == 2 * 2 * (len(config["crosssample"]["budgets"]) - 1) + 2
    for args, gamma in zip(beside, ("0.1", "0.25")):
        assert args["--out"].endswith(f"/forward/dlogp/budget-all.gamma-{gamma}.parts/1-of-1.parquet")
        assert (args["--injection"], args["--gamma"], args["--injected-eos"]) == ("extrapolate", gamma, "drop")
        assert (args["--direction"], args["--policy"], args["--budget"]) == ("forward", "dlogp", "all")
    assert all(c["--injection"] == "sample" and "--gamma" not in c for c in grid)
    table = re.search(r"^Shell command: (tokenshift crosssample-table .*)$", r.stdout, re.M)[1]
    assert table.count(".gamma-") == 2 and "--extrapolation" in table
    # two gammas that are one run to six decimals
    config["crosssample"]["gammas"] = [0.1, 0.1000001]
    (tmp_path / "bad").mkdir()
    r = snakemake(with_config(tmp_path / "bad", config), "-n", "all")
    assert r.returncode != 0 and "crosssample.gammas[1]" in r.stderr + r.stdout


def test_a_profile_for_a_site_that_refuses_gpus_asks_for_gres_through_the_slurm_plugin(tmp_path):
    """Issue 28.5: installed with --qos, --reservation, --requeue, --efficiency-report and --gres, the profile is
    one the SLURM plugin takes (a dry run on it), and GPU jobs ask for --gres=gpu:<model>:<n>, not --gpus."""
    config = copy.deepcopy(DEFAULT)
    config["models"].update(
        q={"hub": "o/m", "revision": "r", "resources": {"gpus": 2}},
        q2={"hub": "o/m2", "revision": "r", "resources": {"gpus": 1}},
    )
    config["pairs"].append({"name": "qq", "base": "q", "rl": "q2", "datasets": ["toy"]})
    xdg = tmp_path / "xdg"
    site = ["--partition", "cpu", "--gpu-partition", "gpu", "--gpu-model", "h100", "--qos", "high"]
    site += ["--reservation", "maint", "--requeue", "--efficiency-report", "--gres"]
    r = run(tokenshift_cmd() + ["profile", "install", "slurm", *site], env={"XDG_CONFIG_HOME": str(xdg)})
    assert r.returncode == 0, r.stderr
    r = run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(with_config(tmp_path, config))]
        + ["--profile", "slurm", "-n", "results/qq/toy/rollouts/base.parquet", "results/qq/toy/rollouts/rl.parquet"],
        env={"XDG_CONFIG_HOME": str(xdg), "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]},
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    blocks = [b for b in re.split(r"\n(?=(?:local)?rule \w+:)", r.stdout) if b.startswith("rule rollout:")]
    assert sorted(re.search(r"gres=([\w:]+)", b)[1] for b in blocks) == ["gpu:h100:1", "gpu:h100:2"]
    assert all(re.search(r"\bgpu=0\b", b) and "gpu_model=h100" not in b for b in blocks)


def test_a_job_whose_tokenshift_is_not_the_workflows_refuses_to_run_and_writes_nothing(tmp_path):
    # issue 28: a rule's conda environment installs tokenshift by version; one built from another release (or code
    # edited while the workflow ran) would have run under the code hash recorded for this package's code
    from helpers import patched_source

    shim = tmp_path / "bin" / "tokenshift"  # the jobs' `tokenshift`, as a conda environment's would be
    shim.parent.mkdir()
    work = tmp_path / "work"
    shutil.copytree(REPO / "config", work / "config")
    env = {"PATH": os.pathsep.join([str(shim.parent), str(Path(sys.executable).parent), os.environ["PATH"]])}
    target = work / "resources" / "datasets" / "toy.parquet"
    other = patched_source(tmp_path, "datasets.py", "prepare_dataset")
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={other} exec {sys.executable} -m tokenshift.cli "$@"\n')
    shim.chmod(0o755)
    r = snakemake(work, "--cores", "1", "resources/datasets/toy.parquet", env=env)
    log = (work / "logs" / "datasets" / "toy.log").read_text()
    assert r.returncode != 0 and not target.exists(), r.stderr[-2000:]
    assert "not the package the workflow planned it with" in log and "Traceback" not in log, log
    # the workflow's own package: the job runs
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m tokenshift.cli "$@"\n')
    r = snakemake(work, "--cores", "1", "resources/datasets/toy.parquet", env=env)
    assert r.returncode == 0 and target.is_file(), r.stderr[-2000:]


def test_no_order_in_the_config_moves_the_advantage_experiments_base_or_the_toy_checks_problems(tmp_path):
    # thirteenth hostile pass: a pair of the SFT and RL toy models listed first made GRPO start from the SFT model
    # (K1); an unused toy dataset listed first set the toy check's problem count (K3)
    from tokenshift.config import advantage_base, toy_check_problems

    config = copy.deepcopy(DEFAULT)
    config["pairs"] = [
        {"name": "sft-vs-rl", "base": "toy-sft", "rl": "toy-rl", "datasets": ["toy"], "crosssample": False},
        *config["pairs"],
    ]
    config["datasets"] = {"toy2": {"toy": "eval", "n_problems": 100}, **config["datasets"]}
    assert advantage_base(config) == "toy-base"
    assert toy_check_problems(config, config["pairs"][0]) == (500, "datasets.toy.n_problems")
    both = {**config["pairs"][0], "datasets": ["toy2", "toy"]}  # the pair's largest toy dataset, in any order
    assert toy_check_problems(config, both) == toy_check_problems(config, {**both, "datasets": ["toy", "toy2"]})
    r = snakemake(with_config(tmp_path, config), "-n", "-p", "all")
    assert r.returncode == 0, r.stderr[-3000:]
    runs, checks = shell_commands(r.stdout, "advantages run"), shell_commands(r.stdout, "toy-check")
    assert runs and {flags["--base"] for flags in runs} == {"resources/models/toy-base.json"}
    assert len(checks) == 2 and {flags["--n-problems"] for flags in checks} == {"500"}


def test_a_study_whose_run_paths_could_not_reach_the_explorers_command_is_refused_by_the_plan(tmp_path):
    """Twenty-first pass: a grid of ~3,000 cross-sampling runs was planned, and the explorer's job, which names them
    all on its command line, could never start (past Linux's 128 KiB for one argument): at the study's end."""
    config = copy.deepcopy(DEFAULT)
    names = [f"toy{i}" for i in range(50)]
    config["datasets"] |= {name: config["datasets"]["toy"] for name in names}
    config["pairs"][0]["datasets"] = ["toy", *names]
    r = snakemake(with_config(tmp_path, config), "-n", "all")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out
    assert re.search(r"config key crosssample: .*the token explorer's job takes their \d+ paths", out), out
    config["pairs"][0]["datasets"] = ["toy", *names[:5]]  # the same grid on fewer datasets: planned
    assert snakemake(with_config(tmp_path, config), "-n", "all").returncode == 0
