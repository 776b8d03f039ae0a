"""Batched sampling with Hugging Face ``generate``: token ids in, token ids out.

Prompts are left-padded so every row's next token sits at the same column and the KV cache
stays rectangular. Responses are cut after the first end-of-sequence token; the EOS itself is
not part of the returned response ids, but ``finish_reason`` says whether it was reached.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenshift.io import InputError
from tokenshift.settings import SamplingConfig


class PromptTooLong(InputError):
    """A prompt that leaves its responses no room in the model's context (exit status 2)."""


def check_context(
    prompts: Sequence[Sequence[int]],
    keys: Sequence[tuple[str, int]],
    response_tokens: int,
    context: int,
    what: str,
    setting: str = "sampling.max_new_tokens",
) -> None:
    """Refuse the first prompt whose responses (up to ``response_tokens``) may run past the ``context``
    positions of ``what``: past them a model's positions are untrained (vLLM refuses the request)."""
    for ids, (pid, _) in zip(prompts, keys):
        if len(ids) + response_tokens > context:
            raise PromptTooLong(
                f"problem {pid!r}: its prompt is {len(ids)} tokens, so with responses of up to {response_tokens} "
                f"tokens ({setting}) a row may run to position {len(ids) + response_tokens}, past the {context} of "
                f"{what}; shorten the question, or lower {setting}"
            )


def preallocated_cache(model, capacity: int):
    """A key/value cache for ``model`` whose layers hold ``capacity`` positions from the start.

    transformers' ``DynamicCache`` appends each step with ``torch.cat``, copying the whole cache:
    over a decode that is quadratic in its length, and on CPU a large share of a small model's step.
    Here a step writes its keys and values into place and attention reads a view of the filled
    positions; the values, and so the logits, are the same. Rows are dropped as in ``DynamicCache``.
    Models with sliding-window or linear-attention layers keep their own cache (``None``)."""
    from transformers.cache_utils import Cache, DynamicLayer

    cfg = model.config.get_text_config(decoder=True)
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ["full_attention"]):
        return None
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", False):
        return None

    class _Layer(DynamicLayer):
        def __init__(self):
            super().__init__()
            self.filled = 0

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.device = key_states.device
                b, h, _, d = key_states.shape
                self.k_buf = key_states.new_empty((b, h, capacity, d))
                self.v_buf = value_states.new_empty((b, h, capacity, d))
                self.is_initialized = True
            n = key_states.shape[-2]
            if self.filled + n > capacity:
                raise RuntimeError(f"preallocated cache: {self.filled + n} positions, room for {capacity}")
            self.k_buf[:, :, self.filled : self.filled + n] = key_states
            self.v_buf[:, :, self.filled : self.filled + n] = value_states
            self.filled += n
            self.keys, self.values = self.k_buf[:, :, : self.filled], self.v_buf[:, :, : self.filled]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:  # the kept rows' filled positions move to the front of the same buffers
                self.k_buf, self.v_buf = (self._select(buf, indices) for buf in (self.k_buf, self.v_buf))
                self.keys, self.values = self.k_buf[:, :, : self.filled], self.v_buf[:, :, : self.filled]

        def _select(self, buf: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            # in place: a new buffer of the full room would be fresh memory, zeroed page by page by the
            # kernel at its first write (a sixth of a CPU cross-sampling job's time went to system calls)
            buf[: len(indices), :, : self.filled] = buf[indices, :, : self.filled]
            return buf[: len(indices)]

    return Cache(layers=[_Layer() for _ in range(cfg.num_hidden_layers)])


@dataclass(frozen=True)
class Sample:
    response_ids: list[int]
    finish_reason: str
    """``stop`` when the model emitted EOS, ``length`` when max_new_tokens ran out."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Per-sample values a decoder adds (cross-sampling: switched positions); become columns."""


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, *, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id rows into ``(input_ids, attention_mask)``.

    ``left`` for decoding (every row's next token at the same column, a rectangular KV cache),
    ``right`` for teacher forcing and training (positions are the same in every row).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side {side!r}: expected 'left' or 'right'")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
            ids[i, cols] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, cols] = 1
    return ids, mask


def sample_seed(seed: int, problem_id: str, sample_index: int) -> int:
    """A sample's own seed, from the run's seed, its problem and its index: the same sample gets the
    same noise whatever shard, job or batch it falls in, and no two samples share one."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: a non-negative int64


def row_noise(seeds: Sequence[int], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's uniforms (``[len(seeds), steps]``): one per step for its token, and an independent
    one for the ``random`` switching policy, both from the row's own seed alone."""
    u = torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(s)) for s in seeds])
    coin = [(s * 6364136223846793005 + 1442695040888963407) % 2**63 for s in seeds]  # another stream
    r = torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(c)) for c in coin])
    return u, r


def cut_at_stop(ids: Sequence[int], stops: Sequence[int]) -> Sample:
    """A generated row as a ``Sample``: cut before its first stop id (``stop``), or whole (``length``).

    Every backend returns responses this way, so the stop token is never part of a response.
    """
    ids = list(ids)
    at = next((i for i, t in enumerate(ids) if t in stops), None)
    return Sample(ids, "length") if at is None else Sample(ids[:at], "stop")


@torch.no_grad()
def parting_gap(model: torch.nn.Module, prompt: Sequence[int], a: Sequence[int], b: Sequence[int]) -> float:
    """Where responses ``a`` and ``b`` to ``prompt`` first part (or one ends), the gap between ``model``'s two
    most probable tokens' log-probs: near 0, a near-tie that kernels summing in another order may flip."""
    k = next(i for i, (x, y) in enumerate(zip([*a, -1], [*b, -2])) if x != y)
    logits = model(torch.tensor([list(prompt) + list(a[:k])])).logits[0, -1]
    top = torch.log_softmax(logits.double(), -1).topk(2).values
    return float(top[0] - top[1])


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    eos_id: int | Sequence[int],
    pad_id: int,
    sampling: SamplingConfig,
    seed: int,
    batch_size: int = 64,
) -> list[Sample]:
    """One sample per prompt (repeat a prompt to draw several), in prompt order.

    Deterministic given ``seed``, the batch size and the torch thread count: each batch
    reseeds the global generator with ``seed`` and its index. ``eos_id`` may be several ids (a
    model's ``generation_config.json`` can name more than its tokenizer's EOS): a response stops
    at the first of any.
    """
    stops = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[Sample] = []
    try:
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            chunk = prompts[start : start + batch_size]
            ids, mask = pad_rows(chunk, pad_id)
            torch.manual_seed((seed * 1_000_003 + b) % 2**64)  # torch's range; a smaller seed is itself
            greedy = sampling.temperature == 0
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                past_key_values=preallocated_cache(model, ids.shape[1] + sampling.max_new_tokens),
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None,
                max_new_tokens=sampling.max_new_tokens,
                eos_token_id=stops if len(stops) > 1 else stops[0],
                pad_token_id=pad_id,
            )
            new = gen[:, ids.shape[1] :].tolist()
            out += [cut_at_stop(row, stops) for row in new]
    finally:
        model.train(was_training)
    return out
