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


def _docstring_lines(path: Path) -> set[int]:
    import ast

    lines = set()
    for node in ast.walk(ast.parse(path.read_text())):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            lines |= set(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def test_the_results_layout_has_one_home():
    """Issue 27.1: every path a rule declares, and every file name the stages that read a results directory
    look for, is tokenshift.layout's: no rule or library module spells one again (comments and docstrings
    aside). A stage that writes tables writes ``<table>.parquet`` in the directory its rule gives it, beside
    the outputs the rule declares: Snakemake fails the job where one is not there."""
    import re

    spelled = re.compile(
        r"""["'](results|resources)/|/ ["'](divergence|figures|scores|rollouts)["']|"""
        r"""["'](accuracy|crosssample|curve|comparison)\.parquet["']"""
    )
    files = [*sorted((REPO / "workflow" / "rules").glob("*.smk")), REPO / "Snakefile"]
    files += [p for p in sorted((REPO / "src" / "tokenshift").rglob("*.py")) if p.name != "layout.py"]
    found = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in files
        for skip in [_docstring_lines(p) if p.suffix == ".py" else set()]
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if i not in skip and spelled.search(line.split("#", 1)[0])
    ]
    assert not found, "\n".join(found)


def test_a_job_of_the_transformers_backend_loads_its_models_one_way():
    """Issue 27.2: the rollout, scoring and cross-sampling stages load through ``loading.load_job_models``
    (devices, then the batch planned for them, then the weights); no module plans devices or batches
    beside it, where a stage could load its weights before planning the batch from the free memory."""
    import ast

    found = []
    for p in sorted((REPO / "src" / "tokenshift").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef) and p.name == "loading.py" and node.name == "load_job_models":
                continue
            if isinstance(node, ast.FunctionDef):
                calls = [c for c in ast.walk(node) if isinstance(c, ast.Call)]
                names = {getattr(c.func, "id", getattr(c.func, "attr", None)) for c in calls}
                if names & {"job_devices", "job_batch"}:
                    found.append(f"{p.relative_to(REPO)}: {node.name}")
    assert not found, found
    for stage in ("rollout.py", "scoring.py", "crosssample.py"):
        assert "load_job_models(" in (REPO / "src" / "tokenshift" / stage).read_text(), stage


def test_every_rule_that_reads_both_models_of_a_pair_records_which_is_which():
    """Seventh hostile pass (L1): Snakemake compares a job's inputs as a set of files, so a rule taking both
    manifests (``**PAIR_MANIFESTS``) must record the roles (``roles=pair_roles``), or swapping a pair's base and
    rl models in the config re-plans none of its jobs."""
    import re

    text = "\n".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    rules = re.split(r"^(?=(?:rule|use rule) )", text, flags=re.M)
    both = {r.split(":", 1)[0]: r for r in rules if "**PAIR_MANIFESTS" in r}
    assert len(both) >= 5, sorted(both)  # check_pair, toy_check, score, crosssample, training_shifts
    assert [name for name, rule in both.items() if "roles=pair_roles" not in rule] == []
