"""Answer grading with math-verify, safe against answers that hang or crash the parser.

Every dataset, the toy task included, is graded by this one code path: the gold answer is
parsed as LaTeX (wrapped in ``$...$`` when it is bare); from the response, the last
brace-balanced ``\\boxed{...}`` is graded, as in the paper's protocol (math-verify on its own
would merge several boxed answers into a set). ``verify`` decides equivalence. A response without
a box is wrong (mode ``strict``, the authors' rule and the default; status ``no_box``), or, in mode
``lenient``, graded on math-verify's own extraction from the whole response (status ``unboxed``,
so the tables can count how many answers only the fallback graded).

math-verify's own timeouts use ``signal.alarm``, which works only in a process's main thread.
So grading runs in a process pool, where each worker runs tasks in its main thread and those
timeouts work; the parent also waits at most ``timeout_s`` (plus slack) for each answer and
replaces the pool if a worker is stuck beyond that. An answer that times out or fails to parse
is graded wrong and counted in ``GradeResult.status``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from tokenshift.registry import GRADING_MODES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradeResult:
    correct: bool
    status: str
    """``ok`` (a boxed answer graded), ``unboxed`` (lenient: graded without a box), ``no_box`` (strict:
    no box, wrong), ``no_answer`` (nothing parsed from the answer), ``timeout`` or ``error``."""
    extracted: str = ""
    """What math-verify extracted from the response, as a string (for inspection)."""


def _as_latex(gold: str) -> str:
    gold = gold.strip()
    return gold if gold.startswith("$") or "\\boxed" in gold else f"${gold}$"


def last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` of ``text`` with its braces balanced, or None."""
    start = text.rfind("\\boxed")
    while start != -1:
        i = start + len("\\boxed")
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[start : j + 1]
        start = text.rfind("\\boxed", 0, start)
    return None


def grade_one(response: str, gold: str, timeout_s: int = 5, mode: str = "strict") -> GradeResult:
    """Grade one response in this process (math-verify timeouts work only in a main thread)."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException  # a BaseException, not an Exception

    if mode not in GRADING_MODES:
        raise ValueError(f"grading mode {mode!r}: expected one of {GRADING_MODES}")
    boxed = last_boxed(response)
    if boxed is None and mode == "strict":
        return GradeResult(False, "no_box")
    try:
        gold_parsed = parse(_as_latex(gold), parsing_timeout=timeout_s, raise_on_error=True)
        pred = parse(boxed or response, parsing_timeout=timeout_s, raise_on_error=True)
        if not pred:
            return GradeResult(False, "no_answer")
        ok = verify(gold_parsed, pred, timeout_seconds=timeout_s, raise_on_error=True)
        return GradeResult(bool(ok), "ok" if boxed else "unboxed", str(pred[-1]))
    except (TimeoutError, TimeoutException):
        return GradeResult(False, "timeout")
    except Exception as e:
        if "timeout" in type(e).__name__.lower() or "timed out" in str(e).lower():
            return GradeResult(False, "timeout")
        return GradeResult(False, "error", f"{type(e).__name__}: {e}"[:200])


def _die_with_parent(parent_pid: int) -> None:
    """Pool initializer: a worker dies with the job that forked it.

    A job killed with SIGKILL cannot shut its pool down, and a forked worker holds both ends of
    its task queue, so it would wait for work forever. On Linux the kernel sends the worker
    SIGKILL when its parent dies (``PR_SET_PDEATHSIG``); a parent already gone is checked too.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(0)


class Grader:
    """A pool of grading processes; use as a context manager and call ``grade``.

    ``workers=0`` grades in this process (no hang protection; for debugging only). ``mode`` is
    ``strict`` or ``lenient`` (see the module's docstring).
    """

    def __init__(self, timeout_s: int = 5, workers: int = 1, mode: str = "strict"):
        if mode not in GRADING_MODES:
            raise ValueError(f"grading mode {mode!r}: expected one of {GRADING_MODES}")
        self.timeout_s = timeout_s
        self.workers = workers
        self.mode = mode
        self._pool: ProcessPoolExecutor | None = None
        self._known: dict[tuple[str | None, str], GradeResult] = {}

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            procs = list((self._pool._processes or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
            self._pool = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # fork, as torch's DataLoader does on Linux: spawn would re-import the caller's main
            # module; the children touch only sympy and math-verify, never torch
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_die_with_parent,
                initargs=(os.getpid(),),
            )
        return self._pool

    def _key(self, response: str, gold: str) -> tuple[str | None, str]:
        """What ``grade_one`` reads of a response: its last box, else (lenient) the whole response,
        else (strict) nothing: equal keys are graded alike."""
        boxed = last_boxed(response)
        return (boxed if boxed is not None else None if self.mode == "strict" else response, gold)

    def grade(self, responses: Sequence[str], golds: Sequence[str]) -> list[GradeResult]:
        """One result per response. Responses that give ``grade_one`` the same text to read (the same
        last box against the same gold, as sampled answers often do) are graded once, in this call
        or an earlier one of this grader; a timeout is not remembered (another try may finish)."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        keys = [self._key(r, g) for r, g in zip(responses, golds)]
        todo = {k: i for i, k in enumerate(keys) if k not in self._known}  # one response per new key
        self._known.update(zip(todo, self._grade_each([responses[i] for i in todo.values()], [g for _, g in todo])))
        results = [self._known[k] for k in keys]
        for k in todo:
            if self._known[k].status == "timeout":
                del self._known[k]
        bad = sum(r.status not in ("ok", "unboxed") for r in results)
        if bad:
            log.info("%d of %d answers not graded (no box, no answer, timeout or error)", bad, len(results))
        return results

    def _grade_each(self, responses: list[str], golds: list[str]) -> list[GradeResult]:
        if self.workers == 0:
            return [grade_one(r, g, self.timeout_s, self.mode) for r, g in zip(responses, golds)]
        futures = [self._submit(r, g) for r, g in zip(responses, golds)]
        results: list[GradeResult] = []
        for i, fut in enumerate(futures):
            try:
                # the worker's own alarms fire after timeout_s per parse/verify call; the slack
                # covers queueing behind other answers and a slow pool start
                results.append(fut.result(timeout=3 * self.timeout_s + 30))
            except (FutureTimeout, BrokenProcessPool):
                log.warning("grading answer %r hung or crashed its worker; graded wrong", responses[i][-200:])
                results.append(GradeResult(False, "timeout"))
                self.close()
                # resubmit what was still pending on the dead pool
                for j in range(i + 1, len(futures)):
                    futures[j] = self._submit(responses[j], golds[j])
        return results

    def _submit(self, response: str, gold: str):
        """``grade_one`` of the answer in the pool; a pool broken by a worker that died (killed, out of memory)
        while answers were still being submitted is replaced, once (it raised BrokenProcessPool, a traceback)."""
        try:
            return self._get_pool().submit(grade_one, response, gold, self.timeout_s, self.mode)
        except BrokenProcessPool:
            self.close()
            return self._get_pool().submit(grade_one, response, gold, self.timeout_s, self.mode)
