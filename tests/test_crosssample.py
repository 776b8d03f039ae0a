"""Cross-sampling decoder: checked against a naive cache-free reference, and its couplings."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tokenshift.crosssample import SwitchRule
from tokenshift.decoding import REMOVE_RETRIES, cross_sample, sample_from_logits, step_statistics
from tokenshift.generation import SamplingConfig, row_noise, sample_seed
from tokenshift.registry import POLICIES, parse_budget

VOCAB = 48


TINY = dict(
    vocab_size=VOCAB + 3,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=256,
)


def tiny_model(seed: int, **config) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**TINY, **config)).eval()
    with torch.no_grad():  # sharper distributions than the init's near-uniform ones
        model.lm_head.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def pair():
    return tiny_model(0), tiny_model(1)


PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [3], [20, 21, 22], [30, 31]]


@torch.no_grad()
def reference(gen, other, prompts, *, eos_id, cfg: SwitchRule, sampling: SamplingConfig, seed: int):
    """Row by row, no cache, no padding: every step re-reads the whole sequence; a forced switch
    (``cfg.force``) decodes the row again from the start, as the authors regenerate after it. Under
    the ``after_switch`` length rule, each switch grants max_new_tokens new tokens after it, as the
    authors' regeneration from the switched token does (never past ``cfg.max_total``)."""
    n, steps = len(prompts), sampling.max_new_tokens
    ceiling = cfg.max_total or steps
    us, rs = row_noise([sample_seed(seed, "", i) for i in range(n)], ceiling)  # each row's own noise
    budget = math.inf if cfg.budget is None else cfg.budget

    def statistic(lg, lo, u, r):
        """The policy's statistic, written out for one row (the generator's draw y for logprob/rank)."""
        name = POLICIES[cfg.policy].statistic
        if name == "uniform":
            return float(r)
        if name in ("js", "entropy", "entropy_other", "argmax"):
            return float(step_statistics(lg, lo, cfg.topk)[name])
        lp, lq = torch.log_softmax(lg[0], -1), torch.log_softmax(lo[0], -1)
        if name == "kl":
            return float((lp.exp() * (lp - lq)).sum())
        if name == "kl_r":
            return float((lq.exp() * (lq - lp)).sum())
        y = int(sample_from_logits(lg, u, sampling))
        if name == "logprob":
            return float(lp[y] - lq[y])
        return float((lo[0] > lo[0, y]).sum() - (lg[0] > lg[0, y]).sum())  # rank

    def decode(i, prompt, forced):
        seq, resp, positions, stats_seen, used, removed = list(prompt), [], [], [], 0, 0
        t, cap = 0, steps
        while t < cap:
            x = torch.tensor([seq])
            lg, lo = gen(x).logits[:, -1, :VOCAB], other(x).logits[:, -1, :VOCAB]
            u = us[i, t : t + 1]
            stat = statistic(lg, lo, u, rs[i, t])
            stats_seen.append(stat)
            switch = (stat > cfg.threshold or t in forced) and used < budget
            if cfg.injection == "extrapolate":  # one step of gamma past the other model, away from the generator
                lo = (1 + cfg.gamma) * torch.log_softmax(lo, -1) - cfg.gamma * torch.log_softmax(lg, -1)
            if switch and cfg.eos == "drop" and eos_id is not None:
                lo = lo.clone()
                lo[:, eos_id] = -math.inf
            tok = int(sample_from_logits(lo if switch else lg, u, sampling))
            if switch:
                used += 1
                if cfg.length == "after_switch":  # regenerate: max_new_tokens more from the switched token on
                    cap = min(t + 1 + steps, ceiling)
                k = 0
                while cfg.eos == "remove" and tok == eos_id:  # deleted; the position is drawn again
                    removed, k = removed + 1, k + 1
                    if used >= budget or (budget == math.inf and k > REMOVE_RETRIES):
                        tok, switch = int(sample_from_logits(lg, u, sampling)), False  # the generator's own
                        break
                    used += 1
                    fresh = torch.rand(
                        1, generator=torch.Generator().manual_seed((int(u[0] * 2**52) * 8191 + k) % 2**63)
                    )
                    tok = int(sample_from_logits(lo, fresh, sampling))
                if switch:
                    positions.append(t)
            if tok == eos_id:
                return resp, positions, stats_seen, removed
            resp.append(tok)
            seq.append(tok)
            t += 1
        return resp, positions, stats_seen, removed

    out = []
    for i, prompt in enumerate(prompts):
        forced = set()
        while True:
            resp, positions, stats_seen, removed = decode(i, prompt, forced)
            if not cfg.force or len(positions) + removed >= budget:
                break
            start = positions[-1] + 1 if positions else 0
            if start >= len(stats_seen):
                break
            forced.add(start + max(range(len(stats_seen) - start), key=lambda j: stats_seen[start + j]))
        out.append((resp, positions, removed))
    return out


def run(
    pair,
    direction="forward",
    policy="js",
    budget=None,
    threshold=0.05,
    eos_id=None,
    max_new=12,
    batch_size=4,
    prompts=PROMPTS,
    seed=3,
    force=False,
    eos="end",
    topk=None,
    max_total=None,
    injection="sample",
    gamma=0.0,
):
    base, rl = pair
    rule = SwitchRule(
        direction=direction,
        policy=policy,
        budget=budget,
        threshold=threshold,
        force=force,
        eos=eos,
        topk=topk,
        length="after_switch" if max_total else "response",
        max_total=max_total,
        injection=injection,
        gamma=gamma,
    )
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=max_new)
    return (rule, sampling), cross_sample(
        base,
        rl,
        prompts,
        eos_id=eos_id,
        pad_id=0,
        vocab_size=VOCAB,
        rule=rule,
        sampling=sampling,
        seed=seed,
        batch_size=batch_size,
    )


@pytest.mark.parametrize(
    "direction,policy,budget,threshold,force,eos",
    [
        ("forward", "js", None, 0.05, False, "end"),
        ("forward", "js", 2, 0.05, False, "end"),
        ("reverse", "js", 3, 0.02, False, "end"),
        ("forward", "entropy", None, 2.0, False, "end"),
        ("forward", "argmax", 4, 0.5, False, "end"),
        ("reverse", "random", 2, 0.6, False, "end"),
        ("forward", "js", 3, 0.3, True, "end"),
        ("forward", "entropy", 4, 1.2, True, "drop"),
        ("reverse", "js", None, 0.5, False, "drop"),
        ("reverse", "js", 6, 0.0, False, "remove"),
        ("reverse", "js", None, 0.0, False, "remove"),
        ("reverse", "entropy", 5, 0.5, True, "remove"),
        ("forward", "logprob", 3, 1.0, False, "end"),
        ("reverse", "dlogp", None, 0.5, False, "end"),
        ("forward", "rank", 4, 2.0, True, "end"),
        ("forward", "kl", 3, 0.2, False, "end"),
        ("reverse", "kl_r", None, 0.2, False, "end"),
        ("forward", "entropy_other", 2, 1.5, False, "end"),
    ],
)
def test_batched_cached_decoding_equals_the_naive_reference(pair, direction, policy, budget, threshold, force, eos):
    # eos 47 is drawn often enough that rows finish at different steps and get compacted away
    topk = 5 if (policy, force, eos) == ("entropy", True, "drop") else None  # the authors' combination: top-K too
    prompts = PROMPTS * 2  # twelve rows, in one batch of eight and one of four
    (rule, sampling), samples = run(
        pair,
        direction,
        policy,
        budget,
        threshold,
        eos_id=47,
        batch_size=8,
        force=force,
        eos=eos,
        topk=topk,
        prompts=prompts,
    )
    gen, other = pair if direction == "forward" else pair[::-1]
    ref = reference(gen, other, prompts, eos_id=47, cfg=rule, sampling=sampling, seed=3)
    assert [s.response_ids for s in samples] == [r[0] for r in ref]
    assert [s.extra["switched_positions"] for s in samples] == [r[1] for r in ref]
    assert [s.extra["n_removed"] for s in samples] == [r[2] for r in ref]
    if eos != "remove":  # (switching everywhere, remove may leave no response that stops)
        assert any(s.finish_reason == "stop" for s in samples) and any(s.finish_reason == "length" for s in samples)
    if budget is not None:
        assert max(s.extra["n_switched"] + s.extra["n_removed"] for s in samples) <= budget
    assert sum(s.extra["n_switched"] for s in samples) > 0
    if eos == "remove":  # the case is real: injected EOS draws were removed, and none ended a response on a switch
        assert sum(s.extra["n_removed"] for s in samples) > 0


@pytest.mark.parametrize(
    "direction,policy,budget,eos,gamma",
    [("forward", "js", 3, "end", 0.5), ("forward", "dlogp", None, "end", 0.1), ("reverse", "js", 6, "remove", 1.0)],
)
def test_the_follow_ups_extrapolated_injection_equals_the_naive_reference(pair, direction, policy, budget, eos, gamma):
    prompts = PROMPTS * 2
    kw = dict(eos_id=47, batch_size=8, prompts=prompts, eos=eos, injection="extrapolate", gamma=gamma)
    threshold = 0.0 if eos == "remove" else 0.05 if policy == "js" else 0.5
    (rule, sampling), samples = run(pair, direction, policy, budget, threshold, **kw)
    gen, other = pair if direction == "forward" else pair[::-1]
    ref = reference(gen, other, prompts, eos_id=47, cfg=rule, sampling=sampling, seed=3)
    assert [s.response_ids for s in samples] == [r[0] for r in ref]
    assert [s.extra["switched_positions"] for s in samples] == [r[1] for r in ref]
    assert [s.extra["n_removed"] for s in samples] == [r[2] for r in ref]
    # it is not the plain injection: the same noise draws other tokens where rows switch
    _, plain = run(pair, direction, policy, budget, threshold, **{**kw, "injection": "sample", "gamma": 0.0})
    assert [s.response_ids for s in samples] != [s.response_ids for s in plain]


def test_extrapolation_steps_past_the_other_model_and_gamma_zero_is_the_other_model():
    from tokenshift.decoding import injected_logits

    lg = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))  # the generator
    lo = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))  # the other model
    rule = SwitchRule(injection="extrapolate", gamma=1.0)
    probs = torch.softmax(injected_logits(lo, lg, rule=rule), -1)
    expected = torch.tensor([0.2**2 / 0.5, 0.3**2 / 0.3, 0.5**2 / 0.2])  # p_other^2 / p_gen, normalised
    assert torch.allclose(probs, expected / expected.sum())
    assert probs[0, 2] > 0.5  # further along the direction from the generator to the other model
    zero = SwitchRule(injection="extrapolate", gamma=0.0)
    assert torch.equal(injected_logits(lo, lg, rule=zero), lo)
    with pytest.raises(ValueError, match="gamma"):
        SwitchRule(injection="extrapolate", gamma=-0.1)


@pytest.mark.parametrize(
    "policy,budget,threshold,force,eos,max_total",
    [
        ("js", 3, 0.3, False, "end", 64),  # the cap after 3 switches, 4 x 8 = 32, binds before the ceiling
        ("js", None, 0.3, False, "end", 30),  # no budget: the ceiling binds
        ("entropy", 2, 1.2, True, "drop", 64),  # the authors' combination
        ("js", 4, 0.55, True, "end", 20),  # the ceiling below (budget + 1) x max_new_tokens binds
        ("js", 4, 0.55, False, "end", 64),  # a row without a switch among rows with some
    ],
)
def test_the_authors_length_rule_is_regenerating_max_new_tokens_after_each_switch(
    pair, policy, budget, threshold, force, eos, max_total
):
    max_new, prompts = 8, PROMPTS * 2
    kw = dict(policy=policy, budget=budget, threshold=threshold, eos_id=47, max_new=max_new, prompts=prompts)
    (rule, sampling), longer = run(pair, **kw, batch_size=8, force=force, eos=eos, max_total=max_total)
    ref = reference(*pair, prompts, eos_id=47, cfg=rule, sampling=sampling, seed=3)
    assert [s.response_ids for s in longer] == [r[0] for r in ref]
    assert [s.extra["switched_positions"] for s in longer] == [r[1] for r in ref]
    assert max(len(s.response_ids) for s in longer) > max_new  # switches let responses run past max_new_tokens
    if budget is None or max_total < (budget + 1) * max_new:  # rows that reach the ceiling stop there
        assert max(len(s.response_ids) for s in longer) == max_total
    for s in longer:
        switched = s.extra["switched_positions"]
        cap = min(switched[-1] + 1 + max_new if switched else max_new, max_total)
        assert len(s.response_ids) <= cap and (s.finish_reason == "stop" or len(s.response_ids) == cap)
    if not force:  # the same run up to max_new_tokens: the response rule's responses are its prefixes
        _, capped = run(pair, **kw, batch_size=5, eos=eos)
        for a, b in zip(longer, capped):
            assert a.response_ids[:max_new] == b.response_ids
            assert [p for p in a.extra["switched_positions"] if p < max_new] == b.extra["switched_positions"]
            if not a.extra["switched_positions"]:  # no switch: the two rules give the same response
                assert (a.response_ids, a.finish_reason) == (b.response_ids, b.finish_reason)


def test_a_longer_noise_stream_starts_with_the_shorter_one():
    # what keeps the after_switch rule's unswitched prefix the response rule's: torch.rand from one seed
    # draws the same values at the same steps whatever the stream's length
    seeds = [sample_seed(3, "p", j) for j in range(5)]
    for short, long in ((1, 7), (8, 64), (15, 16), (96, 16384)):
        for a, b in zip(row_noise(seeds, short), row_noise(seeds, long)):
            assert torch.equal(a, b[:, :short])


def test_the_after_switch_rule_needs_a_ceiling_of_at_least_max_new_tokens():
    rule = SwitchRule(budget=2, length="after_switch", max_total=100)
    assert rule.decode_steps(8) == 24 and rule.decode_steps(40) == 100  # (2 + 1) x 8; the ceiling
    assert SwitchRule(budget=None, length="after_switch", max_total=100).decode_steps(8) == 100
    assert SwitchRule(budget=0, length="after_switch", max_total=100).decode_steps(8) == 8
    assert SwitchRule(budget=2).decode_steps(8) == 8
    with pytest.raises(ValueError, match="max_total_tokens 100 is below max_new_tokens 128"):
        rule.decode_steps(128)
    with pytest.raises(ValueError, match="expected a max_total with after_switch only"):
        SwitchRule(length="after_switch")
    with pytest.raises(ValueError, match="length rule 'whole'"):
        SwitchRule(length="whole")


def test_forced_switches_reach_the_budget_and_keep_the_unforced_prefix(pair):
    kw = dict(policy="js", budget=3, threshold=0.55, eos_id=47, max_new=16, prompts=PROMPTS * 3, batch_size=8)
    _, free = run(pair, **kw)
    _, forced = run(pair, **kw, force=True)
    assert sum(s.extra["n_forced"] for s in forced) > 0 and all(s.extra["n_forced"] == 0 for s in free)
    for a, b in zip(free, forced):
        assert b.extra["n_switched"] >= a.extra["n_switched"]  # forcing never lowers the switch count
        end = len(b.response_ids) + (b.finish_reason == "stop")
        # the budget is reached unless the last switch left nothing after it to switch
        assert b.extra["n_switched"] == 3 or b.extra["switched_positions"][-1] == end - 1
        # on the same noise, the two agree up to the first switch the rule forced
        first = min((p for p in b.extra["switched_positions"] if p not in a.extra["switched_positions"]), default=None)
        if first is not None:
            assert b.response_ids[:first] == a.response_ids[:first]
        # a forced switch sits where the statistic (JS here) is highest since the previous switch
        prev = -1
        for p in b.extra["switched_positions"]:
            stretch = b.extra["step_js"][prev + 1 : p + 1]
            if p < len(b.response_ids) and stretch and b.extra["step_js"][p] <= 0.55:  # forced, not passed
                assert b.extra["step_js"][p] == max(stretch)
            prev = p


def test_a_batch_out_of_memory_is_decoded_in_halves_to_the_same_samples(pair):
    base, _ = pair
    kw = dict(policy="js", budget=2, threshold=0.3, eos_id=47, max_new=12, batch_size=6, force=True)
    _, whole = run(pair, **kw)

    def tight(module, args, kwargs):  # a device that holds at most 2 rows
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    hook = base.model.register_forward_pre_hook(tight, with_kwargs=True)
    try:
        _, halved = run(pair, **kw)
    finally:
        hook.remove()
    # the same tokens and switches; the JS values up to float rounding (rows are padded to other widths)
    exact = ("n_switched", "switched_positions", "n_forced")
    assert [(s.response_ids, [s.extra[k] for k in exact]) for s in halved] == [
        (s.response_ids, [s.extra[k] for k in exact]) for s in whole
    ]
    for a, b in zip(halved, whole):
        assert a.extra["step_js"] == pytest.approx(b.extra["step_js"], abs=1e-5)


def test_prompt_and_response_level_thresholds_are_percentiles_of_the_budget0_twins(pair):
    import numpy as np

    prompts = [[5, 6, 7], [8, 9]] * 3  # three samples of each of two prompts, in mixed order
    kw = dict(policy="js", max_new=10, prompts=prompts, batch_size=4)  # one prompt's samples in two batches
    _, twins = run(pair, budget=0, **kw)  # the generator alone on the same noise (no EOS: every step counts)
    base, rl = pair
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=10)
    by_level = {}
    for level in ("response", "prompt"):
        rule = SwitchRule(policy="js", budget=2, threshold=None, level=level, percentile=80)
        by_level[level] = cross_sample(
            base,
            rl,
            prompts,
            eos_id=None,
            pad_id=0,
            vocab_size=VOCAB,
            rule=rule,
            sampling=sampling,
            seed=3,
            batch_size=4,
        )
    for twin, row in zip(twins, by_level["response"]):
        assert row.extra["row_threshold"] == pytest.approx(np.percentile(twin.extra["step_js"], 80), rel=1e-5)
    pooled = {
        i: np.percentile(np.concatenate([t.extra["step_js"] for t in twins[i::2]]), 80) for i in (0, 1)
    }  # the prompts alternate: rows 0, 2, 4 and rows 1, 3, 5
    got = [s.extra["row_threshold"] for s in by_level["prompt"]]
    assert got == pytest.approx([pooled[i % 2] for i in range(6)], rel=1e-5)
    assert got[0] != pytest.approx(got[1])  # the two prompts' thresholds differ
    for row in by_level["prompt"]:  # a switch only where the row's own threshold is passed, within budget
        assert row.extra["n_switched"] <= 2
        assert all(js > row.extra["row_threshold"] for js in row.extra["switched_js"])
    with pytest.raises(ValueError, match="a percentile at the others"):
        SwitchRule(policy="js", threshold=0.1, level="prompt", percentile=80)


def test_a_rollout_is_its_forward_budget0_twin_whatever_the_batch(pair):
    from tokenshift.decoding import decode_alone

    base, rl = pair
    prompts = PROMPTS * 3
    seeds = [sample_seed(7, f"p{i % len(PROMPTS)}", i // len(PROMPTS)) for i in range(len(prompts))]
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=14)
    kw = dict(eos_id=47, pad_id=0, vocab_size=VOCAB, sampling=sampling)
    alone = [decode_alone(base, prompts, seeds=seeds, batch_size=b, **kw) for b in (18, 5)]
    assert [s.response_ids for s in alone[0]] == [s.response_ids for s in alone[1]]  # batch size does not matter
    twin = cross_sample(base, rl, prompts, rule=SwitchRule(budget=0), seeds=seeds, batch_size=4, **kw)
    assert [s.response_ids for s in twin] == [s.response_ids for s in alone[0]]
    assert [s.finish_reason for s in twin] == [s.finish_reason for s in alone[0]]
    # a row's draw is its own: the same sample seed in another order draws the same response
    order = list(reversed(range(len(prompts))))
    moved = decode_alone(base, [prompts[i] for i in order], seeds=[seeds[i] for i in order], batch_size=7, **kw)
    assert [s.response_ids for s in moved] == [alone[0][i].response_ids for i in order]


def test_a_dropped_eos_never_ends_a_response(pair):
    # forward, switching everywhere: every token comes from RL; dropping its EOS keeps every row going
    kw = dict(policy="js", threshold=0.0, eos_id=47, max_new=20)
    _, ends = run(pair, **kw)
    _, drops = run(pair, **kw, eos="drop")
    assert any(s.finish_reason == "stop" for s in ends)
    assert all(s.finish_reason == "length" and 47 not in s.response_ids for s in drops)
    with pytest.raises(ValueError, match="injected EOS 'keep'"):
        SwitchRule(eos="keep")


def test_an_empty_prompt_is_refused_naming_it(pair):
    # a fully padded row has nothing to attend to: alone it crashed in the attention, beside other
    # rows it decoded a response from nothing, silently
    from tokenshift.decoding import decode_alone

    for prompts in ([[5, 6], []], [[]]):
        with pytest.raises(ValueError, match=f"prompt {len(prompts) - 1} is empty"):
            run(pair, prompts=prompts)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        decode_alone(pair[0], [[5, 6], []], seeds=[1, 2], eos_id=None, pad_id=0, vocab_size=VOCAB, sampling=sampling)


def test_budget_zero_is_the_same_run_under_every_policy(pair):
    runs = [
        run(pair, policy=p, budget=0, threshold=t)[1]
        for p, t in (("js", 0.0), ("entropy", 0.0), ("argmax", 0.5), ("random", 0.0))
    ]
    assert all(s.extra["n_switched"] == 0 for s in runs[0])
    for other in runs[1:]:
        assert [s.response_ids for s in other] == [s.response_ids for s in runs[0]]


def test_switching_everywhere_is_the_other_model_decoding(pair):
    # forward with threshold 0 and no budget draws every token from RL: exactly RL alone (reverse, budget 0)
    _, forward_all = run(pair, "forward", "js", None, 0.0)
    _, rl_alone = run(pair, "reverse", "js", 0, 0.0)
    assert [s.response_ids for s in forward_all] == [s.response_ids for s in rl_alone]
    assert all(s.extra["n_switched"] == len(s.response_ids) for s in forward_all)


def test_switched_js_values_exceed_the_threshold_and_random_switches_blind(pair):
    _, js_run = run(pair, policy="js", threshold=0.5, max_new=20)
    values = [v for s in js_run for v in s.extra["switched_js"]]
    assert values and min(values) > 0.5
    for s in js_run:  # the per-position JS trace lines up with the response and the switches
        assert len(s.extra["step_js"]) == len(s.response_ids)
        assert [s.extra["step_js"][p] for p in s.extra["switched_positions"] if p < len(s.response_ids)] == [
            v for p, v in zip(s.extra["switched_positions"], s.extra["switched_js"]) if p < len(s.response_ids)
        ]
    _, rnd = run(pair, policy="random", threshold=0.75, max_new=40, prompts=PROMPTS * 8, batch_size=16)
    share = sum(s.extra["n_switched"] for s in rnd) / sum(len(s.response_ids) for s in rnd)
    assert 0.18 < share < 0.32  # 1 - 0.75 of positions, within sampling noise of 1920 draws
    assert min(v for s in rnd for v in s.extra["switched_js"]) < 0.5  # blind to divergence


def test_finished_rows_stop_costing_compute(pair):
    base, _ = pair
    seen = []
    hook = base.model.register_forward_pre_hook(
        lambda m, args, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        _, samples = run(pair, eos_id=47, max_new=30, prompts=PROMPTS * 4, batch_size=24)
    finally:
        hook.remove()
    lengths = [len(s.response_ids) for s in samples]
    assert min(lengths) < 10 and max(lengths) == 30
    # one prefill of 24 rows, then decode steps on ever fewer rows: a row that stops after L tokens
    # is fed L of them; dropping in groups of 1/8 of the rows costs a little over that ideal
    ideal = sum(len(s.response_ids) if s.finish_reason == "stop" else 29 for s in samples)
    assert seen[0] == 24 and seen[-1] < 24
    assert ideal <= sum(seen[1:]) <= 1.1 * ideal and sum(seen[1:]) < 24 * 29


def test_top_k_statistics_renormalise_each_model_top_tokens():
    torch.manual_seed(0)
    lg, lo = torch.randn(5, VOCAB) * 3, torch.randn(5, VOCAB) * 3
    exact = step_statistics(lg, lo)
    whole = step_statistics(lg, lo, topk=VOCAB)  # all tokens kept: the exact statistics
    assert torch.allclose(whole["js"], exact["js"], atol=1e-6) and torch.allclose(whole["entropy"], exact["entropy"])
    one = step_statistics(lg, lo, topk=1)  # one token each: no entropy; JS ln 2 exactly where the argmaxes differ
    assert torch.allclose(one["entropy"], torch.zeros(5))
    assert torch.allclose(one["js"], exact["argmax"] * math.log(2), atol=1e-6)
    p = torch.softmax(lg, -1)
    top = p.topk(3, -1).values
    top = top / top.sum(-1, keepdim=True)
    assert torch.allclose(step_statistics(lg, lo, topk=3)["entropy"], -(top * top.log()).sum(-1), atol=1e-6)


def test_sampler_inverts_the_cdf_exactly():
    logits = torch.tensor([[0.0, math.log(3.0), -math.inf, math.log(4.0)]])
    u = torch.linspace(0, 1, 8001)[:-1]
    toks = sample_from_logits(logits.expand(len(u), -1), u, SamplingConfig(temperature=1.0))
    counts = torch.bincount(toks, minlength=4).tolist()
    assert counts[2] == 0
    assert [abs(c - e) <= 2 for c, e in zip(counts, [1000, 3000, 0, 4000])] == [True] * 4  # float32 cumsum
    nucleus = sample_from_logits(logits.expand(len(u), -1), u, SamplingConfig(temperature=1.0, top_p=0.5))
    assert set(nucleus.tolist()) == {3}  # the most probable token alone reaches 0.5 of the mass
    greedy = sample_from_logits(logits, torch.tensor([0.9]), SamplingConfig(temperature=0))
    assert greedy.tolist() == [3]


def resolve_threshold(policy, direction, spec, scores=None):
    return POLICIES[policy].resolve(spec, direction, scores)


def test_the_authors_and_the_follow_ups_token_criteria_read_their_own_score_columns():
    scores = pl.DataFrame(
        {
            "logp_base": [-1.0, -2.0, -0.5, -3.0, -1.0],
            "logp_rl": [-1.0, -0.5, -2.5, -1.0, -0.2],
            "kl_base_rl": [0.1, 0.2, 0.3, 0.4, 0.5],
            "kl_rl_base": [1.0, 2.0, 3.0, 4.0, 5.0],
            "entropy_base": [0.0] * 5,
            "entropy_rl": [2.0] * 5,
        }
    )
    # logprob: log p_generator(y) - log p_other(y); forward [0, -1.5, 2, -2, -0.8], reverse its negation
    assert resolve_threshold("logprob", "forward", {"percentile": 50}, scores) == pytest.approx(-0.8)
    assert resolve_threshold("logprob", "reverse", {"percentile": 50}, scores) == pytest.approx(0.8)
    assert resolve_threshold("kl", "forward", {"percentile": 100}, scores) == pytest.approx(0.5)
    assert resolve_threshold("kl", "reverse", {"percentile": 100}, scores) == pytest.approx(5.0)
    assert resolve_threshold("kl_r", "forward", {"percentile": 0}, scores) == pytest.approx(1.0)
    assert resolve_threshold("entropy_other", "forward", {"percentile": 50}, scores) == pytest.approx(2.0)
    # the follow-up's tau: switch where log p_RL(y) - log p_base(y) <= tau, i.e. logprob above -tau
    assert resolve_threshold("dlogp", "forward", {"tau": -0.3}) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="'threshold' or 'percentile'"):
        resolve_threshold("logprob", "forward", {"tau": -0.3})
    # no score table holds the sampled token's ranks: rank percentiles are per prompt or response only
    with pytest.raises(ValueError, match="no rank statistic"):
        SwitchRule.resolve("forward", "rank", "4", {"percentile": 90}, scores=None)
    assert SwitchRule.resolve("forward", "rank", "4", {"percentile": 90, "level": "response"}).level == "response"
    assert resolve_threshold("rank", "forward", {"threshold": 3}) == 3.0


def test_thresholds_resolve_from_percentiles_and_bad_ones_are_refused():
    scores = pl.DataFrame(
        {"js": [0.0, 0.1, 0.2, 0.3, 0.4], "entropy_base": [1.0, 2.0, 3.0, 4.0, 5.0], "entropy_rl": [0.0] * 5}
    )
    assert resolve_threshold("js", "forward", {"percentile": 75}, scores) == pytest.approx(0.3)
    assert resolve_threshold("entropy", "forward", {"percentile": 50}, scores) == pytest.approx(3.0)
    assert resolve_threshold("entropy", "reverse", {"percentile": 50}, scores) == 0.0
    assert resolve_threshold("random", "forward", {"percentile": 90}) == pytest.approx(0.9)
    assert resolve_threshold("argmax", "forward", {}) == 0.5
    assert resolve_threshold("js", "reverse", {"threshold": 0.02}) == 0.02
    with pytest.raises(ValueError, match=r"js threshold 0\.9"):
        resolve_threshold("js", "forward", {"threshold": 0.9})
    with pytest.raises(ValueError, match="needs the per-token scores"):
        resolve_threshold("js", "forward", {"percentile": 90})
    # per prompt or response: no scores needed, each row's own threshold while decoding; random has no level
    rule = SwitchRule.resolve("forward", "entropy", "4", {"percentile": 90, "level": "prompt"})
    assert (rule.threshold, rule.level, rule.percentile) == (None, "prompt", 90.0)
    assert SwitchRule.resolve("forward", "random", "4", {"percentile": 90, "level": "prompt"}).threshold == 0.9
    assert not POLICIES["js"].needs_scores({"percentile": 90, "level": "response"})
    with pytest.raises(ValueError, match="threshold level 'problem'"):
        SwitchRule.resolve("forward", "js", "4", {"percentile": 90, "level": "problem"})
    with pytest.raises(ValueError, match="needs a percentile"):
        SwitchRule.resolve("forward", "js", "4", {"threshold": 0.1, "level": "prompt"})
    assert parse_budget("all") is None and parse_budget("8") == 8
    for bad in ("-1", "2.5", "half"):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad)


@pytest.mark.parametrize(
    ("policy", "spec", "canonical"),
    [
        ("js", {"threshold": 0.01, "level": "dataset"}, {"threshold": 0.01}),
        ("js", {"percentile": 90, "level": "dataset"}, {"percentile": 90}),
        ("js", {"percentile": 90, "level": "prompt"}, {"percentile": 90, "level": "prompt"}),
        ("random", {"percentile": 90}, {"threshold": 0.9}),
        ("random", {"percentile": 75, "level": "response"}, {"threshold": 0.75}),  # a blind draw has no level
        ("dlogp", {"tau": -0.3}, {"threshold": 0.3}),
        ("dlogp", {"tau": 0}, {"threshold": 0.0}),
        ("entropy", {"percentile": 50}, {"percentile": 50}),
        ("argmax", {}, {}),
    ],
)
def test_a_thresholds_one_spelling_is_the_same_rule(policy, spec, canonical, tmp_path):
    """The workflow passes each threshold in one spelling (so writing out a default re-runs nothing): it
    must be the same rule, resolved to the same threshold."""
    scores = tmp_path / "scores.parquet"
    pl.DataFrame(
        {
            "js": [0.0, 0.1, 0.2, 0.3, 0.4],
            "entropy_base": [1.0, 2.0, 3.0, 4.0, 5.0],
            "logp_base": [-1.0, -2.0, -3.0, -4.0, -5.0],
            "logp_rl": [0.0] * 5,
        }
    ).write_parquet(scores)
    got = POLICIES[policy].canonical(spec)
    assert got == canonical and str(got) == str(canonical)  # 0.0, not -0.0
    assert SwitchRule.resolve("forward", policy, "4", got, scores) == SwitchRule.resolve(
        "forward", policy, "4", spec, scores
    )


# --- the stage through the console script, on real checkpoints ---------------------------------

from helpers import cli  # noqa: E402

from tokenshift.tables import crosssample_table  # noqa: E402


@pytest.fixture()
def toy_problems(tmp_path):
    from tokenshift.datasets import DatasetSpec, prepare_dataset

    path = tmp_path / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=6), path)
    return path


def crosssample_cmd(base, rl, problems, out, *extra):
    return [
        "crosssample",
        "--base",
        str(base),
        "--rl",
        str(rl),
        "--dataset",
        str(problems),
        "--template",
        "{question}",
        "--no-chat-template",
        "--n",
        "2",
        "--max-new-tokens",
        "16",
        "-q",
        "--out",
        str(out),
        *extra,
    ]


def test_a_response_that_may_run_past_a_models_context_is_refused_naming_the_problem(
    make_checkpoint, toy_problems, tmp_path
):
    base, rl = make_checkpoint("base", seed=0), make_checkpoint("rl", seed=1)  # 128 positions each
    out = tmp_path / "o.parquet"
    cmd = crosssample_cmd(base, rl, toy_problems, out, "--direction", "forward", "--policy", "js", "--budget", "2")
    r = cli(cmd + ["--threshold", "0.1", "--max-new-tokens", "120"])
    assert r.returncode == 2, r.stderr[-2000:]
    assert "problem 'toy-eval-" in r.stderr and "past the 128 of the base model" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_stage_writes_graded_rows_and_the_table_aggregates_them(make_checkpoint, toy_problems, tmp_path):
    base, rl = make_checkpoint("base", seed=0), make_checkpoint("rl", seed=1)
    runs = []
    for policy, budget, th in (
        ("js", "0", ["--threshold", "0.0", "--n-problems", "99"]),  # a cap past the dataset: all of it, said
        ("js", "3", ["--threshold", "0.0"]),
        ("random", "3", ["--percentile", "50"]),
    ):
        out = tmp_path / f"{policy}-{budget}.parquet"
        r = cli(
            crosssample_cmd(
                base, rl, toy_problems, out, "--direction", "forward", "--policy", policy, "--budget", budget, *th
            )
        )
        assert r.returncode == 0, r.stderr
        assert (
            "n_problems is 99, but dataset" in r.stderr and "holds 6 problems: all 6 are cross-sampled" in r.stderr
        ) == (budget == "0")
        t = pl.read_parquet(out)
        assert t.height == 12 and set(t["grade_status"]) <= {"ok", "no_box", "no_answer", "timeout", "error"}
        assert (t["n_switched"] == t["switched_positions"].list.len()).all()
        assert (t["n_switched"] <= int(budget)).all() and t["policy"].unique().to_list() == [policy]
        runs.append(t)
    assert runs[1]["n_switched"].sum() > 0  # threshold 0: every position qualifies until the budget ends
    table = crosssample_table(runs, labels={"pair": "p", "dataset": "toy"})
    assert table.height == 4  # the budget-0 run stands for random's too
    zero = table.filter(pl.col("budget") == "0")
    assert sorted(zero["policy"]) == ["js", "random"] and zero["budget0_from"].to_list().count("js") == 1
    row = table.filter((pl.col("policy") == "js") & (pl.col("budget") == "3")).row(0, named=True)
    generated = runs[1]["n_response_tokens"].sum() + (runs[1]["finish_reason"] == "stop").sum()
    assert row["mean_switched"] == pytest.approx(runs[1]["n_switched"].mean())
    assert row["switched_share"] == pytest.approx(runs[1]["n_switched"].sum() / generated)
    assert row["ci_low"] <= row["accuracy"] <= row["ci_high"] and row["budget_tokens"] == 3


def test_the_table_reads_every_smaller_budgets_accuracy_off_one_regenerate_run():
    from tokenshift.tables import dense_curve

    # budget 2; a row's grades at budgets 0, 1, ... (its own last, holding for the budgets it did not spend)
    grades = {("a", 0): [0, 1, 1], ("a", 1): [0], ("b", 0): [1, 0], ("b", 1): [0, 0, 1]}
    run = pl.DataFrame(
        {
            "problem_id": [p for p, _ in grades],
            "sample_index": [j for _, j in grades],
            "correct": [bool(g[-1]) for g in grades.values()],
            "correct_by_budget": [[bool(x) for x in g] for g in grades.values()],
            "n_switched": [len(g) - 1 for g in grades.values()],
            "n_response_tokens": 10,
            "finish_reason": "stop",
            "switched_js": [[0.1] * (len(g) - 1) for g in grades.values()],
            "direction": "forward",
            "policy": "entropy",
            "budget": "2",
            "threshold": None,
        },
        schema_overrides={"switched_js": pl.List(pl.Float32), "threshold": pl.Float64},
    )
    accuracy, low, high = dense_curve(run)
    # by hand, avg@2 over problems a and b: k=0 (0+0)/2, (1+0)/2; k=1 (1+0)/2, (0+0)/2; k=2 (1+0)/2, (0+1)/2
    assert accuracy == pytest.approx([0.25, 0.25, 0.5])
    assert all(lo <= a <= hi for a, lo, hi in zip(accuracy, low, high))
    row = crosssample_table([run], labels={"pair": "p", "dataset": "toy"}).row(0, named=True)
    assert row["dense_accuracy"] == pytest.approx(accuracy) and row["accuracy"] == pytest.approx(accuracy[-1])
    lockstep = run.with_columns(pl.lit(None, dtype=pl.List(pl.Boolean)).alias("correct_by_budget"))
    assert dense_curve(lockstep) is None
    assert crosssample_table([lockstep], labels={"pair": "p", "dataset": "toy"})["dense_accuracy"].to_list() == [None]
    with pytest.raises(ValueError, match="correct_by_budget on some rows only"):
        dense_curve(run.with_columns(pl.when(pl.col("problem_id") == "a").then(pl.col("correct_by_budget"))))


def test_the_follow_ups_rule_and_the_authors_eos_removal_run_through_the_console_script(
    make_checkpoint, toy_problems, tmp_path
):
    base, rl = make_checkpoint("base", seed=0), make_checkpoint("rl", seed=1)
    out = tmp_path / "dlogp.parquet"
    follow_up = ["--policy", "dlogp", "--tau", "-0.3", "--injection", "extrapolate", "--gamma", "0.05"]
    args = ["--direction", "forward", "--budget", "4", "--injected-eos", "remove", *follow_up]
    r = cli(crosssample_cmd(base, rl, toy_problems, out, *args))
    assert r.returncode == 0, r.stderr
    t = pl.read_parquet(out)
    assert t["threshold"].unique().to_list() == [pytest.approx(0.3)]  # switch where Δlog p < -0.3
    assert (t["n_switched"] + t["n_removed"] <= 4).all() and t["n_switched"].sum() > 0
    assert "mean_removed" in crosssample_table([t], labels={"pair": "p", "dataset": "toy"}).columns
    # the run records what it drew from; as a run beside the grid it is a row of its own, marked so
    assert t["injection"].unique().to_list() == ["extrapolate"] and t["gamma"].unique().to_list() == [0.05]
    # seventh hostile pass (C4): a budgeted run was taken as the extrapolation run beside the grid
    with pytest.raises(ValueError, match=r"budget 4, injection extrapolate .* expected a forward run at budget all"):
        crosssample_table([t], extrapolation=[t], labels={"pair": "p", "dataset": "toy"})
    beside = t.with_columns(pl.lit("all").alias("budget"))  # as crosssample.gammas runs it: no budget
    table = crosssample_table([t], extrapolation=[beside], labels={"pair": "p", "dataset": "toy"})
    assert table["extrapolation"].to_list() == [False, True] and table["gamma"].to_list() == [0.05, 0.05]
    with pytest.raises(
        ValueError, match="two runs of direction forward, policy dlogp, budget all, injection extrapolate"
    ):
        crosssample_table([], extrapolation=[beside, beside])
    with pytest.raises(ValueError, match=r"injection sample .* expected a forward run at budget all"):
        crosssample_table([], extrapolation=[beside.with_columns(pl.lit("sample").alias("injection"))])


def test_bad_threshold_and_mismatched_tokenizers_exit_2_before_decoding(make_checkpoint, toy_problems, tmp_path):
    from helpers import other_tokenizer

    base, rl = make_checkpoint("base"), make_checkpoint("rl", seed=1)
    r = cli(
        crosssample_cmd(base, rl, toy_problems, tmp_path / "x.parquet", "--direction", "forward", "--threshold", "0.9")
    )
    assert r.returncode == 2 and "js threshold 0.9" in r.stderr and "Traceback" not in r.stderr
    r = cli(
        crosssample_cmd(base, rl, toy_problems, tmp_path / "x.parquet", "--direction", "reverse", "--percentile", "90")
    )
    assert r.returncode == 2 and "needs --scores" in r.stderr
    alien = make_checkpoint("alien", tokenizer=other_tokenizer(["Q:1+2=3.\\boxed{3}"] * 20))
    r = cli(
        crosssample_cmd(
            base, alien, toy_problems, tmp_path / "x.parquet", "--direction", "forward", "--threshold", "0.1"
        )
    )
    assert r.returncode == 2 and "token ids differ" in r.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_a_level_without_a_percentile_and_a_manifest_without_a_pair_exit_2(
    make_checkpoint, toy_problems, tmp_path, capsys
):
    from tokenshift.cli import main

    base, rl = make_checkpoint("base"), make_checkpoint("rl", seed=1)
    out = tmp_path / "x.parquet"
    args = crosssample_cmd(base, rl, toy_problems, out, "--direction", "forward")
    # --level applies to --percentile: with --threshold it was dropped, and the run switched at one
    # threshold for every row instead of the per-prompt one asked for
    assert main([*args, "--threshold", "0.1", "--level", "prompt"]) == 2
    assert "--level prompt" in capsys.readouterr().err
    manifest = tmp_path / "pair.json"
    manifest.write_text('{"base": "a", "rl": "b"}')
    assert main([*args, "--threshold", "0.1", "--pair", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert str(manifest) in err and "'pair'" in err and "Traceback" not in err
    assert not out.exists()


def test_a_budget_beyond_the_length_limit_equals_no_limit(pair):
    _, capped = run(pair, budget=1000, threshold=0.05, max_new=12)
    _, unlimited = run(pair, budget=None, threshold=0.05, max_new=12)
    assert [s.response_ids for s in capped] == [s.response_ids for s in unlimited]
    assert [s.extra["switched_positions"] for s in capped] == [s.extra["switched_positions"] for s in unlimited]


@torch.no_grad()
def test_the_preallocated_cache_gives_the_dynamic_caches_logits_through_row_drops(pair):
    from transformers import DynamicCache

    from tokenshift.generation import pad_rows, preallocated_cache

    model = pair[0]
    ids, mask = pad_rows(PROMPTS, 0)
    steps = 6
    caches = {
        "dynamic": DynamicCache(config=model.config),
        "preallocated": preallocated_cache(model, ids.shape[1] + steps),
    }
    assert caches["preallocated"] is not None
    logits = {}
    for name, cache in caches.items():
        rows, tok, attn, out = torch.arange(len(PROMPTS)), ids, mask, []
        for t in range(steps):
            pos = (attn.cumsum(-1) - 1).clamp(min=0)[:, -tok.shape[1] :]
            step = model(input_ids=tok, attention_mask=attn, position_ids=pos, past_key_values=cache).logits[:, -1]
            out.append((rows.clone(), step))
            tok = step.argmax(-1, keepdim=True)
            if t in (2, 4):  # drop rows as the decoder does when they finish, twice: kept rows move forward
                keep = torch.tensor([0, 2, 5] if t == 2 else [1, 2])
                cache.batch_select_indices(keep)
                rows, tok, attn = rows[keep], tok[keep], attn[keep]
            attn = torch.cat([attn, torch.ones(len(rows), 1, dtype=attn.dtype)], dim=1)
        logits[name] = out
    for (rows_d, d), (rows_p, p) in zip(logits["dynamic"], logits["preallocated"]):
        assert torch.equal(rows_d, rows_p) and torch.equal(d, p)
    with pytest.raises(RuntimeError, match="room for"):  # the decode ran past the room it was given
        two = torch.cat([tok, tok], dim=1)  # the cache holds the prompt and 5 steps: room for one more
        model(
            input_ids=two, attention_mask=torch.cat([attn, attn[:, -1:]], dim=1), past_key_values=caches["preallocated"]
        )


def test_models_with_sliding_window_layers_keep_their_own_cache():
    from tokenshift.generation import preallocated_cache

    sliding = tiny_model(0, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert preallocated_cache(sliding, 16) is None


def test_the_regenerate_engine_refuses_what_it_does_not_implement():
    from tokenshift.regenerate import check_rule

    # the authors' protocol: levels, the forced switch, removed EOS, their length rule, top-K, the blind control
    authors = {"force": True, "eos": "remove", "topk": 50, "length": "after_switch", "max_total": 400}
    check_rule(SwitchRule(policy="entropy", threshold=None, level="prompt", percentile=90, budget=4, **authors))
    check_rule(SwitchRule(policy="random", threshold=0.9, budget=4, **authors))
    check_rule(SwitchRule(policy="kl", threshold=0.1, budget=4))  # exact statistics: the whole distributions
    with pytest.raises(ValueError, match=r"^crosssample.injected_eos: .*; use engine lockstep$"):
        check_rule(SwitchRule(policy="js", threshold=0.1, budget=4, eos="drop"))
    with pytest.raises(ValueError, match=r"^crosssample.injection: "):
        check_rule(SwitchRule(policy="dlogp", threshold=0.3, injection="extrapolate", gamma=0.05))
    with pytest.raises(ValueError, match=r"^crosssample.statistic: .*policy kl's statistic"):
        check_rule(SwitchRule(policy="kl", threshold=0.1, budget=4, topk=50))


def test_the_regenerate_engine_refuses_an_injected_eos_drop_before_starting_an_engine(
    make_checkpoint, toy_problems, tmp_path
):
    base, rl = make_checkpoint("base", seed=0), make_checkpoint("rl", seed=1)
    out = tmp_path / "o.parquet"
    args = ["--direction", "forward", "--threshold", "0.1", "--budget", "2", "--engine", "regenerate"]
    r = cli(crosssample_cmd(base, rl, toy_problems, out, *args, "--injected-eos", "drop"))
    assert r.returncode == 2 and "crosssample.injected_eos" in r.stderr and "use engine lockstep" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_the_regenerate_engine_removes_an_injected_eos_as_lockstep_does():
    """What becomes of a row when the other model draws at its next position (``regenerate._inject``): the
    lockstep decoder's rules, one draw at a time (vLLM's draws come in between, so this is its bookkeeping)."""
    from tokenshift.regenerate import _inject, _Row

    eos, own = 0, 7
    remove = SwitchRule(threshold=0.1, budget=3, eos="remove", length="after_switch", max_total=40)

    def row(cap=10):
        return _Row([5, 6], seed=1, cap=cap, response=[1, 2], step_js=[0.0, 0.0])

    def inject(r, tok, rule, budget, forced=False):
        _inject(r, tok, own, 0.5, forced, rule=rule, budget=budget, stops={eos}, max_new=10, ceiling=40)

    r = row()
    inject(r, eos, remove, 3)  # removed, the draw spent: the next round writes on from the same prefix
    assert (r.response, r.n_removed, r.switched, r.finish, r.cap) == ([1, 2], 1, [], None, 13)
    inject(r, 9, remove, 3, forced=True)  # drawn again there: a switch, forced
    assert (r.response, r.switched, r.switched_js, r.n_forced, r.step_js[-1]) == ([1, 2, 9], [2], [0.5], 1, 0.5)
    inject(r, eos, remove, 3)  # removed, and the budget is spent (two removed, one switch): the generator's own stands
    assert (r.response, r.n_removed, r.switched, r.finish, r.cap) == ([1, 2, 9, own], 2, [2], None, 14)
    # no budget: a position takes REMOVE_RETRIES more draws after the first, then the generator's own token stands
    unlimited = SwitchRule(threshold=0.1, budget=None, eos="remove")
    r = row()
    for _ in range(REMOVE_RETRIES + 1):
        assert r.response == [1, 2]
        inject(r, eos, unlimited, math.inf)
    assert (r.response, r.n_removed) == ([1, 2, own], REMOVE_RETRIES + 1)
    # eos end: the injected EOS ends the response, a switch at len(response), its JS not a response position's
    r = row()
    inject(r, eos, SwitchRule(threshold=0.1, budget=3), 3)
    assert (r.response, r.switched, r.finish, r.step_js) == ([1, 2], [2], "stop", [0.0, 0.0])
    # a switch that fills the row's cap ends it by length
    r = row(cap=3)
    inject(r, 9, SwitchRule(threshold=0.1, budget=3), 3)
    assert (r.response, r.finish) == ([1, 2, 9], "length")


def test_a_percentile_of_another_sources_or_another_pairs_scores_is_refused(make_checkpoint, toy_problems, tmp_path):
    """Seventh hostile pass (C6): a forward run's percentile taken over the RL model's scored rollouts, or over
    another pair's, gave another threshold with exit 0."""
    import json

    import pyarrow.parquet as pq

    from tokenshift.checkpoints import checkpoint_label
    from tokenshift.io import MODELS_RECORD

    base, rl, other = make_checkpoint("base"), make_checkpoint("rl", seed=1), make_checkpoint("other", seed=2)
    scores = pl.DataFrame({"js": [0.0, 0.1, 0.2, 0.3], "source": ["rl"] * 4})
    path = tmp_path / "scores.parquet"
    scores.write_parquet(path)
    args = ["--direction", "forward", "--percentile", "50", f"--scores={path}"]
    r = cli(crosssample_cmd(base, rl, toy_problems, tmp_path / "x.parquet", *args))
    assert r.returncode == 2 and "holds scores of 'rl' responses, not the base model's" in r.stderr, r.stderr
    theirs = json.dumps({"base": checkpoint_label(base), "rl": checkpoint_label(other)})
    pq.write_table(
        scores.with_columns(pl.lit("base").alias("source")).to_arrow().replace_schema_metadata({MODELS_RECORD: theirs}),
        path,
    )
    r = cli(crosssample_cmd(base, rl, toy_problems, tmp_path / "x.parquet", *args))
    assert r.returncode == 2 and f"{path}: scores computed with" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x.parquet").exists()
