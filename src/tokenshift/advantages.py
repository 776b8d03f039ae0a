"""Divergence-weighted token advantages: GRPO whose credit goes where the policy moved.

The paper's third analysis: if the positions where RL moves the distribution are the ones that
matter, a GRPO update can give them more of each response's advantage. ``weighted_advantages``
takes a batch of responses (the current policy's and the reference model's logits at every
response position, each response's group-normalised advantage ``A``, the response mask) and
returns per-token advantages ``a_t``. ``d_t`` is a divergence between the policy and the
reference at position ``t``, from ``tokenshift.divergence.token_stats`` (the code the analysis
uses), detached from the graph; ``n`` is the response's number of positions (its mask) and
``mean d`` their mean divergence:

- ``none``: ``a_t = A`` (plain GRPO: every token of a response gets its advantage);
- ``js``: ``a_t = A * d_t / mean d`` with ``d`` the Jensen-Shannon divergence; the mean of
  ``a_t`` over the response is ``A``, so the update's scale is unchanged;
- ``kl``: the same with ``d = KL(policy || reference)``; where it is +inf (the reference gives a
  token the policy can sample probability 0) the response's credit is shared by its infinite
  positions, the limit of ``d_t / mean d``;
- ``topq``: the ``k = ceil(q * n)`` positions of highest JS carry ``a_t = A * n / k``, the
  others 0 (mean-preserving as well);
- ``mix`` (ours): ``a_t = A * (alpha + (1 - alpha) * d_t / mean d)`` with JS, so positions that
  barely moved keep a floor ``alpha`` of the credit while moved ones get more;
- ``lowprob`` (the follow-up's, RLVR-Directions' ``reweight.method: reshape_reversed``, c = 0.2
  for Qwen2.5-Math-7B): ``a_t = A * (1 + c * (1 - pi(y_t)))`` with ``pi(y_t)`` the sampling
  policy's probability of the token at ``t`` (``tokens``): low-probability tokens get more
  credit. It reads no reference, and is not mean-preserving (as theirs is not).

A response whose divergences are all 0 (the policy still equal to the reference, as at the
first step) keeps ``a_t = A`` under every mode. The function is self-contained so that it drops
into any trainer's loss; docs/training.md shows where it goes in TRL's ``GRPOTrainer`` and in verl.
"""

from __future__ import annotations

import math

import torch

from tokenshift.divergence import token_stats
from tokenshift.registry import ADVANTAGE_MODES as MODES


@torch.no_grad()
def weighted_advantages(
    logits_policy: torch.Tensor,
    logits_ref: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    mode: str = "js",
    q: float = 0.2,
    alpha: float = 0.5,
    tokens: torch.Tensor | None = None,
    c: float = 0.2,
) -> torch.Tensor:
    """Per-token advantages ``[B, T]`` (0 outside ``mask``) from logits ``[B, T, V]``, the responses'
    advantages ``[B]`` and their mask ``[B, T]``; see the module docstring for each ``mode``.
    ``lowprob`` reads the sampled ``tokens`` ``[B, T]`` (the ids the logits at each position predict)
    and ``c``, and no reference (``logits_ref`` may be None)."""
    if mode not in MODES:
        raise ValueError(f"advantage weighting {mode!r}: expected one of {MODES}")
    if not 0 < q <= 1:
        raise ValueError(f"q {q}: expected a share in (0, 1]")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha {alpha}: expected a value in [0, 1]")
    mask = mask.bool()
    base = advantages.float()[:, None].expand(mask.shape) * mask
    if mode == "none":
        return base
    if mode == "lowprob":
        if tokens is None:
            raise ValueError("advantage weighting 'lowprob' needs the sampled tokens")
        if not c >= 0:
            raise ValueError(f"c {c}: expected a value >= 0")
        probs = torch.softmax(logits_policy.detach().float(), dim=-1).gather(-1, tokens[..., None].long())[..., 0]
        return base * (1 + c * (1 - probs))
    b, t, v = logits_policy.shape
    stats = token_stats(logits_policy.reshape(b * t, v).detach(), logits_ref.reshape(b * t, v).detach())
    d = stats["kl_base_rl" if mode == "kl" else "js"].reshape(b, t)  # base = the policy here
    d = torch.where(mask, d, torch.zeros_like(d))  # not d * mask: an infinite KL times 0 is NaN
    n = mask.sum(-1, keepdim=True).clamp(min=1)
    mean = d.sum(-1, keepdim=True) / n
    moved = mean > 0
    if mode == "topq":
        # in float64: float32 makes 0.6 * 25 15.0000006, whose ceiling keeps a 16th position
        k = torch.clamp(torch.ceil(q * n.double() - 1e-9), min=1).to(n.dtype)
        # rank of each position by divergence within its response (masked positions last)
        order = torch.where(mask, d, torch.full_like(d, -math.inf)).argsort(-1, descending=True).argsort(-1)
        weight = torch.where(order < k, n / k, torch.zeros_like(d))
    else:
        ratio = d / torch.where(moved, mean, torch.ones_like(mean))
        # KL is +inf where the reference gives a sampled token probability 0; d_t / mean d then
        # tends to n / (number of infinite positions) at those positions and 0 elsewhere
        infinite = torch.isinf(d)
        n_inf = infinite.sum(-1, keepdim=True)
        ratio = torch.where(n_inf > 0, infinite * n / n_inf.clamp(min=1), ratio)
        weight = ratio if mode in ("js", "kl") else alpha + (1 - alpha) * ratio
    weight = torch.where(moved, weight, torch.ones_like(weight))
    return base * weight
