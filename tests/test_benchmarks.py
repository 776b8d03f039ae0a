"""The benchmarks' own measuring helpers (the benchmarks run on demand, not here; see benchmarks/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_peak_memory_is_measured_from_the_reset_on():
    bench = _module("bench_scoring")
    if reason := bench.cpu_peak_unmeasurable():
        pytest.skip(reason)
    big = np.ones(300 * 2**20 // 8)  # a peak before the reset, as the models' build makes one
    del big
    base = bench.reset_cpu_peak()
    assert bench.cpu_peak() - base < 50 * 2**20  # the earlier peak is forgotten
    block = np.ones(200 * 2**20 // 8)  # 200 MB, every page touched
    assert bench.cpu_peak() - base >= 190 * 2**20
    del block


def test_the_grouped_attention_candidate_gives_sdpas_decoding_step():
    """``benchmarks/grouped_attention.py`` (timed against sdpa on a GPU by bench_decode_gpu.py --attention)
    computes the same attention: a grouped-query model's next-token logits over a left-padded batch."""
    import torch
    from transformers import AttentionInterface, Qwen2Config, Qwen2ForCausalLM

    from tokenshift.generation import pad_rows, preallocated_cache

    candidate = _module("grouped_attention")
    name, steps = candidate.register(), []

    def counted(module, query, *args, **kwargs):
        steps.append(query.shape[2])
        return candidate.grouped_decode_attention(module, query, *args, **kwargs)

    AttentionInterface.register(name, counted)
    shape = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    torch.manual_seed(0)
    sdpa = Qwen2ForCausalLM(Qwen2Config(**shape, num_attention_heads=8, num_key_value_heads=2)).eval()
    grouped = Qwen2ForCausalLM(Qwen2Config(**shape, num_attention_heads=8, num_key_value_heads=2)).eval()
    grouped.load_state_dict(sdpa.state_dict())
    grouped.set_attn_implementation(name)
    g = torch.Generator().manual_seed(0)
    ids, mask = pad_rows([torch.randint(1, 300, (n,), generator=g).tolist() for n in (3, 9, 5)], 0)
    logits = []
    with torch.no_grad():
        for model in (sdpa, grouped):
            cache = preallocated_cache(model, ids.shape[1] + 1)
            first = model(input_ids=ids, attention_mask=mask, past_key_values=cache).logits[:, -1:].argmax(-1)
            step = model(
                input_ids=first, attention_mask=torch.cat([mask, torch.ones_like(first)], 1), past_key_values=cache
            )
            logits.append(step.logits[:, -1])
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)
    assert steps == [ids.shape[1]] * 2 + [1] * 2  # the prompt's forward, then the decoding step, per layer


def test_compare_runs_names_a_table_one_float_bit_away_and_one_only_one_run_has(tmp_path, capsys):
    import polars as pl

    compare = _module("compare_runs")
    for run in ("old", "new"):
        (tmp_path / run / "results" / "p").mkdir(parents=True)
        pl.DataFrame({"x": [0.1, 0.2], "seconds": [1.0, 2.0]}).write_parquet(
            tmp_path / run / "results" / "p" / "a.parquet"
        )
    pl.DataFrame({"x": [0.1, 0.2], "seconds": [3.0, 4.0]}).write_parquet(
        tmp_path / "new" / "results" / "p" / "a.parquet"
    )
    assert compare.main([str(tmp_path / "old"), str(tmp_path / "new")]) == 0  # wall time aside
    nudged = np.nextafter(0.2, 1.0)
    pl.DataFrame({"x": [0.1, nudged], "seconds": [1.0, 2.0]}).write_parquet(
        tmp_path / "new" / "results" / "p" / "a.parquet"
    )
    pl.DataFrame({"y": [1]}).write_parquet(tmp_path / "old" / "results" / "p" / "b.parquet")
    assert compare.main([str(tmp_path / "old"), str(tmp_path / "new")]) == 1
    out = capsys.readouterr().out
    assert "results/p/a.parquet: columns that differ: ['x']" in out and "results/p/b.parquet: only in old" in out
    assert "RESULT same_tables 0 of 2" in out
