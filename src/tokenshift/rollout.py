"""The rollout stage: sample responses from one model on one dataset, grade them, write parquet.

Two backends behind one interface (``generate(prompts, keys) -> [Sample]``, ``keys`` the
(problem id, sample index) of each prompt, from which each sample's seed is made):

- ``hf``: batched decoding with a KV cache and left padding, each sample on its own noise from
  (seed, problem id, sample index) (``tokenshift.crosssample.decode_alone``: the cross-sampling
  decoder with one model, so a rollout and its forward budget-0 cross-sample are one draw); the
  default, and the only one on CPU;
- ``vllm``: vLLM's offline engine fed token ids (``TokensPrompt``), same sampling settings,
  stop ids and per-sample seeds (its own sampler: the same distribution, other draws);
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
from tokenshift.generation import Sample, SamplingConfig, check_context, cut_at_stop, sample_seed
from tokenshift.io import InputError
from tokenshift.settings import GradingConfig, RolloutConfig
from tokenshift.sharding import Part

log = logging.getLogger(__name__)


class BackendUnavailable(InputError):
    """The configured generation backend cannot run here (a user-facing error: exit status 2)."""


class HFBackend:
    def __init__(self, model: Path, cfg: RolloutConfig, sampling: SamplingConfig):
        import torch

        from tokenshift.memory import PROMPT_TOKENS
        from tokenshift.models import job_batch, job_devices, load_causal_lm, load_tokenizer, stop_ids

        torch.set_num_threads(cfg.threads)
        self.tokenizer = load_tokenizer(model)
        device = job_devices((model,), ("auto",))[0]
        # planned before the weights take their share of the GPU's free memory
        self.batch_size = job_batch(
            "rollout", cfg.batch_size, (model,), (device,), tokens_per_row=PROMPT_TOKENS + sampling.max_new_tokens
        )
        self.model = load_causal_lm(model, device)
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.name = model
        self.cfg, self.sampling = cfg, sampling
        self.stops = stop_ids(model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stops[0]

    def generate(self, prompts: Sequence[Sequence[int]], keys: Sequence[tuple[str, int]]) -> list[Sample]:
        from tokenshift.crosssample import decode_alone

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


def vllm_engine_args(model: Path, cfg: RolloutConfig, sampling: SamplingConfig, gpus: int) -> dict:
    """``vllm.LLM(**args)`` for ``model``: spread over the job's ``gpus`` unless the config says how
    many, the context the responses need (vLLM otherwise sizes the KV cache for the model's whole
    context, which a 32B model's weights leave no room for on one GPU), the memory share and dtype."""
    from tokenshift.models import loading_options

    return {
        "model": str(model),
        "tokenizer": str(model),
        **loading_options(model),
        "seed": sampling.seed,
        "tensor_parallel_size": cfg.vllm_tensor_parallel_size or max(gpus, 1),
        "max_model_len": cfg.vllm_max_model_len or sampling.max_new_tokens + 2048,
        "gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
        "dtype": cfg.vllm_dtype,
    }


def vllm_sampling_args(sampling: SamplingConfig, seeds: Sequence[int], stops: Sequence[int]) -> list[dict]:
    """``vllm.SamplingParams(**args)`` per request: the config's sampling, each sample's own seed, and
    the stop ids the HF backend stops on (vLLM would take only ``generation_config.json``'s)."""
    if sampling.temperature > 2:
        raise ValueError(f"temperature {sampling.temperature}: vLLM accepts at most 2")
    common = {
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
        "max_tokens": sampling.max_new_tokens,
        "stop_token_ids": list(stops),
        "skip_special_tokens": False,
    }
    return [{**common, "seed": s} for s in seeds]


def vllm_sample(token_ids: Sequence[int], stops: Sequence[int]) -> Sample:
    """A vLLM output as the HF backend returns it: vLLM keeps the stop token in ``token_ids``; cut it."""
    return cut_at_stop(token_ids, stops)


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

        from tokenshift.models import load_tokenizer, resolve_checkpoint, stop_ids

        self.tokenizer = load_tokenizer(model)
        self.stops = stop_ids(model, self.tokenizer)
        args = vllm_engine_args(resolve_checkpoint(model), cfg, sampling, torch.cuda.device_count())
        self.llm = LLM(**args)
        # vLLM caps max_model_len at the model's own context, and refuses a longer one
        self.context = args["max_model_len"]
        self.sampling = sampling

    def generate(self, prompts: Sequence[Sequence[int]], keys: Sequence[tuple[str, int]]) -> list[Sample]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        what = "the vLLM engine (rollout.vllm_max_model_len, or max_new_tokens + 2048)"
        check_context(prompts, keys, self.sampling.max_new_tokens, self.context, what)
        params = [
            SamplingParams(**a) for a in vllm_sampling_args(self.sampling, _seeds(self.sampling, keys), self.stops)
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        return [vllm_sample(o.outputs[0].token_ids, self.stops) for o in outs]


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
