"""The code each stage's hash covers (tokenshift.codehash): the files its command imports, and no other."""

from __future__ import annotations

import pytest

from tokenshift.codehash import ROOT, stage_code, stage_files


def files(*words: str) -> set[str]:
    return {f.relative_to(ROOT).as_posix() for f in stage_files(*words)}


def test_a_stage_covers_the_modules_its_command_imports():
    assert {"cli/rollout.py", "rollout.py", "grading.py", "generation.py", "models.py"} <= files("rollout")
    assert {"cli/crosssample.py", "crosssample.py", "grading.py"} <= files("crosssample")
    assert {"cli/rollout.py", "tables.py", "stats.py"} <= files("accuracy")
    assert {"plots/style.py", "plots/figures.py"} <= files("figures")
    assert "toy/task.py" in files("dataset")  # the toy task's problems are drawn there


def test_a_stage_leaves_out_what_its_command_does_not_run():
    # one CLI module serves two stages: each covers its own handler's imports only
    assert "tables.py" not in files("rollout") and "rollout.py" not in files("accuracy")
    assert "grading.py" not in files("models", "fetch") and "grading.py" not in files("dataset")
    assert not {f for f in files("rollout") if f.startswith("plots/")}
    assert "__init__.py" not in files("rollout") and "cli/__init__.py" not in files("rollout")


def test_stages_have_hashes_of_their_own():
    assert stage_code("rollout") != stage_code("accuracy") != stage_code("models", "fetch")
    with pytest.raises(ValueError, match="no such subcommand"):
        stage_code("rollouts")
