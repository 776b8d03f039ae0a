"""How OpenMP's threads wait, timed on a toy base build: torch's default (spin, then sleep) against
``OMP_WAIT_POLICY=PASSIVE`` (sleep at once), each in a fresh process, alternating.

    python benchmarks/bench_omp_wait.py [--steps 40] [--rounds 3] [--busy]

Each run builds the toy base model of the default shape (``ToyBuildConfig``, 2 threads) for ``--steps``
pretraining steps and prints its wall time and final loss, which must be the same bit for bit under both
settings (how threads wait changes no arithmetic). ``--busy`` keeps one more process spinning on the CPU
beside each build, as other work on a shared machine does. The last line reads
``RESULT omp_passive_over_default <ratio>`` (the mean wall times'; below 1: passive is faster).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

BUILD = """
import dataclasses, sys, tempfile, time
from tokenshift.toy.build import build_base
from tokenshift.toy.config import ToyBuildConfig
cfg = dataclasses.replace(ToyBuildConfig(), pretrain_steps=int(sys.argv[1]))
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    info = build_base(d + "/m", cfg, progress=False)
    print(time.perf_counter() - t, info["final_loss"])
"""


def one_build(steps: int, passive: bool, busy: bool) -> tuple[float, float]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        out = subprocess.run(
            [sys.executable, "-c", BUILD, str(steps)], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return float(out[0]), float(out[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--busy", action="store_true", help="one more busy process beside each build")
    args = p.parse_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    losses = set()
    for _ in range(args.rounds):
        for passive in (False, True):
            seconds, loss = one_build(args.steps, passive, args.busy)
            times[passive].append(seconds)
            losses.add(loss)
            print(f"{'passive' if passive else 'default'}: {seconds:.2f} s, final loss {loss!r}", flush=True)
    if len(losses) != 1:
        sys.exit(f"the final losses differ between runs: {sorted(losses)}")
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    print(f"{time.strftime('%Y-%m-%d %H:%M')} the same final loss in every run")
    print(f"RESULT omp_passive_over_default {mean[True] / mean[False]:.2f}")


if __name__ == "__main__":
    main()
