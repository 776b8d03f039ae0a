"""Cross-sampling by regeneration on vLLM: the authors' protocol, ``crosssample.engine: regenerate``.

Where ``tokenshift.crosssample`` decodes both models in lockstep (both next-token distributions
at every step), this engine works as the authors' resampling scripts do (GitHub Hesse73/resample,
``simple_rl_resample.py`` and ``diff_rl_resample.py``: "regenerate after each switch"), on two vLLM
engines in one process that share the job's devices, as theirs do (``tokenshift.vllm_engine``):

1. the generating model writes a continuation of each open row's prefix (prompt + response so
   far), with the log-probs of its ``logprobs`` most probable tokens at each step;
2. the other model reads prefix + continuation teacher-forced (``prompt_logprobs``, the same K;
   their ``diff_rl_resample.py`` reads the sampled tokens' log-probs and ranks so), so both
   distributions are known at every step of the continuation;
3. the switch position is the first whose policy statistic passes the row's threshold while its
   budget lasts, or, under the forced switch, the continuation's highest-statistic position (their
   rule where nothing passes); the other model draws one token there (a one-token request on the
   prefix, which prefix caching makes cheap), and the row's prefix becomes prefix + continuation
   up to there + that token. A row with no switch keeps its continuation and ends.

Rounds repeat over the rows still open, batched, up to the budget. The rules are the lockstep
decoder's (``SwitchRule``), so that at temperature 0 the two engines write the same responses and
switch positions (tests/test_vllm.py), and the stage writes the same table:

- a threshold per prompt or response (``level``) is the rule's percentile of the statistic over the
  first round's continuations, which are the rows' budget-0 twins (the authors take theirs from
  their first round's samples);
- an injected EOS ends the response (``eos: end``), or is deleted (``remove``, their
  ``eot_replace remove``), the draw spent, and the next round writes on from the same prefix, as
  theirs does, while the budget lasts; when it is spent (or, with no budget, after
  ``decoding.REMOVE_RETRIES`` more draws at one position), the generator's own token stands;
- ``max_new_tokens`` caps the whole response, or (``after_switch``: they regenerate
  ``max_new_tokens`` tokens after each switch) a row's cap is its last switch's position + 1 +
  ``max_new_tokens``, at most ``max_total``;
- ``random`` draws its uniforms per (row, round) from the row's own seed.

Statistics: with ``logprobs`` the vocabulary size (``statistic: exact``) they are exact. With K
(``topk:K``; theirs is top-50) js, entropy and entropy_other are those of each model's K most
probable tokens, renormalised (``SwitchRule.topk``), and so is the recorded ``step_js``; the argmax
and the sampled token's log-prob difference stay exact (vLLM returns the sampled or read token's
log-prob whatever K); rank, kl and kl_r need the whole distributions and are refused under K.
``registry.regenerate_refuses`` names what this engine does not implement: those, ``injected_eos:
drop`` and ``injection: extrapolate``.

Where it differs from their scripts: each request draws on a seed of its own (from the row's seed,
the round and the model), where every request of theirs carries one seed; the budget counts
switches and removed draws, as lockstep's does (theirs counts rounds, each of which switches once
under the forced rule, so with ``force_switch`` the two agree); a continuation is written whole,
as theirs. Stopping it at the switch would save decoding but lose what follows, which is kept:
prefix + whole continuation is the response a run at the budget spent so far would give (the same
seeds per round, the same thresholds from the first round), so every row carries those
responses (``Sample.extra["budget_responses"]``, graded by the stage into ``correct_by_budget``) and
one run at budget B gives the accuracy at every budget 0 .. B, as the authors record theirs after
every step. The draws are vLLM's, not the lockstep decoder's inverse-CDF noise, so only greedy
decoding (temperature 0) can be compared with ``lockstep`` token for token.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tokenshift.crosssample import SwitchRule
from tokenshift.decoding import REMOVE_RETRIES, step_statistics
from tokenshift.generation import Sample, SamplingConfig, check_context, sample_seed
from tokenshift.registry import POLICIES, regenerate_refuses
from tokenshift.settings import CrossSampleConfig, RolloutConfig


def check_rule(rule: SwitchRule) -> None:
    """Refuse what the regenerate engine does not implement, naming the ``crosssample`` key."""
    refused = regenerate_refuses(rule.policy, rule.eos, rule.injection, rule.topk)
    if refused:
        key, why = refused
        raise ValueError(f"crosssample.{key}: {why}; use engine lockstep")


@dataclass
class _Row:
    prompt: list[int]
    seed: int
    cap: int
    """The longest this row's response may run (tokens, EOS excluded)."""
    threshold: float = math.nan
    response: list[int] = field(default_factory=list)
    switched: list[int] = field(default_factory=list)
    switched_js: list[float] = field(default_factory=list)
    step_js: list[float] = field(default_factory=list)
    n_forced: int = 0
    n_removed: int = 0
    removed_at: int = -1
    """The response length (position) at which the last run of removed draws happened, and how many."""
    removed_here: int = 0
    finish: str | None = None
    by_budget: list[list[int]] = field(default_factory=list)
    """The response a run at budget k would have given, for k = 0 .. (switches and removals spent) - 1:
    the prefix at the start of the round that spent the (k + 1)-th, with that round's whole continuation."""

    @property
    def spent(self) -> int:
        return len(self.switched) + self.n_removed


def dense_logprobs(flat, first: int, count: int, vocab_size: int) -> torch.Tensor:
    """Positions ``first`` .. ``first + count`` of vLLM's ``FlatLogprobs`` as a ``[count, vocab_size]``
    tensor of log-probs, -inf where none is given (beyond the top K)."""
    out = torch.full((count, vocab_size), -math.inf)
    if count == 0:
        return out
    starts = torch.tensor(flat.start_indices[first : first + count])
    ends = torch.tensor(flat.end_indices[first : first + count])
    lo, hi = int(starts[0]), int(ends[-1])
    ids = torch.tensor(flat.token_ids[lo:hi], dtype=torch.long)
    values = torch.tensor(flat.logprobs[lo:hi], dtype=torch.float32)
    rows = torch.repeat_interleave(torch.arange(count), ends - starts)
    keep = ids < vocab_size  # embedding rows past the tokenizer's vocabulary are never drawn
    out[rows[keep], ids[keep]] = values[keep]
    return out


def _statistics(lg: torch.Tensor, lo: torch.Tensor, ids: list[int], rule: SwitchRule, seed: int):
    """(JS at each step, the policy's statistic at each step) of a continuation ``ids``, from the two
    models' log-probs ``lg`` (generator) and ``lo`` (other) at its steps."""
    statistic = POLICIES[rule.policy].statistic
    tokens = torch.tensor(ids, dtype=torch.long)
    stats = step_statistics(
        lg, lo, rule.topk, tokens=tokens if statistic == "rank" else None, kl=statistic in ("kl", "kl_r")
    )
    if statistic == "logprob":  # off vLLM's own log-probs of the drawn token: exact whatever K
        stats["logprob"] = (lg.gather(-1, tokens[:, None]) - lo.gather(-1, tokens[:, None]))[:, 0]
    elif statistic == "uniform":
        stats["uniform"] = torch.rand(len(ids), generator=torch.Generator().manual_seed(seed))
    return stats["js"], stats[statistic].float()


def _row_thresholds(rows: Sequence[_Row], traces: Sequence[torch.Tensor], rule: SwitchRule) -> list[float]:
    """Each row's threshold at level ``prompt`` or ``response``: the rule's percentile of the statistic
    over the first round's continuations (the budget-0 twins), of the row's prompt or its own, as
    ``crosssample``'s lockstep decoder takes it over its twins."""
    import numpy as np

    pools = [t.numpy() for t in traces]
    if rule.level == "prompt":
        pooled: dict[tuple, list] = {}
        for r, pool in zip(rows, pools):
            pooled.setdefault(tuple(r.prompt), []).append(pool)
        joined = {k: np.concatenate(v) for k, v in pooled.items()}
        pools = [joined[tuple(r.prompt)] for r in rows]
    return [float(np.percentile(pool, rule.percentile)) if len(pool) else math.inf for pool in pools]


def _switch_position(r: _Row, chosen: torch.Tensor, rule: SwitchRule, budget: float) -> tuple[int | None, bool]:
    """Where row ``r`` switches in a continuation of statistic ``chosen``, and whether it is forced."""
    if r.spent >= budget:
        return None, False
    passes = (chosen > r.threshold).nonzero()[:, 0]
    if len(passes):
        return int(passes[0]), False
    if rule.force and rule.budget is not None:  # the authors' rule: the highest-statistic position anyway
        return int(chosen.argmax()), True
    return None, False


def _inject(r: _Row, tok: int, own: int, js: float, forced: bool, *, rule, budget, stops, max_new, ceiling) -> None:
    """Row ``r`` after the other model drew ``tok`` at its next position (the generator's was ``own``)."""
    t = len(r.response)
    if rule.length == "after_switch":  # the authors regenerate max_new_tokens from each switch
        r.cap = min(t + 1 + max_new, ceiling)
    if tok in stops and rule.eos == "remove":
        r.removed_here = r.removed_here + 1 if r.removed_at == t else 1
        r.removed_at = t
        r.n_removed += 1
        # past the budget (or, with none, after REMOVE_RETRIES more draws here) the generator's own token stands
        if r.spent < budget and not (rule.budget is None and r.removed_here > REMOVE_RETRIES):
            return  # the next round writes on from the same prefix
        tok = own
    else:
        r.switched.append(t)
        r.switched_js.append(js)
        r.n_forced += forced
    if tok in stops:  # an injected EOS (end), or the generator's own standing: the response ends
        r.finish = "stop"
        return
    r.response.append(tok)
    r.step_js.append(js)
    if len(r.response) >= r.cap:
        r.finish = "length"


def regenerate(
    gen,
    other,
    prompts: Sequence[Sequence[int]],
    *,
    seeds: Sequence[int],
    stops: Sequence[int],
    vocab_size: int,
    rule: SwitchRule,
    sampling: SamplingConfig,
    logprobs: int,
) -> list[Sample]:
    """One cross-sample per prompt by regeneration (module docstring), with ``gen`` the generating
    model's ``vllm.LLM`` and ``other`` the injected one's (the rule's direction decides which is
    which: the caller passes them so). ``Sample.extra`` has the lockstep decoder's columns."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    check_rule(rule)
    budget = math.inf if rule.budget is None else rule.budget
    max_new = sampling.max_new_tokens
    ceiling = rule.decode_steps(max_new)
    stop_set = set(stops)
    rows = [_Row(list(p), s, cap=min(max_new, ceiling)) for p, s in zip(prompts, seeds)]
    for r in rows:
        r.threshold = math.nan if rule.threshold is None else rule.threshold  # nan: budget 0 switches nowhere
    top_p = sampling.top_p if sampling.temperature > 0 else 1.0
    # flat log-probs and no text: thousands of per-token Python objects per response otherwise dominate the time
    draw = {"temperature": sampling.temperature, "top_p": top_p, "detokenize": False, "flat_logprobs": True}
    read = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=logprobs, detokenize=False, flat_logprobs=True)
    inject = functools.partial(_inject, rule=rule, budget=budget, stops=stop_set, max_new=max_new, ceiling=ceiling)
    open_rows = list(range(len(rows)))
    for rnd in itertools.count():
        if not open_rows:
            break
        todo = [rows[i] for i in open_rows]
        conts = gen.generate(
            [TokensPrompt(prompt_token_ids=r.prompt + r.response) for r in todo],
            [
                SamplingParams(
                    **draw,
                    max_tokens=r.cap - len(r.response),
                    stop_token_ids=list(stops),
                    logprobs=logprobs,
                    seed=sample_seed(r.seed, "regenerate-generator", rnd),
                )
                for r in todo
            ],
            use_tqdm=False,
        )
        conts = [o.outputs[0] for o in conts]
        scored = other.generate(
            [TokensPrompt(prompt_token_ids=r.prompt + r.response + list(c.token_ids)) for r, c in zip(todo, conts)],
            read,
            use_tqdm=False,
        )
        traces = []
        for r, c, s in zip(todo, conts, scored):
            start, n = len(r.prompt) + len(r.response), len(c.token_ids)
            lg = dense_logprobs(c.logprobs, 0, n, vocab_size)
            lo = dense_logprobs(s.prompt_logprobs, start, n, vocab_size)
            traces.append(_statistics(lg, lo, list(c.token_ids), rule, sample_seed(r.seed, "regenerate-random", rnd)))
        if rnd == 0 and rule.threshold is None and rule.budget != 0:  # every row is open in the first round
            for r, threshold in zip(rows, _row_thresholds(rows, [chosen for _, chosen in traces], rule)):
                r.threshold = threshold
        switching = []  # (row index, the generator's token there, JS there, forced)
        for i, r, c, (js, chosen) in zip(open_rows, todo, conts, traces):
            ids, js = list(c.token_ids), js.tolist()
            t, forced = _switch_position(r, chosen, rule, budget)
            ended = bool(ids) and ids[-1] in stop_set
            if t is None:
                r.step_js += js[: len(ids) - ended]
                r.response += ids[:-1] if ended else ids
                r.finish = "stop" if ended else "length"
                continue
            # a run whose budget were spent here would keep this continuation whole: its response
            r.by_budget.append(r.response + (ids[:-1] if ended else ids))
            r.step_js += js[:t]
            r.response += ids[:t]
            switching.append((i, ids[t], js[t], forced))
        if switching:
            drawn = other.generate(
                [TokensPrompt(prompt_token_ids=rows[i].prompt + rows[i].response) for i, *_ in switching],
                [
                    SamplingParams(**draw, max_tokens=1, seed=sample_seed(rows[i].seed, "regenerate-injected", rnd))
                    for i, *_ in switching
                ],
                use_tqdm=False,
            )
            for (i, own, js, forced), o in zip(switching, drawn):
                inject(rows[i], o.outputs[0].token_ids[0], own, js, forced)
        open_rows = [i for i in open_rows if rows[i].finish is None]
    return [
        Sample(
            r.response,
            r.finish,
            extra={
                "n_switched": len(r.switched),
                "switched_positions": r.switched,
                "switched_js": r.switched_js,
                "step_js": r.step_js,
                "n_forced": r.n_forced,
                "n_removed": r.n_removed,
                "row_threshold": float(r.threshold),
                "budget_responses": r.by_budget,
            },
        )
        for r in rows
    ]


class RegenerateBackend:
    """The stage's ``regenerate`` engine: a vLLM engine per model of the pair, their tokenizers compared
    first and their stop ids joined, as ``crosssample.CrossSampleBackend`` does for lockstep."""

    def __init__(
        self,
        base: Path,
        rl: Path,
        rule: SwitchRule,
        sampling: SamplingConfig,
        cfg: CrossSampleConfig,
        vllm: RolloutConfig,
    ):
        from tokenshift.checkpoints import resolve_checkpoint
        from tokenshift.tokenizer import compare_tokenizers, load_tokenizer, stop_ids
        from tokenshift.vllm_engine import start_engine

        check_rule(rule)
        self.tokenizer = load_tokenizer(base)
        self.vocab_size = compare_tokenizers(self.tokenizer, load_tokenizer(rl))
        self.stops = list(dict.fromkeys(stop_ids(base, self.tokenizer) + stop_ids(rl, self.tokenizer)))
        self.rule, self.sampling = rule, sampling
        self.steps = rule.decode_steps(sampling.max_new_tokens)
        # each engine sized for the longest response and the one token its teacher-forced reads ask past it
        sizing = dataclasses.replace(sampling, max_new_tokens=self.steps + 1)
        vllm = dataclasses.replace(vllm, threads=cfg.threads)
        started = {
            role: start_engine(resolve_checkpoint(path), vllm, sizing, engines=2)
            for role, path in (("base", base), ("rl", rl))
        }
        self.engines = {role: llm for role, (llm, _) in started.items()}
        self.context = min(args["max_model_len"] for _, args in started.values())
        # the exact statistics take every token's log-prob; topk:K, the K of them it selects on
        self.logprobs = rule.topk or self.vocab_size

    def generate(self, prompts: Sequence[Sequence[int]], keys: Sequence[tuple[str, int]]) -> list[Sample]:
        setting = "sampling.max_new_tokens" if self.rule.length == "response" else "crosssample.max_total_tokens"
        what = (
            "the vLLM engines (rollout.vllm_max_model_len, or the longest response + 2048 within the models' context)"
        )
        check_context(prompts, keys, self.steps + 1, self.context, what, setting)
        gen, other = ("base", "rl") if self.rule.direction == "forward" else ("rl", "base")
        return regenerate(
            self.engines[gen],
            self.engines[other],
            prompts,
            seeds=[sample_seed(self.sampling.seed, pid, j) for pid, j in keys],
            stops=self.stops,
            vocab_size=self.vocab_size,
            rule=self.rule,
            sampling=self.sampling,
            logprobs=self.logprobs,
        )
