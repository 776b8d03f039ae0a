"""How much of a GPU a model takes, and how many rows or tokens a job can batch in the rest.

The first cluster run of a large pair must not die of an out-of-memory error, and a user should
not have to guess batch sizes per model and card. From a checkpoint's ``config.json`` alone
(no weights) ``ModelShape`` gives the bytes of its weights and of its KV cache per token; the
planners turn a GPU set's memory into the stages' batch settings:

- decoding (rollouts, cross-sampling): each row holds a KV cache of ``prompt + max_new_tokens``
  tokens and a few fp32 rows of vocabulary-sized logits (softmax, sort for top-p, the other
  model's logits and the statistics between them);
- scoring (teacher forcing, no cache): each token in flight holds one layer's activations at a
  time (hidden states, attention and MLP intermediates); the LM-head chunk is bounded on its
  own by ``scoring.chunk_memory_mb``.

A share ``reserve`` of every GPU is kept back for the CUDA context, the allocator's
fragmentation and what the estimate leaves out. Where the weights alone do not fit, the
planner says how many GPUs the model needs. The estimates are deliberately plain (no
allocator simulation); a job that still runs out of memory halves its batch and goes on
(``halving_on_oom``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

GIB = 2**30
GPU_HEADROOM = 1.25
"""A model gets GPUs for this many times its weights: room for activations and a KV cache."""
DECODE_LOGIT_BUFFERS = 6
"""fp32 vocabulary-sized rows one decoding row needs at a step: both models' logits, softmax,
the top-p sort and its cumulative sum, and the statistics' temporaries."""
ACTIVATION_FACTOR = 2.0
"""Safety factor on one layer's activations per token (the allocator keeps freed blocks)."""


class DoesNotFit(ValueError):
    """The weights alone (or with one row) do not fit the GPUs given; the message says what would."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer (Qwen2/Llama style) that fix its memory."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = False
    qkv_bias: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """From a ``config.json`` mapping (``num_hidden_layers``, ``hidden_size``, ...)."""
        heads = config["num_attention_heads"]
        return cls(
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab=config["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=config.get("model_type", "qwen2") == "qwen2" or bool(config.get("attention_bias", False)),
        )

    @classmethod
    def from_checkpoint(cls, path: Path | str) -> ModelShape:
        return cls.from_config(json.loads((Path(path) / "config.json").read_text()))

    @property
    def parameters(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * q + 2 * self.hidden * kv + q * self.hidden
        if self.qkv_bias:
            attention += q + 2 * kv
        mlp = 3 * self.hidden * self.intermediate
        per_layer = attention + mlp + 2 * self.hidden  # and two RMSNorm weights
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + embeddings + self.hidden

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        return self.parameters * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Keys and values of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def activation_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """One layer's activations for one token in a forward pass without cache (plus a margin)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per = 4 * self.hidden + q + 2 * kv + 3 * self.intermediate
        return int(ACTIVATION_FACTOR * per * dtype_bytes)

    def gpus_needed(self, gpu_bytes: int, *, dtype_bytes: int = 2) -> int:
        return gpus_for(self.weight_bytes(dtype_bytes), gpu_bytes)


def gpus_for(weight_bytes: int, gpu_bytes: float) -> int:
    """GPUs of ``gpu_bytes`` a model of ``weight_bytes`` needs: ``GPU_HEADROOM`` times its weights.
    The one rule for a model's GPUs: what a job asks the scheduler for (``tokenshift.cluster``)
    and how a job places its models (``plan_devices``)."""
    return max(1, math.ceil(GPU_HEADROOM * weight_bytes / gpu_bytes))


def _free(shape: ModelShape, gpu_bytes: int, gpus: int, reserve: float, dtype_bytes: int, what: str) -> float:
    usable = gpus * gpu_bytes * (1 - reserve)
    free = usable - shape.weight_bytes(dtype_bytes)
    if free <= 0:
        need = shape.gpus_needed(gpu_bytes, dtype_bytes=dtype_bytes)
        raise DoesNotFit(
            f"{what}: {shape.weight_bytes(dtype_bytes) / GIB:.1f} GiB of weights do not fit {gpus} GPU(s) of "
            f"{gpu_bytes / GIB:.0f} GiB ({1 - reserve:.0%} usable); give it at least {need}"
        )
    return free


def decode_rows(
    shape: ModelShape,
    *,
    gpu_bytes: int,
    gpus: int = 1,
    tokens_per_row: int,
    reserve: float = 0.1,
    dtype_bytes: int = 2,
    what: str = "model",
) -> int:
    """Rows one model can decode together: its KV cache of ``tokens_per_row`` tokens and the
    step's fp32 logits per row, in what its GPUs hold beside the weights."""
    free = _free(shape, gpu_bytes, gpus, reserve, dtype_bytes, what)
    per_row = shape.kv_bytes_per_token(dtype_bytes) * tokens_per_row + DECODE_LOGIT_BUFFERS * 4 * shape.vocab
    rows = int(free // per_row)
    if rows < 1:
        raise DoesNotFit(
            f"{what}: one row of {tokens_per_row} tokens needs {per_row / GIB:.2f} GiB of KV cache and logits, "
            f"{free / GIB:.2f} GiB are left beside the weights on {gpus} GPU(s); give it more GPUs"
        )
    return rows


def crosssample_rows(
    base: ModelShape,
    rl: ModelShape,
    *,
    gpu_bytes: int,
    gpus_base: int,
    gpus_rl: int,
    tokens_per_row: int,
    reserve: float = 0.1,
    dtype_bytes: int = 2,
) -> int:
    """Rows both models decode in lockstep, each on its own GPUs: the smaller of the two."""
    return min(
        decode_rows(
            m,
            gpu_bytes=gpu_bytes,
            gpus=g,
            tokens_per_row=tokens_per_row,
            reserve=reserve,
            dtype_bytes=dtype_bytes,
            what=w,
        )
        for m, g, w in ((base, gpus_base, "base model"), (rl, gpus_rl, "RL model"))
    )


def scoring_tokens(
    shape: ModelShape,
    *,
    gpu_bytes: int,
    gpus: int = 1,
    chunk_memory_bytes: int = 512 * 2**20,
    reserve: float = 0.1,
    dtype_bytes: int = 2,
    what: str = "model",
) -> int:
    """Padded tokens one teacher-forced forward pass may hold (``scoring.max_batch_tokens``)."""
    free = _free(shape, gpu_bytes, gpus, reserve, dtype_bytes, what) - chunk_memory_bytes
    per_token = shape.activation_bytes_per_token(dtype_bytes) + shape.hidden * 4  # and the kept fp32 hidden states
    tokens = int(free // per_token)
    if tokens < 1:
        raise DoesNotFit(f"{what}: no room for a scoring batch beside the weights on {gpus} GPU(s)")
    return tokens


PROMPT_TOKENS = 2048
"""Tokens a decoding row's prompt is planned for (the paper's prompts are a few hundred)."""


def plan_batch(
    stage: str,
    setting: int | str,
    *,
    device_kind: str,
    free_bytes: Sequence[int],
    gpus: Sequence[int],
    shapes: Sequence[ModelShape | None],
    tokens_per_row: int = 0,
    chunk_memory_bytes: int = 512 * 2**20,
    shared: bool = False,
) -> int:
    """A stage's batch setting: ``setting`` itself when it is a number; for ``auto`` planned.

    ``stage`` is ``rollout`` or ``crosssample`` (rows decoded together, each holding a KV cache of
    ``tokens_per_row`` tokens) or ``scoring`` (padded tokens per forward pass). Per model of the
    job: ``free_bytes`` (the free memory of the emptiest GPU of its set, before it is loaded),
    ``gpus`` (how many GPUs its set has) and ``shapes`` (its ``config.json``). ``shared``: both models
    sit on the same GPUs, each planned in half of them (exact for a pair of one architecture).
    On CPU (``device_kind`` not ``cuda``), or where a shape is unknown, ``auto`` is
    ``settings.CPU_BATCH[stage]``. A pair runs at the smaller of its two models' plans.
    """
    from tokenshift.settings import AUTO, CPU_BATCH

    if setting != AUTO:
        return int(setting)
    if device_kind != "cuda" or any(s is None for s in shapes):
        return CPU_BATCH[stage]
    plans = []
    roles = ("base model", "RL model") if len(shapes) == 2 else ("model",) * len(shapes)
    for role, shape, free, n in zip(roles, shapes, free_bytes, gpus):
        per_gpu = free // 2 if shared else free
        if stage == "scoring":
            plans.append(
                scoring_tokens(shape, gpu_bytes=per_gpu, gpus=n, chunk_memory_bytes=chunk_memory_bytes, what=role)
            )
        else:
            plans.append(decode_rows(shape, gpu_bytes=per_gpu, gpus=n, tokens_per_row=tokens_per_row, what=role))
    return min(plans)


def gpu_sets(gpus_base: int, gpus_rl: int, visible: Sequence[int]) -> tuple[list[int], list[int]]:
    """Disjoint GPU sets for a pair loaded side by side: the base model's first, the RL model's after.

    Where fewer GPUs are visible than the two need, both models share them (each spread over all
    visible GPUs), which fits only if the sum of their weights does; the caller's memory plan says.
    """
    visible = list(visible)
    if gpus_base + gpus_rl <= len(visible):
        return visible[:gpus_base], visible[gpus_base : gpus_base + gpus_rl]
    if max(gpus_base, gpus_rl) > len(visible):
        raise DoesNotFit(
            f"the pair needs {gpus_base} + {gpus_rl} GPUs, at least {max(gpus_base, gpus_rl)} for one model; "
            f"{len(visible)} visible"
        )
    return visible, visible


def plan_devices(
    shapes: Sequence[ModelShape | None], requested: Sequence[str], *, visible: int, gpu_bytes: int
) -> list[str]:
    """Where each model of a job goes: its ``requested`` device, or for ``auto`` a GPU set.

    With no GPU visible, ``auto`` is the CPU. Otherwise each ``auto`` model gets the GPUs its
    weights need (``ModelShape.gpus_needed``; one where the shape is unknown), on sets disjoint
    from each other's where the job has enough GPUs, else all of them shared. A set of one GPU is
    ``cuda:i``; a larger one ``cuda:i,j,...``, which ``tokenshift.loading.load_causal_lm`` spreads
    the model over.
    """
    if visible == 0:
        return ["cpu" if r == "auto" else r for r in requested]
    auto = [i for i, r in enumerate(requested) if r == "auto"]
    needs = [shapes[i].gpus_needed(gpu_bytes) if shapes[i] is not None else 1 for i in auto]
    out = list(requested)
    if sum(needs) <= visible:
        start = 0
        for i, n in zip(auto, needs):
            out[i] = _devices(range(start, start + n))
            start += n
    else:
        for i, n in zip(auto, needs):
            out[i] = _devices(range(max(n, 1) if n <= visible else visible))
    return out


def _devices(ids) -> str:
    return "cuda:" + ",".join(str(i) for i in ids)


MAX_NODE_GPUS = 16
"""The most GPUs a node is taken to hold (an 8-card node shows 16 devices where each card has two dies): a
``cuda:<i>`` beyond it is refused at the config check, not sent to the scheduler as a job asking i + 1."""


def gpu_ids(device: str) -> list[int]:
    """The GPU indices of a ``cuda:i[,j...]`` device (``cuda`` alone is GPU 0); none for others."""
    if device == "cuda":
        return [0]
    if not device.startswith("cuda:"):
        return []
    return [int(i) for i in device.removeprefix("cuda:").split(",")]


def max_memory(gpus: Sequence[int], gpu_bytes: int, *, reserve: float = 0.1, share: float = 1.0) -> dict:
    """``from_pretrained(device_map="auto", max_memory=...)`` for weights spread over ``gpus``: each
    GPU may hold ``share`` of its usable memory (the rest stays free for the KV cache), none on CPU."""
    per = int(gpu_bytes * (1 - reserve) * share)
    return {**{g: per for g in gpus}, "cpu": 0}


T = TypeVar("T")


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is a device out-of-memory error (torch raises ``torch.OutOfMemoryError``)."""
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


_WORKED: dict[str, int] = {}
"""The batch size that last worked after an out-of-memory error, per ``remember`` key, in this process."""


def halving_on_oom(
    run: Callable[[int], T], batch: int, *, is_oom: Callable[[BaseException], bool], remember: str | None = None
) -> T:
    """``run(batch)``, halving ``batch`` after each out-of-memory error until it works (or 1 fails too),
    the device's cached memory freed before each retry. With ``remember``, the size that worked after an
    error is where later calls of the same key start (a job's batches are alike: each would otherwise
    run out of memory first, again)."""
    size = min(batch, _WORKED.get(remember, batch)) if remember else batch
    while True:
        try:
            out = run(size)
        except Exception as e:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(e) or size == 1:
                raise
            log.warning("out of memory at batch %d; going on at %d", size, size // 2)
            size //= 2
            del e  # its traceback holds the failed try's tensors
            _free_device_cache()
            continue
        if remember and size < batch:
            _WORKED[remember] = size
        return out


def forget_batch_sizes() -> None:
    """Forget the sizes ``halving_on_oom`` remembered (a process that starts other work, a test)."""
    _WORKED.clear()


def _free_device_cache() -> None:
    """Give the CUDA allocator's cached blocks back (after an out-of-memory error), where torch has a GPU."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
