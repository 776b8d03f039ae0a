"""tokenshift: token-level analysis of how RL fine-tuning shifts a language model.

Reproduces "Sparse but Critical: A Token-Level Analysis of Distributional Shifts in RLVR
Fine-Tuning of LLMs" (Meng et al., ICLR 2026). The Snakemake workflow at the repository root
calls this library one stage at a time; everything here runs without Snakemake.
"""

__version__ = "0.1.0"
