"""The toy build: one source of truth for its settings, and a shortened build that RL improves."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import short_toy_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenshift.toy.build import build_base
from tokenshift.toy.config import ToyBuildConfig


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="hidden"):
        ToyBuildConfig.from_mapping({"hidden": 3})


SHORT = short_toy_config()


@pytest.fixture(scope="module")
def short_pair(short_toy_pair):
    return short_toy_pair  # built once per session: tests/test_vllm.py cross-samples on it too


def test_short_build_saves_ordinary_checkpoints(short_pair):
    root, base_stats, _ = short_pair
    for role in ("base", "rl"):
        model = AutoModelForCausalLM.from_pretrained(root / role)
        tok = AutoTokenizer.from_pretrained(root / role)
        assert type(model).__name__ == "Qwen2ForCausalLM"
        assert model.config.vocab_size == len(tok)
        assert json.loads((root / f"{role}.json").read_text())["tokenizer_roundtrip"] == "ok"
        # the build's record is hashed into the checkpoint's identity: no wall-clock time in it, or the same
        # build run on a laptop and on a cluster's node were two models (the slurm test's tables differed)
        assert '"seconds"' not in (root / role / "toy_build.json").read_text()  # nor a GRPO step's
    assert base_stats["final_loss"] < 1.0


def test_grpo_raises_the_expected_reward_on_held_out_problems(short_pair):
    from tokenshift.loading import load_causal_lm
    from tokenshift.tokenizer import load_tokenizer
    from tokenshift.toy.check import build_settings, sampled_accuracy
    from tokenshift.toy.task import problems

    root, _, _ = short_pair
    assert build_settings(root / "base.json") == SHORT  # the check reads the task off the model it checks
    base, rl, tok = (
        load_causal_lm(root / "base.json", "cpu"),
        load_causal_lm(root / "rl.json", "cpu"),
        load_tokenizer(root / "base"),
    )
    acc = sampled_accuracy(
        {"base": base, "rl": rl},
        tok,
        problems(SHORT.task, "eval", 200),
        max_new_tokens=SHORT.max_new_tokens,
        seed=1,
        samples_per_problem=4,
    )
    sampled = {r["role"]: r for r in acc.filter(acc["decoding"] == "sampled_t1").iter_rows(named=True)}
    assert 0.1 < sampled["base"]["accuracy"] < 0.9  # the base model errs sometimes: something to learn
    assert sampled["rl"]["ci_low"] > sampled["base"]["ci_high"]


def test_build_is_deterministic(tmp_path):
    import dataclasses

    from tokenshift.checkpoints import manifest_path
    from tokenshift.toy.build import build_toy_base

    brief = dataclasses.replace(SHORT, pretrain_steps=60, n_traces=600)  # equal weights need no good model
    # as the workflow builds them: with a manifest, which is the same bytes for the same weights (it held the
    # build's seconds, so a forced build of the same model re-ran the whole study: the fourteenth hostile pass, L7)
    for name in ("first", "again"):
        build_toy_base("m", tmp_path / name, brief, progress=False)
    first, again = (json.loads((tmp_path / name / "toy_build.json").read_text()) for name in ("first", "again"))
    assert again["final_loss"] == first["final_loss"]
    assert manifest_path(tmp_path / "again").read_bytes() == manifest_path(tmp_path / "first").read_bytes()
    # the weights depend on the CPU's kernels: the manifest says which CPU, which kernels and which torch built them
    machine = json.loads(manifest_path(tmp_path / "first").read_text())["toy_build_machine"]
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["torch"] == torch.__version__ and machine["cpu"]
    from tokenshift.io import umask

    # the weights get the mode the umask gives (safetensors wrote them 0600: the twelfth hostile pass)
    assert (tmp_path / "first" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask()
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "first").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "again").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = build_base(tmp_path / "other", dataclasses.replace(brief, seed=1), progress=False)
    assert other["final_loss"] != first["final_loss"]  # the seed is what decides them


def test_the_config_check_knows_the_toy_models_context():
    # the config refuses a max_new_tokens the toy models cannot hold (toy.config.TOY_CONTEXT), without building one
    from tokenshift.toy.build import _qwen2_config
    from tokenshift.toy.config import TOY_CONTEXT, ToyBuildConfig

    assert _qwen2_config(100, 0, ToyBuildConfig()).max_position_embeddings == TOY_CONTEXT
