"""What a toy base-model pretraining step costs, and what three ways of cutting it would give.

The toy base build is 600 such steps, a fifth of the default study's work (issue 23). On the toy
shape (``ToyBuildConfig``'s, random weights) and batches of 64 real pretraining traces drawn as
``tokenshift.train.pretrain`` draws them, it times a step's forward and backward as ``pretrain``
takes it (right-padded batch, attention mask), and beside it: the same without the mask (right
padding never reaches a real position); the batch sorted by length in 2 and 4 micro-batches with the
gradients accumulated (fewer padded positions); and the matrix product shape of the step in bf16.
Before timing, each variant's loss and gradients are compared with the step as it is: "bit for bit"
or the largest relative difference, since a variant that changes the gradient changes the model
600 steps later. Prints ratios (seconds per step, same run), last ``RESULT
pretrain_2chunk_over_current``. About a minute on 2 CPU cores.

    python benchmarks/bench_pretrain.py [threads]
"""

from __future__ import annotations

import random
import sys
import time

import torch
from transformers import Qwen2ForCausalLM

from tokenshift.toy.build import _qwen2_config
from tokenshift.toy.config import ToyBuildConfig
from tokenshift.toy.task import pretraining_traces, problems
from tokenshift.toy.tokenizer import train_tokenizer
from tokenshift.train import Example, collate, token_logprobs

BATCH, BATCHES, REPEATS = 64, 12, 2


def traces(cfg: ToyBuildConfig) -> tuple[list[Example], int, int]:
    """5,000 pretraining traces of the toy task as examples, the vocabulary size and the EOS id."""
    pairs = list(pretraining_traces(cfg.task, problems(cfg.task, "train", 2000), 5000, seed=cfg.seed))
    tok = train_tokenizer(p + r for p, r in pairs)
    enc_p = tok([p for p, _ in pairs], add_special_tokens=False).input_ids
    enc_r = tok([r for _, r in pairs], add_special_tokens=False).input_ids
    return [Example(p, r) for p, r in zip(enc_p, enc_r)], len(tok), tok.eos_token_id


def step(model, batch: list[Example], eos: int, *, chunks: int = 1, mask: bool = True) -> float:
    """Forward and backward of one pretraining batch (``pretrain``'s loss), in ``chunks`` micro-batches of
    rows sorted by length; returns the loss (the gradients are left on the model)."""
    rows = sorted(batch, key=lambda e: len(e.prompt_ids) + len(e.response_ids)) if chunks > 1 else batch
    parts = [collate(rows[k * len(rows) // chunks : (k + 1) * len(rows) // chunks], eos, eos) for k in range(chunks)]
    n = sum(int(resp[:, 1:].sum()) for _, _, resp in parts)
    total = 0.0
    for ids, attn, resp in parts:
        loss = -(token_logprobs(model, ids, attn if mask else None) * resp[:, 1:]).sum() / n
        loss.backward()
        total += loss.item()
    return total


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    cfg = ToyBuildConfig()
    examples, vocab, eos = traces(cfg)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(_qwen2_config(vocab, eos, cfg)).train()
    rng = random.Random(0)
    batches = [[examples[rng.randrange(len(examples))] for _ in range(BATCH)] for _ in range(BATCHES)]
    ids, attn, _ = collate(batches[0], eos, eos)
    print(f"toy shape, {threads} thread(s); a batch: {tuple(ids.shape)}, {attn.float().mean():.0%} real positions")
    variants = {"current": {}, "no mask": {"mask": False}, "2 chunks": {"chunks": 2}, "4 chunks": {"chunks": 4}}

    reference = None
    for name, kw in variants.items():
        model.zero_grad()
        loss = step(model, batches[0], eos, **kw)
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        if reference is None:
            reference = (loss, grad)
        same = loss == reference[0] and torch.equal(grad, reference[1])
        rel = ((grad - reference[1]).norm() / reference[1].norm()).item()
        print(f"  {name}: {'bit for bit' if same else f'gradient differs, relative {rel:.1e}'}")

    seconds = dict.fromkeys(variants, float("inf"))
    for _ in range(REPEATS):  # alternating, the best of each
        for name, kw in variants.items():
            t = time.perf_counter()
            for batch in batches[1:]:
                model.zero_grad()
                step(model, batch, eos, **kw)
            seconds[name] = min(seconds[name], (time.perf_counter() - t) / (BATCHES - 1))
    for name, s in seconds.items():
        print(f"  {name}: {s * 1e3:.0f} ms a step, {s / seconds['current']:.2f} of the current step")

    a, w = torch.randn(ids.numel(), cfg.hidden_size), torch.randn(2 * cfg.hidden_size, cfg.hidden_size)
    mm = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), w.to(dtype)
        for _ in range(3):
            x @ y.T
        t = time.perf_counter()
        for _ in range(50):
            x @ y.T
        mm[dtype] = (time.perf_counter() - t) / 50
    print(
        f"  the step's MLP product {tuple(a.shape)} x {tuple(w.T.shape)}: fp32 {mm[torch.float32] * 1e3:.2f} ms, ",
        end="",
    )
    ratio = mm[torch.bfloat16] / mm[torch.float32]
    print(f"bf16 {mm[torch.bfloat16] * 1e3:.2f} ms (RESULT pretrain_mm_bf16_over_fp32 {ratio:.2f})")
    print(f"RESULT pretrain_2chunk_over_current {seconds['2 chunks'] / seconds['current']:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else ToyBuildConfig().threads)
