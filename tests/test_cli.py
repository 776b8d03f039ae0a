"""The console script: every stage has --help, bad input exits 2 with one clear line."""

from __future__ import annotations

import pytest
from conftest import run, tokenshift_cmd

HELPS = [[], ["models"], ["models", "fetch"], ["models", "toy-base"], ["models", "toy-rl"], ["models", "check-pair"], ["score"], ["divergence"],
         ["toy-check"], ["rollout"], ["accuracy"], ["crosssample"], ["crosssample-table"]]


@pytest.mark.parametrize("sub", HELPS, ids=lambda s: " ".join(s) or "top")
def test_help(sub):
    r = run(tokenshift_cmd() + sub + ["--help"])
    assert r.returncode == 0, r.stderr
    assert "usage: tokenshift" in r.stdout


def test_top_level_help_lists_the_stages():
    out = run(tokenshift_cmd() + ["--help"]).stdout
    for stage in ("models", "toy-check", "rollout", "accuracy"):
        assert stage in out


def test_hub_without_revision_is_a_usage_error(tmp_path):
    r = run(tokenshift_cmd() + ["models", "fetch", "m", "--hub", "Qwen/Qwen2.5-0.5B", "--out", str(tmp_path / "m")])
    assert r.returncode == 2 and "--revision" in r.stderr


def test_missing_local_checkpoint_exits_2_naming_it(tmp_path):
    r = run(tokenshift_cmd() + ["models", "fetch", "m", "--path", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    assert r.returncode == 2
    assert "nope" in r.stderr and "Traceback" not in r.stderr


def test_bad_toy_settings_exit_2_naming_the_key(tmp_path):
    r = run(tokenshift_cmd() + ["models", "toy-base", "t", "--settings", '{"hidden": 3}', "--out", str(tmp_path / "t")])
    assert r.returncode == 2 and "hidden" in r.stderr and "Traceback" not in r.stderr
