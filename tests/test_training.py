"""The training analyses: divergence-weighted GRPO, the experiment's tables, checkpoints along RL
training and the shifts measured on them, and the SFT contrast model. Real models, trained here."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from conftest import short_toy_config

from tokenshift.checkpoints import write_manifest
from tokenshift.loading import load_causal_lm
from tokenshift.tokenizer import load_tokenizer
from tokenshift.toy.build import build_rl, build_sft
from tokenshift.toy.check import sampled_accuracy
from tokenshift.toy.config import AdvantageExperimentConfig
from tokenshift.toy.task import problems
from tokenshift.toy.training import (
    advantage_tables,
    checkpoints_of,
    run_variant,
    shifts_over_training,
    write_run,
)
from tokenshift.train import GRPOConfig, PromptItem, grpo

# the tests' short toy build (conftest), RL with two intermediate checkpoints
SHORT = dataclasses.replace(short_toy_config(), grpo_steps=6, checkpoint_every=2)


@pytest.fixture(scope="module")
def short_base(short_toy_base):
    return short_toy_base[0]


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_weighting_leaves_the_first_step_alone_and_changes_later_ones(short_base):
    """At the first step the policy is the reference, every divergence is 0 and every weighting is
    plain GRPO; once the policy has moved, a weighting changes the update."""
    tok = load_tokenizer(short_base / "base")
    train = problems(SHORT.task, "train", 50)
    prompts = [PromptItem(tok.encode(p.prompt, add_special_tokens=False), str(p.answer)) for p in train]

    def reward(responses, golds):  # longer responses win: a signal in every group
        return [float(len(r)) for r in responses]

    def train_with(mode: str, steps: int):
        policy = load_causal_lm(short_base / "base", "cpu")
        reference = load_causal_lm(short_base / "base", "cpu")
        seen = []
        cfg = GRPOConfig(steps=steps, prompts_per_step=4, group_size=4, lr=1e-3, seed=3, advantage=mode)
        eos = tok.eos_token_id
        grpo(
            policy,
            prompts,
            reward,
            cfg,
            pad_id=eos,
            eos_id=eos,
            reference=reference,
            progress=False,
            on_step=lambda k, m: seen.append(k),
        )
        return _params(policy), seen

    plain1, seen = train_with("none", 1)
    assert seen == [1]
    for mode in ("js", "kl", "topq", "mix"):
        assert torch.equal(train_with(mode, 1)[0], plain1), mode
    plain3, seen = train_with("none", 3)
    assert seen == [1, 2, 3]
    assert not torch.equal(train_with("topq", 3)[0], plain3)


def test_a_weighting_needs_a_reference_and_a_known_mode():
    with pytest.raises(ValueError, match="expected one of"):
        GRPOConfig(advantage="entropy")
    with pytest.raises(ValueError, match="needs a reference"):
        grpo(torch.nn.Linear(1, 1), [], lambda r, g: [], GRPOConfig(advantage="js"), pad_id=0, eos_id=0)


def test_advantage_tables_against_a_hand_computation():
    # two variants, two seeds, three problems, evaluated at rounds 0 and 4
    rows = []
    correct = {
        ("none", 0): [0, 1, 0],
        ("none", 1): [1, 1, 0],
        ("js", 0): [1, 1, 0],
        ("js", 1): [1, 1, 1],
    }
    for (variant, seed), final in correct.items():
        for pid, c0, c in zip(("a", "b", "c"), (0, 1, 0), final):
            rows.append({"variant": variant, "seed": seed, "step": 0, "problem_id": pid, "correct": float(c0)})
            rows.append({"variant": variant, "seed": seed, "step": 4, "problem_id": pid, "correct": float(c)})
    t = advantage_tables(pl.DataFrame(rows))
    curve = {(r["variant"], r["step"]): r for r in t["curve"].iter_rows(named=True)}
    assert curve[("none", 4)]["accuracy"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert (curve[("none", 4)]["seed_min"], curve[("none", 4)]["seed_max"]) == pytest.approx((1 / 3, 2 / 3))
    assert curve[("js", 4)]["accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert curve[("js", 0)]["accuracy"] == curve[("none", 0)]["accuracy"] == pytest.approx(1 / 3)
    comp = {r["variant"]: r for r in t["comparison"].iter_rows(named=True)}
    assert comp["none"]["diff_vs_none"] is None
    # paired by seed and problem: per-problem mean differences (0.5, 0, 0.5), mean 1/3
    assert comp["js"]["diff_vs_none"] == pytest.approx(1 / 3)
    assert comp["js"]["diff_ci_low"] <= comp["js"]["diff_vs_none"] <= comp["js"]["diff_ci_high"]
    assert comp["js"]["seeds_ahead"] == 2
    assert comp["js"]["n_seeds"] == 2 and comp["js"]["n_problems"] == 3
    assert comp["js"]["step"] == 4


def test_an_experiment_run_evaluates_every_variant_on_the_same_noise(short_base, tmp_path):
    cfg = AdvantageExperimentConfig(steps=2, eval_every=1, eval_problems=12, eval_samples=2, prompts_per_step=4)
    assert cfg.eval_steps() == [0, 1, 2]
    runs = {}
    for variant in ("none", "js"):
        evals, history = run_variant(short_base / "base.json", variant, 5, cfg, lr=SHORT.grpo_lr, progress=False)
        write_run(evals, history, tmp_path / variant)
        runs[variant] = pl.read_parquet(tmp_path / variant / "eval.parquet")
        assert sorted(runs[variant]["step"].unique()) == [0, 1, 2]
        assert runs[variant].height == 3 * 12
        assert pl.read_parquet(tmp_path / variant / "history.parquet")["step"].to_list() == [0, 1]
    # before training the two runs are the same model on the same noise: the same answers
    first = [runs[v].filter(pl.col("step") == 0).sort("problem_id")["correct"] for v in runs]
    assert first[0].equals(first[1])
    # and the same run again is the same, bit for bit
    again, _ = run_variant(short_base / "base.json", "js", 5, cfg, lr=SHORT.grpo_lr, progress=False)
    assert again.select(runs["js"].columns).equals(runs["js"])


@pytest.fixture(scope="module")
def short_rl(short_base):
    build_rl(short_base / "base", short_base / "rl6", SHORT, name="rl6", progress=False)
    write_manifest(short_base / "rl6", name="rl6", spec={"toy": "rl", "init": "base"})
    return short_base / "rl6"


def test_rl_training_saves_checkpoints_with_manifests_along_the_way(short_base, short_rl):
    found = checkpoints_of(short_rl.with_suffix(".json"))
    assert [s for s, _ in found] == [2, 4, 6]
    for step, ckpt in found[:-1]:
        manifest = json.loads(ckpt.with_suffix(".json").read_text())
        assert manifest["name"] == f"rl6@step-{step}" and manifest["spec"] == {"toy": "rl", "step": step}
    weights = [_params(load_causal_lm(c, "cpu")) for _, c in found]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    # the final model is the one a build without intermediate checkpoints makes
    plain = dataclasses.replace(SHORT, checkpoint_every=0)
    # built into a directory an earlier build left checkpoints in: they are not this model's, and go
    shutil.copytree(short_rl / "checkpoints", short_base / "rl-plain" / "checkpoints")
    build_rl(short_base / "base", short_base / "rl-plain", plain, progress=False)
    assert not (short_base / "rl-plain" / "checkpoints").exists()
    assert torch.equal(_params(load_causal_lm(short_base / "rl-plain", "cpu")), weights[-1])


def test_shifts_over_training_refuse_a_model_grpo_did_not_train_and_one_checkpoint_as_both(short_base, short_rl):
    # thirteenth hostile pass (K9): an SFT model's missing GRPO checkpoints were to be built again; one checkpoint
    # as both models ran
    from tokenshift.io import InputError

    with pytest.raises(InputError, match=r"a toy base model, which GRPO did not train; expected the toy RL model"):
        checkpoints_of(short_base / "base.json")
    with pytest.raises(InputError, match="the same checkpoint as the base and the RL model"):
        shifts_over_training(short_rl.with_suffix(".json"), short_rl.with_suffix(".json"), n_problems=3)


def test_shifts_over_training_score_every_checkpoint(short_base, short_rl):
    table = shifts_over_training(short_base / "base.json", short_rl.with_suffix(".json"), n_problems=30)
    assert table["step"].to_list() == [2, 4, 6]
    assert table["checkpoint"].to_list() == ["step-2", "step-4", "final"]
    for col in ("share_js_below_1e-3", "share_js_above_1e-2", "top5_precision", "base_rate"):
        assert table[col].is_between(0, 1).all(), col
    assert (table["n_positions"] == table["n_positions"][0]).all()  # the same responses at every step
    # the further from the base model, the fewer positions it leaves unchanged (here: the first vs the last)
    assert table["share_js_below_1e-3"][0] > table["share_js_below_1e-3"][-1]


def test_sft_on_correct_traces_makes_fewer_mistakes(short_base):
    stats = build_sft(short_base / "base", short_base / "sft", SHORT, progress=False)
    assert stats["role"] == "sft"
    tok = load_tokenizer(short_base / "base")
    acc = sampled_accuracy(
        {"base": load_causal_lm(short_base / "base", "cpu"), "sft": load_causal_lm(short_base / "sft", "cpu")},
        tok,
        problems(SHORT.task, "eval", 200),
        max_new_tokens=SHORT.max_new_tokens,
        seed=1,
        samples_per_problem=2,
    )
    sampled = {r["role"]: r for r in acc.filter(pl.col("decoding") == "sampled_t1").iter_rows(named=True)}
    assert sampled["sft"]["ci_low"] > sampled["base"]["ci_high"]
    assert np.isfinite(stats["final_loss"])


def test_a_baseline_alone_has_no_comparison_but_a_figure():
    from tokenshift.plots.figures import advantages

    rows = [{"variant": "none", "seed": 0, "step": s, "problem_id": "a", "correct": 1.0} for s in (0, 2)]
    t = advantage_tables(pl.DataFrame(rows))
    assert t["comparison"]["diff_vs_none"].to_list() == [None]
    advantages(t["curve"], t["comparison"])  # draws, with no difference to show


def test_advantage_tables_do_not_depend_on_row_order():
    """The bootstrap CIs are a function of the evaluations, not of the order polars groups them in
    (a re-run of the table job must give the same comparison.parquet)."""
    rng = np.random.default_rng(0)
    rows = [
        {"variant": v, "seed": s, "step": 4, "problem_id": f"p{p:03d}", "correct": float(rng.integers(0, 3)) / 2}
        for v in ("none", "js")
        for s in (0, 1)
        for p in range(200)
    ]
    evals = pl.DataFrame(rows)
    first = advantage_tables(evals)["comparison"]
    for i in range(4):
        again = advantage_tables(evals.sample(fraction=1.0, shuffle=True, seed=i))["comparison"]
        assert again.sort("variant").equals(first.sort("variant")), i


@pytest.mark.parametrize(("flag", "value"), [("--q", "0"), ("--q", "1.5"), ("--alpha", "2")])
def test_advantage_run_refuses_a_bad_share_before_training(tmp_path, capsys, flag, value):
    """q and alpha out of range are refused with the key named, before any model is loaded (the
    base here does not exist), not by weighted_advantages after the first evaluation."""
    from tokenshift.cli import main

    argv = ["advantages", "run", "--base", str(tmp_path / "none"), "--variant", "topq", "--seed", "0"]
    assert main(argv + [flag, value, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{flag[2:]} {value}" in err and "no such" not in err.lower()
    with pytest.raises(ValueError, match=f"advantage_{flag[2:]}"):
        GRPOConfig(advantage="topq", **{f"advantage_{flag[2:]}": float(value)})


def test_checkpoints_of_lists_what_the_build_saved_and_refuses_anything_else(tmp_path, toy_tokenizer):
    """The intermediate checkpoints are those the build record says were saved (every
    ``checkpoint_every`` of ``grpo_steps``): one missing (deleted, or a build killed before it),
    one left by an earlier build into the same directory, one without its manifest, or one whose
    weights changed after it are refused by name, never silently dropped or mixed in."""
    import shutil

    from conftest import save_checkpoint

    from tokenshift.checkpoints import ModelFetchError
    from tokenshift.io import InputError, write_json_atomic

    rl = save_checkpoint(tmp_path / "rl", toy_tokenizer)
    write_json_atomic(rl / "toy_build.json", {"role": "rl", "build": {"grpo_steps": 6, "checkpoint_every": 2}})
    write_manifest(rl, name="rl", spec={"toy": "rl", "init": "base"})

    def step(k: int, *, manifest: bool = True):
        ckpt = save_checkpoint(rl / "checkpoints" / f"step-{k}", toy_tokenizer, seed=k)
        if manifest:
            write_manifest(ckpt, name=f"rl@step-{k}", spec={"toy": "rl", "step": k})
        return ckpt

    step(2)
    with pytest.raises(InputError, match="step-4"):  # missing
        checkpoints_of(rl)
    step(4)
    assert [(s, c.name) for s, c in checkpoints_of(rl)] == [(2, "step-2"), (4, "step-4"), (6, "rl")]
    stale = step(8)  # an earlier, longer build's
    with pytest.raises(InputError, match="step-8"):
        checkpoints_of(rl)
    shutil.rmtree(stale)
    stale.with_suffix(".json").unlink()
    shutil.rmtree(rl / "checkpoints" / "step-4")
    (rl / "checkpoints" / "step-4.json").unlink()
    step(4, manifest=False)  # killed while saving: no manifest yet
    with pytest.raises(InputError, match="step-4"):
        checkpoints_of(rl)
    step(4)
    # weights rewritten after the manifest (another size, so not taken as unchanged by stat)
    (rl / "checkpoints" / "step-2" / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ModelFetchError, match="step-2"):
        checkpoints_of(rl)


def test_advantage_tables_refuse_runs_that_are_not_comparable():
    """Runs of another length (or on other problems), or one run given twice, are refused naming
    them: the comparison at the last round gave a NaN accuracy and no difference for the shorter run."""
    from tokenshift.io import InputError

    def run(variant, seed, steps=(0, 4), ids="abc"):
        return [
            {"variant": variant, "seed": seed, "step": s, "problem_id": p, "correct": 1.0} for s in steps for p in ids
        ]

    with pytest.raises(InputError, match=r"js seed 0.*rounds \[0, 2\]"):
        advantage_tables(pl.DataFrame(run("none", 0) + run("js", 0, steps=(0, 2))))
    with pytest.raises(InputError, match="js seed 1"):
        advantage_tables(pl.DataFrame(run("none", 1) + run("js", 1, ids="abd")))
    with pytest.raises(InputError, match=r"none seed 0.*more than once"):
        advantage_tables(pl.DataFrame(run("none", 0) + run("none", 0) + run("js", 0)))
    assert advantage_tables(pl.DataFrame(run("none", 0) + run("js", 0)))["comparison"].height == 2
