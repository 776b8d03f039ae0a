"""The ``tokenshift`` command: one subcommand per stage, usable with or without Snakemake.

The workflow's rules call these; a user can too, e.g.::

    tokenshift models toy-base toy-base --out resources/models/toy-base
    tokenshift dataset toy --toy eval --n-problems 500 --out resources/datasets/toy.parquet
    tokenshift rollout --model resources/models/toy-base.json --dataset resources/datasets/toy.parquet \\
        --template '{question}' --no-chat-template --out base.parquet

Each stage's module here registers its subcommands next to the handler that runs them; a
handler parses, calls one library function and exits. Settings come from the stage's config
dataclass (``tokenshift.options``), so a flag's default and help are those of the library.
Errors in input (a bad path, a file that is not what it should be, a model that cannot be
fetched, tokenizers that disagree) print one line naming the file or value and exit with status
2; nothing already finished is touched.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tokenshift import __version__
from tokenshift.cli import crosssample, dataset, figures, models, parts, profile, rollout, score, training
from tokenshift.cli.common import check_outputs
from tokenshift.codehash import check_job_package
from tokenshift.io import InputError

COMMANDS = {
    models: ("models", "toy-check"),
    dataset: ("dataset",),
    rollout: ("rollout", "accuracy"),
    score: ("score", "divergence"),
    crosssample: ("crosssample", "crosssample-table"),
    parts: ("gather", "csv", "record-config"),
    training: ("advantages", "training-shifts", "figure-training"),
    figures: ("figures", "figure-overview", "explorer", "report"),
    profile: ("profile",),
}
"""The modules that register subcommands, in the order of the study, and the top-level commands each registers.
``tokenshift <command>`` registers its own module's alone, so no other stage's ``register`` runs in it: a stage's
code hash covers its own module's (tokenshift.codehash), and a statement added to another's ran unhashed (the
twenty-first hostile pass)."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of those of the module that registers top-level ``command`` (where one
    does: else every one, so that the error lists them)."""
    parser = argparse.ArgumentParser(
        prog="tokenshift",
        description="Token-level analysis of how RL fine-tuning shifts a language model "
        "(Meng et al., 'Sparse but Critical', ICLR 2026). Each subcommand is one stage "
        "of the Snakemake workflow and runs on its own.",
    )
    parser.add_argument("--version", action="version", version=f"tokenshift {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    owner = [module for module, names in COMMANDS.items() if command in names]
    for module in owner or COMMANDS:
        module.register(sub)
    return parser


def _not_text(argv: list[str]) -> str | None:
    """Why an argument is refused where it is not UTF-8 text: Python passes its bytes on as lone surrogates,
    which every library then fails on in its own traceback (a template, an output path or a name; the
    sixteenth pass)."""
    from tokenshift.io import lone_surrogate

    bad = next((arg for arg in argv if lone_surrogate(arg)), None)
    if bad is None:
        return None
    shown = bad.encode("utf-8", "surrogateescape")
    return f"argument {shown!r} is not UTF-8 text: expected UTF-8 (names, paths, templates)"


def _link_loop(argv: list[str]) -> str | None:
    """Why an argument is refused where it is a path that goes round a loop of symbolic links: stages that resolve
    their paths (the gather's check for a part given twice) failed in ``pathlib``'s traceback (the eighteenth
    pass). An option's value given as ``--out=PATH`` is looked at too."""
    from tokenshift.io import link_loop

    bad = next((v for arg in argv for v in {arg, arg.partition("=")[2]} if v and link_loop(v)), None)
    return None if bad is None else f"{bad}: a loop of symbolic links (expected a file or folder)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if why := _not_text(argv) or _link_loop(argv):
        print(f"tokenshift: error: {why}", file=sys.stderr)
        return 2
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # the top level's options take no value
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    try:
        check_job_package()  # before anything runs: a job of another package than the workflow's is refused
        check_outputs(args)
        args.func(args)
    except InputError as e:  # bad input (ModelFetchError, TokenizerMismatch, DatasetError, BackendUnavailable are)
        print(f"tokenshift {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written: name it
        where = f"{e.filename}: " if e.filename else ""
        print(f"tokenshift {args.stage}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
