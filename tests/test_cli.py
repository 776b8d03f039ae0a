"""The console script: every stage has --help, bad input exits 2 with one clear line."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import REPO, run, tokenshift_cmd
from helpers import cli, made_by_a_run, one_line_error

HELPS = [
    [],
    ["models"],
    ["models", "fetch"],
    ["models", "toy-base"],
    ["models", "toy-rl"],
    ["models", "check-pair"],
    ["models", "toy-sft"],
    ["advantages", "run"],
    ["advantages", "table"],
    ["training-shifts"],
    ["figure-training"],
    ["dataset"],
    ["score"],
    ["divergence"],
    ["toy-check"],
    ["rollout"],
    ["accuracy"],
    ["crosssample"],
    ["crosssample-table"],
    ["figures"],
    ["figure-overview"],
    ["explorer"],
    ["report"],
    ["profile"],
    ["profile", "install"],
]


@pytest.mark.parametrize("sub", HELPS, ids=lambda s: " ".join(s) or "top")
def test_help(sub):
    r = cli(sub + ["--help"])
    assert r.returncode == 0, r.stderr
    assert "usage: tokenshift" in r.stdout


def test_parsing_a_command_line_loads_no_model_library():
    """Every job starts the CLI: the parser is built from the settings alone, and torch and
    transformers (seconds to import) are loaded only by the stage that runs."""
    import sys

    code = (
        "import sys, tokenshift.cli as c; c.build_parser(); print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    r = run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_top_level_help_lists_the_stages():
    out = run(tokenshift_cmd() + ["--help"]).stdout
    for stage in ("models", "toy-check", "dataset", "rollout", "accuracy", "score", "crosssample", "report"):
        assert stage in out


def test_python_dash_m_tokenshift_is_the_command():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "tokenshift", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "crosssample" in r.stdout
    # and its exit status: a refused input is 2 there too (it was 0, whatever failed)
    missing = ["accuracy", "--rollouts-base", "none.parquet", "--rollouts-rl", "none.parquet", "--out", "a.parquet"]
    r = subprocess.run([sys.executable, "-m", "tokenshift", *missing], capture_output=True, text=True, timeout=60)
    one_line_error(r, "none.parquet: no such file")


def test_hub_without_revision_is_a_usage_error(tmp_path):
    r = cli(["models", "fetch", "m", "--hub", "Qwen/Qwen2.5-0.5B", "--out", str(tmp_path / "m")])
    assert r.returncode == 2 and "--revision" in r.stderr


def test_missing_local_checkpoint_exits_2_naming_it(tmp_path):
    r = cli(["models", "fetch", "m", "--path", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    assert r.returncode == 2
    assert "nope" in r.stderr and "Traceback" not in r.stderr


def test_check_pair_of_checkpoints_without_manifests_names_the_missing_manifest(make_checkpoint, tmp_path):
    # the pair manifest takes embedding rows and tokenizer hashes from the model manifests
    base, rl = make_checkpoint("a"), make_checkpoint("b", seed=1)
    r = cli(["models", "check-pair", "p", "--base", str(base), "--rl", str(rl), "--out", str(tmp_path / "p.json")])
    one_line_error(r, f"{tmp_path / 'a.json'}: no such file", "models fetch")
    assert not (tmp_path / "p.json").exists()


def test_unknown_toy_setting_exits_2_naming_it(tmp_path):
    r = cli(["models", "toy-base", "t", "--hidden", "3", "--out", str(tmp_path / "t")])
    assert r.returncode == 2 and "--hidden" in r.stderr and "Traceback" not in r.stderr


def dataset_cmd(path, out):
    return ["dataset", "d", "--path", str(path), "--id-field", "id", "--out", str(out)]


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (
            b'{"id": 1, "problem": "1+1", "answer": "2"}\n{"id": 2, "problem": "caf\xe9", "answer": "3"}\n',
            ["not UTF-8"],
        ),
        (b'{"id": 1, "problem": "1+1", "answer": "2"}\n{"problem": "2+2", "answer": "4"}\n', ["row 1", "'id'"]),
        (b'{"id": 1, "problem": "1+1", "answer": null}\n', ["row 0", "empty gold answer"]),
        (b'{"id": 1, "problem": "1+1", "answer": ""}\n', ["row 0", "empty gold answer"]),
        (b"[1, 2]\n", ["set.jsonl:1", "not a JSON object"]),
        # a null id became the problem id 'None'
        (b'{"id": null, "problem": "1+1", "answer": "2"}\n', ["row 0", "'id'"]),
        # str() of a list of answers is no answer math-verify parses: every response graded wrong
        (b'{"id": 1, "problem": "1+1", "answer": ["2"]}\n', ["row 0", "'answer'", "list"]),
        (
            b'{"id": "a", "problem": "1+1", "answer": "2"}\n{"id": "a", "problem": "2+2", "answer": "4"}\n',
            ["'a'", "rows 0 and 1"],
        ),
        # seventh hostile pass (D1): a traceback writing the table; the gold answer "inf"
        (b'{"id": 1, "problem": "\\ud800", "answer": "2"}\n', ["row 0", "lone surrogate", "'problem'"]),
        (b'{"id": 1, "problem": "1+1", "answer": Infinity}\n', ["row 0", "inf in 'answer'", "finite"]),
        # eighth hostile pass: a RecursionError traceback; the gold answer "True"
        (
            b'{"id": 1, "problem": "1+1", "answer": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
            ["set.jsonl:1", "nested too deeply"],
        ),
        (b'{"id": 1, "problem": "1+1", "answer": true}\n', ["row 0", "a bool in 'answer'", "text or a number"]),
        # twenty-second pass: Python's ValueError for an integer past 4,300 digits, a traceback
        (b'{"id": 1, "problem": "1+1", "answer": ' + b"9" * 5000 + b"}\n", ["set.jsonl:1", "4300 digits"]),
    ],
    ids=[
        "non-utf8",
        "row-without-id",
        "null-gold",
        "empty-gold",
        "not-an-object",
        "null-id",
        "list-gold",
        "dup-id",
        "lone-surrogate",
        "infinite-gold",
        "nested-100000-deep",
        "bool-gold",
        "5000-digit-gold",
    ],
)
def test_a_bad_dataset_file_is_one_line_naming_the_file_or_row(tmp_path, content, needles):
    path = tmp_path / "set.jsonl"
    path.write_bytes(content)
    r = cli(dataset_cmd(path, tmp_path / "d.parquet"))
    one_line_error(r, *needles)
    assert not (tmp_path / "d.parquet").exists()


def test_a_parquet_dataset_whose_gold_answers_are_bytes_is_refused(tmp_path):
    # eighth hostile pass: a binary column's answer 2 became the gold answer "b'2'": every response graded wrong
    path = tmp_path / "set.parquet"
    pl.DataFrame({"id": [1], "problem": ["1+1"], "answer": [b"2"]}).write_parquet(path)
    r = cli(dataset_cmd(path, tmp_path / "d.parquet"))
    one_line_error(r, "row 0", "a bytes in 'answer'", "text or a number")
    assert not (tmp_path / "d.parquet").exists()


def test_a_stage_given_one_of_its_inputs_as_its_output_refuses_and_leaves_it(tmp_path):
    # eighth hostile pass: dataset --path D --out D wrote the prepared table over the source, exit 0
    path = tmp_path / "set.parquet"
    pl.DataFrame({"id": [1], "problem": ["1+1"], "answer": ["2"]}).write_parquet(path)
    before = path.read_bytes()
    (tmp_path / "link.parquet").symlink_to(path)
    (tmp_path / "sub").mkdir()
    for out in (path, tmp_path / "link.parquet", tmp_path / "sub" / ".." / "set.parquet"):
        r = cli(dataset_cmd(path, out))
        one_line_error(r, f"--out {out}: is also an input of this stage (path {path})")
        assert path.read_bytes() == before
    # a gathered part as its own --out, among others: the part and its place record stay
    parts = [tmp_path / f"p{i}.parquet" for i in range(2)]
    for p in parts:
        pl.DataFrame({"a": [1]}).write_parquet(p)
    r = cli(["gather", *map(str, parts), "--out", str(parts[1])])
    one_line_error(r, f"--out {parts[1]}: is also an input of this stage (parts {parts[1]})")
    assert pl.read_parquet(parts[1]).height == 1
    # ninth hostile pass (F8): an output directory holding an input under a name the stage writes there
    div = tmp_path / "div"
    div.mkdir()
    scores = div / "sparsity.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(scores)
    before = scores.read_bytes()
    r = cli(
        ["divergence", "--scores-base", str(scores), "--scores-rl", str(path), "--out-dir", str(div)]
        + ["--pair", "p", "--dataset", "d"]
    )
    one_line_error(r, f"--out-dir {div}: the stage writes {scores} there, which is also an input of it (scores-base")
    assert scores.read_bytes() == before
    (div / "curve.parquet").write_bytes(before)
    r = cli(["advantages", "table", str(div / "curve.parquet"), "--out-dir", str(div)])
    one_line_error(r, f"the stage writes {div / 'curve.parquet'} there, which is also an input of it (evals")


def test_a_dataset_asked_for_more_problems_than_its_file_holds_is_refused(tmp_path):
    # third hostile pass: n_problems 1000 of a 2-row file gave 2 problems, silently
    path = tmp_path / "set.jsonl"
    path.write_text('{"id": 1, "problem": "1+1", "answer": "2"}\n{"id": 2, "problem": "2+2", "answer": "4"}\n')
    r = cli(dataset_cmd(path, tmp_path / "d.parquet") + ["--n-problems", "3"])
    one_line_error(r, "n_problems 3, but it holds 2 problems")
    assert not (tmp_path / "d.parquet").exists()
    assert cli(dataset_cmd(path, tmp_path / "d.parquet") + ["--n-problems", "2"]).returncode == 0


def test_a_jsonl_saved_with_a_byte_order_mark_loads(tmp_path):
    # Windows editors write UTF-8 with a BOM; json.loads refuses it on the first line
    path = tmp_path / "set.jsonl"
    path.write_bytes('{"id": 1, "problem": "1+1", "answer": "2"}\n'.encode("utf-8-sig"))
    r = cli(dataset_cmd(path, tmp_path / "d.parquet"))
    assert r.returncode == 0, r.stderr
    from tokenshift.datasets import read_problems

    assert [(p.problem_id, p.question, p.answer) for p in read_problems(tmp_path / "d.parquet")] == [("1", "1+1", "2")]


def test_a_hub_dataset_is_read_at_the_commit_its_manifest_records(tmp_path, monkeypatch, caplog):
    import json
    from types import SimpleNamespace

    import datasets
    import huggingface_hub

    from tokenshift.datasets import DatasetSpec, dataset_manifest_path, prepare_dataset

    # the hub stands in for a local folder (the only fake is the remote's answer to "which commit is main?")
    repo = tmp_path / "org" / "aime"
    repo.mkdir(parents=True)
    (repo / "test.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+3", "answer": "5"}\n')
    commit = "0123456789abcdef0123456789abcdef01234567"
    asked, loaded = [], []

    def dataset_info(self, repo_id, *, revision=None, **kw):
        asked.append((repo_id, revision))
        return SimpleNamespace(sha=commit)

    real = datasets.load_dataset

    def load_dataset(path, *, revision=None, **kw):
        loaded.append(revision)
        return real(path, cache_dir=str(tmp_path / "cache"), **kw)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = tmp_path / "aime.parquet"
    table = prepare_dataset("aime", DatasetSpec(hub=str(repo), revision="main"), out)
    manifest = json.loads(dataset_manifest_path(out).read_text())
    assert table["answer"].to_list() == ["2", "5"]
    assert asked == [(str(repo), "main")] and loaded == [commit]  # main resolved once, then read at that commit
    assert manifest["commit"] == commit and manifest["n_problems"] == 2
    assert manifest["source"] == {"hub": str(repo), "revision": "main"}
    # a commit is its own answer: the hub is not asked
    prepare_dataset("aime", DatasetSpec(hub=str(repo), revision=commit), out)
    assert len(asked) == 1 and loaded[-1] == commit
    # a hub that cannot be asked (offline, a cached copy): loaded at the branch, no commit claimed, a warning
    monkeypatch.setattr(
        huggingface_hub.HfApi, "dataset_info", lambda *a, **k: (_ for _ in ()).throw(OSError("offline"))
    )
    prepare_dataset("aime", DatasetSpec(hub=str(repo), revision="main"), out)
    assert loaded[-1] == "main" and json.loads(dataset_manifest_path(out).read_text())["commit"] is None
    assert "without recording one" in caplog.text
    # a local file records no commit
    prepare_dataset("local", DatasetSpec(path=str(repo / "test.jsonl")), tmp_path / "local.parquet")
    assert json.loads((tmp_path / "local.json").read_text())["commit"] is None


def test_a_hub_dataset_without_a_revision_is_refused(tmp_path):
    # the config schema requires one, the command line did not: the hub's newest copy was read, unrecorded
    repo = tmp_path / "org" / "aime"
    repo.mkdir(parents=True)
    (repo / "test.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    out = tmp_path / "aime.parquet"
    r = cli(
        ["dataset", "aime", "--hub", str(repo), "--out", str(out)],
        env={"HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"},
    )
    one_line_error(r, "dataset 'aime'", "--revision")
    assert not out.exists()


def test_a_table_of_the_wrong_types_nulls_or_no_rows_is_named_with_its_column(tmp_path):
    """A rollout table from the real stage, spoiled as a careless copy would (the hostile pass of
    2026-12-04 met tracebacks and errors naming no file): each refused in one line naming file and column."""
    import polars as pl

    from tokenshift.datasets import DATASET_VERSION

    good = pl.DataFrame(
        {"problem_id": ["p1", "p1", "p2", "p2"], "sample_index": [0, 1, 0, 1], "correct": [True, False, True, True]}
    ).with_columns(pl.lit(DATASET_VERSION).alias("dataset_version"))
    spoiled = {
        "strings.parquet": (good.with_columns(pl.col("correct").cast(pl.String)), "column 'correct' holds String"),
        "nulls.parquet": (
            good.with_columns(pl.lit(None, dtype=pl.Boolean).alias("correct")),
            "column 'correct' is null",
        ),
        "empty.parquet": (good.head(0), "has no rows"),
    }
    good.write_parquet(tmp_path / "good.parquet")
    for name, (table, needle) in spoiled.items():
        table.write_parquet(tmp_path / name)
        cmd = ["accuracy", "--rollouts-base", str(tmp_path / name), "--rollouts-rl", str(tmp_path / "good.parquet")]
        r = cli([*cmd, "--out", str(tmp_path / "a.parquet")])
        one_line_error(r, f"{tmp_path / name}: {needle}")
    assert not (tmp_path / "a.parquet").exists()
    good.write_parquet(tmp_path / "also_good.parquet")
    cmd = [
        "accuracy",
        "--rollouts-base",
        str(tmp_path / "good.parquet"),
        "--rollouts-rl",
        str(tmp_path / "also_good.parquet"),
    ]
    r = cli([*cmd, "--out", str(tmp_path / "a.parquet")])
    assert r.returncode == 0, r.stderr


def test_accuracy_refuses_one_models_rollouts_as_both_models(tmp_path):
    """One file given as both --base and --rl, or two tables of one checkpoint, would report the same model's
    accuracy twice as a pair's: refused, naming both files (the third hostile pass, 2026-12-05)."""
    from helpers import rollouts

    table = rollouts(0.5).with_columns(pl.lit("models/base@1234").alias("model"))
    table.write_parquet(tmp_path / "base.parquet")
    table.write_parquet(tmp_path / "copy.parquet")
    table.with_columns(pl.lit("models/rl@5678").alias("model")).write_parquet(tmp_path / "rl.parquet")
    out = tmp_path / "a.parquet"
    for rl, needle in (("base.parquet", "the same file"), ("copy.parquet", "the same model 'models/base@1234'")):
        cmd = [
            "accuracy",
            "--rollouts-base",
            str(tmp_path / "base.parquet"),
            "--rollouts-rl",
            str(tmp_path / rl),
            "--out",
            str(out),
        ]
        one_line_error(cli(cmd), tmp_path / rl, needle)
    assert not out.exists()
    cmd = ["accuracy", "--rollouts-base", str(tmp_path / "base.parquet"), "--rollouts-rl", str(tmp_path / "rl.parquet")]
    assert cli([*cmd, "--out", str(out)]).returncode == 0 and out.exists()


def test_an_output_of_another_suffix_is_refused_before_the_stage_runs(tmp_path):
    """`--out x.csv` for a parquet table wrote parquet under a CSV name (the third hostile pass)."""
    from helpers import rollouts

    for name in ("base", "rl"):
        rollouts(0.5).write_parquet(tmp_path / f"{name}.parquet")
    cmd = [
        "accuracy",
        "--rollouts-base",
        str(tmp_path / "base.parquet"),
        "--rollouts-rl",
        str(tmp_path / "rl.parquet"),
        "--out",
    ]
    one_line_error(cli([*cmd, str(tmp_path / "a.csv")]), "a.csv", "expected a .parquet file path")
    one_line_error(
        cli(["csv", str(tmp_path / "base.parquet"), "--out", str(tmp_path / "b.parquet")]),
        "b.parquet",
        "expected a .csv file path",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.parquet", "rl.parquet"]


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    fake = tmp_path / "rollouts.parquet"
    fake.write_text("problem_id,correct\np1,true\n")  # a CSV under a parquet name
    r = cli(
        ["accuracy", "--rollouts-base", str(fake), "--rollouts-rl", str(fake), "--out", str(tmp_path / "a.parquet")]
    )
    one_line_error(r, fake, "not a readable parquet file")
    r = cli(
        [
            "crosssample-table",
            str(tmp_path / "none.parquet"),
            "--pair",
            "p",
            "--dataset",
            "d",
            "--out",
            str(tmp_path / "t.parquet"),
        ]
    )
    one_line_error(r, tmp_path / "none.parquet", "no such file")


def test_gather_joins_parts_in_order_and_names_a_broken_one(tmp_path):
    import polars as pl

    from tokenshift.sharding import write_part

    parts = [tmp_path / f"{i}-of-2.parquet" for i in (1, 2)]
    write_part(pl.DataFrame({"row": [2, 0], "position": [0, 1]}), parts[0])
    write_part(pl.DataFrame({"row": [1], "position": [0]}), parts[1])
    out = tmp_path / "table.parquet"
    r = cli(["gather", *map(str, parts), "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(out)["row"].to_list() == [2, 0, 1]
    r = cli(["gather", *map(str, parts), "--sort-by", "row", "position", "--out", str(out)])
    assert r.returncode == 0 and pl.read_parquet(out)["row"].to_list() == [0, 1, 2]
    parts[1].write_text("row,position\n1,0\n")  # a part that is not parquet: named, the table left alone
    r = cli(["gather", *map(str, parts), "--out", str(tmp_path / "new.parquet")])
    one_line_error(r, parts[1], "not a readable parquet file")
    assert not (tmp_path / "new.parquet").exists()


def test_gather_refuses_a_part_copied_over_another_or_a_table_that_is_no_part(tmp_path):
    import shutil

    from tokenshift.sharding import write_part

    parts = [tmp_path / f"{i}-of-2.parquet" for i in (1, 2)]
    for i, p in enumerate(parts):
        write_part(pl.DataFrame({"row": [i], "position": [0]}), p)
    out = tmp_path / "table.parquet"
    # ninth hostile pass (F16): written outside the writer's folder, so recorded by absolute path, the parts
    # were refused as copies when gathered from their own folder
    gathered = cli(["gather", *(p.name for p in parts), "--out", "t.parquet"], cwd=tmp_path)
    assert gathered.returncode == 0, gathered.stderr
    shutil.copy(parts[0], parts[1])  # the first part's rows twice, the second's lost
    one_line_error(cli(["gather", *map(str, parts), "--out", str(out)]), parts[1], parts[0])
    # one part, of another table's columns (not written as a part): refused all the same
    alone = tmp_path / "1-of-1.parquet"
    pl.DataFrame({"other": ["x"]}).write_parquet(alone)
    one_line_error(cli(["gather", str(alone), "--out", str(out)]), alone, "no record of its place")
    assert not out.exists()


def test_a_damaged_table_of_a_workflow_says_how_to_make_it_again(tmp_path):
    from helpers import rollouts

    table = tmp_path / "results" / "r.parquet"
    table.parent.mkdir()
    rollouts(0.5).write_parquet(table)
    table.write_bytes(table.read_bytes()[:300])  # a finished table, truncated since
    cmd = [
        "accuracy",
        "--rollouts-base",
        "results/r.parquet",
        "--rollouts-rl",
        "results/r.parquet",
        "--out",
        "a.parquet",
    ]
    one_line_error(cli(cmd, cwd=tmp_path), "results/r.parquet", "not a readable parquet file")
    # in a workflow's working directory, but a file no run made there (a copy by hand; the ninth hostile pass's
    # F9, where the hint named a --forcerun target no rule makes): no job to force, no hint
    (tmp_path / ".snakemake").mkdir()
    one_line_error(cli(cmd, cwd=tmp_path), "results/r.parquet", "not a readable parquet file")
    assert "forcerun" not in cli(cmd, cwd=tmp_path).stderr
    # made there by a run and as its job left it (the thirteenth hostile pass's K6: a table of another kind given
    # by hand was said to be damaged, and forcing it advised): nothing to make again, no hint
    made_by_a_run(tmp_path, "results/r.parquet")  # the unreadable file, moved into place by a rule
    one_line_error(cli(cmd, cwd=tmp_path), "results/r.parquet", "not a readable parquet file")
    assert "forcerun" not in cli(cmd, cwd=tmp_path).stderr
    # changed since the job that made it: the job is named, as Snakemake would plan it no more
    table.write_bytes(table.read_bytes()[:200])
    r = cli(cmd, cwd=tmp_path)
    one_line_error(
        r, "results/r.parquet: not a readable parquet file", "`snakemake --cores all all --forcerun results/r.parquet`"
    )
    assert not (tmp_path / "a.parquet").exists()


def test_a_model_path_that_is_no_checkpoint_is_named(tmp_path):
    r = cli(
        [
            "rollout",
            "--model",
            "/nonexistent",
            "--dataset",
            str(tmp_path / "d.parquet"),
            "--out",
            str(tmp_path / "o.parquet"),
        ]
    )
    one_line_error(r)
    assert "/nonexistent" in r.stderr or str(tmp_path / "d.parquet") in r.stderr
    r = cli(
        [
            "models",
            "check-pair",
            "p",
            "--base",
            "/nonexistent",
            "--rl",
            "/nonexistent",
            "--out",
            str(tmp_path / "p.json"),
        ]
    )
    one_line_error(r, "/nonexistent", "not a checkpoint")


def test_check_pair_refuses_one_checkpoint_as_both_models_and_overview_a_suffixed_out(make_checkpoint, tmp_path):
    # fourth hostile pass: both exited 0 (a pair of one model; figure 1 written as x.png beside an asked x.txt)
    from tokenshift.checkpoints import fetch_model

    src = make_checkpoint("m")
    fetch_model("m", {"path": str(src)}, tmp_path / "models" / "m")
    manifest = tmp_path / "models" / "m.json"
    cmd = ["models", "check-pair", "p", "--base", str(manifest), "--rl", str(tmp_path / "models" / "m")]
    one_line_error(cli([*cmd, "--out", str(tmp_path / "p.json")]), "are one checkpoint")
    assert not (tmp_path / "p.json").exists()
    r = cli(["figure-overview", str(tmp_path / "s.parquet"), "--out", str(tmp_path / "x.txt")])
    one_line_error(r, "--out", "x.txt", "without suffix")


def test_crosssample_refuses_models_that_are_not_its_pairs_in_their_roles(make_checkpoint, tmp_path):
    """Sixteenth pass: `crosssample --base A --rl A --pair <p.json>` ran, its rows labelled pair p (whose RL model
    is B); scoring refused the same inputs."""
    from tokenshift.checkpoints import fetch_model
    from tokenshift.datasets import DatasetSpec, prepare_dataset

    for name, seed in (("a", 0), ("b", 1)):
        fetch_model(name, {"path": str(make_checkpoint(name, seed=seed))}, tmp_path / "models" / name)
    a, b = (tmp_path / "models" / f"{n}.json" for n in "ab")
    pair = tmp_path / "p.json"
    assert cli(["models", "check-pair", "p", "--base", a, "--rl", b, "--out", pair]).returncode == 0
    problems = tmp_path / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=2), problems)
    run = ["crosssample", "--pair", pair, "--dataset", problems, "--direction", "forward", "--policy", "argmax"]
    for models, needle in (((a, a), "one checkpoint"), ((b, a), "pair 'p' has base model 'a', where --base")):
        r = cli([*run, "--base", models[0], "--rl", models[1], "--budget", "2", "--out", tmp_path / "o.parquet"])
        one_line_error(r, needle)
    assert not (tmp_path / "o.parquet").exists()


def test_an_output_that_cannot_be_written_is_named_and_nothing_is_left(tmp_path):
    from helpers import rollouts

    table = tmp_path / "r.parquet"
    rollouts(0.5).write_parquet(table)
    other = tmp_path / "o.parquet"
    rollouts(0.5).write_parquet(other)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    r = cli(
        ["accuracy", "--rollouts-base", str(table), "--rollouts-rl", str(other), "--out", str(blocker / "a.parquet")]
    )
    one_line_error(r, blocker)
    taken = tmp_path / "taken"
    taken.mkdir()  # a directory where the table should go: the write fails at the last step
    r = cli(["accuracy", "--rollouts-base", str(table), "--rollouts-rl", str(other), "--out", str(taken)])
    one_line_error(r, "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "blocker",
        "o.parquet",
        "r.parquet",
        "taken",
    ]  # no partial file


def test_crosssample_table_refuses_a_run_twice_or_runs_of_two_pairs(tmp_path):
    from helpers import cross_run

    a = tmp_path / "a.parquet"
    cross_run("forward", "js", "2", 0.5, 2).with_columns(pl.lit("p").alias("pair")).write_parquet(a)
    b = tmp_path / "b.parquet"
    cross_run("forward", "js", "4", 0.5, 4).with_columns(pl.lit("q").alias("pair")).write_parquet(b)
    cmd = [
        "crosssample-table",
        "--pair",
        "p",
        "--dataset",
        "d",
        "--out",
        str(tmp_path / "t.parquet"),
    ]
    one_line_error(cli([*cmd, str(a), str(a)]), f"{a}: given twice: expected each run once")
    copy = tmp_path / "copy.parquet"  # the same run in another file: two runs of one cell
    copy.write_bytes(a.read_bytes())
    one_line_error(cli([*cmd, str(a), str(copy)]), "two runs of direction forward, policy js, budget 2")
    one_line_error(cli([*cmd, str(a), str(b)]), "pair ['q']")
    assert not (tmp_path / "t.parquet").exists()
    r = cli([*cmd, str(a)])
    assert r.returncode == 0, r.stderr


# issue 24.9: wrong-type or empty inputs that ended in a traceback, each now one line naming the file


def test_gather_refuses_parts_of_two_runs_and_an_unknown_sort_column(tmp_path):
    from tokenshift.sharding import write_part

    parts = [tmp_path / f"{i}-of-3.parquet" for i in (1, 2, 3)]
    write_part(pl.DataFrame({"row": ["0"], "position": [0]}), parts[0])  # another table's column type
    for p in parts[1:]:
        write_part(pl.DataFrame({"row": [1], "position": [0]}), p)
    out = tmp_path / "table.parquet"
    # the part whose columns differ from the others' is named, not the healthy part after it
    r = cli(["gather", *map(str, parts), "--out", str(out)])
    one_line_error(r, f"{parts[0]}: not a part of the same run as {parts[1]}", "'row'")
    parts = [tmp_path / "run" / f"{i}-of-2.parquet" for i in (1, 2)]
    parts[0].parent.mkdir()
    for p in parts:
        write_part(pl.DataFrame({"row": [1], "position": [0]}), p)
    r = cli(["gather", *map(str, parts), "--sort-by", "rows", "--out", str(out)])
    one_line_error(r, "--sort-by 'rows'", "['row', 'position']")
    r = cli(["gather", *map(str, parts), "--sort-by", "row", "row", "--out", str(out)])
    one_line_error(r, "--sort-by 'row' given twice")  # was polars' DuplicateError traceback
    assert not out.exists()


def test_figures_given_the_wrong_tables_name_the_file_and_the_table_expected(tmp_path):
    from helpers import rollouts

    from tokenshift.registry import DIVERGENCE_FIGURES

    tables = []
    for name in DIVERGENCE_FIGURES:  # each an accuracy run's rows, not a divergence table
        rollouts(0.5).write_parquet(tmp_path / f"{name}.parquet")
        tables.append(f"--{name}={tmp_path / name}.parquet")
    r = cli(["figures", *tables, "--out-dir", str(tmp_path / "f")])
    one_line_error(r, tmp_path / f"{DIVERGENCE_FIGURES[0]}.parquet", "has no column", "(tokenshift divergence)")
    # a cross-sampled pair's two tables come together
    r = cli(["figures", *tables, "--accuracy", str(tmp_path / "a.parquet"), "--out-dir", "f"])
    one_line_error(r, "expected position, entropy, reallocation, and accuracy with crosssample")
    shifts = tmp_path / "shifts.parquet"
    rollouts(0.5).write_parquet(shifts)
    r = cli(["figure-training", "--shifts", str(shifts), "--out-dir", str(tmp_path / "f")])
    one_line_error(r, shifts, "has no column 'step'", "a training-shifts table")
    r = cli(["figure-training", "--curve", str(shifts), "--out-dir", str(tmp_path / "f")])
    one_line_error(r, "--curve and --comparison: expected both")
    # tenth hostile pass (G3): with nothing to draw it said "wrote  to f" and exited 0
    one_line_error(cli(["figure-training", "--out-dir", str(tmp_path / "f")]), "nothing to draw")
    # and a pair's kind given twice, the last one winning unsaid
    r = cli(["figure-overview", str(shifts), "--kind", "p=sft", "--kind", "p=rlvr", "--out", "o"])
    one_line_error(r, "--kind p=...: given twice (sft, rlvr)")


def test_crosssample_with_scores_without_rows_names_the_scores(make_checkpoint, tmp_path):
    from tokenshift.datasets import DatasetSpec, prepare_dataset

    problems = tmp_path / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=2), problems)
    scores = tmp_path / "scores.parquet"
    pl.DataFrame(
        {"js": [], "entropy_base": [], "entropy_rl": []},
        schema=dict.fromkeys(["js", "entropy_base", "entropy_rl"], pl.Float32),
    ).write_parquet(scores)
    base, rl = make_checkpoint("base"), make_checkpoint("rl", seed=1)
    r = cli(
        ["crosssample", "--base", str(base), "--rl", str(rl), "--dataset", str(problems), "--direction", "forward"]
        + ["--policy", "js", "--budget", "2", "--percentile", "90", "--scores", str(scores)]
        + ["--out", str(tmp_path / "o.parquet")]
    )
    one_line_error(r, scores, "no scored positions", "90")


def test_rollout_crosssample_and_score_refuse_a_problems_or_rollout_table_as_accuracy_does(make_checkpoint, tmp_path):
    """Fourteenth hostile pass (L2, L3): `--dataset` given a zero-row table, a folder or a file that is no parquet
    was an IndexError or a polars traceback in rollout and crosssample; a table concatenated with itself, a null
    answer or a numeric question were sampled and scored, and `score --rollouts` scored a doubled or an empty
    rollout table, all of which accuracy and divergence refuse."""
    from tokenshift.datasets import DatasetSpec, prepare_dataset

    problems = tmp_path / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=3), problems)
    table = pl.read_parquet(problems)
    bad = {
        "no rows": (table.head(0), "has no rows"),
        "doubled": (pl.concat([table, table]), "share their problem_id"),
        "null answer": (table.with_columns(pl.lit(None, pl.String).alias("answer")), "answer"),
        "numeric question": (table.with_columns(pl.lit(7).alias("question")), "question"),
    }
    paths = {}
    for name, (frame, needle) in bad.items():
        paths[name] = (tmp_path / f"{name.replace(' ', '_')}.parquet", needle)
        frame.write_parquet(paths[name][0])
    (tmp_path / "x.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    paths["not parquet"] = (tmp_path / "x.jsonl", "x.jsonl")
    paths["a folder"] = (tmp_path, str(tmp_path))
    from tokenshift.checkpoints import write_manifest

    base, rl = make_checkpoint("base"), make_checkpoint("rl", seed=1)
    for role, ckpt in (("base", base), ("rl", rl)):
        write_manifest(ckpt, name=role, spec={"path": str(ckpt)})
    out = tmp_path / "o.parquet"
    for name, (path, needle) in paths.items():
        for argv in (
            ["rollout", "--model", str(base), "--dataset", str(path), "--n", "1", "--max-new-tokens", "4"],
            ["crosssample", "--base", str(base), "--rl", str(rl), "--dataset", str(path), "--direction", "forward"]
            + ["--policy", "argmax", "--budget", "2", "--max-new-tokens", "4"],
        ):
            r = cli([*argv, "--out", str(out)])
            one_line_error(r, needle)
            assert not out.exists(), name
    # the rollouts a score job reads: none, or each response twice
    from tokenshift.tokenizer import check_pair

    pair = tmp_path / "pair.json"
    check_pair("p", base, rl, pair)
    r = cli(
        ["rollout", "--model", str(base), "--dataset", str(problems), "--n", "1", "--max-new-tokens", "4"]
        + ["--out", str(out)]
    )
    assert r.returncode == 0, r.stderr
    rolled = pl.read_parquet(out)
    for frame, needle in ((rolled.head(0), "has no rows"), (pl.concat([rolled, rolled]), "share their problem_id")):
        frame.write_parquet(tmp_path / "r.parquet")
        score = [
            "score",
            "--base",
            str(base),
            "--rl",
            str(rl),
            "--pair",
            str(pair),
            "--rollouts",
            str(tmp_path / "r.parquet"),
        ]
        r = cli([*score, "--source", "base", "--out", str(tmp_path / "s.parquet")])
        one_line_error(r, "r.parquet", needle)
        assert not (tmp_path / "s.parquet").exists()


def test_a_gpu_device_the_job_cannot_have_is_one_line_naming_the_setting(make_checkpoint, tmp_path):
    # eighth hostile pass: "Torch not compiled with CUDA enabled", a traceback from the first .to(device)
    import torch

    from tokenshift.datasets import DatasetSpec, prepare_dataset

    problems = tmp_path / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=2), problems)
    base, rl = make_checkpoint("base"), make_checkpoint("rl", seed=1)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for flag, device in (("--device-base", "cuda"), ("--device-rl", "cuda:0,99"), ("--device-base", "meta")):
        if visible and device == "cuda":
            continue  # a GPU machine has cuda:0
        r = cli(
            ["crosssample", "--base", str(base), "--rl", str(rl), "--dataset", str(problems)]
            + ["--direction", "forward", "--policy", "argmax", "--budget", "2", flag, device]
            + ["--out", str(tmp_path / "o.parquet")]
        )
        one_line_error(r, f"{flag.removeprefix('--').replace('-', '_')} ({flag}) {device!r}: ")
        assert not (tmp_path / "o.parquet").exists()
    # ninth hostile pass (F19): a device that is none (`meta`, `mps`, ` cuda`) was a RuntimeError traceback
    from tokenshift.io import InputError
    from tokenshift.loading import check_devices

    for device in ("mps", " cuda", "CUDA", "", "cpu,cpu", "cuda:", "cuda:0,", "cuda\n"):
        with pytest.raises(InputError, match=r"^device_rl \(--device-rl\) .*: expected auto, cpu, cuda, cuda:<i>"):
            check_devices({"device_base": "cpu", "device_rl": device})
    check_devices({"device_base": "auto", "device_rl": "cpu"})


def test_a_budget_that_is_no_count_of_tokens_is_one_line(make_checkpoint, tmp_path):
    """Sixteenth pass: a budget past int64 ran to the decoder's first step and died in an OverflowError."""
    from tokenshift.datasets import DatasetSpec, prepare_dataset

    problems = tmp_path / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=2), problems)
    base, rl = make_checkpoint("base"), make_checkpoint("rl", seed=1)
    for budget in ("99999999999999999999", "-1", "2.0", "al"):
        r = cli(
            ["crosssample", "--base", str(base), "--rl", str(rl), "--dataset", str(problems)]
            + ["--direction", "forward", "--policy", "argmax", "--budget", budget, "--out", str(tmp_path / "o.parquet")]
        )
        one_line_error(r, f"budget {budget!r}: expected ")
    assert not (tmp_path / "o.parquet").exists()


def test_report_with_a_config_that_is_not_text_names_it(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    r = cli(
        ["report", "--result", f"accuracy={tmp_path / 'accuracy.parquet'}", "--config", str(config)]
        + ["--html", str(tmp_path / "r.html"), "--json", str(tmp_path / "s.json")]
    )
    one_line_error(r, config, "not UTF-8 text", "the config the run used")
    config.write_text("models: [toy\n")  # text, but no YAML: the report quoted it as the run's config
    r = cli(
        ["report", "--result", f"accuracy={tmp_path / 'accuracy.parquet'}", "--config", str(config)]
        + ["--html", str(tmp_path / "r.html"), "--json", str(tmp_path / "s.json")]
    )
    one_line_error(r, config, "not YAML", "the config the run used")
    config.write_text("[" * 5000)  # seventeenth pass: a RecursionError traceback
    r = cli(
        ["report", "--result", f"accuracy={tmp_path / 'accuracy.parquet'}", "--config", str(config)]
        + ["--html", str(tmp_path / "r.html"), "--json", str(tmp_path / "s.json")]
    )
    one_line_error(r, config, "nested too deep to read")
    config.write_text("sampling: {n: " + "9" * 5000 + "}\n")  # its twin of the twenty-second pass: a traceback
    r = cli(
        ["report", "--result", f"accuracy={tmp_path / 'accuracy.parquet'}", "--config", str(config)]
        + ["--html", str(tmp_path / "r.html"), "--json", str(tmp_path / "s.json")]
    )
    one_line_error(r, config, "a value Python cannot read", "4300 digits")


def test_toy_check_of_a_pair_whose_rl_model_is_no_toy_model_names_it(make_checkpoint, tmp_path):
    import dataclasses
    import json

    from helpers import other_tokenizer

    from tokenshift.toy.config import ToyBuildConfig

    base = make_checkpoint("base")  # the toy tokenizer, and the record a toy build leaves
    (base / "toy_build.json").write_text(json.dumps({"build": dataclasses.asdict(ToyBuildConfig())}))
    rl = make_checkpoint("rl", other_tokenizer(["other words entirely, nothing alike"] * 20))
    r = cli(["toy-check", "--base", str(base), "--rl", str(rl), "--out", str(tmp_path / "tc")])
    one_line_error(r, rl, "not that of the toy base model")


def test_toy_check_of_one_model_as_both_or_of_a_seed_past_numpys_is_refused(make_checkpoint, tmp_path):
    # eighth hostile pass: the pair's base model against itself, exit 0; a seed of 2**32 (numpy takes none larger)
    import json

    from tokenshift.toy.config import ToyBuildConfig

    base = make_checkpoint("base")  # the toy tokenizer, and the record a toy build leaves
    (base / "toy_build.json").write_text(json.dumps({"build": dataclasses.asdict(ToyBuildConfig())}))
    r = cli(["toy-check", "--base", str(base), "--rl", str(base), "--out", str(tmp_path / "tc")])
    one_line_error(r, "the same checkpoint as the base and the RL model")
    assert not (tmp_path / "tc").exists()
    r = cli(["toy-check", "--base", "b", "--rl", "r", "--out", "o", "--seed=4294967296"])
    assert r.returncode == 2 and "--seed: expected a value <= 4294967295" in r.stderr, r.stderr


def test_divergence_on_toy_problems_without_a_tokenizer_says_it_needs_one(tmp_path):
    from helpers import fake_scores

    from tokenshift.datasets import DatasetSpec, prepare_dataset

    problems = tmp_path / "toy.parquet"
    prepare_dataset("toy", DatasetSpec(toy="eval", n_problems=30), problems)
    ids = {f"q{i}": p for i, p in enumerate(pl.read_parquet(problems)["problem_id"])}  # scores of its problems
    scores = tmp_path / "scores.parquet"
    fake_scores().with_columns(token_id=pl.lit(5), problem_id=pl.col("problem_id").replace_strict(ids)).write_parquet(
        scores
    )
    r = cli(
        ["divergence", "--scores-base", str(scores), "--scores-rl", str(scores), "--problems", str(problems)]
        + ["--pair", "p", "--dataset", "toy", "--out-dir", str(tmp_path / "d")]
    )
    one_line_error(r, problems, "--tokenizer")


def test_report_with_an_overview_that_is_not_a_png_names_it(tmp_path):
    # issue 24.10: a parquet given as the overview figure was embedded as an image
    table = tmp_path / "sparsity.parquet"
    pl.DataFrame({"js": [0.1]}).write_parquet(table)
    r = cli(
        ["report", "--result", f"accuracy={tmp_path / 'accuracy.parquet'}", "--overview", str(table)]
        + ["--html", str(tmp_path / "r.html"), "--json", str(tmp_path / "s.json")]
    )
    one_line_error(r, table, "not a PNG image")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(("flag", "value"), [("--jobs", "-5"), ("--jobs", "0"), ("--gpus-per-node", "0")])
def test_profile_install_refuses_a_count_below_one(tmp_path, flag, value):
    r = cli(
        ["profile", "install", "slurm", "--partition", "cpu", "--gpu-partition", "gpu", flag, value]
        + ["--dir", str(tmp_path / "profile")]
    )
    assert r.returncode == 2 and f"argument {flag}: expected a value >= 1, got {value}" in r.stderr, r.stderr
    assert not (tmp_path / "profile").exists()


@pytest.mark.parametrize(("flag", "value"), [("--account", "lab\nslurm_extra: --wrap=x"), ("--gpu-model", "a100-80gb")])
def test_profile_install_refuses_a_value_the_profile_cannot_hold(tmp_path, flag, value):
    # issue 24 (F1): a newline wrote a key of its own; a GPU model the SLURM plugin refuses failed every GPU job
    r = cli(
        ["profile", "install", "slurm", "--partition", "cpu", "--gpu-partition", "gpu", flag, value]
        + ["--dir", str(tmp_path / "profile")]
    )
    one_line_error(r, f"{flag} {value!r}: expected")
    assert not (tmp_path / "profile").exists()


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_profile_install_into_a_file_says_it_is_not_a_folder(tmp_path, where):
    # twelfth hostile pass: `--dir /dev/null` said only "File exists"
    (tmp_path / "f").write_text("kept")
    target = tmp_path / "f" if where == "a file" else tmp_path / "f" / "profile"
    r = cli(["profile", "install", "slurm", "--partition", "cpu", "--gpu-partition", "gpu", "--status-command"]
            + ["sacct", "--dir", str(target)])  # fmt: skip
    one_line_error(r, str(target), "expected a folder")
    assert (tmp_path / "f").read_text() == "kept"


def test_a_job_run_by_another_package_than_the_workflows_is_refused_before_anything_runs(tmp_path):
    # issue 28: the workflow sets TOKENSHIFT_PACKAGE to the package it planned with (common.smk)
    from tokenshift.codehash import PACKAGE_ENV, running_package

    out = tmp_path / "toy.parquet"
    args = ["dataset", "toy", "--toy", "eval", "--n-problems", "2", "--out", str(out)]
    r = cli(args, env={PACKAGE_ENV: "0" * 64})
    one_line_error(r, "not the package the workflow planned it with")
    assert not out.exists()
    assert cli(args, env={PACKAGE_ENV: running_package()}).returncode == 0 and out.is_file()


def _subcommands(parser, prefix=()):
    """(command words, parser) of every subcommand, nested ones (``models fetch``) included."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subcommands(sub, (*prefix, name))


def test_every_output_option_is_checked_before_its_stage_runs():
    from tokenshift.cli import build_parser

    for words, sub in _subcommands(build_parser()):
        flags = {
            o
            for a in sub._actions
            for o in a.option_strings
            if o in ("--out", "--out-dir", "--html", "--json", "--example-table")
        }
        assert flags == {flag for flag, *_ in sub.get_default("outputs") or []}, words


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["dataset", "toy", "--toy", "eval", "--n-problems", "2", "--out", "{dir}"], "--out {dir}: is a directory"),
        (["gather", "{file}", "--out", "{dir}"], "--out {dir}: is a directory; expected a .parquet file path"),
        (
            ["report", "--result", "accuracy={file}", "--html", "{dir}", "--json", "{dir}/s.json"],
            "--html {dir}: is a directory; expected an",
        ),
        (
            [
                "figures",
                "--position",
                "{file}",
                "--entropy",
                "{file}",
                "--reallocation",
                "{file}",
                "--out-dir",
                "{file}",
            ],
            "--out-dir {file}: is a file; expected a directory",
        ),
    ],
    ids=["dataset", "gather", "report", "figures"],
)
def test_an_output_path_of_the_wrong_kind_is_one_line_naming_the_flag(tmp_path, args, needle):
    # issue 24 (F16): `--out /tmp` named a temporary file, or ended in a traceback, after the stage's work
    folder, file = tmp_path / "taken", tmp_path / "r.parquet"
    folder.mkdir()
    pl.DataFrame({"row": [0]}).write_parquet(file)
    r = cli([a.format(dir=folder, file=file) for a in args])
    one_line_error(r, needle.format(dir=folder, file=file))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.parquet", "taken"] and not any(folder.iterdir())


def test_record_config_refuses_what_is_no_json_object_in_one_line(tmp_path):
    out = tmp_path / "c.yaml"
    deep = '{"a":' * 20_000 + "1" + "}" * 20_000  # eleventh hostile pass (H8): a RecursionError traceback
    for text, needle in (("[1, 2]", "a JSON list; expected an object"), ("{", "not JSON"), (deep, "nested too deep")):
        one_line_error(cli(["record-config", text, "--out", str(out)]), needle)
    assert not out.exists()
    r = cli(["record-config", '{"b": 1, "a": {"x": "\u6f22"}}', "--out", str(out)])
    assert r.returncode == 0 and yaml.safe_load(out.read_text()) == {"b": 1, "a": {"x": "\u6f22"}}


def test_an_input_given_as_name_equals_path_is_not_overwritten_by_an_output(tmp_path):
    # the report's files come as NAME=PATH words, appended in lists: an output over one is refused all the same
    given = tmp_path / "s.json"
    given.write_text("{}")
    r = cli(
        ["report", "--result", "position.png=p.png", f"accuracy={given}", "--result", "accuracy=b.parquet"]
        + ["--html", str(tmp_path / "r.html"), "--json", str(given)]
    )
    one_line_error(r, f"--json {given}: is also an input of this stage (result accuracy={given})")
    assert given.read_text() == "{}"


def test_an_atomic_write_over_a_directory_names_the_directory(tmp_path):
    from tokenshift.io import write_parquet_atomic

    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError) as e:  # the library's callers: named as given, not as its temporary file
        write_parquet_atomic(pl.DataFrame({"a": [1]}), tmp_path / "taken")
    assert e.value.filename == str(tmp_path / "taken") and [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_toy_checks_flags_are_those_of_its_options_class():
    """Issue 27.3: the workflow writes toy-check's flags from ToyCheckOptions, as the command reads them."""
    from tokenshift.cli import build_parser
    from tokenshift.options import to_argv
    from tokenshift.toy.config import ToyCheckOptions

    values = {"n_problems": 37, "samples": 3, "seed": 11}
    argv = ["toy-check", "--base", "b", "--rl", "r", "--out", "o", *to_argv(ToyCheckOptions, values)]
    args = build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in values} == values
    defaults = build_parser().parse_args(argv[:7])
    assert {k: getattr(defaults, k) for k in values} == dataclasses.asdict(ToyCheckOptions())


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_flag_that_is_not_finite_is_refused(value):
    """Ninth hostile pass: `--temperature=nan` sampled garbage and `--mistake-rate=nan` built a toy on it (NaN
    passes every bound, as no comparison with it is true); `--pretrain-lr=nan` was a traceback."""
    for argv in (["rollout", f"--temperature={value}"], ["models", "toy-base", "x", f"--mistake-rate={value}"]):
        r = cli(argv)
        assert r.returncode == 2 and f"expected a finite number, got '{value}'" in r.stderr, r.stderr


def test_a_whole_number_flag_past_int64_is_refused():
    """Fifteenth hostile pass (M9): `divergence --rank-k 99999999999999999999` was an OverflowError traceback; the
    config refuses such a number anywhere (config.MAX_INTEGER), now the flags do too."""
    r = cli(["divergence", "--rank-k", "1", str(2**63), "--scores-base", "b", "--scores-rl", "r", "--out", "o"])
    assert r.returncode == 2 and f"expected a whole number of at most 2**63 - 1, got {2**63}" in r.stderr, r.stderr


def test_accuracy_refuses_a_pair_manifest_that_names_no_pair(tmp_path):
    """Twelfth hostile pass (J7): `{}` or a model's manifest as --pair-manifest passed, so swapped rollouts went
    unseen; a list as a model's name was a TypeError traceback."""
    from helpers import rollouts

    table = rollouts(0.5)
    table.with_columns(pl.lit("models/a@1").alias("model")).write_parquet(tmp_path / "base.parquet")
    table.with_columns(pl.lit("models/b@2").alias("model")).write_parquet(tmp_path / "rl.parquet")
    cmd = ["accuracy", "--rollouts-base", tmp_path / "base.parquet", "--rollouts-rl", tmp_path / "rl.parquet"]
    manifest = tmp_path / "pair.json"
    for text, needle in (
        ("{}", "'pair' is None; expected a name"),
        ('{"pair": "p", "base": ["a"], "rl": "b", "shared_vocab_size": 5}', "'base' is ['a']; expected a name"),
        ('{"pair": "p", "base": "a", "rl": "b"}', "shared_vocab_size is None"),
    ):
        manifest.write_text(text)
        one_line_error(cli([*cmd, "--pair-manifest", manifest, "--out", tmp_path / "a.parquet"]), manifest, needle)
    assert not (tmp_path / "a.parquet").exists()


def test_toy_builds_refuse_an_impossible_task_an_overflowing_rate_and_a_start_that_is_no_toy_model(
    make_checkpoint, tmp_path
):
    """Twelfth hostile pass: min_steps above max_steps (J9) and a learning rate of 1e308 (J6) were tracebacks,
    and a toy RL build from a checkpoint that is no toy model ran GRPO for minutes (J11)."""
    out = ["--out", tmp_path / "t"]
    one_line_error(cli(["models", "toy-base", "t", "--min-steps", "5", "--max-steps", "3", *out]), "min_steps 5")
    r = cli(["models", "toy-base", "t", "--pretrain-lr", "1e308", *out])
    assert r.returncode == 2 and "--pretrain-lr" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # fourteenth hostile pass, noticed: the command took a chance of 1.5, which the config refuses
    r = cli(["models", "toy-base", "t", "--mistake-rate", "1.5", *out])
    assert r.returncode == 2 and "--mistake-rate" in r.stderr and "<= 1" in r.stderr, r.stderr
    other = make_checkpoint("other")
    for stage in ("toy-rl", "toy-sft"):
        one_line_error(cli(["models", stage, "t", "--init", other, *out]), f"{other}: no toy_build.json")
    assert not (tmp_path / "t").exists()


def test_the_toy_datasets_shares_are_chances(tmp_path):
    """Sixteenth pass: `dataset toy --eval-share 1e308` was an OverflowError traceback, and a share above 1 (or a
    trace's mistake rate) means nothing."""
    for flag, value in (("--eval-share", "1e308"), ("--eval-share", "1.5"), ("--mistake-rate", "2")):
        r = cli(["dataset", "toy", "--toy=eval", flag, value, "--out", tmp_path / "d.parquet"])
        assert r.returncode == 2 and flag in r.stderr and "<= 1" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "d.parquet").exists()


def test_an_advantage_runs_seed_is_a_seed(tmp_path):
    """Sixteenth pass: `advantages run --seed 99999999999999999999` loaded the model and died in torch's
    "Overflow when unpacking long long"; the config's seeds are 0 to 2**32 - 1, and so is the flag now."""
    for seed in ("99999999999999999999", "4294967296", "-1"):
        r = cli(
            ["advantages", "run", "--base", tmp_path / "b", "--variant", "js", "--seed", seed, "--out", tmp_path / "o"]
        )
        assert r.returncode == 2 and "--seed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_an_argument_that_is_not_utf8_is_one_line(tmp_path):
    """Sixteenth pass: bytes that are not UTF-8 (Python's lone surrogates) in a template, an output path or a
    name were tracebacks from the tokenizer, polars and the manifest's JSON."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n')
    for argv in (
        ["dataset", "d\udcff", "--path", data, "--out", tmp_path / "o.parquet"],
        ["dataset", "d", "--path", data, "--out", tmp_path / "o\udcff.parquet"],
        [
            "rollout",
            "--model",
            tmp_path,
            "--dataset",
            data,
            "--template={question}\udcfe",
            "--out",
            tmp_path / "o.parquet",
        ],
    ):
        one_line_error(cli(argv), "is not UTF-8 text: expected UTF-8")
    assert not list(tmp_path.glob("o*"))


def test_a_loop_of_links_or_a_folder_with_no_name_is_one_line(tmp_path):
    """Eighteenth pass: pathlib's RuntimeError for a loop of symbolic links (the gather's and the cross-sampling
    table's check for a part given twice resolve their paths) and its ValueError for the checkpoint `/`."""
    (tmp_path / "a.parquet").symlink_to("b.parquet")
    (tmp_path / "b.parquet").symlink_to("a.parquet")
    loop = tmp_path / "a.parquet"
    for argv in (
        ["gather", loop, "--out", tmp_path / "o.parquet"],
        ["gather", tmp_path / "p.parquet", f"--out={loop}"],
        ["crosssample-table", loop, "--pair", "p", "--dataset", "d", "--out", tmp_path / "o.parquet"],
    ):
        one_line_error(cli(argv), f"{loop}: a loop of symbolic links (expected a file or folder)")
    for model in ("/", "."):
        argv = ["rollout", "--model", model, "--dataset", tmp_path / "d.parquet", "--out", tmp_path / "o.parquet"]
        one_line_error(cli(argv, cwd=tmp_path), "the root folder" if model == "/" else ".: not a checkpoint")
    # and a table that is a device or a folder was "no such file"
    for table, needle in (("/dev/null", "not a regular file (a device"), (tmp_path, "a folder, not a file")):
        one_line_error(cli(["gather", table, "--out", tmp_path / "o.parquet"]), f"{table}: {needle}")
    assert not list(tmp_path.glob("o*"))


def test_a_checkpoint_folder_whose_weights_are_cut_short_is_one_line(make_checkpoint, tmp_path):
    """Nineteenth pass: a stage given a folder no fetch vouched for, its weights cut short, died in safetensors'
    traceback (the fetch refused such weights; the stages read them)."""
    ckpt = make_checkpoint("cut")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    (tmp_path / "d.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    data = tmp_path / "d.parquet"
    assert cli(["dataset", "d", "--path", tmp_path / "d.jsonl", "--out", data]).returncode == 0
    argv = ["rollout", "--model", ckpt, "--dataset", data, "--no-chat-template", "--out", tmp_path / "o.parquet"]
    one_line_error(cli(argv), f"{weights} is not a whole safetensors file")


def test_a_jsonl_row_giving_a_key_twice_is_refused_naming_the_line(tmp_path):
    """Twelfth hostile pass (J10): the last of two `answer`s was taken without a word."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "x", "answer": "2", "answer": "3"}\n')
    one_line_error(cli(dataset_cmd(data, tmp_path / "d.parquet")), f"{data}:2 gives the key 'answer' twice")


def test_a_build_fetch_or_dataset_replaces_only_what_its_own_stage_wrote(make_checkpoint, tmp_path):
    """Fourteenth hostile pass (L5): `models toy-base --out <a user's checkpoint>` wrote its files over it; `dataset
    --out resources/models/toy-base.parquet` wrote a dataset's manifest over the model's (`toy-base.json`), and a
    fetch into `resources/datasets/toy` over the dataset's. Each is refused before anything is written."""
    tiny = ["--pretrain-steps", "2", "--n-traces", "64", "--n-train-problems", "64", "--hidden-size", "8"]
    tiny += ["--num-layers", "1", "--threads", "1"]
    user = make_checkpoint("user")
    before = {p.name: p.read_bytes() for p in user.iterdir()}
    one_line_error(cli(["models", "toy-base", "t", *tiny, "--out", str(user)]), user, "not a toy build's folder")
    assert {p.name: p.read_bytes() for p in user.iterdir()} == before
    # a new path, then an earlier toy build's folder, are built into (beside it first: nothing half-written there),
    # as an empty folder is
    base = tmp_path / "m" / "base"
    (tmp_path / "empty").mkdir()
    assert cli(["models", "toy-base", "e", *tiny, "--out", str(tmp_path / "empty")]).returncode == 0
    for _ in range(2):
        assert cli(["models", "toy-base", "base", *tiny, "--out", str(base)]).returncode == 0
    assert sorted(p.name for p in base.parent.iterdir()) == [".base.fingerprints.json", "base", "base.json"]
    from tokenshift.io import umask

    # built in a mkdtemp folder (0700), which a group sharing the results could not read (fifteenth pass, noticed)
    assert base.stat().st_mode & 0o777 == 0o777 & ~umask()
    init = ["--init", str(tmp_path / "m" / "base.json")]
    r = cli(["models", "toy-sft", "s", *init, "--sft-steps", "1", *tiny, "--out", str(base / "sub")])
    one_line_error(r, "lies inside, the checkpoint the build starts from")
    # one stage's manifest over another's
    manifest = (tmp_path / "m" / "base.json").read_bytes()
    r = cli(["dataset", "d", "--toy", "eval", "--n-problems", "3", "--out", str(tmp_path / "m" / "base.parquet")])
    one_line_error(r, tmp_path / "m" / "base.json", "is not a dataset's manifest")
    assert (tmp_path / "m" / "base.json").read_bytes() == manifest
    problems = tmp_path / "d" / "toy.parquet"
    assert cli(["dataset", "toy", "--toy", "eval", "--n-problems", "3", "--out", str(problems)]).returncode == 0
    dataset_manifest = (tmp_path / "d" / "toy.json").read_bytes()
    for argv in (["models", "fetch", "a", "--path", str(user)], ["models", "toy-base", "a", *tiny]):
        one_line_error(cli([*argv, "--out", str(tmp_path / "d" / "toy")]), "toy.json", "is not a checkpoint's manifest")
    assert (tmp_path / "d" / "toy.json").read_bytes() == dataset_manifest


def test_profile_install_into_a_folder_says_how_snakemake_finds_it_there(tmp_path):
    """Fourteenth hostile pass (L9): installed with --dir, the profile was announced as `--profile slurm`, which
    Snakemake looks for in its own profile folders, not there."""
    target = tmp_path / "my profiles" / "q1"
    r = cli(["profile", "install", "slurm", "--partition", "cpu", "--gpu-partition", "gpu", "--dir", str(target)])
    assert r.returncode == 0, r.stderr
    assert f"run the workflow with: snakemake --profile '{target.resolve()}' all" in r.stderr
    assert (target / "config.yaml").is_file()


def test_a_command_registers_its_own_modules_subcommands_alone_and_every_one_is_listed_where_it_is_owned(tmp_path):
    """Twenty-first pass: every stage ran every other stage's ``register`` (the parser registered them all), which
    no stage's code hash covers: a statement added to the score stage's ran in the rollouts unhashed."""
    from tokenshift.cli import COMMANDS, build_parser

    every = _subparsers(build_parser())
    assert sorted(every) == sorted(name for names in COMMANDS.values() for name in names)
    for module, names in COMMANDS.items():
        for name in names:
            assert sorted(_subparsers(build_parser(name))) == sorted(names)
            handlers = {s.get_default("func") for s in _subcommand_parsers(every[name])}
            assert {h.__module__ for h in handlers} == {module.__name__}, name
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    score = src / "tokenshift" / "cli" / "score.py"
    text = score.read_text()
    assert text.count("\ndef register(sub") == 1
    head, tail = text.split("\ndef register(sub")
    signature, body = tail.split("\n", 1)
    marker = "    __import__('sys').stderr.write('score.register ran')\n"
    score.write_text(f"{head}\ndef register(sub{signature}\n{marker}{body}")
    env = {**os.environ, "PYTHONPATH": str(src)}

    def ran(*words: str) -> bool:
        r = subprocess.run([sys.executable, "-m", "tokenshift", *words], env=env, capture_output=True, text=True)
        assert r.returncode in (0, 2), r.stderr
        return "score.register ran" in r.stderr

    assert not ran("rollout", "--help") and not ran("-v", "gather", "--help")
    assert ran("score", "--help") and ran("divergence", "--help") and ran("--help") and ran("no-such-stage")


def _subparsers(parser) -> dict:
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


def _subcommand_parsers(parser) -> list:
    """``parser``, or the parsers of its subcommands where it has them (``models fetch``)."""
    subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return [p for s in subs for p in s.choices.values()] or [parser]


@pytest.mark.parametrize(
    "words",
    [
        ["models", "fetch", "x", "--path=", "--out", "m"],
        ["models", "fetch", "x", "--hub=", "--revision=abc", "--out", "m"],
        ["models", "fetch", "x", "--hub=a/b", "--revision=", "--out", "m"],
        ["dataset", "x", "--path=", "--out", "d.parquet"],
        ["dataset", "x", "--hub=", "--revision=abc", "--out", "d.parquet"],
        ["dataset", "x", "--path=set.jsonl", "--question-field=", "--out", "d.parquet"],
    ],
)
def test_an_empty_value_where_an_option_has_no_empty_meaning_is_refused_naming_it(tmp_path, words):
    """Twenty-first pass: `--path=` was the folder '.', `--hub=` a download of hub id None or an IndexError."""
    r = cli(words, cwd=tmp_path)
    flag = next(w.partition("=")[0] for w in words if w.endswith("="))
    assert r.returncode == 2 and f"argument {flag}: expected a value, got an empty one" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_dataset_path_that_is_no_regular_file_is_named_as_what_it_is(tmp_path, kind):
    path = {"device": Path("/dev/null")}.get(kind, tmp_path / "set.jsonl")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    r = cli(dataset_cmd(path, tmp_path / "d.parquet"))
    held = "a folder, not a file" if kind == "folder" else "not a regular file (a device, a pipe or a socket)"
    one_line_error(r, f"{path}: {held}")
    assert not (tmp_path / "d.parquet").exists()


def test_a_dataset_line_holding_a_line_separator_inside_a_string_is_one_problem(tmp_path):
    """Twenty-second pass: JSON lets U+2028, U+0085 or a form feed stand unescaped in a string (Python's
    ``json.dumps(ensure_ascii=False)`` writes them so), and the file was cut there as str.splitlines() cuts."""
    path = tmp_path / "set.jsonl"
    questions = ["1\u2028+1", "2\x85+2", "3\x0c+3"]
    rows = [{"id": f"p{i}", "problem": q, "answer": "2"} for i, q in enumerate(questions)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    r = cli(dataset_cmd(path, tmp_path / "d.parquet"))
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(tmp_path / "d.parquet")["question"].to_list() == questions
