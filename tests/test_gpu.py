"""GPU paths: skipped with a reason where no CUDA device is present (CI), run on a lent GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import save_checkpoint
from transformers import AutoModelForCausalLM

from tokenshift.generation import SamplingConfig, sample
from tokenshift.scoring import STAT_COLUMNS, score_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is visible here"),
]


@pytest.fixture()
def pair(tmp_path, toy_tokenizer):
    a = save_checkpoint(tmp_path / "a", toy_tokenizer)
    b = save_checkpoint(tmp_path / "b", toy_tokenizer, embedding_rows=len(toy_tokenizer) + 40, seed=1)
    return a, b, len(toy_tokenizer)


def test_scoring_on_cuda_matches_cpu_with_models_on_different_devices(pair):
    a, b, vocab = pair
    g = np.random.default_rng(0)
    rows = [(g.integers(1, vocab, 6).tolist(), g.integers(1, vocab, 20).tolist()) for _ in range(5)]
    cpu = score_rows(
        AutoModelForCausalLM.from_pretrained(a),
        AutoModelForCausalLM.from_pretrained(b),
        rows,
        vocab_size=vocab,
        pad_id=0,
    )
    # base on the GPU, RL on the CPU: the chunk's logits meet on the base model's device
    gpu = score_rows(
        AutoModelForCausalLM.from_pretrained(a).cuda(),
        AutoModelForCausalLM.from_pretrained(b),
        rows,
        vocab_size=vocab,
        pad_id=0,
    )
    for k in ("logp_base", "logp_rl", *STAT_COLUMNS):
        np.testing.assert_allclose(gpu.columns[k], cpu.columns[k], atol=1e-4, rtol=1e-3, err_msg=k)


def test_sampling_on_cuda_returns_token_ids(pair):
    a, _, vocab = pair
    model = AutoModelForCausalLM.from_pretrained(a).cuda()
    out = sample(
        model,
        [[1, 2, 3], [4, 5]],
        eos_id=vocab - 1,
        pad_id=0,
        sampling=SamplingConfig(max_new_tokens=8),
        seed=0,
        batch_size=2,
    )
    assert len(out) == 2 and all(0 < len(s.response_ids) <= 8 for s in out)


def test_compiled_statistics_on_cuda_equal_eager_ones():
    from tokenshift.divergence import token_stats, token_stats_compiled

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 5000, generator=g) * 3, torch.randn(300, 5000, generator=g) * 3
    b[:7] = a[:7]  # identical rows must stay exactly 0
    want = token_stats(a, b)
    for n in (300, 123):  # dynamic shapes: one compiled graph, several chunk lengths
        got = token_stats_compiled(a[:n].cuda(), b[:n].cuda())
        for k, v in want.items():
            torch.testing.assert_close(got[k].cpu().to(v.dtype), v[:n], atol=1e-5, rtol=1e-4, msg=k)
    assert torch.equal(token_stats_compiled(a[:7].cuda(), b[:7].cuda())["js"].cpu(), torch.zeros(7))


def test_cross_sampling_on_cuda_matches_cpu_with_models_on_different_devices(pair):
    from tokenshift.crosssample import SwitchRule
    from tokenshift.decoding import cross_sample

    a, b, vocab = pair
    g = np.random.default_rng(1)
    prompts = [g.integers(1, vocab, int(n)).tolist() for n in (3, 7, 5, 4)]
    kw = dict(
        eos_id=None,
        pad_id=0,
        vocab_size=vocab,
        rule=SwitchRule(policy="js", threshold=0.001, budget=3),
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=16),
        seed=0,
        batch_size=4,
    )
    cpu = cross_sample(AutoModelForCausalLM.from_pretrained(a), AutoModelForCausalLM.from_pretrained(b), prompts, **kw)
    # float32 on both devices; base (the generator) on the GPU, RL on the CPU
    gpu = cross_sample(
        AutoModelForCausalLM.from_pretrained(a).cuda(), AutoModelForCausalLM.from_pretrained(b), prompts, **kw
    )
    same = sum(x.response_ids == y.response_ids for x, y in zip(cpu, gpu))
    assert same >= 3  # identical noise; a rare float difference at a CDF boundary may fork one row
    assert all(s.extra["n_switched"] <= 3 and len(s.response_ids) == 16 for s in gpu)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices to spread a model over")
def test_a_model_spread_over_two_gpus_scores_as_on_one(pair):
    from tokenshift.loading import load_causal_lm

    a, b, vocab = pair
    g = np.random.default_rng(1)
    rows = [(g.integers(1, vocab, 6).tolist(), g.integers(1, vocab, 20).tolist()) for _ in range(5)]
    one = score_rows(load_causal_lm(a, "cuda:0"), load_causal_lm(b, "cuda:0"), rows, vocab_size=vocab, pad_id=0)
    spread = load_causal_lm(a, "cuda:0,1")
    assert {p.device.index for p in spread.parameters()} == {0, 1}
    two = score_rows(spread, load_causal_lm(b, "cuda:1"), rows, vocab_size=vocab, pad_id=0)
    for k in ("logp_base", "logp_rl", *STAT_COLUMNS):
        np.testing.assert_allclose(two.columns[k], one.columns[k], atol=1e-3, rtol=1e-2, err_msg=k)
