"""The paper's third analysis and its shifts over training, on the embedded toy task.

**Divergence-weighted advantages** (``run_variant``, ``advantage_tables``): GRPO from the toy
base model under one advantage weighting of ``tokenshift.advantages`` (``none`` is plain GRPO)
and one training seed, with the toy RL model's learning rate and sampling. The policy is
evaluated before training and every ``eval_every`` rounds on the same eval problems with the
same sampling noise (temperature 1, strict grading, as the rollout stage grades), so runs are
compared problem by problem. ``advantage_tables`` gives accuracy per round (mean over seeds, the
seeds' range) and, at the last round, each variant's accuracy with a bootstrap CI over problems
and its paired difference from ``none`` (same seed, same problem).

**Shifts over training** (``shifts_over_training``): every intermediate checkpoint of the toy
RL model (``checkpoints/step-<k>``, saved by the build) and the final model are teacher-forced
with the base model over a fixed set of responses (the correct traces of eval problems), and the
same statistics as ``tokenshift.toy.check`` are taken at each: the share of positions with
JS < 1e-3, the share with JS > 1e-2, and how precisely the top 5% of positions by JS find the
task's decision points.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tokenshift import layout
from tokenshift.checkpoints import resolve_checkpoint
from tokenshift.generation import sample
from tokenshift.grading import Grader
from tokenshift.io import InputError, read_json, read_parquet, write_parquet_atomic
from tokenshift.loading import load_causal_lm
from tokenshift.registry import ADVANTAGE_MODES
from tokenshift.stats import mean_ci
from tokenshift.tokenizer import load_tokenizer
from tokenshift.toy.build import run_grpo, toy_sampling
from tokenshift.toy.check import build_settings, decision_point_table, refuse_one_checkpoint, response_js
from tokenshift.toy.config import AdvantageExperimentConfig, ToyBuildConfig
from tokenshift.toy.task import decision_points, problems
from tokenshift.train import GRPOConfig

BASELINE = "none"


def run_variant(
    base: Path | str,
    variant: str,
    seed: int,
    cfg: AdvantageExperimentConfig,
    *,
    lr: float = ToyBuildConfig().grpo_lr,
    progress: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Train from the toy base checkpoint ``base`` under ``variant`` with ``seed`` at learning rate
    ``lr`` (the toy RL model's, config ``toy.grpo_lr``); return the evaluations (a row per round
    evaluated and eval problem: ``correct`` is the share of its samples graded correct) and the
    training history (a row per round). The task and sampling length are the base model's."""
    build = build_settings(base)
    torch.set_num_threads(cfg.threads)
    tokenizer = load_tokenizer(base)
    policy = load_causal_lm(base, "cpu")
    reference = load_causal_lm(base, "cpu") if variant != BASELINE else None
    evals = problems(build.task, "eval", cfg.eval_problems)
    prompt_ids = tokenizer([p.prompt for p in evals], add_special_tokens=False).input_ids
    reps = [ids for ids in prompt_ids for _ in range(cfg.eval_samples)]
    golds = [str(p.answer) for p in evals for _ in range(cfg.eval_samples)]
    eval_sampling = toy_sampling(build)  # temperature 1, the task's longest response
    steps = set(cfg.eval_steps())
    rows: list[dict] = []

    with Grader(workers=1) as grader:

        def evaluate(step: int, model) -> None:
            if step not in steps:
                return
            with torch.random.fork_rng():  # training's randomness is untouched by evaluating
                out = sample(
                    model,
                    reps,
                    eos_id=tokenizer.eos_token_id,
                    pad_id=tokenizer.pad_token_id,
                    sampling=eval_sampling,
                    seed=cfg.eval_seed,
                    batch_size=256,
                )
            grades = grader.grade(tokenizer.batch_decode([s.response_ids for s in out]), golds)
            correct = np.array([g.correct for g in grades], dtype=float).reshape(len(evals), cfg.eval_samples)
            rows.extend(
                {"step": step, "problem_id": p.problem_id, "correct": float(c)} for p, c in zip(evals, correct.mean(1))
            )

        evaluate(0, policy)
        grpo_cfg = GRPOConfig(
            steps=cfg.steps,
            prompts_per_step=cfg.prompts_per_step,
            group_size=cfg.group_size,
            lr=lr,
            seed=seed,
            sampling=toy_sampling(build),
            advantage=variant,
            advantage_q=cfg.q,
            advantage_alpha=cfg.alpha,
            advantage_c=cfg.c,
        )
        history = run_grpo(policy, tokenizer, grpo_cfg, build, reference=reference, progress=progress, on_step=evaluate)
    tag = [pl.lit(variant).alias("variant"), pl.lit(seed).alias("seed")]
    return pl.DataFrame(rows).with_columns(tag), pl.DataFrame(history).with_columns(tag)


def write_run(evals: pl.DataFrame, history: pl.DataFrame, out_dir: Path) -> None:
    """``history.parquet``, then ``eval.parquet`` (its presence means the run finished)."""
    for table, rows in (("history", history), ("eval", evals)):
        write_parquet_atomic(rows, Path(out_dir) / Path(layout.advantage_run(table=table)).name)


EVAL_COLUMNS = {"variant": "string", "seed": "count", "step": "count", "problem_id": "string", "correct": "finite"}
"""An advantage run's evaluations (``write_run``): each problem's share of correct samples at a round."""


def read_runs(paths: Sequence[Path | str]) -> pl.DataFrame:
    """The evaluations of the runs at ``paths``, each one run's (one weighting and seed) and each run given
    once; ``InputError`` naming the file otherwise, or for a column of another type."""
    what = "an advantage run's evaluations (tokenshift advantages run)"
    frames, runs = [], {}
    for path in map(Path, paths):
        table = read_parquet(path, what, EVAL_COLUMNS, nonempty=True)
        held = table.select("variant", "seed").unique().sort("variant", "seed")
        if held.height != 1:
            raise InputError(f"{path}: holds the runs {held.rows()}, where one run's evaluations were expected")
        read_parquet(path, what, unique=("step", "problem_id"))  # and each problem once a round
        variant, seed = held.row(0)
        if variant not in ADVANTAGE_MODES:
            raise InputError(f"{path}: holds the weighting {variant!r}, where one of {ADVANTAGE_MODES} was expected")
        if (variant, seed) in runs:
            raise InputError(f"{path}: the run {variant} seed {seed}, as {runs[variant, seed]}: each run is given once")
        if not (table["correct"].min() >= 0 and table["correct"].max() <= 1):
            raise InputError(
                f"{path}: column 'correct' runs from {table['correct'].min():g} to {table['correct'].max():g}, where "
                f"each problem's share of correct samples (in [0, 1]) was expected ({what})"
            )
        runs[variant, seed] = path
        frames.append(table.select(*EVAL_COLUMNS))
    seeds = {v: {s for w, s in runs if w == v} for v, _ in runs}
    first = next(iter(seeds), None)
    for variant, held in seeds.items():
        if held != seeds[first]:  # a paired difference over the common seeds would pass for one over all of them
            raise InputError(
                f"{runs[variant, min(held)]}: weighting {variant} was run with seeds {sorted(held)}, weighting "
                f"{first} with {sorted(seeds[first])}: expected every weighting run with the same seeds"
            )
    return pl.concat(frames)


def advantage_tables(evals: pl.DataFrame, *, seed: int = 0) -> dict[str, pl.DataFrame]:
    """``curve``: accuracy per variant and evaluated round (mean over seeds, the seeds' range);
    ``comparison``: at the last round, each variant's accuracy (bootstrap 95% CI over problems of
    the per-problem mean over seeds) and its paired difference from ``none`` (same seed and
    problem), with the seeds on which it was ahead. Every run must have been evaluated at the same
    rounds on the same problems (an ``InputError`` names one that was not)."""
    _check_comparable(evals)
    per_seed = evals.group_by("variant", "seed", "step").agg(pl.col("correct").mean().alias("accuracy"))
    curve = (
        per_seed.group_by("variant", "step")
        .agg(
            pl.col("accuracy").mean().alias("accuracy"),
            pl.col("accuracy").min().alias("seed_min"),
            pl.col("accuracy").max().alias("seed_max"),
            pl.len().alias("n_seeds"),
        )
        .sort("variant", "step")
    )
    last = evals["step"].max()
    final = evals.filter(pl.col("step") == last)
    variants = list(dict.fromkeys(evals["variant"].to_list()))
    baseline = final.filter(pl.col("variant") == BASELINE).select("seed", "problem_id", pl.col("correct").alias("b"))
    rows = []
    for v in variants:
        mine = final.filter(pl.col("variant") == v)
        # per-problem values in problem order: the bootstrap's resamples depend on the order, and
        # group_by's is arbitrary
        acc, lo, hi = mean_ci(
            mine.group_by("problem_id").agg(pl.col("correct").mean()).sort("problem_id")["correct"].to_numpy(),
            seed=seed,
        )
        row = {
            "variant": v,
            "step": last,
            "accuracy": acc,
            "ci_low": lo,
            "ci_high": hi,
            "n_seeds": mine["seed"].n_unique(),
            "n_problems": mine["problem_id"].n_unique(),
            "diff_vs_none": None,
            "diff_ci_low": None,
            "diff_ci_high": None,
            "seeds_ahead": None,
        }
        paired = mine.join(baseline, on=["seed", "problem_id"], how="inner")
        if v != BASELINE and paired.height:
            diff = paired.with_columns((pl.col("correct") - pl.col("b")).alias("d"))
            d, dlo, dhi = mean_ci(
                diff.group_by("problem_id").agg(pl.col("d").mean()).sort("problem_id")["d"].to_numpy(), seed=seed
            )
            by_seed = diff.group_by("seed").agg(pl.col("d").mean())["d"]
            row.update(diff_vs_none=d, diff_ci_low=dlo, diff_ci_high=dhi, seeds_ahead=int((by_seed > 0).sum()))
        rows.append(row)
    diffs = {"diff_vs_none": pl.Float64, "diff_ci_low": pl.Float64, "diff_ci_high": pl.Float64, "seeds_ahead": pl.Int64}
    comparison = pl.DataFrame(rows, schema_overrides=diffs)
    return {"curve": curve, "comparison": comparison}


def _check_comparable(evals: pl.DataFrame) -> None:
    """Refuse runs evaluated at other rounds or on other problems than the first, or given twice."""
    first = None
    for (variant, seed), run in evals.sort("variant", "seed").group_by("variant", "seed", maintain_order=True):
        name = f"the run {variant} seed {seed}"
        keys = run.select("step", "problem_id")
        if keys.is_duplicated().any():
            raise InputError(f"{name} is given more than once (its rounds and problems repeat)")
        keys = set(keys.iter_rows())
        if first is None:
            first = (name, keys)
        elif keys != first[1]:
            rounds = lambda k: sorted({step for step, _ in k})
            raise InputError(
                f"{name} (rounds {rounds(keys)}) and {first[0]} (rounds {rounds(first[1])}) were not evaluated "
                "at the same rounds on the same problems; compare runs of one experiment config"
            )


def checkpoints_of(rl: Path | str) -> list[tuple[int, Path]]:
    """(GRPO step, checkpoint) of a toy RL model's intermediate checkpoints and its final one.

    The intermediate ones are those its build record says the build saved (every
    ``checkpoint_every`` GRPO steps); one missing, or one more (left by an earlier build into the
    same directory), is an ``InputError`` naming it."""
    final = resolve_checkpoint(rl)
    record = read_json(final / "toy_build.json", "the toy build record of a toy checkpoint")
    if record.get("role") != "rl":  # an SFT or base model has no GRPO checkpoints: rebuilding it makes none
        raise InputError(
            f"{final}: a toy {record.get('role')} model, which GRPO did not train; expected the toy RL model "
            "(a model of `toy: rl`), whose build saves checkpoints along the way"
        )
    build = ToyBuildConfig.from_mapping(record["build"])
    steps, every, saved = build.grpo_steps, build.checkpoint_every, set(build.checkpoint_steps)
    found = {}
    for d in (final / "checkpoints").glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", d.name)
        if m and d.is_dir():
            found[int(m.group(1))] = d
    how = f"its build saves one every {every} of its {steps} GRPO steps" if every else "its build saved none"
    if set(found) - saved:
        extra = ", ".join(found[k].name for k in sorted(set(found) - saved))
        raise InputError(f"{final}: checkpoints {extra} are not of this build ({how}); remove them")
    if saved - set(found):
        missing = ", ".join(f"step-{k}" for k in sorted(saved - set(found)))
        raise InputError(f"{final}: checkpoints {missing} are missing ({how}); build the model again")
    return [(k, resolve_checkpoint(found[k].with_suffix(".json"))) for k in sorted(found)] + [(steps, final)]


def shifts_over_training(base: Path | str, rl: Path | str, *, n_problems: int) -> pl.DataFrame:
    """A row per checkpoint of the toy RL model ``rl`` (``checkpoints_of``): JS against the base
    model over the correct traces of ``n_problems`` eval problems, as ``tokenshift.toy.check``
    measures it (share below 1e-3, share above 1e-2, precision and lift of the top 5% by JS)."""
    refuse_one_checkpoint(base, rl)
    build = build_settings(base)
    torch.set_num_threads(build.threads)
    tokenizer = load_tokenizer(base)
    base_model = load_causal_lm(base, "cpu")
    evals = problems(build.task, "eval", n_problems)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    points = [sorted({d.position for d in decision_points(p, encode, build.task.max_total)}) for p in evals]
    rows = []
    for step, ckpt in checkpoints_of(rl):
        table = decision_point_table(response_js(base_model, load_causal_lm(ckpt, "cpu"), tokenizer, evals), points)
        first = table.row(0, named=True)
        top = table.filter((pl.col("selection") == "top_share") & (pl.col("value") == 0.05)).row(0, named=True)
        high = table.filter((pl.col("selection") == "js_above") & (pl.col("value") == 1e-2)).row(0, named=True)
        rows.append(
            {
                "step": step,
                "checkpoint": ckpt.name if ckpt.parent.name == "checkpoints" else "final",
                "n_positions": first["n_positions"],
                "share_js_below_1e-3": first["share_js_below_1e-3"],
                "share_js_above_1e-2": high["n_selected"] / high["n_positions"],
                "top5_precision": top["precision"],
                "top5_lift": top["lift"],
                "base_rate": first["base_rate"],
                "js_share_on_decision_points": first["js_share_on_decision_points"],
            }
        )
    return pl.DataFrame(rows)
