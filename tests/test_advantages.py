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
    for mode in MODES:
        got = weighted_advantages(POLICY, REF, ADV, MASK, mode=mode, q=0.34, alpha=0.25)
        np.testing.assert_allclose(got[0].numpy(), want[mode], rtol=1e-5, atol=1e-6, err_msg=mode)
        # every mode keeps each response's mean advantage; a policy equal to its reference keeps A
        # at every position; positions outside the mask get nothing
        assert got[0].mean().item() == pytest.approx(1.5, rel=1e-5)
        assert got[1, :2].tolist() == pytest.approx([-0.8, -0.8]) and got[1, 2].item() == 0.0


def test_weights_carry_no_gradient_and_bad_settings_are_refused():
    logits = POLICY.clone().requires_grad_(True)
    out = weighted_advantages(logits, REF, ADV, MASK, mode="js")
    assert not out.requires_grad
    assert math.isfinite(out.sum().item())
    with pytest.raises(ValueError, match="advantage weighting 'entropy'"):
        weighted_advantages(POLICY, REF, ADV, MASK, mode="entropy")
    with pytest.raises(ValueError, match="q 0"):
        weighted_advantages(POLICY, REF, ADV, MASK, mode="topq", q=0)
