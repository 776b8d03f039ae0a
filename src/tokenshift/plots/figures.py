"""The paper's figures, one function each: a polars table in, a matplotlib figure out.

Nothing here recomputes a statistic from raw data: every number drawn or written in a title is
read off the tables the workflow wrote (``tokenshift.tables``) or the headline helpers that
read them (``tokenshift.headlines``). Titles state the finding, with the number behind it.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from matplotlib.colors import LogNorm
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from tokenshift import headlines
from tokenshift.plots.style import (
    ADVANTAGE,
    DIRECTION_STYLE,
    KIND_STYLE,
    OKABE_ITO,
    POLICY,
    ROLE,
    ROLE_LABEL,
    SERIES,
    SOURCE_LABEL,
    apply,
    pct,
)

JS_FLOOR = 1e-8
"""Log axes cannot show 0: JS values below this are drawn at it (and the axis says so)."""
EXAMPLE_FLOOR = 1e-5
"""In the example figure, tokens with JS below this are white: most of a response, as most positions."""


def _lines(table: pl.DataFrame) -> list[tuple[tuple, pl.DataFrame]]:
    keys = [k for k in ("pair", "dataset", "source") if k in table.columns]
    return (
        [(k if isinstance(k, tuple) else (k,), g) for k, g in table.group_by(keys, maintain_order=True)]
        if keys
        else [((), table)]
    )


def sparsity(table: pl.DataFrame) -> plt.Figure:
    """Figure 1: the JS percentile curve (log y), share of positions under 1e-3 marked.

    ``table``: stacked sparsity tables (``pair``, ``dataset``, ``source`` columns) with an
    optional ``pair_kind`` (``rlvr`` / ``sft``): pairs of both kinds share the axis, kinds told
    apart by line style. With several pairs or datasets, one line each, on the RL model's
    responses; with one, a line per response source.
    """
    apply()
    several = table.select("pair", "dataset").unique().height > 1
    if several:
        table = table.filter(pl.col("source") == "rl")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curve = table.filter((pl.col("kind") == "percentile") & (pl.col("value") > 0))
    below = table.filter((pl.col("kind") == "share_below") & (pl.col("js_nats") == 1e-3))
    shares = []
    for i, ((pair, dataset, source), g) in enumerate(_lines(curve)):
        kind = g["pair_kind"][0] if "pair_kind" in g.columns else "rlvr"
        color = SERIES[i % len(SERIES)] if several else ROLE[source]
        label = f"{pair} ({kind.upper()}) on {dataset}" if several else SOURCE_LABEL[source]
        ax.plot(
            g["value"],
            np.maximum(g["js_nats"].to_numpy(), JS_FLOOR),
            color=color,
            linestyle=KIND_STYLE.get(kind, "-"),
            label=label,
            lw=1.8,
        )
        share = below.filter((pl.col("pair") == pair) & (pl.col("dataset") == dataset) & (pl.col("source") == source))
        if share.height:
            s = float(share["share"][0])
            shares.append(s)
            ax.plot([100 * s], [1e-3], "o", color=color, ms=5)
            ax.annotate(
                f"{pct(s)} below 1e-3",
                (100 * s, 1e-3),
                textcoords="offset points",
                xytext=(-8, 10 + 14 * i),
                ha="right",
                fontsize=8,
                color=color,
            )
    ax.axhline(1e-3, color="black", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_ylim(JS_FLOOR / 2, 1.0)
    ax.set_xlim(0, 100)
    ax.set_xlabel("percentile of response positions (%)")
    ax.set_ylabel("Jensen–Shannon divergence (nats, log)")
    ax.text(
        0.99,
        0.02,
        f"JS < {JS_FLOOR:g} drawn at {JS_FLOOR:g}",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color="0.4",
    )
    lo, hi = (min(shares), max(shares)) if shares else (math.nan, math.nan)
    span = pct(lo) if abs(hi - lo) < 5e-4 else f"{pct(lo)}–{pct(hi)}"
    ax.set_title(f"RL fine-tuning leaves most tokens alone: {span} of positions have JS < 1e-3")
    ax.legend(loc="upper left")
    return fig


def position(table: pl.DataFrame) -> plt.Figure:
    """Figure 2: mean JS (95% CI) and share of high-JS positions by normalised response position."""
    apply()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for (_, _, source), g in _lines(table):
        x = 100 * (g["position_low"] + g["position_high"]).to_numpy() / 2
        color = ROLE[source]
        a.plot(x, g["mean_js"], "o-", color=color, label=SOURCE_LABEL[source], ms=4)
        a.fill_between(x, g["js_ci_low"], g["js_ci_high"], color=color, alpha=0.2, lw=0)
        b.plot(x, 100 * g["share_high_js"], "o-", color=color, label=SOURCE_LABEL[source], ms=4)
    a.set_ylim(bottom=0)
    b.set_ylim(bottom=0)
    for ax in (a, b):
        ax.set_xlabel("position in the response (% of its length)")
        ax.set_xlim(0, 100)
    a.set_ylabel("mean JS (nats), 95% CI")
    b.set_ylabel("high-JS positions (% of the bin; top 5% JS)")
    a.legend()
    where = headlines.position_summary(table)
    fig.suptitle(
        f"Where the shift sits: mean JS is highest at the {where['highest']} of a response "
        f"and lowest at the {where['lowest']}"
    )
    fig.tight_layout()
    return fig


def entropy(table: pl.DataFrame) -> plt.Figure:
    """Figure 3: JS against the base model's entropy (binned means with 95% CIs, log-log)."""
    apply()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (_, _, source), g in _lines(table):
        x = np.maximum(g["mean_entropy_base"].to_numpy(), JS_FLOOR)
        y = np.maximum(g["mean_js"].to_numpy(), JS_FLOOR)
        # a normal-approximation CI can reach below 0, which a log axis cannot show: clip at y / 10
        lo = np.maximum(g["js_ci_low"].to_numpy(), y / 10)
        hi = np.maximum(g["js_ci_high"].to_numpy(), y)
        ax.errorbar(
            x, y, yerr=[y - lo, hi - y], fmt="o-", color=ROLE[source], label=SOURCE_LABEL[source], ms=4, capsize=2
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("base model's entropy at the position (nats; decile bins, log)")
    ax.set_ylabel("mean JS in the bin (nats, log)\n95% CI, lower end clipped at mean/10")
    rl = headlines.main_source(table).row(0, named=True)
    ax.set_title(
        f"Divergence follows uncertainty: {pct(rl['share_high_js_among_high_entropy'])} of the most "
        f"uncertain 10% of positions are high-JS, vs {pct(rl['share_high_js_overall'])} overall",
        wrap=True,
    )
    ax.legend()
    return fig


def reallocation(table: pl.DataFrame) -> plt.Figure:
    """Figure 4: top-k overlap distribution and the RL top token's rank under the base model."""
    apply()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    sources = table["source"].unique(maintain_order=True).to_list()
    width = 0.8 / len(sources)
    overlap_metrics = sorted(
        {m for m in table["metric"] if m.startswith("topk_overlap=")}, key=lambda m: float(m.split("=")[1])
    )
    rank_metrics = [m for m in table["metric"].unique(maintain_order=True) if m.startswith("rl_top1_rank_in_base")]
    for i, source in enumerate(sources):
        values = dict(table.filter(pl.col("source") == source).select("metric", "value").iter_rows())
        ov = np.array([values.get(m, 0.0) for m in overlap_metrics])
        a.bar(np.arange(len(ov)) + i * width, 100 * ov, width, color=ROLE[source], label=SOURCE_LABEL[source])
        rk = np.array([values.get(m, 0.0) for m in rank_metrics])
        bars = b.bar(np.arange(len(rk)) + i * width, 100 * rk, width, color=ROLE[source], label=SOURCE_LABEL[source])
        b.bar_label(bars, labels=[f"{100 * v:.1f}" if v >= 0.001 else "" for v in rk], fontsize=7)
    centre = width * (len(sources) - 1) / 2
    a.set_xticks(np.arange(len(overlap_metrics)) + centre, [m.split("=")[1] for m in overlap_metrics])
    b.set_xticks(np.arange(len(rank_metrics)) + centre, [m.split("base")[1].lstrip("=") for m in rank_metrics])
    a.set_xlabel("top-5 overlap of the two models\n(shared share of their 5 most probable tokens)")
    a.set_ylabel("positions (%)")
    b.set_xlabel("rank of the RL model's top token under the base model\n(0 = the base model's own top token)")
    b.set_ylabel("positions (%, log)")
    b.set_yscale("log")
    a.legend()
    top = headlines.reallocation_summary(table)
    b.text(
        0.98,
        0.95,
        "\n".join(f"in base top {k}: {pct(v)}" for k, v in top.items()),
        transform=b.transAxes,
        ha="right",
        va="top",
        fontsize=8,
    )
    fig.suptitle(
        f"RL reallocates mass, it does not invent tokens: its top token is in the base model's top 3 "
        f"at {pct(top[3])} of positions"
    )
    fig.tight_layout()
    return fig


def _budget_x(labels: list[str]) -> tuple[dict[str, float], float]:
    finite = sorted({int(b) for b in labels if b != "all"})
    x_all = max(2 * max(finite), 1) if finite else 1
    return {**{str(b): float(b) for b in finite}, "all": float(x_all)}, float(x_all)


def crosssample(cross: pl.DataFrame, accuracy: pl.DataFrame) -> plt.Figure:
    """Figure 5: accuracy vs budget, forward and reverse in their own panels, one line per policy
    (95% CI bands), the base and RL models' own accuracy as horizontal lines; right, mean switched
    tokens per response (forward solid, reverse dashed). The follow-up's extrapolation runs beside
    the grid (``crosssample.gammas``) are diamonds at their budget, labelled with their gamma. Where a
    run recorded the accuracy at every smaller budget (the regenerate engine's ``dense_accuracy``), the
    largest such run of a policy is drawn as a thin line through every budget 0 .. its own."""
    apply()
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    cross, beside = headlines.grid_and_extrapolation(cross)
    xs, x_all = _budget_x(cross["budget"].unique().to_list() + beside["budget"].unique().to_list())
    metric = headlines.avg_metric(accuracy)
    own = headlines.model_accuracy(accuracy)
    directions = [d for d in ("forward", "reverse") if d in cross["direction"].to_list()]
    panels = dict(zip(directions, axes[:2]))
    for direction, ax in panels.items():
        for role in ("base", "rl"):
            r = own[role]
            ax.axhline(r["value"], color=ROLE[role], lw=1.2, ls=":")
            ax.axhspan(r["ci_low"], r["ci_high"], color=ROLE[role], alpha=0.08, lw=0)
            ax.text(
                1.01,
                r["value"],
                f"{ROLE_LABEL[role]}\nalone {r['value']:.2f}",
                color=ROLE[role],
                fontsize=8,
                va="center",
                transform=ax.get_yaxis_transform(),
            )
        who = (
            "base model generates, RL tokens injected"
            if direction == "forward"
            else "RL model generates, base tokens injected"
        )
        ax.set_title(f"{direction}: {who}", fontsize=10)
        ax.set_ylabel(f"accuracy ({metric}), 95% CI")
    for ax in axes[len(directions) : 2]:
        ax.set_visible(False)
    for (direction, policy), g in cross.group_by(["direction", "policy"], maintain_order=True):
        g = g.with_columns(pl.col("budget").replace_strict(xs, return_dtype=pl.Float64).alias("x")).sort("x")
        ax = panels[direction]
        ax.plot(g["x"], g["accuracy"], marker="o", ms=4, color=POLICY[policy], lw=1.8, label=policy)
        ax.fill_between(g["x"], g["ci_low"], g["ci_high"], color=POLICY[policy], alpha=0.12, lw=0)
        axes[2].plot(
            g["x"],
            g["mean_switched"],
            marker="o",
            ms=3,
            color=POLICY[policy],
            ls=DIRECTION_STYLE[direction],
            lw=1.5,
            label=f"{direction}, {policy}",
        )
    if "dense_accuracy" in cross.columns:
        dense = cross.filter(pl.col("dense_accuracy").is_not_null() & pl.col("budget_tokens").is_not_null())
        for (direction, policy), g in dense.group_by(["direction", "policy"], maintain_order=True):
            r = g.sort("budget_tokens").row(-1, named=True)  # the largest budget holds the smaller ones
            ax, ks = panels[direction], list(range(len(r["dense_accuracy"])))
            ax.plot(ks, r["dense_accuracy"], color=POLICY[policy], lw=0.8, alpha=0.7)
            ax.fill_between(ks, r["dense_ci_low"], r["dense_ci_high"], color=POLICY[policy], alpha=0.06, lw=0)
    for r in beside.iter_rows(named=True):
        ax, x = panels[r["direction"]], xs[r["budget"]] * 1.07  # beside the grid's point of its budget
        ax.errorbar(
            x,
            r["accuracy"],
            yerr=[[r["accuracy"] - r["ci_low"]], [r["ci_high"] - r["accuracy"]]],
            marker="D",
            ms=6,
            color=POLICY[r["policy"]],
            mfc="white",
            capsize=3,
            lw=1.2,
            label=f"{r['policy']}, extrapolated (gamma {r['gamma']:g})",
        )
    both = pl.concat([cross, beside]) if beside.height else cross
    lo = min(float(both["ci_low"].min()), own["base"]["ci_low"], own["rl"]["ci_low"])
    hi = max(float(both["ci_high"].max()), own["base"]["ci_high"], own["rl"]["ci_high"])
    for ax in axes:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(-0.1, x_all * 1.15)
        ticks = sorted(xs.values())
        ax.set_xticks(ticks, [("all" if t == x_all else f"{t:g}") for t in ticks])
        ax.set_xlabel("budget: most switched tokens per response")
    for ax in panels.values():
        ax.set_ylim(lo - 0.02, hi + 0.02)
    next(iter(panels.values())).legend(title="policy", fontsize=8, loc="best")
    axes[2].set_ylabel("switched tokens per response (mean)")
    axes[2].set_title("forward solid, reverse dashed", fontsize=10)
    h = headlines.crosssample_summary(cross, accuracy)
    title = "Cross-sampling: accuracy as tokens are traded between the models"
    if h.get("forward_recovery") is not None:
        title = (
            f"Forward: {h['forward_switched']:.1f} switched tokens per response recover "
            f"{pct(h['forward_recovery'])} of the base→RL gap"
        )
        if h.get("random_recovery") is not None:
            title += f" (as many at random positions: {pct(h['random_recovery'])})"
        if h.get("reverse_loss") is not None:
            title += (
                f"\nReverse: {h['reverse_switched']:.1f} injected base tokens per response lose "
                f"{pct(h['reverse_loss'])} of it"
            )
    fig.suptitle(title)
    fig.tight_layout()
    return fig


NO_EXAMPLE = (
    "No correct cross-sampled response has a switched token, so there is no example to show\n"
    "(the models never diverged past the threshold where a response came out right)."
)


def example(table: pl.DataFrame, *, max_chars: int = 72, note: str = NO_EXAMPLE) -> plt.Figure:
    """Figure 6: one cross-sampled response, token by token, coloured by JS; switched tokens boxed.

    ``table``: one row per response token with ``token`` (text), ``js``, ``switched``, and the
    response's ``question``, ``gold``, ``direction``, ``budget`` (see ``tables.example_table``).
    With no rows, the figure says why there is nothing to show (``note``).
    """
    apply()
    if table.height == 0:
        fig, ax = plt.subplots(figsize=(7.0, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=10, wrap=True)
        return fig
    meta = table.row(0, named=True)
    tokens = table["token"].to_list()
    lines, line, width = [], [], 0
    for i, tok in enumerate(tokens):
        shown = tok.replace("\n", "↵")
        if width + len(shown) > max_chars and line:
            lines.append(line)
            line, width = [], 0
        line.append((i, shown))
        width += len(shown)
        if "\n" in tok:
            lines.append(line)
            line, width = [], 0
    if line:
        lines.append(line)
    js = table["js"].to_numpy()
    vmax = max(float(js.max()), 10 * EXAMPLE_FLOOR)
    norm = LogNorm(vmin=EXAMPLE_FLOOR, vmax=vmax, clip=True)
    cmap = plt.get_cmap("Greys")
    line_h = 1.6
    width = max(sum(len(shown) for _, shown in items) for items in lines)
    fig_w = min(11.0, max(7.0, 2.2 + 0.16 * width))
    fig, ax = plt.subplots(figsize=(fig_w, 1.6 + 0.42 * len(lines)))
    for row, items in enumerate(lines):
        x, y = 0.0, -row * line_h
        for i, shown in items:
            w = float(len(shown))
            shade = norm(max(js[i], EXAMPLE_FLOOR))
            ax.add_patch(Rectangle((x, y - 0.6), w, 1.2, facecolor=cmap(0.05 + 0.9 * shade), edgecolor="white", lw=0.5))
            if table["switched"][i]:
                ax.add_patch(
                    Rectangle((x + 0.05, y - 0.58), w - 0.1, 1.16, facecolor="none", edgecolor=ROLE["rl"], lw=2.4)
                )
            ax.text(
                x + w / 2,
                y,
                shown,
                ha="center",
                va="center",
                family="monospace",
                fontsize=10,
                color="white" if shade > 0.55 else "black",
            )
            x += w
    ax.set_xlim(-0.3, width + 0.3)
    ax.set_ylim(-(len(lines) - 1) * line_h - 1.0, 1.0)
    ax.axis("off")
    n_sw = int(table["switched"].sum())
    cb = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.04, pad=0.02)
    cb.set_label(f"JS (nats, log; < {EXAMPLE_FLOOR:g} white)")
    question = textwrap.shorten(str(meta["question"]).replace("\n", " "), 60)
    verb = "turns" if n_sw == 1 else "turn"
    what = (
        f"{verb} a wrong base-model response right"
        if meta.get("baseline_correct") is False
        else "in a correct cross-sampled response"
    )
    head = textwrap.fill(
        f"{n_sw} token{'s' if n_sw != 1 else ''} drawn from the RL model (red boxes) {what}: "
        f"{'it sits' if n_sw == 1 else 'they sit'} where the models disagree",
        int(fig_w * 13),
    )
    ax.set_title(
        f"{head}\n{meta['direction']} cross-sample, budget {meta['budget']}; prompt {question!r}; "
        f"gold answer {meta['gold']}",
        fontsize=9,
        loc="left",
    )
    return fig


FIGURES = {
    "sparsity": sparsity,
    "position": position,
    "entropy": entropy,
    "reallocation": reallocation,
    "crosssample": crosssample,
    "example": example,
}


def advantages(curve: pl.DataFrame, comparison: pl.DataFrame) -> plt.Figure:
    """The advantage-weighting experiment: accuracy per GRPO round for each weighting (mean over
    seeds, the seeds' range shaded), and each one's last-round difference from plain GRPO with
    its 95% CI (paired by seed and problem)."""
    apply()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    for (variant,), g in curve.sort("step").group_by("variant", maintain_order=True):
        color = ADVANTAGE.get(variant, OKABE_ITO["grey"])
        ax.plot(g["step"], g["accuracy"], marker="o", color=color, label=variant)
        ax.fill_between(g["step"], g["seed_min"], g["seed_max"], color=color, alpha=0.15, linewidth=0)
    ax.set(xlabel="GRPO round", ylabel="accuracy (eval problems)", title="accuracy during training")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(title="advantage", frameon=False, loc="best")
    diffs = comparison.filter(pl.col("diff_vs_none").is_not_null())
    y = np.arange(diffs.height)
    for i, r in enumerate(diffs.iter_rows(named=True)):
        color = ADVANTAGE.get(r["variant"], OKABE_ITO["grey"])
        bx.errorbar(
            r["diff_vs_none"],
            i,
            xerr=[[r["diff_vs_none"] - r["diff_ci_low"]], [r["diff_ci_high"] - r["diff_vs_none"]]],
            fmt="o",
            color=color,
            capsize=3,
        )
    bx.axvline(0, color=OKABE_ITO["black"], linewidth=0.8)
    bx.set_yticks(y, diffs["variant"].to_list())
    bx.set_ylim(-0.7, max(diffs.height, 1) - 0.3)
    bx.set(xlabel="accuracy minus plain GRPO's (95% CI)", title=f"after round {comparison['step'].max()}")
    fig.suptitle(f"Divergence-weighted advantages on the toy task: {headlines.advantage_verdict(comparison)}")
    fig.tight_layout()
    return fig


def training_shifts(table: pl.DataFrame) -> plt.Figure:
    """Shifts over training: at each checkpoint of the RL run, the share of positions RL left
    unchanged (JS < 1e-3), the share it moved (JS > 1e-2), and how precisely the top 5% of
    positions by JS find the task's decision points (against the base rate of a random pick)."""
    apply()
    t = table.sort("step")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    panels = (
        ("share_js_below_1e-3", "unchanged: JS < 1e-3", "share of positions", OKABE_ITO["blue"]),
        ("share_js_above_1e-2", "moved: JS > 1e-2", "share of positions", OKABE_ITO["vermillion"]),
        ("top5_precision", "top 5% by JS on decision points", "precision", OKABE_ITO["green"]),
    )
    for ax, (col, title, label, color) in zip(axes, panels):
        ax.plot(t["step"], t[col], marker="o", color=color)
        ax.set(xlabel="GRPO step", ylabel=label, title=title)
        ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].plot(t["step"], t["base_rate"], linestyle="--", color=OKABE_ITO["grey"], label="random pick")
    axes[2].legend(frameon=False)
    last = headlines.shifts_summary(table)["last"]
    fig.suptitle(
        f"Shifts over RL training: at step {last['step']}, {pct(last['share_js_below_1e-3'])} of positions "
        f"have JS < 1e-3, and {pct(last['top5_precision'])} of the top 5% by JS are decision points"
    )
    fig.tight_layout()
    return fig
