"""README opens with exactly two set-up commands, CI runs the second one verbatim, and every snakemake command
README shows plans as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO, run, tokenshift_cmd


def readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_opens_with_two_one_line_commands():
    text = (REPO / "README.md").read_text()
    first_section = text.split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", first_section, flags=re.S)
    assert len(blocks) == 2
    assert all(len(b.strip().splitlines()) == 1 for b in blocks)
    assert "snakemake --cores all all" in blocks[0]
    assert "pytest" in blocks[1]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert readme_blocks()[1].strip() == ci[-1].strip()


def readme_snakemake_commands() -> list[str]:
    """Every `snakemake ...` command README and config/README.md show: each line of their shell blocks
    (each command of a `a && b` line) and each inline `snakemake ...` span, once, in order."""
    text = (REPO / "README.md").read_text() + (REPO / "config" / "README.md").read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()]
    commands = [c.strip() for line in lines for c in line.split("&&")]
    commands += re.findall(r"`(snakemake [^`]*)`", text)
    # a report needs a finished run, not a plan: test_e2e makes README's from the default study
    return list(dict.fromkeys(c for c in commands if c.startswith("snakemake ") and "--report" not in c))


@pytest.fixture(scope="module")
def readme_checkout(tmp_path_factory):
    """A copy of what the commands read from the repository root (Snakefile, workflow, config, profiles),
    and an XDG config home with the slurm profile installed as README's cluster section does."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copy(REPO / "Snakefile", root)
    for folder in ("workflow", "config", "profiles"):
        shutil.copytree(REPO / folder, root / folder)
    xdg = root / "xdg"
    r = run(
        tokenshift_cmd() + ["profile", "install", "slurm", "--partition", "cpu", "--gpu-partition", "gpu"],
        env={"XDG_CONFIG_HOME": str(xdg)},
    )
    assert r.returncode == 0, r.stderr
    return root, {
        "XDG_CONFIG_HOME": str(xdg),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
    }


def test_readme_shows_its_snakemake_commands():
    commands = readme_snakemake_commands()
    assert "snakemake --cores all all" in commands
    assert any("config/paper.yaml" in c for c in commands) and any("config/advantages.yaml" in c for c in commands)


@pytest.mark.parametrize("command", readme_snakemake_commands())
def test_every_snakemake_command_in_readme_plans_as_written(readme_checkout, command):
    # issue 24.11: `--configfile config/paper.yaml all` read `all` as a second config file
    root, env = readme_checkout
    args = shlex.split(command)[1:]
    r = run([sys.executable, "-m", "snakemake", "-n", *args], cwd=root, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "This was a dry-run" in r.stdout + r.stderr
