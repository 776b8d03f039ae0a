"""``tokenshift crosssample`` (one run of the grid) and ``tokenshift crosssample-table`` (accuracy per budget)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenshift.cli.common import generation_options, output, pair_checkpoints, settings, show
from tokenshift.registry import DIRECTIONS, POLICIES, THRESHOLD_LEVELS


def register(sub) -> None:
    import dataclasses

    from tokenshift.options import add_options
    from tokenshift.settings import VLLM_ENGINE_KEYS, CrossSampleConfig, RolloutConfig

    cs = sub.add_parser(
        "crosssample",
        help="decode with both models, switching tokens under a budget",
        description="One model generates; where the policy's statistic exceeds the threshold and the response's "
        "budget lasts, the token is drawn from the other model (forward: base generates, RL injected; "
        "reverse: the other way), with both models decoding in lockstep (--engine lockstep) or, as the authors "
        "do, on two vLLM engines, the generating one writing on from each switch (--engine regenerate). "
        "Responses are graded; one parquet row per sample with the switched positions and their JS. Sharded "
        "and resumable like the rollout stage.",
    )
    pair_checkpoints(cs)
    cs.add_argument("--dataset", required=True, help="problems parquet written by `tokenshift dataset`")
    cs.add_argument("--direction", required=True, choices=DIRECTIONS, help="which model generates")
    cs.add_argument(
        "--policy",
        default="js",
        choices=list(POLICIES),
        help="where to switch: " + "; ".join(f"{p.name}: {p.help}" for p in POLICIES.values()),
    )
    cs.add_argument("--budget", default="all", help="most switched tokens per response, or 'all' (default all)")
    th = cs.add_mutually_exclusive_group()
    th.add_argument("--threshold", type=float, help="switch where the policy's statistic exceeds this value")
    th.add_argument(
        "--percentile",
        type=float,
        help="threshold at this percentile of the statistic over --scores (random: of a uniform draw)",
    )
    th.add_argument(
        "--tau",
        type=float,
        help="dlogp: switch where log p_other(y) - log p_generator(y) is below this (the follow-up's tau)",
    )
    cs.add_argument(
        "--level",
        choices=THRESHOLD_LEVELS,
        default="dataset",
        help="over what --percentile is taken: dataset (the --scores table), prompt or response (the run's own "
        "budget-0 responses to each prompt, or each row's own; the authors' levels) (default dataset)",
    )
    cs.add_argument("--scores", help="per-token scores of the generating model's rollouts (for --percentile)")
    cs.add_argument("--pair", help="the pair manifest (resources/pairs/<pair>.json): its name goes into the rows")
    output(cs, "--out", "a .parquet file path", "parquet file to write")
    generation_options(cs, CrossSampleConfig, "decoding (config `crosssample:`)")
    engine_only = [f.name for f in dataclasses.fields(RolloutConfig) if f.name not in VLLM_ENGINE_KEYS]
    add_options(
        cs, RolloutConfig, exclude=engine_only, title="the vLLM engines of --engine regenerate (config `rollout:`)"
    )
    cs.set_defaults(func=_crosssample)

    ct = sub.add_parser(
        "crosssample-table",
        help="aggregate cross-sampling runs: accuracy per budget",
        description="One row per (direction, policy, budget): avg@n accuracy with a 95%% bootstrap "
        "CI over problems, mean switched tokens and the switched share of tokens.",
    )
    ct.add_argument("inputs", nargs="+", help="cross-sampling parquet files: the grid's runs")
    ct.add_argument(
        "--extrapolation",
        nargs="+",
        default=[],
        metavar="RUN",
        help="the extrapolation runs beside the grid (config crosssample.gammas), a row each",
    )
    ct.add_argument("--pair", required=True, help="pair name, stored in the table")
    ct.add_argument("--dataset", required=True, help="dataset name, stored in the table")
    output(ct, "--out", "a .parquet file path", "parquet file to write")
    ct.set_defaults(func=_table)


def _crosssample(args: argparse.Namespace) -> None:
    from tokenshift.crosssample import run_crosssample
    from tokenshift.io import InputError
    from tokenshift.settings import (
        VLLM_ENGINE_KEYS,
        CrossSampleConfig,
        GradingConfig,
        PromptConfig,
        RolloutConfig,
        SamplingConfig,
    )
    from tokenshift.tokenizer import read_pair_manifest

    if args.level != "dataset" and args.percentile is None:
        raise InputError(f"--level {args.level} needs --percentile: a fixed --threshold holds for every row")
    pair = None
    if args.pair:
        from tokenshift.scoring import check_pair_models

        manifest = read_pair_manifest(args.pair)
        check_pair_models({"base": Path(args.base), "rl": Path(args.rl)}, Path(args.pair), manifest)
        pair = manifest["pair"]
    threshold = (
        {"threshold": args.threshold}
        if args.threshold is not None
        else {"tau": args.tau}
        if args.tau is not None
        else {"percentile": args.percentile, "level": args.level}
        if args.percentile is not None
        else {}
    )
    cfg = settings(CrossSampleConfig, args)
    engine = argparse.Namespace(**{k: getattr(args, k) for k in VLLM_ENGINE_KEYS})
    run_crosssample(
        args.base,
        args.rl,
        Path(args.dataset),
        Path(args.out),
        direction=args.direction,
        policy=args.policy,
        budget=args.budget,
        threshold=threshold,
        scores=args.scores,
        pair=pair,
        prompt=settings(PromptConfig, args),
        sampling=settings(SamplingConfig, args),
        cfg=cfg,
        grading=settings(GradingConfig, args),
        vllm=settings(RolloutConfig, engine, backend="vllm", threads=cfg.threads),
        part=args.part,
        progress=not args.quiet,
    )


def _table(args: argparse.Namespace) -> None:
    from tokenshift.tables import write_crosssample_table

    table = write_crosssample_table(
        [Path(p) for p in args.inputs],
        Path(args.out),
        pair=args.pair,
        dataset=args.dataset,
        extrapolation=[Path(p) for p in args.extrapolation],
    )
    show(
        table.select(
            "direction", "policy", "budget", "gamma", "accuracy", "ci_low", "ci_high", "mean_switched", "switched_share"
        ),
        rows=80,
    )
