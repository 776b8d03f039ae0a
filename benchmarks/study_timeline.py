"""Where a finished workflow run's time went, per rule, from its Snakemake log.

    python benchmarks/study_timeline.py RUN_DIR [LOG]

RUN_DIR is the directory the run worked in; LOG is its Snakemake log (default: the newest under
RUN_DIR/.snakemake/log). Snakemake stamps each job's start and finish to the second; this prints,
per rule, the jobs, their summed and mean wall time, the threads they held, and when the rule's
first job started and its last finished (seconds from the run's first start); then the run's wall
time and how many of the provided cores its jobs kept busy on average. Where a rule has
``benchmark:`` files (RUN_DIR/logs/benchmarks), their CPU seconds are summed beside it.
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^    jobid: (\d+)$")
THREADS = re.compile(r"^    threads: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")
CORES = re.compile(r"^Provided cores: (\d+)$")


def jobs(log: str) -> tuple[list[dict], int]:
    """Each job of the log as ``{rule, start, end, threads}`` (seconds since the epoch), and the cores."""
    stamp, cores, open_job, out = None, 1, None, {}
    for line in log.splitlines():
        if m := STAMP.match(line):
            stamp = datetime.strptime(m[1], "%a %b %d %H:%M:%S %Y").timestamp()
        elif m := CORES.match(line):
            cores = int(m[1])
        elif m := START.match(line):
            open_job = {"rule": m[1], "start": stamp, "threads": 1}
        elif open_job is not None and (m := THREADS.match(line)):
            open_job["threads"] = int(m[1])
        elif open_job is not None and (m := JOBID.match(line)):
            out[m[1]] = open_job
        elif m := FINISHED.match(line):
            if m[1] in out:
                out[m[1]]["end"] = stamp
        elif not line.startswith("    "):  # the job's indented block has ended
            open_job = None
    return [j for j in out.values() if "end" in j and j["rule"] != "all"], cores


def benchmark_cpu(run_dir: Path) -> dict[str, float]:
    """CPU seconds per benchmarked rule folder (logs/benchmarks/<folder>/...), from Snakemake's tsv files."""
    cpu: dict[str, float] = defaultdict(float)
    for tsv in (run_dir / "logs" / "benchmarks").rglob("*.tsv"):
        rows = list(csv.DictReader(tsv.read_text().splitlines(), delimiter="\t"))
        if rows and rows[-1].get("cpu_time") not in (None, "", "NA"):
            cpu[tsv.relative_to(run_dir / "logs" / "benchmarks").parts[0]] += float(rows[-1]["cpu_time"])
    return dict(cpu)


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    log = Path(argv[1]) if len(argv) > 1 else max((run_dir / ".snakemake" / "log").glob("*.log"))
    done, cores = jobs(log.read_text())
    t0, t1 = min(j["start"] for j in done), max(j["end"] for j in done)
    by_rule: dict[str, list[dict]] = defaultdict(list)
    for j in done:
        by_rule[j["rule"]].append(j)
    print(f"{'rule':34s} {'jobs':>4s} {'sum s':>7s} {'mean s':>7s} {'thr':>3s} {'first':>6s} {'last':>6s}")
    for rule, js in sorted(by_rule.items(), key=lambda kv: min(j["start"] for j in kv[1])):
        walls = [j["end"] - j["start"] for j in js]
        print(
            f"{rule:34s} {len(js):4d} {sum(walls):7.0f} {sum(walls) / len(js):7.1f} {js[0]['threads']:3d} "
            f"{min(j['start'] for j in js) - t0:6.0f} {max(j['end'] for j in js) - t0:6.0f}"
        )
    busy = sum((j["end"] - j["start"]) * min(j["threads"], cores) for j in done)
    wall = t1 - t0
    print(f"\nwall {wall:.0f} s ({wall / 60:.1f} min), {len(done)} jobs", end="; ")
    print(f"cores busy on average {busy / wall:.2f} of {cores}")
    if cpu := benchmark_cpu(run_dir):
        print("benchmark CPU seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(cpu.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
