"""README opens with exactly two set-up commands, CI runs the second one verbatim, and every snakemake command
README, docs/ and config/README.md show plans as written."""

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


def documentation() -> list[Path]:
    """README, the pages under docs/ it links to, and config/README.md."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "config" / "README.md"]


def readme_snakemake_commands() -> list[str]:
    """Every `snakemake ...` command README, docs/*.md and config/README.md show: each line of their shell
    blocks (each command of a `a && b` line) and each inline `snakemake ...` span, once, in order."""
    text = "\n".join(page.read_text() for page in documentation())
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()]
    commands = [c.strip() for line in lines for c in line.split("&&")]
    commands += re.findall(r"`(snakemake [^`]*)`", text)
    # a report needs a finished run, not a plan: test_e2e makes docs/targets.md's from the default study
    return list(dict.fromkeys(c for c in commands if c.startswith("snakemake ") and "--report" not in c))


@pytest.fixture(scope="module")
def readme_checkout(tmp_path_factory):
    """A copy of what the commands read from the repository root (Snakefile, workflow, config, profiles),
    and an XDG config home with the slurm profile installed as docs/cluster.md does."""
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
    # `--unlock` plans nothing: it clears a lock (docs/targets.md, against deleting .snakemake/)
    assert ("Unlocked working directory" if "--unlock" in args else "This was a dry-run") in r.stdout + r.stderr


def test_readme_is_a_front_page():
    # the rest lives under docs/ (issue 27.5)
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", documentation(), ids=lambda p: str(p.relative_to(REPO)))
def test_documentation_links_resolve(page):
    """Every relative link of README, docs/*.md and config/README.md names a file or folder that exists and,
    where it names a heading (`page.md#anchor`), a heading of that page."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.relative_to(REPO)} links to {target}, which does not exist"
        if anchor:
            assert anchor in heading_anchors(resolved), f"{page.relative_to(REPO)} links to {target}: no such heading"
