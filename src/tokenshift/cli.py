"""The ``tokenshift`` command: one subcommand per stage, usable with or without Snakemake.

The workflow's rules call these; a user can too, e.g.::

    tokenshift models fetch qwen-base --hub Qwen/Qwen2.5-0.5B --revision <sha> --out resources/models/qwen-base
    tokenshift models toy-base toy-base --out resources/models/toy-base
    tokenshift toy-check --base resources/models/toy-base --rl resources/models/toy-rl --out results/toy/toy_check

Errors in input (a bad path, a model that cannot be fetched, tokenizers that disagree) print
one clear line and exit with status 2; nothing already finished is touched.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tokenshift import __version__


class InputError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _cmd_models_fetch(args: argparse.Namespace) -> None:
    from tokenshift.models import fetch_model

    spec: dict = {"path": args.path} if args.path else {"hub": args.hub, "revision": args.revision}
    if args.trust_remote_code:
        spec["trust_remote_code"] = True
    manifest = fetch_model(args.name, spec, Path(args.out))
    print(json.dumps({k: manifest[k] for k in ("name", "source", "tokenizer_size", "embedding_rows")}))


def _toy_settings(args: argparse.Namespace):
    from tokenshift.toy.build import ToyBuildConfig

    try:
        return ToyBuildConfig.from_mapping(args.settings)
    except (TypeError, ValueError) as e:
        raise InputError(f"--settings: {e}") from None


def _cmd_models_toy_base(args: argparse.Namespace) -> None:
    from tokenshift.models import write_manifest
    from tokenshift.toy.build import build_base

    out = Path(args.out)
    stats = build_base(out, _toy_settings(args), progress=not args.quiet)
    write_manifest(out, name=args.name, spec={"toy": "base"}, extra={"toy_build_seconds": stats["seconds"]})
    print(f"toy base model {args.name!r}: {stats['parameters']} parameters, final loss {stats['final_loss']:.3f}, "
          f"{stats['seconds']:.0f} s", file=sys.stderr)


def _cmd_models_toy_rl(args: argparse.Namespace) -> None:
    from tokenshift.models import write_manifest
    from tokenshift.toy.build import build_rl

    out = Path(args.out)
    stats = build_rl(Path(args.init), out, _toy_settings(args), progress=not args.quiet)
    write_manifest(out, name=args.name, spec={"toy": "rl", "init": Path(args.init).name},
                   extra={"toy_build_seconds": stats["seconds"]})
    rewards = [h["reward_mean"] for h in stats["grpo"]]
    k = max(1, len(rewards) // 5)
    print(f"toy RL model {args.name!r}: mean GRPO reward {sum(rewards[:k]) / k:.3f} over the first {k} steps, "
          f"{sum(rewards[-k:]) / k:.3f} over the last {k}; {stats['seconds']:.0f} s", file=sys.stderr)


def _cmd_models_check_pair(args: argparse.Namespace) -> None:
    from tokenshift.models import check_pair

    info = check_pair(args.pair, Path(args.base), Path(args.rl), Path(args.out))
    print(json.dumps(info))


def _cmd_toy_check(args: argparse.Namespace) -> None:
    import polars as pl

    from tokenshift.toy.check import check_toy_pair

    tables = check_toy_pair(Path(args.base), Path(args.rl), Path(args.out), _toy_settings(args),
                            n_problems=args.n_problems, samples_per_problem=args.samples, seed=args.seed)
    with pl.Config(tbl_rows=20, tbl_cols=12, float_precision=4, tbl_width_chars=160):
        print(tables["accuracy"])
        print(tables["decision_points"])


def _cmd_rollout(args: argparse.Namespace) -> None:
    from tokenshift.datasets import load_problems
    from tokenshift.generation import SamplingConfig
    from tokenshift.rollout import RolloutConfig, run_rollouts

    spec = args.dataset_spec
    problems = load_problems(args.dataset, spec, toy_task=_toy_settings(args).task)
    cfg = RolloutConfig(n=args.n, seed=args.seed, backend=args.backend, batch_size=args.batch_size,
                        problems_per_shard=args.problems_per_shard, threads=args.threads,
                        sampling=SamplingConfig(temperature=args.temperature, top_p=args.top_p,
                                                max_new_tokens=args.max_new_tokens))
    table = run_rollouts(Path(args.model), problems, spec, Path(args.out), cfg, progress=not args.quiet)
    print(f"{args.dataset}: {table.height} samples, accuracy {table['correct'].mean():.3f}, "
          f"{(table['finish_reason'] == 'length').sum()} cut by the length limit, "
          f"{(table['grade_status'] != 'ok').sum()} not graded cleanly", file=sys.stderr)


def _cmd_accuracy(args: argparse.Namespace) -> None:
    import polars as pl

    from tokenshift.tables import accuracy_table

    tables = {role: pl.read_parquet(path) for role, path in (("base", args.base), ("rl", args.rl))}
    labels = {k: v for k, v in (("pair", args.pair), ("dataset", args.dataset)) if v}
    table = accuracy_table(tables, ks=args.k, labels=labels)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.write_parquet(out)
    with pl.Config(tbl_rows=40, tbl_cols=12, float_precision=3, tbl_width_chars=160):
        print(table.drop("dataset_version"))


def _cmd_score(args: argparse.Namespace) -> None:
    import polars as pl
    import torch

    from tokenshift.io import write_parquet_atomic
    from tokenshift.models import load_causal_lm
    from tokenshift.scoring import ScoringConfig, score_rows

    if args.threads:
        torch.set_num_threads(args.threads)
    pair = json.loads(Path(args.pair).read_text())
    rollouts = pl.read_parquet(args.rollouts)
    models = {"base": load_causal_lm(args.base, args.device_base), "rl": load_causal_lm(args.rl, args.device_rl)}
    pad = models["base"].config.pad_token_id or 0
    rows = list(zip(rollouts["prompt_ids"].to_list(), rollouts["response_ids"].to_list()))
    res = score_rows(models["base"], models["rl"], rows, vocab_size=pair["shared_vocab_size"], pad_id=pad,
                     cfg=ScoringConfig(chunk_size=args.chunk_size, chunk_memory_mb=args.chunk_memory_mb,
                                       max_batch_tokens=args.max_batch_tokens))
    cols = res.columns
    meta = rollouts.select("problem_id", "sample_index", "correct")[cols["row"].tolist()]
    table = pl.concat([meta, pl.DataFrame({k: v for k, v in cols.items() if k != "row"})], how="horizontal")
    table = table.with_columns(pl.lit(args.source).alias("source")).sort("problem_id", "sample_index", "position")
    write_parquet_atomic(table, Path(args.out))
    skipped = {k: len(v) for k, v in res.skipped.items()}
    print(f"scored {table.height} tokens of {len(rows) - sum(skipped.values())} responses; skipped: {skipped or 'none'}",
          file=sys.stderr)


def _cmd_crosssample(args: argparse.Namespace) -> None:
    import polars as pl

    from tokenshift.crosssample import CrossSampleConfig, parse_budget, resolve_threshold, run_crosssample
    from tokenshift.datasets import load_problems
    from tokenshift.generation import SamplingConfig

    if args.threshold is not None:
        spec = {"threshold": args.threshold}
    elif args.percentile is not None:
        spec = {"percentile": args.percentile}
    else:
        spec = {}
    try:
        scores = pl.read_parquet(args.scores) if args.scores else None
        threshold = resolve_threshold(args.policy, args.direction, spec, scores)
        cfg = CrossSampleConfig(direction=args.direction, policy=args.policy, budget=parse_budget(args.budget),
                                threshold=threshold, batch_size=args.batch_size,
                                sampling=SamplingConfig(temperature=args.temperature, top_p=args.top_p,
                                                        max_new_tokens=args.max_new_tokens))
    except ValueError as e:
        raise InputError(str(e)) from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    problems = load_problems(args.dataset, args.dataset_spec, toy_task=_toy_settings(args).task)
    if args.n_problems:
        problems = problems[:args.n_problems]
    table = run_crosssample(Path(args.base), Path(args.rl), problems, args.dataset_spec, Path(args.out), cfg, n=args.n,
                            seed=args.seed, problems_per_shard=args.problems_per_shard, device_base=args.device_base,
                            device_rl=args.device_rl, progress=not args.quiet)
    print(f"{args.direction}/{args.policy}/budget-{args.budget} (threshold {threshold:.4g}): {table.height} samples, "
          f"accuracy {table['correct'].mean():.3f}, {table['n_switched'].mean():.2f} switched tokens per response",
          file=sys.stderr)


def _cmd_crosssample_table(args: argparse.Namespace) -> None:
    import polars as pl

    from tokenshift.io import write_parquet_atomic
    from tokenshift.tables import crosssample_table

    table = crosssample_table([pl.read_parquet(p) for p in args.inputs],
                              labels={"pair": args.pair, "dataset": args.dataset})
    write_parquet_atomic(table, Path(args.out))
    with pl.Config(tbl_rows=80, tbl_cols=12, float_precision=3, tbl_width_chars=160):
        print(table.select("direction", "policy", "budget", "accuracy", "ci_low", "ci_high", "mean_switched",
                           "switched_share"))


def _cmd_figures(args: argparse.Namespace) -> None:
    import polars as pl
    from transformers import AutoTokenizer

    from tokenshift.plots.figures import FIGURES
    from tokenshift.plots.style import save
    from tokenshift.tables import example_table

    div = Path(args.divergence_dir)
    out = Path(args.out_dir)
    tables = {name: pl.read_parquet(div / f"{name}.parquet") for name in ("position", "entropy", "reallocation")}
    figs = {name: FIGURES[name](t) for name, t in tables.items()}
    if args.crosssample:
        figs["crosssample"] = FIGURES["crosssample"](pl.read_parquet(args.crosssample), pl.read_parquet(args.accuracy))
    if args.example_run:
        baseline = pl.read_parquet(args.example_baseline) if args.example_baseline else None
        ex = example_table(pl.read_parquet(args.example_run), AutoTokenizer.from_pretrained(args.tokenizer),
                           baseline=baseline)
        out.mkdir(parents=True, exist_ok=True)
        ex.write_parquet(out / "example.parquet")
        figs["example"] = FIGURES["example"](ex)
    for name, fig in figs.items():
        save(fig, out / name)
    print(f"wrote {len(figs)} figures to {out}: {', '.join(figs)}", file=sys.stderr)


def _cmd_figure_overview(args: argparse.Namespace) -> None:
    import polars as pl

    from tokenshift.plots.figures import sparsity
    from tokenshift.plots.style import save

    table = pl.concat([pl.read_parquet(p) for p in args.inputs], how="diagonal")
    kinds = args.kinds or {}
    table = table.with_columns(pl.col("pair").replace_strict(kinds, default="rlvr").alias("pair_kind"))
    save(sparsity(table), Path(args.out))


def _cmd_report(args: argparse.Namespace) -> None:
    import polars as pl

    from tokenshift.plots.figures import FIGURES
    from tokenshift.report import PairResult, sentences, write_report

    results = []
    for e in args.entry:
        div = Path(e["divergence_dir"])
        # every per-pair figure that was drawn (the sparsity overview comes in --overview)
        figures = {n: Path(e["figures_dir"]) / f"{n}.png" for n in FIGURES
                   if n != "sparsity" and (Path(e["figures_dir"]) / f"{n}.png").is_file()}
        results.append(PairResult(
            pair=e["pair"], dataset=e["dataset"], kind=e.get("kind", "rlvr"), accuracy=pl.read_parquet(e["accuracy"]),
            divergence={n: pl.read_parquet(div / f"{n}.parquet") for n in ("sparsity", "position", "reallocation")},
            crosssample=pl.read_parquet(e["crosssample"]) if e.get("crosssample") else None, figures=figures))
    summary = write_report(results, overview_figures={Path(p).stem: Path(p) for p in args.overview},
                           config_text=Path(args.config).read_text() if args.config else (args.config_text or ""),
                           html_out=Path(args.html), json_out=Path(args.json))
    for s in summary["results"]:
        print(f"{s['pair']} on {s['dataset']}:", *sentences(s), sep="\n  ", file=sys.stderr)


def _cmd_divergence(args: argparse.Namespace) -> None:
    import polars as pl

    from tokenshift.tables import divergence_tables

    scores = {"base": pl.read_parquet(args.scores_base), "rl": pl.read_parquet(args.scores_rl)}
    labels = {"pair": args.pair, "dataset": args.dataset}
    tables = divergence_tables(scores, labels)
    if args.toy_n_problems:
        from transformers import AutoTokenizer

        from tokenshift.toy.check import decision_points_from_scores

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        task = _toy_settings(args).task
        parts = [decision_points_from_scores(s, tok, task, args.toy_n_problems).with_columns(
            *[pl.lit(v).alias(k) for k, v in {**labels, "source": src}.items()]) for src, s in scores.items()]
        tables["decision_points"] = pl.concat([p for p in parts if p.width > 3], how="diagonal")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.write_parquet(out / f"{name}.parquet")
    with pl.Config(tbl_rows=30, tbl_cols=12, float_precision=4, tbl_width_chars=160):
        print(tables["sparsity"].filter(pl.col("kind") == "share_below").select("source", "js_nats", "share"))
        print(tables["reallocation"].filter(pl.col("metric").str.starts_with("rl_top1_in_base_top")))


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The sampling settings the rollout and cross-sampling stages share (config `sampling:`)."""
    p.add_argument("--n", type=int, default=4, help="samples per problem (default 4)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="response length limit (default 96)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenshift",
        description="Token-level analysis of how RL fine-tuning shifts a language model "
                    "(Meng et al., 'Sparse but Critical', ICLR 2026). Each subcommand is one stage "
                    "of the Snakemake workflow and runs on its own.",
    )
    parser.add_argument("--version", action="version", version=f"tokenshift {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)

    models = stages.add_parser("models", help="materialise checkpoints and check model pairs",
                               description="The checkpoint stage: materialise each model as a local Hugging Face "
                                           "checkpoint with a manifest, build the toy pair, compare a pair's tokenizers.")
    msub = models.add_subparsers(dest="action", metavar="ACTION", required=True)

    f = msub.add_parser("fetch", help="link a local checkpoint or download a hub one at a pinned revision",
                        description="Materialise a local directory (linked) or a hub id at a pinned revision "
                                    "(safetensors only) at --out, then verify it and write <out>.json.")
    f.add_argument("name", help="the model's name in the config")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--path", help="a local Hugging Face checkpoint directory")
    src.add_argument("--hub", help="a hub id, owner/name (needs --revision)")
    f.add_argument("--revision", help="the hub revision to download (a commit hash)")
    f.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own code to run")
    f.add_argument("--out", required=True, help="checkpoint directory to create")
    f.set_defaults(func=_cmd_models_fetch)

    for action, helptext, func in (
        ("toy-base", "pretrain the embedded toy base model on CPU", _cmd_models_toy_base),
        ("toy-rl", "train the embedded toy RL model with GRPO from the toy base", _cmd_models_toy_rl),
    ):
        t = msub.add_parser(action, help=helptext, description=helptext.capitalize() + "; save it with its "
                            "tokenizer at --out and write <out>.json.")
        t.add_argument("name", help="the model's name in the config")
        if action == "toy-rl":
            t.add_argument("--init", required=True, help="the toy base checkpoint directory to start from")
        t.add_argument("--settings", type=_json_arg, default={},
                       help="JSON object of toy build settings (the config's `toy:` section)")
        t.add_argument("--out", required=True, help="checkpoint directory to create")
        t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        t.set_defaults(func=func)

    c = msub.add_parser("check-pair", help="compare a pair's tokenizers and write the pair manifest",
                        description="Refuse a pair whose tokenizers differ; record the shared vocabulary size "
                                    "(padded embedding rows are sliced to it).")
    c.add_argument("pair", help="the pair's name")
    c.add_argument("--base", required=True, help="base checkpoint directory")
    c.add_argument("--rl", required=True, help="RL checkpoint directory")
    c.add_argument("--out", required=True, help="pair manifest (JSON) to write")
    c.set_defaults(func=_cmd_models_check_pair)

    tc = stages.add_parser(
        "toy-check", help="check the toy pair against the task's ground truth",
        description="Accuracy of both toy models on eval problems (sampled at temperature 1 and greedy, with "
                    "bootstrap CIs), and how well the highest-JS positions of correct traces find the recorded "
                    "decision points (precision, recall, lift over chance). Writes accuracy.parquet and "
                    "decision_points.parquet under --out.")
    tc.add_argument("--base", required=True, help="toy base checkpoint directory")
    tc.add_argument("--rl", required=True, help="toy RL checkpoint directory")
    tc.add_argument("--out", required=True, help="directory for the two tables")
    tc.add_argument("--settings", type=_json_arg, default={}, help="JSON object of toy build settings (config `toy:`)")
    tc.add_argument("--n-problems", type=int, default=500, help="eval problems (default 500)")
    tc.add_argument("--samples", type=int, default=4, help="samples per problem at temperature 1 (default 4)")
    tc.add_argument("--seed", type=int, default=0, help="sampling seed")
    tc.set_defaults(func=_cmd_toy_check)

    ro = stages.add_parser(
        "rollout", help="sample and grade responses of one model on one dataset",
        description="Sample --n responses per problem (HF or vLLM backend), grade them with math-verify, and write "
                    "one parquet row per sample. Work is sharded: a killed run resumes from the shards written.")
    ro.add_argument("--model", required=True, help="checkpoint directory")
    ro.add_argument("--dataset", required=True, help="dataset name (used in problem ids and messages)")
    ro.add_argument("--dataset-spec", type=_json_arg, required=True,
                    help='JSON dataset spec, e.g. \'{"toy": "eval", "n_problems": 500}\' or \'{"path": "aime.jsonl"}\'')
    ro.add_argument("--out", required=True, help="parquet file to write")
    _add_sampling_args(ro)
    ro.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="generation backend (default hf)")
    ro.add_argument("--batch-size", type=int, default=64, help="sequences per generate call, hf backend (default 64)")
    ro.add_argument("--problems-per-shard", type=int, default=64, help="problems per shard (default 64)")
    ro.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ro.add_argument("--toy-settings", dest="settings", type=_json_arg, default={},
                    help="JSON object of toy build settings (config `toy:`), for the toy dataset")
    ro.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ro.set_defaults(func=_cmd_rollout)

    ac = stages.add_parser("accuracy", help="avg@n with bootstrap CIs and pass@k for a pair's rollouts",
                           description="Aggregate the base and RL rollout tables of one dataset into a tidy "
                                       "accuracy table (avg@n with a 95%% bootstrap CI, unbiased pass@k).")
    ac.add_argument("--base", required=True, help="base model's rollout parquet")
    ac.add_argument("--rl", required=True, help="RL model's rollout parquet")
    ac.add_argument("--out", required=True, help="parquet file to write")
    ac.add_argument("--k", type=int, nargs="+", default=[1], help="pass@k values (default 1)")
    ac.add_argument("--pair", help="pair name, stored in the table")
    ac.add_argument("--dataset", help="dataset name, stored in the table")
    ac.set_defaults(func=_cmd_accuracy)

    sc = stages.add_parser(
        "score", help="teacher-force both models over responses; per-token divergence statistics",
        description="Both models of a pair read the same responses; at every response token their full next-token "
                    "distributions are compared (JS, KL both ways, entropies, top-k overlap, top-1 ranks) and both "
                    "log-probs of the token are recorded. LM-head logits are built in chunks, never for a whole batch.")
    sc.add_argument("--base", required=True, help="base checkpoint directory")
    sc.add_argument("--rl", required=True, help="RL checkpoint directory")
    sc.add_argument("--pair", required=True, help="pair manifest (resources/pairs/<pair>.json): shared vocabulary")
    sc.add_argument("--rollouts", required=True, help="rollout parquet whose responses are scored")
    sc.add_argument("--source", required=True, choices=["base", "rl"], help="which model wrote the responses")
    sc.add_argument("--out", required=True, help="per-token parquet to write")
    sc.add_argument("--chunk-size", type=int, default=None,
                    help="positions per LM-head chunk (default: sized by --chunk-memory-mb)")
    sc.add_argument("--chunk-memory-mb", type=int, default=512,
                    help="memory budget of one chunk's logits and statistics (default 512)")
    sc.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per forward (default 16384)")
    sc.add_argument("--device-base", default="cpu", help="device of the base model (default cpu)")
    sc.add_argument("--device-rl", default="cpu", help="device of the RL model (default cpu)")
    sc.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sc.set_defaults(func=_cmd_score)

    cs = stages.add_parser(
        "crosssample", help="decode with both models in lockstep, switching tokens under a budget",
        description="One model generates; where the policy's statistic exceeds the threshold and the response's "
                    "budget lasts, the token is drawn from the other model (forward: base generates, RL injected; "
                    "reverse: the other way). Responses are graded; one parquet row per sample with the switched "
                    "positions and their JS. Sharded and resumable like the rollout stage.")
    cs.add_argument("--base", required=True, help="base checkpoint directory")
    cs.add_argument("--rl", required=True, help="RL checkpoint directory")
    cs.add_argument("--dataset", required=True, help="dataset name")
    cs.add_argument("--dataset-spec", type=_json_arg, required=True, help="JSON dataset spec (as for rollout)")
    cs.add_argument("--direction", required=True, choices=["forward", "reverse"], help="which model generates")
    cs.add_argument("--policy", default="js", choices=["js", "entropy", "argmax", "random"],
                    help="where to switch (default js)")
    cs.add_argument("--budget", default="all", help="most switched tokens per response, or 'all' (default all)")
    th = cs.add_mutually_exclusive_group()
    th.add_argument("--threshold", type=float, help="switch where the policy's statistic exceeds this value")
    th.add_argument("--percentile", type=float,
                    help="threshold at this percentile of the statistic over --scores (random: of a uniform draw)")
    cs.add_argument("--scores", help="per-token scores of the generating model's rollouts (for --percentile)")
    _add_sampling_args(cs)
    cs.add_argument("--n-problems", type=int, default=0, help="use the dataset's first N problems (default all)")
    cs.add_argument("--batch-size", type=int, default=64, help="rows decoded together (default 64)")
    cs.add_argument("--problems-per-shard", type=int, default=64, help="problems per shard (default 64)")
    cs.add_argument("--device-base", default="auto", help="device of the base model (default: cuda if present)")
    cs.add_argument("--device-rl", default="auto", help="device of the RL model (default: cuda if present)")
    cs.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    cs.add_argument("--toy-settings", dest="settings", type=_json_arg, default={},
                    help="JSON object of toy build settings (config `toy:`), for the toy dataset")
    cs.add_argument("--out", required=True, help="parquet file to write")
    cs.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cs.set_defaults(func=_cmd_crosssample)

    ct = stages.add_parser("crosssample-table", help="aggregate cross-sampling runs: accuracy per budget",
                           description="One row per (direction, policy, budget): avg@n accuracy with a 95%% bootstrap "
                                       "CI over problems, mean switched tokens and the switched share of tokens.")
    ct.add_argument("inputs", nargs="+", help="cross-sampling parquet files")
    ct.add_argument("--pair", required=True, help="pair name, stored in the table")
    ct.add_argument("--dataset", required=True, help="dataset name, stored in the table")
    ct.add_argument("--out", required=True, help="parquet file to write")
    ct.set_defaults(func=_cmd_crosssample_table)

    fg = stages.add_parser(
        "figures", help="the paper's figures for one pair and dataset, from its tables",
        description="Figures 2-6 (positional concentration, entropy vs divergence, reallocation, cross-sampling "
                    "accuracy per budget, an example response coloured by JS) as PNG (200 dpi) and PDF in --out-dir.")
    fg.add_argument("--divergence-dir", required=True, help="directory of the divergence tables")
    fg.add_argument("--accuracy", required=True, help="the pair's accuracy table (rollouts)")
    fg.add_argument("--crosssample", help="the cross-sampling table (results/<pair>/<dataset>/crosssample.parquet)")
    fg.add_argument("--example-run", help="a forward cross-sampling run to take the example response from")
    fg.add_argument("--example-baseline", help="the same direction's budget-0 run (prefers responses it got wrong)")
    fg.add_argument("--tokenizer", help="checkpoint directory whose tokenizer decodes the example")
    fg.add_argument("--out-dir", required=True, help="directory for the figures")
    fg.set_defaults(func=_cmd_figures)

    fo = stages.add_parser("figure-overview", help="figure 1: the JS percentile curve of every pair on one axis",
                           description="The sparsity figure: JS percentile curves (log y) of all pairs, RLVR and "
                                       "SFT told apart by line style, the share under 1e-3 marked.")
    fo.add_argument("inputs", nargs="+", help="sparsity tables (divergence/sparsity.parquet)")
    fo.add_argument("--kinds", type=_json_arg, default={}, help='JSON {pair: "rlvr" | "sft"}')
    fo.add_argument("--out", required=True, help="output path without suffix (writes .png and .pdf)")
    fo.set_defaults(func=_cmd_figure_overview)

    rp = stages.add_parser("report", help="report.html and summary.json from the tables and figures",
                           description="A self-contained HTML report (figures embedded, headline numbers in words, the "
                                       "accuracy and cross-sampling tables, the config) and summary.json with the same "
                                       "numbers, machine-readable.")
    rp.add_argument("--entry", type=_json_arg, action="append", required=True,
                    help='JSON per pair and dataset: {"pair", "dataset", "kind", "accuracy", "divergence_dir", '
                         '"crosssample", "figures_dir"}')
    rp.add_argument("--overview", nargs="*", default=[], help="overview figure PNGs (figure 1)")
    cfg_src = rp.add_mutually_exclusive_group()
    cfg_src.add_argument("--config", help="the config file the run used (quoted in the report)")
    cfg_src.add_argument("--config-text", help="the config the run used, as text (the workflow passes its own)")
    rp.add_argument("--html", required=True, help="report.html to write")
    rp.add_argument("--json", required=True, help="summary.json to write")
    rp.set_defaults(func=_cmd_report)

    dv = stages.add_parser(
        "divergence", help="sparsity, position, entropy and reallocation tables from per-token scores",
        description="Aggregate both response sources' per-token scores into tidy tables: share of positions under JS "
                    "thresholds and the JS percentile curve; JS by normalised position; JS by base entropy; whether "
                    "RL's top token is among the base model's top 1/3/5; and, on the toy task, precision and recall "
                    "of high-JS positions against the recorded decision points.")
    dv.add_argument("--scores-base", required=True, help="scores of the base model's rollouts")
    dv.add_argument("--scores-rl", required=True, help="scores of the RL model's rollouts")
    dv.add_argument("--out-dir", required=True, help="directory for the tables")
    dv.add_argument("--pair", required=True, help="pair name, stored in the tables")
    dv.add_argument("--dataset", required=True, help="dataset name, stored in the tables")
    dv.add_argument("--toy-n-problems", type=int, default=0,
                    help="for the toy dataset: its number of problems, to compare with decision points")
    dv.add_argument("--tokenizer", help="checkpoint directory whose tokenizer encodes the toy traces")
    dv.add_argument("--settings", type=_json_arg, default={}, help="JSON toy build settings (config `toy:`)")
    dv.set_defaults(func=_cmd_divergence)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from tokenshift.datasets import DatasetError
    from tokenshift.models import ModelFetchError, TokenizerMismatch
    from tokenshift.rollout import BackendUnavailable

    if getattr(args, "hub", None) and not getattr(args, "revision", None):
        parser.error("--hub needs --revision (pin a commit so the run can be repeated)")
    try:
        args.func(args)
    except (InputError, ModelFetchError, TokenizerMismatch, DatasetError, BackendUnavailable, FileNotFoundError) as e:
        print(f"tokenshift {args.stage}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
