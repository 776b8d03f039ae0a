"""Formatting and lint are checked here, so CI keeps them: ruff for Python, snakefmt and
`snakemake --lint` for the workflow (the snakemake-workflows catalog's own requirements)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO, run

PYTHON = ["src", "tests", "benchmarks"]


def tool(name: str) -> str:
    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(exe).exists():
        pytest.fail(f"{name} is not installed: `pip install -e '.[test]'` installs it")
    return exe


def test_ruff_check_is_clean():
    r = run([tool("ruff"), "check", *PYTHON], cwd=REPO)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_ruff_format_is_clean():
    r = run([tool("ruff"), "format", "--check", *PYTHON], cwd=REPO)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_snakefmt_is_clean():
    r = run([tool("snakefmt"), "--check", "Snakefile", "workflow"], cwd=REPO)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


def test_snakemake_lint_is_clean(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    r = run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--lint"],
        env={"PATH": str(Path(sys.executable).parent) + ":" + __import__("os").environ["PATH"]},
    )
    out = r.stdout + r.stderr
    assert "Lints for" not in out and r.returncode == 0, out[-4000:]
