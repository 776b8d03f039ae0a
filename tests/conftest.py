"""Shared fixtures: real tokenizers and real (tiny, randomly initialised) Qwen2 checkpoints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: make every accidental download fail fast
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` (the inner loop, docs/testing.md): two workers share the cores, each running jobs of two
    # threads. OpenMP's threads then wait for each other at every parallel region, spinning by default: a toy
    # build of two threads beside another process took 3.7x as long as with waiting threads asleep
    # (benchmarks/RESULTS.md). How threads wait changes no result.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

NO_CONTROLLER = REPO / "tests" / "no_controller"
"""Where Debian's SLURM client is installed and no controller answers, every Snakemake start waits
~10 s: it imports snakemake-executor-plugin-slurm, which asks `scontrol show config` for its help
text. The tests that run no cluster (all but tests/test_slurm.py's, whose cluster takes this off
PATH again) find this folder's ``scontrol`` first: it fails at once, as an unanswered one does
after its retries."""
os.environ["PATH"] = f"{NO_CONTROLLER}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session", autouse=True)
def tokenshift_cache(tmp_path_factory):
    """The session's own cache of passed checks (tokenshift.io.cache_dir): shared by every
    Snakemake start in the session, never the user's ~/.cache."""
    path = tmp_path_factory.mktemp("tokenshift-cache")
    os.environ["TOKENSHIFT_CACHE"] = str(path)
    return path


@pytest.fixture(autouse=True)
def fresh_batch_sizes():
    """Each test starts with no batch size remembered from another's out-of-memory errors."""
    from tokenshift.memory import forget_batch_sizes

    forget_batch_sizes()


SLOW_FIXTURES = ("short_toy_base",)
"""Fixtures that train a model for minutes: a test that needs one (directly or through another fixture)
is slow, so ``-m "not slow"`` stays an inner loop."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if set(SLOW_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def toy_tokenizer():
    from tokenshift.toy.task import ToyTaskConfig, pretraining_traces, problems
    from tokenshift.toy.tokenizer import train_tokenizer

    cfg = ToyTaskConfig()
    train = problems(cfg, "train", 300)
    return train_tokenizer(p + r for p, r in pretraining_traces(cfg, train, 600, seed=0))


def short_toy_config():
    """A toy build small enough for tests, hard enough that its base model errs when it samples:
    one or two operations, many mistakes in its traces."""
    from tokenshift.toy.config import ToyBuildConfig

    return ToyBuildConfig(
        min_steps=1,
        max_steps=2,
        mistake_rate=0.35,
        n_train_problems=600,
        n_traces=6000,
        hidden_size=64,
        pretrain_steps=600,
        pretrain_lr=5e-3,  # the short task learns at the old rate (tests pin its behaviour)
        grpo_steps=20,
        grpo_lr=3e-4,
        threads=2,
    )


@pytest.fixture(scope="session")
def short_toy_base(tmp_path_factory):
    """``(root, build stats)``: the short toy base model at ``root/base`` with its manifest, built once."""
    from tokenshift.checkpoints import write_manifest
    from tokenshift.toy.build import build_base

    root = tmp_path_factory.mktemp("toybase")
    stats = build_base(root / "base", short_toy_config(), progress=False)
    write_manifest(root / "base", name="base", spec={"toy": "base"})
    return root, stats


@pytest.fixture(scope="session")
def short_toy_pair(short_toy_base):
    """``(root, base build stats, RL build stats)``: the short toy RL model at ``root/rl`` beside the base."""
    from tokenshift.checkpoints import write_manifest
    from tokenshift.toy.build import build_rl

    root, base_stats = short_toy_base
    rl_stats = build_rl(root / "base", root / "rl", short_toy_config(), progress=False)
    write_manifest(root / "rl", name="rl", spec={"toy": "rl", "init": "base"})
    return root, base_stats, rl_stats


def save_checkpoint(out: Path, tokenizer, *, embedding_rows: int | None = None, seed: int = 0, **shape) -> Path:
    """A real Qwen2 checkpoint with random weights, saved as safetensors with its tokenizer;
    ``shape`` overrides the tiny default sizes (``num_hidden_layers=3``)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tiny = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    cfg = Qwen2Config(vocab_size=embedding_rows or len(tokenizer), eos_token_id=tokenizer.eos_token_id, **tiny | shape)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def make_checkpoint(tmp_path, toy_tokenizer):
    def make(name: str, tokenizer=None, **kw) -> Path:
        return save_checkpoint(tmp_path / name, tokenizer or toy_tokenizer, **kw)

    return make


def run(
    cmd: list[str], cwd: Path | None = None, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def tokenshift_cmd() -> list[str]:
    exe = shutil.which("tokenshift")
    return [exe] if exe else [sys.executable, "-m", "tokenshift.cli"]
