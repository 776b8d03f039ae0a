"""``tokenshift models ...`` (materialise checkpoints, build the toy pair, check a pair) and ``toy-check``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokenshift import layout
from tokenshift.cli.common import output, pair_checkpoints, quiet, settings, show
from tokenshift.loading import LOADING_KEYS
from tokenshift.options import add_options, nonempty
from tokenshift.registry import MODEL_DTYPES


def register(sub) -> None:
    from tokenshift.toy.config import ToyBuildConfig

    models = sub.add_parser(
        "models",
        help="materialise checkpoints and check model pairs",
        description="The checkpoint stage: materialise each model as a local Hugging Face "
        "checkpoint with a manifest, build the toy pair, compare a pair's tokenizers.",
    )
    msub = models.add_subparsers(dest="action", metavar="ACTION", required=True)

    f = msub.add_parser(
        "fetch",
        help="link a local checkpoint or download a hub one at a pinned revision",
        description="Materialise a local directory (linked) or a hub id at a pinned revision "
        "(safetensors only) at --out, then verify it and write <out>.json.",
    )
    f.add_argument("name", help="the model's name in the config")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--path", type=nonempty, help="a local Hugging Face checkpoint directory")
    src.add_argument("--hub", type=nonempty, help="a hub id, owner/name (needs --revision)")
    f.add_argument("--revision", type=nonempty, help="the hub revision to download (a commit hash)")
    f.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own code to run")
    f.add_argument(
        "--dtype",
        choices=MODEL_DTYPES,
        help="the weights' dtype in every loader (not set: float32 on CPU, bfloat16 on a GPU)",
    )
    f.add_argument("--attn-implementation", help="transformers' attention implementation (eager, sdpa, ...)")
    output(f, "--out", "a checkpoint directory", "checkpoint directory to create", directory=True)
    f.set_defaults(func=_fetch, parser=f)

    for role, helptext in (
        ("base", "pretrain the embedded toy base model on CPU"),
        ("rl", "train the embedded toy RL model with GRPO from the toy base"),
        ("sft", "fine-tune the embedded toy SFT model on correct traces from the toy base"),
    ):
        t = msub.add_parser(
            f"toy-{role}",
            help=helptext,
            description=helptext.capitalize() + "; save it with its tokenizer at --out and write <out>.json.",
        )
        t.add_argument("name", help="the model's name in the config")
        if role != "base":
            t.add_argument(
                "--init", required=True, help="the toy base checkpoint (directory or manifest) to start from"
            )
        add_options(t, ToyBuildConfig, title="toy build settings (config `toy:`)")
        output(t, "--out", "a checkpoint directory", "checkpoint directory to create", directory=True)
        quiet(t)
        t.set_defaults(func={"base": _toy_base, "rl": _toy_rl, "sft": _toy_sft}[role])

    c = msub.add_parser(
        "check-pair",
        help="compare a pair's tokenizers and write the pair manifest",
        description="Refuse a pair whose tokenizers differ; record the shared vocabulary size "
        "(padded embedding rows are sliced to it).",
    )
    c.add_argument("pair", help="the pair's name")
    pair_checkpoints(c)
    c.add_argument(
        "--chat-template",
        action="store_true",
        help="the pair's prompts go through the chat template: refuse two templates that prompt a question differently",
    )
    output(c, "--out", "a .json file path", "pair manifest (JSON) to write")
    c.set_defaults(func=_check_pair)

    _register_toy_check(sub)


def _register_toy_check(sub) -> None:
    from tokenshift.toy.config import ToyCheckOptions

    tc = sub.add_parser(
        "toy-check",
        help="check the toy pair against the task's ground truth",
        description="Accuracy of both toy models on eval problems (sampled at temperature 1 and greedy, with "
        "bootstrap CIs), and how well the highest-JS positions of correct traces find the recorded "
        "decision points (precision, recall, lift over chance). Writes accuracy.parquet and "
        "decision_points.parquet under --out. The task is the one the base model was built with.",
    )
    pair_checkpoints(tc, "toy ")
    tables = [Path(layout.toy_check(t)).name for t in ("accuracy", "decision_points")]
    output(tc, "--out", "a directory", "directory for the two tables", directory=True, writes=tables)
    add_options(tc, ToyCheckOptions, title="what is sampled")
    tc.set_defaults(func=_toy_check)


def _fetch(args: argparse.Namespace) -> None:
    from tokenshift.checkpoints import fetch_model

    if args.hub and not args.revision:
        args.parser.error("--hub needs --revision (pin a commit so the run can be repeated)")
    spec: dict = {"path": args.path} if args.path else {"hub": args.hub, "revision": args.revision}
    if args.trust_remote_code:
        spec["trust_remote_code"] = True
    spec |= {k: getattr(args, k) for k in LOADING_KEYS if getattr(args, k) is not None}
    manifest = fetch_model(args.name, spec, Path(args.out))
    print(json.dumps({k: manifest[k] for k in ("name", "source", "tokenizer_size", "embedding_rows")}))


# a handler per model, each calling its own build: a stage's code hash covers that build alone


def _toy_base(args: argparse.Namespace) -> None:
    from tokenshift.toy.build import build_toy_base
    from tokenshift.toy.config import ToyBuildConfig

    cfg = settings(ToyBuildConfig, args)
    print(build_toy_base(args.name, Path(args.out), cfg, progress=not args.quiet), file=sys.stderr)


def _toy_rl(args: argparse.Namespace) -> None:
    from tokenshift.toy.build import build_toy_rl
    from tokenshift.toy.config import ToyBuildConfig

    cfg = settings(ToyBuildConfig, args)
    print(build_toy_rl(args.name, Path(args.out), cfg, init=args.init, progress=not args.quiet), file=sys.stderr)


def _toy_sft(args: argparse.Namespace) -> None:
    from tokenshift.toy.build import build_toy_sft
    from tokenshift.toy.config import ToyBuildConfig

    cfg = settings(ToyBuildConfig, args)
    print(build_toy_sft(args.name, Path(args.out), cfg, init=args.init, progress=not args.quiet), file=sys.stderr)


def _check_pair(args: argparse.Namespace) -> None:
    from tokenshift.tokenizer import check_pair

    print(json.dumps(check_pair(args.pair, Path(args.base), Path(args.rl), Path(args.out), chat=args.chat_template)))


def _toy_check(args: argparse.Namespace) -> None:
    from tokenshift.toy.check import check_toy_pair

    tables = check_toy_pair(
        args.base, args.rl, Path(args.out), n_problems=args.n_problems, samples_per_problem=args.samples, seed=args.seed
    )
    show(tables["accuracy"], tables["decision_points"], rows=20, precision=4)
