"""Result tables built from per-sample parquet: tidy, one row per observation.

``accuracy_table`` gives, per rollout table (one model role on one dataset):

- ``avg@n``: mean over problems of the share of a problem's n samples graded correct, with a
  95% percentile-bootstrap CI over problems (``scipy.stats.bootstrap``);
- ``pass@k`` for each requested k <= n, the unbiased estimator of Chen et al. (2021, Codex):
  1 - C(n - c, k) / C(n, k) per problem, averaged (its CI likewise bootstrapped);

and with each, ``n_no_box`` and ``n_correct_unboxed`` (``box_counts``): what the grading mode
decided for responses without a ``\\boxed{}`` answer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from math import comb
from pathlib import Path

import numpy as np
import polars as pl

from tokenshift import layout
from tokenshift.datasets import label_dataset_name, read_problem_table, read_toy_problems
from tokenshift.io import (
    InputError,
    place,
    read_models_record,
    read_parquet,
    remake_hint,
    write_csv_atomic,
    write_parquet_atomic,
)
from tokenshift.registry import DIRECTIONS, POLICIES, RANK_BUCKETS, parse_budget
from tokenshift.settings import AccuracyConfig, DivergenceConfig
from tokenshift.stats import mean_ci


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` correct of ``n`` samples."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def box_counts(df: pl.DataFrame) -> dict[str, int]:
    """The grading mode, and how many responses had no ``\\boxed{}`` answer (``n_no_box``: wrong under strict grading,
    graded on the whole response under lenient grading) and how many of those lenient grading
    counted correct (``n_correct_unboxed``)."""
    if "grade_status" not in df.columns:  # a table from elsewhere that does not say: unknown
        return {"grading": None, "n_no_box": None, "n_correct_unboxed": None}
    status = df["grade_status"]
    unboxed = status == "unboxed"
    return {
        "grading": df["grading"][0] if "grading" in df.columns and df.height else None,
        "n_no_box": int((unboxed | (status == "no_box")).sum()),
        "n_correct_unboxed": int((unboxed & df["correct"]).sum()),
    }


def accuracy_table(
    rollouts: Mapping[str, pl.DataFrame],
    *,
    ks: Iterable[int] = (1,),
    seed: int = 0,
    labels: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """One row per (role, metric); ``rollouts`` maps a role name to its rollout table."""
    rows = []
    for role, df in rollouts.items():
        per = df.group_by("problem_id").agg(pl.len().alias("n"), pl.col("correct").sum().alias("c")).sort("problem_id")
        ns, cs = per["n"].to_numpy(), per["c"].to_numpy()
        if len(set(ns.tolist())) != 1:
            raise ValueError(f"role {role!r}: problems have different sample counts {sorted(set(ns.tolist()))}")
        n = int(ns[0])
        metrics = {f"avg@{n}": cs / ns}
        for k in ks:
            if k > n:  # the workflow's config check keeps k <= sampling.n: a table that lost samples
                raise ValueError(f"role {role!r}: pass@{k} needs {k} samples per problem, the table holds {n}")
            metrics[f"pass@{k}"] = np.array([pass_at_k(n, int(c), k) for c in cs])
        for metric, values in metrics.items():
            mean, lo, hi = mean_ci(values, seed=seed)
            rows.append(
                {
                    **(labels or {}),
                    "role": role,
                    "metric": metric,
                    "value": mean,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_problems": len(cs),
                    "samples_per_problem": n,
                    **box_counts(df),
                    "dataset_version": df["dataset_version"][0],
                }
            )
    return pl.DataFrame(rows)


# --- divergence tables (the paper's first analysis), from per-token score tables -------------

JS_THRESHOLDS = (1e-4, 1e-3, 1e-2, 0.1)
# A position is high-JS when its JS is in the top 5% of its (pair, dataset, source) table, or
# above an absolute cut (``DivergenceConfig``).
HIGH_ENTROPY_QUANTILE = 0.90


def _high_js(scores: pl.DataFrame, cfg: DivergenceConfig) -> tuple[pl.Expr, float]:
    if cfg.high_js_cut is not None:
        return pl.col("js") > cfg.high_js_cut, cfg.high_js_cut
    cut = float(scores["js"].quantile(cfg.high_js_quantile))
    # at least some divergence: a table of identical models has no high-JS positions
    return (pl.col("js") > cut) & (pl.col("js") > 0), cut


def _js_ci() -> list[pl.Expr]:
    """95% normal-approximation CI of a bin's mean JS (bins hold thousands of positions)."""
    half = 1.96 * pl.col("js").std().fill_null(0.0) / pl.len().sqrt()
    return [(pl.col("js").mean() - half).alias("js_ci_low"), (pl.col("js").mean() + half).alias("js_ci_high")]


def sparsity_table(scores: pl.DataFrame, cfg: DivergenceConfig = DivergenceConfig()) -> pl.DataFrame:
    """Share of positions with JS below each threshold, and the JS percentile curve."""
    js = scores["js"]
    rows = [{"kind": "share_below", "value": t, "js_nats": t, "share": float((js < t).mean())} for t in JS_THRESHOLDS]
    rows += [
        {"kind": "percentile", "value": q, "js_nats": float(js.quantile(q / 100, "linear")), "share": q / 100}
        for q in range(0, 101)
    ]
    return pl.DataFrame(rows)


def position_table(scores: pl.DataFrame, bins: int = 10, cfg: DivergenceConfig = DivergenceConfig()) -> pl.DataFrame:
    """Mean JS (with ``js_ci_low``/``js_ci_high``) and share of high-JS positions by normalised
    response position (start/middle/end)."""
    high, cut = _high_js(scores, cfg)
    b = (pl.col("norm_position") * bins).floor().clip(0, bins - 1).cast(pl.Int32).alias("bin")
    t = (
        scores.with_columns(b, high.alias("high"))
        .group_by("bin")
        .agg(
            pl.col("js").mean().alias("mean_js"),
            pl.col("high").mean().alias("share_high_js"),
            pl.len().alias("n_positions"),
            *_js_ci(),
        )
        .sort("bin")
    )
    region = (
        pl.when(pl.col("bin") == 0)
        .then(pl.lit("start"))
        .when(pl.col("bin") == bins - 1)
        .then(pl.lit("end"))
        .otherwise(pl.lit("middle"))
    )
    return t.with_columns(
        (pl.col("bin") / bins).alias("position_low"),
        ((pl.col("bin") + 1) / bins).alias("position_high"),
        region.alias("region"),
        pl.lit(cut).alias("high_js_cut"),
    )


def entropy_table(scores: pl.DataFrame, bins: int = 10, cfg: DivergenceConfig = DivergenceConfig()) -> pl.DataFrame:
    """JS by base-model entropy (quantile bins; mean JS with a 95% CI), and how high-JS positions
    sit among high-entropy ones."""
    high, cut = _high_js(scores, cfg)
    ent = scores["entropy_base"]
    edges = np.unique(np.quantile(ent.to_numpy(), np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, ent.to_numpy(), side="right") - 1, 0, max(len(edges) - 2, 0))
    t = (
        scores.with_columns(pl.Series("bin", idx, dtype=pl.Int32), high.alias("high"))
        .group_by("bin")
        .agg(
            pl.col("entropy_base").mean().alias("mean_entropy_base"),
            pl.col("js").mean().alias("mean_js"),
            pl.col("high").mean().alias("share_high_js"),
            pl.len().alias("n_positions"),
            *_js_ci(),
        )
        .sort("bin")
    )
    ent_cut = float(ent.quantile(HIGH_ENTROPY_QUANTILE))
    flags = scores.select(high.alias("high"), (pl.col("entropy_base") > ent_cut).alias("high_entropy"))
    high_ent = flags.filter(pl.col("high_entropy"))
    summary = {
        "share_high_js_among_high_entropy": float(high_ent["high"].mean()) if high_ent.height else float("nan"),
        "share_high_js_overall": float(flags["high"].mean()),
        "share_high_entropy_among_high_js": float(flags.filter(pl.col("high"))["high_entropy"].mean())
        if flags["high"].any()
        else float("nan"),
    }
    return t.with_columns(
        pl.lit(cut).alias("high_js_cut"),
        pl.lit(ent_cut).alias("high_entropy_cut"),
        *[pl.lit(v).alias(k) for k, v in summary.items()],
    )


def reallocation_table(scores: pl.DataFrame, cfg: DivergenceConfig = DivergenceConfig()) -> pl.DataFrame:
    """Is RL's choice already among the base model's top candidates, and how much mass moves onto it."""
    rank = scores["rl_top1_rank_in_base"]
    moved = scores["p_rl_of_rl_top1"] - scores["p_base_of_rl_top1"]
    high, _ = _high_js(scores, cfg)
    rows = [{"metric": f"rl_top1_in_base_top{k}", "value": float((rank < k).mean())} for k in sorted(cfg.rank_k)]
    hi = scores.filter(high)
    if hi.height:
        rows += [
            {"metric": f"rl_top1_in_base_top{k}_at_high_js", "value": float((hi["rl_top1_rank_in_base"] < k).mean())}
            for k in sorted(cfg.rank_k)
        ]
    rows.append({"metric": "mean_mass_moved_onto_rl_top1", "value": float(moved.mean())})
    if hi.height:
        rows.append(
            {
                "metric": "mean_mass_moved_onto_rl_top1_at_high_js",
                "value": float((hi["p_rl_of_rl_top1"] - hi["p_base_of_rl_top1"]).mean()),
            }
        )
    for v, share in scores["topk_overlap"].value_counts(normalize=True, name="share").sort("topk_overlap").iter_rows():
        rows.append({"metric": f"topk_overlap={v:.2f}", "value": float(share)})
    for r in range(RANK_BUCKETS + 1):
        label = f"rl_top1_rank_in_base={r}" if r < RANK_BUCKETS else f"rl_top1_rank_in_base>={RANK_BUCKETS}"
        share = float((rank == r).mean()) if r < RANK_BUCKETS else float((rank >= RANK_BUCKETS).mean())
        rows.append({"metric": label, "value": share})
    return pl.DataFrame(rows)


DIVERGENCE_BUILDERS = {
    "sparsity": sparsity_table,
    "position": position_table,
    "entropy": entropy_table,
    "reallocation": reallocation_table,
}
"""How each of ``registry.DIVERGENCE_TABLES`` (the tables' names, and the workflow's outputs) is computed."""


def divergence_tables(
    scores_by_source: Mapping[str, pl.DataFrame],
    labels: Mapping[str, str],
    cfg: DivergenceConfig = DivergenceConfig(),
) -> dict[str, pl.DataFrame]:
    """Every divergence table for each response source, stacked, with pair/dataset/source columns."""
    out = {}
    for name, fn in DIVERGENCE_BUILDERS.items():
        parts = []
        for source, scores in scores_by_source.items():
            t = fn(scores, cfg=cfg)
            parts.append(t.with_columns(*[pl.lit(v).alias(k) for k, v in {**labels, "source": source}.items()]))
        out[name] = pl.concat(parts, how="diagonal")
    return out


# --- cross-sampling (the paper's causal experiment), from per-sample cross-sample tables --------


def budget_order(label: str) -> float:
    """Sort key of a budget label: numbers in order, ``all`` last."""
    return math.inf if label == "all" else float(label)


def dense_curve(run: pl.DataFrame, *, seed: int = 0) -> tuple[list[float], list[float], list[float]] | None:
    """(accuracy, CI low, CI high) at every budget 0 .. B of one run at budget B whose rows carry
    ``correct_by_budget`` (the regenerate engine's): a row's grade at budget k is its k-th entry, or its
    last (its own response) where it spent fewer than k; avg@n over problems with a 95% bootstrap CI,
    as the table's own accuracy. None for a run without them (lockstep) or without a numeric budget."""
    if "correct_by_budget" not in run.columns or run["budget"][0] == "all":
        return None
    if run["correct_by_budget"].null_count() == run.height:
        return None
    if run["correct_by_budget"].null_count():
        raise ValueError("a cross-sampling run with correct_by_budget on some rows only: two engines in one run")
    budget = int(run["budget"][0])
    lists = run["correct_by_budget"].to_list()
    curve: tuple[list[float], list[float], list[float]] = ([], [], [])
    for k in range(budget + 1):
        at = run.select("problem_id").with_columns(
            pl.Series("correct", [grades[min(k, len(grades) - 1)] for grades in lists], dtype=pl.Float64)
        )
        per = at.group_by("problem_id").agg(pl.col("correct").mean()).sort("problem_id")
        for values, v in zip(curve, mean_ci(per["correct"].to_numpy(), seed=seed)):
            values.append(v)
    return curve


def crosssample_table(
    runs: Sequence[pl.DataFrame],
    *,
    extrapolation: Sequence[pl.DataFrame] = (),
    labels: Mapping[str, str] | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """One row per (direction, policy, budget) run: accuracy and how much was switched.

    - ``accuracy``: avg@n, the mean over problems of the share of a problem's samples graded
      correct, with a 95% bootstrap CI over problems (``ci_low``, ``ci_high``);
    - ``mean_switched``: switched tokens per response; ``switched_share``: switched tokens over
      all generated tokens (response plus EOS where reached);
    - ``mean_switched_js``: mean JS at the switched positions (NaN when none switched);
    - ``mean_forced``: switches per response made by the authors' forced-switch rule (``force_switch``);
    - ``mean_removed``: injected EOS draws removed per response (``injected_eos: remove``), each a
      spent switch that injected nothing;
    - ``budget`` is the label (``"0"`` … ``"all"``), ``budget_tokens`` the number (null for all);
    - ``n_no_box``, ``n_correct_unboxed``: responses without a boxed answer (``box_counts``);
    - a direction's budget-0 run stands for every policy that has none (``budget0_from`` names
      the policy it was run under): budget 0 never switches, so the policy cannot matter;
    - ``dense_accuracy``, ``dense_ci_low``, ``dense_ci_high``: the accuracy (avg@n, 95% CI) at every
      budget 0 .. the run's, from one run of the regenerate engine (its rows' ``correct_by_budget``;
      ``dense_curve``); null for lockstep runs, which decode one budget each;
    - ``injection`` and ``gamma``: what a switch drew from (``sample``, gamma 0, or the follow-up's
      ``extrapolate`` at its gamma); ``extrapolation``: a run of ``extrapolation``, the runs
      ``crosssample.gammas`` adds beside the grid (a row each; the grid's rows are ``False``).
    """
    rows, seen = [], set()
    for beside, run in [(False, r) for r in runs] + [(True, r) for r in extrapolation]:
        if "injection" not in run.columns:  # a run written before extrapolation existed: sampled
            run = run.with_columns(pl.lit("sample").alias("injection"), pl.lit(0.0).alias("gamma"))
        keys = run.select("direction", "policy", "budget", "threshold", "injection", "gamma").unique()
        if keys.height != 1:
            raise ValueError(f"a cross-sample table must hold one run, found {keys.height}: {keys.to_dicts()}")
        for col, want in (labels or {}).items():
            got = run[col].unique().to_list() if col in run.columns else [want]
            if got != [want]:
                raise ValueError(
                    f"a run of {col} {got} given for the table of {col} {want!r}: runs of other pairs "
                    "or datasets cannot be aggregated"
                )
        cell = (*keys.select("direction", "policy", "budget", "injection", "gamma").row(0), beside)
        if beside and ((cell[0], cell[2], cell[3]) != ("forward", "all", "extrapolate") or not cell[4] > 0):
            raise ValueError(
                f"a run of direction {cell[0]}, budget {cell[2]}, injection {cell[3]} (gamma {cell[4]:g}) given as an "
                "extrapolation run: expected a forward run at budget all with injection extrapolate and gamma > 0 "
                "(crosssample.gammas)"
            )
        if cell in seen:
            raise ValueError(
                f"two runs of direction {cell[0]}, policy {cell[1]}, budget {cell[2]}, injection {cell[3]} "
                f"(gamma {cell[4]:g}): one file given twice, or two runs of one cell"
            )
        seen.add(cell)
        per = run.group_by("problem_id").agg(pl.col("correct").mean()).sort("problem_id")
        acc, lo, hi = mean_ci(per["correct"].to_numpy(), seed=seed)
        generated = run["n_response_tokens"].sum() + (run["finish_reason"] == "stop").sum()
        js = run["switched_js"].explode().drop_nulls()
        key = keys.row(0, named=True)
        dense = dense_curve(run, seed=seed)
        rows.append(
            {
                **(labels or {}),
                **key,
                "extrapolation": beside,
                "budget_tokens": None if key["budget"] == "all" else int(key["budget"]),
                "accuracy": acc,
                "ci_low": lo,
                "ci_high": hi,
                "mean_switched": float(run["n_switched"].mean()),
                "mean_forced": float(run["n_forced"].mean()) if "n_forced" in run.columns else 0.0,
                "mean_removed": float(run["n_removed"].mean()) if "n_removed" in run.columns else 0.0,
                "switched_share": float(run["n_switched"].sum() / generated) if generated else float("nan"),
                "mean_switched_js": float(js.mean()) if js.len() else float("nan"),
                "mean_response_tokens": float(run["n_response_tokens"].mean()),
                "n_problems": per.height,
                "n_samples": run.height,
                **box_counts(run),
                "dense_accuracy": None if dense is None else dense[0],
                "dense_ci_low": None if dense is None else dense[1],
                "dense_ci_high": None if dense is None else dense[2],
            }
        )
    dense_type = pl.List(pl.Float64)
    table = pl.DataFrame(
        rows,
        schema_overrides={
            "budget_tokens": pl.Int64,
            **{f"dense_{k}": dense_type for k in ("accuracy", "ci_low", "ci_high")},
        },
    )
    # budget 0 never switches and the decoder's randomness does not depend on the policy, so one
    # budget-0 run per direction stands for every policy's (marked in ``budget0_from``)
    table = table.with_columns(pl.lit(None, dtype=pl.Utf8).alias("budget0_from"))
    zero = table.filter(pl.col("budget") == "0")
    extra = []
    grid = table.filter(~pl.col("extrapolation"))  # a run beside the grid needs no budget-0 stand-in
    for direction, policies in grid.group_by("direction").agg(pl.col("policy").unique()).iter_rows():
        runs = zero.filter(pl.col("direction") == direction)
        if runs.height:
            have = set(runs["policy"])
            source = runs.row(0, named=True)
            extra += [{**source, "policy": p, "budget0_from": source["policy"]} for p in sorted(set(policies) - have)]
    if extra:
        table = pl.concat([table, pl.DataFrame(extra, schema=table.schema)])
    order = table["budget"].map_elements(budget_order, return_dtype=pl.Float64)
    return table.with_columns(order.alias("_order")).sort("direction", "policy", "_order", "gamma").drop("_order")


EXAMPLE_SCHEMA = {
    "position": pl.Int64,
    "token": pl.Utf8,
    "js": pl.Float64,
    "switched": pl.Boolean,
    "problem_id": pl.Utf8,
    "sample_index": pl.Int64,
    "question": pl.Utf8,
    "gold": pl.Utf8,
    "direction": pl.Utf8,
    "budget": pl.Utf8,
    "baseline_correct": pl.Boolean,
}
"""The columns of ``example_table``: figure 6's response, a row per token (none where there is no example)."""


def example_table(run: pl.DataFrame, tokenizer, *, baseline: pl.DataFrame | None = None) -> pl.DataFrame:
    """One cross-sampled response, a row per token, for figure 6: the one people put on slides.

    Picks a correct response of ``run`` with at least one switched token (no rows when there is
    none, e.g. for two copies of one model), preferring those whose
    ``baseline`` counterpart (the same problem and sample index at budget 0, which shares the
    sampling noise) was wrong, so the switches are what made it right; then the fewest switches,
    then the shortest. Columns: ``position``, ``token`` (its text), ``js``, ``switched``, and the
    response's ``problem_id``, ``sample_index``, ``question``, ``gold``, ``direction``,
    ``budget``, ``baseline_correct``.
    """
    cand = run.filter(pl.col("correct") & (pl.col("n_switched") > 0))
    if baseline is not None:
        base = baseline.select("problem_id", "sample_index", pl.col("correct").alias("baseline_correct"))
        cand = cand.join(base, on=["problem_id", "sample_index"], how="left")
    else:
        cand = cand.with_columns(pl.lit(None, dtype=pl.Boolean).alias("baseline_correct"))
    if cand.height == 0:  # a legitimate result (e.g. two copies of one model): the figure says so
        return pl.DataFrame(schema=EXAMPLE_SCHEMA)
    row = cand.sort(
        pl.col("baseline_correct").fill_null(True), "n_switched", "n_response_tokens", "problem_id", "sample_index"
    ).row(0, named=True)
    ids = row["response_ids"]
    switched = set(row["switched_positions"])
    return pl.DataFrame(
        {
            "position": list(range(len(ids))),
            "token": [tokenizer.decode([i]) for i in ids],
            "js": row["step_js"],
            "switched": [p in switched for p in range(len(ids))],
        }
    ).with_columns(
        pl.lit(row["problem_id"]).alias("problem_id"),
        pl.lit(row["sample_index"]).alias("sample_index"),
        pl.lit(tokenizer.decode(row["prompt_ids"], skip_special_tokens=True)).alias("question"),
        pl.lit(row["gold"]).alias("gold"),
        pl.lit(row["direction"]).alias("direction"),
        pl.lit(row["budget"]).alias("budget"),
        pl.lit(row["baseline_correct"], dtype=pl.Boolean).alias("baseline_correct"),
    )


# --- the table stages: read the per-sample or per-token files, write one table --------------

ROLLOUT_COLUMNS = {"problem_id": "string", "sample_index": "count", "correct": "bool", "dataset_version": "string"}
GRADED_OPTIONAL = {"grade_status": "string", "model": "string"}
"""Columns of graded rows (rollouts, cross-sampling runs) a table from elsewhere may lack, checked where present:
the box counts read the grade's status, the label of what made a row names its model (the seventeenth pass: an
integer in either was a traceback)."""
SCORE_COLUMNS = {
    "problem_id": "string",
    "sample_index": "count",
    "position": "count",
    "norm_position": "finite",
    "token_id": "count",
    "js": "finite",
    "entropy_base": "finite",
    "rl_top1_rank_in_base": "count",
    "p_base_of_rl_top1": "finite",
    "p_rl_of_rl_top1": "finite",
    "topk_overlap": "finite",
    "statistic": "string",
}
SCORE_KEY = ("problem_id", "sample_index", "position")
"""One row per scored position: a row twice would count twice in every share and percentile."""
CROSS_OPTIONAL = {
    "switched_positions": "list[count]",
    "correct_by_budget": "list[bool]?",
    # the forced switches and removed positions the table averages (sixteenth pass: a null one was a traceback)
    "n_forced": "count",
    "n_removed": "count",
}
"""Columns of a cross-sampling run some runs have (the regenerate engine's grades per budget), checked where present."""
CROSS_COLUMNS = {
    "problem_id": "string",
    "sample_index": "number",
    "correct": "bool",
    "direction": "string",
    "policy": "string",
    "budget": "string",
    "threshold": "number?",  # null where each row has its own
    "n_switched": "count",
    "switched_js": "list",
    "n_response_tokens": "number",
    "finish_reason": "string",
}


_BOXES = {"grading": "string?", "n_no_box": "count?", "n_correct_unboxed": "count?"}  # box_counts: null if unknown
_DIVERGENCE_LABELS = {"pair": "string", "dataset": "string", "source": "string"}
_BINNED = {"bin": "count", "mean_js": "finite", "js_ci_low": "finite", "js_ci_high": "finite", "n_positions": "count"}
TABLES: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "accuracy": (
        {
            "pair": "string",
            "dataset": "string",
            "role": "string",
            "metric": "string",
            "value": "finite",
            "ci_low": "number",
            "ci_high": "number",
            "n_problems": "count",
            "samples_per_problem": "count",
            **_BOXES,
        },
        ("role", "metric"),
    ),
    "crosssample": (
        {
            "direction": "string",
            "policy": "string",
            "budget": "string",
            "injection": "string",
            "gamma": "finite",
            "extrapolation": "bool",
            "accuracy": "finite",
            "ci_low": "number",
            "ci_high": "number",
            "mean_switched": "finite",
            "switched_share": "number",  # NaN where nothing was generated
            "n_problems": "count",
            "n_samples": "count",
            "budget0_from": "string?",
            **{f"dense_{k}": "list[number]?" for k in ("accuracy", "ci_low", "ci_high")},
            **_BOXES,
        },
        ("direction", "policy", "budget", "injection", "gamma", "extrapolation"),
    ),
    "sparsity": (
        {**_DIVERGENCE_LABELS, "kind": "string", "value": "finite", "js_nats": "finite", "share": "finite"},
        ("source", "kind", "value"),
    ),
    "position": (
        {
            **_DIVERGENCE_LABELS,
            **_BINNED,
            "position_low": "finite",
            "position_high": "finite",
            "region": "string",
            "share_high_js": "finite",
        },
        ("source", "bin"),
    ),
    "entropy": (
        {
            **_DIVERGENCE_LABELS,
            **_BINNED,
            "mean_entropy_base": "finite",
            "share_high_js_among_high_entropy": "number",  # NaN without high-entropy positions
            "share_high_js_overall": "finite",
        },
        ("source", "bin"),
    ),
    "reallocation": ({**_DIVERGENCE_LABELS, "metric": "string", "value": "number"}, ("source", "metric")),
    "curve": (
        {
            "variant": "string",
            "step": "count",
            "accuracy": "finite",
            "seed_min": "finite",
            "seed_max": "finite",
            "n_seeds": "count",
        },
        ("variant", "step"),
    ),
    "comparison": (
        {
            "variant": "string",
            "step": "count",
            "accuracy": "finite",
            "ci_low": "number",
            "ci_high": "number",
            "n_seeds": "count",
            "n_problems": "count",  # the headline quotes it (the seventeenth pass: unchecked, a traceback)
            "diff_vs_none": "finite?",  # null for the baseline itself
            "diff_ci_low": "finite?",
            "diff_ci_high": "finite?",
        },
        ("variant",),
    ),
    "training_shifts": (
        {
            "step": "count",
            "share_js_below_1e-3": "finite",
            "share_js_above_1e-2": "finite",
            "top5_precision": "number",
            "base_rate": "number",
        },
        ("step",),
    ),
}
"""Each table a figure or the report reads: the columns read, each with its kind (``io.read_parquet``),
and the columns that name a row (a row given twice, from a careless concatenation, is refused)."""


def read_table(path: Path | str, name: str, what: str) -> pl.DataFrame:
    """The table ``name`` of ``TABLES`` at ``path`` (``what`` says what it is), checked: ``InputError``
    naming the file for a missing column, one of another kind, no rows, or a row given twice."""
    columns, key = TABLES[name]
    table = read_parquet(path, what, columns, nonempty=True, unique=key)
    if name == "comparison":  # a difference is drawn with its CI: one without both ends is no comparison
        diffs = table.filter(pl.col("diff_vs_none").is_not_null())
        if diffs["diff_ci_low"].null_count() or diffs["diff_ci_high"].null_count():
            raise InputError(
                f"{path}: a difference from none without its CI ({what}: both ends of each){remake_hint(path)}"
            )
    return table


LABEL_COLUMNS = ("model", "source", "settings", "grading", "dataset", "dataset_version", "pair")
"""Columns that say what made a row (which model and responses, under which settings and grading, of which
dataset and pair), where a table has them: ``check_made_alike`` refuses a null in any."""


def check_made_alike(tables: Mapping[Path, pl.DataFrame], what: str) -> None:
    """``InputError`` naming a table with a null label (``LABEL_COLUMNS``), or whose ``settings`` column
    (``options.settings_label``: the settings its rows were made with) is not the first such table's, or holds
    two labels: ``what`` says which tables must have been made alike. A part or table copied in from a study
    run otherwise had its place and name alone right."""
    for path, t in tables.items():  # a row that does not say what made it passes every comparison below
        for column in LABEL_COLUMNS:
            if column in t.columns and (nulls := t[column].null_count()):
                raise InputError(
                    f"{path}: column {column!r} is null in {nulls} of {t.height} rows: expected {what}, each row "
                    f"labelled with what made it{remake_hint(path)}"
                )
    made = {path: sorted(set(t["settings"])) for path, t in tables.items() if "settings" in t.columns}
    first = next(iter(made), None)
    for path, labels in made.items():
        if labels != made[first] or len(labels) > 1:
            raise InputError(
                f"{path}: column 'settings' holds {labels}, {first} {made[first]}: expected {what}; the label of "
                "the settings they were made with (options.settings_label): one of them was made under other "
                f"settings, in another study?{remake_hint(path)}"
            )


def check_one_pair(tables: Mapping[Path, pl.DataFrame]) -> None:
    """``InputError`` naming a table of one pair and dataset's (``tables``: path -> table) whose ``pair``,
    ``dataset`` or ``statistic`` (exact, or top-K: what its divergences were computed from) is not the one most
    of the others hold: a table copied in from another pair's directory, or from a study of another statistic,
    was drawn and summarised as this one's."""
    from collections import Counter

    for column in ("pair", "dataset", "statistic"):
        held = {path: tuple(sorted(set(t[column].to_list()))) for path, t in tables.items() if column in t.columns}
        if not held:
            continue
        want = Counter(held.values()).most_common(1)[0][0]
        for path, got in held.items():
            if got != want:
                raise InputError(
                    f"{path}: holds {column} {', '.join(map(repr, got))}, where the other tables hold "
                    f"{', '.join(map(repr, want))}: expected the tables of one pair and dataset, of one statistic"
                )


def write_accuracy(
    rollouts: Mapping[str, Path],
    out: Path,
    *,
    pair: str | None = None,
    dataset: str | None = None,
    pair_manifest: Path | None = None,
    cfg: AccuracyConfig = AccuracyConfig(),
) -> pl.DataFrame:
    """The accuracy table of a pair's rollout files (role -> path), written to ``out``. With ``pair_manifest``
    (``tokenshift models check-pair``'s), each table that records its ``model`` must hold that role's."""
    what = "a rollout table (tokenshift rollout)"
    tables = {
        role: read_parquet(
            path, what, ROLLOUT_COLUMNS, nonempty=True, unique=("problem_id", "sample_index"), optional=GRADED_OPTIONAL
        )
        for role, path in rollouts.items()
    }
    # one grading rule and one version of the dataset across the table: a comparison of the two models under two
    # rules, or over two versions of the problems, would be one of the rules or the versions
    for column in ("grading", "dataset_version", "dataset"):
        held = {role: sorted(set(t[column].drop_nulls())) for role, t in tables.items() if column in t.columns}
        first_role, others = next(iter(held.items()), (None, None))
        for role, values in held.items():
            if len(values) > 1 or values != others:
                raise InputError(
                    f"{rollouts[role]}: column {column!r} holds {values}, {rollouts[first_role]} {others}: "
                    f"expected one {column} across both models' rollouts ({what}){remake_hint(rollouts[role])}"
                )
    # and sampled alike (a part copied in from a study sampled otherwise)
    check_made_alike({rollouts[role]: t for role, t in tables.items()}, "both models' rollouts made alike")
    # rollouts of another dataset, given under this one's name (copied over them): its problems scored as these
    held = {t["dataset"][0] for t in tables.values() if "dataset" in t.columns and t.height}
    if dataset is not None and held and {label_dataset_name(h) for h in held} != {dataset}:
        role = next(r for r, t in tables.items() if "dataset" in t.columns and t.height)
        path = rollouts[role]
        # in the workflow's own place for this dataset, the file changed; elsewhere the flag may be what is wrong
        wrong = remake_hint(path) if layout.dataset_of(place(path)) == dataset else ", or `--dataset` naming theirs"
        raise InputError(
            f"{path}: rollouts of dataset {', '.join(sorted(held))}, given as dataset {dataset!r}'s: "
            f"expected the rollouts of that dataset ({what}){wrong}"
        )
    # the two models' rollouts: one file as both, or two tables of one checkpoint (its ``model`` identity, where
    # the table records it), would compare a model with itself and report no difference as a finding
    paths = {role: Path(path).resolve() for role, path in rollouts.items()}
    models = {role: sorted(set(t["model"].drop_nulls())) for role, t in tables.items() if "model" in t.columns}
    for role, held in models.items():  # a part of another model's run gathered in: two models' rows as one's
        if len(held) > 1:
            raise InputError(
                f"{rollouts[role]}: rollouts of {len(held)} models ({', '.join(held)}): expected the {role} "
                f"model's alone ({what}){remake_hint(rollouts[role])}"
            )
    for (role, path), (other, other_path) in itertools.combinations(paths.items(), 2):
        same = "the same file" if path == other_path else None
        if not same and models.get(role) and models.get(role) == models.get(other):
            same = f"rollouts of the same model {models[role][0]!r}"
        if same:
            raise InputError(
                f"{rollouts[role]} and {rollouts[other]}: {same} as both the {role} and the {other} model's rollouts; "
                f"expected each model's own ({what})"
            )
    if pair_manifest is not None:
        from tokenshift.checkpoints import label_name
        from tokenshift.tokenizer import read_pair_manifest

        manifest = read_pair_manifest(pair_manifest)
        if pair is not None and manifest["pair"] != pair:  # the table would be labelled with a pair it is not
            raise InputError(
                f"--pair {pair!r}: the pair manifest {pair_manifest} is pair {manifest['pair']!r}'s; expected the "
                "manifest of the pair the table is labelled with"
            )
        for role, held in models.items():
            named = manifest.get(role)
            if named is not None and {label_name(m) for m in held} != {named}:
                raise InputError(
                    f"{rollouts[role]}: rollouts of {', '.join(held)}, given as the {role} model's; pair "
                    f"{manifest.get('pair')!r} ({pair_manifest}) has {role} model {named!r}: expected its rollouts"
                )
    first = None
    for role, table in tables.items():
        # every problem's samples 0 .. n-1, and every role the same problems: a lost or extra sample would
        # change avg@n and pass@k silently, as a lost problem the comparison of the two models
        index = pl.col("sample_index").cast(pl.Int64).sort()
        samples = table.group_by("problem_id").agg(index).sort("problem_id")
        n = samples["sample_index"].list.len().max()
        odd = samples.filter(pl.col("sample_index") != pl.lit(list(range(n)), dtype=pl.List(pl.Int64)))
        if odd.height:
            raise InputError(
                f"{rollouts[role]}: problem {odd['problem_id'][0]!r} has samples {odd['sample_index'][0].to_list()}, "
                f"where every problem has samples 0 to {n - 1} ({what}; rows lost or added?)"
            )
        if max(cfg.pass_k) > n:  # the config check keeps k <= sampling.n: samples were lost
            raise InputError(
                f"{rollouts[role]}: holds {n} samples per problem, too few for pass@{max(cfg.pass_k)} ({what})"
            )
        if first is None:
            first = (role, samples)
        elif not samples.equals(first[1]):
            raise InputError(
                f"{rollouts[role]}: holds other problems or samples per problem than {rollouts[first[0]]} "
                f"({samples.height} problems of {n} samples against {first[1].height} of "
                f"{first[1]['sample_index'].list.len().max()}): both models' rollouts are of one dataset and setting"
            )
    labels = {k: v for k, v in (("pair", pair), ("dataset", dataset)) if v}
    try:
        table = accuracy_table(tables, ks=cfg.pass_k, labels=labels)
    except ValueError as e:
        raise InputError(str(e)) from None
    write_parquet_atomic(table, Path(out))
    return table


def write_divergence(
    scores: Mapping[str, Path],
    out_dir: Path,
    *,
    pair: str,
    dataset: str,
    problems: Path | None = None,
    tokenizer: Path | None = None,
    cfg: DivergenceConfig = DivergenceConfig(),
) -> dict[str, pl.DataFrame]:
    """Every divergence table of a pair's scored rollouts (source -> path), written under ``out_dir``.

    Each table is labelled with the scores' ``statistic`` (``scoring.statistic``: ``exact``, or ``topk:K``
    for JS, entropies and ranks of each model's top K tokens); scores of two statistics are refused.
    With the problems of a toy dataset (which keep each problem's operations) and the pair's
    tokenizer, also ``decision_points``: how well high-JS positions find the recorded decision points.
    """
    frames = {
        src: read_parquet(path, "per-token scores (tokenshift score)", SCORE_COLUMNS, unique=SCORE_KEY)
        for src, path in scores.items()
    }
    records = {src: read_models_record(path) for src, path in scores.items()}
    ref = next(iter(records))
    for src, record in records.items():  # scores of one pair's models (where both tables record them)
        if record and records[ref] and record != records[ref]:
            raise InputError(
                f"{scores[src]}: scores computed with {record}, {scores[ref]} with {records[ref]}: expected the "
                "scores of one pair's two models"
            )
    # a table copied in from a study scored, or sampled, otherwise
    check_made_alike({scores[src]: f for src, f in frames.items()}, "the scores of both sources made alike")
    for src, frame in frames.items():
        if frame.height == 0:  # no distribution to take quantiles of: say so, not a TypeError deep in a table
            raise InputError(
                f"{scores[src]}: no scored positions (every {src} response was empty or skipped; see the scoring log)"
            )
        # what scoring wrote the responses' model as (a table made otherwise may have no such column)
        held = sorted(frame["source"].unique().to_list()) if "source" in frame.columns else [src]
        js, position = frame["js"].drop_nans(), frame["norm_position"]
        why = None
        if held != [src]:  # the base model's scores given as the RL model's: every table would swap its rows
            why = f"holds scores of {' and '.join(map(repr, held))} responses, given as the {src!r} scores"
        elif js.len() and not (js.min() >= 0 and js.max() <= math.log(2) * (1 + 1e-5)):
            why = f"js runs from {js.min():.4g} to {js.max():.4g}, outside [0, ln 2]"
        elif not (position.min() >= 0 and position.max() <= 1):
            why = f"norm_position runs from {position.min():.4g} to {position.max():.4g}, outside [0, 1]"
        if not why:  # every response's positions 0 .. n-1: a lost position would drop out of every share unseen
            gaps = (
                frame.group_by("problem_id", "sample_index")
                .agg(pl.col("position").min().alias("first"), pl.col("position").max().alias("last"), pl.len())
                .filter((pl.col("first") != 0) | (pl.col("last") != pl.col("len") - 1))
                .sort("problem_id", "sample_index")
            )
            if gaps.height:
                g = gaps.row(0, named=True)
                why = (
                    f"problem {g['problem_id']!r} sample {g['sample_index']} holds {g['len']} positions from "
                    f"{g['first']} to {g['last']}, {gaps.height} response(s) so, where each "
                    "response holds its positions 0 to n-1 (rows lost?)"
                )
        if why:
            raise InputError(f"{scores[src]}: {why} (expected per-token scores of tokenshift score)")
    if problems is not None:  # another dataset's scores, copied over these: its problems counted as the dataset's
        # its question and answer too: a rollout or score table given as --problems (it has problem ids) left
        # the toy's decision-point table out without a word
        table = read_problem_table(problems)
        named = sorted(set(table["dataset"].drop_nulls())) if "dataset" in table.columns else []
        if named and named != [dataset]:  # every table would be labelled with a dataset it is not
            raise InputError(
                f"{problems}: the problems of dataset {', '.join(named)}, given with --dataset {dataset!r}: expected "
                "that dataset's problems, or `--dataset` naming theirs"
            )
        known = set(table["problem_id"])
        for src, frame in frames.items():
            alien = sorted(set(frame["problem_id"].unique()) - known)
            if alien:
                raise InputError(
                    f"{scores[src]}: scores of {len(alien)} problem(s) that {problems} does not hold (e.g. "
                    f"{alien[0]!r}): expected the scores of dataset {dataset!r}'s rollouts{remake_hint(scores[src])}"
                )
    statistics = {src: sorted(frame["statistic"].unique().to_list()) for src, frame in frames.items()}
    if len({s for found in statistics.values() for s in found}) > 1:
        raise InputError(
            "score tables of different statistics cannot be compared: "
            + ", ".join(f"{scores[src]} holds {' and '.join(found)}" for src, found in statistics.items())
        )
    labels = {"pair": pair, "dataset": dataset, "statistic": next(iter(statistics.values()))[0]}
    tables = divergence_tables(frames, labels, cfg)
    toy = read_toy_problems(problems) if problems else None
    if toy is not None:
        if tokenizer is None:
            raise InputError(
                f"{problems}: the toy task's problems, whose decision points need --tokenizer (the pair's "
                "checkpoint) to find them in the responses"
            )
        from tokenshift.tokenizer import load_tokenizer
        from tokenshift.toy.check import decision_points_from_scores

        tok = load_tokenizer(tokenizer)
        parts = [
            decision_points_from_scores(s, tok, toy).with_columns(
                *[pl.lit(v).alias(k) for k, v in {**labels, "source": src}.items()]
            )
            for src, s in frames.items()
        ]
        found = [p for p in parts if p.width > 3]
        # no response that is a correct trace (a barely trained model): a table without rows, not a crash
        tables["decision_points"] = (
            pl.concat(found, how="diagonal")
            if found
            else pl.DataFrame(
                schema={
                    "selection": pl.Utf8,
                    "n_responses": pl.Int64,
                    **dict.fromkeys(labels, pl.Utf8),
                    "source": pl.Utf8,
                }
            )
        )
    for name, table in tables.items():
        write_parquet_atomic(table, Path(out_dir) / Path(layout.divergence(name)).name)
    return tables


def read_cross_run(path: Path) -> pl.DataFrame:
    """A cross-sampling run (``tokenshift crosssample``), checked: ``InputError`` naming the file otherwise."""
    what = "a cross-sampling run (tokenshift crosssample)"
    run = read_parquet(
        path,
        what,
        CROSS_COLUMNS,
        nonempty=True,
        unique=("problem_id", "sample_index"),
        optional={**CROSS_OPTIONAL, **GRADED_OPTIONAL},
    )
    if ("injection" in run.columns) != ("gamma" in run.columns):  # a run written before both were has neither
        raise InputError(f"{path}: has one of the columns 'injection' and 'gamma' without the other (expected {what})")
    for column, known in (("direction", DIRECTIONS), ("policy", tuple(POLICIES))):
        unknown = sorted(set(run[column]) - set(known))
        if unknown:
            raise InputError(
                f"{path}: column {column!r} holds {unknown[0]!r}, where one of {known} was expected ({what})"
            )
    for column in ("direction", "policy", "budget", "threshold", *(("injection", "gamma") if "gamma" in run else ())):
        if run[column].n_unique() > 1:  # one run: one rule (another run's rows appended would pass as this one's)
            raise InputError(f"{path}: column {column!r} holds {run[column].n_unique()} values (expected {what}: one)")
    label = run["budget"][0]
    try:
        budget = parse_budget(label)
    except ValueError:
        raise InputError(
            f"{path}: column 'budget' holds {label!r}, where a budget label (a whole number or 'all') was "
            f"expected ({what})"
        ) from None
    why = None
    if budget is not None and run["n_switched"].max() > budget:
        why = f"a row switched {run['n_switched'].max()} tokens, past its budget {label}"
    elif "switched_positions" in run.columns and not run["n_switched"].equals(
        run["switched_positions"].list.len().cast(run["n_switched"].dtype), null_equal=True
    ):
        why = "n_switched differs from the number of switched_positions"
    elif isinstance(run.schema.get("correct_by_budget"), pl.List) and (run["correct_by_budget"].list.len() == 0).any():
        why = "a row's correct_by_budget is empty (it holds the row's grade at each budget up to its own)"
    elif run["threshold"].is_nan().any():
        why = "its threshold is NaN"
    elif "gamma" in run.columns and run["injection"][0] == "sample" and run["gamma"][0] != 0:
        why = f"a run drawing from the other model (injection sample) with gamma {run['gamma'][0]}"
    if why:
        raise InputError(f"{path}: {why} (expected {what})")
    return run


def write_crosssample_table(
    runs: Sequence[Path], out: Path, *, pair: str, dataset: str, extrapolation: Sequence[Path] = ()
) -> pl.DataFrame:
    """The cross-sampling table of one pair and dataset's runs (the grid's, then the extrapolation
    runs beside it), written to ``out``."""
    paths = [Path(p) for p in (*runs, *extrapolation)]
    resolved = [p.resolve() for p in paths]
    twice = next((p for i, p in enumerate(paths) if resolved[i] in resolved[:i]), None)
    if twice is not None:  # a grid run given as its extrapolation run too was two rows of one run
        raise InputError(f"{twice}: given twice: expected each run once")
    frames, beside = ([read_cross_run(p) for p in paths] for paths in (runs, extrapolation))
    # a run copied in from a study run otherwise
    check_made_alike(dict(zip(paths, (*frames, *beside), strict=True)), "every run of the table made alike")
    keys = [set(zip(f["problem_id"], f["sample_index"])) for f in (*frames, *beside)]
    for path, held in zip((*runs, *extrapolation), keys):
        if held != keys[0]:  # a cell over other samples than the others would not compare with them
            lost, extra = len(keys[0] - held), len(held - keys[0])
            raise InputError(
                f"{path}: holds other samples than {(runs or extrapolation)[0]} ({lost} missing, {extra} more): "
                "expected every run of the table over the same problems and samples"
            )
    try:
        table = crosssample_table(frames, extrapolation=beside, labels={"pair": pair, "dataset": dataset})
    except ValueError as e:
        raise InputError(str(e)) from None
    write_parquet_atomic(table, Path(out))
    return table


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")
"""What a spreadsheet takes a cell beginning with as a formula (OWASP's "CSV injection", and the full-width
forms an East Asian input method types, which some spreadsheets read as the same): a text cell of a CSV copy,
or a column name, that begins with one is written after an apostrophe, which spreadsheets read as "this is
text"."""


def _json_text(value) -> str:
    """A value inside a list or struct cell that JSON has no type for, as the CSV's other columns write it: bytes
    as hex, a date or time as ISO 8601, a decimal or duration as its text (the seventeenth pass: a traceback)."""
    if isinstance(value, bytes):
        return value.hex()
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def csv_copy(src: Path, out: Path) -> pl.DataFrame:
    """The parquet table ``src`` written as CSV to ``out``, for a spreadsheet or R: the same rows and
    columns, a list, array or struct column as each value's JSON text (one cell per row), a binary one
    as hex, a duration as ISO 8601 text (``PT3S``): what CSV cannot hold as it is. A text cell that a
    spreadsheet would run as a formula (``FORMULA_STARTS``: a token ``=``, a model named ``=HYPERLINK(...)``
    in a stranger's config), or a column name that would, is written as ``'=...``; the parquet table beside it
    holds the text exactly."""
    import json

    table = read_parquet(src, "a table to copy as CSV (a .parquet file)")
    table = table.rename(lambda name: f"'{name}" if name.startswith(FORMULA_STARTS) else name)
    for name, dtype in table.schema.items():
        if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
            text = pl.col(name).cast(pl.String)
            formula = pl.any_horizontal(text.str.starts_with(c) for c in FORMULA_STARTS)
            table = table.with_columns(pl.when(formula).then(pl.lit("'") + text).otherwise(text).alias(name))
        elif dtype.is_nested():
            texts = [None if v is None else json.dumps(v, default=_json_text) for v in table[name].to_list()]
            table = table.with_columns(pl.Series(name, texts, dtype=pl.String))
        elif dtype == pl.Binary:
            table = table.with_columns(pl.col(name).bin.encode("hex"))
        elif isinstance(dtype, pl.Duration):
            table = table.with_columns(pl.col(name).dt.to_string("iso"))
    try:
        write_csv_atomic(table, Path(out))
    except pl.exceptions.ComputeError as e:  # a column type CSV has no text for (an object column)
        raise InputError(
            f"{src}: {str(e).splitlines()[0]} (expected a table of text, numbers, dates or lists)"
        ) from None
    return table
