"""Rollout throughput of the vLLM backend against the HF one on a real toy checkpoint, and their greedy agreement.

Both backends sample the toy task's eval problems (``--problems``, ``--n`` samples each, temperature 1, the
build's ``max_new_tokens``) through ``make_backend(...).generate``: response tokens/s, EOS included in neither.
vLLM runs in float32 (the HF backend's dtype on the CPU), eager (``vllm_enforce_eager``) and compiled; its
engine start is timed apart. Then greedy decoding on the same problems: the share of responses whose token ids
differ between the backends, and at the first differing position of each, the HF model's gap between its top
two log-probs (a near-tie there explains a flip by kernel order). Prints, last, ``RESULT <measure> <value>``.

    python benchmarks/bench_vllm.py --model resources/models/toy-base.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from tokenshift.datasets import PromptConfig, format_prompt
from tokenshift.rollout import make_backend
from tokenshift.settings import RolloutConfig, SamplingConfig
from tokenshift.toy.check import build_settings
from tokenshift.toy.task import problems


def timed(backend, prompts, keys) -> tuple[list, float]:
    t0 = time.perf_counter()
    out = backend.generate(prompts, keys)
    return out, sum(len(s.response_ids) for s in out) / (time.perf_counter() - t0)


def first_gap(model, prompt, a, b) -> float:
    k = next(i for i, (x, y) in enumerate(zip([*a, -1], [*b, -2])) if x != y)
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + list(a[:k])])).logits[0, -1]
    top = torch.log_softmax(logits.double(), -1).topk(2).values
    return float(top[0] - top[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a toy checkpoint or its manifest")
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    task = build_settings(args.model)
    evals = problems(task.task, "eval", args.problems)
    sampled = SamplingConfig(n=args.n, temperature=1.0, max_new_tokens=task.max_new_tokens, seed=0)
    hf = make_backend(args.model, RolloutConfig(backend="hf", threads=args.threads), sampled)
    prompt = PromptConfig(template="{question}", chat_template=False)
    once = [format_prompt(hf.tokenizer, p.prompt, prompt) for p in evals]
    prompts = [ids for ids in once for _ in range(args.n)]
    keys = [(p.problem_id, j) for p in evals for j in range(args.n)]
    _, hf_rate = timed(hf, prompts, keys)
    print(f"hf: {hf_rate:.0f} tok/s ({len(prompts)} samples)", flush=True)
    results = {"hf_tokens_per_s": hf_rate}
    vllm = RolloutConfig(backend="vllm", vllm_dtype="float32", threads=args.threads)
    for name, cfg in (("eager", dataclasses.replace(vllm, vllm_enforce_eager=True)), ("compiled", vllm)):
        t0 = time.perf_counter()
        backend = make_backend(args.model, cfg, sampled)
        start = time.perf_counter() - t0
        timed(backend, prompts[:8], keys[:8])  # warm-up
        _, rate = timed(backend, prompts, keys)
        print(f"vllm {name}: engine start {start:.0f} s, {rate:.0f} tok/s", flush=True)
        results |= {
            f"vllm_{name}_start_s": start,
            f"vllm_{name}_tokens_per_s": rate,
            f"vllm_{name}_over_hf": rate / hf_rate,
        }

    greedy = dataclasses.replace(sampled, n=1, temperature=0)
    keys1 = [(p.problem_id, 0) for p in evals]
    a = make_backend(args.model, RolloutConfig(backend="hf", threads=args.threads), greedy).generate(once, keys1)
    b = make_backend(args.model, dataclasses.replace(vllm, vllm_enforce_eager=True), greedy).generate(once, keys1)
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if x.response_ids != y.response_ids]
    gaps = [first_gap(hf.model, once[i], a[i].response_ids, b[i].response_ids) for i in differ]
    reasons = np.mean([x.finish_reason == y.finish_reason for x, y in zip(a, b)])
    print(f"greedy: {len(differ)} of {len(a)} responses differ; top-two gaps there: {np.round(gaps, 5).tolist()}")
    results |= {
        "greedy_mismatch_rate": len(differ) / len(a),
        "greedy_mismatch_max_top2_gap": max(gaps, default=0.0),
        "greedy_finish_reason_agreement": float(reasons),
    }
    for name, value in results.items():
        print(f"RESULT {name} {value:.4g}")


if __name__ == "__main__":
    main()
