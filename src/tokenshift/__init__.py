"""tokenshift: token-level analysis of how RL fine-tuning shifts a language model.

Reproduces "Sparse but Critical: A Token-Level Analysis of Distributional Shifts in RLVR
Fine-Tuning of LLMs" (Meng et al., ICLR 2026). The Snakemake workflow at the repository root
calls this library one stage at a time; everything here runs without Snakemake. From a notebook:
``tokenshift.compare`` (two checkpoints on a few texts) and ``tokenshift.load_results`` (a study's
tables), in ``tokenshift.api``.
"""

__version__ = "0.1.0"
__all__ = ["compare", "load_results"]


def __getattr__(name: str):
    # imported on first use: the workflow imports this package while it plans, without torch or polars
    if name in __all__:
        from tokenshift import api

        return getattr(api, name)
    raise AttributeError(f"module 'tokenshift' has no attribute {name!r}")
