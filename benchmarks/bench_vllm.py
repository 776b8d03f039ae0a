"""Rollout throughput of the vLLM backend against the HF one on a real toy checkpoint, and their greedy agreement.

Both backends sample the toy task's eval problems (``--problems``, ``--n`` samples each, the config's default
sampling: temperature 1, 96 new tokens, seed 0) through ``make_backend(...).generate``: response tokens/s, EOS
included in neither. vLLM runs in float32 (the HF backend's dtype on the CPU), eager (``vllm_enforce_eager``)
and compiled; its engine start is timed apart. Then greedy decoding on the same problems: the share of
responses whose token ids differ between the backends, and at the first differing position of each, the HF
model's gap between its top two log-probs (a near-tie there explains a flip by kernel order). With
``--hf-rollouts`` (the HF backend's rollout table of the same model, problems and sampling, e.g. the default
study's), the compiled vLLM run's avg@n is graded and set against that table's avg@n and its 95% bootstrap CI
over problems. With ``--random-shape 100m`` both backends run a randomly initialised ~100M-parameter Qwen2
shape (``bench_crosssample.QWEN_100M``: 8 layers, hidden 512, vocabulary 151936) with the toy checkpoint's
tokenizer and problems: the throughput of a model whose step is not all scheduling (no avg@n: its answers
are noise; no greedy comparison: the HF backend draws within the tokenizer's ids, vLLM over all 151936
embedding rows, where random weights put the argmax). Prints, last, ``RESULT <measure> <value>``.

    python benchmarks/bench_vllm.py --model resources/models/toy-base.json \
        --hf-rollouts results/toy/toy/rollouts/base.parquet
    python benchmarks/bench_vllm.py --model resources/models/toy-base.json --random-shape 100m --problems 16 --n 2
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from tokenshift.datasets import PromptConfig, format_prompt
from tokenshift.generation import parting_gap
from tokenshift.rollout import make_backend
from tokenshift.settings import RolloutConfig, SamplingConfig
from tokenshift.toy.check import build_settings
from tokenshift.toy.task import problems


def timed(backend, prompts, keys) -> tuple[list, float]:
    t0 = time.perf_counter()
    out = backend.generate(prompts, keys)
    return out, sum(len(s.response_ids) for s in out) / (time.perf_counter() - t0)


def avg_at_n(path, tokenizer, evals, keys, drawn) -> dict[str, float]:
    """vLLM's avg@n (graded as the rollout stage grades) against the HF table's, with its 95% CI over problems."""
    import polars as pl

    from tokenshift.grading import grade_one
    from tokenshift.stats import mean_ci

    gold = {p.problem_id: str(p.answer) for p in evals}
    texts = tokenizer.batch_decode([s.response_ids for s in drawn], skip_special_tokens=True)
    correct = [grade_one(t, gold[pid]).correct for t, (pid, _) in zip(texts, keys)]
    ours = pl.DataFrame({"problem_id": [k[0] for k in keys], "correct": correct})
    theirs = pl.read_parquet(path).filter(pl.col("problem_id").is_in(list(gold)))
    per_problem = theirs.group_by("problem_id").agg(pl.col("correct").cast(pl.Float64).mean())["correct"]
    mean, low, high = mean_ci(per_problem.to_list())
    vllm = float(ours["correct"].mean())
    print(f"avg@n: vllm {vllm:.3f}, hf {mean:.3f} [{low:.3f}, {high:.3f}] ({theirs.height} rows)")
    return {"avg_at_n_vllm": vllm, "avg_at_n_hf": mean, "avg_at_n_hf_ci_low": low, "avg_at_n_hf_ci_high": high}


def random_checkpoint(toy: str, shape: dict) -> str:
    """A copy of the toy checkpoint (tokenizer, generation config, toy build settings) whose weights are a
    randomly initialised Qwen2 of ``shape``, in a temporary folder."""
    import shutil
    import tempfile
    from pathlib import Path

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tokenshift.checkpoints import resolve_checkpoint

    out = Path(tempfile.mkdtemp(prefix="bench-vllm-")) / "model"
    shutil.copytree(resolve_checkpoint(Path(toy)), out)
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**shape, attn_implementation="sdpa")).save_pretrained(out)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a toy checkpoint or its manifest")
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hf-rollouts", help="the HF backend's rollout parquet of the same model, problems and sampling")
    ap.add_argument("--random-shape", choices=["100m"], help="random weights of this shape, the toy's tokenizer")
    args = ap.parse_args()

    task = build_settings(args.model)
    if args.random_shape:
        from bench_crosssample import QWEN_100M

        args.model = random_checkpoint(args.model, QWEN_100M)
    evals = problems(task.task, "eval", args.problems)
    sampled = SamplingConfig(n=args.n, temperature=1.0, seed=0)  # the default study's sampling
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
        drawn, rate = timed(backend, prompts, keys)
        print(f"vllm {name}: engine start {start:.0f} s, {rate:.0f} tok/s", flush=True)
        results |= {
            f"vllm_{name}_start_s": start,
            f"vllm_{name}_tokens_per_s": rate,
            f"vllm_{name}_over_hf": rate / hf_rate,
        }

    if args.hf_rollouts:
        results |= avg_at_n(args.hf_rollouts, hf.tokenizer, evals, keys, drawn)

    if args.random_shape:  # the HF backend draws within the tokenizer's ids, vLLM over every embedding row
        print(f"greedy: not compared (random weights put the argmax past the tokenizer's {len(hf.tokenizer)} ids)")
        return report(results)
    greedy = dataclasses.replace(sampled, n=1, temperature=0)
    keys1 = [(p.problem_id, 0) for p in evals]
    a = make_backend(args.model, RolloutConfig(backend="hf", threads=args.threads), greedy).generate(once, keys1)
    b = make_backend(args.model, dataclasses.replace(vllm, vllm_enforce_eager=True), greedy).generate(once, keys1)
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if x.response_ids != y.response_ids]
    gaps = [parting_gap(hf.model, once[i], a[i].response_ids, b[i].response_ids) for i in differ]
    reasons = np.mean([x.finish_reason == y.finish_reason for x, y in zip(a, b)])
    print(f"greedy: {len(differ)} of {len(a)} responses differ; top-two gaps there: {np.round(gaps, 5).tolist()}")
    results |= {
        "greedy_mismatch_rate": len(differ) / len(a),
        "greedy_mismatch_max_top2_gap": max(gaps, default=0.0),
        "greedy_finish_reason_agreement": float(reasons),
    }
    report(results)


def report(results: dict[str, float]) -> None:
    for name, value in results.items():
        print(f"RESULT {name} {value:.4g}")


if __name__ == "__main__":
    main()
