"""The report a reader opens first: ``report.html`` (self-contained) and ``summary.json``.

Both are built from the tables the workflow wrote, through ``tokenshift.headlines``, so the
sentences in the report, the numbers in the JSON and the figure titles agree. The HTML embeds
every figure as a PNG data URI and quotes the config the run used; it needs no other file. Its markup
is the Jinja template ``templates/report.html.j2``; the code here gives it text (sentences, tables as
rows of formatted values, figures as data URIs), which the template escapes.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import jinja2
import polars as pl

from tokenshift import __version__, headlines
from tokenshift.io import InputError, read_html, read_png, read_text, settings_digest
from tokenshift.plots.style import pct
from tokenshift.registry import ROLES

BOX_COLUMNS = ("grading", "n_no_box", "n_correct_unboxed")
"""The grading mode and what it decided for unboxed answers, beside every accuracy (``tables.box_counts``)."""
ACCURACY_COLUMNS = ("role", "metric", "value", "ci_low", "ci_high", "n_problems", "samples_per_problem", *BOX_COLUMNS)
CROSSSAMPLE_COLUMNS = (
    "direction",
    "policy",
    "budget",
    "accuracy",
    "ci_low",
    "ci_high",
    "mean_switched",
    "switched_share",
    "n_problems",
    "n_samples",
    *BOX_COLUMNS,
)
"""The columns of the accuracy and cross-sampling tables the report shows, in its order."""


@dataclass
class PairResult:
    """Everything the report says about one (pair, dataset)."""

    pair: str
    dataset: str
    kind: str
    accuracy: pl.DataFrame
    divergence: Mapping[str, pl.DataFrame]
    crosssample: pl.DataFrame | None = None
    figures: Mapping[str, Path] = field(default_factory=dict)
    """Figure name -> PNG path."""


def summarize(result: PairResult) -> dict:
    """The machine-readable headline numbers of one (pair, dataset)."""
    d = result.divergence
    out = {
        "pair": result.pair,
        "dataset": result.dataset,
        "kind": result.kind,
        "accuracy": {
            role: {"value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "metric": r["metric"]}
            for role, r in headlines.model_accuracy(result.accuracy).items()
        },
        "share_js_below": headlines.sparsity_summary(d["sparsity"]),
        "rl_top1_in_base_top": {str(k): v for k, v in headlines.reallocation_summary(d["reallocation"]).items()},
        "position": headlines.position_summary(d["position"]),
    }
    if result.crosssample is not None:
        out["crosssample"] = headlines.crosssample_summary(result.crosssample, result.accuracy)
    return out


def sentences(s: Mapping) -> list[str]:
    """The headline numbers in words."""
    acc = s["accuracy"]
    out = [
        f"The RL model scores {acc['rl']['value']:.3f} [{acc['rl']['ci_low']:.3f}, {acc['rl']['ci_high']:.3f}] "
        f"against the base model's {acc['base']['value']:.3f} [{acc['base']['ci_low']:.3f}, "
        f"{acc['base']['ci_high']:.3f}] ({acc['rl']['metric']}, 95% bootstrap CI)."
    ]
    below = s["share_js_below"]
    if "0.001" in below:
        out.append(
            f"{pct(below['0.001'])} of positions in the RL model's responses have JS < 1e-3"
            + (f", {pct(below['0.01'])} have JS < 1e-2." if "0.01" in below else ".")
        )
    top = s["rl_top1_in_base_top"]
    out.append(
        f"The RL model's top token is the base model's own top token at {pct(top['1'])} of positions and "
        f"within its top 3 at {pct(top['3'])}: RL reallocates probability among candidates the base model "
        f"already ranks highly."
    )
    pos = s["position"]
    out.append(
        f"Mean JS is highest at the {pos['highest']} of a response and lowest at the {pos['lowest']} ("
        + ", ".join(f"{k} {pos['mean_js'][k]:.2g}" for k in ("start", "middle", "end") if k in pos["mean_js"])
        + " nats)."
    )
    cs = s.get("crosssample") or {}
    if cs.get("forward_recovery") is not None:
        text = (
            f"Forward cross-sampling ({cs['policy']} policy) with budget {cs['forward_budget']} "
            f"({cs['forward_switched']:.1f} switched tokens per response on average) recovers "
            f"{pct(cs['forward_recovery'])} of the base→RL accuracy gap"
        )
        if cs.get("random_recovery") is not None:
            text += (
                f"; switching {cs['random_switched']:.1f} tokens at random positions recovers "
                f"{pct(cs['random_recovery'])}"
            )
        out.append(text + ".")
        by = cs.get("forward_recovery_by_policy", {})
        at = {p: r[cs["forward_budget"]] for p, r in by.items() if cs["forward_budget"] in r}
        if len(set(at) - {"random"}) > 1:  # policies to compare, beside the random control
            out.append(
                f"At budget {cs['forward_budget']}, forward recovery by policy: "
                + ", ".join(f"{p} {pct(v)}" for p, v in at.items())
                + "."
            )
    for e in cs.get("extrapolation", []):
        text = (
            f"The follow-up's extrapolation ({e['policy']} policy, budget {e['budget']}, gamma {e['gamma']:g}) "
            f"scores {e['accuracy']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}] with "
            f"{e['mean_switched']:.1f} switched tokens per response, recovering {pct(e['recovery'])} of the gap"
        )
        if e["replace_recovery"] is not None:
            text += f" (replacement, gamma 0: {pct(e['replace_recovery'])})"
        out.append(text + ".")
    if cs.get("reverse_loss") is not None:
        out.append(
            f"Reverse cross-sampling (budget {cs['reverse_budget']}, {cs['reverse_switched']:.1f} base tokens "
            f"injected per response) loses {pct(cs['reverse_loss'])} of the gap."
        )
    elif "gap" in cs and cs["gap"] <= 0:
        out.append("The RL model is not more accurate than the base model here, so there is no gap to recover.")
    return out


def kind_contrast(summaries: Sequence[Mapping]) -> list[dict]:
    """Per dataset with both an RLVR and an SFT pair: each pair's share of positions that moved
    (JS >= 1e-3 and >= 1e-2, on the tuned model's responses), the paper's sparsity contrast, and
    at which of those cuts the SFT pair's share is the larger."""
    out = []
    for dataset in dict.fromkeys(s["dataset"] for s in summaries):
        here = [s for s in summaries if s["dataset"] == dataset]
        kinds = {k: [s for s in here if s["kind"] == k] for k in ("rlvr", "sft")}
        if not (kinds["rlvr"] and kinds["sft"]):
            continue
        for rl in kinds["rlvr"]:
            for sft in kinds["sft"]:
                moved = {
                    name: {t: 1 - s["share_js_below"][t] for t in ("0.001", "0.01") if t in s["share_js_below"]}
                    for name, s in (("rlvr", rl), ("sft", sft))
                }
                out.append(
                    {
                        "dataset": dataset,
                        "rlvr_pair": rl["pair"],
                        "sft_pair": sft["pair"],
                        "share_js_at_least": moved,
                        "sft_denser": {t: moved["sft"][t] > moved["rlvr"][t] for t in moved["rlvr"]},
                    }
                )
    return out


def contrast_sentences(c: Mapping) -> list[str]:
    moved = c["share_js_at_least"]
    text = (
        f"On {c['dataset']}, SFT ({c['sft_pair']}) moved {pct(moved['sft']['0.001'])} of positions to JS >= 1e-3, "
        f"RL ({c['rlvr_pair']}) {pct(moved['rlvr']['0.001'])}"
    )
    if "0.01" in moved["sft"]:
        text += f"; to JS >= 1e-2: SFT {pct(moved['sft']['0.01'])}, RL {pct(moved['rlvr']['0.01'])}"
    denser = [t for t, yes in c["sft_denser"].items() if yes]
    if len(denser) == len(c["sft_denser"]):
        verdict = "SFT's shifts are denser than RL's, as the paper found"
    elif denser:
        verdict = f"SFT's shifts are denser than RL's at JS >= {', '.join(denser)} only"
    else:
        verdict = "SFT's shifts are not denser than RL's here, unlike the paper's"
    return [f"{text}. {verdict}."]


def advantage_sentences(a: Mapping) -> list[str]:
    """The advantage experiment in words."""
    acc = a["accuracy"]
    out = [
        f"GRPO from the base model for {a['step']} rounds, {a['n_seeds']} seeds per weighting, evaluated on "
        f"{a['n_problems']} problems: "
        + "; ".join(f"{v} {x[0]:.3f} [{x[1]:.3f}, {x[2]:.3f}]" for v, x in acc.items())
        + " (accuracy, 95% bootstrap CI over problems)."
    ]
    for v, (d, lo, hi) in a["diff_vs_none"].items():
        verdict = "better than" if lo > 0 else "worse than" if hi < 0 else "not distinguishable from"
        out.append(f"{v} minus plain GRPO: {d:+.3f} [{lo:+.3f}, {hi:+.3f}], {verdict} plain GRPO at this size.")
    return out


def shift_sentences(pair: str, s: Mapping) -> list[str]:
    """The shifts over training in words."""
    first, last = s["first"], s["last"]
    return [
        f"{pair}: from step {first['step']} to step {last['step']} of RL training, the share of positions with "
        f"JS < 1e-3 goes from {pct(first['share_js_below_1e-3'])} to {pct(last['share_js_below_1e-3'])}, the "
        f"share with JS > 1e-2 from {pct(first['share_js_above_1e-2'])} to {pct(last['share_js_above_1e-2'])}, "
        f"and the share of the top 5% of positions by JS that are decision points from "
        f"{pct(first['top5_precision'])} to {pct(last['top5_precision'])} (a random pick: {pct(last['base_rate'])})."
    ]


@dataclass
class TrainingResult:
    """The toy training analyses: the advantage experiment and each toy pair's shifts over training."""

    comparison: pl.DataFrame | None = None
    advantage_figure: Path | None = None
    shifts: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    """Pair -> its training-shifts table."""
    shift_figures: Mapping[str, Path] = field(default_factory=dict)

    def summary(self) -> dict:
        out: dict = {}
        if self.comparison is not None:
            out["advantages"] = headlines.advantage_summary(self.comparison)
        if self.shifts:
            out["training_shifts"] = {p: headlines.shifts_summary(t) for p, t in self.shifts.items()}
        return out

    def sections(self, summary: Mapping) -> dict:
        """What the report shows of them (``templates/report.html.j2``): the sentences, tables and figures of
        each analysis ``summary`` (``summary()``) holds, None for one it does not."""
        advantages = shifts = None
        if "advantages" in summary:
            advantages = {
                "sentences": advantage_sentences(summary["advantages"]),
                "table": _table(self.comparison),
                "figure": _figure(self.advantage_figure, "advantage weighting experiment")
                if self.advantage_figure is not None
                else None,
            }
        if "training_shifts" in summary:
            shifts = {
                "sentences": [t for pair, s in summary["training_shifts"].items() for t in shift_sentences(pair, s)],
                "pairs": [
                    {
                        "table": _table(table, floats=4),
                        "figure": _figure(self.shift_figures[pair], f"{pair} shifts over training")
                        if pair in self.shift_figures
                        else None,
                    }
                    for pair, table in self.shifts.items()
                ],
            }
        return {"advantages": advantages, "shifts": shifts}


def load_training(
    advantages: tuple[Path, Path] | None, shifts: Mapping[str, tuple[Path, Path]] | None = None
) -> TrainingResult:
    """The experiment's comparison table and its figure (``advantages``: (table, figure)) and each toy pair's
    training-shifts table and its figure (``shifts``: pair -> (table, figure))."""
    from tokenshift.tables import read_table

    out = TrainingResult()
    # each figure there, and PNG data, as a pair's figures are (``load_result``): a missing one dropped out unsaid
    drawn = "a figure of `tokenshift figure-training`, a PNG"
    if advantages is not None:
        table, out.advantage_figure = (Path(p) for p in advantages)
        what = "the experiment's comparison table (tokenshift advantages table)"
        out.comparison = read_table(table, "comparison", what)
        read_png(out.advantage_figure, drawn)
    for pair, (table, figure) in (shifts or {}).items():
        out.shifts[pair] = read_table(table, "training_shifts", "a training-shifts table (tokenshift training-shifts)")
        out.shift_figures[pair] = Path(figure)
        read_png(out.shift_figures[pair], drawn)
    return out


def _table(df: pl.DataFrame, floats: int = 3) -> dict:
    """A table as the report shows it: its column names and its rows, each value as text (a float to
    ``floats`` decimals; missing, as a pass@k above n or a statistic of an empty group: a dash, not "None")."""
    return {
        "columns": list(df.columns),
        "rows": [
            ["–" if v is None else f"{v:.{floats}f}" if isinstance(v, float) else str(v) for v in r]
            for r in df.iter_rows()
        ],
    }


def _figure(path: Path, alt: str) -> dict:
    """A PNG embedded in the page: its data URI and alternative text."""
    return {"src": f"data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()}", "alt": alt}


TEMPLATE = "templates/report.html.j2"
"""The page's markup, relative to the package (named whole: the report stage's code hash covers it)."""


@functools.cache
def _template() -> jinja2.Template:
    folder, name = TEMPLATE.split("/")
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tokenshift", folder),
        autoescape=True,  # every value is text, shown as such: a name or config holding markup is not run
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(name)


def render_html(
    results: Sequence[PairResult],
    summaries: Sequence[Mapping],
    *,
    overview_figures: Mapping[str, Path],
    config_text: str,
    training: TrainingResult | None = None,
    training_summary: Mapping | None = None,
    explorer: tuple[str, int] | None = None,
) -> str:
    """The report page; ``explorer`` is the token explorer's (path relative to the report, size in bytes),
    percent-encoded in the link so a '#', '?' or '%' in it is part of the path. The page's markup is the
    template's; here is what it shows, as text (the template escapes it)."""
    pairs = pl.DataFrame([{"pair": r.pair, "kind": r.kind, "dataset": r.dataset} for r in results])
    return _template().render(
        version=__version__,
        pairs=_table(pairs),
        explorer={"href": quote(explorer[0]), "path": explorer[0], "size": f"{explorer[1] / 1e6:.1f}"}
        if explorer is not None
        else None,
        overview=[_figure(path, name) for name, path in overview_figures.items()],
        contrast=[t for c in kind_contrast(summaries) for t in contrast_sentences(c)],
        results=[
            {
                "pair": r.pair,
                "dataset": r.dataset,
                "sentences": sentences(s),
                "accuracy": _table(r.accuracy.select(*ACCURACY_COLUMNS)),
                "crosssample": _table(r.crosssample.select(*CROSSSAMPLE_COLUMNS))
                if r.crosssample is not None
                else None,
                "figures": [_figure(path, f"{r.pair} {r.dataset} {name}") for name, path in r.figures.items()],
            }
            for r, s in zip(results, summaries)
        ],
        training=(training if training is not None else TrainingResult()).sections(training_summary or {}),
        config_text=config_text,
    )


def write_report(
    results: Sequence[PairResult],
    *,
    overview_figures: Mapping[str, Path],
    config_text: str,
    html_out: Path,
    json_out: Path,
    training: TrainingResult | None = None,
    explorer: Path | None = None,
) -> dict:
    """Write ``summary.json`` and ``report.html`` (linking the token explorer page ``explorer``); return the summary."""
    from tokenshift.io import write_json_atomic, write_text_atomic

    summaries = [summarize(r) for r in results]
    training_summary = training.summary() if training is not None else {}
    summary = {"tokenshift_version": __version__, "results": summaries, **training_summary}
    if config_text:  # which settings the study that ends here ran with (tokenshift.load_results compares them)
        summary["config_sha256"] = settings_digest(config_text)
    contrast = kind_contrast(summaries)
    if contrast:
        summary["rl_vs_sft"] = contrast
    page = render_html(
        results,
        summaries,
        overview_figures=overview_figures,
        config_text=config_text,
        training=training,
        training_summary=training_summary,
        explorer=(
            (Path(os.path.relpath(explorer, Path(html_out).parent)).as_posix(), Path(explorer).stat().st_size)
            if explorer is not None
            else None
        ),
    )
    # both written once both are made: a page that fails leaves no summary behind that looks finished
    write_json_atomic(Path(json_out), json.loads(json.dumps(summary, default=float)))
    write_text_atomic(Path(html_out), page)
    return summary


def load_result(files: Mapping[str, Path], kind: str = "rlvr") -> PairResult:
    """The tables and figures of one pair and dataset, from ``files`` (name -> path, the names
    ``registry.report_files`` gives)."""
    from tokenshift.registry import REPORTED_DIVERGENCE, report_files
    from tokenshift.tables import check_one_pair, read_table

    files = {name: Path(path) for name, path in files.items()}
    expected = report_files("crosssample" in files)
    if set(files) != set(expected):
        unknown, missing = sorted(set(files) - set(expected)), sorted(set(expected) - set(files))
        said = f"unknown {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"
        raise InputError(
            f"the files of one pair and dataset ({', '.join(files)}): {said}; expected {', '.join(expected)}"
        )
    what = "an accuracy table (tokenshift accuracy)"
    accuracy = read_table(files["accuracy"], "accuracy", what)
    roles, metrics = set(accuracy["role"]), set(accuracy["metric"])
    if roles != set(ROLES) or accuracy.height != len(roles) * len(metrics):
        raise InputError(
            f"{files['accuracy']}: holds roles {sorted(roles)}, expected each metric of both {ROLES} ({what})"
        )
    bad = accuracy.filter(
        ~pl.col("value").is_between(0, 1) | (pl.col("ci_low") > pl.col("value")) | (pl.col("ci_high") < pl.col("value"))
    )
    if bad.height:
        row = bad.row(0, named=True)
        raise InputError(
            f"{files['accuracy']}: {row['role']} {row['metric']} is {row['value']:g} in "
            f"[{row['ci_low']:g}, {row['ci_high']:g}]: expected a share in [0, 1] inside its CI ({what})"
        )
    cross = files.get("crosssample")
    result = PairResult(
        pair=accuracy["pair"][0],
        dataset=accuracy["dataset"][0],
        kind=kind,
        accuracy=accuracy,
        divergence={n: read_table(files[n], n, f"the {n} table (tokenshift divergence)") for n in REPORTED_DIVERGENCE},
        crosssample=read_table(cross, "crosssample", "a cross-sampling table (tokenshift crosssample-table)")
        if cross is not None
        else None,
        figures={name.removesuffix(".png"): path for name, path in files.items() if name.endswith(".png")},
    )
    read = {files["accuracy"]: accuracy} | {files[n]: t for n, t in result.divergence.items()}
    check_one_pair(read | ({cross: result.crosssample} if cross is not None else {}))
    for path in result.figures.values():  # each there, and PNG data: a missing one dropped out of the page unsaid
        read_png(path, "a figure of `tokenshift figures`, a PNG")
    _distinct([(f"{n}.png", p) for n, p in result.figures.items()], "figure")
    return result


def _distinct(files: Sequence[tuple[str, Path]], what: str) -> None:
    """``InputError`` where two of ``files`` ((name, path)) are one file (a figure shown twice, under two titles)."""
    seen: dict[tuple[int, int], str] = {}
    for name, path in files:
        stat = Path(path).stat()
        if (key := (stat.st_dev, stat.st_ino)) in seen:
            raise InputError(f"{path}: given as {seen[key]} and as {name}; expected each {what} once")
        seen[key] = name


def build_report(
    results: Sequence[Mapping[str, Path]],
    *,
    html_out: Path,
    json_out: Path,
    kinds: Mapping[str, str] | None = None,
    overview: Sequence[Path] = (),
    config: Path | None = None,
    advantages: tuple[Path, Path] | None = None,
    training_shifts: Mapping[str, tuple[Path, Path]] | None = None,
    explorer: Path | None = None,
) -> dict:
    """``report.html`` and ``summary.json`` for the pairs and datasets whose files ``results`` gives (one
    mapping each, ``load_result``); ``kinds`` maps a pair to rlvr or sft, ``config`` is the config file the
    run used (quoted); ``advantages`` and ``training_shifts`` are the toy training analyses' tables and figures
    (``load_training``); ``explorer`` the token explorer page the report links."""
    kinds = dict(kinds or {})
    for p in overview:  # before any table is read: a wrong file is named at once
        read_png(p, "an overview figure, a PNG such as results/figures/sparsity.png")
    _distinct([(f"--overview {p}", Path(p)) for p in overview], "overview figure")
    config_text = read_text(config, "the config the run used, YAML") if config else ""
    if config:
        import yaml

        try:
            yaml.safe_load(config_text)
        except yaml.YAMLError as e:
            why = " ".join(str(e).split())[:200]
            raise InputError(f"{config}: not YAML ({why}): expected the config the run used") from None
        except RecursionError:  # the seventeenth pass: a traceback
            raise InputError(f"{config}: YAML nested too deep to read: expected the config the run used") from None
        except ValueError as e:  # a value PyYAML makes and Python cannot: an integer past 4,300 digits
            why = " ".join(str(e).split())[:200]
            raise InputError(
                f"{config}: a value Python cannot read ({why}): expected the config the run used"
            ) from None
    if explorer is not None:
        read_html(explorer, "the token explorer page (tokenshift explorer)")
    loaded: list[PairResult] = []
    seen: dict[tuple[str, str], Path] = {}
    for files in results:
        result = load_result(files)
        result.kind = kinds.get(result.pair, "rlvr")
        if (result.pair, result.dataset) in seen:  # the page and summary.json said it twice
            raise InputError(
                f"{files['accuracy']}: pair {result.pair!r} on dataset {result.dataset!r}, which "
                f"{seen[result.pair, result.dataset]} holds already; expected each pair and dataset's --result once"
            )
        seen[result.pair, result.dataset] = Path(files["accuracy"])
        loaded.append(result)
    pairs = sorted({r.pair for r in loaded})
    unknown = sorted(set(kinds) - set(pairs))
    if unknown:
        raise InputError(f"--kind {unknown[0]}=...: no such pair among the results ({pairs})")
    unknown = sorted(set(training_shifts or {}) - set(pairs))
    if unknown:  # its table and figure shown under a pair the report has not (eleventh hostile pass, H1)
        raise InputError(f"--training-shifts {unknown[0]}: no such pair among the results ({pairs})")
    return write_report(
        loaded,
        overview_figures={Path(p).stem: Path(p) for p in overview},
        config_text=config_text,
        html_out=html_out,
        json_out=json_out,
        training=load_training(advantages, training_shifts) if advantages or training_shifts else None,
        explorer=explorer,
    )
