"""``tokenshift advantages ...`` (the weighted-advantage experiment) and ``training-shifts``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenshift import layout
from tokenshift.cli.common import output, quiet, settings, show
from tokenshift.io import InputError
from tokenshift.options import MAX_SEED, add_options, at_least


def register(sub) -> None:
    from tokenshift.registry import ADVANTAGE_MODES
    from tokenshift.toy.config import AdvantageExperimentConfig, ToyBuildConfig

    adv = sub.add_parser(
        "advantages",
        help="the divergence-weighted advantage experiment on the toy task",
        description="GRPO from the toy base model under each advantage weighting and seed "
        "(tokenshift.advantages), evaluated during training; then the comparison tables.",
    )
    asub = adv.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = asub.add_parser(
        "run",
        help="train and evaluate one (weighting, seed)",
        description="Train from --base under --variant with --seed; write eval.parquet (per evaluated round "
        "and eval problem) and history.parquet (per round) in --out.",
    )
    run.add_argument("--base", required=True, help="the toy base checkpoint (directory or manifest)")
    run.add_argument("--variant", required=True, choices=ADVANTAGE_MODES, help="advantage weighting")
    run.add_argument("--seed", type=at_least(0, maximum=MAX_SEED), required=True, help="training seed (0 to 2**32 - 1)")
    add_options(run, ToyBuildConfig, only=("grpo_lr",), title="learning rate: the toy RL model's (config `toy:`)")
    add_options(
        run, AdvantageExperimentConfig, exclude=("variants", "seeds"), title="experiment (config `advantages:`)"
    )
    tables = [Path(layout.advantage_run(table=t)).name for t in ("eval", "history")]
    output(run, "--out", "a directory", "directory for the run's two tables", directory=True, writes=tables)
    quiet(run)
    run.set_defaults(func=_run)

    table = asub.add_parser(
        "table",
        help="accuracy curves and the paired comparison against plain GRPO",
        description="From the runs' eval.parquet: curve.parquet (accuracy per variant and round, mean and range "
        "over seeds) and comparison.parquet (last round: accuracy with 95%% CI, paired difference from none).",
    )
    table.add_argument("evals", nargs="+", help="the runs' eval.parquet files")
    output(
        table,
        "--out-dir",
        "a directory",
        "directory for curve.parquet and comparison.parquet",
        directory=True,
        writes=(layout.CURVE, layout.COMPARISON),
    )
    table.set_defaults(func=_table)

    sh = sub.add_parser(
        "training-shifts",
        help="JS against the base model at each checkpoint of the toy RL training",
        description="Teacher-force the correct traces of eval problems with the base model and each checkpoint "
        "of the toy RL model (checkpoints/step-<k> and the final one); write one row per checkpoint.",
    )
    sh.add_argument("--base", required=True, help="the toy base checkpoint (directory or manifest)")
    sh.add_argument("--rl", required=True, help="the toy RL checkpoint (directory or manifest)")
    add_options(sh, AdvantageExperimentConfig, only=("eval_problems",), title="eval problems whose traces are scored")
    output(sh, "--out", "a .parquet file path", "parquet table to write")
    sh.set_defaults(func=_shifts)

    fig = sub.add_parser(
        "figure-training",
        help="figures of the advantage experiment and of the shifts over training",
        description="advantages.png/pdf from the experiment's curve and comparison tables; training_shifts.png/pdf "
        "from the training-shifts table.",
    )
    fig.add_argument("--curve", help="the experiment's curve table (tokenshift advantages table), with --comparison")
    fig.add_argument("--comparison", help="the experiment's comparison table (tokenshift advantages table)")
    fig.add_argument("--shifts", help="a training-shifts table")
    output(fig, "--out-dir", "a directory", "directory for the figures", directory=True)
    fig.set_defaults(func=_figures)


def _run(args: argparse.Namespace) -> None:
    from tokenshift.toy.config import AdvantageExperimentConfig
    from tokenshift.toy.training import run_variant, write_run

    cfg = settings(AdvantageExperimentConfig, args)
    evals, history = run_variant(args.base, args.variant, args.seed, cfg, lr=args.grpo_lr, progress=not args.quiet)
    write_run(evals, history, Path(args.out))
    acc = {step: round(g["correct"].mean(), 4) for (step,), g in evals.group_by("step", maintain_order=True)}
    print(f"{args.variant} seed {args.seed}: accuracy by round {acc}", file=sys.stderr)


def _table(args: argparse.Namespace) -> None:
    from tokenshift.io import write_parquet_atomic
    from tokenshift.toy.training import advantage_tables, read_runs

    tables = advantage_tables(read_runs(args.evals))
    for name, t in tables.items():
        write_parquet_atomic(t, Path(args.out_dir) / {"curve": layout.CURVE, "comparison": layout.COMPARISON}[name])
    show(tables["curve"], tables["comparison"])


def _shifts(args: argparse.Namespace) -> None:
    from tokenshift.io import write_parquet_atomic
    from tokenshift.toy.training import shifts_over_training

    table = shifts_over_training(args.base, args.rl, n_problems=args.eval_problems)
    write_parquet_atomic(table, Path(args.out))
    show(table, precision=4)


def _figures(args: argparse.Namespace) -> None:
    from tokenshift.plots.draw import draw_training

    given = {name: Path(getattr(args, name)) for name in ("curve", "comparison", "shifts") if getattr(args, name)}
    if not given:  # it printed "wrote  to <dir>" and wrote nothing
        raise InputError("nothing to draw: expected --curve and --comparison, or --shifts, or all three")
    drawn = draw_training(**given, out_dir=Path(args.out_dir))
    print(f"wrote {', '.join(drawn)} to {args.out_dir}", file=sys.stderr)
