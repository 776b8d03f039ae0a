"""``tokenshift rollout`` (sample and grade) and ``tokenshift accuracy`` (avg@n, pass@k)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenshift.cli.common import generation_options, output, settings, show
from tokenshift.options import add_options


def register(sub) -> None:
    from tokenshift.settings import AccuracyConfig, RolloutConfig

    ro = sub.add_parser(
        "rollout",
        help="sample and grade responses of one model on one dataset",
        description="Sample --n responses per problem (HF or vLLM backend), grade them with math-verify, and write "
        "one parquet row per sample. Work is sharded: a killed run resumes from the shards written.",
    )
    ro.add_argument("--model", required=True, help="checkpoint (directory, or its manifest .json: then verified)")
    ro.add_argument("--dataset", required=True, help="problems parquet written by `tokenshift dataset`")
    output(ro, "--out", "a .parquet file path", "parquet file to write")
    generation_options(ro, RolloutConfig, "generation (config `rollout:`)")
    ro.set_defaults(func=_rollout)

    ac = sub.add_parser(
        "accuracy",
        help="avg@n with bootstrap CIs and pass@k for a pair's rollouts",
        description="Aggregate the base and RL rollout tables of one dataset into a tidy "
        "accuracy table (avg@n with a 95%% bootstrap CI, unbiased pass@k).",
    )
    ac.add_argument("--rollouts-base", required=True, help="the base model's rollout parquet")
    ac.add_argument("--rollouts-rl", required=True, help="the RL model's rollout parquet")
    output(ac, "--out", "a .parquet file path", "parquet file to write")
    ac.add_argument("--pair", help="pair name, stored in the table")
    ac.add_argument(
        "--pair-manifest",
        help="the pair's manifest (resources/pairs/<pair>.json): each table must hold its role's model's rollouts",
    )
    ac.add_argument("--dataset", help="dataset name, stored in the table")
    add_options(ac, AccuracyConfig, title="metrics (config `rollout:`)")
    ac.set_defaults(func=_accuracy)


def _rollout(args: argparse.Namespace) -> None:
    from tokenshift.rollout import run_rollouts
    from tokenshift.settings import GradingConfig, PromptConfig, RolloutConfig, SamplingConfig

    run_rollouts(
        args.model,
        Path(args.dataset),
        Path(args.out),
        prompt=settings(PromptConfig, args),
        sampling=settings(SamplingConfig, args),
        cfg=settings(RolloutConfig, args),
        grading=settings(GradingConfig, args),
        part=args.part,
        progress=not args.quiet,
    )


def _accuracy(args: argparse.Namespace) -> None:
    from tokenshift.settings import AccuracyConfig
    from tokenshift.tables import write_accuracy

    table = write_accuracy(
        {"base": args.rollouts_base, "rl": args.rollouts_rl},
        Path(args.out),
        pair=args.pair,
        dataset=args.dataset,
        pair_manifest=Path(args.pair_manifest) if args.pair_manifest else None,
        cfg=settings(AccuracyConfig, args),
    )
    show(table.drop("dataset_version"))
