"""Build the embedded toy models: a base model by pretraining, an RL model by GRPO from it, and
an SFT model by supervised fine-tuning from it on correct traces (the paper's contrast).

Both are ordinary Hugging Face checkpoints (``Qwen2ForCausalLM``, the architecture of the
paper's models, and a fast tokenizer), saved with ``save_pretrained`` and loaded back through
the Auto classes; no later stage treats them differently from a downloaded pair.

The base model learns the toy task from traces that contain plausible mistakes at decision
points (see ``tokenshift.toy.task``), so it makes them sometimes; GRPO with the 0/1 reward of
the grader teaches the RL model to avoid them. Nothing steers *where* the two models come to
differ: that is for the divergence stage to find.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tokenshift.generation import SamplingConfig
from tokenshift.grading import Grader
from tokenshift.io import write_json_atomic
from tokenshift.toy.config import ToyBuildConfig
from tokenshift.toy.task import pretraining_traces, problems
from tokenshift.toy.tokenizer import train_tokenizer
from tokenshift.train import Example, GRPOConfig, PretrainConfig, PromptItem, grpo, pretrain


def _qwen2_config(vocab_size: int, eos_id: int, cfg: ToyBuildConfig):
    from transformers import Qwen2Config

    # four heads, but heads of 32 dimensions in a model of 32, 64 or 96: vLLM's CPU attention takes no
    # smaller head (tests/test_vllm.py runs the short toy build, 64 wide); 128 wide and up keep four
    heads = 4 if cfg.hidden_size >= 128 or cfg.hidden_size % 32 else cfg.hidden_size // 32
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        # a narrow MLP (2x, not Qwen2's ~5x): the budget buys depth, which the lookups need
        intermediate_size=2 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def build_base(out_dir: Path, cfg: ToyBuildConfig, *, progress: bool = True) -> dict:
    """Pretrain the toy base model and save it (and its tokenizer) at ``out_dir``."""
    from transformers import Qwen2ForCausalLM

    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    task = cfg.task
    train = problems(task, "train", cfg.n_train_problems)
    traces = list(pretraining_traces(task, train, cfg.n_traces, seed=cfg.seed))
    tokenizer = train_tokenizer(p + r for p, r in traces[:5000])
    eos = tokenizer.eos_token_id
    enc_p = tokenizer([p for p, _ in traces], add_special_tokens=False).input_ids
    enc_r = tokenizer([r for _, r in traces], add_special_tokens=False).input_ids
    examples = [Example(p, r) for p, r in zip(enc_p, enc_r)]
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(_qwen2_config(len(tokenizer), eos, cfg))
    losses = pretrain(
        model,
        examples,
        PretrainConfig(steps=cfg.pretrain_steps, lr=cfg.pretrain_lr, seed=cfg.seed),
        pad_id=eos,
        eos_id=eos,
        progress=progress,
    )
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    return _save(
        model,
        tokenizer,
        out_dir,
        cfg,
        t0,
        role="base",
        final_loss=sum(losses[-20:]) / 20,
        parameters=sum(p.numel() for p in model.parameters()),
    )


def _save(model, tokenizer, out_dir: Path, cfg: ToyBuildConfig, t0: float, **stats) -> dict:
    """Save a built model with its tokenizer, and what it was built with (``toy_build.json``)."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    _readable(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {**stats, "build": dataclasses.asdict(cfg)}
    # what the model was built from, not how long it took (nor its GRPO steps): the file is hashed into the
    # checkpoint's identity, and the same build on a laptop and on a cluster's node is one checkpoint (the job's
    # log has the build's seconds)
    write_json_atomic(out_dir / "toy_build.json", _timeless(record))
    return {**record, "seconds": time.perf_counter() - t0}


def _readable(ckpt: Path) -> None:
    """Give a saved checkpoint's weights the mode the umask gives every other file: safetensors writes them 0600,
    so a group sharing a cluster's results could not load the built models (the twelfth hostile pass)."""
    from tokenshift.io import umask

    for path in Path(ckpt).glob("*.safetensors"):
        os.chmod(path, 0o666 & ~umask())


def _timeless(value):
    """``value`` without its wall-clock ``seconds``, at any depth."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "seconds"}
    return [_timeless(v) for v in value] if isinstance(value, list) else value


class TrainPrompts(Sequence[PromptItem]):
    """The toy task's training problems as GRPO prompts, tokenized when drawn: a run draws a few
    hundred of the 20,000 (tokenizing all of them took seconds of every job's start)."""

    def __init__(self, tokenizer, cfg: ToyBuildConfig):
        self.tokenizer = tokenizer
        self.problems = problems(cfg.task, "train", cfg.n_train_problems)

    def __len__(self) -> int:
        return len(self.problems)

    def __getitem__(self, i: int) -> PromptItem:
        p = self.problems[i]
        return PromptItem(self.tokenizer(p.prompt, add_special_tokens=False).input_ids, str(p.answer))


def run_grpo(policy, tokenizer, grpo_cfg: GRPOConfig, cfg: ToyBuildConfig, **kwargs) -> list[dict]:
    """GRPO on the toy task with the reward the toy pair was built with: lenient, so an unboxed
    correct answer earns it too. ``kwargs`` go to ``tokenshift.train.grpo``."""
    eos = tokenizer.eos_token_id
    with Grader(workers=1, mode="lenient") as grader:

        def reward(responses: list[list[int]], golds: list[str]) -> list[float]:
            texts = tokenizer.batch_decode(responses)
            return [float(g.correct) for g in grader.grade(texts, golds)]

        return grpo(policy, TrainPrompts(tokenizer, cfg), reward, grpo_cfg, pad_id=eos, eos_id=eos, **kwargs)


def toy_sampling(cfg: ToyBuildConfig) -> SamplingConfig:
    """How the toy RL training samples: temperature 1, no nucleus, the task's longest response."""
    return SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=cfg.max_new_tokens)


def build_rl(init_dir: Path, out_dir: Path, cfg: ToyBuildConfig, *, name: str = "rl", progress: bool = True) -> dict:
    """Train the toy RL model with GRPO from the base checkpoint at ``init_dir``; every
    ``cfg.checkpoint_every`` steps the policy is saved under ``out_dir/checkpoints/step-<k>``
    (a checkpoint with its manifest, named ``<name>@step-<k>``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenshift.checkpoints import write_manifest

    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    # checkpoints of an earlier build into the same directory are not this model's
    shutil.rmtree(Path(out_dir) / "checkpoints", ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    policy = AutoModelForCausalLM.from_pretrained(init_dir)
    grpo_cfg = GRPOConfig(steps=cfg.grpo_steps, lr=cfg.grpo_lr, seed=cfg.seed, sampling=toy_sampling(cfg))

    def save_intermediate(step: int, model) -> None:
        if step in cfg.checkpoint_steps:
            ckpt = Path(out_dir) / "checkpoints" / f"step-{step}"
            model.save_pretrained(ckpt)
            _readable(ckpt)
            tokenizer.save_pretrained(ckpt)
            write_manifest(ckpt, name=f"{name}@step-{step}", spec={"toy": "rl", "step": step})

    history = run_grpo(policy, tokenizer, grpo_cfg, cfg, progress=progress, on_step=save_intermediate)
    return _save(policy, tokenizer, out_dir, cfg, t0, role="rl", grpo=history, init=str(init_dir))


def build_sft(init_dir: Path, out_dir: Path, cfg: ToyBuildConfig, *, progress: bool = True) -> dict:
    """Fine-tune the toy base model at ``init_dir`` by next-token prediction on correct traces of
    the training problems (the same problems GRPO samples, without the mistakes the base model's
    pretraining traces contain): supervised learning towards what RL is rewarded for."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    model = AutoModelForCausalLM.from_pretrained(init_dir)
    eos = tokenizer.eos_token_id
    train = problems(cfg.task, "train", cfg.n_train_problems)
    enc_p = tokenizer([p.prompt for p in train], add_special_tokens=False).input_ids
    enc_r = tokenizer([p.response() for p in train], add_special_tokens=False).input_ids
    sft = PretrainConfig(steps=cfg.sft_steps, lr=cfg.sft_lr, warmup_steps=min(20, cfg.sft_steps), seed=cfg.seed)
    losses = pretrain(
        model, [Example(p, r) for p, r in zip(enc_p, enc_r)], sft, pad_id=eos, eos_id=eos, progress=progress
    )
    return _save(model, tokenizer, out_dir, cfg, t0, role="sft", final_loss=sum(losses[-20:]) / 20, init=str(init_dir))


# One entry point per model, each a subcommand of its own (``tokenshift models toy-base|toy-rl|toy-sft``):
# each stage's code hash (tokenshift.codehash) then covers its own build, so a change to GRPO or to
# the grader it rewards with re-runs the RL build, not the base model's pretraining.


def _toy_init(init: Path) -> Path:
    """The checkpoint directory of ``init``, a toy base model (its ``toy_build.json``), or ``InputError``: a
    toy RL or SFT build trains on the toy task's prompts, which another model's tokenizer does not read as
    its own (the twelfth hostile pass, J11: a local checkpoint ran GRPO for minutes)."""
    from tokenshift.checkpoints import resolve_checkpoint
    from tokenshift.io import InputError

    init_dir = resolve_checkpoint(init)
    if not (init_dir / "toy_build.json").is_file():
        raise InputError(
            f"{init}: no toy_build.json: expected a toy model built by `tokenshift models toy-base` to start from"
        )
    return init_dir


def build_machine() -> dict:
    """What a toy build ran on, as its manifest records it: the weights of a model trained on the CPU depend on
    the CPU's float kernels (the same code built another toy pair on another host, docs/results.md), so the
    manifest says which CPU (``/proc/cpuinfo``'s model name, family, model and stepping where there is one),
    which of torch's CPU kernels (its capability) and which torch."""
    import platform

    machine = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:  # not Linux
        return {**machine, "cpu": platform.processor() or platform.machine()}
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    keys = {"cpu": "model name", "cpu_family": "cpu family", "cpu_model": "model", "cpu_stepping": "stepping"}
    return {**machine, **{k: fields[f] for k, f in keys.items() if f in fields}}


def _manifest_extra(stats: dict) -> dict:
    """A toy build's record in its manifest, beside what ``toy_build.json`` holds: the machine that built it (not
    part of the checkpoint's identity). Not its seconds, which the job's log has: a forced build of the same
    weights wrote another manifest, and every job after it ran again (the fourteenth hostile pass, L7)."""
    return {"toy_build_machine": build_machine()}


def _built_in_place(out: Path, build: Callable[[Path], dict], *, init: Path | None = None) -> dict:
    """Run ``build`` (a toy build into the folder it is given) in a new folder beside ``out``, which then takes
    ``out``'s place: an interrupted build leaves no half-written checkpoint at ``out``. ``out`` may be a new path,
    an empty folder or an earlier toy build's (it holds ``toy_build.json``); anything else is refused before the
    build (a user's checkpoint was overwritten file by file: the fourteenth hostile pass, L5), as is the
    checkpoint the build starts from."""
    from tokenshift.checkpoints import made_beside, refuse_foreign_manifest
    from tokenshift.io import InputError

    out = Path(os.path.abspath(out))
    if not out.name:
        raise InputError(f"--out {out}: names no folder; expected a path for the checkpoint")
    if init is not None and (out == init.resolve() or init.resolve() in out.parents):
        raise InputError(
            f"--out {out}: is, or lies inside, the checkpoint the build starts from (--init): expected a path beside it"
        )
    refuse_foreign_manifest(out)
    earlier = out.is_dir() and not out.is_symlink() and ((out / "toy_build.json").is_file() or not any(out.iterdir()))
    if (out.exists() or out.is_symlink()) and not earlier:  # a new folder, an empty one, or an earlier toy build
        raise InputError(
            f"--out {out}: exists and is not a toy build's folder (no toy_build.json): expected a new path, or an "
            "earlier toy build's folder to replace"
        )
    return made_beside(out, build)


def build_toy_base(name: str, out: Path, cfg: ToyBuildConfig, *, progress: bool = True) -> str:
    """Build the toy base model (pretraining) at ``out`` and write its manifest last; returns a
    one-line summary."""
    from tokenshift.checkpoints import write_manifest

    stats = _built_in_place(Path(out), lambda d: build_base(d, cfg, progress=progress))
    write_manifest(Path(out), name=name, spec={"toy": "base"}, extra=_manifest_extra(stats))
    return (
        f"toy base model {name!r}: {stats['parameters']} parameters, final loss {stats['final_loss']:.3f}, "
        f"{stats['seconds']:.0f} s"
    )


def build_toy_rl(name: str, out: Path, cfg: ToyBuildConfig, *, init: Path, progress: bool = True) -> str:
    """Build the toy RL model (GRPO from the checkpoint ``init``) at ``out`` and write its manifest
    last; returns a one-line summary."""
    from tokenshift.checkpoints import write_manifest

    init_dir = _toy_init(init)
    stats = _built_in_place(
        Path(out), lambda d: build_rl(init_dir, d, cfg, name=name, progress=progress), init=init_dir
    )
    write_manifest(Path(out), name=name, spec={"toy": "rl", "init": init_dir.name}, extra=_manifest_extra(stats))
    rewards = [h["reward_mean"] for h in stats["grpo"]]
    k = max(1, len(rewards) // 5)
    return (
        f"toy RL model {name!r}: mean GRPO reward {sum(rewards[:k]) / k:.3f} over the first {k} steps, "
        f"{sum(rewards[-k:]) / k:.3f} over the last {k}; {stats['seconds']:.0f} s"
    )


def build_toy_sft(name: str, out: Path, cfg: ToyBuildConfig, *, init: Path, progress: bool = True) -> str:
    """Build the toy SFT model (supervised fine-tuning from the checkpoint ``init``) at ``out`` and
    write its manifest last; returns a one-line summary."""
    from tokenshift.checkpoints import write_manifest

    init_dir = _toy_init(init)
    stats = _built_in_place(Path(out), lambda d: build_sft(init_dir, d, cfg, progress=progress), init=init_dir)
    spec = {"toy": "sft", "init": init_dir.name}
    write_manifest(Path(out), name=name, spec=spec, extra=_manifest_extra(stats))
    return f"toy SFT model {name!r}: final loss {stats['final_loss']:.3f}, {stats['seconds']:.0f} s"
