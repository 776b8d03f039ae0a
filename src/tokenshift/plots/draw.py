"""The figure stage: read the tables of one pair and dataset (or of every pair), draw, save."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from tokenshift import layout
from tokenshift.io import InputError, write_parquet_atomic
from tokenshift.plots.figures import FIGURES, sparsity
from tokenshift.plots.style import save
from tokenshift.registry import DIVERGENCE_FIGURES

PAIR_TABLES = (*DIVERGENCE_FIGURES, "accuracy", "crosssample")
"""The tables ``draw_pair_figures`` draws from, by name: each divergence figure's table, and (a cross-sampled
pair's) the accuracy and cross-sampling tables."""


def draw_pair_figures(
    tables: Mapping[str, Path],
    out_dir: Path,
    *,
    example_run: Path | None = None,
    example_baseline: Path | None = None,
    tokenizer: Path | None = None,
    example_out: Path | None = None,
) -> list[str]:
    """Figures 2-6 of one pair and dataset from its ``tables`` (name -> path, ``PAIR_TABLES``: the divergence
    tables ``registry.DIVERGENCE_FIGURES`` names, and a cross-sampled pair's ``accuracy`` and ``crosssample``).

    Figure 6 shows a response of the forward run ``example_run``, preferring one whose twin in
    ``example_baseline`` (budget 0, same noise) was wrong, decoded with ``tokenizer``; its tokens
    are written to ``example_out`` where given (no rows where there is no example). Returns the names drawn.
    """
    from tokenshift.tables import EXAMPLE_SCHEMA, check_one_pair, example_table, read_cross_run, read_table

    tables = {name: Path(path) for name, path in tables.items()}
    out_dir = Path(out_dir)
    missing = [n for n in DIVERGENCE_FIGURES if n not in tables]
    if missing or tables.keys() - set(PAIR_TABLES) or ("accuracy" in tables) != ("crosssample" in tables):
        raise InputError(
            f"tables {sorted(tables)}: expected {', '.join(DIVERGENCE_FIGURES)}, and accuracy with crosssample "
            "for a cross-sampled pair"
        )
    div = {n: read_table(tables[n], n, f"the {n} table (tokenshift divergence)") for n in DIVERGENCE_FIGURES}
    read = {tables[n]: t for n, t in div.items()}
    figs = {name: FIGURES[name](t) for name, t in div.items()}
    crossed = "crosssample" in tables
    if crossed:
        what = "a cross-sampling table (tokenshift crosssample-table)"
        cross = read_table(tables["crosssample"], "crosssample", what)
        accuracy = read_table(tables["accuracy"], "accuracy", "an accuracy table (tokenshift accuracy)")
        read |= {tables["crosssample"]: cross, tables["accuracy"]: accuracy}
    check_one_pair(read)
    if crossed:
        figs["crosssample"] = FIGURES["crosssample"](cross, accuracy)
    if example_baseline and not example_run:  # ignored without a word (eleventh hostile pass, H11)
        raise InputError("--example-baseline: expected it beside --example-run, the run it is the budget-0 twin of")
    if example_run:
        from tokenshift.tokenizer import load_tokenizer

        run = read_cross_run(example_run)
        baseline = read_cross_run(example_baseline) if example_baseline else None
        # another pair's example response drawn among this pair's figures (seventh hostile pass, C7)
        check_one_pair(
            {**read, Path(example_run): run, **({Path(example_baseline): baseline} if baseline is not None else {})}
        )
        if run["direction"][0] != "forward":
            raise InputError(f"{example_run}: a {run['direction'][0]} run; expected a forward run (--example-run)")
        twin = baseline is not None and Path(example_baseline).resolve() != Path(example_run).resolve()
        if twin and (baseline["budget"][0], baseline["direction"][0]) != ("0", "forward"):  # the run itself: none
            raise InputError(
                f"{example_baseline}: a {baseline['direction'][0]} run at budget {baseline['budget'][0]}; expected the "
                "forward run at budget 0 (--example-baseline)"
            )
        ex = example_table(run, load_tokenizer(tokenizer), baseline=baseline)
        figs["example"] = FIGURES["example"](ex)
    else:
        ex = pl.DataFrame(schema=EXAMPLE_SCHEMA)
        if crossed:  # a pair that is not cross-sampled has neither figure
            figs["example"] = FIGURES["example"](
                ex, note="No forward cross-sampling run was given to draw an example response from."
            )
    if example_out is not None:
        write_parquet_atomic(ex, Path(example_out))
    for name, fig in figs.items():
        save(fig, out_dir / name)
    return list(figs)  # in drawing order


def draw_overview(tables: Sequence[Path], out: Path, *, kinds: Mapping[str, str] | None = None) -> None:
    """Figure 1, the JS percentile curves of every pair (``kinds``: pair -> rlvr | sft), at ``out``.{png,pdf}."""
    from tokenshift.tables import read_table

    read = [read_table(p, "sparsity", "a sparsity table (tokenshift divergence)") for p in tables]
    seen: dict[tuple, Path] = {}
    for path, t in zip(tables, read, strict=True):  # one curve per pair and dataset: a second drew over the first
        for key in t.select("pair", "dataset").unique().sort("pair", "dataset").iter_rows():
            if key in seen:
                raise InputError(
                    f"{path}: holds pair {key[0]!r} on dataset {key[1]!r}, which {seen[key]} holds already; "
                    "expected each pair's sparsity table once"
                )
            seen[key] = path
    table = pl.concat(read, how="diagonal")
    unknown = sorted(set(kinds or {}) - set(table["pair"]))
    if unknown:
        raise InputError(
            f"--kind {unknown[0]}: no such pair in the tables (they hold {sorted(set(table['pair']))}); "
            "expected a kind for a pair they hold"
        )
    table = table.with_columns(pl.col("pair").replace_strict(dict(kinds or {}), default="rlvr").alias("pair_kind"))
    save(sparsity(table), Path(out))


def draw_training(
    *, curve: Path | None = None, comparison: Path | None = None, shifts: Path | None = None, out_dir: Path
) -> list[str]:
    """``advantages`` from the experiment's ``curve`` and ``comparison`` tables and ``training_shifts``
    from the ``shifts`` table, each where given, in ``out_dir``; returns the names drawn."""
    from tokenshift.plots.figures import advantages, training_shifts
    from tokenshift.tables import read_table

    if (curve is None) != (comparison is None):
        raise InputError("--curve and --comparison: expected both of the experiment's tables, or neither")
    drawn = []
    if curve is not None:
        what = "the experiment's {} (tokenshift advantages table)"
        curve_table = read_table(curve, "curve", what.format("curve"))
        comparison_table = read_table(comparison, "comparison", what.format("comparison table"))
        save(advantages(curve_table, comparison_table), Path(out_dir) / layout.advantages_figure(""))
        drawn.append("advantages")
    if shifts is not None:
        table = read_table(shifts, "training_shifts", "a training-shifts table (tokenshift training-shifts)")
        save(training_shifts(table), Path(out_dir) / layout.shifts_figure(""))
        drawn.append("training_shifts")
    return drawn
