"""``tokenshift dataset``: load a dataset's problems once, into one parquet file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenshift.cli.common import output, settings
from tokenshift.options import add_options


def register(sub) -> None:
    from tokenshift.settings import DatasetSpec
    from tokenshift.toy.task import ToyTaskConfig

    d = sub.add_parser(
        "dataset",
        help="load a dataset's problems (toy, local file or hub) into one parquet file",
        description="Load the problems of one dataset from exactly one source (--toy eval, --path, --hub with "
        "--revision, or --preset with --revision) and write problem_id, question and answer to --out. "
        "Every later stage reads this file. A gold answer that is empty, a row without the fields, or "
        "a file that is not what its suffix says is an error naming the row or the file.",
    )
    d.add_argument("name", help="the dataset's name (used in problem ids and messages)")
    add_options(d, DatasetSpec, title="source (config `datasets.<name>:`)")
    add_options(d, ToyTaskConfig, title="toy task (for --toy eval; from config `toy:`)")
    output(d, "--out", "a .parquet file path", "parquet file to write")
    d.set_defaults(func=_dataset)


def _dataset(args: argparse.Namespace) -> None:
    from tokenshift.datasets import DatasetSpec, prepare_dataset
    from tokenshift.toy.task import ToyTaskConfig

    table = prepare_dataset(
        args.name, settings(DatasetSpec, args), Path(args.out), toy_task=settings(ToyTaskConfig, args)
    )
    print(f"dataset {args.name!r}: {table.height} problems written to {args.out}", file=sys.stderr)
