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
