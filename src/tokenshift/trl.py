"""Divergence-weighted advantages inside TRL's ``GRPOTrainer`` (``pip install 'tokenshift[trl]'``).

TRL (1.16) computes one advantage per completion in ``_generate_and_score_completions`` and its
``_compute_loss`` accepts per-token advantages of shape ``(B, T)``. The subclass below replaces
the advantages of each generated batch by ``tokenshift.advantages.weighted_advantages`` of the
current policy and a frozen reference (the base model) over the completion tokens::

    from tokenshift.trl import divergence_weighted_grpo_trainer

    Trainer = divergence_weighted_grpo_trainer()
    trainer = Trainer(model=policy, reward_funcs=reward, args=args, train_dataset=data,
                      reference=base_model, weighting="js")
    trainer.train()

TRL is imported only when the class is built, so tokenshift imports without it.
"""

from __future__ import annotations

from functools import cache

import torch

from tokenshift.advantages import weighted_advantages


def completion_logits(model, inputs: dict) -> torch.Tensor:
    """A model's logits predicting each completion token of a TRL batch, ``(B, T, V)``."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    t = inputs["completion_ids"].size(1)
    # the logits at position i predict token i + 1: the completion's come from the t positions before its end
    return model(input_ids=ids, attention_mask=mask).logits[:, -t - 1 : -1].float()


@cache
def divergence_weighted_grpo_trainer():
    """``GRPOTrainer`` with two more arguments: ``reference`` (the frozen base model) and
    ``weighting`` (a mode of ``tokenshift.advantages``), plus ``q``, ``alpha`` and ``c``."""
    from trl import GRPOTrainer

    class DivergenceWeightedGRPOTrainer(GRPOTrainer):
        def __init__(
            self, *args, reference, weighting: str = "js", q: float = 0.2, alpha: float = 0.5, c: float = 0.2, **kwargs
        ):
            super().__init__(*args, **kwargs)
            self.reference = reference.to(self.accelerator.device).eval().requires_grad_(False)
            self.weighting, self.q, self.alpha, self.c = weighting, q, alpha, c

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            # the reference under the autocast the prepared policy runs in (bf16 by default), so that
            # two equal models give equal logits
            with torch.no_grad(), self.accelerator.autocast():
                policy = completion_logits(self.model, out)
                ref = completion_logits(self.reference, out)
            out["advantages"] = weighted_advantages(
                policy,
                ref,
                out["advantages"],
                out["completion_mask"],
                mode=self.weighting,
                q=self.q,
                alpha=self.alpha,
                tokens=out["completion_ids"],
                c=self.c,
            )
            return out

    return DivergenceWeightedGRPOTrainer
