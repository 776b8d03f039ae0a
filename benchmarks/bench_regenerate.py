"""Regenerate against lockstep at temperature 1 on a finished default study's toy pair (issue 25.3, 25.5).

For each direction and budget, the same cross-sampling job (the study's own settings: policy ``js`` at
the 90th percentile of the scored rollouts, avg@4, 96 new tokens) runs once with ``--engine lockstep``
and once with ``--engine regenerate`` (vLLM, float32, eager), alternating, in this one process (so the
two vLLM engines start once), on the first ``--problems`` problems. Prints per cell both engines'
accuracy with its 95% CI, whether the CIs overlap, and the wall time of each job; then the forward
recovery and reverse loss of each engine; then, for the largest budget, whether the regenerate run's
dense curve (``dense_accuracy``) equals its separate runs at the smaller budgets. The two engines draw
different noise (vLLM's against lockstep's inverse-CDF uniforms), so their accuracies agree only within
their CIs. ``RESULT`` lines last.

    python benchmarks/bench_regenerate.py /path/to/finished/study [--problems 100] [--budgets 0,1,2,4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl

from tokenshift.cli import main as cli
from tokenshift.stats import mean_ci
from tokenshift.tables import crosssample_table

VLLM = ["--vllm-dtype", "float32", "--vllm-enforce-eager"]


def command(study: Path, direction: str, budget: int, problems: int, engine: str, out: Path) -> list[str]:
    """The default study's cross-sampling job for (direction, js, budget), its flags as the workflow writes
    them (``snakemake -n -p``), on ``engine``."""
    scores = study / "results" / "toy" / "toy" / "scores" / f"{'base' if direction == 'forward' else 'rl'}.parquet"
    model = study / "resources" / "models"
    return [
        "crosssample",
        *("--base", str(model / "toy-base.json"), "--rl", str(model / "toy-rl.json")),
        *("--pair", str(study / "resources" / "pairs" / "toy.json")),
        *("--dataset", str(study / "resources" / "datasets" / "toy.parquet")),
        *("--direction", direction, "--policy", "js", "--budget", str(budget)),
        *(["--percentile=90", f"--scores={scores}"] if budget else []),
        *("--n=4", "--temperature=1", "--top-p=1", "--max-new-tokens=96", "--seed=0"),
        *("--template={question}", "--no-chat-template", "--opening=", "--no-strip"),
        *("--mode=strict", "--timeout-s=5", f"--engine={engine}", f"--n-problems={problems}", "--threads=1"),
        *("--problems-per-shard=256", "--no-force-switch", "--injected-eos=end", "--injection=sample"),
        *("--length-rule=response", "--statistic=exact", "-q"),
        *(VLLM if engine == "regenerate" else ["--batch-size=1024"]),
        *("--out", str(out)),
    ]


def accuracy(run: pl.DataFrame) -> tuple[float, float, float]:
    per = run.group_by("problem_id").agg(pl.col("correct").mean()).sort("problem_id")
    return mean_ci(per["correct"].to_numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="a finished default study's directory (resources/, results/)")
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--budgets", default="0,1,2,4")
    args = ap.parse_args()
    study, budgets = args.study.resolve(), [int(b) for b in args.budgets.split(",")]
    out = Path(tempfile.mkdtemp(prefix="bench-regenerate-"))
    cells = {}
    for direction in ("forward", "reverse"):
        for budget in budgets:
            for engine in ("lockstep", "regenerate"):
                path = out / f"{direction}-{budget}-{engine}.parquet"
                t0 = time.perf_counter()
                if cli(command(study, direction, budget, args.problems, engine, path)) != 0:
                    raise SystemExit(f"{engine} {direction} budget {budget} failed")
                cells[direction, budget, engine] = (pl.read_parquet(path), time.perf_counter() - t0)
                run, seconds = cells[direction, budget, engine]
                acc, lo, hi = accuracy(run)
                print(
                    f"{direction} budget {budget} {engine}: {acc:.3f} [{lo:.3f}, {hi:.3f}], "
                    f"{run['n_switched'].mean():.2f} switched a response, {seconds:.0f} s",
                    flush=True,
                )
    results = []
    for (direction, budget, engine), (_, seconds) in cells.items():
        if engine == "lockstep":
            (_, alo, ahi), (_, blo, bhi) = (
                accuracy(cells[direction, budget, e][0]) for e in ("lockstep", "regenerate")
            )
            overlap = alo <= bhi and blo <= ahi
            results += [
                (f"{direction}_{budget}_ci_overlap", float(overlap)),
                (
                    f"{direction}_{budget}_regenerate_over_lockstep_time",
                    cells[direction, budget, "regenerate"][1] / seconds,
                ),
            ]
    base, rl = accuracy(cells["forward", 0, "regenerate"][0])[0], accuracy(cells["reverse", 0, "regenerate"][0])[0]
    for engine in ("lockstep", "regenerate"):
        b0, r0 = accuracy(cells["forward", 0, engine][0])[0], accuracy(cells["reverse", 0, engine][0])[0]
        top = max(budgets)
        fwd, rev = accuracy(cells["forward", top, engine][0])[0], accuracy(cells["reverse", top, engine][0])[0]
        recovery, loss = (fwd - b0) / (r0 - b0), (r0 - rev) / (r0 - b0)
        print(f"{engine}: forward recovers {recovery:.0%} of the gap at budget {top}, reverse loses {loss:.0%}")
        results += [(f"{engine}_forward_recovery", recovery), (f"{engine}_reverse_loss", loss)]
    for direction in ("forward", "reverse"):
        top = max(budgets)
        dense = crosssample_table([cells[direction, top, "regenerate"][0]])["dense_accuracy"][0].to_list()
        separate = [accuracy(cells[direction, b, "regenerate"][0])[0] for b in budgets]
        same = all(abs(dense[b] - s) < 1e-12 for b, s in zip(budgets, separate))
        print(f"{direction}: the budget-{top} run's dense curve {[round(x, 3) for x in dense]}; separate runs {same}")
        results.append((f"{direction}_dense_equals_separate_runs", float(same)))
    print(f"(base alone {base:.3f}, RL alone {rl:.3f}, regenerate's budget-0 runs)")
    for name, value in results:
        print(f"RESULT {name} {value:.3f}")


if __name__ == "__main__":
    main()
