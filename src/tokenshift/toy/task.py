"""The embedded toy task: multi-step integer arithmetic with a short chain of thought.

A problem is a chain of one-digit operands joined by ``+`` and ``-``; the trace works it
left to right, one step per operation, and ends in ``\\boxed{answer}``, the format of the
paper's math benchmarks. Each operation carries a letter label (``a``, ``b``, ...) in the
question, and each step of the trace, one per line, cites it the same way (``14b+8`` reads
"14, then operation b, which is +8")::

    prompt:   Q:8a+6b+8c-4=?\n
    response: 8a+6=14.\n14b+8=22.\n22c-4=18.\n\\boxed{18}

Why labels: without them the model must find "the i-th operation" of a question by counting,
which a 2-layer model does not learn in a CPU-minutes budget (measured here: ~10% greedy
accuracy after 600 steps, nearly all errors fetching the wrong operation). With them, fetching
the operation is a content lookup (an induction head: the tokens after the label, as in the
question), and the model's remaining freedom sits where the task puts it: the decision points
below. Steps end in a newline so that a label is the same token in the question and in the
trace (Qwen2's pre-tokenizer would glue ``.b`` together), and so that prompt and response meet
at a token boundary: tokenizing them apart or together gives the same ids.

Pretraining traces contain plausible mistakes at *decision points*, each propagated
consistently to the boxed answer (later steps are worked correctly from the wrong total):

- ``operator``: the step's operator is misread (``22-4`` worked as ``22+4``);
- ``carry``: an addition drops its carry (``14+8=12``);
- ``borrow``: a subtraction drops its borrow (``22-4=28``).

Every evaluation problem records where its decision points are: for each step and each
mistake that step admits, the first response token at which the mistaken trace departs
from the correct one. That is the ground truth no real benchmark has, against which the
divergence stage can be checked.

Problems are split into train and eval by a hash of the question, so the two splits never
share a problem whatever their sizes.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from tokenshift.io import InputError
from tokenshift.options import MAX_SEED, option

PROMPT_PREFIX = "Q:"
PROMPT_SUFFIX = "=?\n"
MISTAKE_KINDS = ("operator", "carry", "borrow")
EVAL_PROBLEMS = 500
"""Eval problems drawn for a toy dataset, or the toy check, that does not say how many."""


@dataclass(frozen=True)
class ToyTaskConfig:
    """How toy problems and pretraining traces are drawn."""

    seed: int = option(
        0, "seed of the problem generator; the same seed gives the same problems", minimum=0, maximum=MAX_SEED
    )
    min_steps: int = option(2, "fewest operations in a problem", minimum=1)
    max_steps: int = option(
        8,
        "most operations in a problem (responses then have up to ~70 tokens); one letter label each",
        minimum=1,
        maximum=26,
    )
    max_total: int = option(
        99, "running totals stay within [0, max_total], so numbers have at most two digits", minimum=1
    )
    mistake_rate: float = option(
        0.12, "chance that a pretraining trace makes a mistake at a given step", minimum=0, maximum=1
    )
    eval_share: float = option(
        0.1, "share of the question space in the eval split (by question hash)", minimum=0, maximum=1
    )

    def __post_init__(self):
        if self.min_steps > self.max_steps:  # "at most 0 distinct problems with 3 to 1 operations" said no more
            raise ValueError(f"min_steps {self.min_steps} is above max_steps {self.max_steps}: expected at most it")


LABELS = "abcdefghijklmnopqrstuvwxyz"
"""One letter label per operation of a problem: ``ToyTaskConfig.max_steps`` at most this many."""


@dataclass(frozen=True)
class Step:
    label: str
    left: int
    op: str
    right: int
    result: int

    def text(self) -> str:
        return f"{self.left}{self.label}{self.op}{self.right}={self.result}.\n"


@dataclass(frozen=True)
class ToyProblem:
    """One problem: the first operand and the (operator, operand) chain that follows."""

    first: int
    ops: tuple[tuple[str, int], ...]
    problem_id: str = field(default="", compare=False)

    @property
    def question(self) -> str:
        return str(self.first) + "".join(f"{LABELS[i]}{op}{x}" for i, (op, x) in enumerate(self.ops))

    @property
    def prompt(self) -> str:
        return f"{PROMPT_PREFIX}{self.question}{PROMPT_SUFFIX}"

    @property
    def answer(self) -> int:
        return self.steps()[-1].result

    def steps(self, mistakes: dict[int, str] | None = None) -> list[Step]:
        """Work the chain; ``mistakes`` maps a step index to the mistake made there."""
        mistakes = mistakes or {}
        total = self.first
        steps = []
        for i, (op, x) in enumerate(self.ops):
            worked_op = op
            kind = mistakes.get(i)
            if kind == "operator":
                worked_op = "-" if op == "+" else "+"
            result = total + x if worked_op == "+" else total - x
            if kind == "carry":
                result -= 10
            elif kind == "borrow":
                result += 10
            steps.append(Step(LABELS[i], total, worked_op, x, result))
            total = result
        return steps

    def response(self, mistakes: dict[int, str] | None = None) -> str:
        steps = self.steps(mistakes)
        return "".join(s.text() for s in steps) + f"\\boxed{{{steps[-1].result}}}"


def question_in_eval(question: str, eval_share: float) -> bool:
    """The split a question belongs to, decided by its hash alone."""
    digest = hashlib.sha256(question.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_share


def _operations(total: int, max_total: int) -> list[tuple[str, int]]:
    """The (operator, operand) pairs that may follow a running total, keeping it in [0, max_total]."""
    return [(op, x) for op in "+-" for x in range(1, 10) if 0 <= (total + x if op == "+" else total - x) <= max_total]


def longest_prompt(cfg: ToyTaskConfig) -> int:
    """The most tokens a toy prompt can take: its most bytes (``PROMPT_PREFIX``, a one-digit first operand,
    ``max_steps`` operations of a label, an operator and a one-digit operand, ``PROMPT_SUFFIX``), since the toy
    tokenizer is a byte-level BPE, whose every token holds at least one byte."""
    return len(PROMPT_PREFIX.encode()) + 1 + 3 * cfg.max_steps + len(PROMPT_SUFFIX.encode())


def question_count(cfg: ToyTaskConfig) -> int:
    """How many distinct questions the task's settings allow, both splits together: chains of
    ``min_steps`` to ``max_steps`` operations whose running totals stay in [0, ``max_total``], counted
    by running total (about 4 * 10**10 for the defaults; 126 for one operation per problem)."""
    ways = dict.fromkeys(range(1, 10), 1)  # running total -> chains that reach it
    count = 0
    for step in range(1, cfg.max_steps + 1):
        after: dict[int, int] = {}
        for total, n in ways.items():
            for op, x in _operations(total, cfg.max_total):
                reached = total + x if op == "+" else total - x
                after[reached] = after.get(reached, 0) + n
        ways = after
        if step >= cfg.min_steps:
            count += sum(ways.values())
    return count


ENUMERABLE = 200_000
"""The most questions a task's settings may allow for a split to be listed in full (a second or two):
those of three operations or fewer. Larger ones are far larger (half a million at two to four)."""


def _all_problems(cfg: ToyTaskConfig) -> Iterator[ToyProblem]:
    """Every question the settings allow (``question_count`` of them), in a fixed order."""

    def chains(total: int, ops: tuple[tuple[str, int], ...]) -> Iterator[tuple[tuple[str, int], ...]]:
        if len(ops) >= cfg.min_steps:
            yield ops
        if len(ops) < cfg.max_steps:
            for op, x in _operations(total, cfg.max_total):
                yield from chains(total + x if op == "+" else total - x, (*ops, (op, x)))

    for first in range(1, 10):
        for ops in chains(first, ()):
            yield ToyProblem(first, ops)


@functools.cache
def split_capacity(cfg: ToyTaskConfig, split: str) -> int:
    """The most distinct problems ``problems(cfg, split, n)`` gives: all of the split's questions where
    the settings allow at most ``ENUMERABLE`` (the draw completes itself from the list), else half the
    split's expected share of them, which the random draw fills in bounded time."""
    count = question_count(cfg)
    if count <= ENUMERABLE:
        return sum(question_in_eval(p.question, cfg.eval_share) == (split == "eval") for p in _all_problems(cfg))
    share = cfg.eval_share if split == "eval" else 1 - cfg.eval_share
    return int(count * share) // 2


def _draw_problem(rng: random.Random, cfg: ToyTaskConfig) -> ToyProblem:
    n_steps = rng.randint(cfg.min_steps, cfg.max_steps)
    first = rng.randint(1, 9)
    total = first
    ops = []
    for _ in range(n_steps):
        op, x = rng.choice(_operations(total, cfg.max_total))
        total = total + x if op == "+" else total - x
        ops.append((op, x))
    return ToyProblem(first, tuple(ops))


def problems(cfg: ToyTaskConfig, split: str, n: int) -> list[ToyProblem]:
    """``n`` distinct problems of ``split`` ("train" or "eval"), deterministic in ``cfg.seed``.

    The two splits draw from differently seeded streams and are filtered by question hash,
    so they are disjoint and each is reproducible on its own. Where the random draw stalls (``n``
    near all of a small split's questions), the rest are drawn from the split's full list; more than
    ``split_capacity`` is an ``InputError``, at once.
    """
    if cfg.max_steps > len(LABELS):
        raise ValueError(f"max_steps must be at most {len(LABELS)} (one letter label per operation)")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if n > (capacity := split_capacity(cfg, split)):  # before the draw, which tries ~200 n times first
        raise InputError(
            f"the toy task's {split} split has at most {capacity} distinct problems with {cfg.min_steps} to "
            f"{cfg.max_steps} operations each; {n} were asked for (expected a number of problems <= {capacity})"
        )
    want_eval = split == "eval"
    rng = random.Random(f"{cfg.seed}:{split}")
    seen: set[str] = set()
    out: list[ToyProblem] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            out += _rest_of_split(cfg, split, n, seen, rng)
            break
        p = _draw_problem(rng, cfg)
        q = p.question
        if q in seen or question_in_eval(q, cfg.eval_share) != want_eval:
            continue
        seen.add(q)
        out.append(ToyProblem(p.first, p.ops, problem_id=f"toy-{split}-{len(out):06d}"))
    return out


def _rest_of_split(cfg: ToyTaskConfig, split: str, n: int, seen: set[str], rng: random.Random) -> list[ToyProblem]:
    """The ``n - len(seen)`` problems a stalled draw still needs: the split's other questions, listed
    in full and shuffled by the draw's own stream (so the same settings give the same problems)."""
    if question_count(cfg) > ENUMERABLE:
        raise ValueError(
            f"could not draw {n} distinct {split} problems of the toy task with {cfg.min_steps} to "
            f"{cfg.max_steps} operations each (at most {split_capacity(cfg, split)} are drawn reliably)"
        )
    too_many = ValueError(
        f"the toy task's {split} split has at most {split_capacity(cfg, split)} distinct problems with "
        f"{cfg.min_steps} to {cfg.max_steps} operations each; {n} were asked for"
    )
    rest = [
        p
        for p in _all_problems(cfg)
        if p.question not in seen and question_in_eval(p.question, cfg.eval_share) == (split == "eval")
    ]
    if len(rest) < n - len(seen):
        raise too_many
    rng.shuffle(rest)
    start = len(seen)
    return [
        ToyProblem(p.first, p.ops, problem_id=f"toy-{split}-{start + i:06d}") for i, p in enumerate(rest[: n - start])
    ]


def pretraining_traces(cfg: ToyTaskConfig, train: Sequence[ToyProblem], n: int, seed: int) -> Iterator[tuple[str, str]]:
    """``n`` (prompt, response) pairs over ``train``, each step mistaken with ``cfg.mistake_rate``."""
    rng = random.Random(f"{cfg.seed}:traces:{seed}")
    for _ in range(n):
        p = rng.choice(train)
        mistakes: dict[int, str] = {}
        for i in range(len(p.ops)):
            if rng.random() >= cfg.mistake_rate:
                continue
            # admissibility is judged on the trace with the mistakes made so far
            kinds = admissible_mistakes(p, mistakes, i, cfg.max_total)
            if kinds:
                mistakes[i] = rng.choice(kinds)
        yield p.prompt, p.response(mistakes)


def admissible_mistakes(p: ToyProblem, mistakes: dict[int, str], step: int, max_total: int) -> list[str]:
    """Mistakes step ``step`` can make, given earlier ``mistakes``, keeping every total in range."""
    steps = p.steps(mistakes)
    total = steps[step].left
    op, x = p.ops[step]
    kinds = []
    for kind in MISTAKE_KINDS:
        if kind == "carry" and not (op == "+" and total % 10 + x >= 10):
            continue
        if kind == "borrow" and not (op == "-" and total % 10 < x):
            continue
        trial = p.steps({**mistakes, step: kind})
        if all(0 <= s.result <= max_total for s in trial):
            kinds.append(kind)
    return kinds


@dataclass(frozen=True)
class DecisionPoint:
    step: int
    kind: str
    position: int
    """0-based index, in the correct response's tokens, of the first token a mistake changes."""


def decision_points(p: ToyProblem, encode: Callable[[str], list[int]], max_total: int) -> list[DecisionPoint]:
    """Where each admissible single mistake first departs from the correct response, in tokens."""
    correct = encode(p.response())
    points = []
    for step in range(len(p.ops)):
        for kind in admissible_mistakes(p, {}, step, max_total):
            wrong = encode(p.response({step: kind}))
            pos = next((i for i, (a, b) in enumerate(zip(correct, wrong)) if a != b), min(len(correct), len(wrong)))
            points.append(DecisionPoint(step, kind, pos))
    return points
