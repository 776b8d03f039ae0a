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

Bad input never yields a silent number: a token id outside the shared vocabulary, or an empty
prompt, is an error naming the row; NaN logits (a broken checkpoint) are an error naming the
model; an empty response or one that would not fit the model's context is skipped, counted and
logged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.profiler import record_function

from tokenshift.divergence import token_stats_compiled, token_stats_unchecked
from tokenshift.generation import pad_rows
from tokenshift.memory import halving_on_oom, is_oom
from tokenshift.models import LOGIT_TRANSFORMS, plain_lm_head, transformer_body
from tokenshift.registry import SCORE_ORDER
from tokenshift.settings import AUTO, CPU_BATCH, ScoringConfig
from tokenshift.sharding import Part, write_part

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
) -> ScoreResult:
    """Score ``rows`` of (prompt ids, response ids) with both models; one output row per response token.

    Output columns: ``row`` (index into ``rows``), ``position`` (0-based in the response),
    ``norm_position`` (position / (length - 1), 0 for one-token responses), ``token_id``,
    ``logp_base``, ``logp_rl`` and the ``token_stats`` columns; with ``cfg.top_k_candidates`` > 0,
    also the ``CANDIDATE_COLUMNS`` (``[tokens, k]`` arrays).

    Of scoring split over several jobs, this scores job ``part``'s share of the batches. Every
    job packs all rows into the same batches, so each row is scored in the batch, hence with the
    very floating-point operations, that one job would use: the parts' rows are that job's rows.
    Those batches are packed to ``cfg.max_batch_tokens`` (for ``auto``, ``CPU_BATCH["scoring"]``), so
    which rows a part scores never depends on a job's GPU; ``batch_tokens``, what this job's GPUs hold
    (``tokenshift.models.job_batch``), repacks the part's rows where it differs (then a row's float
    rounding may differ from one job's, as padding to another width does).
    """
    for role, model in (("base", base), ("rl", rl)):
        if not plain_lm_head(model):
            raise ValueError(
                f"the {role} model ({type(model).__name__}) transforms its LM head's output "
                f"({', '.join(k for k in LOGIT_TRANSFORMS if getattr(model.config, k, None))}); "
                "chunked scoring supports plain heads only"
            )
    context = min(_context(base), _context(rl))
    skipped: dict[str, list[int]] = {"empty_response": [], "longer_than_context": []}
    keep = []
    for i, (p, r) in enumerate(rows):
        if len(p) == 0:  # no position predicts the first response token
            raise ValueError(f"row {i}: empty prompt: the first response token has no position to be scored at")
        if len(r) == 0:
            skipped["empty_response"].append(i)
        elif len(p) + len(r) > context:
            skipped["longer_than_context"].append(i)
        else:
            bad = [t for t in list(p) + list(r) if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"row {i}: token id {bad[0]} is outside the shared vocabulary of {vocab_size}")
            keep.append(i)
    for reason, idx in skipped.items():
        if idx:
            log.warning("%d responses skipped (%s), e.g. row %d", len(idx), reason, idx[0])

    k_cand = min(cfg.top_k_candidates, vocab_size)
    names = (*OUT_COLUMNS, *(CANDIDATE_COLUMNS if k_cand else ()))
    out: dict[str, list[np.ndarray]] = {k: [] for k in names}
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
    for batch in mine:
        idx = [keep[b] for b in batch]
        # out of memory: the batch in pieces of half as many rows, each row still read whole
        scored = halving_on_oom(
            functools.partial(_score_in_pieces, base, rl, rows, idx, vocab_size=vocab_size, pad_id=pad_id, cfg=cfg),
            len(idx),
            is_oom=is_oom,
        )
        for k, v in scored.items():
            out[k].append(v)
    # no batch (a part of more parts than batches): empty columns of the types the others have, so the parts stack
    columns = {
        k: np.concatenate(v)
        if v
        else np.zeros((0, k_cand) if k in CANDIDATE_COLUMNS else 0, dtype=INTEGER_COLUMNS.get(k, np.float32))
        for k, v in out.items()
    }
    return ScoreResult(columns, {k: v for k, v in skipped.items() if v})


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
):
    """Score the responses of the rollout table ``rollouts`` with both models of a pair; write ``out``.

    ``base`` and ``rl`` are checkpoints (directories or manifests), ``pair`` the pair manifest
    (its shared vocabulary size). One row per response token: the rollout's ``problem_id``,
    ``sample_index`` and ``correct``, ``source`` (the role, base or rl, whose rollouts these are),
    and the columns of ``score_rows`` (the candidates as ``Array`` columns of ``cfg.top_k_candidates``
    entries). Of scoring split over several jobs, this writes job ``part``'s rows.
    """
    import polars as pl

    from tokenshift.io import InputError, read_json, read_parquet
    from tokenshift.models import job_batch, job_devices, load_causal_lm

    torch.set_num_threads(cfg.threads)
    vocab = read_json(pair, "a pair manifest (tokenshift models check-pair)").get("shared_vocab_size")
    if not isinstance(vocab, int):
        raise InputError(
            f"{pair}: no shared_vocab_size (expected a pair manifest written by `tokenshift models check-pair`)"
        )
    table = read_parquet(
        rollouts,
        "a rollout table (tokenshift rollout)",
        columns=("problem_id", "sample_index", "correct", "prompt_ids", "response_ids"),
    )
    devices = job_devices((base, rl), (cfg.device_base, cfg.device_rl))  # disjoint GPU sets where there are enough
    # planned before the weights take their share of the GPUs' free memory
    tokens = job_batch(
        "scoring", cfg.max_batch_tokens, (base, rl), devices, chunk_memory_bytes=cfg.chunk_memory_mb * 2**20
    )
    models = {"base": load_causal_lm(base, devices[0]), "rl": load_causal_lm(rl, devices[1])}
    pad = pad_id_of(models["base"])
    rows = list(zip(table["prompt_ids"].to_list(), table["response_ids"].to_list()))
    res = score_rows(
        models["base"], models["rl"], rows, vocab_size=vocab, pad_id=pad, cfg=cfg, part=part, batch_tokens=tokens
    )
    cols = res.columns
    meta = table.select("problem_id", "sample_index", "correct").select(
        pl.all().gather(pl.Series(cols["row"], dtype=pl.Int64))
    )
    # candidates as fixed-size arrays: k ids (Int32) and k probabilities (Float32) per position
    stats = pl.DataFrame({k: v for k, v in cols.items() if k != "row" and k not in CANDIDATE_COLUMNS})
    candidates = [pl.Series(k, cols[k]) for k in CANDIDATE_COLUMNS if k in cols]
    scores = pl.concat([meta, stats.with_columns(candidates)], how="horizontal")
    scores = scores.with_columns(pl.lit(source).alias("source")).sort(*SCORE_ORDER)
    write_part(scores, Path(out))
    skipped = {k: len(v) for k, v in res.skipped.items()}
    log.info(
        "scored %d tokens of %d responses; skipped: %s",
        scores.height,
        len(rows) - sum(skipped.values()),
        skipped or "none",
    )
    return scores
