"""token_stats against an independent scipy/numpy computation, on random, peaked and degenerate rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax
from scipy.stats import entropy

from tokenshift.divergence import token_stats


def reference(a: np.ndarray, b: np.ndarray, k: int) -> dict[str, np.ndarray]:
    p, q = softmax(a.astype(np.float64), axis=-1), softmax(b.astype(np.float64), axis=-1)
    out = {
        "js": jensenshannon(p, q, axis=-1) ** 2,
        "kl_base_rl": entropy(p, q, axis=-1),
        "kl_rl_base": entropy(q, p, axis=-1),
        "entropy_base": entropy(p, axis=-1),
        "entropy_rl": entropy(q, axis=-1),
    }
    tp, tq = np.argsort(-a, axis=-1, kind="stable")[:, :k], np.argsort(-b, axis=-1, kind="stable")[:, :k]
    out["topk_overlap"] = np.array([len(set(x) & set(y)) / k for x, y in zip(tp, tq)])
    rl_top, base_top = b.argmax(-1), a.argmax(-1)
    rows = np.arange(len(a))
    out["rl_top1_rank_in_base"] = (a > a[rows, rl_top][:, None]).sum(-1)
    out["base_top1_rank_in_rl"] = (b > b[rows, base_top][:, None]).sum(-1)
    out["p_base_of_rl_top1"] = p[rows, rl_top]
    out["p_rl_of_rl_top1"] = q[rows, rl_top]
    return out


def check(a: np.ndarray, b: np.ndarray, k: int = 5) -> None:
    got = token_stats(torch.from_numpy(a), torch.from_numpy(b), top_k=k)
    want = reference(a, b, k)
    assert set(got) == set(want)
    for key, w in want.items():
        np.testing.assert_allclose(got[key].numpy(), w, atol=1e-5, rtol=1e-4, err_msg=key)


def test_random_distributions():
    rng = np.random.default_rng(0)
    check(rng.normal(size=(64, 300)).astype(np.float32), rng.normal(size=(64, 300)).astype(np.float32))


def test_peaked_distributions():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(32, 500)).astype(np.float32) * 8
    b = a + rng.normal(size=(32, 500)).astype(np.float32) * 0.5
    a[:, 3] += 30  # base almost certain of token 3
    check(a, b)


def test_identical_rows_give_exactly_zero():
    a = torch.randn(16, 100)
    s = token_stats(a, a.clone())
    assert torch.equal(s["js"], torch.zeros(16))
    assert torch.equal(s["kl_base_rl"], torch.zeros(16))
    assert torch.equal(s["kl_rl_base"], torch.zeros(16))
    assert torch.equal(s["topk_overlap"], torch.ones(16))
    assert torch.equal(s["rl_top1_rank_in_base"], torch.zeros(16, dtype=torch.long))


def test_minus_inf_logits_are_zero_probability():
    a = torch.randn(8, 50)
    b = torch.randn(8, 50)
    a[:, 10:] = -math.inf
    b[:, 20:] = -math.inf
    s = token_stats(a, b)
    for key, v in s.items():
        assert not torch.isnan(v.float()).any(), key
    # base's support lies inside rl's: KL(base||rl) finite; rl has mass where base has none: infinite
    assert torch.isfinite(s["kl_base_rl"]).all()
    assert torch.isinf(s["kl_rl_base"]).all()
    assert (s["js"] <= math.log(2) + 1e-7).all()
    check(a[:, :10].numpy().copy(), b[:, :10].numpy().copy())


def test_disjoint_support_reaches_ln2():
    a = torch.full((1, 4), -math.inf)
    b = torch.full((1, 4), -math.inf)
    a[0, 0] = 0.0
    b[0, 1] = 0.0
    assert token_stats(a, b)["js"].item() == pytest.approx(math.log(2), abs=1e-6)


def test_low_precision_inputs_are_computed_in_float32():
    rng = np.random.default_rng(2)
    a = torch.from_numpy(rng.normal(size=(16, 200)).astype(np.float32)).bfloat16()
    b = torch.from_numpy(rng.normal(size=(16, 200)).astype(np.float32)).bfloat16()
    s = token_stats(a, b)
    assert s["js"].dtype == torch.float32
    check(a.float().numpy(), b.float().numpy())


def test_nan_logits_are_refused():
    a = torch.randn(4, 10)
    a[2, 3] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        token_stats(a, torch.randn(4, 10))


def test_rows_without_a_distribution_are_refused():
    # +inf (an fp16 overflow) or a row masked everywhere has no softmax: its statistics came back
    # NaN, silently, where NaN logits are refused
    b = torch.randn(3, 6)
    for role, bad in (("base", math.inf), ("rl", -math.inf)):
        a = torch.randn(3, 6)
        if role == "base":
            a[1, 2] = bad
            args = (a, b)
        else:
            a[1, :] = bad
            args = (b, a)
        with pytest.raises(ValueError, match=f"{role} logits: row 1"):
            token_stats(*args)
    a = torch.randn(3, 6)
    a[1, 2:] = -math.inf  # masked tokens alone are a distribution: computed, not refused
    assert torch.isfinite(token_stats(a, b)["js"]).all()
