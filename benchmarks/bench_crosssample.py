"""Cross-sampling throughput: lockstep pair decoding vs one model's HF ``generate``.

Both sides produce the same tokens count: the same prompts, batch size and lengths, decoding to
max_new_tokens (no EOS). Two models cost two forwards a step, so 0.5x is the floor of a good
implementation (issue 7's target: >= 0.5x on CPU for the toy pair and a ~100M Qwen2 shape,
>= 0.8x on a GPU at batch 128 for 1.5B and 7B shapes). Random weights: throughput does not
depend on them. The pair decodes with policy ``js`` at a threshold that switches about a tenth
of the tokens, so the full-vocabulary statistics and both samplers run at every step.

A second measure (issue 23) times the toy pair at the default config's batch (1,024 rows, 96 new
tokens) with the KV cache preallocated (``tokenshift.generation.preallocated_cache``, the decoder's
own) against transformers' ``DynamicCache``, which appends each step by copying the whole cache.

Each side is timed three times (twice on a GPU, whose lent minutes are few), alternating, and its
best time kept. Runs with no arguments in under 3 minutes on a 2-core CPU (GPU cases only with
CUDA; ``--gpu-only`` leaves the CPU cases out) and prints, as each is measured, one line per
measure: ``RESULT <measure> <ratio>``.

    python benchmarks/bench_crosssample.py [--gpu-only]
"""

from __future__ import annotations

import sys
import time

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

import tokenshift.crosssample
from tokenshift.crosssample import SwitchRule
from tokenshift.decoding import cross_sample
from tokenshift.generation import SamplingConfig, sample

TOY = dict(
    vocab_size=265,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)
QWEN_100M = dict(
    vocab_size=151936,
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
QWEN_1_5B = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
QWEN_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def compare(shape: dict, *, batch: int, prompt_len: int, new_tokens: int, device: str, dtype) -> tuple[float, float]:
    """(single-model generate tok/s, pair cross-sampling tok/s) on the same prompts and lengths."""
    with torch.device(device):  # a 7B model initialised on the host alone takes minutes
        torch.manual_seed(0)
        base = Qwen2ForCausalLM(Qwen2Config(**shape, attn_implementation="sdpa")).to(dtype).eval()
        torch.manual_seed(1)
        rl = Qwen2ForCausalLM(Qwen2Config(**shape, attn_implementation="sdpa")).to(dtype).eval()
    vocab = shape["vocab_size"]
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, vocab, (batch, prompt_len), generator=g).tolist()
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens)
    rule = SwitchRule(direction="forward", policy="random", threshold=0.9, budget=None)
    single = lambda: sample(base, prompts, eos_id=-1, pad_id=0, sampling=sampling, seed=0, batch_size=batch)
    pair = lambda: cross_sample(
        base,
        rl,
        prompts,
        eos_id=None,
        pad_id=0,
        vocab_size=vocab,
        rule=rule,
        sampling=sampling,
        seed=0,
        batch_size=batch,
    )
    warm = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=4)
    sample(base, prompts, eos_id=-1, pad_id=0, sampling=warm, seed=0, batch_size=batch)
    cross_sample(
        base, rl, prompts, eos_id=None, pad_id=0, vocab_size=vocab, rule=rule, sampling=warm, seed=0, batch_size=batch
    )
    n_tokens = batch * new_tokens
    t_single, t_pair = float("inf"), float("inf")
    for _ in range(2 if device.startswith("cuda") else 3):  # alternate: a slow spell hits both sides
        t_single = min(t_single, _timed(single, device))
        t_pair = min(t_pair, _timed(pair, device))
    return n_tokens / t_single, n_tokens / t_pair


def preallocated_over_dynamic(shape: dict, *, batch: int, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """(DynamicCache tok/s, preallocated tok/s) of the pair decoder on CPU, same tokens both ways."""
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(**shape, attn_implementation="sdpa")).eval()
    torch.manual_seed(1)
    rl = Qwen2ForCausalLM(Qwen2Config(**shape, attn_implementation="sdpa")).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, shape["vocab_size"], (batch, prompt_len), generator=g).tolist()
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens)
    rule = SwitchRule(direction="forward", policy="js", threshold=0.05, budget=4)
    own = tokenshift.crosssample.preallocated_cache
    kw = dict(eos_id=None, pad_id=0, vocab_size=shape["vocab_size"], rule=rule, sampling=sampling, seed=0)
    times, tokens = {"dynamic": float("inf"), "preallocated": float("inf")}, {}
    for _ in range(3):
        for name in times:
            # None makes the model build its own DynamicCache, as it did before the preallocated one
            tokenshift.crosssample.preallocated_cache = own if name == "preallocated" else (lambda *a: None)
            t0 = time.perf_counter()
            out = cross_sample(base, rl, prompts, batch_size=batch, **kw)
            times[name] = min(times[name], time.perf_counter() - t0)
            tokens[name] = [s.response_ids for s in out]
    tokenshift.crosssample.preallocated_cache = own
    if tokens["dynamic"] != tokens["preallocated"]:
        raise SystemExit("the two caches decoded different tokens")
    n = batch * new_tokens
    return n / times["dynamic"], n / times["preallocated"]


def main(gpu_only: bool = False) -> None:
    transformers.logging.set_verbosity_error()  # eos -1 (never stop early) is deliberate here
    # the toy pair at the workflow's default cross-sampling batch on CPU (crosssample.batch_size auto: CPU_BATCH)
    cases = (
        []
        if gpu_only
        else [
            ("toy_cpu", TOY, dict(batch=256, prompt_len=20, new_tokens=80, device="cpu", dtype=torch.float32)),
            ("100m_cpu", QWEN_100M, dict(batch=16, prompt_len=32, new_tokens=32, device="cpu", dtype=torch.float32)),
        ]
    )
    if torch.cuda.is_available():
        for name, shape in (("1.5b_gpu", QWEN_1_5B), ("7b_gpu", QWEN_7B)):
            cases.append(
                (name, shape, dict(batch=128, prompt_len=256, new_tokens=256, device="cuda", dtype=torch.bfloat16))
            )
    for name, shape, kw in cases:
        single, pair = compare(shape, **kw)
        print(
            f"{name}: generate {single:.0f} tok/s, cross-sampling pair {pair:.0f} tok/s "
            f"(batch {kw['batch']}, prompt {kw['prompt_len']}, {kw['new_tokens']} new tokens)",
            flush=True,
        )
        print(f"RESULT crosssample_{name}_pair_over_generate {pair / single:.2f}", flush=True)
        if kw["device"].startswith("cuda"):  # the last pair's memory back before the next
            torch.cuda.empty_cache()
    if gpu_only:
        return
    dynamic, preallocated = preallocated_over_dynamic(TOY, batch=1024, prompt_len=20, new_tokens=96)
    print(f"toy_cpu pair at batch 1024: DynamicCache {dynamic:.0f} tok/s, preallocated {preallocated:.0f} tok/s")
    print(f"RESULT crosssample_toy_cpu_preallocated_over_dynamic {preallocated / dynamic:.2f}", flush=True)


if __name__ == "__main__":
    main(gpu_only="--gpu-only" in sys.argv[1:])
