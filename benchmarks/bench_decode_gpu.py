"""Decoding rates of the HF paths at the paper's shapes and planned batches, on a GPU (issue 25.5).

The GPU-hour estimate (docs/paper-protocol.md) was scaled from one 1.5B ``generate`` at batch 32. This measures,
on the card at hand (CUDA only; random bf16 weights, throughput does not depend on them):

- ``rollout``: one model's HF decoding (``tokenshift.generation.sample``) of Qwen2.5-7B and -32B shapes
  at the batch ``tokenshift.memory.decode_rows`` plans on this card for ``config/paper.yaml``'s rollouts
  (prompt + 4096 new tokens a row);
- ``lockstep``: the pair decoder (``tokenshift.decoding.cross_sample``, policy ``random``, a tenth
  of the steps switching) of two 7B shapes at the batch ``crosssample_rows`` plans for paper.yaml's
  cross-sampling (a row's cache for 16384 tokens, ``max_total_tokens``), one GPU per model; here both
  share the one card, which holds them at this benchmark's context.

Each is timed at a mean context of ~1,200 tokens (a 2,000-token response after a ~250-token prompt
averages that): a prompt of 1,152 tokens, decoding 136 and 8 new tokens, and the rate is the 128
extra steps over the difference of the two times, so the prefill cancels. Each case is timed once
after a warm-up (a lent GPU's minutes are few; the prefills of a planned batch take most of them).
A case that runs out of memory is retried at half the batch (said so).
Prints ``RESULT <case>_tok_s <rate>`` as each is measured.

    python benchmarks/bench_decode_gpu.py            # CUDA
    python benchmarks/bench_decode_gpu.py --smoke    # the same code, a toy size, on the CPU
    python benchmarks/bench_decode_gpu.py --attention [--smoke]   # sdpa against tokenshift's grouped_sdpa
"""

from __future__ import annotations

import gc
import sys
import time

import torch
import transformers
from bench_crosssample import QWEN_7B
from transformers import Qwen2Config, Qwen2ForCausalLM

from tokenshift.crosssample import SwitchRule
from tokenshift.decoding import cross_sample
from tokenshift.generation import SamplingConfig, sample
from tokenshift.memory import ModelShape, crosssample_rows, decode_rows

QWEN25 = {
    # bench_crosssample's 7B shape (its 4096-position context is the one thing set here again, in build)
    "7b": {k: v for k, v in QWEN_7B.items() if k != "max_position_embeddings"},
    "32b": dict(
        hidden_size=5120,
        intermediate_size=27648,
        num_hidden_layers=64,
        num_attention_heads=40,
        num_key_value_heads=8,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}
TINY = dict(  # --smoke: the same code on the CPU at a toy size, before a lent GPU's minutes are spent
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=1000,
    tie_word_embeddings=False,
)
DEVICE = "cuda"
PROMPT = 1152
SMALL = (236, 125)
"""The 7B rollout and lockstep batches that ran on the lent H200 (2026-12-04), for ``--attention``."""
ROLLOUT_TOKENS = 256 + 4096  # paper.yaml: a prompt, then max_new_tokens 4096
CROSSSAMPLE_TOKENS = 256 + 16384  # paper.yaml: max_total_tokens 16384 under length_rule after_switch


def build(shape: str, seed: int) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(**QWEN25[shape], max_position_embeddings=32768, attn_implementation="sdpa")
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # a 32B model built in fp32 first would not fit
    try:
        with torch.device(DEVICE):
            return Qwen2ForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(old)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def rate(run, batch: int) -> tuple[float, int]:
    """(decoded tokens/s over 128 steps at batch ``batch``, the batch that ran), halving on OOM."""
    while True:
        try:
            run(batch, 8)  # warm-up
            short = timed(lambda b=batch: run(b, 8))
            return batch * 128 / (timed(lambda b=batch: run(b, 136)) - short), batch
        except torch.OutOfMemoryError:
            free()
            print(f"out of memory at batch {batch}: halving", flush=True)
            batch //= 2


def free() -> None:
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def prompts(batch: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, vocab, (batch, PROMPT), generator=g).tolist()


def rollout(shape: str, card: int) -> None:
    model = build(shape, 0)
    m = ModelShape.from_config(QWEN25[shape])
    planned = decode_rows(m, gpu_bytes=card, tokens_per_row=ROLLOUT_TOKENS)
    vocab = QWEN25[shape]["vocab_size"]

    def run(batch: int, new: int):
        sampling = SamplingConfig(temperature=1.0, top_p=0.7, max_new_tokens=new)
        sample(model, prompts(batch, vocab), eos_id=-1, pad_id=0, sampling=sampling, seed=1, batch_size=batch)

    tok_s, ran = rate(run, planned)
    print(f"rollout {shape}: planned batch {planned}, ran {ran}: {tok_s:.0f} tok/s", flush=True)
    print(f"RESULT rollout_{shape}_tok_s {tok_s:.0f}", flush=True)


def lockstep(shape: str, card: int) -> None:
    base, rl = build(shape, 0), build(shape, 1)
    m = ModelShape.from_config(QWEN25[shape])
    planned = crosssample_rows(m, m, gpu_bytes=card, gpus_base=1, gpus_rl=1, tokens_per_row=CROSSSAMPLE_TOKENS)
    vocab = QWEN25[shape]["vocab_size"]
    rule = SwitchRule(direction="forward", policy="random", threshold=0.9, budget=None)

    def run(batch: int, new: int):
        sampling = SamplingConfig(temperature=1.0, top_p=0.7, max_new_tokens=new)
        kw = dict(eos_id=None, pad_id=0, vocab_size=vocab, rule=rule, sampling=sampling, seed=1)
        cross_sample(base, rl, prompts(batch, vocab), batch_size=batch, **kw)

    tok_s, ran = rate(run, planned)
    print(f"lockstep {shape} pair: planned batch {planned}, ran {ran}: {tok_s:.0f} tok/s", flush=True)
    print(f"RESULT lockstep_{shape}_tok_s {tok_s:.0f}", flush=True)


def attention_ab(card: int) -> None:
    """``--attention``: the 7B rollout (batch 236, what ran above) and lockstep pair (125) decoded with
    transformers' ``sdpa`` and with ``grouped_sdpa`` (``grouped_attention.py``, beside this file), one
    after the other, and how many of 16 greedy rows each writes alike."""
    from grouped_attention import register

    grouped = register()
    base, rl = build("7b", 0), build("7b", 1)
    vocab = QWEN25["7b"]["vocab_size"]
    rule = SwitchRule(direction="forward", policy="random", threshold=0.9, budget=None)
    greedy = SamplingConfig(temperature=0, max_new_tokens=64)
    written = {}
    for impl in ("sdpa", grouped, "sdpa", grouped):
        for m in (base, rl):
            m.set_attn_implementation(impl)

        def one(batch: int, new: int):
            sampling = SamplingConfig(temperature=1.0, top_p=0.7, max_new_tokens=new)
            sample(base, prompts(batch, vocab), eos_id=-1, pad_id=0, sampling=sampling, seed=1, batch_size=batch)

        def pair(batch: int, new: int):
            sampling = SamplingConfig(temperature=1.0, top_p=0.7, max_new_tokens=new)
            kw = dict(eos_id=None, pad_id=0, vocab_size=vocab, rule=rule, sampling=sampling, seed=1)
            cross_sample(base, rl, prompts(batch, vocab), batch_size=batch, **kw)

        if impl not in written:
            ragged = [p[: 200 + 50 * (i % 8)] for i, p in enumerate(prompts(16, vocab))]  # left-padded rows
            out = sample(base, ragged, eos_id=-1, pad_id=0, sampling=greedy, seed=0, batch_size=16)
            written[impl] = [s.response_ids for s in out]
        for name, run, batch in (("rollout", one, SMALL[0]), ("lockstep", pair, SMALL[1])):
            tok_s, _ = rate(run, batch)
            print(f"{impl}: {name} 7b at batch {batch}: {tok_s:.0f} tok/s", flush=True)
            print(f"RESULT attention_{impl}_{name}_7b_tok_s {tok_s:.0f}", flush=True)
    alike = sum(a == b for a, b in zip(written["sdpa"], written[grouped]))
    print(f"greedy, 16 ragged rows x 64 tokens in bf16: {alike} of 16 alike", flush=True)
    print(f"RESULT attention_greedy_rows_alike {alike}", flush=True)


def main(smoke: bool) -> None:
    global DEVICE, PROMPT
    transformers.logging.set_verbosity_error()  # eos -1 (never stop early) is deliberate here
    if smoke:
        global SMALL
        DEVICE, PROMPT, SMALL = "cpu", 16, (8, 8)
        QWEN25.update({"7b": TINY, "32b": TINY})
        card = 2 * 2**30
    elif not torch.cuda.is_available():
        raise SystemExit("bench_decode_gpu.py needs a CUDA device (--smoke runs it at a toy size on the CPU)")
    else:
        card = torch.cuda.get_device_properties(0).total_memory
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke)"
    print(f"{name}, {card / 2**30:.0f} GiB; prompt {PROMPT}, 128 timed steps", flush=True)
    if "--attention" in sys.argv[1:]:
        attention_ab(card)
        return
    for case, shape in ((rollout, "7b"), (lockstep, "7b"), (rollout, "32b")):
        case(shape, card)  # its models are freed when it returns
        free()


if __name__ == "__main__":
    main(smoke="--smoke" in sys.argv[1:])
