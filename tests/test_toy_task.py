"""The toy task: correct answers, disjoint splits, decision points at the right tokens."""

from __future__ import annotations

import re

import pytest

from tokenshift.toy.task import (
    ToyTaskConfig,
    decision_points,
    longest_prompt,
    pretraining_traces,
    problems,
    question_count,
    question_in_eval,
    split_capacity,
)

CFG = ToyTaskConfig()


def test_answers_are_the_arithmetic_of_the_question():
    for p in problems(CFG, "eval", 200):
        assert p.answer == eval(re.sub("[a-z]", "", p.question))
        assert p.response().endswith(f"\\boxed{{{p.answer}}}")
        assert CFG.min_steps <= len(p.ops) <= CFG.max_steps


def test_trace_format_matches_the_paper_style():
    p = problems(CFG, "eval", 1)[0]
    assert re.fullmatch(r"Q:\d([a-h][+-]\d)+=\?\n", p.prompt)
    assert re.fullmatch(r"(\d+[a-h][+-]\d=\d+\.\n)+\\boxed\{\d+\}", p.response())
    labels = re.findall(r"\d+([a-h])[+-]", p.response())
    assert labels == [chr(ord("a") + i) for i in range(len(p.ops))]  # each step cites its operation


def test_splits_are_disjoint_and_deterministic():
    train = problems(CFG, "train", 3000)
    evals = problems(CFG, "eval", 500)
    assert not {p.question for p in train} & {p.question for p in evals}
    assert all(question_in_eval(p.question, CFG.eval_share) for p in evals)
    assert [p.question for p in problems(CFG, "eval", 500)] == [p.question for p in evals]
    assert [p.question for p in problems(ToyTaskConfig(seed=1), "eval", 50)] != [p.question for p in evals[:50]]


def test_a_split_gives_all_the_problems_its_settings_allow_and_refuses_more():
    # issue 24 (F15): a toy dataset asking for more problems than the task's settings allow was a
    # traceback in its job, and so was one asking for nearly all of a small split
    one = ToyTaskConfig(min_steps=1, max_steps=1)
    assert (
        question_count(one) == 9 * 9 + sum(range(1, 10)) == split_capacity(one, "eval") + split_capacity(one, "train")
    )
    few = ToyTaskConfig(min_steps=1, max_steps=2)  # counted by running totals, and listed one by one
    assert question_count(few) == split_capacity(few, "eval") + split_capacity(few, "train") == 2025
    with pytest.raises(ValueError, match=f"eval split has at most {split_capacity(one, 'eval')} distinct problems"):
        problems(one, "eval", split_capacity(one, "eval") + 1)
    small = ToyTaskConfig(min_steps=1, max_steps=3)
    most = split_capacity(small, "eval")
    got = problems(small, "eval", most)  # the random draw stalls short of them all; the list completes it
    assert len({p.question for p in got}) == most and all(question_in_eval(p.question, small.eval_share) for p in got)
    assert [p.problem_id for p in got] == [f"toy-eval-{i:06d}" for i in range(most)]
    assert problems(small, "eval", 50) == got[:50]  # the draw itself is unchanged


def test_the_dataset_command_refuses_more_toy_problems_than_the_task_holds_at_once(tmp_path):
    """Tenth hostile pass (G7): `tokenshift dataset --toy eval` past the split's capacity was a ValueError
    traceback, and at 200000 problems a draw of 200 tries per problem that ran for minutes."""
    import time

    from helpers import cli, one_line_error

    for n in ("5000", "999999999"):
        start = time.monotonic()
        cmd = ["dataset", "big", "--toy", "eval", "--n-problems", n, "--min-steps", "1", "--max-steps", "2"]
        r = cli([*cmd, "--out", str(tmp_path / "x.parquet")])
        one_line_error(r, f"eval split has at most {split_capacity(ToyTaskConfig(min_steps=1, max_steps=2), 'eval')}")
        assert time.monotonic() - start < 60 and not (tmp_path / "x.parquet").exists()
    # eleventh hostile pass (H9): 27 operations (one letter label each) was a ValueError traceback, and min above
    # max said "at most 0 distinct problems with 3 to 1 operations"
    out = ["--out", str(tmp_path / "x.parquet")]
    r = cli(["dataset", "d", "--toy", "eval", "--max-steps", "27", *out])
    assert r.returncode == 2 and "argument --max-steps: expected a value <= 26, got 27" in r.stderr, r.stderr
    r = cli(["dataset", "d", "--toy", "eval", "--min-steps", "3", "--max-steps", "1", *out])
    one_line_error(r, "min_steps 3 is above max_steps 1")


def test_mistaken_traces_are_consistent_and_at_the_configured_rate():
    train = problems(CFG, "train", 500)
    n_wrong = 0
    traces = list(pretraining_traces(CFG, train, 2000, seed=0))
    by_prompt = {p.prompt: p for p in train}
    for prompt, response in traces:
        p = by_prompt[prompt]
        steps = re.findall(r"(\d+)[a-h]([+-])(\d)=(\d+)\.", response)
        total = p.first
        for left, _op, _right, result in steps:
            assert int(left) == total  # later steps always continue from the (possibly wrong) total
            total = int(result)
            assert 0 <= total <= CFG.max_total
        boxed = int(re.search(r"\\boxed\{(\d+)\}", response).group(1))
        assert boxed == total  # the mistake propagates to the boxed answer
        n_wrong += boxed != p.answer
    share_wrong = n_wrong / len(traces)
    mean_steps = sum(len(p.ops) for p in train) / len(train)
    expected = 1 - (1 - CFG.mistake_rate) ** mean_steps
    assert 0.5 * expected < share_wrong < 1.2 * expected


def test_prompt_and_response_meet_at_a_token_boundary(toy_tokenizer):
    enc = lambda t: toy_tokenizer.encode(t, add_special_tokens=False)
    for p in problems(CFG, "eval", 50):
        assert enc(p.prompt) + enc(p.response()) == enc(p.prompt + p.response())


@pytest.mark.parametrize("steps", [1, 8, 12])
def test_the_longest_prompt_bounds_every_prompt_in_tokens_and_is_reached(toy_tokenizer, steps):
    # the config check refuses a max_new_tokens that the toy context cannot hold after this bound
    cfg = ToyTaskConfig(min_steps=1, max_steps=steps)
    drawn = problems(cfg, "train", min(200, split_capacity(cfg, "train")))
    tokens = [len(toy_tokenizer.encode(p.prompt, add_special_tokens=False)) for p in drawn]
    assert max(tokens) <= longest_prompt(cfg)
    assert max(len(p.prompt.encode()) for p in drawn) == longest_prompt(cfg)


def test_labels_are_the_same_token_in_question_and_trace(toy_tokenizer):
    for p in problems(ToyTaskConfig(min_steps=8), "eval", 20):
        q = toy_tokenizer.convert_ids_to_tokens(toy_tokenizer.encode(p.prompt, add_special_tokens=False))
        r = toy_tokenizer.convert_ids_to_tokens(toy_tokenizer.encode(p.response(), add_special_tokens=False))
        assert [t for t in q if t in "abcdefgh"] == [t for t in r if t in "abcdefgh"] == list("abcdefgh")


def test_decision_points_point_at_the_first_changed_token(toy_tokenizer):
    encode = lambda t: toy_tokenizer.encode(t, add_special_tokens=False)
    kinds = set()
    for p in problems(CFG, "eval", 100):
        correct = encode(p.response())
        for d in decision_points(p, encode, CFG.max_total):
            wrong = encode(p.response({d.step: d.kind}))
            assert correct[: d.position] == wrong[: d.position]
            assert correct[d.position] != wrong[d.position]
            kinds.add(d.kind)
            if d.kind == "operator":  # the operator token itself is where a misread shows
                assert toy_tokenizer.decode(correct[d.position]) in "+-"
    assert kinds == {"operator", "carry", "borrow"}
