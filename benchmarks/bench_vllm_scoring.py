"""Top-K scoring through vLLM against the HF scorer on a toy pair: time, and the largest difference.

Both backends score the same responses (the base model's: ``--rollouts``, or sampled here by the HF backend
from ``--problems`` eval problems x ``--n``, the default study's sampling) under ``scoring.statistic``
``topk:K`` (``--k``), through ``tokenshift.scoring.run_scoring``, the stage's own entry point: scored
response tokens per second. HF reads both models in float32 (its CPU dtype); vLLM runs both engines in
float32, eager (``vllm_enforce_eager``: the toy model gains nothing from compiling, bench_vllm.py), their
start timed apart (the engines are started first, then reused by the timed run). Then the largest
absolute difference between the two tables over each top-K column. Prints, last, ``RESULT <measure> <value>``.

    python benchmarks/bench_vllm_scoring.py --base resources/models/toy-base.json \\
        --rl resources/models/toy-rl.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tokenshift.datasets import Problem, PromptConfig
from tokenshift.registry import TOPK_SCORE_COLUMNS
from tokenshift.rollout import run_rollouts
from tokenshift.scoring import run_scoring, start_vllm_engines
from tokenshift.settings import RolloutConfig, SamplingConfig, ScoringConfig
from tokenshift.tokenizer import check_pair
from tokenshift.toy.check import build_settings
from tokenshift.toy.task import problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the toy base checkpoint or its manifest")
    ap.add_argument("--rl", required=True, help="the toy RL checkpoint or its manifest")
    ap.add_argument("--rollouts", help="a rollout table of the pair to score (sampled here when not given)")
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--k", type=int, default=50, help="K of the topk:K statistic")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-scoring-"))
    pair = tmp / "pair.json"
    check_pair("bench", Path(args.base), Path(args.rl), pair)
    rollouts = Path(args.rollouts) if args.rollouts else tmp / "rollouts.parquet"
    if not args.rollouts:
        task = build_settings(args.base)
        evals = [Problem(p.problem_id, p.prompt, str(p.answer)) for p in problems(task.task, "eval", args.problems)]
        run_rollouts(
            args.base,
            evals,
            rollouts,
            prompt=PromptConfig(template="{question}", chat_template=False),
            sampling=SamplingConfig(n=args.n, temperature=1.0, seed=0),
            cfg=RolloutConfig(threads=args.threads),
            progress=False,
        )
    inputs = (args.base, args.rl, pair, rollouts, "base")
    hf_cfg = ScoringConfig(statistic=f"topk:{args.k}", threads=args.threads)
    t0 = time.perf_counter()
    hf = run_scoring(*inputs, tmp / "hf.parquet", cfg=hf_cfg)
    hf_s = time.perf_counter() - t0
    print(f"hf: {hf.height} tokens in {hf_s:.1f} s, {hf.height / hf_s:.0f} tok/s", flush=True)

    import polars as pl

    vl_cfg = ScoringConfig(backend="vllm", statistic=f"topk:{args.k}", threads=args.threads)
    engine = RolloutConfig(vllm_dtype="float32", vllm_enforce_eager=True, threads=args.threads)
    table = pl.read_parquet(rollouts)
    rows = list(zip(table["prompt_ids"].to_list(), table["response_ids"].to_list()))
    t0 = time.perf_counter()
    start_vllm_engines({"base": args.base, "rl": args.rl}, rows, vl_cfg, engine)  # run_scoring reuses them
    start = time.perf_counter() - t0
    t0 = time.perf_counter()
    vl = run_scoring(*inputs, tmp / "vllm.parquet", cfg=vl_cfg, engine=engine)
    vl_s = time.perf_counter() - t0
    print(f"vllm: engines {start:.0f} s, {vl.height} tokens in {vl_s:.1f} s, {vl.height / vl_s:.0f} tok/s")
    results = {
        "hf_tokens_per_s": hf.height / hf_s,
        "vllm_engine_start_s": start,
        "vllm_tokens_per_s": vl.height / vl_s,
        "vllm_over_hf": hf_s / vl_s,
    }
    for c in (*TOPK_SCORE_COLUMNS, "logp_base", "logp_rl"):
        a, b = hf[c].to_numpy(), vl[c].to_numpy()
        finite = np.isfinite(a) & np.isfinite(b)
        results[f"max_abs_diff_{c}"] = float(np.abs(a[finite] - b[finite]).max())
        results[f"share_infinite_apart_{c}"] = float(np.mean(np.isinf(a) != np.isinf(b)))
    for name, value in results.items():
        print(f"RESULT {name} {value:.4g}")


if __name__ == "__main__":
    main()
