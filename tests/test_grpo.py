"""GRPO's pieces against hand computations: group normalisation, the batch's length masking, the
clipped objective and the k3 KL term (``tokenshift.train``; ``grpo`` calls exactly these)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import entropy

from tokenshift.generation import Sample
from tokenshift.loading import load_causal_lm
from tokenshift.train import group_advantages, grpo_loss, rollout_batch, token_logprobs


def test_group_advantages_normalise_each_group_by_its_own_mean_and_population_std():
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0])
    adv = group_advantages(rewards, 4)
    # group 1: mean 1/4, std sqrt(1/4 * 3/4) = sqrt(3)/4; group 2: all equal, no signal; group 3: mean 1/2, std 1/2
    s3 = math.sqrt(3)
    expected = [s3, -1 / s3, -1 / s3, -1 / s3, 0, 0, 0, 0, 1, 1, -1, -1]
    assert adv.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_a_response_cut_by_the_length_limit_is_not_trained_on_an_eos(make_checkpoint):
    """Both rows are the same prompt and response; only the finished one learns to stop. On a real
    model: the token after the cut response does not reach the loss, the finished one's EOS does."""
    eos = 0
    prompts = [[7, 8], [7, 8]]
    samples = [Sample([11, 12, 13], "stop"), Sample([11, 12, 13], "length")]
    ids, attn, mask = rollout_batch(prompts, samples, pad_id=eos, eos_id=eos)
    assert ids.tolist() == [[7, 8, 11, 12, 13, eos]] * 2
    # mask[:, t] trains the prediction of ids[:, t + 1]: the three response tokens, and EOS where it was emitted
    assert mask.tolist() == [[0, 1, 1, 1, 1], [0, 1, 1, 1, 0]]
    assert attn.tolist() == [[1] * 6, [1] * 5 + [0]]

    model = load_causal_lm(make_checkpoint("policy"), "cpu")
    adv = torch.tensor([[1.0], [1.0]])

    with torch.no_grad():
        old_logp = token_logprobs(model, ids, attn)

    def loss(ids):
        with torch.no_grad():
            return grpo_loss(token_logprobs(model, ids, attn), old_logp, adv, mask, clip_eps=0.2).item()

    for row, trained in ((0, True), (1, False)):
        other = ids.clone()
        other[row, -1] = 42  # another token where the response ended
        assert (loss(other) != loss(ids)) == trained, row


def test_the_clip_stops_the_gradient_only_in_the_clipped_direction():
    """Old log-probs 0, so the ratio is exp(logp): with eps = 0.2, a positive advantage gets no push
    above 1.2 and a negative one none below 0.8; everywhere else the gradient is -ratio * A per token."""
    ratios = torch.tensor([[0.5, 0.9, 1.1, 1.5], [0.5, 0.9, 1.1, 1.5]])
    logp = ratios.log().requires_grad_()
    adv = torch.tensor([[1.0], [-1.0]])
    loss = grpo_loss(logp, torch.zeros_like(logp), adv, torch.ones_like(logp), clip_eps=0.2)
    loss.backward()
    n = ratios.numel()
    assert logp.grad.tolist()[0] == pytest.approx([-0.5 / n, -0.9 / n, -1.1 / n, 0.0])
    assert logp.grad.tolist()[1] == pytest.approx([0.0, 0.9 / n, 1.1 / n, 1.5 / n])
    # the value: -min(r A, clip(r) A) per token, mean over the tokens
    assert loss.item() == pytest.approx((-(0.5 + 0.9 + 1.1 + 1.2) + (0.8 + 0.9 + 1.1 + 1.5)) / n)


def test_the_k3_term_is_an_unbiased_kl_estimate_with_its_own_gradient():
    """Weighting every token of a vocabulary by the policy's probability of it gives the k3 term's
    expectation under the policy, which is KL(policy || reference) exactly (scipy); its gradient
    per token is kl_coef * (1 - p_ref / p), and advantage 0 leaves the policy term out."""
    gen = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(1, 9, generator=gen), dim=-1).requires_grad_()
    ref_logp = torch.log_softmax(torch.randn(1, 9, generator=gen), dim=-1)
    p = logp.detach().exp()
    kl_coef = 0.3
    loss = grpo_loss(logp, logp.detach(), torch.zeros(1, 1), p, clip_eps=0.2, ref_logp=ref_logp, kl_coef=kl_coef)
    assert loss.item() == pytest.approx(kl_coef * entropy(p[0].numpy(), ref_logp.exp()[0].numpy()), rel=1e-5)
    loss.backward()
    expected = kl_coef * (1 - (ref_logp - logp.detach()).exp()) * p / p.sum()
    torch.testing.assert_close(logp.grad, expected)
    # kl_coef 0 (the default) leaves the reference out entirely
    assert grpo_loss(logp, logp.detach(), torch.zeros(1, 1), p, clip_eps=0.2, ref_logp=ref_logp).item() == 0


def test_the_lowprob_weighting_trains_without_a_reference_and_moves_the_policy(make_checkpoint):
    from tokenshift.settings import SamplingConfig
    from tokenshift.train import GRPOConfig, PromptItem, grpo

    model = load_causal_lm(make_checkpoint("policy"), "cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = [PromptItem([5, 6, 7], "1"), PromptItem([8, 9], "2")]

    def reward(responses, golds):  # reward short responses, so groups differ
        return [float(len(r) < 4) for r in responses]

    cfg = GRPOConfig(
        steps=1,
        prompts_per_step=2,
        group_size=4,
        advantage="lowprob",
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=8),
    )
    history = grpo(model, prompts, reward, cfg, pad_id=0, eos_id=0, progress=False)
    assert len(history) == 1
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="needs a reference"):
        grpo(model, prompts, reward, GRPOConfig(steps=1, advantage="js"), pad_id=0, eos_id=0, progress=False)


def test_a_learning_rate_that_makes_the_weights_infinite_is_one_error_naming_it(make_checkpoint):
    """Seventh hostile pass (K1): toy.grpo_lr 1e30 passed the config and the run died in the next round's
    sampling with torch's "probability tensor contains inf" traceback."""
    from tokenshift.io import InputError
    from tokenshift.settings import SamplingConfig
    from tokenshift.train import GRPOConfig, PromptItem, grpo

    model = load_causal_lm(make_checkpoint("policy"), "cpu")
    prompts = [PromptItem([5, 6, 7], "1"), PromptItem([8, 9], "2")]
    cfg = GRPOConfig(
        steps=3,
        lr=1e30,
        prompts_per_step=2,
        group_size=4,
        advantage="lowprob",
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=8),
    )
    with pytest.raises(InputError, match=r"^GRPO at learning rate 1e\+30: .* no longer finite after step 1; expected"):
        grpo(model, prompts, lambda rs, gs: [float(len(r) < 4) for r in rs], cfg, pad_id=0, eos_id=0, progress=False)


def test_pretraining_at_a_learning_rate_that_makes_the_loss_infinite_is_one_error_naming_it(make_checkpoint):
    """Pretraining's (and SFT's) side of the check above: a loss that is no longer finite stops the build
    at that step, naming the learning rate, rather than training on and saving weights of NaN."""
    from tokenshift.io import InputError
    from tokenshift.train import Example, PretrainConfig, pretrain

    model = load_causal_lm(make_checkpoint("policy"), "cpu")
    examples = [Example([5, 6, 7], [8, 9, 10]), Example([8, 9], [11, 12, 13, 14])]
    cfg = PretrainConfig(steps=20, batch_size=4, lr=1e30, warmup_steps=1)
    with pytest.raises(InputError, match=r"^next-token training \(pretraining or SFT\) at learning rate 1e\+30: "):
        pretrain(model, examples, cfg, pad_id=0, eos_id=0, progress=False)
    # a sane rate trains through the same steps
    model = load_causal_lm(make_checkpoint("sane"), "cpu")
    losses = pretrain(
        model,
        examples,
        PretrainConfig(steps=20, batch_size=4, lr=1e-3, warmup_steps=1),
        pad_id=0,
        eos_id=0,
        progress=False,
    )
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)


def test_sampling_takes_the_largest_seed_a_run_may_have(make_checkpoint):
    """Ninth hostile pass: `advantages run --seed 4294967295` (the schema's largest) died in torch.manual_seed
    (OverflowError): GRPO samples step s with seed * 7919 + s, and each batch reseeds with that * 1,000,003 + b,
    past torch's 2**64. The reseed wraps into torch's range; a seed already in it is itself."""
    from tokenshift.generation import SamplingConfig, sample
    from tokenshift.options import MAX_SEED

    model = load_causal_lm(make_checkpoint("policy"), "cpu")
    cfg = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=3)
    drawn = sample(model, [[1, 2, 3]] * 2, eos_id=0, pad_id=0, sampling=cfg, seed=MAX_SEED * 7919 + 7)
    assert len(drawn) == 2 and all(d.response_ids for d in drawn)
