"""Evaluation sets: where problems come from, how prompts are made, what the gold answer is.

Following lm-evaluation-harness, loading, prompt formatting and scoring are separate steps:

1. ``load_problems(name, spec)`` gives ``Problem`` records (id, question text, gold answer)
   from one of three sources: the embedded toy task (``toy: eval``), a local ``path``
   (``.jsonl`` or ``.parquet``), or a Hugging Face ``hub`` dataset at a pinned ``revision``
   (loaded with ``datasets.load_dataset``);
2. ``format_prompt(tokenizer, question, spec)`` turns a question into prompt token ids: the
   model's chat template when it has one (unless ``chat_template: false``), else the plain
   ``template`` (``{question}`` is replaced by the question);
3. grading is ``tokenshift.grading`` (math-verify), the same for every set.

``PRESETS`` names the paper's benchmarks with their usual hub ids and fields; a preset still
needs a pinned ``revision`` in the config, so a rerun reads the same problems.
``DATASET_VERSION`` is stored with every table, so results from different loaders never mix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASET_VERSION = "tokenshift-datasets-1"
DEFAULT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
PRESETS: dict[str, dict[str, str]] = {
    "aime24": {"hub": "HuggingFaceH4/aime_2024", "split": "train", "question_field": "problem", "answer_field": "answer"},
    "aime25": {"hub": "yentinglin/aime_2025", "split": "train", "question_field": "problem", "answer_field": "answer"},
    "amc23": {"hub": "math-ai/amc23", "split": "test", "question_field": "question", "answer_field": "answer"},
    "math500": {"hub": "HuggingFaceH4/MATH-500", "split": "test", "question_field": "problem", "answer_field": "answer"},
}


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message names the dataset and the problem."""


@dataclass(frozen=True)
class Problem:
    problem_id: str
    question: str
    answer: str


def resolve_spec(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with a preset's fields filled in (the config's own keys win)."""
    spec = {k: v for k, v in spec.items() if k != "sampling"}  # how to sample is not what to load
    preset = spec.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise DatasetError(f"dataset {name!r}: unknown preset {preset!r}; known: {sorted(PRESETS)}")
        spec = {**PRESETS[preset], **spec}
    return spec


def load_problems(name: str, spec: Mapping[str, Any], *, toy_task=None) -> list[Problem]:
    """The problems of dataset ``name`` (the first ``n_problems`` when the spec sets it).

    ``toy_task`` (a ``ToyTaskConfig``) says how the toy task is drawn; it must be the one the
    toy pair was built with (the config's ``toy:`` section), the default when None.
    """
    spec = resolve_spec(name, spec)
    if "toy" in spec:
        from tokenshift.toy.task import ToyTaskConfig, problems

        n = spec.get("n_problems", 500)
        task = toy_task or ToyTaskConfig()
        return [Problem(p.problem_id, p.prompt, str(p.answer)) for p in problems(task, "eval", n)]
    rows = _read_rows(name, spec)
    q, a = spec.get("question_field", "problem"), spec.get("answer_field", "answer")
    id_field = spec.get("id_field")
    out = []
    for i, row in enumerate(rows):
        for field in (q, a):
            if field not in row:
                raise DatasetError(f"dataset {name!r}: row {i} has no field {field!r} (fields: {sorted(row)}); "
                                   f"set question_field / answer_field")
        pid = str(row[id_field]) if id_field else f"{name}-{i:05d}"
        out.append(Problem(pid, str(row[q]), str(row[a])))
    if not out:
        raise DatasetError(f"dataset {name!r} has no problems")
    ids = [p.problem_id for p in out]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"dataset {name!r}: problem ids in {id_field!r} are not unique")
    n = spec.get("n_problems")
    return out[:n] if n else out


def _read_rows(name: str, spec: Mapping[str, Any]) -> list[dict]:
    if "path" in spec:
        path = Path(spec["path"])
        if not path.is_file():
            raise DatasetError(f"dataset {name!r}: file {str(path)!r} does not exist")
        if path.suffix == ".jsonl":
            rows = []
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DatasetError(f"dataset {name!r}: {path}:{lineno} is not JSON: {e}") from None
            return rows
        if path.suffix == ".parquet":
            import polars as pl

            return pl.read_parquet(path).to_dicts()
        raise DatasetError(f"dataset {name!r}: {path} must be .jsonl or .parquet")
    if "hub" in spec:
        import datasets

        try:
            ds = datasets.load_dataset(spec["hub"], revision=spec["revision"], split=spec.get("split", "test"))
        except Exception as e:  # noqa: BLE001 - offline, missing, or private: all mean "not here"
            raise DatasetError(
                f"dataset {name!r}: could not load hub dataset {spec['hub']!r} at revision {spec.get('revision')!r} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); download it elsewhere and "
                f"point `path:` at a .jsonl or .parquet copy"
            ) from e
        return [dict(r) for r in ds]
    raise DatasetError(f"dataset {name!r}: spec names no source (toy, path or hub): {dict(spec)}")


def format_prompt(tokenizer, question: str, spec: Mapping[str, Any]) -> list[int]:
    """Prompt token ids for ``question``: chat template if the model has one, else the plain template."""
    if "toy" in spec:  # the toy task's prompt is its own format; the toy tokenizer has no chat template
        return tokenizer.encode(question, add_special_tokens=False)
    use_chat = spec.get("chat_template", True) and getattr(tokenizer, "chat_template", None)
    template = spec.get("template", DEFAULT_TEMPLATE)
    content = template.format(question=question)
    if use_chat:
        return list(tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=False))
    return tokenizer.encode(content, add_special_tokens=False)
