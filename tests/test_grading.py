"""Grading with math-verify through the process pool, on real tricky answers."""

from __future__ import annotations

import os

import pytest

from tokenshift.grading import Grader, grade_one, last_boxed

CASES = [
    # (response, gold, correct)
    ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{3}", "3.0", True),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}", True),  # nested braces
    ("first \\boxed{5}, on reflection \\boxed{7}", "7", True),  # several boxed: the last wins
    ("first \\boxed{7}, on reflection \\boxed{5}", "7", False),
    ("a7+5=12.\nb12-3=9.\n\\boxed{9}", "9", True),  # the toy task's format
    ("a7+5=12.\nb12-3=9.\n\\boxed{19}", "9", False),
    ("\\boxed{-3}", "-3", True),
    ("\\boxed{18}", "18", True),
]


@pytest.mark.parametrize(("response", "gold", "correct"), CASES)
def test_cases_in_process(response, gold, correct):
    assert grade_one(response, gold).correct is correct


def test_last_boxed_balances_braces():
    assert last_boxed("x \\boxed{1} y \\boxed{\\frac{a}{b}} z") == "\\boxed{\\frac{a}{b}}"
    assert last_boxed("\\boxed{2} and an unclosed \\boxed{3") == "\\boxed{2}"
    assert last_boxed("no answer") is None


def test_no_answer_is_wrong_and_says_so():
    assert grade_one("I am not sure.", "7").status == "no_box"
    r = grade_one("I am not sure.", "7", mode="lenient")
    assert not r.correct and r.status == "no_answer"
    r = grade_one("\\boxed{}", "7")
    assert not r.correct and r.status == "no_answer"


def test_strict_grading_marks_an_unboxed_correct_answer_wrong_and_lenient_counts_it():
    response = "7 + 5 = 12, so the answer is 12."
    strict = grade_one(response, "12")
    assert not strict.correct and strict.status == "no_box"  # the authors' rule: no box, wrong
    lenient = grade_one(response, "12", mode="lenient")
    assert lenient.correct and lenient.status == "unboxed"  # graded by the fallback, and says so
    # a boxed answer is graded alike in both modes, on the box alone
    for mode in ("strict", "lenient"):
        r = grade_one("12 is tempting, but \\boxed{13}", "12", mode=mode)
        assert not r.correct and r.status == "ok"
    with pytest.raises(ValueError, match="grading mode 'loose'"):
        Grader(mode="loose")


def test_pool_grades_like_in_process_and_survives_pathological_answers():
    huge = "\\boxed{9^{9^{9^{9^{9}}}}}"  # sympy would try to evaluate a tower of exponents
    responses = [c[0] for c in CASES] + [huge, "\\boxed{\\frac{1}{0}}", ""]
    golds = [c[1] for c in CASES] + ["1", "1", "1"]
    with Grader(timeout_s=2, workers=2) as grader:
        results = grader.grade(responses, golds)
    assert [r.correct for r in results[: len(CASES)]] == [c[2] for c in CASES]
    assert not any(r.correct for r in results[len(CASES) :])
    assert {r.status for r in results[len(CASES) :]} <= {"no_answer", "timeout", "error", "ok", "no_box"}


def test_a_pool_whose_worker_died_is_replaced_and_grades_on():
    """Sixteenth pass: a grading worker killed between two batches broke the pool, and the next batch's submit
    raised BrokenProcessPool out of the job (a traceback); its answers are graded by a new pool."""
    import signal
    import time

    responses, golds = [c[0] for c in CASES], [c[1] for c in CASES]
    with Grader(timeout_s=2, workers=2) as grader:
        grader.grade(responses[:1], golds[:1])
        os.kill(next(iter(grader._get_pool()._processes)), signal.SIGKILL)
        time.sleep(1)  # the pool's manager thread marks it broken
        results = grader.grade(responses[1:], golds[1:])
    assert [r.correct for r in results] == [c[2] for c in CASES[1:]]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 responses but 1 gold"):
        Grader(workers=0).grade(["a", "b"], ["1"])


def test_grading_workers_die_with_a_killed_job(tmp_path):
    """A job killed with SIGKILL cannot shut its pool down; its workers must not linger."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "job.py"
    script.write_text(
        "import os, sys, time\n"
        "from tokenshift.grading import Grader\n"
        "g = Grader(workers=2).__enter__()\n"
        "g.grade(['\\\\boxed{1}', '\\\\boxed{2}'], ['1', '2'])\n"
        "print(' '.join(str(p) for p in g._pool._processes), flush=True)\n"
        "time.sleep(120)\n"
    )
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in job.stdout.readline().split()]
    assert len(workers) == 2
    job.send_signal(signal.SIGKILL)
    job.wait()
    deadline = time.time() + 10
    alive = workers
    while alive and time.time() < deadline:
        time.sleep(0.1)
        alive = [p for p in workers if os.path.exists(f"/proc/{p}") and "zombie" not in _state(p)]
    assert not alive, f"grading workers {alive} outlived their job"


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(line for line in f if line.startswith("State:")).lower()
    except (FileNotFoundError, StopIteration):
        return "zombie"


@pytest.mark.parametrize("mode", ["strict", "lenient"])
def test_answers_that_read_alike_are_graded_once_and_as_each_alone(mode):
    responses = [
        "so \\boxed{7}",
        "other words, same box: \\boxed{7}",
        "\\boxed{8} then \\boxed{7}",  # the last box is read
        "no box, 7",
        "no box at all, 7",
        "\\boxed{7}",  # against another gold
    ]
    golds = ["7", "7", "7", "7", "7", "8"]
    with Grader(workers=1, mode=mode) as grader:
        first = grader.grade(responses, golds)
        assert first == [grade_one(r, g, mode=mode) for r, g in zip(responses, golds)]
        grader.close()
        # every answer read before: no grading process is started again
        assert grader.grade(responses[::-1], golds[::-1]) == first[::-1]
        assert grader._pool is None
        grader.grade(["\\boxed{9}"], ["9"])
        assert grader._pool is not None
