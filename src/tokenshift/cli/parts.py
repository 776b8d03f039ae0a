"""``tokenshift gather``: the table of a run split over several jobs (``--part``), from its parts;
``tokenshift csv``: an aggregate table's CSV copy; and ``tokenshift record-config``: the settings a study's
results depend on, as the report quotes them."""

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

    rc = sub.add_parser(
        "record-config",
        help="write the settings a study's results depend on as YAML (results/config.yaml)",
        description="The workflow's recorded settings (options.recorded_config, given as one JSON text) written "
        "as YAML, in the order given, for the report to quote.",
    )
    rc.add_argument("settings", help="the recorded settings as a JSON object")
    output(rc, "--out", "a .yaml file path", "YAML file to write")
    rc.set_defaults(func=_record_config)


def _gather(args: argparse.Namespace) -> None:
    from tokenshift.sharding import gather_parts

    gather_parts([Path(p) for p in args.parts], Path(args.out), sort_by=args.sort_by)


def _record_config(args: argparse.Namespace) -> None:
    import json

    from tokenshift.io import InputError, write_yaml_atomic

    try:
        settings = json.loads(args.settings)
    except RecursionError:  # nested deeper than Python's parser recurses (eleventh hostile pass, H8)
        raise InputError(
            "settings: nested too deep to read; expected the recorded settings as one JSON object"
        ) from None
    except ValueError as e:
        raise InputError(f"settings: not JSON ({e}); expected the recorded settings as one JSON object") from None
    if not isinstance(settings, dict):
        raise InputError(f"settings: a JSON {type(settings).__name__}; expected an object")
    write_yaml_atomic(Path(args.out), settings)


def _csv(args: argparse.Namespace) -> None:
    from tokenshift.tables import csv_copy

    csv_copy(Path(args.table), Path(args.out))
