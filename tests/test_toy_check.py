"""The decision-point table behind the ground-truth claim of docs/results.md (``tokenshift.toy.check``), on inputs
small enough that every precision, recall and lift is counted by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tokenshift.toy.check import JS_THRESHOLDS, TOP_SHARES, decision_point_table

# two responses; decision points are positions within each response
JS = [np.array([0.5, 0.0, 0.2, 0.0005, 0.05]), np.array([0.0, 0.3, 0.002, 0.0, 0.02])]
POINTS = [[0, 2], [3, 4]]
# by JS, highest first (D: a decision point): 0.5 D, 0.3, 0.2 D, 0.05, 0.02 D, 0.002, 0.0005, 0, 0, 0 D
# 10 positions, 4 decision points: base rate 0.4
EXPECTED = {
    # selection: (n_selected, precision, recall)
    ("top_share", 0.01): (1, 1.0, 1 / 4),  # at least one position: the top one
    ("top_share", 0.05): (1, 1.0, 1 / 4),
    ("top_share", 0.10): (1, 1.0, 1 / 4),
    ("top_share", 0.20): (2, 1 / 2, 1 / 4),  # 0.5 D, 0.3
    ("js_above", 1e-3): (6, 3 / 6, 3 / 4),  # down to 0.002
    ("js_above", 1e-2): (5, 3 / 5, 3 / 4),  # down to 0.02
    ("js_above", 1e-1): (3, 2 / 3, 2 / 4),  # 0.5 D, 0.3, 0.2 D
}


def test_precision_recall_and_lift_of_every_selection_are_the_hand_counted_ones():
    table = decision_point_table(JS, POINTS)
    assert {(s, v) for s, v in table.select("selection", "value").iter_rows()} == {("all", 1.0)} | {
        *[("top_share", s) for s in TOP_SHARES],
        *[("js_above", t) for t in JS_THRESHOLDS],
    }
    rows = {(r["selection"], r["value"]): r for r in table.iter_rows(named=True)}
    assert set(EXPECTED) == set(rows) - {("all", 1.0)}
    for key, (k, precision, recall) in EXPECTED.items():
        r = rows[key]
        assert (r["n_positions"], r["n_selected"], r["base_rate"]) == (10, k, pytest.approx(0.4)), key
        assert (r["precision"], r["recall"]) == pytest.approx((precision, recall)), key
        assert r["lift"] == pytest.approx(precision / 0.4), key
    everything = rows[("all", 1.0)]
    assert (everything["n_selected"], everything["precision"], everything["recall"]) == (10, pytest.approx(0.4), 1.0)
    assert everything["share_js_below_1e-3"] == pytest.approx(4 / 10)  # 0.0005 and the three zeros
    on_points = 0.5 + 0.2 + 0.02 + 0.0
    assert everything["js_share_on_decision_points"] == pytest.approx(
        on_points / (on_points + 0.0005 + 0.05 + 0.3 + 0.002)
    )


def test_a_selection_without_decision_points_has_zero_precision_and_a_random_one_lift_one():
    """JS that falls only off the decision points gives precision 0 at every threshold it crosses;
    JS equal everywhere selects at the base rate (lift 1 above a threshold it all crosses)."""
    off = decision_point_table([np.array([0.0, 0.4, 0.0, 0.3])], [[0, 2]])
    above = off.row(by_predicate=(pl.col("selection") == "js_above") & (pl.col("value") == 1e-1), named=True)
    assert (above["n_selected"], above["precision"], above["recall"], above["lift"]) == (2, 0.0, 0.0, 0.0)
    flat = decision_point_table([np.full(4, 0.5), np.full(6, 0.5)], [[1], [0, 5]])
    for r in flat.filter(pl.col("selection") == "js_above").iter_rows(named=True):
        assert (r["n_selected"], r["precision"], r["recall"], r["lift"]) == (10, 0.3, 1.0, pytest.approx(1.0))
