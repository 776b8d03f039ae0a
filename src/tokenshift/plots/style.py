"""One look for every figure: a colour-blind-safe palette with fixed meanings, and one way to save.

Colours are Okabe and Ito's (2008) palette. Each thing keeps its colour in every figure: the base
model (and its rollouts) is blue, the RL model vermillion; each cross-sampling policy has its own.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI

import matplotlib.pyplot as plt
from matplotlib import ticker

# text is text: a dataset's question, gold answer or token holding `$` (a MATH problem's `$(r,\theta)$`) is drawn
# as written, not parsed as mathtext, which raised on half of such strings and set the rest in italics
matplotlib.rcParams["text.parse_math"] = False

# a PDF's fonts are subset by fontTools, which logs hundreds of INFO lines a figure into the job's log
logging.getLogger("fontTools").setLevel(logging.WARNING)

OKABE_ITO = {
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "green": "#009E73",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "purple": "#CC79A7",
    "yellow": "#F0E442",
    "grey": "#7F7F7F",
    "black": "#000000",
}
ROLE = {"base": OKABE_ITO["blue"], "rl": OKABE_ITO["vermillion"]}
"""The base model and its rollouts; the RL model and its rollouts."""
POLICY = {
    "js": OKABE_ITO["green"],
    "entropy": OKABE_ITO["orange"],
    "argmax": OKABE_ITO["purple"],
    "random": OKABE_ITO["grey"],
    "logprob": OKABE_ITO["sky"],
    "dlogp": OKABE_ITO["black"],
    "rank": OKABE_ITO["yellow"],
    "kl": OKABE_ITO["blue"],
    "kl_r": OKABE_ITO["vermillion"],
    "entropy_other": "#8C564B",
}
"""A colour per switching policy (a test checks every registered policy has one)."""
DIRECTION_STYLE = {"forward": "-", "reverse": "--"}
KIND_STYLE = {"rlvr": "-", "sft": ":"}
SERIES = [OKABE_ITO[c] for c in ("blue", "vermillion", "green", "orange", "sky", "purple", "black")]
ROLE_LABEL = {"base": "base model", "rl": "RL model"}
SOURCE_LABEL = {"base": "base model's responses", "rl": "RL model's responses"}
DPI = 200


def apply() -> None:
    """Matplotlib defaults shared by every figure."""
    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": DPI,
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "legend.frameon": False,
            "savefig.bbox": "tight",
            "pdf.fonttype": 42,
        }
    )


_SUPERSCRIPT = str.maketrans("0123456789-\N{MINUS SIGN}.", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁻·")


def plain_text(label: str) -> str:
    """A tick label a log axis's formatter writes as mathtext (``$\\mathdefault{2\\times10^{-3}}$``) as plain
    text (``2×10⁻³``): text is not parsed as mathtext here (``text.parse_math``), so it was drawn as written."""
    m = re.fullmatch(r"\$\\mathdefault\{(.*)\}\$", label)
    if m is None:
        return label
    body = m[1].replace("\\times", "×").replace("-", "\N{MINUS SIGN}")
    return re.sub(r"\^\{([^}]*)\}", lambda e: e[1].translate(_SUPERSCRIPT), body)


class _PlainTicks(ticker.Formatter):
    """A mathtext tick formatter (a log or symlog axis's, a log colour bar's) whose labels are plain text."""

    def __init__(self, inner: ticker.Formatter):
        self.inner = inner

    def set_axis(self, axis):
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def set_locs(self, locs):
        self.inner.set_locs(locs)

    def __call__(self, x, pos=None):
        return plain_text(self.inner(x, pos))

    def format_data(self, value):
        return plain_text(self.inner.format_data(value))

    def format_data_short(self, value):
        return plain_text(self.inner.format_data_short(value))


def _plain_ticks(fig) -> None:
    """Give every axis of ``fig`` that labels its ticks in mathtext labels in plain text."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for get, set_ in (
                (axis.get_major_formatter, axis.set_major_formatter),
                (axis.get_minor_formatter, axis.set_minor_formatter),
            ):
                if isinstance(get(), ticker.LogFormatterMathtext):
                    set_(_PlainTicks(get()))


def save(fig, stem: Path) -> list[Path]:
    """Write ``<stem>.png`` (200 dpi) and ``<stem>.pdf``; return both paths."""
    _plain_ticks(fig)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        tmp = p.with_name(f".{p.name}.tmp{p.suffix}")
        # no creation time in the PDF: a figure drawn again from the same tables is the same bytes
        fig.savefig(tmp, dpi=DPI, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
        tmp.replace(p)
    plt.close(fig)
    return paths


def pct(x: float) -> str:
    """A share as a percentage that never rounds to 0% or 100% unless it is exactly that."""
    if x != x:
        return "n/a"
    for digits in (1, 2):
        text = f"{100 * x:.{digits}f}"
        if (float(text) not in (0.0, 100.0)) or x in (0.0, 1.0):
            return f"{text}%"
    return "< 0.01%" if x < 0.5 else "> 99.99%"


ADVANTAGE = {
    "none": OKABE_ITO["black"],
    "js": OKABE_ITO["green"],
    "kl": OKABE_ITO["sky"],
    "topq": OKABE_ITO["orange"],
    "mix": OKABE_ITO["purple"],
}
"""The advantage weightings of the GRPO experiment (``none``, plain GRPO, is black)."""
