"""Cross-sampling: two models decode in lockstep and trade token choices at chosen positions.

The paper's causal experiment. One model *generates*; at positions a selection policy picks,
and while the row's budget lasts, the token is drawn from the *other* model instead:

- direction ``forward``: the base model generates, RL tokens are injected;
- direction ``reverse``: the RL model generates, base tokens are injected.

Both models keep their own KV cache; every chosen token is appended to both, so at every step
both next-token distributions over the shared vocabulary are at hand. Each step computes, per
row, the exact full-vocabulary Jensen-Shannon divergence between them (nats), the generating
model's entropy, and whether their argmaxes differ; a policy turns one of these into a
*statistic* and switches where the statistic exceeds a threshold:

- ``js``: JS(generator, other), the paper's criterion;
- ``entropy``: the generating model's entropy (the criterion of the authors' public resampling
  scripts, which estimated it from top-50 log-probs; here it is exact);
- ``argmax``: 1 where the two models' argmax tokens differ, else 0 (threshold 0.5);
- ``random``: a uniform draw in [0, 1), seeded and independent of the sampling noise: the
  control. With threshold ``t`` it switches a share ``1 - t`` of positions, so at the same
  percentile as ``js`` it switches about as many tokens, at positions chosen blind.

``budget`` caps the switched tokens per response (None: no cap). Tokens are drawn by inverse
CDF from one uniform per (row, step) shared by whichever model is sampled, so runs that differ
only in policy or budget share their randomness (budget 0 gives the same responses under every
policy), and differences between them are not sampling noise. Rows that finish (EOS or the
length limit) are dropped from both caches as they accumulate, so they stop costing compute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tokenshift.divergence import LN2, entropies_and_js
from tokenshift.generation import Sample, SamplingConfig, left_pad
from tokenshift.scoring import plain_lm_head, transformer_body

DIRECTIONS = ("forward", "reverse")
POLICIES = ("js", "entropy", "argmax", "random")
STAT_COLUMN = {"js": "js", "entropy": {"forward": "entropy_base", "reverse": "entropy_rl"}}
"""Per-token score column whose percentile sets a policy's threshold (scores of the generator's rollouts)."""

COMPACT_FRACTION = 0.125
"""Drop finished rows from the caches once they are this share of the rows still decoded."""


@dataclass(frozen=True)
class CrossSampleConfig:
    direction: str = "forward"
    """``forward`` (base generates, RL injected) or ``reverse`` (RL generates, base injected)."""
    policy: str = "js"
    """Which statistic decides where to switch: ``js``, ``entropy``, ``argmax`` or ``random``."""
    budget: int | None = None
    """Most switched tokens per response; None means no limit."""
    threshold: float = 0.01
    """Switch where the policy's statistic exceeds this."""
    sampling: SamplingConfig = SamplingConfig()
    batch_size: int = 64

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction {self.direction!r}: expected one of {DIRECTIONS}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r}: expected one of {POLICIES}")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"budget {self.budget}: expected a non-negative integer or None (no limit)")
        check_threshold(self.policy, self.threshold)


def check_threshold(policy: str, threshold: float) -> None:
    """Refuse a threshold outside the range of the policy's statistic."""
    bounds = {"js": (0.0, LN2), "entropy": (0.0, math.inf), "argmax": (0.0, 1.0), "random": (0.0, 1.0)}[policy]
    if not (bounds[0] <= threshold <= bounds[1]) or math.isnan(threshold):
        raise ValueError(f"{policy} threshold {threshold}: expected a value in [{bounds[0]}, {bounds[1]:.6g}]")


def parse_budget(text: str | int) -> int | None:
    """``"all"`` means no limit; otherwise a non-negative integer."""
    if text == "all":
        return None
    value = int(text)
    if value < 0:
        raise ValueError(f"budget {text!r}: expected a non-negative integer or 'all'")
    return value


def resolve_threshold(policy: str, direction: str, spec: Mapping[str, Any], scores=None) -> float:
    """The absolute threshold of ``spec`` (``{"threshold": t}`` or ``{"percentile": q}``).

    A percentile of ``js`` or ``entropy`` is taken over ``scores``, the per-token score table of
    the generating model's own rollouts (a polars DataFrame); a percentile of ``random`` is the
    switching rate's complement, q / 100. ``argmax`` always uses 0.5.
    """
    if policy == "argmax":
        return 0.5
    if "threshold" in spec:
        t = float(spec["threshold"])
    elif "percentile" in spec:
        q = float(spec["percentile"])
        if not 0 <= q <= 100:
            raise ValueError(f"{policy} percentile {q}: expected a value in [0, 100]")
        if policy == "random":
            t = q / 100
        else:
            if scores is None:
                raise ValueError(f"{policy} percentile {q} needs the per-token scores of the generating model's rollouts")
            col = STAT_COLUMN[policy] if policy == "js" else STAT_COLUMN[policy][direction]
            t = float(scores[col].quantile(q / 100, "linear"))
    else:
        raise ValueError(f"{policy}: expected 'threshold' or 'percentile', got {dict(spec)}")
    check_threshold(policy, t)
    return t


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """One token per row by inverse CDF with the given uniforms ``u`` (``[N]`` in [0, 1)).

    Temperature 0 is greedy; ``top_p`` < 1 keeps the smallest set of most probable tokens whose
    mass reaches ``top_p`` (the most probable token always stays), as ``generate`` does.
    """
    if sampling.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(-1)
        sorted_p = sorted_p.masked_fill(cum - sorted_p >= sampling.top_p, 0.0)
        return order.gather(-1, _invert_cdf(sorted_p, u)[:, None])[:, 0]
    return _invert_cdf(probs, u)


def _invert_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    # right-sided search: the first index whose CDF exceeds u * total, never a zero-probability token
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)
    return idx.clamp(max=cdf.shape[-1] - 1)[:, 0]


def step_statistics(logits_gen: torch.Tensor, logits_other: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per row: JS between the two models (temperature 1), the generator's entropy, argmax disagreement."""
    logp = torch.log_softmax(logits_gen.float(), dim=-1)
    logq = torch.log_softmax(logits_other.float(), dim=-1)
    ent_gen, _, js = entropies_and_js(logp.exp(), logq.exp())
    return {"js": js, "entropy": ent_gen,
            "argmax": (logits_gen.argmax(-1) != logits_other.argmax(-1)).float()}


def _forward(model, ids, attn, positions, cache, vocab_size):
    if not plain_lm_head(model):  # softcapped or scaled logits: only the full forward knows how
        out = model(input_ids=ids, attention_mask=attn, position_ids=positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :vocab_size], out.past_key_values
    # the transformer body, then the LM head on the last position only, as scoring does: the
    # CausalLM wrapper's bookkeeping is a sizeable share of a small model's step
    out = transformer_body(model)(input_ids=ids, attention_mask=attn, position_ids=positions, past_key_values=cache,
                                  use_cache=True)
    logits = model.get_output_embeddings()(out.last_hidden_state[:, -1])
    return logits[:, :vocab_size], out.past_key_values


@torch.no_grad()
def cross_sample(base: torch.nn.Module, rl: torch.nn.Module, prompts: Sequence[Sequence[int]], *, eos_id: int | None,
                 pad_id: int, vocab_size: int, cfg: CrossSampleConfig, seed: int) -> list[Sample]:
    """One cross-sample per prompt, in prompt order (repeat a prompt to draw several).

    Each ``Sample`` carries ``extra``: ``n_switched``, ``switched_positions`` (0-based positions
    in the response; a switch that drew EOS is at ``len(response_ids)``), ``switched_js`` (the JS
    at each) and ``step_js`` (the JS at every response position, for plots). ``eos_id=None``
    decodes to the length limit (benchmarks). Deterministic given ``seed`` and the batch size.
    """
    gen, other = (base, rl) if cfg.direction == "forward" else (rl, base)
    models = (gen, other)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    out: list[Sample] = []
    try:
        for b, start in enumerate(range(0, len(prompts), cfg.batch_size)):
            out += _decode_batch(gen, other, prompts[start:start + cfg.batch_size], eos_id=eos_id, pad_id=pad_id,
                                 vocab_size=vocab_size, cfg=cfg, seed=seed * 1_000_003 + b)
    finally:
        for m, t in zip(models, was_training):
            m.train(t)
    return out


def _decode_batch(gen, other, prompts, *, eos_id, pad_id, vocab_size, cfg: CrossSampleConfig, seed: int) -> list[Sample]:
    # bookkeeping lives on the generator's device; the other model's logits are moved there
    dev = next(gen.parameters()).device
    dev_o = next(other.parameters()).device
    max_new = cfg.sampling.max_new_tokens
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(dev), mask.to(dev)
    n, width = ids.shape
    attn = torch.zeros((n, width + max_new), dtype=torch.long, device=dev)
    attn[:, :width] = mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    noise = torch.Generator().manual_seed(seed)
    coin = torch.Generator().manual_seed(seed + 1)
    budget = math.inf if cfg.budget is None else cfg.budget

    logits_g, cache_g = _forward(gen, ids, mask, positions, None, vocab_size)
    logits_o, cache_o = _forward(other, ids.to(dev_o), mask.to(dev_o), positions.to(dev_o), None, vocab_size)
    next_pos = positions[:, -1] + 1

    rows = torch.arange(n, device=dev)  # original index of each row still in the caches
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    used = torch.zeros(n, device=dev)
    tokens = torch.full((n, max_new), -1, dtype=torch.long, device=dev)
    switched = torch.zeros((n, max_new), dtype=torch.bool, device=dev)
    js_all = torch.zeros((n, max_new), device=dev)
    length = torch.full((n,), max_new, dtype=torch.long, device=dev)
    stopped = torch.zeros(n, dtype=torch.bool, device=dev)

    for t in range(max_new):
        # one uniform per original row and step, whatever rows were dropped: runs stay coupled
        u = torch.rand(n, generator=noise).to(dev)[rows]
        r = torch.rand(n, generator=coin).to(dev)[rows]
        lg = logits_g.float()
        lo = logits_o.to(dev, torch.float32)
        stats = step_statistics(lg, lo)
        stat = r if cfg.policy == "random" else stats[cfg.policy]
        live = ~done
        switch = (stat > cfg.threshold) & (used < budget) & live
        tok = sample_from_logits(torch.where(switch[:, None], lo, lg), u, cfg.sampling)
        used += switch.float()
        tokens[rows[live], t] = tok[live]
        switched[rows, t] = switch
        js_all[rows, t] = stats["js"]
        if eos_id is not None:
            ended = live & (tok == eos_id)
            length[rows[ended]] = t
            stopped[rows[ended]] = True
            done |= ended
        n_done = int(done.sum())
        if t == max_new - 1 or n_done == len(rows):
            break
        if n_done >= max(1, math.ceil(COMPACT_FRACTION * len(rows))):
            keep = (~done).nonzero()[:, 0]
            cache_g.batch_select_indices(keep)
            cache_o.batch_select_indices(keep.to(dev_o))
            rows, tok, used, attn, next_pos, done = rows[keep], tok[keep], used[keep], attn[keep], next_pos[keep], done[keep]
        attn[:, width + t] = 1
        step_attn, step_ids, step_pos = attn[:, :width + t + 1], tok[:, None], next_pos[:, None]
        logits_g, cache_g = _forward(gen, step_ids, step_attn, step_pos, cache_g, vocab_size)
        logits_o, cache_o = _forward(other, step_ids.to(dev_o), step_attn.to(dev_o), step_pos.to(dev_o), cache_o,
                                     vocab_size)
        next_pos = next_pos + 1

    result = []
    tokens, switched, js_all, length, stopped = (x.cpu() for x in (tokens, switched, js_all, length, stopped))
    for i in range(n):
        k = int(length[i])
        # a switch that drew EOS counts: its position is len(response)
        sw = switched[i, :k + 1 if stopped[i] else k].nonzero()[:, 0]
        result.append(Sample(tokens[i, :k].tolist(), "stop" if stopped[i] else "length", extra={
            "n_switched": len(sw),
            "switched_positions": sw.tolist(),
            "switched_js": js_all[i, sw].tolist(),
            "step_js": js_all[i, :k].tolist(),
        }))
    return result


# --- the stage: a sharded, resumable, graded run of one (direction, policy, budget) ------------

def _polars_schema() -> dict:
    import polars as pl

    return {"n_switched": pl.Int32, "switched_positions": pl.List(pl.Int32), "switched_js": pl.List(pl.Float32),
            "step_js": pl.List(pl.Float32)}


class CrossSampleBackend:
    """Both models of a pair loaded for ``cross_sample``; their tokenizers are compared first."""

    def __init__(self, base_dir, rl_dir, cfg: CrossSampleConfig, *, device_base: str = "auto", device_rl: str = "auto"):
        from transformers import AutoTokenizer

        from tokenshift.models import compare_tokenizers, load_causal_lm

        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        # refused before any decoding: the two models must speak one vocabulary
        self.vocab_size = compare_tokenizers(self.tokenizer, AutoTokenizer.from_pretrained(rl_dir))
        self.models = {"base": load_causal_lm(base_dir, device_base), "rl": load_causal_lm(rl_dir, device_rl)}
        self.cfg = cfg
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    def generate(self, prompts: Sequence[Sequence[int]], seed: int) -> list[Sample]:
        return cross_sample(self.models["base"], self.models["rl"], prompts, eos_id=self.eos_id, pad_id=self.pad_id,
                            vocab_size=self.vocab_size, cfg=self.cfg, seed=seed)


def run_crosssample(base_dir, rl_dir, problems, dataset_spec: Mapping[str, Any], out, cfg: CrossSampleConfig, *,
                    n: int, seed: int, problems_per_shard: int = 64, device_base: str = "auto", device_rl: str = "auto",
                    progress: bool = True):
    """Cross-sample ``n`` graded responses per problem into ``out`` (parquet), resumable by shard.

    Rows are the rollout stage's columns plus ``n_switched``, ``switched_positions``,
    ``switched_js`` and ``step_js``, and the run's ``direction``, ``policy``, ``budget`` and ``threshold``.
    """
    from tokenshift.rollout import run_sharded, settings_key

    settings = {"cfg": asdict(cfg), "n": n, "seed": seed, "problems_per_shard": problems_per_shard}
    key = settings_key([base_dir, rl_dir], problems, dataset_spec, settings)
    constants = {"direction": cfg.direction, "policy": cfg.policy, "budget": budget_label(cfg.budget),
                 "threshold": cfg.threshold}
    return run_sharded(lambda: CrossSampleBackend(base_dir, rl_dir, cfg, device_base=device_base, device_rl=device_rl),
                       key, problems, dataset_spec, out, n=n, seed=seed, problems_per_shard=problems_per_shard,
                       extra_schema=_polars_schema(), constants=constants, progress=progress)


def budget_label(budget: int | None) -> str:
    return "all" if budget is None else str(budget)
