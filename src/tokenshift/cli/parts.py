"""``tokenshift gather``: the table of a run split over several jobs (``--part``), from its parts; and
``tokenshift csv``: an aggregate table's CSV copy."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenshift.cli.common import output


def register(sub) -> None:
    p = sub.add_parser(
        "gather",
        help="join the parts of a split run into its table",
        description="Concatenate the parquet parts written by the jobs of one split run (rollouts, scores, "
        "cross-samples: `--part i-of-n`), in the order given, into one table. With --sort-by, rows are "
        "then sorted by those columns.",
    )
    p.add_argument("parts", nargs="+", help="the parts' parquet files, in order")
    p.add_argument("--sort-by", nargs="+", default=[], metavar="COLUMN", help="columns to sort the rows by")
    output(p, "--out", "a .parquet file path", "parquet file to write")
    p.set_defaults(func=_gather)

    c = sub.add_parser(
        "csv",
        help="write a table as CSV, beside its parquet",
        description="The same rows and columns as CSV, for a spreadsheet or R; a list, array or struct column as "
        "each value's JSON text.",
    )
    c.add_argument("table", help="the parquet table")
    output(c, "--out", "a .csv file path", "CSV file to write")
    c.set_defaults(func=_csv)


def _gather(args: argparse.Namespace) -> None:
    from tokenshift.sharding import gather_parts

    gather_parts([Path(p) for p in args.parts], Path(args.out), sort_by=args.sort_by)


def _csv(args: argparse.Namespace) -> None:
    from tokenshift.tables import csv_copy

    csv_copy(Path(args.table), Path(args.out))
