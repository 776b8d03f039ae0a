"""The console script: every stage has --help, bad input exits 2 with one clear line."""

from __future__ import annotations

import pytest
from conftest import run, tokenshift_cmd

HELPS = [
    [],
    ["models"],
    ["models", "fetch"],
    ["models", "toy-base"],
    ["models", "toy-rl"],
    ["models", "check-pair"],
    ["dataset"],
    ["score"],
    ["divergence"],
    ["toy-check"],
    ["rollout"],
    ["accuracy"],
    ["crosssample"],
    ["crosssample-table"],
    ["figures"],
    ["figure-overview"],
    ["report"],
]


@pytest.mark.parametrize("sub", HELPS, ids=lambda s: " ".join(s) or "top")
def test_help(sub):
    r = run(tokenshift_cmd() + sub + ["--help"])
    assert r.returncode == 0, r.stderr
    assert "usage: tokenshift" in r.stdout


def test_top_level_help_lists_the_stages():
    out = run(tokenshift_cmd() + ["--help"]).stdout
    for stage in ("models", "toy-check", "dataset", "rollout", "accuracy", "score", "crosssample", "report"):
        assert stage in out


def test_hub_without_revision_is_a_usage_error(tmp_path):
    r = run(tokenshift_cmd() + ["models", "fetch", "m", "--hub", "Qwen/Qwen2.5-0.5B", "--out", str(tmp_path / "m")])
    assert r.returncode == 2 and "--revision" in r.stderr


def test_missing_local_checkpoint_exits_2_naming_it(tmp_path):
    r = run(tokenshift_cmd() + ["models", "fetch", "m", "--path", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    assert r.returncode == 2
    assert "nope" in r.stderr and "Traceback" not in r.stderr


def test_unknown_toy_setting_exits_2_naming_it(tmp_path):
    r = run(tokenshift_cmd() + ["models", "toy-base", "t", "--hidden", "3", "--out", str(tmp_path / "t")])
    assert r.returncode == 2 and "--hidden" in r.stderr and "Traceback" not in r.stderr
