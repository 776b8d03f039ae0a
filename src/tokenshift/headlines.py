"""Headline numbers read off the result tables: the sentences a reader takes away.

Used by the figure titles and by the report (``summary.json`` and ``report.html``), so a number
is worded once and is the same everywhere. Each function takes the tables the workflow wrote.
"""

from __future__ import annotations

import math

import polars as pl

HEADLINE_RECOVERY = 0.8
"""The cross-sampling headline names the smallest budget that recovers this share of the gap."""


def main_source(table: pl.DataFrame) -> pl.DataFrame:
    """The RL model's responses where present (the paper's main view), else the first source."""
    sources = table["source"].unique(maintain_order=True).to_list()
    return table.filter(pl.col("source") == ("rl" if "rl" in sources else sources[0]))


def sparsity_summary(table: pl.DataFrame) -> dict[str, float]:
    """Share of positions with JS below each threshold (RL responses)."""
    t = main_source(table).filter(pl.col("kind") == "share_below")
    return {f"{v:g}": float(s) for v, s in zip(t["js_nats"], t["share"])}


def position_summary(table: pl.DataFrame) -> dict:
    """Mean JS in the start / middle / end of responses, and which is highest and lowest."""
    t = main_source(table)
    by = t.group_by("region").agg(
        ((pl.col("mean_js") * pl.col("n_positions")).sum() / pl.col("n_positions").sum()).alias("js")
    )
    means = dict(zip(by["region"], by["js"]))
    return {
        "mean_js": {k: float(means[k]) for k in ("start", "middle", "end") if k in means},
        "highest": max(means, key=means.get),
        "lowest": min(means, key=means.get),
    }


def reallocation_summary(table: pl.DataFrame) -> dict[int, float]:
    """Share of positions whose RL top token is in the base model's top k, for each k the table holds
    (``divergence.rank_k``), in order; those ``registry.HEADLINE_RANK_K`` names must be among them."""
    from tokenshift.io import InputError
    from tokenshift.registry import HEADLINE_RANK_K

    t = main_source(table)
    prefix = "rl_top1_in_base_top"
    held = {int(m.removeprefix(prefix)): m for m in t["metric"].unique() if m.removeprefix(prefix).isdigit()}
    missing = [k for k in HEADLINE_RANK_K if k not in held]
    if missing:
        raise InputError(
            f"the reallocation table holds RL's top token in the base model's top k for k = {sorted(held)}: expected "
            f"{', '.join(map(str, HEADLINE_RANK_K))} among them, which the report's headline reads (divergence.rank_k)"
        )
    return {k: float(t.filter(pl.col("metric") == held[k])["value"][0]) for k in sorted(held)}


def avg_metric(accuracy: pl.DataFrame) -> str:
    return next(m for m in accuracy["metric"].unique().sort() if m.startswith("avg@"))


def model_accuracy(accuracy: pl.DataFrame) -> dict[str, dict]:
    metric = avg_metric(accuracy)
    return {r["role"]: r for r in accuracy.filter(pl.col("metric") == metric).iter_rows(named=True)}


def grid_and_extrapolation(cross: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A cross-sampling table's grid rows and its extrapolation runs beside the grid
    (``crosssample.gammas``; a table written before they existed has none)."""
    if "extrapolation" not in cross.columns:
        return cross, cross.clear()
    return cross.filter(~pl.col("extrapolation")), cross.filter(pl.col("extrapolation"))


def crosssample_summary(cross: pl.DataFrame, accuracy: pl.DataFrame) -> dict:
    """How much of the base→RL accuracy gap switching recovers (forward) or loses (reverse).

    ``recovery(b) = (acc_forward(b) - acc_base) / (acc_rl - acc_base)`` and ``loss(b) = (acc_rl -
    acc_reverse(b)) / (acc_rl - acc_base)``, where ``acc_base`` and ``acc_rl`` are the budget-0
    runs of each direction (the two models alone, on the cross-sampled problems and with each
    sample's own noise: the models' rollouts of those problems), or, without them, the models'
    rollout accuracies over the whole dataset. The headline budget is the smallest whose forward
    ``js`` recovery reaches 80% (else ``all``); the random control is read at the same budget.
    None where the gap is not positive. Without ``js`` the headline policy is the first other
    non-random one (``random`` only when it is the only one, and then with no control beside it);
    with no budget above 0 there is no headline budget, only the gap.
    """
    cross, beside = grid_and_extrapolation(cross)
    policies = list(dict.fromkeys(cross["policy"].to_list()))
    policy = "js" if "js" in policies else next((p for p in policies if p != "random"), "random")
    rows = {(r["direction"], r["policy"], r["budget"]): r for r in cross.iter_rows(named=True)}
    zero = {d: next((r for k, r in rows.items() if k[0] == d and k[2] == "0"), None) for d in ("forward", "reverse")}
    if zero["forward"] is not None and zero["reverse"] is not None:
        ends = {"base": zero["forward"]["accuracy"], "rl": zero["reverse"]["accuracy"]}
    else:
        ends = {role: r["value"] for role, r in model_accuracy(accuracy).items()}
    gap = ends["rl"] - ends["base"]
    out: dict = {"accuracy_base": ends["base"], "accuracy_rl": ends["rl"], "gap": gap}
    if gap <= 0:
        return out
    budgets = sorted({r["budget"] for r in rows.values()}, key=lambda b: math.inf if b == "all" else int(b))
    fwd = {
        b: (rows[("forward", policy, b)]["accuracy"] - ends["base"]) / gap
        for b in budgets
        if ("forward", policy, b) in rows
    }
    rev = {
        b: (ends["rl"] - rows[("reverse", policy, b)]["accuracy"]) / gap
        for b in budgets
        if ("reverse", policy, b) in rows
    }
    out.update(policy=policy, forward_recovery_by_budget=fwd, reverse_loss_by_budget=rev)
    out["forward_recovery_by_policy"] = {
        p: {b: (r["accuracy"] - ends["base"]) / gap for (d, q, b), r in rows.items() if d == "forward" and q == p}
        for p in policies
    }
    out["extrapolation"] = [
        {
            "gamma": r["gamma"],
            "policy": r["policy"],
            "budget": r["budget"],
            "accuracy": r["accuracy"],
            "ci_low": r["ci_low"],
            "ci_high": r["ci_high"],
            "recovery": (r["accuracy"] - ends["base"]) / gap,
            "mean_switched": r["mean_switched"],
            # replacement: the grid's run of the same cell (gamma 0), where the grid has it
            "replace_recovery": (rows[key]["accuracy"] - ends["base"]) / gap if key in rows else None,
        }
        for r in beside.iter_rows(named=True)
        for key in [(r["direction"], r["policy"], r["budget"])]
    ]
    if budgets[-1] == "0":  # the models alone: nothing was switched, so nothing is recovered or lost
        return out
    if fwd:
        b = next((b for b in budgets if b != "0" and fwd.get(b, -1) >= HEADLINE_RECOVERY), budgets[-1])
        out.update(
            forward_budget=b, forward_recovery=fwd[b], forward_switched=rows[("forward", policy, b)]["mean_switched"]
        )
        rnd = rows.get(("forward", "random", b)) if policy != "random" else None
        out["random_recovery"] = (rnd["accuracy"] - ends["base"]) / gap if rnd else None
        out["random_switched"] = rnd["mean_switched"] if rnd else None
    if rev:
        out.update(
            reverse_budget=budgets[-1],
            reverse_loss=rev[budgets[-1]],
            reverse_switched=rows[("reverse", policy, budgets[-1])]["mean_switched"],
        )
    return out


def advantage_summary(comparison: pl.DataFrame) -> dict:
    """The advantage experiment at its last round: each weighting's accuracy and its paired
    difference from plain GRPO (95% CI), and the weightings whose whole CI is above 0."""
    rows = {r["variant"]: r for r in comparison.iter_rows(named=True)}
    return {
        "step": int(comparison["step"].max()),
        "n_seeds": int(comparison["n_seeds"].max()),
        "n_problems": int(comparison["n_problems"].max()),
        "accuracy": {v: [r["accuracy"], r["ci_low"], r["ci_high"]] for v, r in rows.items()},
        "diff_vs_none": {
            v: [r["diff_vs_none"], r["diff_ci_low"], r["diff_ci_high"]]
            for v, r in rows.items()
            if r.get("diff_vs_none") is not None
        },
        "better": [v for v, r in rows.items() if (r.get("diff_ci_low") or 0) > 0],
        "worse": [v for v, r in rows.items() if r.get("diff_ci_high") is not None and r["diff_ci_high"] < 0],
    }


def advantage_verdict(comparison: pl.DataFrame) -> str:
    """Which weightings beat plain GRPO, or lost to it, beyond the 95% CI of the paired difference."""
    s = advantage_summary(comparison)
    even = [v for v in s["diff_vs_none"] if v not in s["better"] + s["worse"]]
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (("better than plain GRPO:", s["better"]), ("worse:", s["worse"]), ("within noise:", even))
        if names
    ]
    if not parts:
        return "plain GRPO alone (nothing to compare)"
    return "; ".join(parts if s["better"] else ["no weighting beats plain GRPO", *parts])


def shifts_summary(table: pl.DataFrame) -> dict:
    """Shifts over training: the first and last checkpoint's sparsity, high-JS share and top-5% precision."""
    t = table.sort("step")
    keys = ("share_js_below_1e-3", "share_js_above_1e-2", "top5_precision", "base_rate")
    first, last = t.row(0, named=True), t.row(-1, named=True)
    return {
        "steps": t["step"].to_list(),
        "first": {"step": first["step"], **{k: first[k] for k in keys}},
        "last": {"step": last["step"], **{k: last[k] for k in keys}},
    }
