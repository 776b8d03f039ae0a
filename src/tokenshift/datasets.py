"""Evaluation sets: where problems come from, how prompts are made, what the gold answer is.

Following lm-evaluation-harness, loading, prompt formatting and scoring are separate steps:

1. ``load_problems(name, spec)`` gives ``Problem`` records (id, question text, gold answer)
   from one of three sources: the embedded toy task (``toy: eval``), a local ``path``
   (``.jsonl`` or ``.parquet``), or a Hugging Face ``hub`` dataset at a pinned ``revision``
   (loaded with ``datasets.load_dataset`` at the commit the revision resolves to).
   ``prepare_dataset`` writes them to one parquet file (the workflow's
   ``resources/datasets/<name>.parquet``), which every later stage reads with
   ``read_problems``, and then its manifest beside it (``<name>.json``: the source, and for a
   hub dataset the commit actually fetched, as a model's manifest records its commit): the
   problems are loaded once, and a changed source file is a changed input;
2. ``format_prompt(tokenizer, question, prompt)`` turns a question into prompt token ids
   under a ``PromptConfig``: the model's chat template when it has one (unless
   ``chat_template`` is off), else the plain ``template`` (``{question}`` is replaced), then
   an optional ``opening`` the response continues; ``AUTHORS_PROMPT`` is the authors' prompt;
3. grading is ``tokenshift.grading`` (math-verify), the same for every set.

``PRESETS`` names the paper's benchmarks with their usual hub ids and fields; a preset still
needs a pinned ``revision`` in the config, so a rerun reads the same problems.
``DATASET_VERSION`` is stored with every table, so results from different loaders never mix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from tokenshift.io import InputError, a_file, lone_surrogate
from tokenshift.settings import HUB_SPLIT, PRESETS, ROW_FIELDS, SOURCES, DatasetSpec, PromptConfig

DATASET_VERSION = "tokenshift-datasets-1"
log = logging.getLogger(__name__)


TOY_COLUMNS = {"problem_id": "string", "toy_first": "count", "toy_ops": "list[string]", "toy_max_total": "count"}
"""What a toy dataset's problems table keeps of each problem (``load_problems``): its operations."""


def read_toy_problems(path: Path):
    """The problems table at ``path`` (a polars DataFrame) if it is a toy dataset's (it has ``toy_ops``),
    checked, else None: ``InputError`` naming the file for a column of another type or an operation that
    is not ``+x`` or ``-x``."""
    from tokenshift.io import read_parquet

    what = "a problems table (tokenshift dataset)"
    table = read_parquet(path, what)
    if "toy_ops" not in table.columns:
        return None
    table = read_parquet(path, f"the toy task's {what}", TOY_COLUMNS, unique=("problem_id",))
    ops = table["toy_ops"].explode().drop_nulls()
    bad = ops.filter(~ops.str.contains(r"^[+-][0-9]+$"))
    if bad.len():
        raise InputError(
            f"{path}: column 'toy_ops' holds {bad[0]!r}, where an operation +x or -x was expected ({what})"
        )
    return table


class DatasetError(InputError):
    """A dataset that cannot be loaded; the message names the dataset and the problem."""


@dataclass(frozen=True)
class Problem:
    problem_id: str
    question: str
    answer: str


def dataset_source(spec: DatasetSpec) -> str:
    """Which of ``SOURCES`` the spec names (exactly one)."""
    given = [s for s in SOURCES if getattr(spec, s) is not None]
    if len(given) != 1:
        raise DatasetError(f"a dataset needs exactly one source of {SOURCES}, got {given or 'none'}")
    return given[0]


def resolve_spec(name: str, spec: DatasetSpec) -> DatasetSpec:
    """The spec with a preset's fields filled in (the config's own keys win)."""
    if spec.preset is None:
        return spec
    if spec.preset not in PRESETS:
        raise DatasetError(f"dataset {name!r}: unknown preset {spec.preset!r}; known: {sorted(PRESETS)}")
    given = {k: v for k, v in dataclasses.asdict(spec).items() if v is not None and k != "preset"}
    return DatasetSpec(**{**PRESETS[spec.preset], **given})


def given_settings(spec: DatasetSpec) -> dict[str, Any]:
    """The spec's settings less each one equal to what it would be unset (a preset's field, the row
    fields ``ROW_FIELDS``, a hub's split ``test``, the toy's ``EVAL_PROBLEMS``): what the dataset job is
    given and records, so that writing a default out in full (``question_field: problem``) re-runs
    nothing, as leaving it out does."""
    source = dataset_source(spec)
    if source == "toy":
        from tokenshift.toy.task import EVAL_PROBLEMS

        unset = {"n_problems": EVAL_PROBLEMS}
    else:
        unset = {**ROW_FIELDS, **({"split": HUB_SPLIT} if source == "hub" else PRESETS.get(spec.preset or "", {}))}
    return {k: v for k, v in dataclasses.asdict(spec).items() if v is not None and not (k in unset and v == unset[k])}


def load_problems(name: str, spec: DatasetSpec, *, toy_task=None) -> list[Problem]:
    """The problems of dataset ``name`` (the first ``n_problems`` when the spec sets it).

    ``toy_task`` (a ``ToyTaskConfig``) says how the toy task is drawn; it must be the one the
    toy pair was built with (the config's ``toy:`` section), the default when None.
    """
    return [p for p, _ in _load(name, spec, toy_task)[0]]


def _load(name: str, spec: DatasetSpec, toy_task) -> tuple[list[tuple[Problem, dict]], str | None]:
    """Problems, each with the extra columns its source keeps (the toy task's operations), and the
    commit a hub dataset was read at (None for the other sources)."""
    source = dataset_source(spec)
    spec = resolve_spec(name, spec)
    if source == "toy":
        from tokenshift.toy.task import EVAL_PROBLEMS, ToyTaskConfig, problems

        task = toy_task or ToyTaskConfig()
        return [
            (
                Problem(p.problem_id, p.prompt, str(p.answer)),
                {"toy_first": p.first, "toy_ops": [op + str(x) for op, x in p.ops], "toy_max_total": task.max_total},
            )
            for p in problems(task, "eval", spec.n_problems or EVAL_PROBLEMS)
        ], None
    rows, commit = _read_rows(name, spec)
    q, a = spec.question_field or ROW_FIELDS["question_field"], spec.answer_field or ROW_FIELDS["answer_field"]
    out = []
    for i, row in enumerate(rows):
        for field in (q, a) + ((spec.id_field,) if spec.id_field else ()):
            if field not in row:
                raise DatasetError(
                    f"dataset {name!r}: row {i} has no field {field!r} (fields: {sorted(row)}); "
                    f"set question_field / answer_field / id_field"
                )
            value = row[field]
            if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float | Decimal)):
                # str() of a list, of bytes (b'2') or of a bool (True) is no answer the grader parses: every
                # response would be graded wrong
                raise DatasetError(
                    f"dataset {name!r}: row {i} has a {type(value).__name__} in {field!r} "
                    f"({value!r:.80}); it must be text or a number"
                )
            if isinstance(row[field], float) and math.isinf(row[field]):  # JSON's Infinity: the answer "inf"
                raise DatasetError(f"dataset {name!r}: row {i} has {row[field]} in {field!r}; expected a finite number")
            if isinstance(row[field], str) and (lone := lone_surrogate(row[field])):
                # a JSON escape of half a UTF-16 pair: no file or table can hold it (a traceback writing the table)
                raise DatasetError(
                    f"dataset {name!r}: row {i} has a lone surrogate {lone!r} in {field!r} (half of a UTF-16 pair, "
                    "not a character); expected text"
                )
        if _missing(row[a]):
            raise DatasetError(
                f"dataset {name!r}: row {i} has an empty gold answer in {a!r} ({row[a]!r}); every "
                "problem needs one to be graded"
            )
        if _missing(row[q]):
            raise DatasetError(f"dataset {name!r}: row {i} has an empty question in {q!r}")
        if spec.id_field and _missing(row[spec.id_field]):
            raise DatasetError(f"dataset {name!r}: row {i} has an empty problem id in {spec.id_field!r}")
        pid = str(row[spec.id_field]) if spec.id_field else f"{name}-{i:05d}"
        out.append((Problem(pid, str(row[q]), str(row[a])), {}))
    if not out:
        raise DatasetError(f"dataset {name!r} has no problems")
    first: dict[str, int] = {}
    for i, (p, _) in enumerate(out):
        if p.problem_id in first:
            raise DatasetError(
                f"dataset {name!r}: problem ids in {spec.id_field!r} are not unique: {p.problem_id!r} is the id "
                f"of rows {first[p.problem_id]} and {i}"
            )
        first[p.problem_id] = i
    if spec.n_problems and spec.n_problems > len(out):  # fewer problems than asked, silently, skewed every CI
        raise DatasetError(
            f"dataset {name!r}: n_problems {spec.n_problems}, but it holds {len(out)} problems; ask for at most that"
        )
    return (out[: spec.n_problems] if spec.n_problems else out), commit


def hub_commit(repo: str, revision: str) -> str | None:
    """The commit a hub dataset's ``revision`` (a branch, tag or commit) names now; None where the hub
    cannot be asked (offline), so a cached copy still loads, with a warning that its commit is unknown."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(repo, revision=revision).sha
    except Exception as e:
        log.warning(
            "could not ask the hub which commit %s's revision %r is (%s: %s); loading it without recording one",
            repo,
            revision,
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
        return None


def _missing(value) -> bool:
    """No value: null, blank text, or a float NaN (a parquet or pandas column's missing number), whose
    str() would otherwise be the answer "nan"."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def _read_rows(name: str, spec: DatasetSpec) -> tuple[list[dict], str | None]:
    if spec.path is not None:
        try:  # a folder, a pipe or a device said "does not exist" (the twenty-first pass)
            path = a_file(spec.path, "a .jsonl or .parquet file, one problem per row")
        except InputError as e:
            raise DatasetError(f"dataset {name!r}: {e}") from None
        if path.suffix == ".jsonl":
            try:
                text = path.read_text(encoding="utf-8-sig")  # a byte order mark (Windows editors) is dropped
            except UnicodeDecodeError as e:
                raise DatasetError(
                    f"dataset {name!r}: {path} is not UTF-8 text (byte {e.start}: "
                    f"{e.object[e.start : e.start + 1]!r}); save it as UTF-8"
                ) from None
            rows = []
            # lines end at "\n" alone: JSON strings may hold U+2028, U+0085 or a form feed unescaped, where
            # str.splitlines() also cuts (a valid file was refused: the twenty-second pass)
            for lineno, line in enumerate(text.split("\n"), 1):
                if line.strip():
                    try:
                        row = json.loads(line, object_pairs_hook=_unique_keys)
                    except json.JSONDecodeError as e:
                        raise DatasetError(f"dataset {name!r}: {path}:{lineno} is not JSON: {e}") from None
                    except _DuplicateKey as e:  # json keeps the last silently: which answer was meant?
                        raise DatasetError(
                            f"dataset {name!r}: {path}:{lineno} gives the key {e.args[0]!r} twice; expected each once"
                        ) from None
                    except RecursionError:  # arrays or objects nested past the parser's depth
                        raise DatasetError(
                            f"dataset {name!r}: {path}:{lineno} is JSON nested too deeply to read; expected "
                            "a flat object of question, answer and id"
                        ) from None
                    except ValueError as e:  # an integer of more than Python's 4,300 digits (the 22nd pass)
                        raise DatasetError(
                            f"dataset {name!r}: {path}:{lineno}: {e}; expected an answer of fewer"
                        ) from None
                    if not isinstance(row, dict):
                        raise DatasetError(f"dataset {name!r}: {path}:{lineno} is not a JSON object")
                    rows.append(row)
            return rows, None
        if path.suffix == ".parquet":
            import polars as pl

            try:
                return pl.read_parquet(path, glob=False).to_dicts(), None  # the file named, not a glob
            except Exception as e:
                raise DatasetError(
                    f"dataset {name!r}: {path} is not a readable parquet file: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                ) from None
        raise DatasetError(f"dataset {name!r}: {path} must be .jsonl or .parquet")
    if not spec.revision:
        raise DatasetError(
            f"dataset {name!r}: hub dataset {spec.hub!r} needs a revision (config `revision:`, --revision), "
            "a commit, so that a rerun reads the same problems"
        )
    import datasets

    # the branch resolved once, then loaded at that commit: what is recorded is what was read
    commit = hub_commit(spec.hub, spec.revision)
    try:
        ds = datasets.load_dataset(spec.hub, revision=commit or spec.revision, split=spec.split or HUB_SPLIT)
    except Exception as e:
        raise DatasetError(
            f"dataset {name!r}: could not load hub dataset {spec.hub!r} at revision {spec.revision!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); download it elsewhere and "
            f"point `path:` at a .jsonl or .parquet copy"
        ) from e
    return [dict(r) for r in ds], commit


DATASET_MANIFEST_KEYS = ("n_problems", "sha256")
"""What every dataset manifest holds (``prepare_dataset``)."""


def dataset_manifest_path(out: Path | str) -> Path:
    """Where ``prepare_dataset`` writes the manifest of the problems file ``out``."""
    return Path(out).with_suffix(".json")


def prepare_dataset(name: str, spec: DatasetSpec, out: Path, *, toy_task=None):
    """Load dataset ``name`` and write its problems to ``out`` (parquet): ``problem_id``,
    ``question``, ``answer``, ``dataset`` (the name), and for the toy task the operations its
    decision points come from. Then, last, its manifest (``dataset_manifest_path``): the source
    settings, the problem count, the parquet's sha256, and ``commit``: for a hub dataset the
    commit read (null where the hub could not be asked), else null."""
    import polars as pl

    from tokenshift.io import refuse_foreign_file, sha256_file, write_json_atomic, write_parquet_atomic

    refuse_foreign_file(dataset_manifest_path(out), DATASET_MANIFEST_KEYS, "a dataset's manifest")
    loaded, commit = _load(name, spec, toy_task)
    table = pl.DataFrame([{**dataclasses.asdict(p), "dataset": name, **extra} for p, extra in loaded])
    write_parquet_atomic(table, Path(out))
    source = {k: v for k, v in dataclasses.asdict(resolve_spec(name, spec)).items() if v is not None}
    write_json_atomic(
        dataset_manifest_path(out),
        {
            "name": name,
            "source": source,
            "commit": commit,
            "n_problems": table.height,
            "sha256": sha256_file(Path(out)),
            "dataset_version": DATASET_VERSION,
        },
    )
    return table


PROBLEM_COLUMNS = {"problem_id": "string", "question": "string", "answer": "string"}
"""The columns of a problems table (``prepare_dataset``'s output), by kind (``io.COLUMN_KINDS``)."""


def read_problem_table(path: Path | str, also: Mapping[str, str] | None = None):
    """The problems table ``prepare_dataset`` wrote, or ``InputError`` naming ``path``: not a parquet file (a
    folder, a manifest), without the columns (and ``also``'s, name -> kind) or with a null or another type in one,
    without rows (no problems would be a table of no rows, written as a result), or a problem twice (a table
    concatenated with itself would draw and count each problem twice). Every stage that reads problems reads them
    here."""
    from tokenshift.io import read_parquet

    what = "a problems table written by `tokenshift dataset`"
    return read_parquet(path, what, {**PROBLEM_COLUMNS, **(also or {})}, nonempty=True, unique=("problem_id",))


def read_problems(path: Path | str) -> list[Problem]:
    """The problems ``prepare_dataset`` wrote (``read_problem_table``)."""
    table = read_problem_table(path)
    return [Problem(*row) for row in table.select("problem_id", "question", "answer").iter_rows()]


class _DuplicateKey(Exception):
    """A JSON object that gives one key twice (its name)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook``: the object, refusing a key given twice (as the config's loader does)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def format_prompt(tokenizer, question: str, prompt: PromptConfig) -> list[int]:
    """Prompt token ids for ``question``: chat template if wanted and the model has one, else the
    plain template; then ``prompt.opening``, which the response continues.

    With an opening, the prompt is made as text and encoded once, as the authors' scripts do, so
    the opening's first token may merge with what comes before it.
    """
    content = prompt.template.format(question=question.strip() if prompt.strip else question)
    chat = prompt.chat_template and getattr(tokenizer, "chat_template", None)
    if chat and not prompt.opening:
        return list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
    if chat:
        content = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
    return tokenizer.encode(content + prompt.opening, add_special_tokens=False)


def as_problems(problems) -> list[Problem]:
    """A list of problems, or the problems of a parquet file ``prepare_dataset`` wrote."""
    return read_problems(problems) if isinstance(problems, str | Path) else list(problems)


def dataset_label(path: Path | str) -> str:
    """A problems file as the rollout tables made of it record it (their ``dataset`` column):
    ``<its dataset's name>@<the first 16 hex digits of its sha256>``, so rollouts given as another dataset's
    are told apart (``tables.write_accuracy``)."""
    from tokenshift.io import sha256_file

    return f"{dataset_name(path) or Path(path).stem}@{sha256_file(path)[:16]}"


def label_dataset_name(label: str) -> str:
    """The dataset name in a ``dataset_label``."""
    return label.rsplit("@", 1)[0]


def dataset_name(path: Path | str) -> str | None:
    """The name ``prepare_dataset`` recorded in a problems file (None for a file without one)."""
    table = read_problem_table(path)
    return table["dataset"][0] if "dataset" in table.columns else None
