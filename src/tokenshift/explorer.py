"""The token explorer: every embedded response, token by token, in one self-contained HTML page.

``results/explorer.html`` (linked from the report) needs no server and no network: its script,
style and data are inline, so it works from a file:// URL. A reader picks a pair, a dataset and a
group of responses (the base or RL model's rollouts, or one cross-sampling run), then a response
from a list filtered by correctness, switches and problem and sorted by max JS or switches.
Tokens are shaded by JS on a log scale (the grey scale of figure 6, luminance only, so it reads
the same under every colour-vision deficiency); switched tokens are boxed in the colour of the
model they were drawn from; on the toy task, decision points are marked. Hovering or focusing a
token (Tab, arrow keys) shows what the tables hold at that position.

What is embedded, per group:

- rollouts (``scores/<source>.parquet``): per token its id, JS, both KLs, both entropies, both
  log-probabilities of the token, and, where scoring kept them (``scoring.top_k_candidates``),
  each model's top-k candidate ids and probabilities;
- cross-sampling runs: per token its id and the JS the decoder recorded, and where it switched.
  The decoder keeps no candidates or KLs, so the page shows those for rollouts only and says so.
  A run with a budget shows each response next to its budget-0 twin (the same noise), position
  by position, so what a switch changed downstream is in plain sight.

Size cap: ``ExplorerConfig.responses_per_group`` responses per group, the same (problem, sample)
keys in every group that has them (a seeded hash order), so one sample can be followed across
budgets and compared with the rollout it starts from. Floats are kept to 4 significant digits.

Decision points (toy task) are the positions in a problem's correct trace where a mistake would
first show (``tokenshift.toy.task.decision_points``); one is marked on a response only where the
response still agrees with the correct trace on every token before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl

from tokenshift import __version__
from tokenshift.registry import GENERATOR, ROLES, parse_budget
from tokenshift.settings import ExplorerConfig

log = logging.getLogger(__name__)

JS_FLOOR = 1e-5
"""JS at or below this is white, as in figure 6 (``plots.figures.EXAMPLE_FLOOR``)."""
JS_MAX = math.log(2.0)
"""JS is at most ln 2 nats: the top of the colour scale, so colours compare across responses."""
DIGITS = 4
"""Significant digits of every embedded float."""
KEY = ("problem_id", "sample_index")
SCORE_FIELDS = {
    "js": "js",
    "kl_base_rl": "kl_br",
    "kl_rl_base": "kl_rb",
    "entropy_base": "h_base",
    "entropy_rl": "h_rl",
    "logp_base": "logp_base",
    "logp_rl": "logp_rl",
}
"""Per-token score columns embedded for a rollout response, and their names in the page's data."""
CANDIDATE_FIELDS = {
    "top_ids_base": "ids_base",
    "top_probs_base": "p_base",
    "top_ids_rl": "ids_rl",
    "top_probs_rl": "p_rl",
}
_KEY_KINDS = {"problem_id": "string", "sample_index": "count"}
SCORE_COLUMNS = {
    **_KEY_KINDS,
    "position": "count",
    "token_id": "count",
    "correct": "bool",
    **dict.fromkeys(SCORE_FIELDS, "number"),  # a KL may be infinite
}
CANDIDATE_KINDS = {"top_ids_base": "list[count]", "top_probs_base": "list[finite]"}
CANDIDATE_KINDS |= {"top_ids_rl": "list[count]", "top_probs_rl": "list[finite]"}
"""The candidates' columns, where the scores kept any (``scoring.top_k_candidates`` above 0)."""
RUN_IDENTITY = ("pair", "dataset", "direction", "policy", "budget", "injection", "gamma")
"""What tells one cross-sampling run of a study from another (an extrapolation run by its gamma)."""
RUN_COLUMNS = {
    **dict.fromkeys(("pair", "dataset", "direction", "policy", "budget"), "string"),
    **_KEY_KINDS,
    "correct": "bool",
    "response_ids": "list[count]",
    "step_js": "list[number]",
    "switched_positions": "list[count]",
    "finish_reason": "string",
}
"""The columns the page reads from a score table and a cross-sampling run, with their kinds: one missing or of
another type is named, not a traceback (a problems table's: ``datasets.read_problem_table``, with its name)."""
SOURCE_LABEL = {"base": "base model's rollouts", "rl": "RL model's rollouts"}
INJECTED = {"forward": "rl", "reverse": "base"}
"""Whose token a switch draws in each direction (the other model generates: ``registry.GENERATOR``)."""


def rounded(x: float | None) -> float | str | None:
    """A float to ``DIGITS`` significant digits. JSON has no NaN or infinity: NaN is None, and an
    infinite KL (a token one model gives probability exactly 0) is ``"inf"``, shown as ∞."""
    if x is None or math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(f"{x:.{DIGITS}g}")


def draw_order(keys: Iterable[tuple[str, int]], seed: int) -> list[tuple[str, int]]:
    """``keys`` in a seeded hash order: any group takes the first N it has, so groups with the
    same keys embed the same samples whatever their order in the table."""
    digest = lambda k: hashlib.sha256(f"{seed}:{k[0]}:{k[1]}".encode()).digest()
    return sorted(set(keys), key=digest)


def pick(table: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """The first ``n`` of ``table``'s (problem, sample) keys in the draw order, as a key table."""
    chosen = draw_order(table.select(*KEY).unique().iter_rows(), seed)[:n]
    return pl.DataFrame(
        chosen, schema={"problem_id": pl.Utf8, "sample_index": table.schema["sample_index"]}, orient="row"
    )


def agreeing_points(response: Sequence[int], trace: Sequence[int], points: Iterable[int]) -> list[int]:
    """The decision points (positions in the correct ``trace``) at which ``response`` still agrees
    with the trace on every earlier token, so the position means the same in both."""
    agree = next((i for i, (a, b) in enumerate(zip(response, trace)) if a != b), min(len(response), len(trace)))
    return sorted(p for p in set(points) if p <= agree and p < len(response))


DecisionPoints = Callable[[str, Sequence[int]], list[int]]
"""(problem id, response ids) -> decision points to mark on that response."""


def rollout_records(
    scores: pl.DataFrame, keys: pl.DataFrame, decision_points: DecisionPoints | None = None
) -> list[dict]:
    """One record per chosen response of a score table: its tokens and their statistics."""
    rows = scores.join(keys, on=list(KEY), how="semi").sort(*KEY, "position")
    candidates = [c for c in CANDIDATE_FIELDS if c in rows.columns]
    out = []
    for (pid, sample), grp in rows.group_by(list(KEY), maintain_order=True):
        ids = grp["token_id"].to_list()
        js = grp["js"].to_list()
        rec = {
            "problem_id": pid,
            "sample_index": int(sample),
            "correct": bool(grp["correct"][0]),
            "tokens": ids,
            "max_js": rounded(max(js)),  # JS is finite: at most ln 2
            "n_switched": 0,
            "switched": [],
            "decision_points": decision_points(pid, ids) if decision_points else [],
        }
        for col, name in SCORE_FIELDS.items():
            rec[name] = [rounded(v) for v in grp[col].to_list()]
        for col in candidates:
            values = grp[col].to_list()
            rec[CANDIDATE_FIELDS[col]] = (
                values if col.startswith("top_ids") else [[rounded(v) for v in row] for row in values]
            )
        out.append(rec)
    return out


def crosssample_records(
    run: pl.DataFrame,
    keys: pl.DataFrame,
    twin: pl.DataFrame | None = None,
    decision_points: DecisionPoints | None = None,
) -> list[dict]:
    """One record per chosen response of a cross-sampling run; with ``twin`` (the same direction's
    budget-0 run), each response's twin on the same noise under ``twin``."""
    cols = ["response_ids", "step_js", "switched_positions", "correct", "finish_reason"]
    rows = run.join(keys, on=list(KEY), how="semi").sort(*KEY)
    twins = {}
    if twin is not None:
        for r in twin.join(keys, on=list(KEY), how="semi").select(*KEY, *cols).iter_rows(named=True):
            twins[(r["problem_id"], r["sample_index"])] = r
    out = []
    for r in rows.select(*KEY, *cols).iter_rows(named=True):
        rec = _cross_record(r, decision_points)
        rec.update(problem_id=r["problem_id"], sample_index=int(r["sample_index"]))
        t = twins.get((r["problem_id"], r["sample_index"]))
        if t is not None:
            rec["twin"] = _cross_record(t, decision_points)
            a, b = r["response_ids"], t["response_ids"]
            rec["twin"]["first_difference"] = next(
                (i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b))
            )
        out.append(rec)
    return out


def _cross_record(r: Mapping, decision_points: DecisionPoints | None) -> dict:
    ids = list(r["response_ids"])
    js = [rounded(v) for v in r["step_js"]]
    switched = [int(p) for p in r["switched_positions"]]
    return {
        "correct": bool(r["correct"]),
        "tokens": ids,
        "js": js,
        "max_js": max((v for v in js if v is not None), default=None),
        "switched": [p for p in switched if p < len(ids)],
        "n_switched": len(switched),
        # a switch that drew the injected model's EOS ended the response: it sits at len(response)
        "eos_switched": len(ids) in switched,
        "finish_reason": r["finish_reason"],
        "decision_points": decision_points(r["problem_id"], ids) if decision_points else [],
    }


@dataclass
class Group:
    """One list of responses the reader can pick: rollouts of one source, or one cross-sampling run."""

    pair: str
    dataset: str
    kind: str
    """``rollouts`` or ``crosssample``."""
    label: str
    records: list[dict]
    n_total: int
    """Responses in the table the records were drawn from."""
    source: str | None = None
    direction: str | None = None
    policy: str | None = None
    budget: str | None = None
    candidates: int = 0
    """k of the embedded top-k candidates (0: none)."""

    def as_json(self) -> dict:
        out = {k: v for k, v in vars(self).items() if k != "records"}
        if self.kind == "crosssample":
            out["generator"], out["injected"] = GENERATOR[self.direction], INJECTED[self.direction]
        return {**out, "responses": self.records}


def _check_direction(value: str) -> None:
    if value not in GENERATOR:
        raise ValueError(f"direction {value!r}: expected one of {', '.join(GENERATOR)}")


def rollout_group(
    pair: str, dataset: str, source: str, scores: pl.DataFrame, cfg: ExplorerConfig, dp: DecisionPoints | None = None
) -> Group:
    keys = pick(scores, cfg.responses_per_group, cfg.seed)
    # the candidates kept per position: an array's width, or a list's longest (an Array has .size, a List not)
    dtype = scores.schema.get("top_ids_base")
    k = dtype.size if isinstance(dtype, pl.Array) else int(scores["top_ids_base"].list.len().max() or 0) if dtype else 0
    return Group(
        pair,
        dataset,
        "rollouts",
        SOURCE_LABEL[source],
        rollout_records(scores, keys, dp),
        scores.select(*KEY).n_unique(),
        source=source,
        candidates=k,
    )


def crosssample_groups(
    pair: str, dataset: str, runs: Sequence[pl.DataFrame], cfg: ExplorerConfig, dp: DecisionPoints | None = None
) -> list[Group]:
    """A group per run, in grid order; a run with a budget is paired with its direction's budget-0 run."""
    from tokenshift.tables import budget_order

    zero = {r["direction"][0]: r for r in runs if r.height and r["budget"][0] == "0"}
    groups = []
    ordered = sorted(
        (r for r in runs if r.height),
        key=lambda r: (r["direction"][0], budget_order(r["budget"][0]), r["policy"][0]),
    )
    for run in ordered:
        direction, policy, budget = run["direction"][0], run["policy"][0], run["budget"][0]
        keys = pick(run, cfg.responses_per_group, cfg.seed)
        twin = zero.get(direction) if budget != "0" else None
        groups.append(
            Group(
                pair,
                dataset,
                "crosssample",
                f"cross-sampling {direction} · {policy} · budget {budget}"
                if budget != "0"
                else f"cross-sampling {direction} · budget 0",
                crosssample_records(run, keys, twin, dp),
                run.height,
                direction=direction,
                policy=policy,
                budget=budget,
            )
        )
    return groups


def page_data(
    groups: Sequence[Group],
    *,
    problems: Mapping[str, Mapping[str, Mapping[str, str]]],
    vocab: Mapping[str, Mapping[int, str]],
) -> dict:
    """Everything the page shows: the groups, each dataset's problems (question and gold answer of
    those embedded) and each pair's token texts (of the ids embedded)."""
    used = {(g.dataset, r["problem_id"]) for g in groups for r in g.records}
    return {
        "tokenshift_version": __version__,
        "js_floor": JS_FLOOR,
        "js_max": JS_MAX,
        "groups": [g.as_json() for g in groups],
        "problems": {
            d: {pid: dict(p) for pid, p in probs.items() if (d, pid) in used} for d, probs in problems.items()
        },
        "vocab": {pair: {str(i): t for i, t in sorted(v.items())} for pair, v in vocab.items()},
    }


def used_ids(groups: Iterable[Group]) -> dict[str, set[int]]:
    """Per pair, every token id an embedded record shows (tokens, twins' tokens, candidates)."""
    out: dict[str, set[int]] = {}
    for g in groups:
        ids = out.setdefault(g.pair, set())
        for r in g.records:
            for rec in (r, r.get("twin") or {}):
                ids.update(rec.get("tokens", ()))
                for key in ("ids_base", "ids_rl"):
                    for row in rec.get(key, ()):
                        ids.update(row)
    return out


def token_text(tokenizer, ids: Iterable[int]) -> dict[int, str]:
    """Each id as the text it decodes to on its own (special tokens by name); a token that is part of
    a character's bytes, which decodes to U+FFFD alone, by its vocabulary entry instead."""
    out = {}
    for i in ids:
        text = tokenizer.decode([int(i)])
        out[int(i)] = tokenizer.convert_ids_to_tokens(int(i)) if "\ufffd" in text else text
    return out


def render(data: Mapping) -> str:
    """The page: the template with the data inline, every ``<`` as ``\\u003c`` (JSON has none outside strings):
    escaping ``</`` alone is not enough, as ``<!--`` then ``<script>`` in a string makes the HTML parser
    skip the script's closing tag."""
    from tokenshift.plots.style import OKABE_ITO, ROLE

    template = resources.files("tokenshift").joinpath("templates/explorer.html").read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")
    style = {"base": ROLE["base"], "rl": ROLE["rl"], "decision": OKABE_ITO["green"], "focus": OKABE_ITO["black"]}
    return template.replace("/*STYLE*/{}", json.dumps(style)).replace("/*DATA*/{}", payload)


def toy_decision_points(problems: pl.DataFrame, tokenizer) -> DecisionPoints | None:
    """The decision points of a toy dataset's problems (None for any other dataset)."""
    if "toy_ops" not in problems.columns:
        return None
    from tokenshift.toy.check import toy_problems
    from tokenshift.toy.task import decision_points

    by_id = toy_problems(problems)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    cache: dict[str, tuple[list[int], list[int]]] = {}

    def points(pid: str, response: Sequence[int]) -> list[int]:
        if pid not in by_id:
            return []
        if pid not in cache:
            p, max_total = by_id[pid]
            cache[pid] = (encode(p.response()), [d.position for d in decision_points(p, encode, max_total)])
        trace, pts = cache[pid]
        return agreeing_points(response, trace, pts)

    return points


def build_explorer(
    scores: Mapping[tuple[str, str], Mapping[str, Path]],
    out: Path,
    *,
    runs: Sequence[Path] = (),
    problems: Sequence[Path] = (),
    tokenizers: Mapping[str, Path],
    cfg: ExplorerConfig = ExplorerConfig(),
) -> dict:
    """Write the explorer page ``out`` for the pairs and datasets of ``scores`` ((pair, dataset) -> the
    per-token scores of its ``base`` and ``rl`` rollouts, ``tokenshift score``'s tables), the
    cross-sampling ``runs`` (their rows name their pair and dataset), each dataset's ``problems``
    table (``tokenshift dataset``) and each pair's tokenizer (pair -> checkpoint); return its data."""
    from tokenshift.datasets import read_problem_table, read_toy_problems
    from tokenshift.io import InputError, read_parquet, write_text_atomic
    from tokenshift.tables import check_made_alike
    from tokenshift.tokenizer import load_tokenizer

    def keyed(t: pl.DataFrame) -> pl.DataFrame:  # a categorical problem_id (a dictionary-encoded copy) joins none
        return t.with_columns(pl.col("problem_id").cast(pl.String))

    tables = {}
    for p in problems:
        t = keyed(read_problem_table(p, also={"dataset": "string"}))
        read_toy_problems(p)  # a toy dataset's operations, checked: its decision points are drawn from them
        if t["dataset"][0] in tables:
            raise InputError(f"{p}: dataset {t['dataset'][0]!r}'s problems, given twice; expected each dataset once")
        tables[t["dataset"][0]] = t
    cross: dict[tuple[str, str], list[pl.DataFrame]] = {}
    seen: dict[tuple, Path] = {}
    for p in runs:
        t = keyed(read_parquet(p, "a cross-sampling run (tokenshift crosssample)", RUN_COLUMNS, unique=KEY))
        if not t.height:
            continue
        for col, check in (("direction", _check_direction), ("budget", parse_budget)):
            for value in t[col].unique().to_list():  # a KeyError or float() traceback where the page is drawn
                try:
                    check(value)
                except ValueError as e:
                    raise InputError(f"{p}: column {col!r}: {e} (a run of tokenshift crosssample)") from None
        run = tuple(t[c][0] for c in RUN_IDENTITY if c in t.columns)
        if run in seen:  # its responses were embedded twice, as two groups
            raise InputError(f"{p}: the same run as {seen[run]} ({', '.join(map(str, run))}); expected each run once")
        seen[run] = Path(p)
        cross.setdefault((t["pair"][0], t["dataset"][0]), []).append(t)
    # what matches no --scores was left out without a word (eleventh hostile pass, H4)
    shown = set(scores)
    if stray := next((key for key in cross if key not in shown), None):
        raise InputError(f"--runs: a run of pair {stray[0]!r} on dataset {stray[1]!r}, whose scores are not given")
    if stray := next((pair for pair in tokenizers if pair not in {p for p, _ in shown}), None):
        raise InputError(f"--tokenizer {stray}=...: no such pair among the scores (--scores)")
    toks = {pair: load_tokenizer(path) for pair, path in tokenizers.items()}
    groups: list[Group] = []
    for (pair, dataset), paths in scores.items():
        if pair not in toks:
            raise InputError(f"--scores {pair}: no tokenizer given for pair {pair!r} (--tokenizer {pair}=CHECKPOINT)")
        dp = toy_decision_points(tables[dataset], toks[pair]) if dataset in tables else None
        read = {}
        for source in ROLES:
            path = Path(paths[source])
            table = keyed(
                read_parquet(path, "per-token scores (tokenshift score)", SCORE_COLUMNS, unique=(*KEY, "position"))
            )
            kept = {c: k for c, k in CANDIDATE_KINDS.items() if c in table.columns}
            read_parquet(path, "per-token scores (tokenshift score) with their candidates", kept)
            if "source" in table.columns and table["source"].null_count():  # sixteenth pass: a traceback
                raise InputError(f"{path}: column 'source' is null (expected per-token scores (tokenshift score))")
            held = sorted(set(table["source"])) if "source" in table.columns else [source]
            if held != [source]:  # the base model's responses shown as the RL model's (eleventh hostile pass, H3)
                raise InputError(
                    f"{path}: scores of the {', '.join(held)} rollouts, given as the {source} scores of --scores "
                    f"{pair} {dataset}; expected BASE, then RL"
                )
            read[path] = table
            groups.append(rollout_group(pair, dataset, source, table, cfg, dp))
        # the base model's scores of one scoring setting beside the RL model's of another (the sixteenth pass)
        check_made_alike(read, "the scores of both sources made alike")
        groups += crosssample_groups(pair, dataset, cross.get((pair, dataset), []), cfg, dp)
    probs = {
        name: {
            r["problem_id"]: {"question": r["question"], "gold": str(r["answer"])}
            for r in t.select("problem_id", "question", "answer").iter_rows(named=True)
        }
        for name, t in tables.items()
    }
    vocab = {pair: token_text(toks[pair], ids) for pair, ids in used_ids(groups).items()}
    data = page_data(groups, problems=probs, vocab=vocab)
    page = render(data)
    write_text_atomic(Path(out), page)
    log.info(
        "explorer: %d groups, %d responses, %.2f MB -> %s",
        len(groups),
        sum(len(g.records) for g in groups),
        len(page.encode()) / 1e6,
        out,
    )
    return data
