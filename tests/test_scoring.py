"""Chunked teacher-forced scoring equals the naive full-logit computation; bad input is caught."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import save_checkpoint
from transformers import AutoModelForCausalLM

from tokenshift.divergence import token_stats
from tokenshift.registry import TOPK_SCORE_COLUMNS
from tokenshift.scoring import CANDIDATE_COLUMNS, STAT_COLUMNS, ScoringConfig, pack_by_length, score_rows
from tokenshift.sharding import Part


@pytest.fixture()
def pair(tmp_path, toy_tokenizer):
    n = len(toy_tokenizer)
    a = save_checkpoint(tmp_path / "a", toy_tokenizer)
    b = save_checkpoint(tmp_path / "b", toy_tokenizer, embedding_rows=n + 40, seed=1)  # padded rows
    return AutoModelForCausalLM.from_pretrained(a).eval(), AutoModelForCausalLM.from_pretrained(b).eval(), n


def rows_for(vocab: int, seed: int = 0, n: int = 7):
    g = np.random.default_rng(seed)
    return [
        (g.integers(1, vocab, g.integers(2, 9)).tolist(), g.integers(1, vocab, g.integers(1, 15)).tolist())
        for _ in range(n)
    ]


@torch.no_grad()
def naive(base, rl, rows, vocab):
    out = {k: [] for k in ("logp_base", "logp_rl", *STAT_COLUMNS)}
    for p, r in rows:
        ids = torch.tensor([p + r])
        la = base(input_ids=ids).logits[0, len(p) - 1 : -1, :vocab]
        lb = rl(input_ids=ids).logits[0, len(p) - 1 : -1, :vocab]
        s = token_stats(la, lb)
        t = torch.tensor(r)
        out["logp_base"].append(torch.log_softmax(la.float(), -1)[torch.arange(len(r)), t].numpy())
        out["logp_rl"].append(torch.log_softmax(lb.float(), -1)[torch.arange(len(r)), t].numpy())
        for k in STAT_COLUMNS:
            out[k].append(s[k].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize(("chunk", "batch_tokens"), [(1024, 16384), (5, 30), (1, 8)])
def test_chunked_scoring_equals_naive_full_logits(pair, chunk, batch_tokens):
    base, rl, vocab = pair
    rows = rows_for(vocab)
    res = score_rows(
        base, rl, rows, vocab_size=vocab, pad_id=0, cfg=ScoringConfig(chunk_size=chunk, max_batch_tokens=batch_tokens)
    )
    order = np.lexsort((res.columns["position"], res.columns["row"]))
    want = naive(base, rl, rows, vocab)
    for k, v in want.items():
        np.testing.assert_allclose(res.columns[k][order], v, atol=1e-5, rtol=1e-4, err_msg=k)
    got_tokens = res.columns["token_id"][order]
    assert got_tokens.tolist() == [t for _, r in rows for t in r]
    last = res.columns["norm_position"][order][np.cumsum([len(r) for _, r in rows]) - 1]
    assert np.all(last[[len(r) > 1 for _, r in rows]] == 1.0)


def test_identical_models_give_zero_divergence(pair):
    base, _, vocab = pair
    res = score_rows(base, base, rows_for(vocab, n=3), vocab_size=vocab, pad_id=0)
    assert np.all(res.columns["js"] == 0) and np.all(res.columns["logp_base"] == res.columns["logp_rl"])


def test_bad_input_is_skipped_and_counted_or_refused(pair):
    base, rl, vocab = pair
    ctx = base.config.max_position_embeddings
    rows = [([1, 2], [3, 4]), ([1, 2], []), ([1] * 10, [2] * ctx)]
    res = score_rows(base, rl, rows, vocab_size=vocab, pad_id=0)
    assert res.skipped == {"empty_response": [1], "longer_than_context": [2]}
    assert set(res.columns["row"].tolist()) == {0}
    with pytest.raises(ValueError, match=f"row 0: token id {vocab + 3} is outside"):
        score_rows(base, rl, [([1], [vocab + 3])], vocab_size=vocab, pad_id=0)


def _kl(x: np.ndarray, y: np.ndarray) -> float:
    if np.any((x > 0) & (y == 0)):
        return np.inf
    on = x > 0
    return float(np.sum(x[on] * np.log(x[on] / y[on])))


def _entropy(x: np.ndarray) -> float:
    return float(-np.sum(x[x > 0] * np.log(x[x > 0])))


@torch.no_grad()
def topk_reference(base, rl, rows, vocab, k):
    """The top-K statistics written out in float64 numpy, position by position: each model's K most
    probable tokens, renormalised, the rest probability 0."""
    from scipy.special import softmax

    out = {c: [] for c in TOPK_SCORE_COLUMNS}
    for p, r in rows:
        ids = torch.tensor([p + r])
        pa = softmax(base(input_ids=ids).logits[0, len(p) - 1 : -1, :vocab].double().numpy(), -1)
        pb = softmax(rl(input_ids=ids).logits[0, len(p) - 1 : -1, :vocab].double().numpy(), -1)
        for a, b in zip(pa, pb):
            ta, tb = np.zeros_like(a), np.zeros_like(b)
            top_a, top_b = np.argsort(-a, kind="stable")[:k], np.argsort(-b, kind="stable")[:k]
            ta[top_a], tb[top_b] = a[top_a] / a[top_a].sum(), b[top_b] / b[top_b].sum()
            m = (ta + tb) / 2
            out["js"].append(0.5 * _kl(ta, m) + 0.5 * _kl(tb, m))
            out["kl_base_rl"].append(_kl(ta, tb))
            out["kl_rl_base"].append(_kl(tb, ta))
            out["entropy_base"].append(_entropy(ta))
            out["entropy_rl"].append(_entropy(tb))
            out["rl_top1_rank_in_base"].append(int(np.sum(ta > ta[top_b[0]])))
            out["base_top1_rank_in_rl"].append(int(np.sum(tb > tb[top_a[0]])))
            out["p_base_of_rl_top1"].append(ta[top_b[0]])
            out["p_rl_of_rl_top1"].append(tb[top_b[0]])
    return {c: np.asarray(v) for c, v in out.items()}


@pytest.mark.parametrize("k", [1, 3, 20])
def test_a_topk_statistic_is_each_models_top_k_renormalised_and_the_rest_stays_exact(pair, k):
    base, rl, vocab = pair
    rows = rows_for(vocab, seed=4, n=5)
    exact = score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=ScoringConfig(chunk_size=7)).columns
    topk = score_rows(
        base, rl, rows, vocab_size=vocab, pad_id=0, cfg=ScoringConfig(chunk_size=7, statistic=f"topk:{k}")
    ).columns
    order = np.lexsort((topk["position"], topk["row"]))
    want = topk_reference(base, rl, rows, vocab, k)
    for c in TOPK_SCORE_COLUMNS:
        np.testing.assert_allclose(topk[c][order], want[c], atol=1e-5, rtol=1e-4, err_msg=c)
    assert np.isinf(topk["kl_base_rl"]).any() and np.all(topk["rl_top1_rank_in_base"] <= k)  # K means K or more
    # the token's log-probs, the top-k overlap and the candidates are the models' own
    for c in ("logp_base", "logp_rl", "topk_overlap", "top_ids_base", "top_probs_rl", "token_id", "position"):
        np.testing.assert_array_equal(topk[c], exact[c], err_msg=c)
    assert not np.allclose(topk["entropy_base"], exact["entropy_base"])


def test_a_topk_statistic_of_the_whole_vocabulary_is_the_exact_one(pair):
    base, rl, vocab = pair
    rows = rows_for(vocab, seed=5, n=3)
    exact = score_rows(base, rl, rows, vocab_size=vocab, pad_id=0).columns
    whole = score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=ScoringConfig(statistic=f"topk:{vocab}")).columns
    for c in TOPK_SCORE_COLUMNS:
        np.testing.assert_allclose(whole[c], exact[c], atol=1e-6, err_msg=c)


def test_the_vllm_backend_takes_a_topk_statistic_only():
    with pytest.raises(ValueError, match="expected statistic topk:K"):
        ScoringConfig(backend="vllm")
    assert ScoringConfig(backend="vllm", statistic="topk:50").topk == 50
    with pytest.raises(ValueError, match="'top50': expected 'exact' or 'topk:K'"):
        ScoringConfig(statistic="top50")


def test_an_empty_prompt_is_refused_naming_its_row(pair):
    # no position predicts the first response token: it must not shift the batch's other rows
    # onto the wrong targets (or crash in a gather) but be refused before any forward
    base, rl, vocab = pair
    for rows in ([([1, 2], [3, 4]), ([], [5, 6, 7])], [([], [5, 6, 7])]):
        with pytest.raises(ValueError, match=f"row {len(rows) - 1}: empty prompt"):
            score_rows(base, rl, rows, vocab_size=vocab, pad_id=0)


def test_nan_weights_are_refused(pair):
    base, rl, vocab = pair
    with torch.no_grad():
        rl.get_output_embeddings().weight[5, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN in the rl model's logits"):
        score_rows(base, rl, rows_for(vocab, n=2), vocab_size=vocab, pad_id=0)


def test_heads_that_reshape_their_logits_are_refused(pair):
    base, rl, vocab = pair
    rl.config.final_logit_softcapping = 30.0  # as Gemma 2 sets it: logits are not head(hidden) there
    with pytest.raises(ValueError, match=r"rl model .*final_logit_softcapping"):
        score_rows(base, rl, rows_for(vocab, n=2), vocab_size=vocab, pad_id=0)


def test_packing_respects_the_token_bound():
    lengths = [5, 17, 3, 9, 9, 30, 1]
    batches = pack_by_length(lengths, 40)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 40 or len(b) == 1 for b in batches)


def test_chunks_are_sized_by_the_memory_budget():
    cfg = ScoringConfig(chunk_memory_mb=512)
    chunk = cfg.chunk_for(151936)
    assert chunk >= 16 and chunk * 151936 * 4 * 12 <= 512 * 2**20
    assert cfg.chunk_for(265) == 8192  # small vocabularies are capped, not unbounded
    assert ScoringConfig(chunk_size=7).chunk_for(151936) == 7


def test_scoring_split_over_jobs_gives_the_rows_one_job_gives(pair):
    # each job packs all rows the same way and scores its share of the batches: bit for bit the same
    import polars as pl

    base, rl, vocab = pair
    rows = rows_for(vocab, n=24)
    cfg = ScoringConfig(max_batch_tokens=200)
    whole = pl.DataFrame(score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=cfg).columns)
    parts = [
        pl.DataFrame(score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=cfg, part=Part(i, 3)).columns)
        for i in (1, 2, 3)
    ]
    assert all(p.height for p in parts)
    assert pl.concat(parts).sort("row", "position").equals(whole.sort("row", "position"))


def test_a_scoring_batch_out_of_memory_is_read_in_halves_to_the_same_scores(pair, caplog):
    base, rl, vocab = pair
    rows = rows_for(vocab, n=12)
    cfg = ScoringConfig(max_batch_tokens=16384)  # all rows in one batch
    whole = score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=cfg).columns

    def tight(module, args, kwargs):  # a GPU that holds at most 2 rows (the test double of an absent GPU)
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    hook = rl.model.register_forward_pre_hook(tight, with_kwargs=True)
    try:
        halved = score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=cfg).columns
    finally:
        hook.remove()
    assert "out of memory at batch 12" in caplog.text and "going on at 3" in caplog.text
    for k in ("row", "position", "norm_position", "token_id"):
        assert halved[k].tolist() == whole[k].tolist(), k
    for k in ("logp_base", "logp_rl", *STAT_COLUMNS):  # rows padded to other widths: float rounding only
        np.testing.assert_allclose(halved[k], whole[k], atol=1e-5, rtol=1e-4, err_msg=k)


def test_which_rows_a_part_scores_does_not_depend_on_the_batch_its_gpus_hold(pair):
    # jobs on other GPUs plan other batches (auto): each part still scores the rows one job would split off
    base, rl, vocab = pair
    rows = rows_for(vocab, n=24)
    cfg = ScoringConfig(max_batch_tokens=200)
    one_job = score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=cfg).columns
    fixed = [
        score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=cfg, part=Part(i, 3)).columns for i in (1, 2, 3)
    ]
    planned = [
        score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=cfg, part=Part(i, 3), batch_tokens=b).columns
        for i, b in ((1, 40), (2, 16384), (3, 90))
    ]

    def key(cols):
        return sorted(zip(cols["row"].tolist(), cols["position"].tolist()))

    assert all(len(p["row"]) for p in planned)
    assert [key(p) for p in planned] == [key(p) for p in fixed]
    merged = {k: np.concatenate([p[k] for p in planned]) for k in ("row", "position", "js")}
    order = np.lexsort((merged["position"], merged["row"]))
    want = np.lexsort((one_job["position"], one_job["row"]))
    np.testing.assert_allclose(merged["js"][order], one_job["js"][want], atol=1e-5, rtol=1e-4)
    # auto: the parts are split as at 16384 tokens, whatever a job plans
    auto = ScoringConfig()
    whole = score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=auto).columns
    assert key(score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=auto, batch_tokens=40).columns) == key(whole)


@torch.no_grad()
def test_each_model_top_candidates_are_its_most_probable_tokens(pair):
    from scipy.special import softmax

    base, rl, vocab = pair
    rows = rows_for(vocab, seed=3, n=4)
    res = score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=ScoringConfig(top_k_candidates=4, chunk_size=3))
    order = np.lexsort((res.columns["position"], res.columns["row"]))
    for role, model in (("base", base), ("rl", rl)):
        probs = np.concatenate(
            [
                softmax(model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : -1, :vocab].double().numpy(), -1)
                for p, r in rows
            ]
        )
        want = np.argsort(-probs, axis=-1, kind="stable")[:, :4]
        ids, got = res.columns[f"top_ids_{role}"][order], res.columns[f"top_probs_{role}"][order]
        assert ids.shape == got.shape == (len(probs), 4)
        np.testing.assert_allclose(got, np.take_along_axis(probs, want, -1), rtol=1e-4, atol=1e-6)
        # ties aside, the same tokens: each kept id's probability is its row's probability of it
        np.testing.assert_allclose(np.take_along_axis(probs, ids.astype(np.int64), -1), got, rtol=1e-4, atol=1e-6)
    none = score_rows(base, rl, rows, vocab_size=vocab, pad_id=0, cfg=ScoringConfig(top_k_candidates=0))
    assert not {"top_ids_base", "top_probs_rl"} & set(none.columns)


def scoring_inputs(tmp_path, toy_tokenizer, n: int = 2) -> tuple:
    """(base manifest, RL manifest, pair manifest, rollout table, source): run_scoring's inputs, saved, over
    ``n`` responses."""
    import polars as pl

    from tokenshift.checkpoints import write_manifest
    from tokenshift.tokenizer import check_pair

    models = {}
    for role, seed in (("base", 0), ("rl", 1)):
        save_checkpoint(tmp_path / role, toy_tokenizer, seed=seed)
        write_manifest(tmp_path / role, name=role, spec={"path": str(tmp_path / role)})
        models[role] = tmp_path / f"{role}.json"
    check_pair("p", models["base"], models["rl"], tmp_path / "pair.json")
    rows = rows_for(len(toy_tokenizer), n=n)
    rollouts = tmp_path / "rollouts.parquet"
    pl.DataFrame(
        {
            "problem_id": [f"p{i}" for i in range(n)],
            "sample_index": [0] * n,
            "correct": [i % 2 == 0 for i in range(n)],
            "prompt_ids": [p for p, _ in rows],
            "response_ids": [r for _, r in rows],
        }
    ).write_parquet(rollouts)
    return models["base"], models["rl"], tmp_path / "pair.json", rollouts, "base"


def test_a_scoring_part_with_no_batch_gathers_with_the_others(tmp_path, toy_tokenizer):
    # more jobs than batches: a part scores nothing, and its empty table must have the columns'
    # types, or the gather refuses to stack it with the others (it had Float64 ids and positions)
    import polars as pl

    from tokenshift.registry import SCORE_ORDER
    from tokenshift.scoring import run_scoring
    from tokenshift.sharding import gather_parts

    cfg = ScoringConfig(top_k_candidates=2)
    args = scoring_inputs(tmp_path, toy_tokenizer)
    whole = run_scoring(*args, tmp_path / "whole.parquet", cfg=cfg)
    parts = [tmp_path / f"part{i}.parquet" for i in (1, 2, 3)]
    for i, out in enumerate(parts, 1):
        run_scoring(*args, out, cfg=cfg, part=Part(i, 3))
    assert pl.read_parquet(parts[-1]).height == 0
    gathered = gather_parts(parts, tmp_path / "gathered.parquet", sort_by=SCORE_ORDER)
    assert gathered.schema == whole.schema
    assert gathered.equals(whole)
    assert whole["statistic"].unique().to_list() == ["exact"]  # what the distribution columns are of


def test_a_stopped_scoring_job_goes_on_from_its_shards_to_the_table_one_run_gives(
    tmp_path, toy_tokenizer, monkeypatch, caplog
):
    """Issue 28.2: the job dies as it writes its third shard (a full disk: the rename fails); run again, it
    reads the two shards written and scores the rest. A damaged shard is scored again; shards made under
    other settings are not read."""
    import os

    import polars as pl

    import tokenshift.scoring as scoring
    from tokenshift.scoring import run_scoring

    args = scoring_inputs(tmp_path, toy_tokenizer, n=12)
    cfg = ScoringConfig(top_k_candidates=2, max_batch_tokens=40)  # several batches of a few rows
    whole = run_scoring(*args, tmp_path / "whole.parquet", cfg=cfg, progress=False)
    monkeypatch.setattr(scoring, "RESPONSES_PER_SHARD", 3)
    out = tmp_path / "scores.parquet"
    shards = tmp_path / "scores.parquet.shards"
    real_replace = os.replace

    def full_disk_at_the_third_shard(src, dst, *a, **kw):
        if os.fspath(dst).endswith("shard-00002.parquet"):
            raise OSError(28, "No space left on device (the test's interruption)", os.fspath(dst))
        return real_replace(src, dst, *a, **kw)

    def stopped():
        out.unlink(missing_ok=True)  # Snakemake removes a job's output before it runs the job
        with monkeypatch.context() as m:
            m.setattr(os, "replace", full_disk_at_the_third_shard)
            with pytest.raises(OSError, match="No space left"):
                run_scoring(*args, out, cfg=cfg, progress=False)
        assert not out.exists() and sorted(p.name for p in shards.glob("shard-*.parquet")) == [
            "shard-00000.parquet",
            "shard-00001.parquet",
        ]

    stopped()
    with caplog.at_level("INFO", logger="tokenshift"):
        again = run_scoring(*args, out, cfg=cfg, progress=False)
    assert "2 of " in caplog.text and "shards already written" in caplog.text
    assert again.equals(whole) and pl.read_parquet(out).equals(whole)
    assert not shards.exists()  # the table is written: a later run starts afresh
    # a shard cut short since: discarded, named, and scored again
    stopped()
    first = shards / "shard-00000.parquet"
    first.write_bytes(first.read_bytes()[:100])
    caplog.clear()
    with caplog.at_level("INFO", logger="tokenshift"):
        assert run_scoring(*args, out, cfg=cfg, progress=False).equals(whole)
    assert "discarding shard" in caplog.text and "1 of " in caplog.text
    # other settings (another candidate count): the shards are not read
    stopped()
    caplog.clear()
    with caplog.at_level("INFO", logger="tokenshift"):
        other = run_scoring(*args, out, cfg=ScoringConfig(top_k_candidates=3, max_batch_tokens=40), progress=False)
    assert "starting over" in caplog.text and "already written" not in caplog.text
    # the same numbers; the label of what they were made with names the other candidate count
    assert other.drop(*CANDIDATE_COLUMNS, "settings").equals(whole.drop(*CANDIDATE_COLUMNS, "settings"))
    assert other["settings"][0] != whole["settings"][0]


def test_scores_of_swapped_models_another_pair_or_the_other_models_rollouts_are_refused(tmp_path, toy_tokenizer):
    """The fourth hostile pass: each was scored and exited 0. The models' names (pair manifest), the rollouts'
    ``model`` column and the score tables' record of their checkpoints tell a pair's inputs apart; the
    divergence tables and the accuracy table check the same of what they are given."""
    import json

    import polars as pl

    from tokenshift.checkpoints import checkpoint_label
    from tokenshift.io import MODELS_RECORD, InputError, read_models_record
    from tokenshift.scoring import run_scoring
    from tokenshift.tables import write_accuracy, write_divergence

    base, rl, pair, rollouts, _ = scoring_inputs(tmp_path, toy_tokenizer, n=4)
    table = pl.read_parquet(rollouts).with_columns(pl.lit(checkpoint_label(base)).alias("model"))
    table.write_parquet(rollouts)  # the base model's, as tokenshift rollout labels them
    cfg = ScoringConfig(top_k_candidates=2)
    out = tmp_path / "scores.parquet"
    for args, needle in (
        ((base, base, pair, rollouts, "base"), "one checkpoint"),
        ((rl, base, pair, rollouts, "base"), "has base model 'base', where --base"),
        ((base, rl, pair, rollouts, "rl"), "the base model's rollouts .* given as the rl model's"),
    ):
        with pytest.raises(InputError, match=needle):
            run_scoring(*args, out, cfg=cfg, progress=False)
        assert not out.exists()
    other = json.loads(pair.read_text()) | {"pair": "q", "base": "b2", "rl": "r2"}  # another pair's manifest
    (tmp_path / "q.json").write_text(json.dumps(other))
    with pytest.raises(InputError, match="pair 'q' has base model 'b2'"):
        run_scoring(base, rl, tmp_path / "q.json", rollouts, "base", out, cfg=cfg, progress=False)
    scores = run_scoring(base, rl, pair, rollouts, "base", out, cfg=cfg, progress=False)
    labels = {"base": checkpoint_label(base), "rl": checkpoint_label(rl)}
    assert read_models_record(out) == labels
    # divergence: the RL rollouts' scores of another pair (as its record says) are refused
    theirs = tmp_path / "theirs.parquet"
    other_labels = {"base": "b2@0123456789abcdef", "rl": "r2@fedcba9876543210"}
    scores.with_columns(pl.lit("rl").alias("source")).write_parquet(
        theirs, metadata={MODELS_RECORD: json.dumps(other_labels)}
    )
    with pytest.raises(InputError, match="expected the scores of one pair's two models"):
        write_divergence({"base": out, "rl": theirs}, tmp_path / "div", pair="p", dataset="d")
    # accuracy against the pair manifest: the base model's rollouts given as the RL model's
    rl_rollouts = tmp_path / "rl_rollouts.parquet"
    table.with_columns(pl.lit(labels["rl"]).alias("model"), pl.lit("v").alias("dataset_version")).write_parquet(
        rl_rollouts
    )
    table.with_columns(pl.lit("v").alias("dataset_version")).write_parquet(rollouts)
    acc = tmp_path / "acc.parquet"
    with pytest.raises(InputError, match=r"rollouts of rl@.*given as the base model's; pair 'p'"):
        write_accuracy({"base": rl_rollouts, "rl": rollouts}, acc, pair_manifest=pair)
    assert write_accuracy({"base": rollouts, "rl": rl_rollouts}, acc, pair_manifest=pair).height
    # thirteenth hostile pass (K7): labelled with a pair the manifest is not
    with pytest.raises(InputError, match=r"--pair 'o': the pair manifest .* is pair 'p''s"):
        write_accuracy({"base": rollouts, "rl": rl_rollouts}, acc.with_name("o.parquet"), pair="o", pair_manifest=pair)
    assert not acc.with_name("o.parquet").exists()


def test_an_edited_shared_vocabulary_is_refused_naming_the_pair_manifest(tmp_path, toy_tokenizer):
    """Sixth hostile pass (C4): a pair manifest's shared_vocab_size edited down failed the job with a
    ValueError traceback naming neither file; a rollout token past it is named with its file, no traceback."""
    import json

    import polars as pl

    from tokenshift.io import InputError
    from tokenshift.scoring import run_scoring

    base, rl, pair, rollouts, _ = scoring_inputs(tmp_path, toy_tokenizer, n=2)
    cfg, out = ScoringConfig(top_k_candidates=2), tmp_path / "scores.parquet"
    manifest = json.loads(pair.read_text())
    pair.write_text(json.dumps({**manifest, "shared_vocab_size": manifest["shared_vocab_size"] - 60}))
    with pytest.raises(InputError, match=rf"{pair}: shared_vocab_size .*: expected {manifest['shared_vocab_size']}"):
        run_scoring(base, rl, pair, rollouts, "base", out, cfg=cfg, progress=False)
    pair.write_text(json.dumps(manifest))
    table = pl.read_parquet(rollouts)
    far = manifest["shared_vocab_size"] + 5
    table.with_columns(pl.col("response_ids").list.concat(pl.lit([far]))).write_parquet(rollouts)
    with pytest.raises(InputError, match=rf"{rollouts}: row 0: token id {far} is outside the shared vocabulary"):
        run_scoring(base, rl, pair, rollouts, "base", out, cfg=cfg, progress=False)
    assert not out.exists()


def test_gather_refuses_parts_computed_with_other_checkpoints_and_keeps_their_record(tmp_path):
    import polars as pl

    from tokenshift.io import InputError, read_models_record
    from tokenshift.sharding import gather_parts, write_part

    part = pl.DataFrame({"problem_id": ["a"], "sample_index": [0]})
    ours, theirs = {"base": "b@1", "rl": "r@1"}, {"base": "b@1", "rl": "r@2"}
    parts = [tmp_path / "1-of-2.parquet", tmp_path / "2-of-2.parquet"]
    write_part(part, parts[0], models=ours)
    write_part(part.with_columns(pl.lit("b").alias("problem_id")), parts[1], models=theirs)
    with pytest.raises(InputError, match=r"2-of-2\.parquet: computed with the checkpoints .*'r@2'"):
        gather_parts(parts, tmp_path / "t.parquet")
    write_part(part.with_columns(pl.lit("b").alias("problem_id")), parts[1], models=ours)
    gather_parts(parts, tmp_path / "t.parquet")
    assert read_models_record(tmp_path / "t.parquet") == ours


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("null_response", "column 'response_ids' is null in 1 of"),
        ("float_ids", "column 'response_ids' holds List(Float64), where a list[count] was expected"),
        ("negative_id", "column 'prompt_ids' holds -3, where a count (0 or more) was expected"),
        ("null_token", "row 0: token id None is outside the shared vocabulary"),
    ],
)
def test_rollout_token_ids_that_are_not_counts_are_refused_naming_the_file(tmp_path, toy_tokenizer, damage, needle):
    """Seventh hostile pass (C1, C2): a null response or float token ids reached torch as a traceback."""
    import polars as pl

    from tokenshift.io import InputError
    from tokenshift.scoring import run_scoring

    base, rl, pair, rollouts, _ = scoring_inputs(tmp_path, toy_tokenizer, n=2)
    table = pl.read_parquet(rollouts)
    first = pl.int_range(pl.len()) == 0
    damaged = {
        "null_response": pl.when(first).then(None).otherwise(pl.col("response_ids")).alias("response_ids"),
        "float_ids": pl.col("response_ids").cast(pl.List(pl.Float64)),
        "negative_id": pl.col("prompt_ids").list.concat(pl.lit([-3])),
        "null_token": pl.col("response_ids").list.concat(pl.lit([None], dtype=pl.List(pl.Int32))),
    }[damage]
    table.with_columns(damaged).write_parquet(rollouts)
    out = tmp_path / "scores.parquet"
    with pytest.raises(InputError, match=re.escape(needle)) as e:
        run_scoring(base, rl, pair, rollouts, "base", out, cfg=ScoringConfig(top_k_candidates=2), progress=False)
    assert str(rollouts) in str(e.value)
    assert not out.exists()


def test_scores_of_rollouts_made_otherwise_are_refused_beside_this_studys(tmp_path, toy_tokenizer):
    """Seventh hostile pass (X1), for scores: each score table carries the label of its scoring settings and
    of the rollouts' own, so the divergence of a pair takes both sources' only where they were made alike."""
    import polars as pl

    from tokenshift.io import InputError
    from tokenshift.scoring import run_scoring
    from tokenshift.tables import write_divergence

    base, rl, pair, rollouts, _ = scoring_inputs(tmp_path, toy_tokenizer, n=2)
    cfg = ScoringConfig(top_k_candidates=2)
    table = pl.read_parquet(rollouts)
    out = {}
    for name, source, label in (("base", "base", "a" * 16), ("rl", "rl", "a" * 16), ("rl-other", "rl", "b" * 16)):
        made = tmp_path / f"rollouts-{name}.parquet"
        table.with_columns(pl.lit(label).alias("settings")).write_parquet(made)
        out[name] = tmp_path / f"scores-{name}.parquet"
        run_scoring(base, rl, pair, made, source, out[name], cfg=cfg, progress=False)
    labels = {k: pl.read_parquet(p)["settings"].unique().to_list() for k, p in out.items()}
    assert labels["base"] == labels["rl"] != labels["rl-other"]
    write_divergence({"base": out["base"], "rl": out["rl"]}, tmp_path / "div", pair="p", dataset="d")
    with pytest.raises(InputError, match=r"scores-rl-other.parquet: column 'settings' holds .* made under other"):
        write_divergence({"base": out["base"], "rl": out["rl-other"]}, tmp_path / "div2", pair="p", dataset="d")
    assert not (tmp_path / "div2").exists()
