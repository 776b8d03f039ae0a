"""Where a toy GRPO step spends its time, and what divergence weighting adds to it.

On the embedded toy shape (random weights: time does not depend on them) with the toy RL build's
batch (16 prompts x 8 responses, 84 new tokens at most, 2 updates per batch), it times one step's
phases separately: sampling the batch, the no-grad forward passes (sampling policy, and the
reference for a weighting), the weighting itself, and the updates (forward + backward + AdamW);
then whole steps under ``none`` and ``js``. Prints, last, ``RESULT grpo_js_over_none <ratio>``
(seconds per step, same run). Under 2 minutes on 2 CPU cores.

    python benchmarks/bench_grpo.py
"""

from __future__ import annotations

import time

import torch
from bench_rollout import TOY  # the embedded pair's shape (run from benchmarks/ or as benchmarks/bench_grpo.py)
from transformers import Qwen2Config, Qwen2ForCausalLM

from tokenshift.advantages import weighted_advantages
from tokenshift.generation import SamplingConfig, sample
from tokenshift.train import (
    GRPOConfig,
    PromptItem,
    grpo,
    grpo_loss,
    logprobs_of,
    next_token_logits,
    rollout_batch,
    token_logprobs,
)

EOS = 0
BATCH, NEW, STEPS = 128, 84, 2


def model(seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**TOY, eos_token_id=EOS, pad_token_id=EOS)).eval()


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    torch.set_num_threads(2)
    policy, reference = model(0), model(1)
    prompts = [[5 + (i % 200), 7, 9, 11] for i in range(BATCH)]
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=NEW)
    t_sample, samples = timed(
        lambda: sample(policy, prompts, eos_id=EOS, pad_id=EOS, sampling=sampling, seed=0, batch_size=BATCH)
    )
    ids, attn, mask = rollout_batch(prompts, samples, pad_id=EOS, eos_id=EOS)
    adv = torch.randn(BATCH)
    with torch.no_grad():
        t_fwd, logits = timed(lambda: next_token_logits(policy, ids, attn))
        ref_logits = next_token_logits(reference, ids, attn)
        old_logp = logprobs_of(logits, ids)
    t_weight, _ = timed(lambda: weighted_advantages(logits, ref_logits, adv, mask, mode="js"))
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)

    def update():
        loss = grpo_loss(token_logprobs(policy, ids, attn), old_logp, adv[:, None], mask, clip_eps=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t_update, _ = timed(update)
    tokens = int(mask.sum())
    print(f"one batch: {BATCH} responses, {tokens} response tokens")
    print(f"  sampling {t_sample:.2f} s; a no-grad forward {t_fwd:.2f} s; js weighting {t_weight:.3f} s")
    print(f"  one update (forward + backward + AdamW) {t_update:.2f} s")
    print(f"  plain GRPO step ~ sampling + 1 forward + 2 updates = {t_sample + t_fwd + 2 * t_update:.2f} s")
    print(f"  weighted: + 1 forward (reference) + weighting = {t_fwd + t_weight:.2f} s more")

    items = [PromptItem(p, "0") for p in prompts[:16]]
    per_step = {}
    for mode in ("none", "js"):
        cfg = GRPOConfig(steps=STEPS, sampling=sampling, seed=0, advantage=mode)
        t0 = time.perf_counter()
        grpo(
            model(0),
            items,
            lambda r, g: [float(len(x) % 2) for x in r],
            cfg,
            pad_id=EOS,
            eos_id=EOS,
            reference=reference,
            progress=False,
        )
        per_step[mode] = (time.perf_counter() - t0) / STEPS
        print(f"GRPO {mode}: {per_step[mode]:.2f} s per step")
    print(f"RESULT grpo_js_over_none {per_step['js'] / per_step['none']:.2f}")


if __name__ == "__main__":
    main()
