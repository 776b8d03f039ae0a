"""Check that the toy pair shows the paper's phenomenon, against the task's ground truth.

Two tables:

- ``accuracy``: each model's accuracy on eval problems, sampled at temperature 1 and greedy,
  with bootstrap 95% CIs over problems, and the RL-minus-base gap;
- ``decision_points``: both models teacher-forced over the *correct* trace of each eval
  problem; the Jensen-Shannon divergence at every response position is compared with the
  recorded decision points (where a mistake would first show). For several selections of
  high-JS positions (top 1/5/10/20% of all positions; JS above fixed thresholds) it gives
  precision (share of selected positions that are decision points), recall (share of
  decision points selected), the base rate (share of all positions that are decision
  points: the precision of a random selection) and their ratio, the lift. The first row
  (``selection = all``) also reports the share of positions with JS < 1e-3 and the share of
  total JS that falls on decision points.

Nothing here is tuned to the answer: the JS is computed by ``tokenshift.divergence`` and the
decision points by ``tokenshift.toy.task`` from the problems alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from tokenshift import layout
from tokenshift.checkpoints import checkpoint_identity, resolve_checkpoint
from tokenshift.generation import SamplingConfig, sample
from tokenshift.grading import Grader
from tokenshift.io import InputError, read_json, write_parquet_atomic
from tokenshift.loading import load_causal_lm
from tokenshift.scoring import score_rows
from tokenshift.stats import mean_ci
from tokenshift.tokenizer import load_tokenizer
from tokenshift.toy.config import ToyBuildConfig
from tokenshift.toy.task import EVAL_PROBLEMS, ToyProblem, decision_points, problems

TOP_SHARES = (0.01, 0.05, 0.10, 0.20)
JS_THRESHOLDS = (1e-3, 1e-2, 1e-1)


def build_settings(ckpt: Path | str) -> ToyBuildConfig:
    """The settings a toy checkpoint was built with (its ``toy_build.json``)."""
    path = resolve_checkpoint(ckpt) / "toy_build.json"
    return ToyBuildConfig.from_mapping(read_json(path, "the toy build record of a toy checkpoint")["build"])


def refuse_one_checkpoint(base: Path | str, rl: Path | str) -> None:
    """A toy pair's check of one checkpoint against itself is refused: a model against itself has no shift."""
    if checkpoint_identity(base) == checkpoint_identity(rl):
        raise InputError(
            f"{base} and {rl}: the same checkpoint as the base and the RL model (expected the toy pair's two)"
        )


def sampled_accuracy(
    models: dict, tokenizer, evals: list[ToyProblem], *, max_new_tokens: int, seed: int, samples_per_problem: int = 1
) -> pl.DataFrame:
    prompts = tokenizer([p.prompt for p in evals], add_special_tokens=False).input_ids
    golds = [str(p.answer) for p in evals]
    rows = []
    with Grader(workers=1) as grader:
        for role, model in models.items():
            for decoding, temp, n in (("sampled_t1", 1.0, samples_per_problem), ("greedy", 0.0, 1)):
                reps = [ids for ids in prompts for _ in range(n)]
                out = sample(
                    model,
                    reps,
                    eos_id=tokenizer.eos_token_id,
                    pad_id=tokenizer.pad_token_id,
                    sampling=SamplingConfig(temperature=temp, max_new_tokens=max_new_tokens),
                    seed=seed,
                    batch_size=256,
                )
                grades = grader.grade(
                    tokenizer.batch_decode([s.response_ids for s in out]), [g for g in golds for _ in range(n)]
                )
                per_problem = np.array([g.correct for g in grades], dtype=float).reshape(len(evals), n).mean(1)
                acc, lo, hi = mean_ci(per_problem, seed=seed)
                rows.append(
                    {
                        "role": role,
                        "decoding": decoding,
                        "n_problems": len(evals),
                        "samples_per_problem": n,
                        "accuracy": acc,
                        "ci_low": lo,
                        "ci_high": hi,
                    }
                )
    return pl.DataFrame(rows)


def response_js(base, rl, tokenizer, evals: list[ToyProblem]) -> list[np.ndarray]:
    """JS (nats) at every response position of each problem's correct trace (EOS excluded)."""
    enc_p = tokenizer([p.prompt for p in evals], add_special_tokens=False).input_ids
    enc_r = tokenizer([p.response() for p in evals], add_special_tokens=False).input_ids
    cols = score_rows(
        base, rl, list(zip(enc_p, enc_r)), vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id
    ).columns
    order = np.argsort(cols["row"], kind="stable")
    return np.split(cols["js"][order], np.cumsum([len(r) for r in enc_r])[:-1])


def decision_point_table(js: list[np.ndarray], points: list[list[int]]) -> pl.DataFrame:
    is_dp = np.concatenate([np.isin(np.arange(len(j)), pts) for j, pts in zip(js, points)])
    alljs = np.concatenate(js)
    n, n_dp = alljs.size, int(is_dp.sum())
    base_rate = n_dp / n
    order = np.argsort(-alljs, kind="stable")
    rows = [
        {
            "selection": "all",
            "value": 1.0,
            "n_positions": n,
            "n_selected": n,
            "precision": base_rate,
            "recall": 1.0,
            "base_rate": base_rate,
            "lift": 1.0,
            "share_js_below_1e-3": float((alljs < 1e-3).mean()),
            "js_share_on_decision_points": float(alljs[is_dp].sum() / max(alljs.sum(), 1e-30)),
        }
    ]

    def row(selection: str, value: float, selected: np.ndarray) -> dict:
        k = int(selected.sum())
        prec = float(is_dp[selected].mean()) if k else float("nan")
        return {
            "selection": selection,
            "value": value,
            "n_positions": n,
            "n_selected": k,
            "precision": prec,
            "recall": float(is_dp[selected].sum() / n_dp) if n_dp else float("nan"),
            "base_rate": base_rate,
            "lift": prec / base_rate if base_rate else float("nan"),
            "share_js_below_1e-3": None,
            "js_share_on_decision_points": None,
        }

    for share in TOP_SHARES:
        sel = np.zeros(n, dtype=bool)
        sel[order[: max(1, round(share * n))]] = True
        rows.append(row("top_share", share, sel))
    for t in JS_THRESHOLDS:
        rows.append(row("js_above", t, alljs > t))
    return pl.DataFrame(rows)


def check_toy_pair(
    base: Path,
    rl: Path,
    out_dir: Path,
    *,
    n_problems: int = EVAL_PROBLEMS,
    samples_per_problem: int = SamplingConfig().n,
    seed: int = SamplingConfig().seed,
) -> dict[str, pl.DataFrame]:
    """Write ``accuracy.parquet`` and ``decision_points.parquet`` under ``out_dir``; return both.

    ``base`` and ``rl`` are the toy checkpoints (directories or manifests); the task and thread
    count are those the base model was built with.
    """
    refuse_one_checkpoint(base, rl)
    cfg = build_settings(base)
    torch.set_num_threads(cfg.threads)
    tok = load_tokenizer(base)
    if tok.get_vocab() != load_tokenizer(rl).get_vocab():
        raise InputError(
            f"{rl}: its tokenizer is not that of the toy base model {base} (expected the toy pair's RL model)"
        )
    models = {"base": load_causal_lm(base, "cpu"), "rl": load_causal_lm(rl, "cpu")}
    evals = problems(cfg.task, "eval", n_problems)
    acc = sampled_accuracy(
        models, tok, evals, max_new_tokens=cfg.max_new_tokens, seed=seed, samples_per_problem=samples_per_problem
    )
    encode = lambda text: tok.encode(text, add_special_tokens=False)
    points = [sorted({d.position for d in decision_points(p, encode, cfg.task.max_total)}) for p in evals]
    dp = decision_point_table(response_js(models["base"], models["rl"], tok, evals), points)
    for name, table in (("decision_points", dp), ("accuracy", acc)):  # accuracy last: then the check finished
        write_parquet_atomic(table, Path(out_dir) / Path(layout.toy_check(name)).name)
    return {"accuracy": acc, "decision_points": dp}


def toy_problems(table: pl.DataFrame) -> dict[str, tuple[ToyProblem, int]]:
    """Problem id -> (toy problem, its task's max_total), from a toy dataset's problems table."""
    out = {}
    for pid, first, ops, max_total in table.select("problem_id", "toy_first", "toy_ops", "toy_max_total").iter_rows():
        out[pid] = (ToyProblem(first, tuple((op[0], int(op[1:])) for op in ops), problem_id=pid), max_total)
    return out


def decision_points_from_scores(scores: pl.DataFrame, tokenizer, problems_table: pl.DataFrame) -> pl.DataFrame:
    """The decision-point table over scored rollouts, using the responses that are the correct trace.

    Decision points are positions in a problem's correct trace, so only responses whose tokens
    are exactly that trace are used (``n_responses`` says how many). ``problems_table`` is the
    toy dataset's problems (``tokenshift dataset``), which keeps each problem's operations.
    """
    by_id = toy_problems(problems_table)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    js_list, points = [], []
    for (pid, _), grp in scores.sort("position").group_by(["problem_id", "sample_index"], maintain_order=True):
        if pid not in by_id:
            continue
        p, max_total = by_id[pid]
        if grp["token_id"].to_list() != encode(p.response()):
            continue
        js_list.append(grp["js"].to_numpy())
        points.append(sorted({d.position for d in decision_points(p, encode, max_total)}))
    if not js_list:
        return pl.DataFrame()
    return decision_point_table(js_list, points).with_columns(pl.lit(len(js_list)).alias("n_responses"))
