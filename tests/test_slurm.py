"""`snakemake --profile slurm all` on a real SLURM cluster, as docs/cluster.md says, checked through SLURM's records.

A single-node cluster (tests/slurm_cluster.py) starts from nothing; the profile is installed with
`tokenshift profile install slurm`; the workflow runs on a reduced default config in which the toy
base model asks for a GPU, so its rollouts, scoring and cross-sampling queue for the node's GPU
while everything else stays on the CPU partition. The outputs must equal those of a local run,
and a job cancelled mid-run, once it has written a shard, must be retried and resume from that
shard with nothing lost. Every run is wrapped in a hard `timeout -s KILL`: without accounting a
misconfigured status check would wait forever.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import REPO, run, tokenshift_cmd
from helpers import DEFAULT, snakemake
from slurm_cluster import Cluster, missing

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CONFIG = copy.deepcopy(DEFAULT)
CONFIG["toy"].update(pretrain_steps=30, grpo_steps=2, n_traces=1000, n_train_problems=300)
CONFIG["datasets"]["toy"]["n_problems"] = 24
CONFIG["rollout"].update(problems_per_shard=8)
CONFIG["crosssample"].update(budgets=[0, 2], policies=["js"], n_problems=12, problems_per_shard=4)
CONFIG["models"]["toy-base"]["resources"] = {"gpus": 1}  # so GPU jobs exist, and queue for the node's one GPU
# the toy training analyses, small (CPU jobs like the toy builds); the SFT pair's jobs are those of any pair
CONFIG["advantages"] = dict(
    variants=["none", "js"], seeds=[0], steps=1, prompts_per_step=2, group_size=2, eval_problems=8, eval_samples=1
)
CONFIG["pairs"] = [p for p in CONFIG["pairs"] if p["kind"] != "sft"]
CONFIG["models"].pop("toy-sft")
# on the cluster the rollouts and cross-samples are split over two jobs each: the tables gathered
# from their parts must be those the local run writes in one job
SPLIT = copy.deepcopy(CONFIG)
SPLIT["rollout"]["jobs"] = 2
SPLIT["crosssample"]["jobs"] = 2
# of each: jobs that load toy-base; the default study's extrapolated run (crosssample.gammas) loads both models
MODEL_RUNS_ON_GPU = {"rollout": 2, "score": 2, "crosssample": 8, "crosssample_extrapolated": 2}
GPU_RULES = set(MODEL_RUNS_ON_GPU)


def _skip_reason(accounting: bool) -> str | None:
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root"
    gone = missing(accounting)
    if gone:
        return f"Debian packages {gone} are not installed (.ci/run installs them)"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    return None


def workdir(root: Path, config: dict) -> Path:
    (root / "config").mkdir(parents=True)
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    if reason := _skip_reason(accounting=False):
        pytest.skip(reason)
    work = workdir(tmp_path_factory.mktemp("local"), CONFIG)
    r = snakemake(work, "--cores", "2", "all", timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work


def install_profile(xdg: Path, *extra: str, cluster: Cluster | None = None) -> Path:
    """docs/cluster.md's command, into a private XDG_CONFIG_HOME (on the cluster's submit node, where given)."""
    site = ["--partition", "cpu", "--gpu-partition", "gpu", "--gpus-per-node", "1", "--status-delay", "2"]
    r = run(
        tokenshift_cmd() + ["profile", "install", "slurm", *site, "--jobs", "4", *extra],
        env={**(cluster.env if cluster else {}), "XDG_CONFIG_HOME": str(xdg)},
    )
    assert r.returncode == 0, r.stderr
    return xdg / "snakemake" / "slurm"


def run_on_cluster(cluster: Cluster, work: Path, xdg: Path, *targets: str, timeout: int = 1200):
    """`snakemake --profile slurm ...` from the workflow directory, as a user types it."""
    bindir = str(Path(sys.executable).parent)
    env = {**cluster.env, "XDG_CONFIG_HOME": str(xdg), "PATH": bindir + os.pathsep + cluster.env["PATH"]}
    cmd = [
        "timeout",
        "-s",
        "KILL",
        str(timeout),
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--profile",
        "slurm",
        *targets,
    ]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)


def cancel_after_a_shard(cluster: Cluster, work: Path, stop: threading.Event, cancelled: list[dict]) -> None:
    """scancel the first cross-sampling job seen running with one of its shards written and one to go.

    Part 1-of-2 of each run draws two of its three shards (``Part.share``); the job is cancelled as
    soon as its first shard's record exists, so its retry has a shard to resume from and one to draw.
    """
    while not stop.is_set() and not cancelled:
        out = subprocess.run(
            ["squeue", "-h", "-t", "R", "-o", "%i|%k"], env=cluster.env, capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            job, comment = line.split("|", 1)
            prefix = "rule_crosssample_wildcards_"
            if not (comment.startswith(prefix) and comment.endswith("_1-of-2")):
                continue
            pair, dataset, direction, policy, budget, item = comment.removeprefix(prefix).split("_")
            run = Path(pair, dataset, "crosssample", direction, policy, f"budget-{budget}")
            part = work / "results" / run.with_name(run.name + ".parts") / f"{item}.parquet"
            shards = part.with_name(part.name + ".shards")
            while not stop.is_set() and not part.exists():
                written = sorted(p.stem for p in shards.glob("shard-*.json"))
                if written:
                    subprocess.run(["scancel", job], env=cluster.env, check=True)
                    log = work / "logs" / "crosssample" / pair / dataset / direction / policy / f"budget-{budget}"
                    cancelled.append({"id": job, "part": part, "shards": written, "log": log / f"{item}.log"})
                    return
                time.sleep(0.02)  # a shard of this run takes far longer
        time.sleep(0.3)


def tables(root: Path) -> dict[str, pl.DataFrame]:
    """Every table of a run (the parts a split run gathers from aside), without wall-clock columns
    (a GRPO history records each step's seconds)."""
    return {
        str(p.relative_to(root)): pl.read_parquet(p).drop("seconds", strict=False)
        for p in sorted((root / "results").rglob("*.parquet"))
        if ".parts" not in str(p)
    }


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, local_run):
    if reason := _skip_reason(accounting=True):
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    with Cluster(root / "cluster", accounting=True) as cluster:
        xdg = root / "xdg"
        profile = install_profile(xdg, cluster=cluster)
        work = workdir(root / "work", SPLIT)
        stop, cancelled = threading.Event(), []
        killer = threading.Thread(target=cancel_after_a_shard, args=(cluster, work, stop, cancelled))
        killer.start()
        try:
            r = run_on_cluster(cluster, work, xdg, "all")
        finally:
            stop.set()
            killer.join()
        # job states from the accounting database too: one table's jobs again, with a profile asking for sacct
        sacct_xdg = root / "xdg-sacct"
        install_profile(sacct_xdg, "--status-command", "sacct", cluster=cluster)
        target = "results/toy/toy/rollouts/rl.parquet"
        before = pl.read_parquet(work / target) if (work / target).is_file() else None
        again = run_on_cluster(cluster, work, sacct_xdg, target, "--forcerun", "rollout", timeout=600)
        yield {
            "result": r,
            "work": work,
            "jobs": cluster.jobs(),
            "cancelled": cancelled,
            "profile": profile,
            "sacct_run": again,
            "sacct_target": (before, pl.read_parquet(work / target)),
        }


def rule_of(job: dict) -> str | None:
    m = re.search(r"rule_([A-Za-z_]+?)_wildcards|rule_([A-Za-z_]+)$", job["comment"])
    return (m[1] or m[2]) if m else None


def test_the_profile_is_where_snakemake_looks_and_refuses_to_be_overwritten(tmp_path):
    if reason := _skip_reason(accounting=False):
        pytest.skip(reason)
    profile = install_profile(tmp_path)
    text = (profile / "config.yaml").read_text()
    assert "executor: slurm" in text and "slurm-no-account: true" in text
    config = yaml.safe_load(text)
    assert "software-deployment-method" not in config  # jobs run in the submitting environment
    assert config["slurm-status-command"] == "sacct"  # no controller to ask for MinJobAge: the accounting database
    assert yaml.safe_load((profile / "partitions.yaml").read_text())["partitions"] == {
        "cpu": {"max_gpu": 0},
        "gpu": {"max_gpu": 1},
    }
    (profile / "config.yaml").write_text(text + "# my edit\n")
    r = run(
        tokenshift_cmd() + ["profile", "install", "slurm", "--partition", "p", "--gpu-partition", "g"],
        env={"XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert r.returncode == 2 and "--force" in r.stderr and "# my edit" in (profile / "config.yaml").read_text()
    r = run(
        tokenshift_cmd()
        + [
            "profile",
            "install",
            "slurm",
            "--partition",
            "p",
            "--gpu-partition",
            "g",
            "--account",
            "lab",
            "--gpu-model",
            "a100",
            "--no-accounting",
            "--force",
        ],
        env={"XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    profile_config = yaml.safe_load((profile / "config.yaml").read_text())
    assert profile_config["slurm-status-command"] == "squeue"
    assert profile_config["default-resources"]["slurm_account"] == "lab"
    assert profile_config["config"] == ["cluster={gpu_model: a100}"]


# before the tests of the cluster with accounting: that cluster runs from its first test to the module's end, and
# two controllers on one node at once would share /etc/slurm
def test_without_accounting_job_states_come_from_squeue(tmp_path, local_run):
    if reason := _skip_reason(accounting=False):
        pytest.skip(reason)
    with Cluster(tmp_path / "cluster", accounting=False) as cluster:
        xdg = tmp_path / "xdg"
        install_profile(xdg, "--no-accounting", cluster=cluster)
        work = workdir(tmp_path / "work", CONFIG)
        shutil.copytree(local_run / "resources", work / "resources")  # the toy pair and dataset: built already
        target = "results/toy/toy/rollouts/base.parquet"  # the base model's rollouts, on the GPU
        r = run_on_cluster(cluster, work, xdg, target, timeout=900)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        jobs = cluster.jobs()
    assert pl.read_parquet(work / target).equals(pl.read_parquet(local_run / target))
    # without accounting the controller keeps no TRES of GRES: the job's request says it asked for the GPU
    gpu_jobs = [j for j in jobs if j["req_tres"] == "gres:gpu:1"]
    assert gpu_jobs and {j["partition"] for j in gpu_jobs} == {"gpu"} and all(j["state"] == "COMPLETED" for j in jobs)


def test_the_workflow_finishes_on_slurm_with_the_local_outputs(cluster_run, local_run):
    r = cluster_run["result"]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    got, want = tables(cluster_run["work"]), tables(local_run)
    assert set(got) == set(want)
    for name, table in want.items():
        assert got[name].equals(table), name
    assert (cluster_run["work"] / "results" / "report.html").is_file()


def test_gpu_rules_ran_as_gpu_jobs_and_the_others_did_not(cluster_run):
    jobs = [j for j in cluster_run["jobs"] if j["state"] == "COMPLETED"]
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(rule_of(job), []).append(job)
    for rule, want in MODEL_RUNS_ON_GPU.items():
        on_gpu = [j for j in by_rule[rule] if "gres/gpu=1" in j["alloc_tres"]]
        assert len(on_gpu) == want and {j["partition"] for j in on_gpu} == {"gpu"}, (rule, by_rule[rule])
    # the RL model's own rollouts load only toy-rl (no GPU): CPU jobs; and no other rule asked for a GPU
    cpu_jobs = [j for rule, js in by_rule.items() for j in js if rule not in GPU_RULES] + [
        j for j in by_rule["rollout"] if "gres/gpu" not in j["alloc_tres"]
    ]
    assert all("gres/gpu" not in j["alloc_tres"] and j["partition"] == "cpu" for j in cpu_jobs)
    assert {"toy_base", "toy_rl", "toy_check", "divergence_toy", "advantage_run", "training_shifts"} <= set(by_rule)
    # the light jobs ran on the submit node: never in the queue
    light = {"accuracy", "crosssample_table", "figures", "figures_divergence", "report", "dataset", "check_pair"}
    assert not light & set(by_rule)
    assert not {r for r in by_rule if r and r.startswith("gather")}


def test_the_profile_reads_job_states_as_the_cluster_allows(cluster_run):
    # MinJobAge is 600 s on the test cluster: squeue still sees finished jobs, and names a cancelled one
    config = yaml.safe_load((cluster_run["profile"] / "config.yaml").read_text())
    assert config["slurm-status-command"] == "squeue"
    again = cluster_run["sacct_run"]  # and with job states from sacct, jobs are seen to end as well
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    before, after = cluster_run["sacct_target"]
    assert before is not None and after.equals(before)


def test_a_job_cancelled_after_a_shard_resumes_from_it_and_nothing_is_lost(cluster_run):
    (cancelled,) = cluster_run["cancelled"]
    states = {j["id"]: j for j in cluster_run["jobs"]}
    assert states[cancelled["id"]]["state"].startswith("CANCELLED")
    rule_runs = [j for j in cluster_run["jobs"] if rule_of(j) == "crosssample"]
    assert len(rule_runs) == MODEL_RUNS_ON_GPU["crosssample"] + 1  # one of them ran twice
    assert sum(j["state"] == "COMPLETED" for j in rule_runs) == MODEL_RUNS_ON_GPU["crosssample"]
    assert cluster_run["result"].returncode == 0
    # the retry (its log replaced the cancelled job's) took the shards written before the cancel and drew the rest
    assert cancelled["shards"], cancelled
    resumed = re.search(r"resuming (\S+): (\d) of 2 shards already written", cancelled["log"].read_text())
    assert resumed and resumed[1].endswith(str(cancelled["part"].relative_to(cluster_run["work"]))), cancelled
    assert int(resumed[2]) >= len(cancelled["shards"])
    assert cancelled["part"].is_file() and not cancelled["part"].with_name(cancelled["part"].name + ".shards").exists()
