"""Everything the toy pair's build depends on: the config's ``toy:`` section, key for key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from tokenshift.options import MAX_SEED, MAX_THREADS, from_mapping, option
from tokenshift.registry import ADVANTAGE_MODES
from tokenshift.settings import SamplingConfig
from tokenshift.toy.task import EVAL_PROBLEMS, ToyTaskConfig

TOY_CONTEXT = 256
"""The toy models' context (``max_position_embeddings``), prompt and response together."""


@dataclass(frozen=True)
class ToyBuildConfig:
    """How the embedded toy pair is built. Defaults are tuned to finish on 2 CPU cores in minutes."""

    section: ClassVar[str] = "toy"
    seed: int = option(0, "seed of the task generator and of training", minimum=0, maximum=MAX_SEED)
    min_steps: int = option(2, "fewest operations per problem", minimum=1)
    max_steps: int = option(8, "most operations per problem", minimum=1)
    mistake_rate: float = option(0.12, "chance that a pretraining trace errs at a step", minimum=0, maximum=1)
    n_train_problems: int = option(20000, "distinct training problems", minimum=1)
    n_traces: int = option(50000, "pretraining traces drawn from them", minimum=1, maximum=2_000_000)
    hidden_size: int = option(128, "width of the toy Qwen2 model", minimum=8, maximum=1024)
    num_layers: int = option(3, "depth of the toy Qwen2 model", minimum=1, maximum=24)
    pretrain_steps: int = option(600, "optimizer steps of pretraining", minimum=1)
    pretrain_lr: float = option(
        2e-3,
        "peak learning rate of pretraining (AdamW, warm-up, cosine decay); at 5e-3 whether the model learns to look "
        "its operands up within 600 steps turned on the CPU's kernels and the seed",
        minimum=0,
        maximum=1,  # an Adam step of more than the weights' scale; 1e308 overflowed inside torch.optim
    )
    grpo_steps: int = option(60, "GRPO update rounds", minimum=1, stages=("rl",))
    grpo_lr: float = option(1e-4, "GRPO learning rate (AdamW)", minimum=0, maximum=1, stages=("rl",))
    sft_steps: int = option(
        40, "optimizer steps of the toy SFT model's fine-tuning on correct traces", minimum=1, stages=("sft",)
    )
    sft_lr: float = option(
        1e-3,
        "peak learning rate of the SFT fine-tuning (AdamW, warm-up, cosine decay)",
        minimum=0,
        maximum=1,
        stages=("sft",),
    )
    checkpoint_every: int = option(
        20,
        "save the RL model every k GRPO steps as a checkpoint with a manifest, for the shifts over "
        "training (0: the final model only)",
        minimum=0,
        stages=("rl",),
    )
    threads: int = option(2, "torch CPU threads (results depend on it)", minimum=1, maximum=MAX_THREADS)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> ToyBuildConfig:
        return from_mapping(cls, m)

    def __post_init__(self) -> None:
        self.task  # noqa: B018 (its task's own checks, min_steps at most max_steps, before any work)

    @property
    def task(self) -> ToyTaskConfig:
        return ToyTaskConfig(
            seed=self.seed, min_steps=self.min_steps, max_steps=self.max_steps, mistake_rate=self.mistake_rate
        )

    @property
    def checkpoint_steps(self) -> range:
        """The GRPO steps after which the RL build saves an intermediate checkpoint (the final model is not one)."""
        return (
            range(self.checkpoint_every, self.grpo_steps, self.checkpoint_every) if self.checkpoint_every else range(0)
        )

    @property
    def max_new_tokens(self) -> int:
        # a step is at most 9 tokens ("22-4=18." with two-digit numbers), the answer ~6
        return 9 * self.max_steps + 12


MAX_GRPO_BATCH = 4096
"""The most responses a GRPO round of the advantage experiment trains on at once (prompts_per_step x
group_size, one forward and backward pass): 64 by default; 4096 of the toy's lengths is a few GiB."""


def grpo_batch_refusal(prompts_per_step: int, group_size: int) -> str | None:
    """What ``group_size`` was expected to be where a GRPO round of ``prompts_per_step`` x ``group_size``
    responses passes ``MAX_GRPO_BATCH``, else None (the settings class and the config check both ask)."""
    if prompts_per_step * group_size <= MAX_GRPO_BATCH:
        return None
    return (
        f"at most {MAX_GRPO_BATCH // prompts_per_step} with prompts_per_step {prompts_per_step}: a GRPO round "
        f"trains on prompts_per_step x group_size responses at once, at most {MAX_GRPO_BATCH}"
    )


_SAMPLING = SamplingConfig()


@dataclass(frozen=True)
class ToyCheckOptions:
    """What ``tokenshift toy-check`` samples (its flags, and the workflow's, from one list): the toy
    dataset's eval problems and the study's ``sampling:`` count and seed. The task is the base model's."""

    n_problems: int = option(EVAL_PROBLEMS, "eval problems of the toy task, the first of its eval split", minimum=1)
    samples: int = option(_SAMPLING.n, "samples per problem at temperature 1 (config sampling.n)", minimum=1)
    seed: int = option(_SAMPLING.seed, "sampling seed (config sampling.seed)", minimum=0, maximum=MAX_SEED)


@dataclass(frozen=True)
class AdvantageExperimentConfig:
    """The divergence-weighted advantage experiment (config ``advantages:``): GRPO from the toy base
    model under each weighting, for several seeds, at the same compute per variant. The learning
    rate, task and threads are the toy build's (``toy:``), as the toy RL model was trained."""

    section: ClassVar[str] = "advantages"
    variants: tuple[str, ...] = option(
        ("none", "js", "topq"),
        "advantage weightings compared (tokenshift.advantages: none js kl topq mix lowprob); none is the baseline",
        choices=ADVANTAGE_MODES,
        stages=("grid",),
    )
    seeds: tuple[int, ...] = option((0, 1), "training seeds, each run for every variant", stages=("grid",))
    steps: int = option(12, "GRPO update rounds per run", minimum=1)
    prompts_per_step: int = option(8, "prompts sampled per round", minimum=1, maximum=1024)
    group_size: int = option(
        8, "responses per prompt (advantages are normalised within the group)", minimum=2, maximum=1024
    )
    q: float = option(0.2, "topq: the share of a response's positions that carry its advantage", minimum=0)
    alpha: float = option(0.5, "mix: the floor of credit every position keeps", minimum=0)
    c: float = option(0.2, "lowprob: a token's credit is A * (1 + c * (1 - its probability))", minimum=0)
    eval_every: int = option(6, "evaluate the policy every k rounds (and before the first)", minimum=1)
    eval_problems: int = option(200, "toy eval problems each evaluation answers", minimum=1)
    eval_samples: int = option(2, "samples per eval problem at temperature 1", minimum=1, maximum=1024)
    eval_seed: int = option(
        0, "sampling seed of every evaluation (the same noise for every run)", minimum=0, maximum=MAX_SEED
    )
    threads: int = option(
        1,
        "torch CPU threads per run (results depend on it); one lets two runs share 2 cores",
        minimum=1,
        maximum=MAX_THREADS,
    )

    def __post_init__(self) -> None:
        # refused here, not by tokenshift.advantages after the first evaluation of a run
        if not 0 < self.q <= 1:
            raise ValueError(f"q {self.q}: expected a share in (0, 1]")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha {self.alpha}: expected a value in [0, 1]")
        if refusal := grpo_batch_refusal(self.prompts_per_step, self.group_size):
            raise ValueError(f"group_size {self.group_size}: expected {refusal}")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> AdvantageExperimentConfig:
        return from_mapping(cls, m)

    def eval_steps(self) -> list[int]:
        """The rounds after which the policy is evaluated: 0, every ``eval_every``, and the last."""
        return sorted({0, self.steps, *range(self.eval_every, self.steps, self.eval_every)})
