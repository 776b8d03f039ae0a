"""A candidate, not yet measured on a GPU: grouped-query attention for one-token decoding steps,
registered with transformers as ``grouped_sdpa`` (``bench_decode_gpu.py --attention`` times it
against ``sdpa``; the package adopts it if it pays there).

transformers' ``sdpa`` path, when it is given an attention mask (left-padded batches always are),
copies each layer's keys and values out to every query head (``repeat_kv``) before
``scaled_dot_product_attention``: at a decoding step that copy is most of the memory traffic of a
grouped-query model (Qwen2.5-7B has 7 query heads per key/value head; a 125-row batch at 1,200
tokens of context copies ~2 GB a layer). Here a step's query heads are grouped by their key/value
head and multiply the cache as it is: the same attention, the keys and values read once. Everything
else (a prompt's forward, models whose heads are not grouped) is transformers' ``sdpa`` unchanged.
"""

from __future__ import annotations

import math

import torch

NAME = "grouped_sdpa"


def grouped_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: ``query`` ``[batch, heads, q_len, dim]``, ``key`` and
    ``value`` ``[batch, kv_heads, kv_len, dim]``; returns ``([batch, q_len, heads, dim], None)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or kv_heads == heads or dropout or module.training:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    # query head i attends with key/value head i // group, as repeat_kv lays them out
    q = query.reshape(b, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)) * (scaling if scaling is not None else 1 / math.sqrt(dim))
    if attention_mask is not None:  # [batch, 1, 1, kv_len]: bool (True attends) or additive
        mask = attention_mask[..., : key.shape[-2]]
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # [batch, kv_heads, group, dim]
    return out.reshape(b, 1, heads, dim), None


def register() -> str:
    """Register ``grouped_sdpa`` (idempotent) and return its name, for ``attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, grouped_decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
