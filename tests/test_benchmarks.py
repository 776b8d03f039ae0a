"""The benchmarks' own measuring helpers (the benchmarks run on demand, not here; see benchmarks/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_peak_memory_is_measured_from_the_reset_on():
    bench = _module("bench_scoring")
    if reason := bench.cpu_peak_unmeasurable():
        pytest.skip(reason)
    big = np.ones(300 * 2**20 // 8)  # a peak before the reset, as the models' build makes one
    del big
    base = bench.reset_cpu_peak()
    assert bench.cpu_peak() - base < 50 * 2**20  # the earlier peak is forgotten
    block = np.ones(200 * 2**20 // 8)  # 200 MB, every page touched
    assert bench.cpu_peak() - base >= 190 * 2**20
    del block
