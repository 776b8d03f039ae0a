"""What the stage modules share: settings from parsed arguments, and printing a table."""

from __future__ import annotations

import argparse

from tokenshift.io import InputError
from tokenshift.options import from_args


def settings(cls: type, args: argparse.Namespace, **given):
    """The dataclass ``cls`` from ``args``; a value it refuses is an ``InputError`` (exit 2)."""
    try:
        return from_args(cls, args, **given)
    except (TypeError, ValueError) as e:
        raise InputError(f"{cls.__name__}: {e}") from None


def show(*tables, rows: int = 40, precision: int = 3) -> None:
    """Print polars tables for a person reading the log."""
    import polars as pl

    with pl.Config(tbl_rows=rows, tbl_cols=12, float_precision=precision, tbl_width_chars=160):
        for t in tables:
            print(t)


def quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
