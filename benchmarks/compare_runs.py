"""Whether two finished workflow runs wrote the same tables: the check a refactor owes the default run.

    python benchmarks/compare_runs.py OLD_RUN_DIR NEW_RUN_DIR [--ignore COLUMN ...]

Every parquet table under OLD_RUN_DIR/results (parts and shards aside) is read beside the one at the
same path under NEW_RUN_DIR/results and compared row for row, column by column, with polars'
``DataFrame.equals`` (floats bit for bit, NaN equal to NaN). Columns named by ``--ignore`` are left
out on both sides: by default ``seconds`` (wall time a GRPO history records) and ``settings`` (the
label of the settings a table was made with, which names the code's settings classes and so may move
when they gain a field, without any number moving). Prints each table that differs, with the columns
that do, and each table only one run has; the last line reads ``RESULT same_tables <n> of <m>``.
Exits 1 where any table differs or is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl


def tables(run: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(run)): p
        for p in sorted((run / "results").rglob("*.parquet"))
        if ".parts" not in str(p) and ".shards" not in str(p)
    }


def compare(old: pl.DataFrame, new: pl.DataFrame) -> str | None:
    """Why two tables differ, or None."""
    if old.columns != new.columns:
        gone, added = sorted(set(old.columns) - set(new.columns)), sorted(set(new.columns) - set(old.columns))
        return f"columns: only old {gone}, only new {added}" if gone or added else "the same columns in another order"
    if old.height != new.height:
        return f"{old.height} rows, now {new.height}"
    if old.equals(new):
        return None
    return f"columns that differ: {[c for c in old.columns if not old[c].equals(new[c])]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--ignore", nargs="*", default=["seconds", "settings"])
    args = parser.parse_args(argv)
    old, new = tables(args.old), tables(args.new)
    same, bad = 0, 0
    for rel in sorted(old.keys() | new.keys()):
        if rel not in new or rel not in old:
            print(f"{rel}: only in {'old' if rel in old else 'new'}")
            bad += 1
            continue
        a, b = (pl.read_parquet(p).drop(args.ignore, strict=False) for p in (old[rel], new[rel]))
        why = compare(a, b)
        if why:
            print(f"{rel}: {why}")
            bad += 1
        else:
            same += 1
    print(f"RESULT same_tables {same} of {same + bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
