"""One look for every figure: a colour-blind-safe palette with fixed meanings, and one way to save.

Colours are Okabe and Ito's (2008) palette. Each thing keeps its colour in every figure: the base
model (and its rollouts) is blue, the RL model vermillion; each cross-sampling policy has its own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node or in CI

import matplotlib.pyplot as plt

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


def save(fig, stem: Path) -> list[Path]:
    """Write ``<stem>.png`` (200 dpi) and ``<stem>.pdf``; return both paths."""
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
