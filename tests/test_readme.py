"""README opens with exactly two set-up commands, and CI runs the second one verbatim."""

from __future__ import annotations

import re

from conftest import REPO


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
