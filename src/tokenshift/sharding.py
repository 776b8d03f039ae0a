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
    InputError,
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
        try:
            index, count = (int(x) for x in text.split("-of-"))
        except ValueError:
            raise ValueError(f"part {text!r}: expected I-of-N, e.g. 3-of-8") from None
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}-of-{self.count}"

    def share(self, n: int) -> range:
        """This part's share of ``n`` items (shards or batches), in order."""
        return range(-(-(self.index - 1) * n // self.count), -(-self.index * n // self.count))


PART_RECORD = "tokenshift.part"
"""The key of a part's parquet metadata that records where its job wrote it (``write_part``; ``io.place``)."""


def write_part(table: pl.DataFrame, path: Path) -> None:
    """Write the table of a run, or of one job's part of it, recording where (``gather_parts`` checks it)."""
    write_parquet_atomic(table, path, metadata={PART_RECORD: place(path)})


def gather_parts(parts: Sequence[Path], out: Path, *, sort_by: Sequence[str] = ()) -> pl.DataFrame:
    """The table of a split run: its parts' rows in order (sorted by ``sort_by`` where one job sorts
    its own), written to ``out``.

    Each part must be the file its job wrote there (``write_part``'s record: another part, or another
    table, copied over it is refused, naming it), and the parts must share their columns (one that
    differs from the columns most parts have is named)."""
    frames = []
    for p in parts:
        table = _read_part(p)
        recorded = pl.read_parquet_metadata(p).get(PART_RECORD)
        if recorded != place(p):
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
    table = pl.concat([t for _, t in frames]) if frames else pl.DataFrame()
    unknown = [c for c in sort_by if table.width and c not in table.columns]
    if unknown:
        raise InputError(f"--sort-by {unknown[0]!r}: the parts have no such column (columns: {table.columns})")
    if sort_by and table.height:
        table = table.sort(*sort_by)
    write_parquet_atomic(table, Path(out))
    return table


def _read_part(path: Path) -> pl.DataFrame:
    """A part, or ``InputError`` naming it; a damaged one also says how to make it again
    (``io.remake_hint``): once the failed gather's table is gone, a plain re-run finds nothing to do."""
    return read_parquet(path, "a part of a split run")


def run_key(parts: Mapping[str, Any]) -> str:
    """A hash of everything a run's output depends on (dataclasses are taken field by field)."""

    def plain(v):
        return asdict(v) if is_dataclass(v) else v

    text = json.dumps({k: plain(v) for k, v in parts.items()}, sort_keys=True, default=str)
    return hashlib.sha256((text + code_version()).encode()).hexdigest()


def _shard_ok(path: Path, keys: Sequence[tuple[str, int]]) -> str | None:
    """Why the shard at ``path`` cannot be reused, or None when it can: ``keys`` are the (problem id,
    sample index) of the rows it should hold, in order (another shard's file and record copied over
    it match each other, not its place)."""
    record = path.with_suffix(".json")
    if not record.is_file():
        return "it has no record (it was being written when the job stopped)"
    try:
        meta = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict):
        return f"its record {record.name} is unreadable (expected a JSON object with rows and sha256)"
    if meta.get("rows") != len(keys):
        return f"its record says {meta.get('rows')} rows, the shard should have {len(keys)}"
    if sha256_file(path) != meta.get("sha256"):
        return "its bytes differ from those recorded when it was written (truncated or edited)"
    try:
        held = pl.read_parquet(path, columns=["problem_id", "sample_index"])
    except Exception as e:  # a file hashed as recorded, yet not a shard: a record written for it by hand
        return f"it is not a readable shard ({type(e).__name__})"
    if list(zip(held["problem_id"].to_list(), held["sample_index"].to_list())) != list(keys):
        first = held["problem_id"][0] if held.height else None
        return f"it holds other rows than its place's (problem {first!r} first; another shard copied over it?)"
    return None


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
    shard_dir = out.with_name(out.name + ".shards")
    stamp = shard_dir / "settings.sha256"
    if shard_dir.exists() and (not stamp.is_file() or stamp.read_text().strip() != key):
        log.warning("%s holds shards made with other settings, inputs or code; starting over", shard_dir)
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")

    per = problems_per_shard
    every = [problems[i : i + per] for i in range(0, len(problems), per)]
    mine = part.share(len(every))
    shards = dict(zip(mine, every[mine.start : mine.stop]))
    todo = []
    for k, chunk in shards.items():
        path = shard_dir / f"shard-{k:05d}.parquet"
        if not path.exists():
            todo.append(k)
            continue
        why = _shard_ok(path, [(p.problem_id, j) for p in chunk for j in range(n)])
        if why:
            log.warning("discarding shard %s and computing it again: %s", path, why)
            path.unlink()
            path.with_suffix(".json").unlink(missing_ok=True)
            todo.append(k)
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
            path = shard_dir / f"shard-{k:05d}.parquet"
            write_parquet_atomic(df, path)
            write_json_atomic(path.with_suffix(".json"), {"rows": df.height, "sha256": sha256_file(path)})
            bar.update(df.height)
            bar.set_postfix(tok_s=f"{int(df['n_response_tokens'].sum()) / (time.perf_counter() - t0):.0f}")
    bar.close()
    parts = [pl.read_parquet(shard_dir / f"shard-{k:05d}.parquet") for k in shards]
    table = pl.concat(parts) if parts else pl.DataFrame()  # a part may get no shard: more jobs than shards
    write_part(table, out)
    shutil.rmtree(shard_dir)  # the table is complete: a later run of this target starts afresh
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
