"""What each job of the workflow asks a cluster's scheduler for (the profile that sends them is
``tokenshift.slurm_profile``'s).

``job_resources`` is what a job of a stage asks for, derived from its models: a model needs
``ceil(1.25 * weights / gpu_memory)`` GPUs (``memory.gpus_for``; its manifest records the
weights' size; a toy model runs on CPU), unless its config entry says otherwise (``models.<name>.resources``); host
memory follows from the weights too, and runtime from the config's ``cluster.runtime``, growing
with each retry. Nothing here imports torch or Snakemake.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tokenshift.memory import gpu_ids, gpus_for

HOST_OVERHEAD_MB = 2000
"""Host memory of a job beyond its models: Python, torch, tables."""
GPU_STAGES = ("rollout", "score", "crosssample")
"""Stages that run models, so may run on GPUs; the others are CPU jobs."""


# --- what a job asks for ---------------------------------------------------------------------------


def model_gpus(spec: Mapping[str, Any], manifest: Mapping[str, Any] | None, gpu_memory_gb: float) -> int:
    """GPUs one model needs: its config's ``resources.gpus``, else 0 for the toy models (CPU) and
    ``memory.gpus_for`` of its weights for the others."""
    given = spec.get("resources", {}).get("gpus")
    if given is not None:
        return int(given)
    if "toy" in spec:
        return 0
    size = weights_bytes(manifest)
    return gpus_for(size, gpu_memory_gb * 2**30)


def weights_bytes(manifest: Mapping[str, Any] | None) -> int:
    """Bytes of a checkpoint's weight files, as its manifest recorded them (0 when unknown)."""
    return int(sum((manifest or {}).get("weights_bytes", {}).values()))


def manifest_needed(key: str, spec: Mapping[str, Any]) -> bool:
    """Whether resource ``key`` of a job loading the model of ``spec`` needs its manifest (its size):
    not where the config says it, nor for a toy model's GPUs, nor ever for the runtime."""
    given = spec.get("resources", {})
    if key in ("gpu", "gpu_model", "gres"):
        return given.get("gpus") is None and "toy" not in spec
    if key == "mem_mb":
        return given.get("mem_mb") is None
    return False


def job_resources(
    stage: str,
    models: Sequence[tuple[Mapping[str, Any], Mapping[str, Any] | None]],
    cluster: Mapping[str, Any],
    attempt: int = 1,
) -> dict[str, Any]:
    """What a job of ``stage`` asks for: ``gpu``, ``gpu_model`` (where the site asks for one),
    ``mem_mb`` and ``runtime`` (minutes); under ``cluster.gpu_request`` ``gres``, its GPUs as ``gres``
    (``gpu:<model>:<n>``) instead. ``models`` are the (config spec, manifest) of the models
    the job loads, or (config spec, manifest, device) where the stage's config places them: a model
    the config puts on ``cpu`` asks for no GPU, and one it puts on ``cuda:<i>`` makes the job ask for at
    least i + 1 (a job's GPUs are numbered from 0, so ``cuda:1`` needs two, whatever the model's size)."""
    models = [(s, m, *rest) for s, m, *rest in models]
    gpus = 0
    if stage in GPU_STAGES:
        named = [i for _, _, *device in models if device for i in gpu_ids(device[0])]
        gpus = max(
            sum(model_gpus(s, m, cluster["gpu_memory_gb"]) for s, m, *device in models if device != ["cpu"]),
            max(named, default=-1) + 1,
        )
    # a model loaded on the CPU takes float32 (twice the bf16 weights); on a GPU its host copy passes through
    weights_mb = sum(weights_bytes(m) for _, m, *_ in models) / 2**20
    given = [s.get("resources", {}).get("mem_mb") for s, *_ in models]
    if given and all(given):
        mem = sum(given)
    else:
        mem = HOST_OVERHEAD_MB + math.ceil(weights_mb * (1 if gpus else 2))
    runtime = cluster["runtime"].get(stage, cluster["runtime"]["default"])
    out = {"gpu": gpus, "mem_mb": int(mem), "runtime": int(runtime * attempt)}
    if gpus and cluster.get("gpu_request") == "gres":  # --gres=gpu[:<model>]:<n>, where a site refuses --gpus
        out["gpu"] = 0
        out["gres"] = ":".join(["gpu", *([cluster["gpu_model"]] if cluster.get("gpu_model") else []), str(gpus)])
    elif gpus and cluster.get("gpu_model"):
        out["gpu_model"] = cluster["gpu_model"]
    return out
