"""Lockstep decoding: two models decode together and trade token choices where a ``SwitchRule``
(``tokenshift.crosssample``) says; one model alone is the same decoder without the other
(``decode_alone``, what rollouts draw with).

Both models keep their own KV cache; every chosen token is appended to both, so at every step
both next-token distributions over the shared vocabulary are at hand. Each step computes, per
row, the exact full-vocabulary Jensen-Shannon divergence between them (nats), the generating
model's entropy, and whether their argmaxes differ (``step_statistics``); the rule's policy
turns one of these into the statistic it switches on.

Tokens are drawn by inverse CDF from one uniform per (row, step) shared by whichever model is
sampled, from the row's own seed (its problem and sample index), so runs that differ only in
policy or budget share their randomness (budget 0 gives the same responses under every policy,
and a forward budget-0 row is the base model's rollout of that sample: ``decode_alone``), and
differences between them are not sampling noise. Rows that finish (EOS or the length limit)
are dropped from both caches as they accumulate, so they stop costing compute.

The length limit is ``max_new_tokens`` for the whole response, or under the authors' rule
(``SwitchRule.length`` ``after_switch``) ``max_new_tokens`` after a row's last switch, as
regenerating after each switch gives, up to an absolute ``max_total`` tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import torch

from tokenshift.crosssample import SwitchRule
from tokenshift.divergence import entropies_and_js, kl_divergence, rank_of
from tokenshift.generation import Sample, SamplingConfig, pad_rows, preallocated_cache, row_noise, sample_seed
from tokenshift.loading import plain_lm_head, transformer_body
from tokenshift.memory import halving_on_oom, is_oom
from tokenshift.registry import POLICIES, TOPK_STATISTICS

COMPACT_FRACTION = 0.125
"""Drop finished rows from the caches once they are this share of the rows still decoded."""


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """One token per row by inverse CDF with the given uniforms ``u`` (``[N]`` in [0, 1)).

    Temperature 0 is greedy; ``top_p`` < 1 keeps the smallest set of most probable tokens whose
    mass reaches ``top_p`` (the most probable token always stays), as ``generate`` does.
    """
    if sampling.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(-1)
        sorted_p = sorted_p.masked_fill(cum - sorted_p >= sampling.top_p, 0.0)
        return order.gather(-1, _invert_cdf(sorted_p, u)[:, None])[:, 0]
    return _invert_cdf(probs, u)


def _invert_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    # right-sided search: the first index whose CDF exceeds u * total, never a zero-probability token
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)
    return idx.clamp(max=cdf.shape[-1] - 1)[:, 0]


def step_statistics(
    logits_gen: torch.Tensor,
    logits_other: torch.Tensor,
    topk: int | None = None,
    tokens: torch.Tensor | None = None,
    kl: bool = False,
) -> dict[str, torch.Tensor]:
    """Per row, what a policy reads (``Policy.statistic``; the decoder adds its ``uniform`` draw):
    JS between the two models (temperature 1), each one's entropy (``entropy``: the generator's,
    ``entropy_other``), and whether their argmaxes differ. With ``kl``, KL(generator || other) and
    KL(other || generator); with ``tokens`` (the generator's draw y), ``logprob`` = log p_gen(y) -
    log p_other(y) and ``rank`` = y's 0-based rank under the other model minus under the generator.
    The divergences and ranks are those of the divergence tables (``tokenshift.divergence``).

    ``topk``: JS and entropies of each model's K most probable tokens, renormalised (what vLLM's
    top-K log-probs give, as in the authors' scripts), instead of the full vocabulary's.
    """
    logp = torch.log_softmax(logits_gen.float(), dim=-1)
    logq = torch.log_softmax(logits_other.float(), dim=-1)
    p, q = logp.exp(), logq.exp()
    out = {"argmax": (logits_gen.argmax(-1) != logits_other.argmax(-1)).float()}
    if kl:
        out |= {"kl": kl_divergence(p, logp, logq), "kl_r": kl_divergence(q, logq, logp)}
    if tokens is not None:
        at = tokens[:, None]
        out["logprob"] = (logp.gather(-1, at) - logq.gather(-1, at))[:, 0]
        out["rank"] = (rank_of(logits_other.float(), tokens) - rank_of(logits_gen.float(), tokens)).float()
    if topk is not None:
        p, q = _top_renormalised(p, topk), _top_renormalised(q, topk)
    ent_gen, ent_other, js = entropies_and_js(p, q)
    return out | {"js": js, "entropy": ent_gen, "entropy_other": ent_other}


def _top_renormalised(probs: torch.Tensor, k: int) -> torch.Tensor:
    top, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return torch.zeros_like(probs).scatter_(-1, idx, top / top.sum(-1, keepdim=True))


def _forward(model, ids, attn, positions, cache, vocab_size):
    if not plain_lm_head(model):  # softcapped or scaled logits: only the full forward knows how
        out = model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :vocab_size], out.past_key_values
    # the transformer body, then the LM head on the last position only, as scoring does: the
    # CausalLM wrapper's bookkeeping is a sizeable share of a small model's step
    out = transformer_body(model)(
        input_ids=ids, attention_mask=attn, position_ids=positions, past_key_values=cache, use_cache=True
    )
    logits = model.get_output_embeddings()(out.last_hidden_state[:, -1])
    return logits[:, :vocab_size], out.past_key_values


@torch.no_grad()
def cross_sample(
    base: torch.nn.Module,
    rl: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    eos_id: int | Sequence[int] | None,
    pad_id: int,
    vocab_size: int,
    rule: SwitchRule,
    sampling: SamplingConfig,
    seeds: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> list[Sample]:
    """One cross-sample per prompt, in prompt order (repeat a prompt to draw several).

    Each ``Sample`` carries ``extra``: ``n_switched``, ``switched_positions`` (0-based positions
    in the response; a switch that drew EOS is at ``len(response_ids)``), ``switched_js`` (the JS
    at each), ``step_js`` (the JS at every response position, for plots), ``n_forced`` (the
    switches ``rule.force`` made), ``n_removed`` (injected EOS draws removed, ``rule.eos`` remove)
    and ``row_threshold``. ``eos_id`` may be several stop ids;
    ``None`` decodes to the length limit (benchmarks). Each row draws its noise from its own seed
    (``seeds``; the stage's are ``generation.sample_seed`` of its problem and sample index; without
    them, ``sample_seed(seed, "", i)`` of its index), so a row's draw depends on nothing else in
    its batch, shard or job.
    """
    _check_prompts(prompts)
    gen, other = (base, rl) if rule.direction == "forward" else (rl, base)
    models = (gen, other)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    kw = {"eos_id": eos_id, "pad_id": pad_id, "vocab_size": vocab_size, "sampling": sampling}
    seeds = list(seeds) if seeds is not None else [sample_seed(seed, "", i) for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    starts = range(0, len(prompts), batch_size)
    batches = [prompts[start : start + batch_size] for start in starts]
    # torch.rand's stream from one seed is the same whatever its length: a longer cap draws the same
    # uniforms at the steps a shorter one has (tests/test_crosssample.py checks it)
    steps = rule.decode_steps(sampling.max_new_tokens)
    noise = [row_noise(seeds[start : start + batch_size], steps) for start in starts]
    out: list[Sample] = []
    try:
        if rule.threshold is None and rule.budget != 0:
            thresholds = _row_thresholds(gen, other, batches, noise, rule, kw)
        else:
            fixed = math.nan if rule.threshold is None else rule.threshold  # nan: budget 0 never switches
            thresholds = [torch.full((len(chunk),), fixed) for chunk in batches]
        for chunk, (u, r), threshold in zip(batches, noise, thresholds):
            rows = list(range(len(chunk)))
            forced: list[list[int]] = [[] for _ in rows]
            done: dict[int, Sample] = {}
            while rows:
                picked = ([chunk[i] for i in rows], u[rows], r[rows], [forced[i] for i in rows], threshold[rows])
                decode = functools.partial(_decode_in_pieces, gen, other, *picked, rule=rule, **kw)
                # out of memory: smaller pieces, and the job's later batches start at the size that worked
                decoded = halving_on_oom(decode, len(rows), is_oom=is_oom, remember="decode")
                again = []
                for i, (sample, stat) in zip(rows, decoded):
                    done[i] = sample
                    where = _forced_position(sample, stat, rule) if rule.force else None
                    if where is not None:
                        forced[i] = [*forced[i], where]
                        again.append(i)
                rows = again
            out += [done[i] for i in range(len(chunk))]
    finally:
        for m, t in zip(models, was_training):
            m.train(t)
    return out


def _row_thresholds(gen, other, batches, noise, rule: SwitchRule, kw) -> list[torch.Tensor]:
    """Each row's threshold at level ``prompt`` or ``response``: the rule's percentile of the policy's
    statistic over the generator's own responses on the same noise (the budget-0 twins), those to
    the row's prompt or the row's own, as the authors take it over their base model's first samples."""
    import numpy as np

    twin = dataclasses.replace(rule, budget=0, force=False)
    traces = []
    for chunk, (u, r) in zip(batches, noise):
        n = len(chunk)
        decoded = halving_on_oom(
            functools.partial(_decode_in_pieces, gen, other, chunk, u, r, [[]] * n, torch.zeros(n), rule=twin, **kw),
            n,
            is_oom=is_oom,
            remember="decode",
        )
        traces += [stat.numpy() for _, stat in decoded]
    if rule.level == "prompt":
        pooled: dict[tuple, list] = {}
        for prompt, trace in zip((tuple(p) for chunk in batches for p in chunk), traces):
            pooled.setdefault(prompt, []).append(trace)
        per_prompt = {k: np.concatenate(v) for k, v in pooled.items()}
        pools = [per_prompt[tuple(p)] for chunk in batches for p in chunk]
    else:
        pools = traces
    values = [float(np.percentile(pool, rule.percentile)) if len(pool) else math.inf for pool in pools]
    flat = torch.tensor(values)
    return list(flat.split([len(chunk) for chunk in batches]))


def _decode_in_pieces(
    gen, other, prompts, u, r, forced, thresholds, size: int, **kw
) -> list[tuple[Sample, torch.Tensor]]:
    """``_decode_batch`` over pieces of ``size`` rows; each row keeps its own noise, so the pieces'
    size does not change what a row draws."""
    return [
        decoded
        for k in range(0, len(prompts), size)
        for decoded in _decode_batch(
            gen,
            other,
            prompts[k : k + size],
            uniforms=(u[k : k + size], r[k : k + size]),
            forced=forced[k : k + size],
            thresholds=thresholds[k : k + size],
            **kw,
        )
    ]


@torch.no_grad()
def decode_alone(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    seeds: Sequence[int],
    eos_id: int | Sequence[int] | None,
    pad_id: int,
    vocab_size: int,
    sampling: SamplingConfig,
    batch_size: int = 64,
) -> list[Sample]:
    """One model's samples, one per prompt, each row on its own noise (``seeds``): the lockstep
    decoder with no second model, so a rollout and the forward budget-0 cross-sample of the same
    (problem, sample) draw the same tokens. Tokens are drawn from the first ``vocab_size`` logits."""
    _check_prompts(prompts)
    was_training = model.training
    model.eval()
    kw = {"eos_id": eos_id, "pad_id": pad_id, "vocab_size": vocab_size, "sampling": sampling}
    alone = SwitchRule(budget=0)
    out: list[Sample] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            u, r = row_noise(seeds[start : start + batch_size], sampling.max_new_tokens)
            n = len(chunk)
            decode = functools.partial(
                _decode_in_pieces, model, None, chunk, u, r, [[]] * n, torch.full((n,), math.nan), rule=alone, **kw
            )
            out += [sample for sample, _ in halving_on_oom(decode, n, is_oom=is_oom, remember="decode")]
    finally:
        model.train(was_training)
    return out


def _check_prompts(prompts: Sequence[Sequence[int]]) -> None:
    # a fully padded row attends to nothing: it would decode from garbage, or crash alone
    empty = next((i for i, p in enumerate(prompts) if len(p) == 0), None)
    if empty is not None:
        raise ValueError(f"prompt {empty} is empty: a response needs at least one prompt token to follow")


def _forced_position(sample: Sample, stat: torch.Tensor, rule: SwitchRule) -> int | None:
    """Where the authors' rule forces a switch in a decoded row, or None.

    While budget is left, no position after the last switch passed the threshold (one that had
    would have switched): the highest-statistic position of that stretch (EOS included) is
    switched. Without a budget there is no count of switches to reach, so nothing is forced.
    """
    if rule.budget is None or sample.extra["n_switched"] + sample.extra["n_removed"] >= rule.budget:
        return None
    switched = sample.extra["switched_positions"]
    first = switched[-1] + 1 if switched else 0
    end = len(sample.response_ids) + (sample.finish_reason == "stop")
    if first >= end:
        return None
    return first + int(stat[first:end].argmax())


REMOVE_RETRIES = 8
"""``eos: remove`` without a budget: the most draws one position makes before the generator's own
token stands (with a budget, the budget bounds them)."""


def injected_logits(lo: torch.Tensor, lg: torch.Tensor, *, rule: SwitchRule) -> torch.Tensor:
    """What a switch draws from, given the other model's and the generator's logits (rows that switch)."""
    if rule.injection == "sample" or rule.gamma == 0:
        return lo
    lq, lp = torch.log_softmax(lo.float(), dim=-1), torch.log_softmax(lg.float(), dim=-1)
    # a token the generator rules out (-inf) stays reachable only through the other model's own mass
    return (1 + rule.gamma) * lq - rule.gamma * torch.where(torch.isfinite(lp), lp, torch.zeros_like(lp))


def _remove_injected_eos(tok, own, switch, used, budget, lo, lg, u, rows, removed, stop_ids, kw) -> torch.Tensor:
    """The authors' ``eot_replace remove``: an injected EOS is deleted, its draw spent, and the
    generator goes on from the same prefix, where (same prefix, same statistic) the position is
    picked again and the other model draws again, on fresh noise, while the budget lasts; when it
    runs out the generator's own draw stands. ``tok``, ``used`` and ``removed`` are updated in place;
    returns where a token was injected."""
    switch = switch.clone()
    again = switch & torch.isin(tok, stop_ids)
    k = 0
    while again.any():
        k += 1
        removed[rows[again]] += 1
        retry = again & (used < budget) & (k <= REMOVE_RETRIES if math.isinf(budget) else True)
        given_up = again & ~retry
        tok[given_up], switch[given_up] = own[given_up], False
        if not retry.any():
            break
        used += retry.float()
        idx = retry.nonzero()[:, 0]
        # fresh noise per (row, step, retry), from the row's own uniform: a row's draws depend on nothing else
        fresh = torch.tensor(
            [
                torch.rand(1, generator=torch.Generator().manual_seed((int(u[i] * 2**52) * 8191 + k) % 2**63)).item()
                for i in idx
            ],
            device=u.device,
        )
        tok[idx] = sample_from_logits(kw["injected"](lo[idx], lg[idx]), fresh, kw["sampling"])
        again = retry & torch.isin(tok, stop_ids)
    return switch


def _decode_batch(
    gen,
    other,
    prompts,
    *,
    eos_id,
    pad_id,
    vocab_size,
    rule: SwitchRule,
    sampling: SamplingConfig,
    uniforms: tuple[torch.Tensor, torch.Tensor],
    forced: Sequence[Sequence[int]],
    thresholds: torch.Tensor,
) -> list[tuple[Sample, torch.Tensor]]:
    """Decode a batch; each row with its policy statistic at every step (for a forced switch).
    Without ``other`` (``decode_alone``), the generator decodes on its own and nothing switches."""
    # bookkeeping lives on the generator's device; the other model's logits are moved there
    dev = next(gen.parameters()).device
    dev_o = next(other.parameters()).device if other is not None else dev
    max_new = sampling.max_new_tokens
    total = rule.decode_steps(max_new)  # columns a row may need; each row's own cap is ``cap``
    statistic = POLICIES[rule.policy].statistic
    ids, mask = pad_rows(prompts, pad_id)
    ids, mask = ids.to(dev), mask.to(dev)
    n, width = ids.shape
    attn = torch.zeros((n, width + total), dtype=torch.long, device=dev)
    attn[:, :width] = mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    u_all, r_all = (x.to(dev) for x in uniforms)
    threshold = thresholds.to(dev, torch.float32)
    force = torch.zeros((n, total), dtype=torch.bool, device=dev)
    for i, where in enumerate(forced):
        force[i, list(where)] = True
    budget = math.inf if rule.budget is None else rule.budget
    stops = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id)
    stop_ids = torch.tensor(stops, dtype=torch.long, device=dev)
    drop_eos = rule.eos == "drop" and bool(stops)
    remove_eos = rule.eos == "remove" and bool(stops)
    topk_selects = rule.topk is not None and statistic in TOPK_STATISTICS
    of_token = statistic in ("logprob", "rank")  # read at the generator's own draw
    injected = functools.partial(injected_logits, rule=rule)
    kw_remove = {"sampling": sampling, "injected": injected}

    logits_g, cache_g = _forward(gen, ids, mask, positions, preallocated_cache(gen, width + total), vocab_size)
    logits_o, cache_o = (
        _forward(
            other,
            ids.to(dev_o),
            mask.to(dev_o),
            positions.to(dev_o),
            preallocated_cache(other, width + total),
            vocab_size,
        )
        if other is not None
        else (None, None)
    )
    next_pos = positions[:, -1] + 1

    rows = torch.arange(n, device=dev)  # original index of each row still in the caches
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    used = torch.zeros(n, device=dev)
    tokens = torch.full((n, total), -1, dtype=torch.long, device=dev)
    switched = torch.zeros((n, total), dtype=torch.bool, device=dev)
    js_all = torch.zeros((n, total), device=dev)
    stat_all = torch.zeros((n, total), device=dev)
    removed = torch.zeros(n, dtype=torch.long, device=dev)  # injected EOS draws removed, per original row
    length = torch.full((n,), total, dtype=torch.long, device=dev)
    stopped = torch.zeros(n, dtype=torch.bool, device=dev)
    cap = torch.full((n,), max_new, dtype=torch.long, device=dev)  # each row's length limit, per original row
    after_switch = rule.length == "after_switch"

    for t in range(total):
        # one uniform per original row and step, whatever rows were dropped: runs stay coupled
        u, r = u_all[rows, t], r_all[rows, t]
        lg = logits_g.float()
        live = ~done
        if other is None:  # alone: no statistics between two models, no switch
            zeros = torch.zeros(len(rows), device=dev)
            stats, chosen, switch = {"js": zeros}, zeros, torch.zeros_like(live)
            tok = sample_from_logits(lg, u, sampling)
        else:
            lo = logits_o.to(dev, torch.float32)
            own = sample_from_logits(lg, u, sampling)  # the generator's draw, which stands unless switched
            stats = step_statistics(lg, lo, tokens=own if of_token else None, kl=statistic in ("kl", "kl_r"))
            stats["uniform"] = r
            chosen = step_statistics(lg, lo, rule.topk)[statistic] if topk_selects else stats[statistic]
            switch = ((chosen > threshold[rows]) | force[rows, t]) & (used < budget) & live
            tok = own.clone()
            if switch.any():  # the other model draws on the same uniform
                lo_s = injected(lo[switch], lg[switch])
                if drop_eos:
                    lo_s[:, stop_ids] = -math.inf
                tok[switch] = sample_from_logits(lo_s, u[switch], sampling)
        spent = switch.clone()  # budget spent at this step: the authors regenerate after each
        used += switch.float()
        if remove_eos and switch.any():
            switch = _remove_injected_eos(tok, own, switch, used, budget, lo, lg, u, rows, removed, stop_ids, kw_remove)
        if after_switch:  # the authors regenerate max_new tokens from each switch: the cap moves past it
            cap[rows[spent]] = min(t + 1 + max_new, total)
        tokens[rows[live], t] = tok[live]
        switched[rows, t] = switch
        js_all[rows, t] = stats["js"]
        stat_all[rows, t] = chosen
        if stops:
            ended = live & torch.isin(tok, stop_ids)
            length[rows[ended]] = t
            stopped[rows[ended]] = True
            done |= ended
        capped = ~done & (t + 1 >= cap[rows])  # the row's length limit reached
        length[rows[capped]] = t + 1
        done |= capped
        n_done = int(done.sum())
        if t == total - 1 or n_done == len(rows):
            break
        if n_done >= max(1, math.ceil(COMPACT_FRACTION * len(rows))):
            keep = (~done).nonzero()[:, 0]
            cache_g.batch_select_indices(keep)
            if cache_o is not None:
                cache_o.batch_select_indices(keep.to(dev_o))
            rows, tok, used, attn, next_pos, done = (
                rows[keep],
                tok[keep],
                used[keep],
                attn[keep],
                next_pos[keep],
                done[keep],
            )
        attn[:, width + t] = 1
        step_attn, step_ids, step_pos = attn[:, : width + t + 1], tok[:, None], next_pos[:, None]
        logits_g, cache_g = _forward(gen, step_ids, step_attn, step_pos, cache_g, vocab_size)
        if other is not None:
            logits_o, cache_o = _forward(
                other, step_ids.to(dev_o), step_attn.to(dev_o), step_pos.to(dev_o), cache_o, vocab_size
            )
        next_pos = next_pos + 1

    result = []
    tokens, switched, js_all, stat_all, length, stopped, force = (
        x.cpu() for x in (tokens, switched, js_all, stat_all, length, stopped, force)
    )
    for i in range(n):
        k = int(length[i])
        # a switch that drew EOS counts: its position is len(response)
        sw = switched[i, : k + 1 if stopped[i] else k].nonzero()[:, 0]
        sample = Sample(
            tokens[i, :k].tolist(),
            "stop" if stopped[i] else "length",
            extra={
                "n_switched": len(sw),
                "switched_positions": sw.tolist(),
                "switched_js": js_all[i, sw].tolist(),
                "step_js": js_all[i, :k].tolist(),
                "n_forced": int(force[i, sw].sum()),
                "n_removed": int(removed[i]),
                "row_threshold": float(thresholds[i]),
                "budget_responses": None,  # one decode follows one budget: none recorded (regenerate's are)
            },
        )
        result.append((sample, stat_all[i, : k + 1 if stopped[i] else k]))
    return result
