"""Rollout throughput of the HF backend: generated tokens/s at batch 1 vs batch 32.

Runs with no arguments in well under 3 minutes on a 2-core CPU, on a toy-shaped Qwen2 (the
embedded pair's shape, random weights; throughput does not depend on the weights). With a CUDA
device it also measures a 1.5B-shaped Qwen2 (random weights, bf16, sdpa). Generation runs to
max_new_tokens (no EOS) so every configuration produces the same number of tokens. Prints, last,
one line per measure: ``RESULT <measure> <ratio>`` (batched over batch-1 tokens/s, same run).

    python benchmarks/bench_rollout.py
"""

from __future__ import annotations

import time

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

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


def tokens_per_s(model, *, batch: int, n_seqs: int, prompt_len: int, new_tokens: int, device: str) -> float:
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, vocab, (n_seqs, prompt_len), generator=g).tolist()
    cfg = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens)
    sample(model, prompts[:batch], eos_id=-1, pad_id=0, sampling=cfg, seed=0, batch_size=batch)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = sample(model, prompts, eos_id=-1, pad_id=0, sampling=cfg, seed=0, batch_size=batch)
    if device == "cuda":
        torch.cuda.synchronize()
    return sum(len(s.response_ids) for s in out) / (time.perf_counter() - t0)


def main() -> None:
    transformers.logging.set_verbosity_error()  # eos -1 (never stop early) is deliberate here
    results = []
    torch.manual_seed(0)
    toy = Qwen2ForCausalLM(Qwen2Config(**TOY)).eval()
    b1 = tokens_per_s(toy, batch=1, n_seqs=8, prompt_len=20, new_tokens=80, device="cpu")
    b32 = tokens_per_s(toy, batch=32, n_seqs=64, prompt_len=20, new_tokens=80, device="cpu")
    print(f"toy-shaped, cpu: batch 1 {b1:.0f} tok/s, batch 32 {b32:.0f} tok/s")
    results.append(("hf_toy_cpu_batch32_over_batch1", b32 / b1))
    if torch.cuda.is_available():
        big = Qwen2ForCausalLM(Qwen2Config(**QWEN_1_5B, attn_implementation="sdpa")).to("cuda", torch.bfloat16).eval()
        g1 = tokens_per_s(big, batch=1, n_seqs=2, prompt_len=256, new_tokens=256, device="cuda")
        g32 = tokens_per_s(big, batch=32, n_seqs=64, prompt_len=256, new_tokens=256, device="cuda")
        print(f"1.5B-shaped, {torch.cuda.get_device_name()}: batch 1 {g1:.0f} tok/s, batch 32 {g32:.0f} tok/s")
        results.append(("hf_1.5b_gpu_batch32_over_batch1", g32 / g1))
    for name, ratio in results:
        print(f"RESULT {name} {ratio:.2f}")


if __name__ == "__main__":
    main()
