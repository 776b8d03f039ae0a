"""Cross-sampling by regeneration on vLLM: the authors' protocol, one switch per round.

Where ``tokenshift.crosssample`` decodes both models in lockstep (both next-token distributions
at every step), this engine works as the authors' resampling scripts do (GitHub Hesse73/resample,
"regenerate after each switch"), on two vLLM engines (``tokenshift.vllm_engine``):

1. the generating model writes a continuation of each row's prefix (prompt + response so far),
   returning the log-probs of its ``logprobs`` most probable tokens at each step;
2. the other model reads prefix + continuation teacher-forced (``prompt_logprobs``, the same K),
   so both distributions are known at every step of the continuation;
3. the switch position is the first whose policy statistic passes the row's threshold while its
   budget lasts; the other model draws one token there (a one-token request on the prefix, which
   prefix caching makes cheap), and the row's prefix becomes prefix + continuation up to there +
   that token; a row with no such position (or no budget left) keeps its continuation and ends.

Rounds repeat over the rows still open, batched, up to the budget. With ``logprobs`` the vocabulary
size (the toy pair: 265; vLLM's ``max_logprobs`` is raised to it) the statistics are exact; with K
below it they are those of each model's K most probable tokens, renormalised (``SwitchRule.topk``,
the authors' top-50), and so is the recorded ``step_js``.

What this engine does not do (refused by ``check_rule``): percentile thresholds per prompt or
response, the authors' forced switch, ``injected_eos: drop``, the ``after_switch`` length rule and
the ``random`` policy (its draws are the lockstep decoder's noise stream). Each request draws on
its own seed, from the row's seed, the round and the model, so a row's draws depend on nothing else
in its batch; they are vLLM's draws, not the lockstep decoder's inverse-CDF noise, so only greedy
decoding (temperature 0) can be compared with ``lockstep`` token for token (tests/test_vllm.py).

Not yet a stage setting (what remains of issue 25.3): a ``CrossSampleConfig.engine`` option
(``lockstep`` | ``regenerate``, schema and config/README beside it); ``CrossSampleBackend`` starting
the two engines with ``vllm_engine.start_engine`` and calling ``regenerate`` (``logprobs`` the
vocabulary size, or ``rule.topk``), ``check_rule`` turned into an ``InputError``; the engine in
``run_crosssample``'s run key; and the vLLM engine settings (``rollout.vllm_*``: dtype, memory,
eager) reaching ``tokenshift crosssample`` and its rule, with tests/test_e2e.py's key walk told
which jobs they then change.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tokenshift.crosssample import SwitchRule, step_statistics
from tokenshift.generation import Sample, SamplingConfig, sample_seed
from tokenshift.registry import POLICIES


def check_rule(rule: SwitchRule) -> None:
    """Refuse what the regenerate engine does not implement, naming it."""
    unsupported = {
        "a per-prompt or per-response threshold": rule.level != "dataset",
        "the forced switch": rule.force,
        "injected_eos drop": rule.eos != "end",
        "the after_switch length rule": rule.length != "response",
        "the random policy": rule.policy == "random",
    }
    named = [what for what, bad in unsupported.items() if bad]
    if named:
        raise ValueError(f"crosssample.engine regenerate does not implement {', '.join(named)}; use engine lockstep")


@dataclass
class _Row:
    prompt: list[int]
    seed: int
    response: list[int] = field(default_factory=list)
    switched: list[int] = field(default_factory=list)
    switched_js: list[float] = field(default_factory=list)
    step_js: list[float] = field(default_factory=list)
    finish: str | None = None


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
    statistic = POLICIES[rule.policy].statistic
    budget = math.inf if rule.budget is None else rule.budget
    threshold = math.nan if rule.threshold is None else rule.threshold
    rows = [_Row(list(p), s) for p, s in zip(prompts, seeds)]
    top_p = sampling.top_p if sampling.temperature > 0 else 1.0
    # flat log-probs and no text: thousands of per-token Python objects per response otherwise dominate the time
    draw = {"temperature": sampling.temperature, "top_p": top_p, "detokenize": False, "flat_logprobs": True}
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
                    max_tokens=sampling.max_new_tokens - len(r.response),
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
            SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=logprobs, detokenize=False, flat_logprobs=True),
            use_tqdm=False,
        )
        switching: list[tuple[int, int]] = []  # (row index, switch step in its continuation)
        for i, r, c, s in zip(open_rows, todo, conts, scored):
            start = len(r.prompt) + len(r.response)
            lg = dense_logprobs(c.logprobs, 0, len(c.token_ids), vocab_size)
            lo = dense_logprobs(s.prompt_logprobs, start, len(c.token_ids), vocab_size)
            stats = step_statistics(lg, lo, rule.topk)
            js = stats["js"].tolist()
            passes = (stats[statistic] > threshold).nonzero()[:, 0].tolist() if len(r.switched) < budget else []
            if passes:
                t = passes[0]
                r.step_js += js[:t]
                r.switched_js.append(js[t])
                r.step_js.append(js[t])
                r.response += list(c.token_ids[:t])
                r.switched.append(len(r.response))
                switching.append((i, t))
                continue
            ids = list(c.token_ids)
            ended = bool(ids) and ids[-1] in stops
            r.response += ids[:-1] if ended else ids
            r.step_js += js[: len(ids) - ended]
            r.finish = "stop" if ended else "length"
        if switching:
            drawn = other.generate(
                [TokensPrompt(prompt_token_ids=rows[i].prompt + rows[i].response) for i, _ in switching],
                [
                    SamplingParams(
                        **draw,
                        max_tokens=1,
                        seed=sample_seed(rows[i].seed, "regenerate-injected", rnd),
                    )
                    for i, _ in switching
                ],
                use_tqdm=False,
            )
            for (i, _), o in zip(switching, drawn):
                r, tok = rows[i], o.outputs[0].token_ids[0]
                if tok in stops:  # the injected model ended the response: the switch counts at len(response)
                    r.finish = "stop"
                    continue
                r.response.append(tok)
                if len(r.response) >= sampling.max_new_tokens:
                    r.finish = "length"
        open_rows = [i for i in open_rows if rows[i].finish is None]
    return [
        Sample(
            r.response,
            r.finish,
            extra={
                "n_switched": len(r.switched),
                "switched_positions": r.switched,
                "switched_js": r.switched_js,
                "step_js": r.step_js[: len(r.response)],
                "n_forced": 0,
                "row_threshold": float(threshold),
            },
        )
        for r in rows
    ]
