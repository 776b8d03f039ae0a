"""Divergence-weighted advantages against a hand computation (numpy, the formulas written out)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenshift.advantages import MODES, weighted_advantages

# two responses of three positions over a vocabulary of three; the second has two positions and a
# policy still equal to its reference
POLICY = torch.tensor(
    [
        [[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]],
        [[0.5, 0.1, 0.2], [1.0, -1.0, 0.0], [9.0, 9.0, 9.0]],
    ]
)
REF = torch.tensor(
    [
        [[0.0, 2.0, -1.0], [0.0, 0.0, 0.1], [1.0, 1.0, 1.0]],
        [[0.5, 0.1, 0.2], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0]],
    ]
)
ADV = torch.tensor([1.5, -0.8])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def hand_js(lp, lr):
    p, r = softmax(np.array(lp)), softmax(np.array(lr))
    m = (p + r) / 2
    return 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(r * np.log(r / m))


def hand_kl(lp, lr):
    p, r = softmax(np.array(lp)), softmax(np.array(lr))
    return np.sum(p * np.log(p / r))


def test_each_mode_is_the_written_formula():
    js = np.array([hand_js(POLICY[0, t].tolist(), REF[0, t].tolist()) for t in range(3)])
    kl = np.array([hand_kl(POLICY[0, t].tolist(), REF[0, t].tolist()) for t in range(3)])
    want = {
        "none": 1.5 * np.ones(3),
        "js": 1.5 * js / js.mean(),
        "kl": 1.5 * kl / kl.mean(),
        "mix": 1.5 * (0.25 + 0.75 * js / js.mean()),
    }
    # top-q with q = 0.34 of 3 positions: the 2 of highest JS carry 3/2 of the advantage each
    top = np.zeros(3)
    top[np.argsort(-js)[:2]] = 1.5 * 3 / 2
    want["topq"] = top
    assert set(MODES) - set(want) == {"lowprob"}  # the one that weighs by probability, not divergence (below)
    for mode in want:
        got = weighted_advantages(POLICY, REF, ADV, MASK, mode=mode, q=0.34, alpha=0.25)
        np.testing.assert_allclose(got[0].numpy(), want[mode], rtol=1e-5, atol=1e-6, err_msg=mode)
        # every mode keeps each response's mean advantage; a policy equal to its reference keeps A
        # at every position; positions outside the mask get nothing
        assert got[0].mean().item() == pytest.approx(1.5, rel=1e-5)
        assert got[1, :2].tolist() == pytest.approx([-0.8, -0.8]) and got[1, 2].item() == 0.0


def test_the_follow_ups_lowprob_weight_is_one_plus_c_times_the_tokens_improbability():
    tokens = torch.tensor([[0, 2, 1], [1, 0, 2]])
    got = weighted_advantages(POLICY, None, ADV, MASK, mode="lowprob", tokens=tokens, c=0.2)
    for b in range(2):
        for t in range(3):
            p = softmax(POLICY[b, t].numpy())[tokens[b, t]]
            want = ADV[b].item() * (1 + 0.2 * (1 - p)) * MASK[b, t].item()
            assert got[b, t].item() == pytest.approx(want, rel=1e-5)
    assert got[0, 1] > got[0, 0]  # the less probable token gets more of the advantage
    with pytest.raises(ValueError, match="sampled tokens"):
        weighted_advantages(POLICY, None, ADV, MASK, mode="lowprob")


def test_weights_carry_no_gradient_and_bad_settings_are_refused():
    logits = POLICY.clone().requires_grad_(True)
    out = weighted_advantages(logits, REF, ADV, MASK, mode="js")
    assert not out.requires_grad
    assert math.isfinite(out.sum().item())
    with pytest.raises(ValueError, match="advantage weighting 'entropy'"):
        weighted_advantages(POLICY, REF, ADV, MASK, mode="entropy")
    with pytest.raises(ValueError, match="q 0"):
        weighted_advantages(POLICY, REF, ADV, MASK, mode="topq", q=0)


def test_topq_keeps_ceil_of_q_n_positions():
    # k = ceil(q * n) in exact arithmetic: 0.6 * 25 is 15 (float32 makes it 15.0000006, and 16)
    torch.manual_seed(0)
    for q, n, k in ((0.6, 25, 15), (0.2, 5, 1), (0.34, 3, 2), (1.0, 7, 7), (1e-6, 4, 1)):
        got = weighted_advantages(
            torch.randn(1, n, 5), torch.randn(1, n, 5), torch.tensor([2.0]), torch.ones(1, n), mode="topq", q=q
        )
        assert int((got > 0).sum()) == k, (q, n)
        assert got.sum().item() == pytest.approx(2.0 * n, rel=1e-5)


def test_infinite_kl_gives_its_positions_the_credit_not_nan():
    """KL(policy || reference) is +inf where the reference gives probability 0 to a token the policy
    can sample; the weight d_t / mean d tends to n / (number of such positions) there and 0
    elsewhere, the limit that keeps the response's mean advantage."""
    policy = torch.zeros(1, 4, 3)
    ref = torch.tensor([[[0.0, 0.0, -math.inf], [1.0, 0.0, 0.0], [0.0, 0.0, -math.inf], [0.0, 2.0, 0.0]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    kl = weighted_advantages(policy, ref, torch.tensor([0.5]), mask, mode="kl")
    assert kl[0].tolist() == pytest.approx([0.75, 0.0, 0.75, 0.0])
    mix = weighted_advantages(policy, ref, torch.tensor([0.5]), mask, mode="kl", alpha=0.5)
    assert torch.isfinite(mix).all()
    # the mean over the response is the advantage, as for finite divergences
    assert mix[0, :3].mean().item() == pytest.approx(0.5)
