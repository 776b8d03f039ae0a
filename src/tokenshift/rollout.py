"""The rollout stage: sample responses from one model on one dataset, grade them, write parquet.

Two backends behind one interface (``generate(prompts) -> [Sample]``):

- ``hf``: batched ``transformers`` generation with a KV cache and left padding
  (``tokenshift.generation.sample``); the default, and the only one on CPU;
- ``vllm``: vLLM's offline engine fed token ids (``TokensPrompt``), same sampling settings;
  imported only when asked for, and refused with a clear error where it cannot run.

Problems are processed in shards of ``problems_per_shard``; each shard is written atomically
to ``<out>.shards/shard-NNNNN.parquet`` with a seed derived from the run's seed and the shard
index, so a killed job loses at most one shard and a rerun resumes with the same result an
uninterrupted run would give. The shards directory records the settings it was made with; a
rerun with other settings starts over. The final table is written last.

One row per sample: ``problem_id``, ``sample_index``, ``prompt_ids``, ``response_ids``,
``response_text``, ``finish_reason`` (``stop`` or ``length``), ``n_response_tokens``,
``gold``, ``correct``, ``grade_status``, ``dataset_version``.
"""

from __future__ import annotations

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
from tokenshift.generation import Sample, SamplingConfig, sample
from tokenshift.grading import Grader
from tokenshift.io import write_parquet_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutConfig:
    n: int = 4
    """Samples per problem."""
    sampling: SamplingConfig = SamplingConfig()
    seed: int = 0
    backend: str = "hf"
    """``hf`` or ``vllm``."""
    batch_size: int = 64
    """Sequences per generate call (hf backend)."""
    problems_per_shard: int = 64
    """Problems per shard file: what a killed job can lose at most."""
    threads: int | None = None
    """Torch CPU threads (None: torch's default)."""


class BackendUnavailable(RuntimeError):
    """The configured generation backend cannot run here."""


class HFBackend:
    def __init__(self, model_dir: Path, cfg: RolloutConfig):
        import torch
        from transformers import AutoTokenizer

        from tokenshift.models import load_causal_lm

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = load_causal_lm(model_dir, "auto")
        self.cfg = cfg
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    def generate(self, prompts: Sequence[Sequence[int]], seed: int) -> list[Sample]:
        return sample(self.model, prompts, eos_id=self.eos_id, pad_id=self.pad_id, sampling=self.cfg.sampling,
                      seed=seed, batch_size=self.cfg.batch_size)


class VLLMBackend:
    def __init__(self, model_dir: Path, cfg: RolloutConfig):
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise BackendUnavailable("rollout backend 'vllm' needs `pip install 'tokenshift[vllm]'` on a GPU machine; "
                                     "use backend 'hf' here") from e
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("rollout backend 'vllm' needs a CUDA GPU and none is visible; use backend 'hf'")
        from transformers import AutoTokenizer
        from vllm import LLM

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.llm = LLM(model=str(model_dir), seed=cfg.seed)
        self.cfg = cfg

    def generate(self, prompts: Sequence[Sequence[int]], seed: int) -> list[Sample]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        s = self.cfg.sampling
        params = [SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens, seed=seed + i)
                  for i in range(len(prompts))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        eos = self.tokenizer.eos_token_id
        result = []
        for o in outs:
            ids = list(o.outputs[0].token_ids)
            if ids and ids[-1] == eos:
                ids = ids[:-1]
            result.append(Sample(ids, "stop" if o.outputs[0].finish_reason == "stop" else "length"))
        return result


BACKENDS = {"hf": HFBackend, "vllm": VLLMBackend}


def make_backend(model_dir: Path, cfg: RolloutConfig):
    if cfg.backend not in BACKENDS:
        raise BackendUnavailable(f"unknown rollout backend {cfg.backend!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[cfg.backend](Path(model_dir), cfg)


def settings_key(model_dirs: Sequence[Path], problems: Sequence[Problem], dataset_spec: Mapping[str, Any], cfg) -> str:
    """A hash of everything a sharded run's output depends on: models, problems, dataset, settings."""
    h = hashlib.sha256()
    for model_dir in model_dirs:
        manifest = Path(str(model_dir) + ".json")
        h.update(manifest.read_bytes() if manifest.is_file() else str(Path(model_dir).resolve()).encode())
    h.update(json.dumps([asdict(p) for p in problems]).encode())
    h.update(json.dumps(dict(dataset_spec), sort_keys=True, default=str).encode())
    h.update(json.dumps(asdict(cfg) if is_dataclass(cfg) else cfg, sort_keys=True, default=str).encode())
    return h.hexdigest()


def run_rollouts(model_dir: Path, problems: Sequence[Problem], dataset_spec: Mapping[str, Any], out: Path,
                 cfg: RolloutConfig, *, grader_workers: int = 1, progress: bool = True) -> pl.DataFrame:
    """Sample ``cfg.n`` responses per problem, grade them, write ``out`` (parquet); resumable."""
    return run_sharded(lambda: make_backend(model_dir, cfg), settings_key([model_dir], problems, dataset_spec, cfg),
                       problems, dataset_spec, out, n=cfg.n, seed=cfg.seed, problems_per_shard=cfg.problems_per_shard,
                       grader_workers=grader_workers, progress=progress)


def run_sharded(make: Callable[[], Any], key: str, problems: Sequence[Problem], dataset_spec: Mapping[str, Any],
                out: Path, *, n: int, seed: int, problems_per_shard: int, extra_schema: Mapping[str, Any] | None = None,
                constants: Mapping[str, Any] | None = None,
                grader_workers: int = 1, progress: bool = True) -> pl.DataFrame:
    """Draw ``n`` graded samples per problem with the backend ``make()`` builds, shard by shard.

    The backend has ``tokenizer`` and ``generate(prompts, seed) -> [Sample]``; each sample's
    ``extra`` values become columns (``extra_schema`` gives their types), and ``constants`` are
    columns with one value throughout (a run's settings). Shards record ``key``:
    shards made under another key are discarded. The backend is only built if work is left.
    """
    out = Path(out)
    shard_dir = out.with_name(out.name + ".shards")
    stamp = shard_dir / "settings.sha256"
    if shard_dir.exists() and (not stamp.is_file() or stamp.read_text().strip() != key):
        log.warning("%s holds shards made with other settings; starting over", shard_dir)
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")

    per = problems_per_shard
    shards = [problems[i:i + per] for i in range(0, len(problems), per)]
    todo = [k for k in range(len(shards)) if not (shard_dir / f"shard-{k:05d}.parquet").is_file()]
    if len(todo) < len(shards):
        log.info("resuming %s: %d of %d shards already written", out, len(shards) - len(todo), len(shards))
    backend = make() if todo else None
    bar = tqdm(total=len(problems) * n, initial=(len(shards) - len(todo)) * per * n, unit="sample",
               desc=f"{out.parent.name}/{out.stem}", disable=not progress)
    with Grader(workers=grader_workers) as grader:
        for k in todo:
            t0 = time.perf_counter()
            chunk = shards[k]
            prompts = [format_prompt(backend.tokenizer, p.question, dataset_spec) for p in chunk]
            reps = [ids for ids in prompts for _ in range(n)]
            samples = backend.generate(reps, seed=seed * 100_003 + k)
            texts = backend.tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
            golds = [p.answer for p in chunk for _ in range(n)]
            grades = grader.grade(texts, golds)
            extra = {name: [s.extra[name] for s in samples] for name in (extra_schema or {})}
            df = pl.DataFrame({
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
            }, schema_overrides={"prompt_ids": pl.List(pl.Int32), "response_ids": pl.List(pl.Int32),
                                 **(extra_schema or {})})
            write_parquet_atomic(df, shard_dir / f"shard-{k:05d}.parquet")
            n_tok = int(df["n_response_tokens"].sum())
            bar.update(len(samples))
            bar.set_postfix(tok_s=f"{n_tok / (time.perf_counter() - t0):.0f}")
    bar.close()
    table = pl.concat([pl.read_parquet(shard_dir / f"shard-{k:05d}.parquet") for k in range(len(shards))])
    write_parquet_atomic(table, out)
    return table
