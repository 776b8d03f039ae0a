"""What the stage modules share: settings from parsed arguments, and printing a table."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenshift.io import InputError
from tokenshift.options import add_options, from_args


def settings(cls: type, args: argparse.Namespace, **given):
    """The dataclass ``cls`` from ``args``; a value it refuses is an ``InputError`` (exit 2)."""
    try:
        return from_args(cls, args, **given)
    except (TypeError, ValueError) as e:
        raise InputError(f"{cls.__name__}: {e}") from None


def output(
    p: argparse.ArgumentParser,
    flag: str,
    expected: str,
    help: str,
    *,
    directory: bool = False,
    required: bool = True,
    writes: Sequence[str] = (),
) -> None:
    """An output path (``required`` or not), ``expected`` saying what it should be ("a .parquet file path", "a
    directory"; a directory's ``writes``: the names of the tables the stage writes in it). ``check_outputs``
    looks at it before the stage runs: a directory given where a file is written (or a file where a directory
    is) is one line naming the flag, not a traceback at the last step."""
    p.add_argument(flag, required=required, help=help)
    p.set_defaults(outputs=[*(p.get_default("outputs") or []), (flag, expected, directory, tuple(writes))])


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path (``output``) that is a directory where a file goes, a file where a directory does,
    or, where a file goes, one of the stage's own input files (any other argument naming the same file), which
    the stage would overwrite with what it made from it."""
    outputs = getattr(args, "outputs", None) or []
    names = {flag.removeprefix("--").replace("-", "_") for flag, *_ in outputs}
    for flag, expected, directory, writes in outputs:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is None:  # an optional output not asked for
            continue
        path = Path(value)
        if not directory and path.is_dir():
            raise InputError(f"{flag} {value}: is a directory; expected {expected}")
        # "a .csv file path": a table written under another suffix would be read back as what it is not
        suffix = re.fullmatch(r"an? (\.\w+) file path", expected)
        if suffix and path.suffix.lower() != suffix[1]:
            raise InputError(f"{flag} {value}: expected {expected} (it writes {suffix[1][1:]})")
        if expected == "a file path without suffix" and path.suffix:  # the suffixes are the outputs'
            raise InputError(f"{flag} {value}: expected {expected} (it writes {path.stem}.png and .pdf)")
        if directory and path.exists() and not path.is_dir():
            raise InputError(f"{flag} {value}: is a file; expected {expected}")
        if not directory and (given := _same_as_input(path, args, names)):  # a directory may hold inputs and outputs
            raise InputError(f"{flag} {value}: is also an input of this stage ({given}); write the output elsewhere")
        for name in writes:  # but not as the tables it writes there
            if given := _same_as_input(path / name, args, names):
                raise InputError(
                    f"{flag} {value}: the stage writes {path / name} there, which is also an input of it ({given}); "
                    "write the output elsewhere"
                )


def _same_as_input(path: Path, args: argparse.Namespace, outputs: set[str]) -> str | None:
    """The argument (``name VALUE``) other than the ``outputs`` that names the existing file ``path`` (the same
    file however spelled: a link, ``../``, a hard link), or None."""
    if not path.exists():
        return None  # not yet written: no input can be it
    for name, value in vars(args).items():
        if name in outputs or name in ("outputs", "func"):
            continue
        for v in _words(value):
            # a path, or the path of a NAME=PATH word (`report --result`, `explorer --tokenizer`)
            for candidate in (v, v.partition("=")[2]) if isinstance(v, str) and "=" in v else (v,):
                try:
                    same = os.path.samefile(candidate, path)
                except (OSError, ValueError):  # not a path, or none that exists
                    continue
                if same:
                    return f"{name.replace('_', '-')} {v}"
    return None


def _words(value) -> list:
    """The strings and paths of an argument's value, inside lists of lists (``action="append"`` with ``nargs``)."""
    if isinstance(value, list | tuple):
        return [w for v in value for w in _words(v)]
    return [value] if isinstance(value, str | os.PathLike) else []


def show(*tables, rows: int = 40, precision: int = 3) -> None:
    """Print polars tables for a person reading the log."""
    import polars as pl

    with pl.Config(tbl_rows=rows, tbl_cols=12, float_precision=precision, tbl_width_chars=160):
        for t in tables:
            print(t)


def quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def pair_checkpoints(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--base`` and ``--rl``: the pair's two checkpoints, each a directory or its manifest."""
    for role, name in (("base", "base"), ("rl", "RL")):
        p.add_argument(
            f"--{role}",
            required=True,
            help=f"{what}{name} checkpoint (directory, or its manifest .json: then verified)",
        )


def generation_options(p: argparse.ArgumentParser, stage: type, title: str) -> None:
    """The settings a sampling stage reads: the config's ``sampling:``, the dataset's prompt, the
    grading, and the stage's own."""
    from tokenshift.settings import GradingConfig, PromptConfig, SamplingConfig

    add_options(p, SamplingConfig, title="sampling (config `sampling:`)")
    add_options(p, PromptConfig, title="prompt (config `datasets.<name>:`)")
    add_options(p, GradingConfig, title="grading (config `grading:`)")
    add_options(p, stage, title=title)
    part_option(p)
    quiet(p)


def _part(text: str):
    from tokenshift.sharding import Part

    try:
        return Part.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def part_option(p: argparse.ArgumentParser) -> None:
    """``--part I-of-N``: this job's share of a table split over N jobs (the workflow's ``{scatteritem}``)."""
    from tokenshift.sharding import Part

    p.add_argument(
        "--part",
        type=_part,
        default=Part(),
        metavar="I-of-N",
        help="write only job I's share of a table split over N jobs (default 1-of-1: all of it)",
    )


def _kind(text: str) -> tuple[str, str]:
    pair, sep, kind = text.partition("=")
    if not sep or kind not in ("rlvr", "sft"):
        raise argparse.ArgumentTypeError(f"expected PAIR=rlvr or PAIR=sft, got {text!r}")
    return pair, kind


def kinds(args: argparse.Namespace) -> dict[str, str]:
    """``--kind`` (``pair_kinds``) as pair -> kind, each pair once."""
    return once(args.kind, lambda pair: f"--kind {pair}=...", "pair", values=True)


def once(items: Iterable[tuple[Any, Any]], named: Callable[[Any], str], each: str, *, values: bool = False) -> dict:
    """``items`` ((key, value)) as a dict, refusing a key given twice (the last one won, unsaid): ``named(key)``
    names it in the error, as the arguments spelled it; with ``values``, the error shows both values too."""
    out: dict = {}
    for key, value in items:
        if key in out:
            both = f" ({out[key]}, {value})" if values else ""
            raise InputError(f"{named(key)}: given twice{both}; expected each {each} once")
        out[key] = value
    return out


def pair_kinds(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kind",
        type=_kind,
        action="append",
        default=[],
        metavar="PAIR=KIND",
        help="how a pair's second model was tuned, rlvr (the default) or sft",
    )
