"""Loading models onto devices: how a checkpoint is loaded (the ``dtype``, ``attn_implementation`` and
``trust_remote_code`` its manifest records: ``loading_options``), on which device (``resolve_device``,
``job_devices``) and with what batch (``job_batch``), and the one way a job of the transformers backend
does all three (``load_job_models``); and the parts of a loaded model that scoring and decoding use
(``transformer_body``, ``plain_lm_head``, ``LOGIT_TRANSFORMS``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenshift.checkpoints import ModelFetchError, manifest_path, resolve_checkpoint
from tokenshift.io import InputError, read_json

log = logging.getLogger(__name__)

LOADING_KEYS = ("dtype", "attn_implementation")
"""A model entry's keys that its loaders read besides ``trust_remote_code``, recorded in its manifest."""


# transformers' attention implementations that need a package of their own, and their availability checks
ATTENTION_PACKAGES = {
    "flash_attention_2": ("flash_attn", "is_flash_attn_2_available"),
    "flash_attention_3": ("flash_attn_3", "is_flash_attn_3_available"),
    "flash_attention_4": ("flash_attn_4", "is_flash_attn_4_available"),
}


def unknown_attention(name: str) -> str | None:
    """What an ``attn_implementation`` was expected to be where the installed transformers has no ``name``
    (a ``ValueError`` in the first job that loaded the model), else None. A hub kernel (``owner/name``)
    passes: it is fetched where a job loads it."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if "/" in name or name in known:
        return None
    return f"expected one of transformers' attention implementations ({', '.join(known)}) or a hub kernel (owner/name)"


def missing_attention_package(name: str | None) -> str | None:
    """The package an ``attn_implementation`` needs where this machine lacks it (flash_attention_2 without
    flash_attn), else None: a warning at planning, since a cluster's GPU nodes may have what the submit
    host lacks; ``load_causal_lm`` refuses it in one line where the model is loaded."""
    if name not in ATTENTION_PACKAGES:
        return None
    import transformers.utils

    package, available = ATTENTION_PACKAGES[name]
    return None if getattr(transformers.utils, available, lambda: False)() else package


def loading_options(ckpt_dir: Path | str) -> dict[str, Any]:
    """How every loader of a checkpoint (transformers' and vLLM's) loads it, as the model's config entry
    says and its manifest records: ``trust_remote_code`` (off for a checkpoint without a manifest), and
    ``dtype`` and ``attn_implementation`` where the entry sets them. The one place a stage learns whether
    the checkpoint's own code may run."""
    manifest = manifest_path(Path(ckpt_dir))
    spec = read_json(manifest, "a checkpoint manifest").get("spec", {}) if manifest.is_file() else {}
    return {
        "trust_remote_code": bool(spec.get("trust_remote_code", False)),
        **{k: spec[k] for k in LOADING_KEYS if spec.get(k) is not None},
    }


def resolve_device(device: str) -> str:
    """``auto`` is CUDA where a GPU is visible, else CPU; anything else is passed through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_causal_lm(path: Path | str, device: str = "auto"):
    """A checkpoint's ``AutoModelForCausalLM`` in eval mode on ``device``: float32 on CPU, bf16 on a GPU,
    unless the model's entry sets its ``dtype`` (and ``attn_implementation``; ``loading_options``).

    ``path`` is a checkpoint directory or its manifest (then the weights are verified first).
    ``device`` ``cuda:i,j,...`` spreads the layers over those GPUs, balanced, with Accelerate's
    ``device_map`` (``pip install accelerate``); each keeps a tenth free beside its share.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from tokenshift.memory import gpu_ids, max_memory

    ckpt = resolve_checkpoint(path)
    device = resolve_device(device)
    options = loading_options(ckpt)
    ours = torch.float32 if device == "cpu" else torch.bfloat16
    options["dtype"] = getattr(torch, options["dtype"]) if "dtype" in options else ours
    if package := missing_attention_package(options.get("attn_implementation")):
        name = read_json(manifest_path(ckpt), "a checkpoint manifest").get("name", ckpt.name)
        raise ModelFetchError(
            f"model {name!r}: attn_implementation {options['attn_implementation']} needs the {package} package, "
            f"which is not installed on this machine: install it, or set models.{name}.attn_implementation to "
            "one it has (sdpa, eager)"
        )
    gpus = gpu_ids(device)
    if len(gpus) > 1:
        total = torch.cuda.get_device_properties(gpus[0]).total_memory
        model, info = AutoModelForCausalLM.from_pretrained(
            ckpt, device_map="balanced", max_memory=max_memory(gpus, total), output_loading_info=True, **options
        )
    else:
        model, info = AutoModelForCausalLM.from_pretrained(ckpt, output_loading_info=True, **options)
        model = model.to(device)
    check_loaded(ckpt, model, info)
    return model.eval()


def check_loaded(ckpt: Path, model, info: Mapping[str, Any]) -> None:
    """Refuse, naming the checkpoint and a tensor, weights that do not make the model its config describes: a
    tensor the files lack or hold in another shape (transformers initialises it at random, differently in
    every job: each stage would study another model), or one that is not finite (the model's every output
    then is; the twelfth hostile pass, J2 and J3)."""
    import torch

    for kind in ("missing_keys", "mismatched_keys"):
        if absent := sorted(str(k) for k in info.get(kind) or ()):
            said = "lack" if kind == "missing_keys" else "hold in another shape"
            raise ModelFetchError(
                f"{ckpt}: its weights {said} {len(absent)} of the tensors its config.json asks for, e.g. "
                f"{absent[0]!r}: expected a whole checkpoint (transformers would initialise them at random)"
            )
    for name, tensor in model.state_dict().items():
        chunks = tensor.reshape(-1).split(2**24) if tensor.is_floating_point() and not tensor.is_meta else ()
        if not all(bool(torch.isfinite(c).all()) for c in chunks):
            raise ModelFetchError(f"{ckpt}: its weight {name!r} holds NaN or infinite values: expected finite weights")


def check_devices(requested: Mapping[str, str]) -> None:
    """Refuse, naming the setting (``requested``: setting -> device), a device that is none
    (``registry.DEVICE_PATTERN``: a flag is not checked as the config's key is), or a GPU device this job cannot
    have: any where torch sees no GPU (a CPU-only build, or a node without one), an index past the GPUs it sees.
    The config check cannot know the latter: ``snakemake -n`` may plan for a cluster's GPU nodes."""
    import torch

    from tokenshift.memory import gpu_ids
    from tokenshift.registry import DEVICE_PATTERN

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for key, device in requested.items():
        if not re.fullmatch(DEVICE_PATTERN, device):  # `meta`, `mps`, ` cuda`: a traceback at the first .to()
            raise InputError(
                f"{key} (--{key.replace('_', '-')}) {device!r}: expected auto, cpu, cuda, cuda:<i> or cuda:<i>,<j>,..."
            )
        ids = gpu_ids(device)
        if not ids:  # auto or cpu
            continue
        flag = f"{key} (--{key.replace('_', '-')})"
        if visible == 0:
            why = "torch is built without CUDA" if torch.version.cuda is None else "torch sees no GPU on this machine"
            raise InputError(f"{flag} {device!r}: {why}; set it to auto or cpu, or run this job where a GPU is")
        if max(ids) >= visible:
            raise InputError(
                f"{flag} {device!r}: this job sees {visible} GPU(s), cuda:0 to cuda:{visible - 1}; name one of those"
            )


def job_devices(checkpoints: Sequence[Path | str], requested: Sequence[str]) -> list[str]:
    """The devices of the models one job loads (``memory.plan_devices`` over the GPUs it sees):
    ``auto`` models on GPU sets of their own where the job has enough GPUs."""
    import torch

    from tokenshift.memory import ModelShape, plan_devices

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible == 0 or "auto" not in requested:
        return [resolve_device(r) for r in requested]
    shapes = []
    for ckpt in checkpoints:
        try:
            shapes.append(ModelShape.from_checkpoint(resolve_checkpoint(ckpt)))
        except (KeyError, OSError, ValueError):  # an architecture whose config names its sizes otherwise
            shapes.append(None)
    return plan_devices(shapes, requested, visible=visible, gpu_bytes=torch.cuda.get_device_properties(0).total_memory)


def job_batch(
    stage: str,
    setting: int | str,
    checkpoints: Sequence[Path | str],
    devices: Sequence[str],
    *,
    tokens_per_row: int = 0,
    chunk_memory_bytes: int = 512 * 2**20,
) -> int:
    """A stage's batch setting for the models ``checkpoints`` about to be loaded on ``devices``:
    ``memory.plan_batch`` with the free memory of their GPUs now and their ``config.json`` shapes.
    The value is logged, with what it was planned from."""
    import torch

    from tokenshift.memory import GIB, ModelShape, gpu_ids, plan_batch

    sets = [gpu_ids(resolve_device(d)) for d in devices]
    kind = "cuda" if all(sets) else "cpu"
    shapes, free = [], []
    for ckpt, ids in zip(checkpoints, sets):
        try:
            shapes.append(ModelShape.from_checkpoint(resolve_checkpoint(ckpt)))
        except (KeyError, OSError, ValueError):  # an architecture whose config names its sizes otherwise
            shapes.append(None)
        free.append(min(torch.cuda.mem_get_info(i)[0] for i in ids) if kind == "cuda" else 0)
    shared = len(sets) == 2 and bool(set(sets[0]) & set(sets[1]))
    value = plan_batch(
        stage,
        setting,
        device_kind=kind,
        free_bytes=free,
        gpus=[len(ids) for ids in sets],
        shapes=shapes,
        tokens_per_row=tokens_per_row,
        chunk_memory_bytes=chunk_memory_bytes,
        shared=shared,
    )
    unit = "padded tokens per pass" if stage == "scoring" else "rows"
    if setting != "auto":
        log.info("%s batch: %d %s (set in the config)", stage, value, unit)
    elif kind == "cuda" and None not in shapes:
        log.info(
            "%s batch: %d %s, planned from %s GiB free on %s (%s)",
            stage,
            value,
            unit,
            " / ".join(f"{f / GIB:.1f}" for f in free),
            " / ".join(resolve_device(d) for d in devices),
            f"{tokens_per_row} tokens per row" if stage != "scoring" else "teacher forcing",
        )
    else:
        log.info("%s batch: %d %s (auto on %s)", stage, value, unit, "CPU" if kind == "cpu" else "an unknown shape")
    return value


def load_job_models(
    stage: str,
    setting: int | str,
    checkpoints: Sequence[Path | str],
    requested: Mapping[str, str],
    **batch_kw: int,
) -> tuple[list, int]:
    """What a job of the transformers backend loads, the one way every stage loads it: the models'
    devices (``job_devices``: disjoint GPU sets where the job has enough), the stage's batch planned
    for them (``job_batch``, before the weights take their share of the GPUs' free memory), then each
    checkpoint on its device. ``requested`` names each checkpoint's device setting and its value, in
    ``checkpoints``' order. Returns the models, in that order, and the batch."""
    check_devices(requested)
    devices = job_devices(checkpoints, list(requested.values()))
    batch = job_batch(stage, setting, checkpoints, devices, **batch_kw)
    return [load_causal_lm(c, d) for c, d in zip(checkpoints, devices, strict=True)], batch


LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
"""Config keys of architectures whose CausalLM forward reshapes the LM head's output (Gemma 2/3
softcapping, Cohere and Granite scaling): their logits are not ``head(hidden)``."""


def plain_lm_head(model) -> bool:
    """Whether the model's logits are exactly its output embeddings applied to the final hidden state."""
    cfg = model.config
    return all(getattr(cfg, k, None) in (None, 1, 1.0) for k in LOGIT_TRANSFORMS)


def transformer_body(model):
    """The transformer without its LM head (``model.model`` for Qwen2/Llama-style models)."""
    return getattr(model, model.base_model_prefix)
