"""The package as `pip install tokenshift` gives it, not as the editable checkout does: a wheel built from the
repository's files, installed into a folder of its own and run from outside the checkout (issue 27.4). What the
package reads besides its code (the config schema, the SLURM profile template, the pages' templates) must be in
that wheel; a path reaching out of the package into the checkout would pass every other test and fail here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

DATA = ("schemas/config.schema.yaml", "profiles/slurm/config.yaml", "profiles/slurm/partitions.yaml")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder holding tokenshift installed from its wheel (no dependencies: the test venv's serve)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # the build writes build/ and *.egg-info beside pyproject: not into the checkout
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp / "dist"), str(source)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("tokenshift-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    pages = ("templates/explorer.html", "templates/report.html.j2")
    assert {f"tokenshift/{f}" for f in (*DATA, *pages)} <= names, sorted(names)
    site = tmp / "site"
    install = subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], capture_output=True)
    assert install.returncode == 0, install.stderr[-2000:]
    return site


def run_outside(site: Path, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """``argv`` run from an empty folder with the wheel's tokenshift first on the path."""
    env = os.environ | {"PYTHONPATH": str(site), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    return subprocess.run(argv, cwd=tmp_path / "elsewhere", env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_runs_outside_the_checkout_with_its_schema_and_profile_template(installed, tmp_path):
    where = run_outside(installed, tmp_path, sys.executable, "-c", "import tokenshift.config as c; print(c.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout + where.stderr
    # the console script and `python -m tokenshift`, as a user types them
    script = run_outside(installed, tmp_path, str(installed / "bin" / "tokenshift"), "--help")
    assert script.returncode == 0 and "profile" in script.stdout, script.stderr[-2000:]
    module = run_outside(installed, tmp_path, sys.executable, "-m", "tokenshift", "--help")
    assert module.returncode == 0 and module.stdout == script.stdout, module.stderr[-2000:]
    # the profile template and the schema are read from the installed package
    site = ("--partition", "cpu", "--gpu-partition", "gpu", "--no-accounting")
    out = tmp_path / "profile"
    written = run_outside(
        installed, tmp_path, sys.executable, "-m", "tokenshift", "profile", "install", "slurm", *site, "--dir", str(out)
    )
    assert written.returncode == 0, written.stderr[-2000:]
    from tokenshift.slurm_profile import SiteSettings, render_profile

    expected = render_profile(SiteSettings(partition="cpu", gpu_partition="gpu", accounting=False))
    assert {p.name: p.read_text() for p in out.iterdir()} == expected
    check = "import sys, yaml; from tokenshift.config import SCHEMA_PATH as s, validate_schema as v; "
    check += "v(yaml.safe_load(open(sys.argv[1]))); print(s)"
    schema = run_outside(installed, tmp_path, sys.executable, "-c", check, str(REPO / "config" / "config.yaml"))
    assert schema.returncode == 0 and Path(schema.stdout.strip()).is_relative_to(installed), schema.stderr[-2000:]
    # the report's Jinja template is read from the installed package
    page = "from tokenshift.report import _template; print(_template().filename)"
    template = run_outside(installed, tmp_path, sys.executable, "-c", page)
    assert template.returncode == 0, template.stderr[-2000:]
    assert Path(template.stdout.strip()).is_relative_to(installed / "tokenshift" / "templates"), template.stdout
    for data in DATA:  # the same bytes as the checkout's, which the workflow's links reach
        assert (installed / "tokenshift" / data).read_bytes() == (REPO / "src" / "tokenshift" / data).read_bytes()
    assert (REPO / "workflow" / "schemas" / "config.schema.yaml").resolve() == REPO / "src/tokenshift" / DATA[0]
    assert (REPO / "profiles" / "slurm").resolve() == REPO / "src/tokenshift/profiles/slurm"


@pytest.mark.parametrize("env", ["cpu.yaml", "gpu.yaml"])
def test_a_conda_envs_pip_finds_this_version_where_the_docs_point_it_and_its_jobs_run(installed, env, tmp_path):
    # issue 28: envs/*.yaml install tokenshift by version; until it is on PyPI, docs/cluster.md points pip at a
    # wheel of the checkout (PIP_FIND_LINKS), as conda's pip step does with the env's pip list
    import yaml

    spec = yaml.safe_load((REPO / "envs" / env).read_text())
    wanted = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "download", "--no-deps"]
    found = subprocess.run(
        [*pip, "--no-index", "--dest", str(tmp_path / "got"), *wanted],
        env=os.environ | {"PIP_FIND_LINKS": str(installed.parent / "dist")},
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stdout[-2000:] + found.stderr[-2000:]
    assert [p.name for p in (tmp_path / "got").iterdir()] == [next((installed.parent / "dist").glob("*.whl")).name]
    # a job in that environment runs the package the workflow planned with (check_job_package passes)
    from tokenshift.codehash import running_package

    key = "from tokenshift.codehash import running_package; print(running_package())"
    assert run_outside(installed, tmp_path, sys.executable, "-c", key).stdout.strip() == running_package()
