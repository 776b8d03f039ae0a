"""The lists several places need, each kept once: roles, directions, switching policies, the
cross-sampling grid, and the names of the divergence tables and per-pair figures.

The workflow's rules and wildcard constraints, the CLI's choices, the config checks and the
library all read them from here (as lm-evaluation-harness keeps its registry in one module).
Nothing here imports torch or polars, so the workflow can read it while it builds the DAG.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROLES = ("base", "rl")
"""The two models of a pair; also the two response sources scored (whose rollouts)."""

DIRECTIONS = ("forward", "reverse")
"""Cross-sampling directions: ``forward`` (the base model generates, RL tokens injected), ``reverse``."""
THRESHOLD_LEVELS = ("dataset", "prompt", "response")
"""Over what a percentile threshold is taken: the dataset's scored rollouts, or per prompt or response."""

GENERATOR = {"forward": "base", "reverse": "rl"}
"""Which model generates in each direction (the other one's tokens are injected)."""
INJECTED = {"forward": "rl", "reverse": "base"}
"""Whose tokens are injected in each direction (the model that does not generate)."""

GPU_REQUESTS = ("gpus", "gres")
"""How a cluster job asks for its GPUs (``cluster.gpu_request``): ``--gpus`` or ``--gres=gpu:...``."""
MODEL_DTYPES = ("float32", "bfloat16", "float16")
"""What a model entry's ``dtype`` may say (``models.<name>.dtype``)."""
INJECTED_EOS = ("end", "drop", "remove")
"""What a switch that draws the injected model's EOS does (``tokenshift.crosssample.SwitchRule.eos``)."""
INJECTIONS = ("sample", "extrapolate")
"""What a switch draws from (``tokenshift.crosssample.SwitchRule.injection``)."""
BACKENDS = ("hf", "vllm")
"""What runs a model in the rollout and scoring stages (``rollout.backend``, ``scoring.backend``)."""
GRADING_MODES = ("strict", "lenient")
"""How an answer is found in a response (``grading.mode``, ``tokenshift.grading``)."""

DIVERGENCE_TABLES = ("sparsity", "position", "entropy", "reallocation")
"""Tables of the divergence stage (``results/<pair>/<dataset>/divergence/<name>.parquet``)."""
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+(,[0-9]+)*)?)$"
"""A model's device, as a config's ``device_*`` keys (the schema's ``device``) and their flags take it: auto (a GPU
where the job has one), cpu, cuda, cuda:<i>, or cuda:<i>,<j>,... (one model over several GPUs)."""
REPORTED_DIVERGENCE = ("sparsity", "position", "reallocation")
"""The divergence tables the report reads (``report.load_result``; its rule declares each)."""

SCORE_ORDER = ("problem_id", "sample_index", "position")
"""The order of a score table's rows (so the gathered parts of a split scoring run are its rows exactly)."""

ADVANTAGE_MODES = ("none", "js", "kl", "topq", "mix", "lowprob")
"""Token advantage weightings of ``tokenshift.advantages`` (``none``: plain GRPO)."""
DIVERGENCE_FIGURES = ("position", "entropy", "reallocation")
"""Figures drawn per pair and dataset from its divergence tables."""
PAIR_FIGURES = (*DIVERGENCE_FIGURES, "crosssample", "example")
"""Figures drawn per cross-sampled pair and dataset; the sparsity overview (figure 1) spans all pairs."""


def report_files(crosssampled: bool) -> tuple[str, ...]:
    """The names of one pair and dataset's files the report reads (``report.load_result``; ``tokenshift report
    --result NAME=PATH``): its accuracy table, the divergence tables ``REPORTED_DIVERGENCE`` names, a
    cross-sampled pair's cross-sampling table, and each figure ``tokenshift figures`` draws for it, as
    ``<figure>.png``."""
    tables = ("accuracy", *REPORTED_DIVERGENCE, *(("crosssample",) if crosssampled else ()))
    return (*tables, *(f"{n}.png" for n in (PAIR_FIGURES if crosssampled else DIVERGENCE_FIGURES)))


@dataclass(frozen=True)
class Policy:
    """Where cross-sampling switches: at positions whose ``statistic`` exceeds a threshold."""

    name: str
    statistic: str
    """Key of the decoder's per-step statistics (``tokenshift.decoding.step_statistics``)."""
    help: str
    bounds: tuple[float, float] = (0.0, math.inf)
    """Range of the statistic, so of any threshold."""
    score_column: str | None = None
    """Per-token score column whose percentile sets the threshold (``{generator}`` is the
    generating model's role, ``{other}`` the injected one's; ``a-b`` is the difference of two
    columns); None when a percentile needs no scores."""
    scored: bool = True
    """False where the score tables hold no column of the statistic: a percentile must then be
    taken per prompt or response (over the run's budget-0 twins), not over the dataset."""
    fixed_threshold: float | None = None
    """A threshold that is not configurable (``argmax`` switches where the argmaxes differ)."""
    default_threshold: Mapping[str, float] | None = dataclasses.field(default_factory=lambda: {"percentile": 90})
    tau: bool = False
    """Also takes ``{tau: t}``, the follow-up's rule "switch where log p_other(y) - log p_generator(y)
    <= t", as the threshold -t on its statistic."""

    @property
    def configurable(self) -> bool:
        return self.fixed_threshold is None

    def needs_scores(self, spec: Mapping[str, Any]) -> bool:
        """Whether ``spec`` takes its threshold from the generating model's scored rollouts (a
        percentile over the whole dataset; one per prompt or response is taken while decoding)."""
        return (
            self.per_row(spec) is None and self.configurable and self.score_column is not None and "percentile" in spec
        )

    def per_row(self, spec: Mapping[str, Any]) -> str | None:
        """``prompt`` or ``response`` where ``spec``'s percentile is taken per prompt or response of
        the run itself (its budget-0 twins); None for one threshold over the dataset. A blind draw's
        percentile is the same at every level, so ``random`` has none."""
        level = spec.get("level", "dataset")
        if level not in THRESHOLD_LEVELS:
            raise ValueError(f"{self.name} threshold level {level!r}: expected one of {THRESHOLD_LEVELS}")
        if level == "dataset" and not self.scored and "percentile" in spec:
            raise ValueError(
                f"{self.name} percentile over the dataset: the score tables hold no {self.name} statistic; "
                "give the percentile a level (prompt or response) or give a threshold"
            )
        if level == "dataset" or (self.score_column is None and self.scored) or not self.configurable:
            return None
        if "percentile" not in spec:
            raise ValueError(f"{self.name} threshold level {level!r} needs a percentile, got {dict(spec)}")
        return level

    def canonical(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The one spelling of ``spec`` among those that make the same run, so that the workflow records one
        setting for all of them: no ``level`` where it is ``dataset`` or changes nothing (a blind draw's
        percentile); a ``random`` percentile as the threshold it is (q / 100); a ``tau`` as its threshold -t."""
        if not self.configurable:
            return {}
        level = self.per_row(spec)  # refuses a bad level
        if level:
            return {"percentile": spec["percentile"], "level": level}
        out = {k: v for k, v in spec.items() if k != "level"}
        if self.tau and "tau" in out:
            return {"threshold": 0.0 - float(out["tau"])}  # 0.0 - t: a tau of 0 is the threshold 0, not -0
        if "percentile" in out and self.score_column is None:
            return {"threshold": float(out["percentile"]) / 100}
        return out

    def score_columns_for(self, direction: str) -> tuple[str, ...]:
        """The score columns the statistic is read from (two for a difference ``a-b``)."""
        named = self.score_column.format(generator=GENERATOR[direction], other=INJECTED[direction])
        return tuple(named.split("-"))

    def score_values(self, scores, direction: str):
        """The statistic at every scored position of ``scores`` (a polars DataFrame)."""
        first, *rest = self.score_columns_for(direction)
        return scores[first] - scores[rest[0]] if rest else scores[first]

    def check(self, threshold: float, key: str = "threshold") -> None:
        low, high = self.bounds
        if math.isnan(threshold) or not low <= threshold <= high:
            raise ValueError(f"{self.name} {key} {threshold}: expected a value in [{low}, {high:.6g}]")

    def resolve(self, spec: Mapping[str, Any], direction: str, scores=None) -> float | None:
        """The absolute threshold of ``spec`` (``{"threshold": t}`` or ``{"percentile": q}``).

        A percentile of a scored statistic is taken over ``scores`` (a polars DataFrame of the
        generating model's own rollouts, scored); a percentile of the blind ``random`` draw is
        its switching rate's complement, q / 100. A percentile per prompt or response (``level``)
        is None here: the decoder takes it over the run's own budget-0 twins.
        """
        if not self.configurable:
            return self.fixed_threshold
        if self.per_row(spec):
            q = float(spec["percentile"])
            if not 0 <= q <= 100:
                raise ValueError(f"{self.name} percentile {q}: expected a value in [0, 100]")
            return None  # each row's own, while decoding
        if "threshold" in spec:
            t = float(spec["threshold"])
        elif self.tau and "tau" in spec:
            t = -float(spec["tau"])
        elif "percentile" in spec:
            q = float(spec["percentile"])
            if not 0 <= q <= 100:
                raise ValueError(f"{self.name} percentile {q}: expected a value in [0, 100]")
            if self.score_column is None:
                t = q / 100
            elif scores is None:
                raise ValueError(
                    f"{self.name} percentile {q} needs the per-token scores of the generating model's rollouts"
                )
            else:
                t = float(self.score_values(scores, direction).quantile(q / 100, "linear"))
        else:
            keys = "'threshold', 'tau' or 'percentile'" if self.tau else "'threshold' or 'percentile'"
            raise ValueError(f"{self.name}: expected {keys}, got {dict(spec)}")
        self.check(t)
        return t


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy(
            "js",
            "js",
            "Jensen-Shannon divergence between the two models (nats), the paper's criterion",
            bounds=(0.0, math.log(2.0)),
            score_column="js",
        ),
        Policy(
            "random",
            "uniform",
            "a seeded uniform draw in [0, 1), blind to both models: the control "
            "(a percentile q switches a share 1 - q/100 of positions)",
            bounds=(0.0, 1.0),
        ),
        Policy(
            "argmax",
            "argmax",
            "1 where the two models' argmax tokens differ",
            bounds=(0.0, 1.0),
            fixed_threshold=0.5,
            default_threshold=None,
        ),
        Policy(
            "entropy",
            "entropy",
            "the generating model's entropy (nats), the criterion of the authors' scripts",
            score_column="entropy_{generator}",
        ),
        Policy(
            "logprob",
            "logprob",
            "log p_generator(y) - log p_other(y) of the generator's sampled token y: the authors' 'logprob' "
            "criterion (how much less the injected model wants the token the generator drew)",
            bounds=(-math.inf, math.inf),
            score_column="logp_{generator}-logp_{other}",
        ),
        Policy(
            "dlogp",
            "logprob",
            "the follow-up's signed log-probability difference (forward: log p_RL(y) - log p_base(y)): it "
            "switches where that is below tau, given as {tau: t}, i.e. where the logprob statistic exceeds -tau",
            bounds=(-math.inf, math.inf),
            score_column="logp_{generator}-logp_{other}",
            tau=True,
            # ours, as the other scored policies': a tau, as the follow-up gives it (theirs: -0.3 for DAPO-32B,
            # config/directions.yaml), holds on one pair's log-probability scale only
            default_threshold={"percentile": 90},
        ),
        Policy(
            "rank",
            "rank",
            "rank of y under the injected model minus its rank under the generator (0-based ranks, y the "
            "generator's sampled token): the authors' 'rank' criterion",
            bounds=(-math.inf, math.inf),
            scored=False,
            default_threshold={"percentile": 90, "level": "prompt"},
        ),
        Policy(
            "kl",
            "kl",
            "KL(generator || other) (nats)",
            score_column="kl_{generator}_{other}",
        ),
        Policy(
            "kl_r",
            "kl_r",
            "KL(other || generator) (nats)",
            score_column="kl_{other}_{generator}",
        ),
        Policy(
            "entropy_other",
            "entropy_other",
            "the injected model's entropy (nats)",
            score_column="entropy_{other}",
        ),
    )
}
"""The switching policies."""
TOPK_STATISTICS = ("js", "entropy", "entropy_other")
"""The statistics a ``topk:K`` setting takes over each model's K most probable tokens, renormalised."""
TOPK_SCORE_COLUMNS = (
    "js",
    "kl_base_rl",
    "kl_rl_base",
    "entropy_base",
    "entropy_rl",
    "rl_top1_rank_in_base",
    "base_top1_rank_in_rl",
    "p_base_of_rl_top1",
    "p_rl_of_rl_top1",
)
"""The score columns that ``scoring.statistic: topk:K`` takes over each model's K most probable tokens,
renormalised: those that need a whole distribution. The others (each model's log-prob of the token,
``topk_overlap``, the candidates) are the models' own under any statistic: K log-probs give them exactly."""
RANK_BUCKETS = 5
HEADLINE_RANK_K = (1, 3)
"""The k of "RL's top token is among the base model's top k" that the report's headline and the reallocation
figure's title read (the paper's claim is top 3): ``divergence.rank_k`` must hold them."""
"""The reallocation table's ranks of RL's top token under the base model: 0 .. RANK_BUCKETS - 1 each, and the rest."""
DEFAULT_POLICIES = ("js", "random", "argmax", "entropy")
"""The policies a cross-sampling grid runs unless the config names others, in this order."""
ENGINES = ("lockstep", "regenerate")
"""Cross-sampling engines: ``lockstep`` (ours, ``tokenshift.crosssample``: both models decode side by side
on HF transformers) and ``regenerate`` (the authors', ``tokenshift.regenerate``: two vLLM engines, the
generating model regenerating after each switch)."""
FULL_VOCABULARY_STATISTICS = ("rank", "kl", "kl_r")
"""Statistics that need each model's whole distribution: the regenerate engine, which asks vLLM for K
log-probs under ``statistic: topk:K``, computes them only under ``statistic: exact``."""


def regenerate_refuses(policy: str, injected_eos: str, injection: str, topk: int | None) -> tuple[str, str] | None:
    """The first ``crosssample`` setting (key, why) that the regenerate engine does not implement for a run
    of ``policy``, or None: the config check and the stage refuse it, naming the key."""
    if injected_eos == "drop":
        return (
            "injected_eos",
            "engine regenerate implements injected_eos end and remove (draw excluding EOS is lockstep's)",
        )
    if injection != "sample":
        return "injection", "engine regenerate draws a switch from the other model's vLLM sampler: injection sample"
    if topk is not None and POLICIES[policy].statistic in FULL_VOCABULARY_STATISTICS:
        return "statistic", (
            f"engine regenerate takes policy {policy}'s statistic from each model's whole distribution, which "
            f"vLLM gives only with statistic exact (under topk:{topk} it returns the top {topk})"
        )
    return None


EXTRAPOLATION_POLICY = "dlogp"
"""The policy of the follow-up's extrapolation runs (``crosssample.gammas``): its signed log-probability
difference, as in their script."""


def gamma_label(gamma: float) -> str:
    """An extrapolation step as a path label: at most six decimals, no exponent (0.1 -> ``0.1``)."""
    return f"{float(gamma):.6f}".rstrip("0").rstrip(".")


def parse_budget(label: str | int) -> int | None:
    """A budget label: ``all`` (no limit, None) or a non-negative whole number (int64, as every flag:
    ``options.MAX_INTEGER``)."""
    from tokenshift.options import MAX_INTEGER

    if label == "all":
        return None
    try:
        value = int(label)
    except (TypeError, ValueError):
        raise ValueError(f"budget {label!r}: expected a non-negative integer or 'all'") from None
    if value < 0 or str(value) != str(label).strip():
        raise ValueError(f"budget {label!r}: expected a non-negative integer or 'all'")
    if value > MAX_INTEGER:  # the decoder compares it with a tensor of counts: an OverflowError (sixteenth pass)
        raise ValueError(f"budget {label!r}: expected at most 2**63 - 1 or 'all'")
    return value


def budget_label(budget: int | float | str, max_new_tokens: int) -> str:
    """A configured budget as a target label: fractions of ``max_new_tokens`` become tokens (rounded up)."""
    if budget == "all":
        return "all"
    return str(budget if isinstance(budget, int) else math.ceil(budget * max_new_tokens))


def alternatives(names: Sequence[str]) -> str:
    """A regular expression matching exactly one of ``names`` (nothing when empty)."""
    import re

    return "|".join(map(re.escape, names)) if names else "(?!x)x"
