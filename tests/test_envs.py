"""The conda environments pin exactly what pyproject.toml pins (no conda channel is reachable here)."""

from __future__ import annotations

import tomllib

import pytest
import yaml
from conftest import REPO


def pyproject_deps() -> set[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(data["project"]["dependencies"]), data["project"]["optional-dependencies"]


def env_pip_deps(name: str) -> set[str]:
    env = yaml.safe_load((REPO / "envs" / name).read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e .." in pip, f"envs/{name} must install tokenshift itself"
    return {d for d in pip if not d.startswith("-e")}


@pytest.mark.parametrize(("env", "extras"), [("cpu.yaml", []), ("gpu.yaml", ["vllm"])])
def test_env_pins_match_pyproject(env, extras):
    deps, optional = pyproject_deps()
    want = deps | {d for e in extras for d in optional[e]}
    assert env_pip_deps(env) == want


def test_the_workflow_catalogs_file_claims_what_the_workflow_does():
    """.snakemake-workflow-catalog.yml: conda (every rule that runs a command names an env of envs/) and
    Snakemake's report (a report page, and outputs marked for it), as the catalog reads them."""
    import re

    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert catalog["software-stack-deployment"] == {"conda": True, "singularity": False, "singularity+conda": False}
    rules = "\n".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    shells = len(re.findall(r"^    shell:", rules, re.M))
    envs = re.findall(r'^    conda:\n        "\.\./\.\./(envs/\w+\.yaml)"', rules, re.M)
    assert len(envs) == shells and all((REPO / e).is_file() for e in envs)
    assert catalog["report"] is True and re.search(r"^report: ", (REPO / "Snakefile").read_text(), re.M)
    assert re.search(r"\breport\(", rules)
