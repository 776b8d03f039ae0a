"""Scoring benchmarks (issue 6), ratios measured within one run.

1. statistics overhead: tokens/s of pair scoring with every statistic (``score_rows``) over
   tokens/s of two bare forward passes (full logits, nothing else) on the same batch;
2. peak memory of chunked scoring vs the naive full-logit computation at vocab 151936: the
   naive one holds [tokens, vocab] logits for both models; chunked must stay within 2x the two
   models' own activations;
3. with a CUDA device: tokens/s and model FLOP utilisation (MFU) of pair scoring for 1.5B- and
   7B-shaped Qwen2 pairs (random weights, bf16, sdpa).

With no arguments it runs on this CPU box in under 3 minutes (a small Qwen2 shape with the real
vocabulary); GPU cases only when a GPU is present, and ``--gpu-only`` leaves the CPU case out (a lent
GPU's minutes are few). Prints ``RESULT <measure> <value>`` as each is measured, so a run stopped at
its time limit keeps what it had.
Peak memory on CPU is the process's peak resident set size, reset before each measured call
(Linux ``/proc/self/clear_refs``); where that reset is impossible the memory ratios are left out
with the reason printed. ``--profile SHAPE [DIR]`` profiles one scoring call instead (what to
look at before changing the scoring kernels; see ``profile``).

    python benchmarks/bench_scoring.py [--gpu-only]
    python benchmarks/bench_scoring.py --profile 7b "$OUT"
    python benchmarks/bench_scoring.py --chunk-sweep 512,2048,8192   # CUDA only
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tokenshift.divergence import token_stats
from tokenshift.scoring import ScoringConfig, score_rows

VOCAB = 151936
SHAPES = {
    "cpu-small": dict(
        hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "1.5b": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2
    ),
    "7b": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4
    ),
}
H100_BF16_DENSE_FLOPS = 989e12


def model(shape: str, device: str, dtype, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        **SHAPES[shape],
    )
    with torch.device(device):
        return Qwen2ForCausalLM(cfg).to(dtype).eval()


def rows(n_seqs: int, prompt: int, response: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(1, VOCAB, (prompt,), generator=g).tolist(),
            torch.randint(1, VOCAB, (response,), generator=g).tolist(),
        )
        for _ in range(n_seqs)
    ]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def bare_forwards(a, b, rs, device: str, batch: int) -> float:
    """Seconds for two plain forwards (full logits) over the same sequences."""
    t0 = time.perf_counter()
    for i in range(0, len(rs), batch):
        ids = torch.tensor([p + r for p, r in rs[i : i + batch]], device=device)
        _ = a(input_ids=ids).logits, b(input_ids=ids).logits  # what the naive method computes
    sync(device)
    return time.perf_counter() - t0


def scoring(a, b, rs, device: str, batch_tokens: int, chunk_mb: int = 512) -> float:
    cfg = ScoringConfig(max_batch_tokens=batch_tokens, chunk_memory_mb=chunk_mb)
    t0 = time.perf_counter()
    score_rows(a, b, rs, vocab_size=VOCAB, pad_id=0, cfg=cfg)
    sync(device)
    return time.perf_counter() - t0


def overhead(
    shape: str, device: str, dtype, n_seqs: int, prompt: int, response: int, batch: int
) -> tuple[float, float, int]:
    """(bare time / scoring time, scored response tokens/s, parameters of one model)."""
    a, b = model(shape, device, dtype, 0), model(shape, device, dtype, 1)
    rs = rows(n_seqs, prompt, response)
    bt = batch * (prompt + response)
    scoring(a, b, rs[:batch], device, bt), bare_forwards(a, b, rs[:batch], device, batch)  # warm-up
    t_bare = min(bare_forwards(a, b, rs, device, batch) for _ in range(2))
    t_score = min(scoring(a, b, rs, device, bt) for _ in range(2))
    return t_bare / t_score, n_seqs * response / t_score, a.num_parameters()


def chunk_sweep(budgets_mb: list[int]) -> None:
    """On CUDA: scoring/bare throughput and peak memory at each LM-head chunk budget
    (``scoring.chunk_memory_mb``), 1.5B and 7B shapes, the main run's batch."""
    for shape, n_seqs in (("1.5b", 32), ("7b", 16)):
        a, b = model(shape, "cuda", torch.bfloat16, 0), model(shape, "cuda", torch.bfloat16, 1)
        rs = rows(n_seqs, 512, 1536)
        bt = 8 * 2048
        bare_forwards(a, b, rs[:8], "cuda", 8)
        t_bare = min(bare_forwards(a, b, rs, "cuda", 8) for _ in range(2))
        for mb in budgets_mb:
            scoring(a, b, rs[:8], "cuda", bt, mb)  # compiles for this chunk length
            torch.cuda.reset_peak_memory_stats()
            weights = torch.cuda.memory_allocated()
            t = min(scoring(a, b, rs, "cuda", bt, mb) for _ in range(2))
            peak = (torch.cuda.max_memory_allocated() - weights) / 2**20
            print(f"{shape} chunk {mb} MB: scoring/bare {t_bare / t:.2f}, peak over weights {peak:.0f} MB", flush=True)
            result(f"gpu_{shape}_chunk{mb}_stats_overhead_ratio", t_bare / t)
        del a, b
        gc.collect()
        torch.cuda.empty_cache()


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"no {key} in /proc/self/status")


def reset_cpu_peak() -> int:
    """Reset this process's peak resident set size (Linux: ``/proc/self/clear_refs``) and return
    the current one in bytes. The peak is process-wide and monotone (``ru_maxrss``), so without
    the reset, a peak reached while the models were built hides everything measured after it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status_kb("VmRSS") * 1024


def cpu_peak() -> int:
    """Peak resident set size in bytes since the last ``reset_cpu_peak``."""
    return _proc_status_kb("VmHWM") * 1024


def cpu_peak_unmeasurable() -> str | None:
    """Why CPU peak memory cannot be measured here, or None when it can."""
    try:
        reset_cpu_peak()
        cpu_peak()
    except OSError as err:
        return f"the peak resident set size cannot be reset here ({err}); Linux's /proc/self/clear_refs is needed"
    return None


@torch.no_grad()
def _memory_child(mode: str, tokens: int, device: str) -> None:
    """Run one scoring mode in a fresh process and print its peak memory in MB."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a, b = model("cpu-small", device, dtype, 0), model("cpu-small", device, dtype, 1)
    rs = rows(1, 16, tokens)
    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    else:
        base_mem = reset_cpu_peak()
    if mode == "activations":  # the two models' bodies alone: the floor any method needs
        ids = torch.tensor([rs[0][0] + rs[0][1]], device=device)
        _ = a.model(input_ids=ids).last_hidden_state, b.model(input_ids=ids).last_hidden_state
    elif mode == "naive":
        ids = torch.tensor([rs[0][0] + rs[0][1]], device=device)
        la, lb = a(input_ids=ids).logits[0], b(input_ids=ids).logits[0]
        token_stats(la, lb)
    else:
        score_rows(a, b, rs, vocab_size=VOCAB, pad_id=0, cfg=ScoringConfig(max_batch_tokens=1 << 20))
        if device == "cuda":  # the first call compiles; measure the second
            torch.cuda.reset_peak_memory_stats()
            score_rows(a, b, rs, vocab_size=VOCAB, pad_id=0, cfg=ScoringConfig(max_batch_tokens=1 << 20))
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base_mem
    else:
        peak = cpu_peak() - base_mem
    print(peak / 2**20)


def peak_mb(mode: str, tokens: int, device: str) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", mode, str(tokens), device],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def result(name: str, value: float) -> None:
    print(f"RESULT {name} {value:.3f}", flush=True)


def main(gpu_only: bool = False) -> None:
    if not gpu_only:
        r, tps, _ = overhead("cpu-small", "cpu", torch.float32, n_seqs=8, prompt=64, response=192, batch=4)
        print(f"cpu-small (vocab {VOCAB}): scoring {tps:.0f} tok/s; scoring/bare-forward throughput {r:.2f}")
        result("cpu_stats_overhead_ratio", r)
    mem_tokens = 8192 if torch.cuda.is_available() else 1024  # naive needs ~10 [tokens, vocab] fp32 tensors
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    why_not = None if dev == "cuda" else cpu_peak_unmeasurable()
    if why_not:
        print(f"peak memory: not measured, {why_not}")
    else:
        act, chunked, naive = (peak_mb(m, mem_tokens, dev) for m in ("activations", "chunked", "naive"))
        print(
            f"peak memory over the weights, {mem_tokens} tokens on {dev}: activations {act:.0f} MB, "
            f"chunked {chunked:.0f} MB, naive {naive:.0f} MB"
        )
        if min(act, chunked) <= 0:
            print("peak memory ratios: not computed, a peak over the weights read 0 MB")
        else:
            result("chunked_over_activations_memory", chunked / act)
            result("naive_over_chunked_memory", naive / chunked)
    if torch.cuda.is_available():
        for shape, n_seqs in (("1.5b", 32), ("7b", 16)):
            prompt, response = 512, 1536
            r, tps, n_params = overhead(
                shape, "cuda", torch.bfloat16, n_seqs=n_seqs, prompt=prompt, response=response, batch=8
            )
            # forward FLOPs ~ 2 x parameters per token and model (attention's extra not counted),
            # over every token read (prompt too), for two models
            flops = 2 * 2 * n_params * tps * (prompt + response) / response
            mfu = flops / H100_BF16_DENSE_FLOPS
            print(f"{shape}: scoring {tps:.0f} response tok/s, scoring/bare {r:.2f}, MFU {mfu:.1%}")
            result(f"gpu_{shape}_stats_overhead_ratio", r)
            result(f"gpu_{shape}_mfu", mfu)
            gc.collect()
            torch.cuda.empty_cache()


def profile(shape: str, out_dir: str | None) -> None:
    """Profile one warm ``score_rows`` call (the GPU shapes on CUDA, ``cpu-small`` anywhere):
    the operators by their own time, and the time in scoring's phases (``tokenshift.body``,
    ``tokenshift.lm_head``, ``tokenshift.stats``, recorded by ``scoring`` itself), printed. With
    ``out_dir``, also a Chrome trace there (``profile-SHAPE.trace.json``)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    n_seqs, prompt, response = (8, 512, 1536) if dev == "cuda" else (4, 64, 192)
    a, b = model(shape, dev, dtype, 0), model(shape, dev, dtype, 1)
    rs = rows(n_seqs, prompt, response)
    bt = n_seqs * (prompt + response)
    scoring(a, b, rs, dev, bt)  # warm-up (and, on CUDA, compilation)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        scoring(a, b, rs, dev, bt)
    sort = "self_cuda_time_total" if dev == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30)
    phases = {e.key: e for e in prof.key_averages() if e.key.startswith("tokenshift.")}
    attr = "device_time_total" if dev == "cuda" else "cpu_time_total"
    lines = [f"{k}: {getattr(e, attr, 0) / 1e3:.1f} ms ({e.count} calls)" for k, e in sorted(phases.items())]
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    text = f"profile of score_rows, shape {shape}, {n_seqs} x ({prompt} + {response}) tokens on {name}\n"
    text += "\n".join(lines) + "\n" + table
    print(text)
    if out_dir:
        from pathlib import Path

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(out_dir, f"profile-{shape}.trace.json")))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        _memory_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) > 2 and sys.argv[1] == "--chunk-sweep":
        chunk_sweep([int(mb) for mb in sys.argv[2].split(",")])
    elif len(sys.argv) > 1 and sys.argv[1] == "--profile":
        # --profile [shape] [out_dir]
        profile(sys.argv[2] if len(sys.argv) > 2 else "cpu-small", sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        main(gpu_only="--gpu-only" in sys.argv[1:])
