"""Training loops: next-token pretraining and GRPO, small enough to read in one sitting.

``pretrain`` is plain next-token prediction on (prompt, response) pairs, with the loss on the
response and its end-of-sequence token (the prompt of the toy task is random operands that
carry nothing to learn).

``grpo`` is Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) as the paper's
RL checkpoints were trained, simplified for a CPU-sized model:

1. each step samples ``group_size`` responses for each of ``prompts_per_step`` prompts from
   the current policy and scores them with a verifiable reward (0/1 from the grader);
2. advantages are group-normalised: (r - mean(group)) / (std(group) + 1e-6), the same value
   for every token of a response; groups whose rewards are all equal contribute nothing;
3. the policy takes ``updates_per_batch`` gradient steps on that batch with the clipped
   ratio objective (PPO clip ``clip_eps``; the ratio is 1 on the first step, so the clip
   matters from the second);
4. the loss is averaged over all response tokens of the batch (DAPO's token-level mean, not
   GRPO's per-sequence mean, so long responses are not down-weighted);
5. an optional KL penalty to a frozen reference uses the k3 estimator (Schulman 2020),
   ``kl_coef`` = 0 by default as in DAPO;
6. ``advantage`` weights each token's advantage by the divergence between the sampling policy
   and the reference (the base model) at that position (``tokenshift.advantages``: ``none`` is
   plain GRPO, ``js``, ``kl``, ``topq`` and ``mix`` move the response's credit to the positions
   the policy moved); the weights are computed once per batch, from the logits the batch was
   sampled with, and carry no gradient.

Deterministic given the seeds and the torch thread count.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tokenshift.advantages import MODES, weighted_advantages
from tokenshift.generation import Sample, SamplingConfig, pad_rows, sample
from tokenshift.io import InputError


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 1500
    """Optimizer steps."""
    batch_size: int = 64
    """Sequences per step."""
    lr: float = 5e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to ``lr * min_lr_ratio``)."""
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class GRPOConfig:
    steps: int = 24
    """Policy-update rounds (each samples a fresh batch)."""
    prompts_per_step: int = 16
    group_size: int = 8
    """Responses sampled per prompt; advantages are normalised within each group."""
    lr: float = 1e-4
    """AdamW learning rate. Adam's first steps move every weight by about ``lr``, so RL takes a
    far smaller rate than pretraining (1e-3 collapsed the toy policy within one step)."""
    clip_eps: float = 0.2
    updates_per_batch: int = 2
    kl_coef: float = 0.0
    """Weight of the k3 KL estimate to the reference model (0 disables it)."""
    grad_clip: float = 1.0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int = 0
    advantage: str = "none"
    """Token advantage weighting (``tokenshift.advantages.MODES``); all but ``none`` need a reference."""
    advantage_q: float = 0.2
    """``topq``: the share of each response's positions that carry its advantage."""
    advantage_alpha: float = 0.5
    """``mix``: the floor of credit every position keeps."""
    advantage_c: float = 0.2
    """``lowprob``: how much more credit a token gets as its probability falls (the follow-up's c)."""

    def __post_init__(self) -> None:
        if self.advantage not in MODES:
            raise ValueError(f"advantage weighting {self.advantage!r}: expected one of {MODES}")
        if not 0 < self.advantage_q <= 1:
            raise ValueError(f"advantage_q {self.advantage_q}: expected a share in (0, 1]")
        if not 0 <= self.advantage_alpha <= 1:
            raise ValueError(f"advantage_alpha {self.advantage_alpha}: expected a value in [0, 1]")


@dataclass(frozen=True)
class Example:
    prompt_ids: list[int]
    response_ids: list[int]


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def collate(
    examples: Sequence[Example], pad_id: int, eos_id: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad prompt+response(+EOS) into ``(input_ids, attention_mask, response_mask)``.

    ``response_mask[i, t]`` is 1 where token ``t`` of row ``i`` is a response token (or its
    EOS), i.e. where the model's prediction from position ``t - 1`` is trained or scored.
    """
    tail = [eos_id] if eos_id is not None else []
    rows = [ex.prompt_ids + ex.response_ids + tail for ex in examples]
    ids, attn = pad_rows(rows, pad_id, side="right")
    resp = torch.zeros(ids.shape, dtype=torch.bool)
    for i, ex in enumerate(examples):
        resp[i, len(ex.prompt_ids) : len(rows[i])] = True
    return ids, attn, resp


def next_token_logits(model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The logits predicting ``ids[:, 1:]``, shape ``[B, T-1, V]`` in float32."""
    return model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()


def logprobs_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t >= 1 from ``next_token_logits``, shape ``[B, T-1]``."""
    return -F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


def token_logprobs(model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t >= 1, shape ``[B, T-1]`` (aligned with ``ids[:, 1:]``)."""
    return logprobs_of(next_token_logits(model, ids, attn), ids)


class TrainingDiverged(InputError):
    """Training whose weights or loss stopped being finite: a learning rate too large for the model."""

    def __init__(self, what: str, step: int):
        super().__init__(
            f"{what}: the weights or the loss are no longer finite after step {step}; expected a smaller learning "
            "rate (the toy's: toy.pretrain_lr, toy.sft_lr, toy.grpo_lr)"
        )


def pretrain(
    model: torch.nn.Module,
    examples: Sequence[Example],
    cfg: PretrainConfig,
    *,
    pad_id: int,
    eos_id: int,
    progress: bool = True,
) -> list[float]:
    """Next-token pretraining on ``examples``; returns the loss of every step."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    model.train()
    losses = []
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress, mininterval=2.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        batch = [examples[rng.randrange(len(examples))] for _ in range(cfg.batch_size)]
        ids, attn, resp = collate(batch, pad_id, eos_id)
        logp = token_logprobs(model, ids, attn)
        mask = resp[:, 1:]
        loss = -(logp * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise TrainingDiverged(f"next-token training (pretraining or SFT) at learning rate {cfg.lr:g}", step + 1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


@dataclass(frozen=True)
class PromptItem:
    prompt_ids: list[int]
    gold: str


RewardFn = Callable[[list[list[int]], list[str]], list[float]]
"""(response token ids, gold answers) -> one reward per response."""


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r - group mean) / (group std + 1e-6) for rewards laid out group after group."""
    g = rewards.view(-1, group_size)
    adv = (g - g.mean(dim=1, keepdim=True)) / (g.std(dim=1, keepdim=True, unbiased=False) + 1e-6)
    return adv.view(-1)


def rollout_batch(
    prompts: Sequence[list[int]], samples: Sequence[Sample], *, pad_id: int, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampled responses as a training batch ``(input_ids, attention_mask, mask)``.

    ``mask[i, t]`` (float, ``[B, T-1]``, aligned with ``logprobs_of``) is 1 where the prediction of
    ``input_ids[i, t + 1]`` is trained: every response token, and the EOS of a response that
    emitted one. A response cut by the length limit has no EOS to be trained on, so the EOS
    ``collate`` appends to it is neither trained nor attended to.
    """
    ids, attn, resp = collate([Example(p, s.response_ids) for p, s in zip(prompts, samples)], pad_id, eos_id)
    for i, s in enumerate(samples):
        if s.finish_reason == "length":
            last = int(attn[i].sum()) - 1
            resp[i, last] = False
            attn[i, last] = 0
    return ids, attn, resp[:, 1:].float()


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """The clipped GRPO objective to minimise, averaged over the batch's trained tokens.

    ``logp`` (with gradient), ``old_logp`` (the sampling policy's) and ``ref_logp`` are ``[B, T-1]``
    token log-probabilities; ``advantages`` is ``[B, 1]`` or ``[B, T-1]``; ``mask`` weights tokens
    (``rollout_batch``). Per token: PPO's ``-min(r A, clip(r, 1 - eps, 1 + eps) A)`` with
    ``r = p / p_old``, plus ``kl_coef`` times the k3 estimate of KL(policy || reference),
    ``p_ref / p - log(p_ref / p) - 1`` (Schulman 2020, "Approximating KL divergence"); the sum
    over tokens is divided by their number (DAPO's token-level mean).
    """
    ratio = torch.exp(logp - old_logp)
    per_token = -torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    if ref_logp is not None and kl_coef > 0:
        d = ref_logp - logp
        per_token = per_token + kl_coef * (torch.exp(d) - d - 1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def grpo(
    policy: torch.nn.Module,
    prompts: Sequence[PromptItem],
    reward_fn: RewardFn,
    cfg: GRPOConfig,
    *,
    pad_id: int,
    eos_id: int,
    reference: torch.nn.Module | None = None,
    progress: bool = True,
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
) -> list[dict]:
    """Train ``policy`` in place with GRPO; returns one dict of statistics per step.

    ``on_step(k, policy)`` is called after the k-th update round (k = 1 .. steps), to save or
    evaluate intermediate policies; it must leave the policy and the global RNG as it found them.
    """
    if cfg.kl_coef > 0 and reference is None:
        raise ValueError("GRPOConfig.kl_coef > 0 needs a reference model")
    if cfg.advantage not in ("none", "lowprob") and reference is None:
        raise ValueError(f"advantage weighting {cfg.advantage!r} needs a reference model")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    history = []
    bar = tqdm(range(cfg.steps), desc="grpo", disable=not progress)
    for step in bar:
        t0 = time.perf_counter()
        chosen = rng.sample(range(len(prompts)), min(cfg.prompts_per_step, len(prompts)))
        group_prompts = [prompts[i] for i in chosen for _ in range(cfg.group_size)]
        samples = sample(
            policy,
            [p.prompt_ids for p in group_prompts],
            eos_id=eos_id,
            pad_id=pad_id,
            sampling=cfg.sampling,
            seed=cfg.seed * 7919 + step,
            batch_size=len(group_prompts),
        )
        rewards = torch.tensor(
            reward_fn([s.response_ids for s in samples], [p.gold for p in group_prompts]), dtype=torch.float32
        )
        adv = group_advantages(rewards, cfg.group_size)
        ids, attn, mask = rollout_batch([p.prompt_ids for p in group_prompts], samples, pad_id=pad_id, eos_id=eos_id)
        need_ref = cfg.kl_coef > 0 or cfg.advantage not in ("none", "lowprob")
        with torch.no_grad():
            ref_logits = next_token_logits(reference, ids, attn) if need_ref else None
            ref_logp = logprobs_of(ref_logits, ids) if cfg.kl_coef > 0 else None
        policy.train()
        for update in range(cfg.updates_per_batch):
            logits = next_token_logits(policy, ids, attn)
            logp = logprobs_of(logits, ids)
            if update == 0:
                # the first update's policy is the one that sampled: its log-probs are the old ones
                # (no separate no-grad forward), and its logits weigh the advantages
                with torch.no_grad():
                    old_logp = logp.detach()
                    if cfg.advantage == "none":
                        a = adv[:, None]
                    else:
                        a = weighted_advantages(
                            logits.detach(),
                            ref_logits,
                            adv,
                            mask,
                            mode=cfg.advantage,
                            q=cfg.advantage_q,
                            alpha=cfg.advantage_alpha,
                            tokens=ids[:, 1:],
                            c=cfg.advantage_c,
                        )
                del ref_logits
            loss = grpo_loss(
                logp,
                old_logp,
                a,
                mask,
                clip_eps=cfg.clip_eps,
                ref_logp=ref_logp,
                kl_coef=cfg.kl_coef,
            )
            del logits
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            opt.step()
        policy.eval()
        if not all(torch.isfinite(p).all() for p in policy.parameters()):  # else a traceback in the next sampling
            raise TrainingDiverged(f"GRPO at learning rate {cfg.lr:g}", step + 1)
        stats = {
            "step": step,
            "reward_mean": rewards.mean().item(),
            "loss": loss.item(),
            "response_tokens_mean": mask.sum().item() / len(samples),
            "seconds": time.perf_counter() - t0,
        }
        history.append(stats)
        bar.set_postfix(reward=f"{stats['reward_mean']:.3f}")
        if on_step is not None:
            on_step(step + 1, policy)
    return history
