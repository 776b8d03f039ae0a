"""Per-position statistics comparing two next-token distributions over the full vocabulary.

``token_stats(logits_base, logits_rl)`` takes two ``[N, V]`` logit tensors and returns ``[N]``
tensors, all in natural-log units (nats), computed in float32 whatever the input dtype:

- ``js``: Jensen-Shannon divergence, 0.5 KL(p || m) + 0.5 KL(q || m) with m = (p + q) / 2,
  in [0, ln 2]; the paper's main measure;
- ``kl_base_rl`` = KL(base || rl) and ``kl_rl_base`` = KL(rl || base);
- ``entropy_base``, ``entropy_rl``;
- ``topk_overlap``: |top-k(base) ∩ top-k(rl)| / k;
- ``rl_top1_rank_in_base``: 0-based rank of the RL model's argmax under the base distribution
  (0 = the base model's own argmax), and ``base_top1_rank_in_rl`` the other way round;
- ``p_base_of_rl_top1`` and ``p_rl_of_rl_top1``: both models' probability of the RL argmax;
- with ``candidates`` = c > 0, each model's c most probable tokens at the position, most probable
  first: ``top_ids_base`` and ``top_probs_base`` (``[N, c]``), ``top_ids_rl`` and ``top_probs_rl``.

``keep_top(logits, k)`` keeps each row's k largest logits (the others -inf): the statistics of
those are the ones of each model's k most probable tokens, renormalised (``scoring.statistic:
topk:K``, what K log-probs per position give, as vLLM returns them).

Numerically safe: terms with zero probability contribute 0 (0 log 0 = 0), ``-inf`` logits
are zero probability, identical rows give exactly 0 for JS and both KLs. KL is +inf where
one model puts mass on a token the other gives probability exactly 0 (as it must be).
Rows whose logits contain NaN or +inf, or are ``-inf`` everywhere, raise ``ValueError``: a broken
checkpoint must not yield numbers.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def _xlogy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.special.xlogy(x, y)


def token_stats(
    logits_base: torch.Tensor, logits_rl: torch.Tensor, *, top_k: int = 5, candidates: int = 0
) -> dict[str, torch.Tensor]:
    """Compare two ``[N, V]`` next-token logit tensors row by row (see the module docstring)."""
    if logits_base.shape != logits_rl.shape or logits_base.dim() != 2:
        raise ValueError(
            f"expected two [N, V] tensors of one shape, got {tuple(logits_base.shape)} and {tuple(logits_rl.shape)}"
        )
    # one pass per tensor: a row's max is NaN where it holds a NaN (amax propagates it), +inf where
    # it holds a +inf and -inf where nothing is finite; the last two have no softmax
    tops = {role: x.amax(-1) for role, x in (("base", logits_base), ("rl", logits_rl))}
    if any(torch.isnan(top).any() for top in tops.values()):
        raise ValueError("NaN in logits: the checkpoint or its inputs are broken")
    for role, top in tops.items():
        bad = (~torch.isfinite(top)).nonzero()
        if len(bad):
            raise ValueError(f"{role} logits: row {int(bad[0])} has a +inf logit or none finite: no distribution")
    return token_stats_unchecked(logits_base, logits_rl, top_k=top_k, candidates=candidates)


_compiled = None


def token_stats_compiled(
    logits_base: torch.Tensor,
    logits_rl: torch.Tensor,
    *,
    top_k: int = 5,
    targets: torch.Tensor | None = None,
    candidates: int = 0,
) -> dict[str, torch.Tensor]:
    """``token_stats_unchecked`` through ``torch.compile``: on a GPU its dozen passes over the
    vocabulary fuse into a few kernels, with fewer ``[N, V]`` temporaries. No input checks."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(token_stats_unchecked, dynamic=True)
    return _compiled(logits_base, logits_rl, top_k=top_k, targets=targets, candidates=candidates)


def token_stats_unchecked(
    logits_base: torch.Tensor,
    logits_rl: torch.Tensor,
    *,
    top_k: int = 5,
    targets: torch.Tensor | None = None,
    candidates: int = 0,
) -> dict[str, torch.Tensor]:
    """``token_stats`` without the shape and NaN checks (data-dependent branches that would
    break a compiled graph); callers check NaN themselves. With ``targets`` (``[N]`` token ids)
    it also returns both models' log-probabilities of them, ``logp_base`` and ``logp_rl``, from
    the log-softmax it computes anyway; with ``candidates`` > 0, each model's most probable tokens."""
    a = logits_base.float()
    b = logits_rl.float()
    logp = torch.log_softmax(a, dim=-1)
    logq = torch.log_softmax(b, dim=-1)
    p = logp.exp()
    q = logq.exp()
    # -inf logits give logp = -inf and p = 0; xlogy keeps 0 * log 0 = 0.
    ent_p, ent_q, js = entropies_and_js(p, q)
    kl_pq = kl_divergence(p, logp, logq)
    kl_qp = kl_divergence(q, logq, logp)

    k = min(top_k, a.shape[-1])
    top_p = torch.topk(a, k, dim=-1).indices
    top_q = torch.topk(b, k, dim=-1).indices
    overlap = (top_p.unsqueeze(-1) == top_q.unsqueeze(-2)).any(-1).sum(-1).float() / k
    q_top1 = top_q[:, 0]
    p_top1 = top_p[:, 0]
    rows = torch.arange(a.shape[0], device=a.device)
    extra = {}
    if targets is not None:
        extra = {
            "logp_base": logp.gather(-1, targets[:, None])[:, 0],
            "logp_rl": logq.gather(-1, targets[:, None])[:, 0],
        }
    if candidates > 0:
        c = min(candidates, a.shape[-1])
        for role, probs in (("base", p), ("rl", q)):
            top = torch.topk(probs, c, dim=-1)
            extra[f"top_ids_{role}"] = top.indices.int()
            extra[f"top_probs_{role}"] = top.values
    return {
        **extra,
        "js": js,
        "kl_base_rl": kl_pq,
        "kl_rl_base": kl_qp,
        "entropy_base": ent_p,
        "entropy_rl": ent_q,
        "topk_overlap": overlap,
        "rl_top1_rank_in_base": rank_of(a, q_top1),
        "base_top1_rank_in_rl": rank_of(b, p_top1),
        "p_base_of_rl_top1": p[rows, q_top1],
        "p_rl_of_rl_top1": q[rows, q_top1],
    }


def keep_top(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``logits`` with -inf outside each row's ``k`` largest: its softmax is the row's top-k distribution,
    renormalised (an exact tie at the k-th place is broken as ``torch.topk`` breaks it)."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1)
    return torch.full_like(logits, -math.inf).scatter_(-1, top.indices, top.values)


def entropies_and_js(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entropy of each of two ``[N, V]`` probability tensors and their JS divergence, in nats."""
    plogp = _xlogy(p, p)
    qlogq = _xlogy(q, q)
    m = 0.5 * (p + q)
    # KL(p||m) = sum p (log p - log m); written with xlogy so p = 0 terms vanish exactly
    kl_pm = (plogp - _xlogy(p, m)).sum(-1)
    kl_qm = (qlogq - _xlogy(q, m)).sum(-1)
    return -plogp.sum(-1), -qlogq.sum(-1), (0.5 * (kl_pm + kl_qm)).clamp(0.0, LN2)


def kl_divergence(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row of ``[N, V]`` probabilities and log-probabilities, in nats."""
    # p * (log p - log q) with 0 where p = 0 (even if q = 0 too) and +inf where only q = 0
    diff = torch.where(p > 0, logp - logq, torch.zeros_like(logp))
    kl = (p * diff).sum(-1)
    identical = (logp == logq).all(-1)
    return torch.where(identical, torch.zeros_like(kl), kl.clamp(min=0.0))


def rank_of(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``token`` per row: how many tokens have strictly larger logits."""
    chosen = logits.gather(-1, token[:, None])
    return (logits > chosen).sum(-1)
