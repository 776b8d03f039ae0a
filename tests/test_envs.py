"""The conda environments install tokenshift by this checkout's version (no conda channel is reachable here: pip's
part is checked in tests/test_install.py, against the wheel built from the checkout)."""

from __future__ import annotations

import tomllib

import pytest
import yaml
from conftest import REPO


def pip_requirements(name: str) -> list[str]:
    env = yaml.safe_load((REPO / "envs" / name).read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


@pytest.mark.parametrize(("env", "extras"), [("cpu.yaml", ""), ("gpu.yaml", "[vllm]")])
def test_an_env_installs_tokenshift_by_this_checkouts_version(env, extras):
    # issue 28: `-e ..` resolved against the copy Snakemake makes of an env file (.snakemake/conda/), and is no
    # package of a workflow used as a module; the version carries its dependencies as pyproject.toml pins them
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert pip_requirements(env) == [f"tokenshift{extras}=={project['version']}"]
    assert extras == "" or extras.strip("[]") in project["optional-dependencies"]


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
