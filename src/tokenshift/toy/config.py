"""Everything the toy pair's build depends on: the config's ``toy:`` section, key for key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from tokenshift.options import from_mapping, option
from tokenshift.toy.task import ToyTaskConfig


@dataclass(frozen=True)
class ToyBuildConfig:
    """How the embedded toy pair is built. Defaults are tuned to finish on 2 CPU cores in minutes."""

    section: ClassVar[str] = "toy"
    seed: int = option(0, "seed of the task generator and of training", minimum=0)
    min_steps: int = option(2, "fewest operations per problem", minimum=1)
    max_steps: int = option(8, "most operations per problem", minimum=1)
    mistake_rate: float = option(0.12, "chance that a pretraining trace errs at a step", minimum=0)
    n_train_problems: int = option(20000, "distinct training problems", minimum=1)
    n_traces: int = option(50000, "pretraining traces drawn from them", minimum=1)
    hidden_size: int = option(128, "width of the toy Qwen2 model", minimum=8)
    num_layers: int = option(3, "depth of the toy Qwen2 model", minimum=1)
    pretrain_steps: int = option(600, "optimizer steps of pretraining", minimum=1)
    grpo_steps: int = option(60, "GRPO update rounds", minimum=1, stages=("rl",))
    grpo_lr: float = option(1e-4, "GRPO learning rate (AdamW)", minimum=0, stages=("rl",))
    threads: int = option(2, "torch CPU threads (results depend on it)", minimum=1)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> ToyBuildConfig:
        return from_mapping(cls, m)

    @property
    def task(self) -> ToyTaskConfig:
        return ToyTaskConfig(
            seed=self.seed, min_steps=self.min_steps, max_steps=self.max_steps, mistake_rate=self.mistake_rate
        )

    @property
    def max_new_tokens(self) -> int:
        # a step is at most 9 tokens ("22-4=18." with two-digit numbers), the answer ~6
        return 9 * self.max_steps + 12
