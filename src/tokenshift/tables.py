"""Result tables built from per-sample parquet: tidy, one row per observation.

``accuracy_table`` gives, per rollout table (one model role on one dataset):

- ``avg@n``: mean over problems of the share of a problem's n samples graded correct, with a
  95% percentile-bootstrap CI over problems (``scipy.stats.bootstrap``);
- ``pass@k`` for each requested k <= n, the unbiased estimator of Chen et al. (2021, Codex):
  1 - C(n - c, k) / C(n, k) per problem, averaged (its CI likewise bootstrapped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from math import comb

import numpy as np
import polars as pl

from tokenshift.stats import mean_ci


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` correct of ``n`` samples."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def accuracy_table(rollouts: Mapping[str, pl.DataFrame], *, ks: Iterable[int] = (1,), seed: int = 0,
                   labels: Mapping[str, str] | None = None) -> pl.DataFrame:
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
            if k <= n:
                metrics[f"pass@{k}"] = np.array([pass_at_k(n, int(c), k) for c in cs])
        for metric, values in metrics.items():
            mean, lo, hi = mean_ci(values, seed=seed)
            rows.append({**(labels or {}), "role": role, "metric": metric, "value": mean, "ci_low": lo, "ci_high": hi,
                         "n_problems": len(cs), "samples_per_problem": n,
                         "dataset_version": df["dataset_version"][0]})
    return pl.DataFrame(rows)
