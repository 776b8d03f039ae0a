"""The rollout stage: sample responses from one model on one dataset, grade them, write parquet.

Two backends behind one interface (``generate(prompts, seed) -> [Sample]``):

- ``hf``: batched ``transformers`` generation with a KV cache and left padding
  (``tokenshift.generation.sample``); the default, and the only one on CPU;
- ``vllm``: vLLM's offline engine fed token ids (``TokensPrompt``), same sampling settings;
  imported only when asked for, and refused with a clear error where it cannot run.

The run is sharded and resumable (``tokenshift.sharding``). One row per sample:
``problem_id``, ``sample_index``, ``prompt_ids``, ``response_ids``, ``response_text``,
``finish_reason`` (``stop`` or ``length``), ``n_response_tokens``, ``gold``, ``correct``,
``grade_status``, ``dataset_version``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from tokenshift.datasets import Problem, PromptConfig
from tokenshift.generation import Sample, SamplingConfig, sample
from tokenshift.io import InputError
from tokenshift.settings import GradingConfig, RolloutConfig
from tokenshift.sharding import Part

log = logging.getLogger(__name__)


class BackendUnavailable(InputError):
    """The configured generation backend cannot run here (a user-facing error: exit status 2)."""


class HFBackend:
    def __init__(self, model: Path, cfg: RolloutConfig, sampling: SamplingConfig):
        import torch

        from tokenshift.models import job_devices, load_causal_lm, load_tokenizer

        torch.set_num_threads(cfg.threads)
        self.tokenizer = load_tokenizer(model)
        self.model = load_causal_lm(model, job_devices((model,), ("auto",))[0])
        self.cfg, self.sampling = cfg, sampling
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    def generate(self, prompts: Sequence[Sequence[int]], seed: int) -> list[Sample]:
        return sample(
            self.model,
            prompts,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            sampling=self.sampling,
            seed=seed,
            batch_size=self.cfg.batch_size,
        )


class VLLMBackend:
    def __init__(self, model: Path, cfg: RolloutConfig, sampling: SamplingConfig):
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise BackendUnavailable(
                "rollout backend 'vllm' needs `pip install 'tokenshift[vllm]'` on a GPU machine; use backend 'hf' here"
            ) from e
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("rollout backend 'vllm' needs a CUDA GPU and none is visible; use backend 'hf'")
        from vllm import LLM

        from tokenshift.models import load_tokenizer, resolve_checkpoint

        self.tokenizer = load_tokenizer(model)
        self.llm = LLM(model=str(resolve_checkpoint(model)), seed=sampling.seed)
        self.sampling = sampling

    def generate(self, prompts: Sequence[Sequence[int]], seed: int) -> list[Sample]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        s = self.sampling
        params = [
            SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens, seed=seed + i)
            for i in range(len(prompts))
        ]
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


def make_backend(model: Path, cfg: RolloutConfig, sampling: SamplingConfig):
    if cfg.backend not in BACKENDS:
        raise BackendUnavailable(f"unknown rollout backend {cfg.backend!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[cfg.backend](Path(model), cfg, sampling)


def run_rollouts(
    model: Path,
    problems: Sequence[Problem] | Path,
    out: Path,
    *,
    prompt: PromptConfig = PromptConfig(),
    sampling: SamplingConfig = SamplingConfig(),
    cfg: RolloutConfig = RolloutConfig(),
    grading: GradingConfig = GradingConfig(),
    part: Part = Part(),
    grader_workers: int = 1,
    progress: bool = True,
) -> pl.DataFrame:
    """Sample ``sampling.n`` responses per problem, grade them, write ``out`` (parquet); resumable.

    ``model`` is a checkpoint directory or its manifest; ``problems`` a list or the parquet file
    ``tokenshift dataset`` wrote. Of a run split over several jobs, this writes job ``part``'s rows.
    """
    from tokenshift.datasets import as_problems
    from tokenshift.models import checkpoint_identity
    from tokenshift.sharding import run_key, run_sharded

    problems = as_problems(problems)
    key = run_key(
        {
            "stage": "rollout",
            "model": checkpoint_identity(model),
            "problems": problems,
            "prompt": prompt,
            "sampling": sampling,
            "rollout": cfg,
            "grading": grading,
        }
    )
    table = run_sharded(
        lambda: make_backend(model, cfg, sampling),
        key,
        problems,
        prompt,
        out,
        n=sampling.n,
        seed=sampling.seed,
        problems_per_shard=cfg.problems_per_shard,
        part=part,
        grading=grading,
        grader_workers=grader_workers,
        progress=progress,
    )
    if table.height:
        log.info(
            "%s: %d samples, accuracy %.3f, %d cut by the length limit, %d without a box, %d not graded",
            out,
            table.height,
            table["correct"].mean(),
            (table["finish_reason"] == "length").sum(),
            table["grade_status"].is_in(["no_box", "unboxed"]).sum(),
            (~table["grade_status"].is_in(["ok", "unboxed"])).sum(),
        )
    return table
