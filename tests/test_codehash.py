"""The code each stage's hash covers (tokenshift.codehash): the functions, classes and settings its command
runs, and no other; checked against what every stage of a small study really runs, under a tracer."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, save_checkpoint
from helpers import patched_source, snakemake, tiny_problems

from tokenshift.codehash import IMPORT_TIME, ROOT, SKIPPED, stage_code, stage_files, stage_units, unit_at, unit_names


def names(file: str, *words: str) -> set[str]:
    """The units of ``file`` (relative to the package) that stage ``words`` runs."""
    return {n for f, n in stage_units(*words).units if f == file}


def test_a_stage_covers_the_code_its_command_runs():
    assert {"cli/rollout.py", "rollout.py", "grading.py", "generation.py"} <= set(stage_files("rollout"))
    assert {"checkpoints.py", "tokenizer.py", "loading.py"} <= set(stage_files("rollout"))
    assert {"cli/crosssample.py", "crosssample.py", "decoding.py", "grading.py"} <= set(stage_files("crosssample"))
    assert {"cli/rollout.py", "tables.py", "stats.py"} <= set(stage_files("accuracy"))
    assert {"plots/style.py", "plots/figures.py"} <= set(stage_files("figures"))
    assert "toy/task.py" in stage_files("dataset")  # the toy task's problems are drawn there
    assert "templates/explorer.html" in stage_files("explorer")  # a data file the page is built from
    assert "templates/report.html.j2" in stage_files("report")  # the report page's Jinja template
    # the rollout decodes with the cross-sampling decoder, alone: that decoder is its code
    assert {"decode_alone", "_decode_batch", "sample_from_logits"} <= names("decoding.py", "rollout")
    assert {"cross_sample", "_decode_batch"} <= names("decoding.py", "crosssample")
    assert {"Grader", "grade_one"} <= names("grading.py", "rollout") & names("grading.py", "crosssample")
    assert "Grader" in names("grading.py", "models", "toy-rl")  # GRPO's reward


def test_a_stage_leaves_out_what_its_command_does_not_run():
    # one CLI module serves two stages: each covers its own handler's code only
    assert "tables.py" not in stage_files("rollout") and "rollout.py" not in stage_files("accuracy")
    assert "grading.py" not in stage_files("models", "fetch") and "grading.py" not in stage_files("dataset")
    assert not {f for f in stage_files("rollout") if f.startswith("plots/")}
    # the version string, which the pages quote, is no stage's code
    assert ("__init__.py", "__version__") not in stage_units("rollout").units
    assert ("__init__.py", "__version__") not in stage_units("report").units
    # a module a stage imports is not all its code: the rollout runs the decoder, not the cross-sampling
    # stage, its policies or the scores' statistics; nor the pair decoder
    assert not {"run_crosssample", "CrossSampleBackend"} & names("crosssample.py", "rollout")
    assert "cross_sample" not in names("decoding.py", "rollout")
    assert "token_stats" not in names("divergence.py", "rollout")
    # the toy base model is pretrained: no grader (the RL build's reward), no GRPO
    assert "grading.py" not in stage_files("models", "toy-base")
    assert "grpo" not in names("train.py", "models", "toy-base")
    assert "grading.py" not in stage_files("score") and "grading.py" not in stage_files("gather")


def test_stages_have_hashes_of_their_own():
    assert stage_code("rollout") != stage_code("accuracy") != stage_code("models", "fetch")
    with pytest.raises(ValueError, match="no such subcommand"):
        stage_code("rollouts")


def stage_codes(src: Path, stages: list[tuple[str, ...]], cache: Path | None = None) -> dict[tuple[str, ...], str]:
    """The hashes of ``stages`` as the package at ``src`` takes them, in a process of its own (remembered
    in ``cache`` where given, else in the session's)."""
    code = f"from tokenshift.codehash import stage_code; print('\\n'.join(stage_code(*w) for w in {stages!r}))"
    env = {**os.environ, "PYTHONPATH": str(src), **({"TOKENSHIFT_CACHE": str(cache)} if cache else {})}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(zip(stages, out.stdout.split()))


STAGES = [("rollout",), ("crosssample",), ("score",), ("accuracy",), ("models", "toy-base"), ("models", "toy-rl")]


@pytest.mark.parametrize(
    ("module", "function", "changed"),
    [
        ("crosssample.py", "run_crosssample", {("crosssample",)}),
        ("decoding.py", "_decode_batch", {("rollout",), ("crosssample",)}),  # the decoder both run
        # the scores' statistics, which GRPO's divergence-weighted advantages share (tokenshift.advantages)
        ("divergence.py", "token_stats_unchecked", {("score",), ("models", "toy-rl")}),
        ("grading.py", "grade_one", {("rollout",), ("crosssample",), ("models", "toy-rl")}),
        ("train.py", "grpo", {("models", "toy-rl")}),
        ("tables.py", "accuracy_table", {("accuracy",)}),
        ("crosssample.py", None, set()),  # a setting nothing reads
        # the dispatcher every command runs first (the ninth hostile pass's F21: it was hashed nowhere)
        ("cli/__init__.py", "main", set(STAGES)),
        ("cli/common.py", "check_outputs", set(STAGES)),
        # another stage's flags, which the dispatcher's parser registers too, are not this stage's code
        ("cli/score.py", "register", {("score",)}),
    ],
)
def test_a_change_changes_the_hash_of_the_stages_that_run_it_and_no_other(tmp_path, module, function, changed):
    before = {w: stage_code(*w) for w in STAGES}
    after = stage_codes(patched_source(tmp_path, module, function), STAGES)
    assert {w for w in STAGES if after[w] != before[w]} == changed


def test_a_package_beside_a_module_of_its_name_is_the_code_hashed(tmp_path):
    # twentieth hostile pass: grading/ (a package, which Python imports) put beside grading.py changed no hash
    src = patched_source(tmp_path, "grading.py", None)
    shutil.copy(src / "tokenshift" / "grading.py", tmp_path / "grading.py")
    (src / "tokenshift" / "grading.py").write_text((REPO / "src" / "tokenshift" / "grading.py").read_text())
    package = src / "tokenshift" / "grading"
    package.mkdir()
    shutil.copy(tmp_path / "grading.py", package / "__init__.py")  # the module's code, one line more
    before, after = stage_codes(REPO / "src", STAGES), stage_codes(src, STAGES)
    assert after[("rollout",)] != before[("rollout",)] and after[("score",)] == before[("score",)]


def test_a_comment_docstring_or_layout_edit_changes_no_hash(tmp_path):
    """What Python does not run is not the code a result depends on: editing it re-runs nothing (a comment-only
    edit re-ran the stages that reach it, the third hostile pass)."""
    src = patched_source(tmp_path, "crosssample.py", None)
    path = src / "tokenshift" / "crosssample.py"
    text = path.read_text().replace("\nCHANGED = True  # an upgrade\n", "")
    node = next(n for n in ast.parse(text).body if getattr(n, "name", None) == "run_crosssample")
    doc = ast.get_docstring(node).splitlines()[0]
    assert text.count(doc) == 1
    lines = text.replace(doc, doc + " Edited.").splitlines(keepends=True)
    lines.insert(node.body[1].lineno - 1, "\n    # a comment, and a blank line above it\n")
    path.write_text("".join(lines))
    assert stage_codes(src, STAGES) == {w: stage_code(*w) for w in STAGES}
    # the same place given a statement: a change
    path.write_text("".join(lines).replace("    # a comment, and", "    _upgraded = True  # a comment, and"))
    assert stage_codes(src, STAGES)[("crosssample",)] != stage_code("crosssample")


def test_a_templates_edit_changes_the_hash_of_the_stage_that_renders_it_and_no_other(tmp_path):
    """The pages' templates are data files, not code: a changed template re-runs the stage that renders it."""
    stages = [("report",), ("explorer",), ("figures",)]
    for template, changed in (("report.html.j2", ("report",)), ("explorer.html", ("explorer",))):
        src = tmp_path / template
        shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        path = src / "tokenshift" / "templates" / template
        path.write_text(path.read_text().replace("</body>", "<p>upgraded</p></body>", 1))
        after = stage_codes(src, stages)
        assert {w for w in stages if after[w] != stage_code(*w)} == {changed}


def test_an_import_edit_changes_the_hash_of_the_stages_that_reach_its_module(tmp_path):
    """`from math import comb` made `from math import pow as comb` changes pass@k: a name's import is code the
    units using it run (the fourth hostile pass found it hashed nowhere)."""
    src = patched_source(tmp_path, "tables.py", None)
    path = src / "tokenshift" / "tables.py"
    text = path.read_text().replace("\nCHANGED = True  # an upgrade\n", "")
    assert text.count("\nfrom math import comb\n") == 1
    path.write_text(text.replace("\nfrom math import comb\n", "\nfrom math import pow as comb\n"))
    after = stage_codes(src, STAGES)
    assert after[("accuracy",)] != stage_code("accuracy")
    assert after[("rollout",)] == stage_code("rollout")  # no unit of tables.py in it


def test_a_private_name_bound_at_import_for_its_effect_is_in_the_hash_of_the_stages_that_import_it(tmp_path):
    """Eighth hostile pass (K08): `_STYLE = plt.rcParams.update(...)` restyles every figure, and nothing reads
    `_STYLE`: it was hashed nowhere. A constant no call makes (`_UNUSED = 3`) is still no code that runs."""
    stages = [("figures",), ("rollout",)]
    for line, changes in (("_STYLE = plt.rcParams.update({'lines.linewidth': 3})", True), ("_UNUSED = 3", False)):
        src = tmp_path / line[:6]
        shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        path = src / "tokenshift" / "plots" / "figures.py"
        path.write_text(path.read_text() + f"\n{line}\n")
        after = stage_codes(src, stages)
        assert (after[("figures",)] != stage_code("figures")) == changes, line
        assert after[("rollout",)] == stage_code("rollout")


def test_code_the_packages_init_runs_is_in_every_stages_hash_and_its_version_string_in_none(tmp_path):
    """Twelfth hostile pass (J8): `tokenshift/__init__.py` was left out of every hash whole, so a grader patched
    there at import made every answer right and the finished study stayed "up to date"."""
    stages = [("rollout",), ("report",)]
    for line, changes in (
        ("import tokenshift.grading as _g\n_g.grade_one = lambda *a, **k: None", True),
        ('__version__ = "99.0"', False),
    ):
        src = tmp_path / str(changes)
        shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        path = src / "tokenshift" / "__init__.py"
        path.write_text(path.read_text() + f"\n{line}\n")
        after = stage_codes(src, stages)
        assert all((after[s] != stage_code(*s)) == changes for s in stages), line


def test_a_modules_old_bytecode_is_not_run_after_a_same_size_edit_whose_mtime_was_set_back(tmp_path):
    """Twentieth hostile pass: Python takes a module's ``__pycache__`` .pyc where the source's size and mtime are
    those it records, so an edit of one size made with ``touch -r`` (or ``cp -p`` of such a file) ran the old
    code, while the code hash, taken from the source, said the new one ran. Bytecode is checked by content."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    path = src / "tokenshift" / "grading.py"
    path.write_text(path.read_text() + '\n_PROBE = "old"\n')
    unset = ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")  # as on a user's machine: bytecode written, beside
    env = {k: v for k, v in os.environ.items() if k not in unset} | {"PYTHONPATH": str(src)}

    def probe() -> str:
        code = "import tokenshift.grading as g; print(g._PROBE)"
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout

    assert probe() == "old\n"
    (cached,) = (src / "tokenshift" / "__pycache__").glob("grading.*.pyc")
    before = path.stat()
    path.write_text(path.read_text().replace('_PROBE = "old"', '_PROBE = "new"'))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert probe() == "new\n"
    # and bytecode of the source as it is is still taken, not compiled again at each start
    written = cached.read_bytes()
    os.utime(cached, ns=(0, 0))
    assert probe() == "new\n" and cached.read_bytes() == written and cached.stat().st_mtime_ns == 0


def test_a_modules_bytecode_compiled_unchecked_is_not_run_after_an_edit(tmp_path):
    """Twenty-first pass: bytecode compiled with ``compileall --invalidation-mode unchecked-hash`` (a distribution's
    packaging step) is run by Python without a look at the source: an edit ran the old code under the new hash."""
    import py_compile

    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    path = src / "tokenshift" / "grading.py"
    path.write_text(path.read_text() + '\n_PROBE = "old"\n')
    mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
    py_compile.compile(str(path), doraise=True, invalidation_mode=mode)
    path.write_text(path.read_text().replace('_PROBE = "old"', '_PROBE = "new"'))
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = "import tokenshift.grading as g; print(g._PROBE)"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert r.stdout == "new\n"


def test_a_compiled_module_python_would_take_before_or_for_the_source_is_refused(tmp_path):
    """Python takes an extension module before ``grading.py`` beside it, and a ``grading.pyc`` where the source is
    gone; the code hash reads the source, so such a file ran code no hash described."""
    import py_compile

    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    source = src / "tokenshift" / "grading.py"
    py_compile.compile(str(source), cfile=str(source.with_suffix(".pyc")), doraise=True)
    source.unlink()
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run([sys.executable, "-c", "import tokenshift.grading"], env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert f"ImportError: {source.with_suffix('.pyc')}: a compiled module in tokenshift" in r.stderr


def test_a_package_folder_that_is_a_link_is_read_for_the_hashes_and_their_record(tmp_path):
    """Twenty-first pass: ``plots/`` or ``templates/`` as a link to a folder elsewhere (Python imports through it) was
    not entered by the package's file walk: the remembered hashes' key did not change with an edit there, and the
    explorer's template was hashed nowhere."""
    src, cache = tmp_path / "src", tmp_path / "cache"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for folder in ("plots", "templates"):
        (src / "tokenshift" / folder).rename(tmp_path / folder)
        (src / "tokenshift" / folder).symlink_to(tmp_path / folder)
    stages = [("figures",), ("explorer",), ("rollout",)]
    before = stage_codes(src, stages, cache)
    assert before == stage_codes(src, stages) == {w: stage_code(*w) for w in stages}  # the same code, linked
    style = tmp_path / "plots" / "style.py"
    style.write_text(style.read_text() + "\nimport sys as _s\n_s.stderr.write('an upgrade')\n")
    page = tmp_path / "templates" / "explorer.html"
    page.write_text(page.read_text().replace("</body>", "<p>upgraded</p></body>", 1))
    after = stage_codes(src, stages, cache)
    assert {w for w in stages if after[w] != before[w]} == {("figures",), ("explorer",)}


def test_a_compiled_module_in_the_package_is_refused_by_the_plan_naming_it(tmp_path):
    """Where Python would import a compiled module of the package, no job can run the code hashed: ``snakemake -n``
    says so at once, before any job (the import refuses it too: the test above)."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    compiled = src / "tokenshift" / "stats" / "__init__.pyc"  # a package of bytecode beside stats.py
    compiled.parent.mkdir()
    compiled.write_bytes(b"")
    work = tmp_path / "work"
    shutil.copytree(REPO / "config", work / "config")
    r = snakemake(work, "-n", "all", env={"PYTHONPATH": str(src)})
    assert r.returncode == 1
    assert f"{compiled}: a compiled module in tokenshift" in r.stderr + r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("imported", "called"),
    [
        ("from .stats import mean_ci", "mean_ci("),  # relative
        ("from . import stats as _st", "_st.mean_ci("),  # relative, a module
        ("import tokenshift.stats\n_ST = tokenshift.stats", "_ST.mean_ci("),  # a module renamed at the top
    ],
)
def test_a_function_reached_through_a_relative_import_or_a_renamed_module_is_in_the_hash(tmp_path, imported, called):
    """Twenty-first pass: `from .stats import mean_ci` in tables.py, or `_ST = tokenshift.stats` and `_ST.mean_ci`,
    left mean_ci out of the accuracy stage's hash: an edit to it re-ran nothing, though the job ran it."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    tables = src / "tokenshift" / "tables.py"
    text = tables.read_text()
    assert text.count("\nfrom tokenshift.stats import mean_ci\n") == 1
    head, body = text.split("\nfrom tokenshift.stats import mean_ci\n")
    tables.write_text(f"{head}\n{imported}\n{body.replace('mean_ci(', called)}")
    before = stage_codes(src, [("accuracy",)])
    stats = src / "tokenshift" / "stats.py"
    signature = ") -> tuple[float, float, float]:\n"
    stats.write_text(stats.read_text().replace(signature, signature + "    _upgraded = True  # an upgrade\n", 1))
    assert stage_codes(src, [("accuracy",)]) != before


def test_the_package_imported_from_an_archive_is_refused_naming_it(tmp_path):
    """Twenty-first pass: from a zip on ``sys.path`` every stage's hash was that of nothing (no file was found to
    read), and the plan's schema read a traceback."""
    archive = tmp_path / "ts.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", REPO / "src", "tokenshift")
    env = {**os.environ, "PYTHONPATH": str(archive)}
    r = subprocess.run([sys.executable, "-c", "import tokenshift"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and f"ImportError: {archive}/tokenshift: tokenshift imported from an archive" in r.stderr


@pytest.mark.parametrize(
    ("added", "hashed"),
    [
        ("if __name__ != '__main__':\n    mean_ci = lambda values, **kw: (0.5, 0.0, 1.0)\n", True),  # every import
        ("if __name__ == '__main__':\n    print(mean_ci([1.0]))\n", False),  # as a script only
        ("def _m(x):\n    return x\n", True),  # reached through `func=_m` below, not a parser's handler
    ],
)
def test_code_a_module_runs_at_import_or_hands_on_as_func_is_in_the_hash(tmp_path, added, hashed):
    """Twenty-second pass: any top-level `if` whose test named "__main__" was skipped (`!=` runs at every import),
    and every `func=` keyword's value was taken for a parser's handler (`set_defaults(func=...)`)."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    stats = src / "tokenshift" / "stats.py"
    signature = ") -> tuple[float, float, float]:\n"
    body = "    _apply(values, func=_m)  # a function handed on\n" if "_m" in added else ""
    helper = "\n\ndef _apply(values, func):\n    return func(values)\n"
    stats.write_text(stats.read_text().replace(signature, signature + body, 1) + "\n" + added + helper)
    before = stage_codes(src, [("accuracy",)])
    stats.write_text(stats.read_text().replace("0.5, 0.0, 1.0", "0.25, 0.0, 1.0").replace("return x", "return -x"))
    stats.write_text(stats.read_text().replace("print(mean_ci([1.0]))", "print(mean_ci([2.0]))"))
    assert (stage_codes(src, [("accuracy",)]) != before) == hashed


def test_a_module_with_a_byte_order_mark_or_a_coding_line_is_hashed_as_python_reads_it(tmp_path):
    """Twenty-second pass: Python imports a module that starts with a UTF-8 byte order mark or declares latin-1;
    the code hash read it as UTF-8 text and `snakemake -n all` stopped in a SyntaxError naming no module."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    stats = src / "tokenshift" / "stats.py"
    text = stats.read_text()
    stats.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert stage_codes(src, [("accuracy",)]) == {("accuracy",): stage_code("accuracy")}  # the same code
    stats.write_bytes(b"# -*- coding: latin-1 -*-\n# caf\xe9\n" + text.encode("ascii"))
    assert stage_codes(src, [("accuracy",)]) == {("accuracy",): stage_code("accuracy")}


def test_a_template_the_report_template_includes_is_in_the_reports_hash(tmp_path):
    """Twenty-second pass: `{% include "footer.html" %}` in report.html.j2: an edit to footer.html alone re-ran
    nothing (a data file was hashed only where a string of the code named it)."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    templates = src / "tokenshift" / "templates"
    page = templates / "report.html.j2"
    page.write_text(page.read_text().replace("</body>", '{% include "footer.html" %}</body>', 1))
    (templates / "footer.html").write_text("<p>v1</p>")
    stages = [("report",), ("explorer",)]
    before = stage_codes(src, stages)
    (templates / "footer.html").write_text("<p>v2</p>")
    after = stage_codes(src, stages)
    assert after[("report",)] != before[("report",)] and after[("explorer",)] == before[("explorer",)]


def test_a_damaged_record_of_the_hashes_costs_time_only(tmp_path):
    """Twenty-second pass: a record nested past what JSON's parser reads ended every Snakemake start in a
    RecursionError; the docs say deleting it costs time only, and a damaged one is as none."""
    cache = tmp_path / "cache"
    src = patched_source(tmp_path, "stats.py", None)
    fresh = stage_codes(src, [("accuracy",)], cache)
    (record,) = (cache / "stage-code").iterdir()
    record.write_text("[" * 100_000 + "]" * 100_000)
    assert stage_codes(src, [("accuracy",)], cache) == fresh


KK = "def kk(x):\n    return x\n"
FLIP = ("return x", "return -x")


@pytest.mark.parametrize(
    ("imports", "call", "modules", "edit"),
    [
        # a star import in the module that calls kk
        ("from tokenshift.hh import *", "kk", {"hh": KK}, ("hh", "return x", "return -x")),
        # a star import in the module kk is imported from
        ("from tokenshift.hh import kk", "kk", {"hh": "from tokenshift.hh2 import *\n", "hh2": KK}, ("hh2", *FLIP)),
        # another library's function, re-exported under the name
        ("from tokenshift.hh import kk", "kk", {"hh": "from math import floor as kk\n"}, ("hh", "floor", "ceil")),
        # the `else:` of a main guard, which runs at every import
        (
            "from tokenshift.hh import kk",
            "kk",
            {"hh": "if __name__ == '__main__':\n    pass\nelse:\n    def kk(x):\n        return x\n"},
            ("hh", "return x", "return -x"),
        ),
        # a module imported by its name as a string
        (
            "import importlib",
            'importlib.import_module("tokenshift.hh").kk',
            {"hh": KK},
            ("hh", "return x", "return -x"),
        ),
        ("", '__import__("tokenshift.hh", fromlist=["kk"]).kk', {"hh": KK}, ("hh", "return x", "return -x")),
        # names given as constant strings
        ("import tokenshift.hh as _h", 'getattr(_h, "kk")', {"hh": KK}, ("hh", *FLIP)),
        ("import sys\nimport tokenshift.hh", 'sys.modules["tokenshift.hh"].kk', {"hh": KK}, ("hh", *FLIP)),
        ("import importlib", 'importlib.import_module(".hh", __package__).kk', {"hh": KK}, ("hh", *FLIP)),
        ("import pkgutil", 'pkgutil.resolve_name("tokenshift.hh:kk")', {"hh": KK}, ("hh", *FLIP)),
        # a name a module's __getattr__ gives
        (
            "from tokenshift.hh import kk",
            "kk",
            {"hh": "def __getattr__(name):\n    return lambda x: x\n"},
            ("hh", "lambda x: x", "lambda x: -x"),
        ),
        # a registry filled when a module is imported: a decorator, a call kept under a public name
        (
            "import tokenshift.hh2\nfrom tokenshift.hh import kk",
            "kk",
            {
                "hh": "import functools\n\n\n@functools.singledispatch\ndef kk(x):\n    return x\n",
                "hh2": "from tokenshift.hh import kk\n\n\n@kk.register(float)\ndef _f(x):\n    return x\n",
            },
            ("hh2", "return x", "return -x"),
        ),
        (
            "import tokenshift.hh2\nfrom tokenshift.hh import kk",
            "kk",
            {
                "hh": "IMPL = {}\n\n\ndef add(f):\n    IMPL['kk'] = f\n\n\ndef kk(x):\n    return IMPL['kk'](x)\n",
                "hh2": "from tokenshift.hh import add\n\n\ndef _f(x):\n    return x\n\n\nADDED = add(_f)\n",
            },
            ("hh2", "return x", "return -x"),
        ),
    ],
    ids=[
        "star",
        "star-re-export",
        "re-exported-library-name",
        "main-guard-else",
        "import-module",
        "dunder-import",
        "getattr-constant",
        "sys-modules",
        "relative-import-module",
        "resolve-name",
        "module-getattr",
        "registered-by-decorator",
        "registered-by-call",
    ],
)
def test_a_function_reached_through_a_star_import_a_re_export_a_string_or_a_registry_is_in_the_hash(
    tmp_path, imports, call, modules, edit
):
    """Twenty-third pass: an edit to the function the accuracy table's mean ran changed its numbers and not the
    accuracy stage's hash."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    package = src / "tokenshift"
    for name, text in modules.items():
        (package / f"{name}.py").write_text(text)
    stats = package / "stats.py"
    text = stats.read_text().replace("import numpy as np\n", f"import numpy as np\n{imports}\n", 1)
    stats.write_text(text.replace("    m = float(x.mean())", f"    m = {call}(float(x.mean()))", 1))
    code = "import tokenshift.stats as s; print(s.mean_ci([0.0, 1.0, 1.0])[0])"
    env = {**os.environ, "PYTHONPATH": str(src)}
    ran = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout]
    before = stage_codes(src, [("accuracy",)])
    module, old, new = edit
    (package / f"{module}.py").write_text(modules[module].replace(old, new))
    ran.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert ran[0] != ran[1]  # the edit changes what the job computes
    assert stage_codes(src, [("accuracy",)]) != before


def test_hashes_are_remembered_by_the_packages_content_and_a_changed_file_is_a_new_key(tmp_path):
    cache, unwritable = tmp_path / "cache", tmp_path / "file"
    unwritable.write_text("a file, not a folder: nothing is remembered under it\n")
    same = patched_source(tmp_path / "a", "crosssample.py", None)  # a setting nothing reads: the same hashes
    fresh = stage_codes(same, STAGES, unwritable)
    assert stage_codes(same, STAGES, cache) == fresh
    (record,) = (cache / "stage-code").iterdir()
    # the record is what a later start reads: a value put there is what it gets
    record.write_text(json.dumps({**json.loads(record.read_text()), "stage rollout": "remembered"}))
    assert stage_codes(same, STAGES, cache)[("rollout",)] == "remembered"
    # a changed function is a changed file: a new key, so its stage's hash is taken again, not read
    changed = patched_source(tmp_path / "b", "crosssample.py", "run_crosssample")
    after = stage_codes(changed, STAGES, cache)
    assert after == stage_codes(changed, STAGES, unwritable)
    assert {w for w in STAGES if after[w] != fresh[w]} == {("crosssample",)}
    assert len(list((cache / "stage-code").iterdir())) == 2


# --- every stage of a small study, under a tracer -------------------------------------------------

SHIM = """#!{python}
# `tokenshift`, with every function of the package that a subcommand's handler runs written to a file
import json, os, sys, threading

import polars

import tokenshift
import tokenshift.cli as cli

ROOT = os.path.dirname(os.path.abspath(tokenshift.__file__)) + os.sep
seen, modules, reads = set(), set(), set()


def audit(event, args):
    # every file the command opens to read: Python's own opens, and polars' (its reader opens files in Rust)
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2]
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else flags & (os.O_WRONLY | os.O_RDWR)
        if not writes:
            reads.add(os.path.abspath(os.fsdecode(args[0])))


def recorded(read):
    def reading(source, *a, **k):
        for one in source if isinstance(source, (list, tuple)) else [source]:
            if isinstance(one, (str, os.PathLike)):
                reads.add(os.path.abspath(os.fsdecode(one)))
        return read(source, *a, **k)

    return reading


sys.addaudithook(audit)
for name in ("read_parquet", "scan_parquet", "read_parquet_schema", "read_parquet_metadata"):
    setattr(polars, name, recorded(getattr(polars, name)))


def tracer(frame, event, arg):
    # a function called while a module of the package is being imported (a default argument, a class
    # body, a comprehension at the top) runs at import time: what it makes is used only through the
    # names that hold it, whose code is checked where it is called
    code = frame.f_code
    if not code.co_filename.startswith(ROOT):
        return
    key = (code.co_filename, code.co_firstlineno, code.co_name)
    if key in seen:
        return
    if code.co_name == "<module>":
        modules.add(key)
        return
    caller = frame.f_back
    while caller is not None:
        if caller.f_code.co_name == "<module>" and caller.f_code.co_filename.startswith(ROOT):
            return
        caller = caller.f_back
    seen.add(key)


build = cli.build_parser


def traced_parser(*given):
    parser = build(*given)
    parse = parser.parse_args

    def parse_args(*a, **k):
        args = parse(*a, **k)
        handler = args.func

        def traced(ns):
            threading.settrace(tracer)
            sys.settrace(tracer)
            try:
                return handler(ns)
            finally:
                sys.settrace(None)
                threading.settrace(None)

        args.func = traced
        return args

    parser.parse_args = parse_args
    return parser


cli.build_parser = traced_parser
try:
    rc = cli.main()
finally:
    with open(os.path.join(os.environ["TOKENSHIFT_TRACE"], f"{{os.getpid()}}.json"), "w") as f:
        json.dump(
            {{
                "argv": sys.argv[1:],
                "calls": sorted(seen),
                "modules": sorted(modules),
                "reads": sorted(reads),
                "log": os.path.realpath("/proc/self/fd/1"),  # the job's log: what its rule names it by
            }},
            f,
        )
sys.exit(rc)
"""

TINY_TOY = {
    "min_steps": 1,
    "max_steps": 2,
    "n_train_problems": 40,
    "n_traces": 200,
    "hidden_size": 16,
    "num_layers": 1,
    "pretrain_steps": 4,
    "grpo_steps": 2,
    "sft_steps": 2,
    "checkpoint_every": 1,
    "threads": 1,
}
"""A toy build of a few seconds: the toy stages' code, not their results, is what is checked."""


def traced_study_config() -> dict:
    return {
        "models": {
            "toy-base": {"toy": "base"},
            "toy-rl": {"toy": "rl", "init": "toy-base"},
            "toy-sft": {"toy": "sft", "init": "toy-base"},
            "local": {"path": "ckpt/local"},
        },
        "pairs": [
            {"name": "toy", "kind": "rlvr", "base": "toy-base", "rl": "toy-rl", "datasets": ["toy"]},
            {
                "name": "sft",
                "kind": "sft",
                "base": "toy-base",
                "rl": "toy-sft",
                "datasets": ["toy"],
                "crosssample": False,
            },
        ],
        "datasets": {
            "toy": {"toy": "eval", "n_problems": 3},
            "tiny": {"path": "data/tiny.jsonl", "id_field": "id", "template": "Q:{question}=?\n"},
        },
        "sampling": {"n": 2, "max_new_tokens": 6},
        "rollout": {"pass_k": [1, 2], "problems_per_shard": 2},
        "crosssample": {
            "directions": ["forward"],
            "policies": ["js", "random"],
            "budgets": [0, 2],
            "thresholds": {"js": {"percentile": 90}, "random": {"percentile": 90}},
            "problems_per_shard": 2,
            "device_base": "cpu",
            "device_rl": "cpu",
        },
        "toy": TINY_TOY,
        "advantages": {
            "variants": ["none", "js"],
            "seeds": [0],
            "steps": 1,
            "prompts_per_step": 2,
            "group_size": 2,
            "eval_every": 1,
            "eval_problems": 2,
            "eval_samples": 1,
        },
    }


def subcommand(argv: list[str]) -> tuple[str, ...]:
    """The subcommand words at the start of ``argv`` (``models fetch``, ``rollout``)."""
    from tokenshift.cli import build_parser

    parser, words = build_parser(), []
    for word in argv:
        sub = next((a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"), None)
        if sub is None or word not in sub.choices:
            break
        words.append(word)
        parser = sub.choices[word]
    return tuple(words)


TRACED_TARGETS = ("all", "resources/models/local.json", "resources/datasets/tiny.parquet")


@pytest.fixture(scope="module")
def traced_study(tmp_path_factory, toy_tokenizer) -> tuple[Path, list[dict]]:
    """The small study run to its end with every command traced: its folder, and each command's record
    (``SHIM``: its arguments, the package's code it ran, the files it read, its log)."""
    tmp_path = tmp_path_factory.mktemp("traced")
    work = tmp_path / "work"
    save_checkpoint(work / "ckpt" / "local", toy_tokenizer)
    (work / "data").mkdir()
    (work / "data" / "tiny.jsonl").write_text("".join(json.dumps(p) + "\n" for p in tiny_problems(3)))
    (work / "config").mkdir()
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(traced_study_config(), sort_keys=False))
    shim, traces = tmp_path / "bin", tmp_path / "traces"
    shim.mkdir()
    traces.mkdir()
    (shim / "tokenshift").write_text(SHIM.format(python=sys.executable))
    (shim / "tokenshift").chmod(0o755)
    path = os.pathsep.join([str(shim), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {"PATH": path, "TOKENSHIFT_TRACE": str(traces)}
    r = snakemake(work, "--cores", "2", *TRACED_TARGETS, timeout=1800, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work, [json.loads(trace.read_text()) for trace in traces.glob("*.json")]


@pytest.mark.slow
def test_every_function_a_stage_runs_is_in_its_hash(traced_study):
    ran: set[tuple[str, ...]] = set()
    missing: dict[tuple[str, ...], set] = {}
    for record in traced_study[1]:
        words = subcommand(record["argv"])
        ran.add(words)
        hashed = stage_units(*words).units
        data = stage_units(*words).data
        for file, line, name in record["calls"]:
            if not file.endswith(".py"):  # a page's template, compiled by Jinja: a data file the stage names
                rel = Path(file).resolve().relative_to(ROOT).as_posix()
                if rel not in data:
                    missing.setdefault(words, set()).add((rel, None, name))
                continue
            rel, unit = unit_at(file, line)
            if (rel, unit) not in SKIPPED and (rel, unit) not in hashed:
                missing.setdefault(words, set()).add((rel, unit, name))
        for file, _, _ in record["modules"]:  # imported while the stage ran: what a module runs when imported
            if not file.endswith(".py"):  # a template's compiled module: checked with its calls above
                continue
            rel, _ = unit_at(file, 1)
            if IMPORT_TIME in unit_names(rel) and (rel, IMPORT_TIME) not in hashed:
                missing.setdefault(words, set()).add((rel, IMPORT_TIME, "<module>"))
    assert not missing, missing
    # every stage of the workflow ran (and was checked)
    assert ran >= {
        ("models", "fetch"),
        ("models", "toy-base"),
        ("models", "toy-rl"),
        ("models", "toy-sft"),
        ("models", "check-pair"),
        ("dataset",),
        ("rollout",),
        ("gather",),
        ("accuracy",),
        ("score",),
        ("divergence",),
        ("crosssample",),
        ("crosssample-table",),
        ("toy-check",),
        ("advantages", "run"),
        ("advantages", "table"),
        ("training-shifts",),
        ("figure-training",),
        ("figures",),
        ("figure-overview",),
        ("explorer",),
        ("report",),
    }, ran


@pytest.mark.slow
def test_every_file_a_job_reads_is_one_its_rule_declares(traced_study):
    """Provenance: Snakemake re-runs a job when a file it declares changes, so a job that reads a file its rule
    does not declare keeps a stale result when that file changes. Each command's reads (Python's opens and
    polars') inside the study's folder, against its job's inputs and outputs in Snakemake's own record of
    the run (``--detailed-summary``). A checkpoint directory is read through its manifest (an input, whose
    hashes are checked against the files); a job's own outputs' folders hold its resumable shards, and a folder
    output's staging folder beside it the files it checks before they take the output's place. Found
    at once: the report read two divergence tables its rule did not declare."""
    from tokenshift.checkpoints import fingerprints_path

    work, records = traced_study
    r = snakemake(work, "--detailed-summary", *TRACED_TARGETS)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs: dict[str, tuple[set[str], set[str]]] = {}  # a job's log -> its inputs, its outputs
    for line in r.stdout.splitlines()[1:]:
        output, _, _, logs, inputs, *_ = line.split("\t")
        for log in logs.split(","):
            held = jobs.setdefault(log, (set(), set()))
            held[0].update(i for i in inputs.split(",") if i != "-")
            held[1].add(output)
    undeclared: dict[str, set[str]] = {}
    for record in records:
        log = Path(record["log"]).relative_to(work.resolve()).as_posix()
        inputs, outputs = jobs[log]
        models = [Path(i).with_suffix("") for i in inputs if i.startswith("resources/models/")]
        # a checkpoint's files, and the fingerprints that spare hashing them again when their stat is unchanged
        within = [
            *outputs,
            *inputs,
            *(m.as_posix() for m in models),
            *(fingerprints_path(m).as_posix() for m in models),
        ]
        # a folder output's staging folder beside it (a fetch checks its links there before they take its place)
        staging = tuple((Path(o).parent / f".{Path(o).name}.").as_posix() for o in outputs)
        for path in record["reads"]:
            try:
                rel = Path(path).relative_to(work.resolve()).as_posix()
            except ValueError:  # the package, Python, the tokenizer's cache: not the study's files
                continue
            if rel.startswith((".snakemake/", "logs/", *staging)) or rel in inputs:
                continue
            if not any(
                rel == o or rel.startswith(o.removesuffix(".parquet") + ".") or rel.startswith(o + "/") for o in within
            ):
                undeclared.setdefault(log, set()).add(rel)
    assert not undeclared, undeclared
