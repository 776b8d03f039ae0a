"""The weighting inside TRL's own GRPOTrainer, trained for real on a tiny checkpoint (needs `trl`)."""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is an optional extra: pip install 'tokenshift[trl]'")


def test_trl_trainer_trains_with_divergence_weighted_advantages(make_checkpoint, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenshift.advantages import weighted_advantages
    from tokenshift.trl import completion_logits, divergence_weighted_grpo_trainer

    ckpt = make_checkpoint("policy")
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    tokenizer.pad_token = tokenizer.eos_token
    policy, base = (AutoModelForCausalLM.from_pretrained(ckpt) for _ in range(2))
    start = [p.detach().clone() for p in policy.parameters()]
    seen = []

    class Recording(divergence_weighted_grpo_trainer()):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            with torch.no_grad(), self.accelerator.autocast():  # the weighting from scratch, on TRL's batch
                pol, ref = completion_logits(self.model, out), completion_logits(self.reference, out)
            moved = any(not torch.equal(p, s) for p, s in zip(self.model.parameters(), start))
            seen.append((out["advantages"].clone(), pol, ref, out["completion_mask"].clone(), moved))
            return out

    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        learning_rate=1e-2,
        beta=0.0,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    data = Dataset.from_dict({"prompt": ["Q:3a+4=?", "Q:5a-2=?"] * 4})
    trainer = Recording(
        model=policy,
        reward_funcs=lambda completions, **kw: [float(len(c)) for c in completions],
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        reference=base,
        weighting="topq",
        q=0.5,
    )
    trainer.train()
    assert len(seen) == 2
    for adv, _pol, _ref, mask, _moved in seen:
        assert adv.shape == mask.shape  # per token
        assert (adv[mask == 0] == 0).all()
    # the first batch is generated before any update: the policy is the reference, plain GRPO advantages
    first, pol, ref, mask, moved = seen[0]
    assert not moved and torch.equal(pol, ref)
    per_response = first.sum(1) / mask.sum(1).clamp(min=1)
    assert torch.allclose(first, per_response[:, None] * mask)
    # the second comes after one update: the weighting is the library function's, and it moved credit
    second, pol, ref, mask, moved = seen[1]
    assert moved
    plain = second.sum(1) / mask.sum(1).clamp(min=1)  # topq is mean-preserving over the response
    expected = weighted_advantages(pol, ref, plain, mask, mode="topq", q=0.5)
    assert torch.allclose(second, expected, atol=1e-5)
    assert not torch.allclose(second, plain[:, None] * mask)
