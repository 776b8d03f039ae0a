"""``tokenshift score`` (teacher-forced per-token statistics) and ``tokenshift divergence`` (the tables)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tokenshift import layout
from tokenshift.cli.common import output, pair_checkpoints, part_option, quiet, settings, show
from tokenshift.options import add_options
from tokenshift.registry import DIVERGENCE_TABLES, ROLES


def register(sub) -> None:
    from tokenshift.settings import VLLM_ENGINE_KEYS, DivergenceConfig, RolloutConfig, ScoringConfig

    sc = sub.add_parser(
        "score",
        help="teacher-force both models over responses; per-token divergence statistics",
        description="Both models of a pair read the same responses; at every response token their full next-token "
        "distributions (or, with --statistic topk:K, each model's K most probable tokens, renormalised) are "
        "compared (JS, KL both ways, entropies, top-k overlap, top-1 ranks) and both log-probs of the token are "
        "recorded. LM-head logits are built in chunks, never for a whole batch; --backend vllm reads the top "
        "log-probs from vLLM engines instead.",
    )
    pair_checkpoints(sc)
    sc.add_argument("--pair", required=True, help="pair manifest (resources/pairs/<pair>.json): shared vocabulary")
    sc.add_argument("--rollouts", required=True, help="rollout parquet whose responses are scored")
    sc.add_argument("--source", required=True, choices=ROLES, help="which model wrote the responses")
    output(sc, "--out", "a .parquet file path", "per-token parquet to write")
    add_options(sc, ScoringConfig, title="scoring (config `scoring:`)")
    engine = [f.name for f in dataclasses.fields(RolloutConfig) if f.name not in VLLM_ENGINE_KEYS]
    add_options(
        sc,
        RolloutConfig,
        exclude=engine,
        title="vLLM engine, read under --backend vllm (config `rollout:`; not set, its context is the longest "
        "row scored plus one token)",
    )
    part_option(sc)
    quiet(sc)
    sc.set_defaults(func=_score)

    dv = sub.add_parser(
        "divergence",
        help="sparsity, position, entropy and reallocation tables from per-token scores",
        description="Aggregate both response sources' per-token scores into tidy tables: share of positions under JS "
        "thresholds and the JS percentile curve; JS by normalised position; JS by base entropy; whether "
        "RL's top token is among the base model's top 1/3/5; and, on the toy task, precision and recall "
        "of high-JS positions against the recorded decision points.",
    )
    dv.add_argument("--scores-base", required=True, help="scores of the base model's rollouts")
    dv.add_argument("--scores-rl", required=True, help="scores of the RL model's rollouts")
    tables = [Path(layout.divergence(t)).name for t in (*DIVERGENCE_TABLES, "decision_points")]
    output(dv, "--out-dir", "a directory", "directory for the tables", directory=True, writes=tables)
    dv.add_argument("--pair", required=True, help="pair name, stored in the tables")
    dv.add_argument("--dataset", required=True, help="dataset name, stored in the tables")
    dv.add_argument(
        "--problems",
        help="the dataset's problems parquet: on the toy task, its decision points are compared with high-JS positions",
    )
    dv.add_argument("--tokenizer", help="checkpoint (directory or manifest) whose tokenizer encodes the toy traces")
    add_options(dv, DivergenceConfig, title="tables (config `divergence:`)")
    dv.set_defaults(func=_divergence)


def _score(args: argparse.Namespace) -> None:
    from tokenshift.scoring import run_scoring
    from tokenshift.settings import RolloutConfig, ScoringConfig

    run_scoring(
        args.base,
        args.rl,
        Path(args.pair),
        Path(args.rollouts),
        args.source,
        Path(args.out),
        cfg=settings(ScoringConfig, args),
        part=args.part,
        engine=settings(RolloutConfig, args, backend="vllm"),
        progress=not args.quiet,
    )


def _divergence(args: argparse.Namespace) -> None:
    import polars as pl

    from tokenshift.settings import DivergenceConfig
    from tokenshift.tables import write_divergence

    tables = write_divergence(
        {"base": args.scores_base, "rl": args.scores_rl},
        Path(args.out_dir),
        pair=args.pair,
        dataset=args.dataset,
        problems=args.problems,
        tokenizer=args.tokenizer,
        cfg=settings(DivergenceConfig, args),
    )
    show(
        tables["sparsity"].filter(pl.col("kind") == "share_below").select("source", "js_nats", "share"),
        tables["reallocation"].filter(pl.col("metric").str.starts_with("rl_top1_in_base_top")),
        rows=30,
        precision=4,
    )
