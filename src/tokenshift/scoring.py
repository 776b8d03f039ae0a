"""Teacher-forced scoring: both models of a pair read the same responses, position by position.

For every response token, both models' next-token distributions over the shared vocabulary are
compared with ``tokenshift.divergence.token_stats`` and each model's log-probability of the token
actually there is recorded.

Memory: ``[tokens, vocab]`` logits are never built for a batch. Each model's transformer body
gives final hidden states; only the positions that predict response tokens are kept, and those
are projected through the LM head a chunk of positions at a time, each chunk reduced to its
statistics at once. Chunks are sized so one chunk's logits and temporaries fit
``chunk_memory_mb``: peak extra memory is bounded whatever the batch or vocabulary. On a GPU the
statistics run through ``torch.compile`` (fewer passes over the vocabulary, fewer temporaries).
Sequences are packed by length into forwards of at most ``max_batch_tokens`` padded tokens; a
batch that still runs out of device memory is read in halves (``memory.halving_on_oom``).

Vocabulary: logits are sliced to the pair's shared tokenizer size (``vocab_size``), which drops
embedding rows padded past the tokenizer (Qwen2.5: 151936 vs 152064 rows for 151665 tokens).

Statistic (``cfg.statistic``): ``exact`` compares the whole distributions; ``topk:K`` takes the
columns that need a whole distribution (``registry.TOPK_SCORE_COLUMNS``: JS, both KLs, both
entropies, the top-1 ranks and probabilities) over each model's K most probable tokens,
renormalised, and keeps the others (the token's log-probs, ``topk_overlap``, the candidates) the
models' own. Under ``topk:K`` a rank of K means "K or more", and a KL is +inf wherever one model's
top K holds a token the other's does not. ``run_scoring`` writes the setting to the table's
``statistic`` column, so no table of top-K values passes for one of exact values.

Backend (``cfg.backend``): ``hf`` reads the models with transformers, as above; ``vllm``
(``score_rows_vllm``) reads each model's top log-probs from two vLLM engines' ``prompt_logprobs``
(``tokenshift.vllm_engine``), teacher-forced over the same rows, and reduces them with the same
statistics code: it scores ``topk:K`` only (vLLM returns at most K log-probs per position).

Resuming: ``run_scoring`` writes a job's batches in shards of about ``RESPONSES_PER_SHARD`` responses as
they are scored (``sharding.ShardStore``: each checked against its record and the rows it should hold), so
a job stopped midway (preempted, killed) loses one shard's work: run again with the same inputs, settings,
code and batches, it reads the shards written and scores the rest, to the table one run gives.

Bad input never yields a silent number: a token id outside the shared vocabulary, or an empty
prompt, is an error naming the row; NaN logits (a broken checkpoint) are an error naming the
model; an empty response or one that would not fit the model's context is skipped, counted and
logged.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from tokenshift.divergence import keep_top, token_stats_compiled, token_stats_unchecked
from tokenshift.generation import pad_rows
from tokenshift.loading import LOGIT_TRANSFORMS, plain_lm_head, transformer_body
from tokenshift.memory import halving_on_oom, is_oom
from tokenshift.options import settings_label
from tokenshift.registry import SCORE_ORDER, TOPK_SCORE_COLUMNS
from tokenshift.settings import AUTO, CPU_BATCH, RolloutConfig, ScoringConfig
from tokenshift.sharding import Part, ShardStore, held_columns, run_key, write_part

log = logging.getLogger(__name__)
CANDIDATE_COLUMNS = ("top_ids_base", "top_probs_base", "top_ids_rl", "top_probs_rl")
"""Each model's ``top_k_candidates`` most probable tokens and their probabilities, most probable first."""
STAT_COLUMNS = (
    "js",
    "kl_base_rl",
    "kl_rl_base",
    "entropy_base",
    "entropy_rl",
    "topk_overlap",
    "rl_top1_rank_in_base",
    "base_top1_rank_in_rl",
    "p_base_of_rl_top1",
    "p_rl_of_rl_top1",
)
OUT_COLUMNS = ("row", "position", "norm_position", "token_id", "logp_base", "logp_rl", *STAT_COLUMNS)
INTEGER_COLUMNS = {
    "row": np.int64,
    "position": np.int32,
    "token_id": np.int32,
    "rl_top1_rank_in_base": np.int64,
    "base_top1_rank_in_rl": np.int64,
    "top_ids_base": np.int32,
    "top_ids_rl": np.int32,
}
"""The integer columns' dtypes as ``_score_batch`` returns them (the others are float32), for an empty part."""
RESPONSES_PER_SHARD = 256
"""Responses a scoring shard holds at least (whole batches; the part's last shard may hold fewer): what a
stopped job can lose. At the paper's ~8k-token responses a 7B pair scores one in minutes on a GPU."""


@dataclass
class ScoreResult:
    """Per-token columns (numpy arrays of equal length) and what was skipped."""

    columns: dict[str, np.ndarray]
    skipped: dict[str, list[int]] = field(default_factory=dict)
    """Reason -> indices of input rows not scored."""


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _context(model: torch.nn.Module) -> int:
    return int(getattr(model.config, "max_position_embeddings", 1 << 30))


def pack_by_length(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group row indices, longest first, so each group's (rows x longest) stays under the bound."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def _response_hidden(model, ids: torch.Tensor, attn: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    dev = _device(model)
    # no mask when nothing is padded: SDPA can then take its fused causal kernel
    mask = None if bool(attn.all()) else attn.to(dev)
    h = transformer_body(model)(input_ids=ids.to(dev), attention_mask=mask).last_hidden_state
    return h[select.to(dev)]


def _score_in_pieces(base, rl, rows, idx: Sequence[int], size: int, **kw) -> dict[str, np.ndarray]:
    """``_score_batch`` over pieces of ``size`` rows of ``idx``, concatenated in order."""
    pieces = [_score_batch(base, rl, rows, idx[k : k + size], **kw) for k in range(0, len(idx), size)]
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


@torch.no_grad()
def _score_batch(base, rl, rows, idx: Sequence[int], *, vocab_size: int, pad_id: int, cfg: ScoringConfig):
    """The output columns of rows ``idx`` read in one forward pass per model (a dict of arrays)."""
    width = max(len(rows[i][0]) + len(rows[i][1]) for i in idx)
    ids, attn = pad_rows([list(rows[i][0]) + list(rows[i][1]) for i in idx], pad_id, side="right")
    select = torch.zeros((len(idx), width), dtype=torch.bool)  # positions that predict a response token
    targets, row_of, pos_of, norm_of = [], [], [], []
    for j, i in enumerate(idx):
        p, r = list(rows[i][0]), list(rows[i][1])
        select[j, len(p) - 1 : len(p) + len(r) - 1] = True
        targets += r
        row_of += [i] * len(r)
        pos_of += list(range(len(r)))
        norm_of += [k / max(len(r) - 1, 1) for k in range(len(r))]
    with record_function("tokenshift.body"):  # phase labels for torch.profiler (benchmarks/bench_scoring.py)
        hb = _response_hidden(base, ids, attn, select)
        hr = _response_hidden(rl, ids, attn, select)
    tgt = torch.as_tensor(targets)
    chunk = cfg.chunk_for(vocab_size)
    stats_fn = token_stats_compiled if cfg.compile and hb.is_cuda else token_stats_unchecked
    k_cand = min(cfg.top_k_candidates, vocab_size)
    stat_keys = ("logp_base", "logp_rl", *STAT_COLUMNS, *(CANDIDATE_COLUMNS if k_cand else ()))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in stat_keys}
    for start in range(0, hb.shape[0], chunk):
        sl = slice(start, start + chunk)
        with record_function("tokenshift.lm_head"):
            lb = base.get_output_embeddings()(hb[sl])[:, :vocab_size]
            lr = rl.get_output_embeddings()(hr[sl])[:, :vocab_size].to(lb.device)
        with record_function("tokenshift.stats"):
            stats = stats_fn(lb, lr, top_k=cfg.top_k, targets=tgt[sl].to(lb.device), candidates=k_cand)
            if cfg.topk is not None:
                top = stats_fn(keep_top(lb, cfg.topk), keep_top(lr, cfg.topk), top_k=cfg.top_k)
                stats |= {k: top[k] for k in TOPK_SCORE_COLUMNS}
        for k in parts:
            parts[k].append(stats[k])
    out: dict[str, np.ndarray] = {}
    # results stay on the device until here: one transfer per batch, not one per chunk
    for k, v in parts.items():
        merged = torch.cat(v)
        if k in ("logp_base", "logp_rl") and torch.isnan(merged).any():
            role = k.removeprefix("logp_")
            raise ValueError(f"NaN in the {role} model's logits: the checkpoint or its inputs are broken")
        out[k] = merged.cpu().numpy()
    out["row"] = np.asarray(row_of, dtype=INTEGER_COLUMNS["row"])
    out["position"] = np.asarray(pos_of, dtype=INTEGER_COLUMNS["position"])
    out["norm_position"] = np.asarray(norm_of, dtype=np.float32)
    out["token_id"] = np.asarray(targets, dtype=INTEGER_COLUMNS["token_id"])
    return out


def pad_id_of(model: torch.nn.Module) -> int:
    """The id scoring pads rows with (masked out of attention, so any id in the vocabulary serves)."""
    return model.config.pad_token_id or 0


@torch.no_grad()
def score_rows(
    base: torch.nn.Module,
    rl: torch.nn.Module,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    vocab_size: int,
    pad_id: int,
    cfg: ScoringConfig = ScoringConfig(),
    part: Part = Part(),
    batch_tokens: int | None = None,
    store: ShardStore | None = None,
    progress: bool = False,
) -> ScoreResult:
    """Score ``rows`` of (prompt ids, response ids) with both models; one output row per response token.

    Output columns: ``row`` (index into ``rows``), ``position`` (0-based in the response),
    ``norm_position`` (position / (length - 1), 0 for one-token responses), ``token_id``,
    ``logp_base``, ``logp_rl`` and the ``token_stats`` columns (under ``cfg.statistic`` ``topk:K``,
    ``TOPK_SCORE_COLUMNS`` of the top K renormalised: module docstring); with
    ``cfg.top_k_candidates`` > 0, also the ``CANDIDATE_COLUMNS`` (``[tokens, k]`` arrays).

    Of scoring split over several jobs, this scores job ``part``'s share of the batches. Every
    job packs all rows into the same batches, so each row is scored in the batch, hence with the
    very floating-point operations, that one job would use: the parts' rows are that job's rows.
    Those batches are packed to ``cfg.max_batch_tokens`` (for ``auto``, ``CPU_BATCH["scoring"]``), so
    which rows a part scores never depends on a job's GPU; ``batch_tokens``, what this job's GPUs hold
    (``tokenshift.loading.job_batch``), repacks the part's rows where it differs (then a row's float
    rounding may differ from one job's, as padding to another width does). With ``store``, the batches
    are written (and read back on a rerun) in shards (``_scored_batches``).
    """
    for role, model in (("base", base), ("rl", rl)):
        if not plain_lm_head(model):
            raise ValueError(
                f"the {role} model ({type(model).__name__}) transforms its LM head's output "
                f"({', '.join(k for k in LOGIT_TRANSFORMS if getattr(model.config, k, None))}); "
                "chunked scoring supports plain heads only"
            )
    refuse_bad_rows(rows, vocab_size)
    keep, skipped = rows_to_score(rows, min(_context(base), _context(rl)))
    k_cand = min(cfg.top_k_candidates, vocab_size)

    def score(idx: list[int]) -> dict[str, np.ndarray]:
        # out of memory: the batch in pieces of half as many rows, each row still read whole
        return halving_on_oom(
            functools.partial(_score_in_pieces, base, rl, rows, idx, vocab_size=vocab_size, pad_id=pad_id, cfg=cfg),
            len(idx),
            is_oom=is_oom,  # not remembered: batches are packed by tokens, their row counts differ
        )

    batches = part_batches(rows, keep, cfg, part, batch_tokens)
    columns = _scored_batches(batches, score, rows, k_cand, store=store, progress=progress)
    return ScoreResult(columns, skipped)


def _scored_batches(
    batches: list[list[int]],
    score,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    k_cand: int,
    *,
    store: ShardStore | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """The output columns of ``batches`` (lists of indices into ``rows``), ``score(idx)`` each, in order.

    With ``store``, consecutive batches form shards of at least ``RESPONSES_PER_SHARD`` rows; each is
    written as soon as it is scored, and one a stopped job wrote is read back instead of scored again
    where it holds the rows of its place (by its record and its ``row`` column)."""
    shards: list[list[list[int]]] = []
    for idx in batches:
        if not shards or sum(map(len, shards[-1])) >= RESPONSES_PER_SHARD:
            shards.append([])
        shards[-1].append(idx)
    out: dict[str, list[np.ndarray]] = {k: [] for k in (*OUT_COLUMNS, *(CANDIDATE_COLUMNS if k_cand else ()))}
    held = [[i for idx in shard for i in idx] for shard in shards]
    written = {
        k
        for k, ids in enumerate(held)
        if store is not None and store.reusable(k, sum(len(rows[i][1]) for i in ids), _holds_rows(ids))
    }
    if written:
        log.info("resuming %s: %d of %d shards already written", store.dir, len(written), len(shards))
    bar = tqdm(total=sum(map(len, held)), unit="response", desc="scoring", disable=not progress)
    for k, shard in enumerate(shards):
        if k in written:
            shard = store.read(k)  # once, not once per column
            columns = {c: shard[c].to_numpy() for c in out}
        else:
            scored = [score(idx) for idx in shard]
            columns = {c: np.concatenate([s[c] for s in scored]) for c in out}
            if store is not None:
                store.write(k, pl.DataFrame([pl.Series(c, v) for c, v in columns.items()]))
        for c, v in columns.items():
            out[c].append(v)
        bar.update(len(held[k]))
    bar.close()
    return _stacked(out, k_cand)


def _holds_rows(held: list[int]):
    """Why a scoring shard does not hold the tokens of rows ``held``, in order, or None."""

    def check(path: Path) -> str | None:
        table = held_columns(path, ("row",))
        if isinstance(table, str):
            return table
        if table["row"].unique(maintain_order=True).to_list() != held:
            return "it holds other rows than its place's (scored with other batches, or copied over it?)"
        return None

    return check


def refuse_bad_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], vocab_size: int) -> None:
    """A ``ValueError`` naming the first row with an empty prompt or a token outside the shared vocabulary."""
    for i, (p, r) in enumerate(rows):
        if len(p) == 0:  # no position predicts the first response token
            raise ValueError(f"row {i}: empty prompt: the first response token has no position to be scored at")
        bad = [t for t in list(p) + list(r) if t is None or not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"row {i}: token id {bad[0]} is outside the shared vocabulary of {vocab_size}")


def rows_to_score(
    rows: Sequence[tuple[Sequence[int], Sequence[int]]], context: int
) -> tuple[list[int], dict[str, list[int]]]:
    """The indices of the rows to score, and of those skipped by reason (logged): an empty response, or
    one whose prompt and response are longer than ``context`` tokens."""
    skipped: dict[str, list[int]] = {"empty_response": [], "longer_than_context": []}
    keep = []
    for i, (p, r) in enumerate(rows):
        if len(r) == 0:
            skipped["empty_response"].append(i)
        elif len(p) + len(r) > context:
            skipped["longer_than_context"].append(i)
        else:
            keep.append(i)
    for reason, idx in skipped.items():
        if idx:
            log.warning("%d responses skipped (%s), e.g. row %d", len(idx), reason, idx[0])
    return keep, {k: v for k, v in skipped.items() if v}


def part_batches(
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    keep: Sequence[int],
    cfg: ScoringConfig,
    part: Part,
    batch_tokens: int | None = None,
) -> list[list[int]]:
    """The batches (lists of row indices) that job ``part`` scores of rows ``keep`` (``score_rows``)."""
    lengths = [len(rows[i][0]) + len(rows[i][1]) for i in keep]
    bound = CPU_BATCH["scoring"] if cfg.max_batch_tokens == AUTO else cfg.max_batch_tokens
    batches = pack_by_length(lengths, bound)
    share = part.share(len(batches))
    mine = batches[share.start : share.stop]
    if batch_tokens is not None and batch_tokens != bound:
        rows_of_part = [b for batch in mine for b in batch]
        mine = [
            [rows_of_part[j] for j in batch]
            for batch in pack_by_length([lengths[b] for b in rows_of_part], batch_tokens)
        ]
    return [[keep[b] for b in batch] for batch in mine]


def _stacked(out: dict[str, list[np.ndarray]], k_cand: int) -> dict[str, np.ndarray]:
    # no batch (a part of more parts than batches): empty columns of the types the others have, so the parts stack
    return {
        k: np.concatenate(v)
        if v
        else np.zeros((0, k_cand) if k in CANDIDATE_COLUMNS else 0, dtype=INTEGER_COLUMNS.get(k, np.float32))
        for k, v in out.items()
    }


# --- the vllm backend: each model's top log-probs from vLLM's prompt_logprobs -------------------


def score_rows_vllm(
    engines: dict,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    vocab_size: int,
    context: int,
    cfg: ScoringConfig,
    part: Part = Part(),
    store: ShardStore | None = None,
    progress: bool = False,
) -> ScoreResult:
    """``score_rows``'s columns, under ``cfg.statistic`` ``topk:K``, from two vLLM engines (``engines``:
    role -> ``vllm.LLM``) reading each row teacher-forced with ``prompt_logprobs``: per position each
    model's log-probs of its max(K, ``top_k``, ``top_k_candidates``) most probable tokens and of the
    token there. The statistics are ``score_rows``'s code run on those log-probs (-inf elsewhere), so
    they equal the hf backend's where the two backends' kernels give the same top tokens.

    ``context``: the longest row the engines take (rows longer are skipped, as ``score_rows`` skips
    those longer than the models' context). Job ``part`` scores the same rows as under ``score_rows``
    (with ``batch_tokens`` unset); one ``generate`` per model and batch. Token ids past ``vocab_size``
    (embedding rows padded past the tokenizer) are dropped from a position's top tokens.
    """
    if cfg.topk is None:
        raise ValueError("the vllm scoring backend returns at most K log-probs per position: expected statistic topk:K")
    refuse_bad_rows(rows, vocab_size)
    keep, skipped = rows_to_score(rows, context)
    k_cand = min(cfg.top_k_candidates, vocab_size)
    score = functools.partial(_vllm_batch, engines, rows, vocab_size=vocab_size, cfg=cfg)
    columns = _scored_batches(part_batches(rows, keep, cfg, part), score, rows, k_cand, store=store, progress=progress)
    return ScoreResult(columns, skipped)


def _prompt_logprobs(outputs, prompt_lengths: Sequence[int], width: int, vocab_size: int, role: str):
    """(token ids, their log-probs, top ids, top log-probs) at every response position of vLLM's
    ``outputs``: ``[N]``, ``[N]``, ``[N, width]``, ``[N, width]``; top ids past ``vocab_size`` are
    moved to the end of their row as id -1, log-prob -inf."""
    token_ids, token_lp, top_ids, top_lp = [], [], [], []
    for o, first in zip(outputs, prompt_lengths):
        flat, last = o.prompt_logprobs, len(o.prompt_token_ids)
        # vLLM's flat log-probs: per position the token there, then the top `width` in rank order
        starts = np.asarray(flat.start_indices[first:last])
        ends = np.asarray(flat.end_indices[first:last])
        if not np.all(ends - starts == width + 1):
            raise RuntimeError(f"vLLM returned {sorted(set((ends - starts - 1).tolist()))} log-probs, not {width}")
        ids = np.asarray(flat.token_ids[starts[0] : ends[-1]], dtype=np.int64).reshape(-1, width + 1)
        lps = np.asarray(flat.logprobs[starts[0] : ends[-1]], dtype=np.float32).reshape(-1, width + 1)
        token_ids.append(ids[:, 0])
        token_lp.append(lps[:, 0])
        top_ids.append(ids[:, 1:])
        top_lp.append(lps[:, 1:])
    ids, lps = np.concatenate(top_ids), np.concatenate(top_lp)
    outside = ids >= vocab_size
    if outside.any():
        order = np.argsort(outside, axis=-1, kind="stable")  # the shared vocabulary's tokens first, in rank order
        ids = np.where(outside, -1, ids)
        lps = np.where(outside, -np.inf, lps).astype(np.float32)
        ids, lps = np.take_along_axis(ids, order, -1), np.take_along_axis(lps, order, -1)
    token_lp = np.concatenate(token_lp)
    if np.isnan(token_lp).any() or np.isnan(lps).any():
        raise ValueError(f"NaN in the {role} model's logits: the checkpoint or its inputs are broken")
    return np.concatenate(token_ids), token_lp, ids, lps


def _vllm_batch(engines: dict, rows, idx: Sequence[int], *, vocab_size: int, cfg: ScoringConfig):
    """The output columns of rows ``idx``, one ``generate`` per engine (a dict of arrays)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    width = min(max(cfg.topk, cfg.top_k, cfg.top_k_candidates), vocab_size)
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=width, detokenize=False, flat_logprobs=True)
    prompts = [TokensPrompt(prompt_token_ids=list(rows[i][0]) + list(rows[i][1])) for i in idx]
    targets = np.asarray([t for i in idx for t in rows[i][1]], dtype=np.int64)
    read = {}
    for role in ("base", "rl"):
        outs = engines[role].generate(prompts, params, use_tqdm=False)
        token_ids, *read[role] = _prompt_logprobs(outs, [len(rows[i][0]) for i in idx], width, vocab_size, role)
        if not np.array_equal(token_ids, targets):
            raise RuntimeError(f"vLLM's {role} engine scored other tokens than the rows hold")
    (lp_b, ids_b, top_b), (lp_r, ids_r, top_r) = read["base"], read["rl"]
    k, k_ov, k_cand = min(cfg.topk, width), min(cfg.top_k, vocab_size), min(cfg.top_k_candidates, vocab_size)
    chunk = cfg.chunk_for(vocab_size)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in TOPK_SCORE_COLUMNS}
    for start in range(0, len(targets), chunk):
        sl = slice(start, start + chunk)
        # each model's top K log-probs, -inf elsewhere: the statistics renormalise them, as keep_top's
        dense = []
        for ids, lps in ((ids_b[sl, :k], top_b[sl, :k]), (ids_r[sl, :k], top_r[sl, :k])):
            d = torch.full((len(ids), vocab_size), -math.inf)
            at = torch.as_tensor(ids >= 0)
            rows_of = torch.arange(len(ids))[:, None].expand(-1, k)
            d[rows_of[at], torch.as_tensor(ids)[at]] = torch.as_tensor(lps)[at]
            dense.append(d)
        stats = token_stats_unchecked(*dense, top_k=k_ov)
        for c in TOPK_SCORE_COLUMNS:
            parts[c].append(stats[c].numpy())
    out = {c: np.concatenate(v) if v else np.zeros(0, INTEGER_COLUMNS.get(c, np.float32)) for c, v in parts.items()}
    a, b = ids_b[:, :k_ov], ids_r[:, :k_ov]
    shared = ((a[:, :, None] == b[:, None, :]).any(-1) & (a >= 0)).sum(-1)
    out["topk_overlap"] = (shared / k_ov).astype(np.float32)
    out["logp_base"], out["logp_rl"] = lp_b, lp_r
    if k_cand:
        for role, ids, lps in (("base", ids_b, top_b), ("rl", ids_r, top_r)):
            out[f"top_ids_{role}"] = ids[:, :k_cand].astype(np.int32)
            out[f"top_probs_{role}"] = np.exp(lps[:, :k_cand]).astype(np.float32)
    row_of = [i for i in idx for _ in rows[i][1]]
    out["row"] = np.asarray(row_of, dtype=INTEGER_COLUMNS["row"])
    out["position"] = np.asarray([j for i in idx for j in range(len(rows[i][1]))], dtype=INTEGER_COLUMNS["position"])
    out["norm_position"] = np.asarray(
        [j / max(len(rows[i][1]) - 1, 1) for i in idx for j in range(len(rows[i][1]))], dtype=np.float32
    )
    out["token_id"] = targets.astype(INTEGER_COLUMNS["token_id"])
    return out


def start_vllm_engines(
    checkpoints: dict[str, Path],
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    cfg: ScoringConfig,
    engine: RolloutConfig,
) -> tuple[dict, int]:
    """(role -> ``vllm.LLM``, the longest row they take) for scoring ``rows``: the engine settings
    ``engine`` (config ``rollout.vllm_*``) with the scoring job's threads, a context for the longest row
    and the one token vLLM must generate (unless ``vllm_max_model_len`` says), and half the memory share
    each (the pair's two engines share the job's devices)."""
    import dataclasses

    from tokenshift.checkpoints import resolve_checkpoint
    from tokenshift.generation import SamplingConfig
    from tokenshift.vllm_engine import start_engine

    engine = dataclasses.replace(engine, backend="vllm", threads=cfg.threads)
    longest = max((len(p) + len(r) for p, r in rows), default=1)
    engines, lengths = {}, []
    for role, ckpt in checkpoints.items():
        # a one-token request over prompt + response: the engine's context must hold both and that token
        engines[role], args = start_engine(
            resolve_checkpoint(ckpt), engine, SamplingConfig(max_new_tokens=1), engines=2, tokens=longest + 1
        )
        lengths.append(args["max_model_len"])
    return engines, min(lengths) - 1


def check_score_inputs(
    checkpoints: Mapping[str, Path], pair: Path, manifest: Mapping, rollouts: Path, table: pl.DataFrame, source: str
) -> dict[str, str]:
    """The pair's ``checkpoint_label`` by role, once the inputs are found to be one pair's: two checkpoints, the
    pair manifest's models in their roles, and rollouts (where their table records its ``model``) of the
    ``source`` role's checkpoint. Each was scored without a word before: swapped models, another pair's
    manifest or rollouts, or the other model's rollouts given as ``source``'s. ``InputError`` names the file."""
    from tokenshift.io import InputError

    labels = check_pair_models(checkpoints, pair, manifest)
    held = sorted(set(table["model"].drop_nulls())) if "model" in table.columns else []
    if held and held != [labels[source]]:
        others = [r for r, label in labels.items() if label in held]
        whose = f"the {others[0]} model's" if others else "another model's"
        raise InputError(
            f"{rollouts}: {whose} rollouts ({', '.join(held)}), given as the {source} model's (--source {source}: "
            f"{labels[source]}); expected the rollouts of the model --source names"
        )
    return labels


def check_pair_models(checkpoints: Mapping[str, Path], pair: Path, manifest: Mapping) -> dict[str, str]:
    """The ``checkpoint_label`` of each role's checkpoint, once they are the pair manifest's (at ``pair``) two
    models in their roles, with its shared vocabulary: ``InputError`` naming the file otherwise (scoring and
    cross-sampling; the latter labelled another pair's models' runs as this pair's, the sixteenth pass)."""
    from tokenshift.checkpoints import checkpoint_label, label_name
    from tokenshift.io import InputError

    labels = {role: checkpoint_label(ckpt) for role, ckpt in checkpoints.items()}
    if labels["base"] == labels["rl"]:
        raise InputError(
            f"--base {checkpoints['base']} and --rl {checkpoints['rl']}: one checkpoint ({labels['base']}); "
            "expected the pair's two models"
        )
    for role, label in labels.items():
        named = manifest.get(role)
        if named is not None and named != label_name(label):
            raise InputError(
                f"{pair}: pair {manifest.get('pair')!r} has {role} model {named!r}, where --{role} "
                f"{checkpoints[role]} is {label_name(label)!r}: expected the pair's own models in their roles"
            )
    _check_shared_vocabulary(checkpoints, pair, manifest)
    return labels


def _check_shared_vocabulary(checkpoints: Mapping[str, Path], pair: Path, manifest: Mapping) -> None:
    """The pair manifest's ``shared_vocab_size`` is what ``tokenizer.check_pair`` found: the smaller of the two
    tokenizers' sizes their manifests record (one edited since failed a job with a traceback)."""
    from tokenshift.checkpoints import manifest_path, resolve_checkpoint
    from tokenshift.io import InputError, read_json, remake_hint

    paths = [manifest_path(resolve_checkpoint(c)) for c in checkpoints.values()]
    sizes = [read_json(m, "a checkpoint manifest").get("tokenizer_size") for m in paths if m.is_file()]
    if len(sizes) == 2 and all(isinstance(n, int) for n in sizes) and manifest["shared_vocab_size"] != min(sizes):
        raise InputError(
            f"{pair}: shared_vocab_size {manifest['shared_vocab_size']}, where the pair's tokenizers have "
            f"{' and '.join(map(str, sizes))} tokens: expected {min(sizes)}, as `tokenshift models check-pair` "
            f"writes it (was the file edited?){remake_hint(pair)}"
        )


def run_scoring(
    base: Path,
    rl: Path,
    pair: Path,
    rollouts: Path,
    source: str,
    out: Path,
    *,
    cfg: ScoringConfig = ScoringConfig(),
    part: Part = Part(),
    engine: RolloutConfig = RolloutConfig(),
    progress: bool = True,
):
    """Score the responses of the rollout table ``rollouts`` with both models of a pair; write ``out``.

    ``base`` and ``rl`` are checkpoints (directories or manifests), ``pair`` the pair manifest
    (its shared vocabulary size). One row per response token: the rollout's ``problem_id``,
    ``sample_index`` and ``correct``, ``source`` (the role, base or rl, whose rollouts these are),
    ``statistic`` (``cfg.statistic``: what the distribution columns are of), and the columns of
    ``score_rows`` (the candidates as ``Array`` columns of ``cfg.top_k_candidates`` entries). Of
    scoring split over several jobs, this writes job ``part``'s rows. Under ``cfg.backend`` ``vllm``
    the rows are read by two vLLM engines, with the settings ``engine`` (config ``rollout.vllm_*``).
    The job's batches are written in shards as they are scored, so a stopped job, run again, goes on
    where it stopped (module docstring; ``progress``: a bar of responses scored).
    """
    from tokenshift.checkpoints import checkpoint_identity
    from tokenshift.io import InputError, read_parquet, sha256_file
    from tokenshift.settings import VLLM_ENGINE_KEYS
    from tokenshift.tokenizer import read_pair_manifest

    torch.set_num_threads(cfg.threads)
    manifest = read_pair_manifest(pair)
    vocab = manifest["shared_vocab_size"]
    table = read_parquet(
        rollouts,
        "a rollout table (tokenshift rollout)",
        # token ids checked as counts: a null or a float list reached torch's gather as a traceback
        columns={
            "problem_id": "string",
            "sample_index": "count",
            "correct": "bool",
            "prompt_ids": "list[count]",
            "response_ids": "list[count]",
        },
        # as accuracy reads rollouts: none to score is no table of scores, and a response twice would count twice
        nonempty=True,
        unique=("problem_id", "sample_index"),
    )
    labels = check_score_inputs({"base": base, "rl": rl}, pair, manifest, rollouts, table, source)
    rows = list(zip(table["prompt_ids"].to_list(), table["response_ids"].to_list()))
    # what the shards of an earlier, stopped run of this job must have been made from to be read back
    made_from = {
        "stage": "score",
        "base": checkpoint_identity(base),
        "rl": checkpoint_identity(rl),
        "pair": sha256_file(pair),
        "rollouts": sha256_file(rollouts),
        "source": source,
        "cfg": cfg,
        "part": str(part),
    }
    try:  # before a model is loaded, or the vLLM engines' minutes
        refuse_bad_rows(rows, vocab)
    except ValueError as e:
        raise InputError(
            f"{rollouts}: {e} ({pair}): expected rollouts of the pair's tokenizer, with a prompt each"
        ) from None
    if cfg.backend == "vllm":
        engines, context = start_vllm_engines({"base": base, "rl": rl}, rows, cfg, engine)
        store = ShardStore(out, run_key({**made_from, "vllm": {k: getattr(engine, k) for k in VLLM_ENGINE_KEYS}}))
        res = score_rows_vllm(
            engines, rows, vocab_size=vocab, context=context, cfg=cfg, part=part, store=store, progress=progress
        )
    else:
        res, store = _score_with_hf(base, rl, rows, vocab, cfg, part, out, made_from, progress)
    cols = res.columns
    meta = table.select("problem_id", "sample_index", "correct").select(
        pl.all().gather(pl.Series(cols["row"], dtype=pl.Int64))
    )
    # candidates as fixed-size arrays: k ids (Int32) and k probabilities (Float32) per position
    stats = pl.DataFrame({k: v for k, v in cols.items() if k != "row" and k not in CANDIDATE_COLUMNS})
    candidates = [pl.Series(k, cols[k]) for k in CANDIDATE_COLUMNS if k in cols]
    scores = pl.concat([meta, stats.with_columns(candidates)], how="horizontal")
    # what both sources' scores share: the scoring settings, and those of the rollouts scored (divergence checks it)
    rollouts_made = table["settings"][0] if "settings" in table.columns and table.height else None
    scores = scores.with_columns(
        pl.lit(source).alias("source"),
        pl.lit(cfg.statistic).alias("statistic"),
        pl.lit(settings_label(cfg, rollouts_made)).alias("settings"),
    )
    scores = scores.sort(*SCORE_ORDER)
    write_part(scores, Path(out), models=labels)
    store.close()
    skipped = {k: len(v) for k, v in res.skipped.items()}
    log.info(
        "scored %d tokens of %d responses (%s backend, statistic %s); skipped: %s",
        scores.height,
        len(rows) - sum(skipped.values()),
        cfg.backend,
        cfg.statistic,
        skipped or "none",
    )
    return scores


def _score_with_hf(
    base: Path, rl: Path, rows, vocab: int, cfg: ScoringConfig, part: Part, out: Path, made_from: dict, progress: bool
) -> tuple[ScoreResult, ShardStore]:
    from tokenshift.loading import load_job_models

    (base_model, rl_model), tokens = load_job_models(
        "scoring",
        cfg.max_batch_tokens,
        (base, rl),
        {"device_base": cfg.device_base, "device_rl": cfg.device_rl},
        chunk_memory_bytes=cfg.chunk_memory_mb * 2**20,
    )
    # the batches this job packs (its GPUs') are part of what its shards hold
    store = ShardStore(out, run_key({**made_from, "batch_tokens": tokens}))
    pad = pad_id_of(base_model)
    res = score_rows(
        base_model,
        rl_model,
        rows,
        vocab_size=vocab,
        pad_id=pad,
        cfg=cfg,
        part=part,
        batch_tokens=tokens,
        store=store,
        progress=progress,
    )
    return res, store
