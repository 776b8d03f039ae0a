"""Cross-sampling: two models decode in lockstep and trade token choices at chosen positions.

The paper's causal experiment. One model *generates*; at positions a selection policy picks,
and while the row's budget lasts, the token is drawn from the *other* model instead:

- direction ``forward``: the base model generates, RL tokens are injected;
- direction ``reverse``: the RL model generates, base tokens are injected.

This module holds where a run switches (``SwitchRule``: direction, policy, threshold, budget and
the authors' options) and the stage (``run_crosssample``: a sharded, resumable, graded run); the
lockstep decoder itself, which rollouts share, is ``tokenshift.decoding``. A policy turns one of
the decoder's per-step statistics into the statistic it switches on, where it exceeds a threshold:

- ``js``: JS(generator, other), the paper's criterion;
- ``entropy``: the generating model's entropy (the criterion of the authors' public resampling
  scripts, which estimated it from top-50 log-probs; here it is exact);
- ``argmax``: 1 where the two models' argmax tokens differ, else 0 (threshold 0.5);
- ``random``: a uniform draw in [0, 1), seeded and independent of the sampling noise: the
  control. With threshold ``t`` it switches a share ``1 - t`` of positions, so at the same
  percentile as ``js`` it switches about as many tokens, at positions chosen blind.

``budget`` caps the switched tokens per response (None: no cap). Runs that differ only in policy
or budget share their randomness (``tokenshift.decoding``): budget 0 gives the same responses
under every policy, and a forward budget-0 row is the base model's rollout of that sample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenshift.generation import Sample, SamplingConfig, check_context, sample_seed
from tokenshift.registry import (
    DIRECTIONS,
    INJECTED_EOS,
    INJECTIONS,
    POLICIES,
    THRESHOLD_LEVELS,
    TOPK_STATISTICS,
    parse_budget,
)
from tokenshift.settings import VLLM_ENGINE_KEYS, CrossSampleConfig, GradingConfig, PromptConfig, RolloutConfig
from tokenshift.sharding import Part

log = logging.getLogger(__name__)

LENGTH_RULES = ("response", "after_switch")


@dataclass(frozen=True)
class SwitchRule:
    """Where one cross-sampling run switches: direction, policy, its absolute threshold, and budget."""

    direction: str = "forward"
    """``forward`` (base generates, RL injected) or ``reverse`` (RL generates, base injected)."""
    policy: str = "js"
    """A name of ``tokenshift.registry.POLICIES``: which statistic decides where to switch."""
    threshold: float | None = 0.01
    """Switch where the policy's statistic exceeds this (None: each row's own, see ``level``)."""
    budget: int | None = None
    """Most switched tokens per response; None means no limit."""
    force: bool = False
    """The authors' forced switch: while budget is left, a stretch of the response after the last
    switch in which no position passes the threshold gets one switch anyway, at its position of
    highest statistic (the response is decoded again from there, on the same noise)."""
    eos: str = "end"
    """A switch that draws the injected model's EOS: ``end`` ends the response (and counts; ours);
    ``drop`` draws the injected token with EOS excluded, so the generator goes on (ours);
    ``remove`` deletes it, the draw spent, and the same position is drawn again while the budget
    lasts, then the generator's own token stands (the authors' ``eot_replace remove``)."""
    level: str = "dataset"
    """``dataset``: ``threshold`` holds for every row. ``prompt`` / ``response``: each row's threshold
    is the ``percentile`` of the statistic over the generator's own responses (the run's budget-0
    twins, on the same noise) to the row's prompt, or over its own twin: the authors' levels."""
    percentile: float | None = None
    """The percentile of a ``prompt`` or ``response`` level."""
    topk: int | None = None
    """Select on JS or entropy of each model's top-K tokens, renormalised (None: the exact statistics;
    the recorded ``step_js`` and ``switched_js`` stay exact)."""
    length: str = "response"
    """``response``: ``max_new_tokens`` caps the whole response. ``after_switch`` (the authors, who
    regenerate ``max_new_tokens`` new tokens after each switch): a row's cap is its last switch's
    position + 1 + ``max_new_tokens`` (``max_new_tokens`` before any), never past ``max_total``."""
    max_total: int | None = None
    """The ``after_switch`` rule's absolute ceiling on a response's length (tokens, EOS excluded): a
    row that reaches it stops there, ``finish_reason`` ``length``, so a batch's memory is bounded."""
    injection: str = "sample"
    """What a switch draws from: ``sample``, the other model's distribution (the paper's); or
    ``extrapolate``, the follow-up's softmax((1 + gamma) log p_other - gamma log p_generator), one
    step past the other model along the generator-to-other direction."""
    gamma: float = 0.0
    """The extrapolation's step (0: the other model itself)."""

    def __post_init__(self):
        if self.level not in THRESHOLD_LEVELS:
            raise ValueError(f"threshold level {self.level!r}: expected one of {THRESHOLD_LEVELS}")
        if (self.level == "dataset") != (self.threshold is not None) or (self.level == "dataset") != (
            self.percentile is None
        ):
            raise ValueError(
                f"threshold level {self.level!r}: expected a threshold at level dataset, a percentile at the others"
            )
        if self.eos not in INJECTED_EOS:
            raise ValueError(f"injected EOS {self.eos!r}: expected one of {INJECTED_EOS}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction {self.direction!r}: expected one of {DIRECTIONS}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r}: expected one of {tuple(POLICIES)}")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"budget {self.budget}: expected a non-negative integer or None (no limit)")
        if self.threshold is not None:
            POLICIES[self.policy].check(self.threshold)
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"top-K statistic with K = {self.topk}: expected K >= 1")
        if self.injection not in INJECTIONS:
            raise ValueError(f"injection {self.injection!r}: expected one of {INJECTIONS}")
        if not (self.gamma >= 0 and math.isfinite(self.gamma)):
            raise ValueError(f"extrapolation gamma {self.gamma}: expected a finite value >= 0")
        if self.length not in LENGTH_RULES:
            raise ValueError(f"length rule {self.length!r}: expected one of {LENGTH_RULES}")
        if (self.length == "after_switch") != (self.max_total is not None):
            raise ValueError(f"length rule {self.length!r}: expected a max_total with after_switch only")

    def decode_steps(self, max_new_tokens: int) -> int:
        """The longest response this rule can decode, in steps (the EOS's step included).

        Each switch moves an ``after_switch`` cap by at most ``max_new_tokens`` (a switch happens
        before the current cap), so ``budget`` switches reach at most (budget + 1) x ``max_new_tokens``.
        """
        if self.length == "response":
            return max_new_tokens
        if self.max_total < max_new_tokens:
            raise ValueError(
                f"max_total_tokens {self.max_total} is below max_new_tokens {max_new_tokens}: the after_switch "
                "rule lets a response run past max_new_tokens, never below it"
            )
        return self.max_total if self.budget is None else min(self.max_total, (self.budget + 1) * max_new_tokens)

    @property
    def budget_label(self) -> str:
        return "all" if self.budget is None else str(self.budget)

    @classmethod
    def resolve(
        cls,
        direction: str,
        policy: str,
        budget: str | int,
        spec: Mapping[str, float],
        scores: Path | None = None,
        *,
        force: bool = False,
        eos: str = "end",
        topk: int | None = None,
        length: str = "response",
        max_total: int | None = None,
        injection: str = "sample",
        gamma: float = 0.0,
    ) -> SwitchRule:
        """The rule of a configured run: ``spec`` is ``{"threshold": t}`` or ``{"percentile": q}`` (a
        percentile of a scored statistic is read off ``scores``, the generating model's scored
        rollouts), ``budget`` a label; at budget 0 ``spec`` may be empty (nothing is switched, so the
        threshold is the statistic's upper bound). A value that cannot work is an ``InputError`` naming it."""
        from tokenshift.io import InputError, read_parquet

        if direction not in DIRECTIONS or policy not in POLICIES:
            raise InputError(
                f"direction {direction!r}, policy {policy!r}: expected one of {DIRECTIONS} and one of {tuple(POLICIES)}"
            )
        pol, table = POLICIES[policy], None
        try:
            pol.per_row(spec)
        except ValueError as e:
            raise InputError(str(e)) from None
        if topk is not None and pol.statistic in TOPK_STATISTICS and pol.needs_scores(spec):
            raise InputError(
                f"{policy} percentile {spec['percentile']} over the dataset is one of the exact statistic (the scored "
                f"rollouts); with statistic topk:{topk} give the percentile a level (prompt or response) or a threshold"
            )
        if pol.needs_scores(spec):
            if scores is None:
                raise InputError(
                    f"{policy} percentile {spec['percentile']} needs --scores: the per-token scores of "
                    "the generating model's rollouts"
                )
            columns = pol.score_columns_for(direction)
            table = read_parquet(scores, "per-token scores (tokenshift score)", dict.fromkeys(columns, "number"))
            why = "no scored positions" if not table.height else None
            generator = "base" if direction == "forward" else "rl"
            held = sorted(set(table["source"].to_list())) if "source" in table.columns else [generator]
            if held != [generator]:  # another source's scores gave another threshold without a word
                why = f"holds scores of {' and '.join(map(repr, held))} responses, not the {generator} model's"
            nan = int(pol.score_values(table, direction).is_nan().sum()) if table.height else 0
            if nan:
                why = f"{' - '.join(columns)} is NaN at {nan} of {table.height} positions"
            if why:
                raise InputError(
                    f"{scores}: {why} (expected per-token scores to take the {policy} threshold, "
                    f"the {spec['percentile']}th percentile of {' - '.join(columns)}, from)"
                )
        try:
            level = pol.per_row(spec)
            # budget 0 switches nowhere: it needs no threshold, and without one takes the statistic's bound
            nowhere = not spec and parse_budget(budget) == 0 and pol.configurable
            return cls(
                direction,
                policy,
                pol.bounds[1] if nowhere else pol.resolve(spec, direction, table),
                parse_budget(budget),
                force,
                eos,
                level or "dataset",
                float(spec["percentile"]) if level else None,
                topk,
                length,
                max_total if length == "after_switch" else None,
                injection,
                gamma if injection == "extrapolate" else 0.0,
            )
        except ValueError as e:
            raise InputError(str(e)) from None


# --- the stage: a sharded, resumable, graded run of one (direction, policy, budget) ------------


def _polars_schema() -> dict:
    import polars as pl

    return {
        "n_switched": pl.Int32,
        "switched_positions": pl.List(pl.Int32),
        "switched_js": pl.List(pl.Float32),
        "step_js": pl.List(pl.Float32),
        "n_forced": pl.Int32,
        "n_removed": pl.Int32,
        "row_threshold": pl.Float32,
        "correct_by_budget": pl.List(pl.Boolean),
    }


class CrossSampleBackend:
    """Both models of a pair loaded for ``cross_sample``; their tokenizers are compared first."""

    def __init__(self, base: Path, rl: Path, rule: SwitchRule, sampling: SamplingConfig, cfg: CrossSampleConfig):
        from tokenshift.loading import load_job_models
        from tokenshift.memory import PROMPT_TOKENS
        from tokenshift.tokenizer import compare_tokenizers, load_tokenizer, stop_ids

        torch.set_num_threads(cfg.threads)
        self.tokenizer = load_tokenizer(base)
        # refused before any decoding: the two models must speak one vocabulary
        self.vocab_size = compare_tokenizers(self.tokenizer, load_tokenizer(rl))
        models, self.batch_size = load_job_models(
            "crosssample",
            cfg.batch_size,
            (base, rl),
            {"device_base": cfg.device_base, "device_rl": cfg.device_rl},
            tokens_per_row=PROMPT_TOKENS + rule.decode_steps(sampling.max_new_tokens),
        )
        self.models = dict(zip(("base", "rl"), models, strict=True))
        self.rule, self.sampling = rule, sampling
        # the stop ids of the generating model, as its rollouts stop (the base model's and the RL model's both)
        self.stops = list(dict.fromkeys(stop_ids(base, self.tokenizer) + stop_ids(rl, self.tokenizer)))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stops[0]

    def generate(self, prompts: Sequence[Sequence[int]], keys: Sequence[tuple[str, int]]) -> list[Sample]:
        steps = self.rule.decode_steps(self.sampling.max_new_tokens)
        setting = "sampling.max_new_tokens" if self.rule.length == "response" else "crosssample.max_total_tokens"
        for role, model in self.models.items():
            context = getattr(model.config, "max_position_embeddings", None)
            if context is not None:
                what = f"the {role} model (its max_position_embeddings)"
                check_context(prompts, keys, steps, context, what, setting)
        from tokenshift.decoding import cross_sample

        return cross_sample(
            self.models["base"],
            self.models["rl"],
            prompts,
            eos_id=self.stops,
            pad_id=self.pad_id,
            vocab_size=self.vocab_size,
            rule=self.rule,
            sampling=self.sampling,
            seeds=[sample_seed(self.sampling.seed, pid, j) for pid, j in keys],
            batch_size=self.batch_size,
        )


def _check_scores_models(scores: Path, base: Path, rl: Path) -> None:
    """``InputError`` where ``scores`` records other checkpoints than the run's two (another pair's scores
    gave another threshold without a word); a table that records none is taken as it is."""
    from tokenshift.checkpoints import checkpoint_label
    from tokenshift.io import InputError, read_models_record

    record = read_models_record(scores)
    ours = {"base": checkpoint_label(base), "rl": checkpoint_label(rl)}
    if record and record != ours:
        raise InputError(
            f"{scores}: scores computed with {record}, where this run's models are {ours}: expected the scores of "
            "this pair's rollouts"
        )


def run_crosssample(
    base: Path,
    rl: Path,
    problems,
    out: Path,
    *,
    direction: str,
    policy: str,
    budget: str | int,
    threshold: Mapping[str, float] | None = None,
    scores: Path | None = None,
    pair: str | None = None,
    prompt: PromptConfig = PromptConfig(),
    sampling: SamplingConfig = SamplingConfig(),
    cfg: CrossSampleConfig = CrossSampleConfig(),
    grading: GradingConfig = GradingConfig(),
    vllm: RolloutConfig = RolloutConfig(),
    part: Part = Part(),
    progress: bool = True,
):
    """Cross-sample ``sampling.n`` graded responses per problem into ``out`` (parquet), resumable by shard.

    The run's switching rule is ``SwitchRule.resolve(direction, policy, budget, threshold, scores)``;
    ``cfg.engine`` decodes it: ``lockstep`` (``cross_sample``) or ``regenerate`` (``tokenshift.regenerate``,
    on vLLM engines configured by ``vllm``'s ``vllm_*`` settings, one table either way).
    ``pair`` names the pair in the rows, as ``dataset`` does the problems file's dataset, so runs
    of other pairs or datasets are never aggregated together. Of a run split over several jobs,
    this writes job ``part``'s rows. Rows are the rollout stage's columns
    plus ``n_switched``, ``switched_positions``, ``switched_js``, ``step_js``, ``n_forced``, ``n_removed``,
    ``row_threshold`` and ``correct_by_budget`` (regenerate: whether the row's response at budget
    0, 1, ... would be correct, its own grade last, which holds for every larger budget up to the
    run's; lockstep: null), and the run's ``direction``, ``policy``, ``budget``, ``threshold`` (absolute;
    null where each row has its own) and ``threshold_level``.
    """
    from tokenshift.checkpoints import checkpoint_identity
    from tokenshift.datasets import as_problems, dataset_name
    from tokenshift.io import InputError
    from tokenshift.options import settings_label
    from tokenshift.sharding import run_key, run_sharded

    rule = SwitchRule.resolve(
        direction,
        policy,
        budget,
        threshold or {},
        scores,
        force=cfg.force_switch,
        eos=cfg.injected_eos,
        topk=cfg.topk,
        length=cfg.length_rule,
        max_total=cfg.max_total_tokens,
        injection=cfg.injection,
        gamma=cfg.gamma,
    )
    try:
        rule.decode_steps(sampling.max_new_tokens)
        if cfg.engine == "regenerate":
            from tokenshift.regenerate import check_rule

            check_rule(rule)
    except ValueError as e:
        raise InputError(str(e)) from None
    if scores is not None:
        _check_scores_models(scores, base, rl)
    labels = {"pair": pair, "dataset": dataset_name(problems) if isinstance(problems, str | Path) else None}
    problems = as_problems(problems)
    if cfg.n_problems and cfg.n_problems > len(problems):  # a cap for every dataset, so not refused: said
        log.warning(
            "crosssample.n_problems is %d, but dataset %s holds %d problems: all %d are cross-sampled",
            cfg.n_problems,
            labels["dataset"] or "given",
            len(problems),
            len(problems),
        )
    if cfg.n_problems:
        problems = problems[: cfg.n_problems]
    key = run_key(
        {
            "stage": "crosssample",
            "base": checkpoint_identity(base),
            "rl": checkpoint_identity(rl),
            "problems": problems,
            "prompt": prompt,
            "sampling": sampling,
            "rule": rule,
            "grading": grading,
            "batch_size": cfg.batch_size,
            "problems_per_shard": cfg.problems_per_shard,
            "threads": cfg.threads,
            "engine": cfg.engine,
            # the vLLM engines' settings, which lockstep does not read
            "vllm": {k: getattr(vllm, k) for k in VLLM_ENGINE_KEYS} if cfg.engine == "regenerate" else None,
        }
    )
    constants = {
        **{k: v for k, v in labels.items() if v is not None},
        "direction": rule.direction,
        "policy": rule.policy,
        "budget": rule.budget_label,
        "threshold": rule.threshold,
        "threshold_level": rule.level,
        "injection": rule.injection,
        "gamma": rule.gamma if rule.injection == "extrapolate" else 0.0,
        # what every run of the grid shares (its own injection aside): the cross-sampling table checks it
        "settings": settings_label(
            prompt,
            sampling,
            grading,
            cfg,
            {k: getattr(vllm, k) for k in VLLM_ENGINE_KEYS} if cfg.engine == "regenerate" else None,
            leave_out=("injection", "gamma"),
        ),
    }

    def backend():
        if cfg.engine == "regenerate":
            from tokenshift.regenerate import RegenerateBackend

            return RegenerateBackend(base, rl, rule, sampling, cfg, vllm)
        return CrossSampleBackend(base, rl, rule, sampling, cfg)

    result = run_sharded(
        backend,
        key,
        problems,
        prompt,
        out,
        n=sampling.n,
        problems_per_shard=cfg.problems_per_shard,
        part=part,
        grading=grading,
        extra_schema=_polars_schema(),
        constants=constants,
        progress=progress,
    )
    if result.height:
        log.info(
            "%s/%s/budget-%s (threshold %s): %d samples, accuracy %.3f, %.2f switched tokens per response",
            rule.direction,
            rule.policy,
            rule.budget_label,
            f"{rule.threshold:.4g}" if rule.level == "dataset" else f"percentile {rule.percentile:g} per {rule.level}",
            result.height,
            result["correct"].mean(),
            result["n_switched"].mean(),
        )
    return result
