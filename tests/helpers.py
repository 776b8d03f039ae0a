"""What several test modules share: running the repository's workflow, reading its plan, and long runs
under limits of their own (test modules import from here, not from each other)."""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import REPO, run, save_checkpoint, tokenshift_cmd
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
"""The embedded default config, as config/config.yaml has it."""


def snakemake(workdir: Path, *args: str, timeout: int = 600, env: dict[str, str] | None = None):
    """Run the repository's Snakefile in ``workdir`` (whose config/config.yaml is the config); ``env``
    is set over the environment."""
    path = {"PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    return run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
        timeout=timeout,
        env={**path, **(env or {})},
    )


MAKER = """wildcard_constraints:
    f=".+[.]parquet",


rule make:
    input:
        "{f}.before",
    output:
        "{f}",
    shell:
        "mv {input:q} {output:q}"
"""


def made_by_a_run(workdir: Path, *files: str) -> None:
    """Have a real Snakemake run in ``workdir`` make ``files`` (paths relative to it, which exist), so that it
    holds Snakemake's record of each as an output it made (``.snakemake/metadata``)."""
    maker = workdir.parent / f"{workdir.name}.maker.smk"
    maker.write_text(MAKER)
    for f in files:
        (workdir / f).rename(workdir / f"{f}.before")
    r = run([sys.executable, "-m", "snakemake", "-s", str(maker), "-d", str(workdir), "--cores", "1", *files])
    assert r.returncode == 0, r.stderr[-2000:]
    maker.unlink()


def pair_files(results: Path, names) -> dict[str, Path]:
    """The files of one pair and dataset's folder ``results`` (laid out as the workflow's ``layout.pair_dir``) by
    the names the figure and report stages take them: a table's name, or ``<figure>.png``."""
    from tokenshift import layout

    return {name: results / layout.pair_file(name) for name in names}


def figure_tables(results: Path) -> dict[str, Path]:
    """``plots.draw.draw_pair_figures``' tables under ``results``, the cross-sampling ones where there."""
    from tokenshift.plots.draw import PAIR_TABLES

    crossed = (results / "crosssample.parquet").is_file()
    return pair_files(results, [n for n in PAIR_TABLES if crossed or n not in ("accuracy", "crosssample")])


def report_inputs(results: Path) -> dict[str, Path]:
    """``report.load_result``'s files under ``results`` (``registry.report_files``)."""
    from tokenshift.registry import report_files

    return pair_files(results, report_files((results / "crosssample.parquet").is_file()))


def planned(r) -> dict[str, int]:
    """Rule -> number of jobs, from the output of a `snakemake -n` run ({} when nothing is to be done)."""
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    if "Nothing to be done" in out:
        return {}
    table = out[out.index("Job stats:") :].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def plan(workdir: Path, *args: str) -> dict[str, int]:
    """What `snakemake -n all` would run in ``workdir``: rule -> number of jobs."""
    return planned(snakemake(workdir, "-n", "all", *args))


def shell_commands(stdout: str, command: str) -> list[dict[str, str]]:
    """The ``tokenshift <command>`` lines of ``snakemake -n -p`` output, each as its flags and their
    values (``--flag=value``; a flag given alone, such as ``--force-switch``, maps to "")."""
    out = []
    for line in re.findall(rf"^Shell command: (tokenshift {command} .*)$", stdout, re.M):
        argv = shlex.split(line)
        flags = {}
        for a, b in itertools.pairwise([*argv, ""]):
            if a.startswith("--"):
                key, eq, value = a.partition("=")
                flags[key] = value if eq else (b if b and not b.startswith("-") else "")
        out.append(flags)
    return out


def with_config(tmp_path: Path, config: dict) -> Path:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


def running_jobs(log: str) -> list[str]:
    """The rules of the jobs a Snakemake log shows started and not finished, in the order they started."""
    started = {m[2]: m[1] for m in re.finditer(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)$", log, re.M)}
    for m in re.finditer(r"^Finished jobid: (\d+)", log, re.M):
        started.pop(m[1], None)
    return list(started.values())


def patched_source(tmp_path: Path, module: str, function: str | None) -> Path:
    """A copy of src/ whose ``module`` (a path in the package) has one line more: at the top of
    ``function``'s body, or (None) at the end of the module, as an unused setting."""
    src = tmp_path / f"{module.replace('/', '-')}-{function}"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    path = src / "tokenshift" / module
    lines = path.read_text().splitlines(keepends=True)
    if function is None:
        lines.append("\nCHANGED = True  # an upgrade\n")
    else:
        node = next(n for n in ast.parse("".join(lines)).body if getattr(n, "name", None) == function)
        first = node.body[0]
        lines.insert(first.lineno - 1, " " * first.col_offset + "_upgraded = True  # an upgrade\n")
    path.write_text("".join(lines))
    return src


def tiny_problems(n: int) -> list[dict]:
    """``n`` problems of a local dataset file (id, question, gold answer): the tiny local studies' data."""
    return [{"id": f"p{i}", "problem": f"{i}a+{i}", "answer": str(2 * i)} for i in range(1, n + 1)]


def local_study_config(pair: str, *, n: int, max_new_tokens: int, shard: int, **crosssample) -> dict:
    """A study of two local checkpoints (ckpt/a, ckpt/b) on a local dataset file (data/tiny.jsonl) with a
    prompt template: ``n`` samples per problem, ``shard`` problems per shard, forward cross-sampling on
    CPU at budgets 0 and 2 (``crosssample`` adds to that section: its policies, thresholds)."""
    return {
        "models": {"a": {"path": "ckpt/a"}, "b": {"path": "ckpt/b"}},
        "pairs": [{"name": pair, "base": "a", "rl": "b", "datasets": ["tiny"]}],
        "datasets": {"tiny": {"path": "data/tiny.jsonl", "id_field": "id", "template": "Q:{question}=?\n"}},
        "sampling": {"n": n, "max_new_tokens": max_new_tokens},
        "rollout": {"pass_k": sorted({1, n}), "problems_per_shard": shard},
        "crosssample": {
            "directions": ["forward"],
            "budgets": [0, 2],
            "problems_per_shard": shard,
            "device_base": "cpu",
            "device_rl": "cpu",
            **crosssample,
        },
    }


DEFAULT_RUN_LIMIT_S = int(os.environ.get("TOKENSHIFT_TEST_RUN_LIMIT_S", 1500))
"""The default study's limit in the tests: ~1.5x its time on 2 idle cores (docs/results.md), so a busy machine
still finishes; on a machine shared with more work, raise it with ``TOKENSHIFT_TEST_RUN_LIMIT_S``.
Modules that wait on it take it into their tests' pytest timeout."""


def run_workflow(workdir: Path, *args: str, limit_s: int = DEFAULT_RUN_LIMIT_S):
    """A long `snakemake` run (a fixture's) under a limit of its own: past it, the test fails with a message
    naming the jobs that were running, not with pytest-timeout's stack dump of the waiting test."""
    try:
        r = snakemake(workdir, *args, timeout=limit_s)
    except subprocess.TimeoutExpired as e:
        log = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(
            f"snakemake {' '.join(args)} in {workdir} passed its {limit_s} s limit; running then: "
            f"{', '.join(running_jobs(log)) or 'no job (Snakemake itself)'}",
            pytrace=False,
        )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


SECTIONS = (
    "sampling",
    "grading",
    "divergence",
    "rollout",
    "scoring",
    "crosssample",
    "toy",
    "advantages",
    "cluster",
    "explorer",
)
"""The config sections of stage settings (dataclasses): tests/test_settings.py checks them, tests/test_e2e.py
walks every key of them."""


def other_tokenizer(texts: list[str], pattern: str = r"\p{N}| ?[^\s\p{L}\p{N}]+|\p{L}+|\s+") -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


CUSTOM_CODE = {
    "configuration_custom.py": "from transformers import Qwen2Config\n\n\nclass CustomConfig(Qwen2Config):\n"
    '    model_type = "custom_qwen2"\n',
    "modeling_custom.py": "from transformers import Qwen2ForCausalLM\n\n"
    "from .configuration_custom import CustomConfig\n\n\n"
    "class CustomForCausalLM(Qwen2ForCausalLM):\n    config_class = CustomConfig\n",
    # where CUSTOM_CODE_RAN names a file, importing the tokenizer's code creates it
    "tokenization_custom.py": "import os\n\nfrom transformers import PreTrainedTokenizerFast\n\n"
    "if os.environ.get('CUSTOM_CODE_RAN'):\n    open(os.environ['CUSTOM_CODE_RAN'], 'a').close()\n\n\n"
    "class CustomTokenizerFast(PreTrainedTokenizerFast):\n    pass\n",
}


def custom_code_checkpoint(path: Path, tokenizer) -> Path:
    """A checkpoint whose model and tokenizer are classes of its own code: transformers loads them only
    with trust_remote_code."""
    save_checkpoint(path, tokenizer)
    for name, code in CUSTOM_CODE.items():
        (path / name).write_text(code)
    for name, entries in (
        (
            "config.json",
            {
                "model_type": "custom_qwen2",
                "architectures": ["CustomForCausalLM"],
                "auto_map": {
                    "AutoConfig": "configuration_custom.CustomConfig",
                    "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
                },
            },
        ),
        (
            "tokenizer_config.json",
            {
                "tokenizer_class": "CustomTokenizerFast",
                "auto_map": {"AutoTokenizer": [None, "tokenization_custom.CustomTokenizerFast"]},
            },
        ),
    ):
        (path / name).write_text(json.dumps(json.loads((path / name).read_text()) | entries))
    return path


def cli(args: list, *, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``tokenshift ARGS`` run in this process through the console script's own ``main``: its exit status and
    what it writes (Python's streams, its log lines at the level the command logs at, and what C code writes
    to the descriptors), as ``run`` gives them for a subprocess. A subprocess started Python and imported
    torch and transformers again for each call, most of the inner loop's time; tests/test_cli.py runs the
    installed command itself too. The working directory, environment, logging and torch's thread count are
    the test's again afterwards; an exception ``main`` does not turn into a message propagates, as a
    traceback would fail the test of a subprocess. A call given ``env`` runs as a subprocess: libraries read
    their variables (``HF_HUB_CACHE``, ``HF_DATASETS_CACHE``) once, when first imported."""
    if env:
        return run(tokenshift_cmd() + [str(a) for a in args], cwd=cwd, env=env)
    import contextlib
    import logging
    import tempfile
    import warnings

    import torch

    from tokenshift.cli import main

    args = [str(a) for a in args]
    root = logging.getLogger()
    saved_logging, saved_env, saved_cwd = (root.handlers[:], root.level), dict(os.environ), os.getcwd()
    threads = torch.get_num_threads()
    # main's logging.basicConfig does nothing where the root logger has a handler (pytest's, or ours): the level
    # it would set, from the options before the stage's name
    verbose = {"-v", "--verbose"} & set(itertools.takewhile(lambda a: a.startswith("-"), args))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, contextlib.ExitStack() as stack:
        streams = [open(f.fileno(), "w", encoding="utf-8", closefd=False) for f in (out, err)]  # noqa: SIM115
        descriptors = [os.dup(1), os.dup(2)]
        try:
            if cwd is not None:
                os.chdir(cwd)
            for fd, f in zip((1, 2), (out, err)):
                sys.__stdout__.flush(), sys.__stderr__.flush()
                os.dup2(f.fileno(), fd)
            stack.enter_context(contextlib.redirect_stdout(streams[0]))
            stack.enter_context(contextlib.redirect_stderr(streams[1]))
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("default")  # each call shows its warnings, as a fresh process would
            handler = logging.StreamHandler(streams[1])
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
            root.handlers = [handler]
            root.setLevel(logging.DEBUG if verbose else logging.INFO)
            try:
                code = main(args)
            except SystemExit as e:  # argparse's usage errors and --help
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            for s in streams:
                s.close()  # flushed; the file stays open (closefd=False)
            for fd, saved in zip((1, 2), descriptors):
                os.dup2(saved, fd)
                os.close(saved)
            root.handlers = saved_logging[0]
            root.setLevel(saved_logging[1])  # through setLevel: loggers cache what their level lets through
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
            torch.set_num_threads(threads)
        stack.close()
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
    return subprocess.CompletedProcess(["tokenshift", *args], code, *texts)


def one_line_error(r, *needles):
    """Exit 2, one line naming what was wrong, no traceback."""
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    for n in needles:
        assert str(n) in r.stderr, (n, r.stderr)


# --- small tables of the real shapes, for the table builders, figures, report and input checks ----------

RNG = np.random.default_rng(0)


def fake_scores(n_resp: int = 60, length: int = 30) -> pl.DataFrame:
    rows = []
    for r in range(n_resp):
        for p in range(length):
            js = float(RNG.exponential(0.002) * (30 if p in (3, 11, 19) else 1))
            rows.append(
                {
                    "problem_id": f"q{r // 2}",
                    "sample_index": r % 2,
                    "position": p,
                    "norm_position": p / length,
                    "js": min(js, 0.69),
                    "kl_base_rl": js * 2,
                    "kl_rl_base": js * 2,
                    "entropy_base": float(RNG.exponential(0.3)),
                    "entropy_rl": float(RNG.exponential(0.2)),
                    "topk_overlap": float(RNG.choice([0.6, 0.8, 1.0], p=[0.05, 0.15, 0.8])),
                    "rl_top1_rank_in_base": int(RNG.choice([0, 1, 2, 7], p=[0.9, 0.07, 0.02, 0.01])),
                    "base_top1_rank_in_rl": 0,
                    "p_base_of_rl_top1": 0.7,
                    "p_rl_of_rl_top1": 0.9,
                    "statistic": "exact",
                }
            )
    return pl.DataFrame(rows)


def rollouts(p_correct: float, n_problems: int = 40, n: int = 4) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "problem_id": [f"q{i}" for i in range(n_problems) for _ in range(n)],
            "sample_index": [j for _ in range(n_problems) for j in range(n)],
            "correct": (RNG.random(n_problems * n) < p_correct).tolist(),
            "dataset_version": "v",
        }
    )


def cross_run(direction, policy, budget, p_correct, switched) -> pl.DataFrame:
    n = 160
    return pl.DataFrame(
        {
            "problem_id": [f"q{i // 4}" for i in range(n)],
            "sample_index": [i % 4 for i in range(n)],
            "correct": (RNG.random(n) < p_correct).tolist(),
            "n_switched": [switched] * n,
            "n_response_tokens": [30] * n,
            "finish_reason": ["stop"] * n,
            "switched_js": [[0.05] * switched] * n,
            "direction": direction,
            "policy": policy,
            "budget": budget,
            "threshold": 0.01,
        },
        schema_overrides={"switched_js": pl.List(pl.Float32)},
    )


def cross_table(forward_js_2: float = 0.6) -> pl.DataFrame:
    """Cross-sampling from a base model at 0.4 to an RL model at 0.75; ``forward_js_2``: the accuracy
    two js switches reach (0.6: the headline budget is ``all``; near 0.75, it is 2)."""
    runs = [
        cross_run(d, p, b, pc, sw)
        for d, p, b, pc, sw in [
            ("forward", "js", "0", 0.4, 0),
            ("forward", "js", "2", forward_js_2, 2),
            ("forward", "js", "all", 0.72, 4),
            ("forward", "random", "2", 0.42, 2),
            ("forward", "random", "all", 0.43, 4),
            ("reverse", "js", "0", 0.75, 0),
            ("reverse", "js", "2", 0.55, 2),
            ("reverse", "js", "all", 0.45, 4),
            ("forward", "dlogp", "2", 0.5, 2),
            ("forward", "dlogp", "all", 0.66, 4),
        ]
    ]
    # the follow-up's extrapolation beside the grid: forward, dlogp, no budget, gamma 0.1
    extrapolated = cross_run("forward", "dlogp", "all", 0.7, 5).with_columns(injection=pl.lit("extrapolate"), gamma=0.1)
    from tokenshift.tables import crosssample_table

    return crosssample_table(runs, extrapolation=[extrapolated], labels={"pair": "toy", "dataset": "toy"})


def chromium_driver():
    """Headless Chromium through Selenium, or a skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not browser or not driver_bin:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)


FAILING_RENAME = """import os

_replace = os.replace


def replace(src, dst, *args, **kwargs):  # the job dies as it puts its part in place, after its last shard
    if os.fspath(dst).endswith(os.environ["TOKENSHIFT_TEST_FAIL_AT"]):
        raise OSError(28, "No space left on device (the test's interruption)", os.fspath(dst))
    return _replace(src, dst, *args, **kwargs)


os.replace = replace
"""
"""A ``sitecustomize`` that makes the jobs' Python fail the rename that puts ``$TOKENSHIFT_TEST_FAIL_AT`` in
place: a job that dies at its end (a full disk there, or killed at that moment)."""


def failing_at(tmp_path: Path, output: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of jobs whose Python fails as it puts ``output`` in place (``FAILING_RENAME``)."""
    site = tmp_path / "failing_rename"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(FAILING_RENAME)
    path = os.pathsep.join(p for p in (str(site), (env or os.environ).get("PYTHONPATH")) if p)
    return {**(env or {}), "PYTHONPATH": path, "TOKENSHIFT_TEST_FAIL_AT": output}
