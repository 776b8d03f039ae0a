"""Figures of the paper, one function per figure (``tokenshift.plots.figures.FIGURES``)."""

from tokenshift.plots.figures import FIGURES

__all__ = ["FIGURES"]
