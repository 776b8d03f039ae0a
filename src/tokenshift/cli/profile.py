"""``tokenshift profile install slurm``: write the SLURM profile where ``snakemake --profile slurm`` finds it."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from tokenshift.options import at_least


def register(sub) -> None:
    from tokenshift.slurm_profile import SiteSettings

    d = SiteSettings(partition="", gpu_partition="")  # the defaults have one home: SiteSettings
    pr = sub.add_parser(
        "profile",
        help="install the Snakemake profile for a SLURM cluster",
        description="Profiles tell Snakemake how to run the workflow's jobs on a cluster.",
    )
    psub = pr.add_subparsers(dest="action", metavar="ACTION", required=True)
    ins = psub.add_parser(
        "install",
        help="write the slurm profile with your site's account and partitions",
        description="Fill the profile template (tokenshift/profiles/slurm/) with your site's values and write it to "
        "$XDG_CONFIG_HOME/snakemake/<name>/ (~/.config/snakemake/<name>/), where `snakemake --profile <name>` "
        "looks. A profile already there that differs is kept unless --force.",
    )
    ins.add_argument("name", choices=["slurm"], help="the profile to install")
    ins.add_argument("--partition", required=True, help="the CPU partition (tables, figures, report)")
    ins.add_argument("--gpu-partition", required=True, help="the GPU partition (rollouts, scoring, cross-sampling)")
    ins.add_argument("--account", help="the account jobs are charged to (none: submit without one)")
    ins.add_argument(
        "--gpu-model",
        help="a GPU type to request (--gpus=<model>:<n>), where your site asks for one: letters, digits, '_' and '.'",
    )
    ins.add_argument(
        "--gpus-per-node",
        type=at_least(1),
        default=d.gpus_per_node,
        help=f"GPUs on a node of the GPU partition (default {d.gpus_per_node})",
    )
    ins.add_argument(
        "--no-accounting",
        action="store_true",
        help="the cluster has no accounting (sacct fails): job states come from squeue",
    )
    ins.add_argument(
        "--status-command",
        choices=["auto", "sacct", "squeue"],
        default=d.status_command,
        help="how job states are read: auto takes squeue where there is no accounting, or where finished jobs stay "
        "visible to it for 2 minutes or more (MinJobAge), else sacct (default auto)",
    )
    ins.add_argument(
        "--conda",
        action="store_true",
        help="build each rule's conda environment (envs/*.yaml) instead of using the submitting one",
    )
    ins.add_argument("--jobs", type=at_least(1), default=d.jobs, help=f"most jobs queued at once (default {d.jobs})")
    ins.add_argument(
        "--status-delay",
        type=at_least(0),
        default=d.status_delay,
        help=f"seconds before the first status check of a job (default {d.status_delay})",
    )
    ins.add_argument("--qos", help="the quality of service every job is submitted with (sbatch --qos)")
    ins.add_argument("--reservation", help="a reservation every job runs in (sbatch --reservation)")
    ins.add_argument(
        "--requeue",
        action="store_true",
        help="SLURM requeues a failed or preempted job (sbatch --requeue); its shards resume it",
    )
    ins.add_argument(
        "--gres",
        action="store_true",
        help="GPU jobs ask for --gres=gpu[:<model>]:<n> instead of --gpus, where your site refuses --gpus",
    )
    ins.add_argument(
        "--efficiency-report",
        action="store_true",
        help="the SLURM plugin writes a report of each job's CPU and memory efficiency when the run ends",
    )
    ins.add_argument("--dir", type=Path, help="write here instead of the Snakemake profile directory")
    ins.add_argument("--force", action="store_true", help="replace a profile that differs")
    ins.set_defaults(func=_install)


def _install(args: argparse.Namespace) -> None:
    from tokenshift.io import InputError
    from tokenshift.slurm_profile import ProfileError, SiteSettings, install_profile, profile_dir

    site = SiteSettings(
        partition=args.partition,
        gpu_partition=args.gpu_partition,
        account=args.account,
        gpu_model=args.gpu_model,
        gpus_per_node=args.gpus_per_node,
        accounting=not args.no_accounting,
        status_command=args.status_command,
        conda=args.conda,
        jobs=args.jobs,
        status_delay=args.status_delay,
        qos=args.qos,
        reservation=args.reservation,
        requeue=args.requeue,
        gres=args.gres,
        efficiency_report=args.efficiency_report,
    )
    target = args.dir or profile_dir(args.name)
    try:
        written = install_profile(site, target=target, force=args.force)
    except ProfileError as e:
        raise InputError(str(e)) from None
    for path in written:
        print(f"wrote {path}:", file=sys.stderr)
        print(path.read_text())
    # a profile written elsewhere than Snakemake's profile folder is found by its path (--profile takes either)
    where = args.name if args.dir is None else shlex.quote(str(Path(args.dir).resolve()))
    print(f"run the workflow with: snakemake --profile {where} all", file=sys.stderr)
