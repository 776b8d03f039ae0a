"""The memory planner on the real shapes of Qwen2.5 models (their config.json keys, no weights)."""

from __future__ import annotations

import json

import pytest

from tokenshift.memory import (
    GIB,
    DoesNotFit,
    ModelShape,
    crosssample_rows,
    decode_rows,
    gpu_ids,
    gpu_sets,
    halving_on_oom,
    is_oom,
    max_memory,
    plan_devices,
    scoring_tokens,
)

# the keys that fix memory, as in each model's config.json on the hub (Qwen/Qwen2.5-*)
QWEN25 = {
    "1.5B": {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "7B": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "32B": {
        "model_type": "qwen2",
        "hidden_size": 5120,
        "intermediate_size": 27648,
        "num_hidden_layers": 64,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
}
H100 = 80 * 10**9
AIME_ROW = 4096 + 256  # max_new_tokens and a prompt


@pytest.fixture(params=sorted(QWEN25))
def shape(request, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25[request.param]))
    return request.param, ModelShape.from_checkpoint(tmp_path)


def test_parameter_counts_and_kv_bytes_are_the_published_ones(shape):
    name, s = shape
    # the model cards' parameter counts (1.54B, 7.61B; 32.8B in the safetensors index)
    want = {"1.5B": 1.54e9, "7B": 7.61e9, "32B": 32.76e9}[name]
    assert s.parameters == pytest.approx(want, rel=0.005)
    # K and V, every layer, bf16: 28 x 2 x 128 x 2 x 2 bytes for 1.5B; 256 KiB per token for 32B
    assert s.kv_bytes_per_token() == {"1.5B": 28 * 1024, "7B": 56 * 1024, "32B": 256 * 1024}[name]


def test_the_32b_model_needs_two_gpus_and_the_small_ones_one(shape):
    name, s = shape
    assert s.weight_bytes() / GIB == pytest.approx({"1.5B": 2.9, "7B": 14.2, "32B": 61.0}[name], abs=0.1)
    assert s.gpus_needed(H100) == (2 if name == "32B" else 1)


def test_decoding_rows_fill_what_the_weights_leave(shape):
    name, s = shape
    rows = decode_rows(s, gpu_bytes=H100, tokens_per_row=AIME_ROW)
    used = s.weight_bytes() + rows * (s.kv_bytes_per_token() * AIME_ROW + 6 * 4 * s.vocab)
    assert used <= 0.9 * H100 < used + s.kv_bytes_per_token() * AIME_ROW + 6 * 4 * s.vocab  # full, not over
    # twice the GPUs: more than twice the rows (the weights are paid once); a longer row: fewer rows
    assert decode_rows(s, gpu_bytes=H100, gpus=2, tokens_per_row=AIME_ROW) > 2 * rows
    assert decode_rows(s, gpu_bytes=H100, tokens_per_row=2 * AIME_ROW) < rows
    tokens = scoring_tokens(s, gpu_bytes=H100)
    assert tokens > {"1.5B": 100_000, "7B": 100_000, "32B": 5_000}[name]


def test_a_model_too_large_for_its_gpus_is_refused_naming_what_fits():
    s = ModelShape.from_config(QWEN25["32B"])
    with pytest.raises(DoesNotFit, match=r"61.0 GiB of weights do not fit 1 GPU\(s\) of 37 GiB .*at least 3"):
        decode_rows(s, gpu_bytes=40 * 10**9, tokens_per_row=AIME_ROW, what="Qwen2.5-32B")
    # 32B base and 32B RL, two H100s each: both fit, and the pair runs at the smaller model's rows
    rows = crosssample_rows(s, s, gpu_bytes=H100, gpus_base=2, gpus_rl=2, tokens_per_row=AIME_ROW)
    assert rows == decode_rows(s, gpu_bytes=H100, gpus=2, tokens_per_row=AIME_ROW)
    small = ModelShape.from_config(QWEN25["7B"])
    assert crosssample_rows(s, small, gpu_bytes=H100, gpus_base=2, gpus_rl=1, tokens_per_row=AIME_ROW) == min(
        rows, decode_rows(small, gpu_bytes=H100, tokens_per_row=AIME_ROW)
    )


def test_a_pair_is_placed_on_disjoint_gpus_and_weights_leave_room_for_the_cache():
    assert gpu_sets(2, 2, range(4)) == ([0, 1], [2, 3])
    assert gpu_sets(1, 2, [4, 5, 6]) == ([4], [5, 6])
    assert gpu_sets(1, 1, [0]) == ([0], [0])  # one GPU: the two share it
    with pytest.raises(DoesNotFit, match="needs 2 \\+ 2 GPUs"):
        gpu_sets(2, 2, [0])
    mm = max_memory([2, 3], H100, share=0.8)
    assert mm == {2: int(H100 * 0.9 * 0.8), 3: int(H100 * 0.9 * 0.8), "cpu": 0}


def fits_24(tried: list[int]):
    """A run that records the batch sizes it is tried at and runs out of memory above 24."""

    def run(batch):
        tried.append(batch)
        if batch > 24:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch

    return run


def test_a_batch_that_runs_out_of_memory_is_halved_and_goes_on():
    tried = []
    run = fits_24(tried)
    assert halving_on_oom(run, 100, is_oom=is_oom) == 12 and tried == [100, 50, 25, 12]
    with pytest.raises(ValueError):  # any other error is not retried
        halving_on_oom(lambda b: (_ for _ in ()).throw(ValueError("bad")), 8, is_oom=is_oom)


def test_a_remembered_batch_size_starts_the_next_call_where_the_last_one_worked():
    tried = []
    run = fits_24(tried)
    key = "test-remembered"
    assert halving_on_oom(run, 100, is_oom=is_oom, remember=key) == 12 and tried == [100, 50, 25, 12]
    tried.clear()
    assert halving_on_oom(run, 100, is_oom=is_oom, remember=key) == 12 and tried == [12]  # no failed tries again
    tried.clear()
    assert halving_on_oom(run, 7, is_oom=is_oom, remember=key) == 7 and tried == [7]  # a smaller batch as it is
    tried.clear()
    assert halving_on_oom(run, 100, is_oom=is_oom, remember="another") == 12 and tried == [100, 50, 25, 12]


def test_a_job_places_its_models_on_the_gpus_it_was_given():
    big, small = ModelShape.from_config(QWEN25["32B"]), ModelShape.from_config(QWEN25["7B"])
    auto = ["auto", "auto"]
    # the paper's 32B pair: a job of four GPUs, two per model, disjoint
    assert plan_devices([big, big], auto, visible=4, gpu_bytes=H100) == ["cuda:0,1", "cuda:2,3"]
    assert plan_devices([small, small], auto, visible=2, gpu_bytes=H100) == ["cuda:0", "cuda:1"]
    assert plan_devices([small, small], auto, visible=1, gpu_bytes=H100) == ["cuda:0", "cuda:0"]  # shared
    assert plan_devices([big, big], auto, visible=2, gpu_bytes=H100) == ["cuda:0,1", "cuda:0,1"]  # too few: shared
    assert plan_devices([big], ["auto"], visible=8, gpu_bytes=H100) == ["cuda:0,1"]  # a rollout job
    assert plan_devices([None, small], auto, visible=0, gpu_bytes=H100) == ["cpu", "cpu"]
    assert plan_devices([small, small], ["cuda:1", "auto"], visible=2, gpu_bytes=H100) == ["cuda:1", "cuda:0"]
    assert [gpu_ids(d) for d in ("cuda:2,3", "cuda", "cuda:1", "cpu")] == [[2, 3], [0], [1], []]


def test_auto_batches_are_planned_from_free_gpu_memory_and_are_the_old_fixed_values_on_cpu():
    from tokenshift.memory import plan_batch

    s = {name: ModelShape.from_config(cfg) for name, cfg in QWEN25.items()}
    one = dict(device_kind="cuda", free_bytes=[H100], gpus=[1])
    # on CPU, auto is what the settings were before they could be planned; a number is always itself
    for stage, value in (("rollout", 256), ("crosssample", 256), ("scoring", 16384)):
        assert (
            plan_batch(stage, "auto", device_kind="cpu", free_bytes=[0, 0], gpus=[0, 0], shapes=[None, None]) == value
        )
        assert plan_batch(stage, 7, **one, shapes=[s["7B"]], tokens_per_row=AIME_ROW) == 7
    # rollouts: one model's decode rows in the free memory of its GPUs
    for name in ("1.5B", "7B"):
        got = plan_batch("rollout", "auto", **one, shapes=[s[name]], tokens_per_row=AIME_ROW)
        assert got == decode_rows(s[name], gpu_bytes=H100, tokens_per_row=AIME_ROW)
    big = plan_batch(
        "rollout", "auto", device_kind="cuda", free_bytes=[H100], gpus=[2], shapes=[s["32B"]], tokens_per_row=AIME_ROW
    )
    assert big == decode_rows(s["32B"], gpu_bytes=H100, gpus=2, tokens_per_row=AIME_ROW)
    # less free memory (another process on the GPU), fewer rows
    assert plan_batch(
        "rollout",
        "auto",
        device_kind="cuda",
        free_bytes=[H100 // 2],
        gpus=[1],
        shapes=[s["7B"]],
        tokens_per_row=AIME_ROW,
    ) < plan_batch("rollout", "auto", **one, shapes=[s["7B"]], tokens_per_row=AIME_ROW)
    # cross-sampling: the 32B pair on two H100s each runs at the smaller model's rows (crosssample_rows)
    pair32 = dict(device_kind="cuda", free_bytes=[H100, H100], gpus=[2, 2], shapes=[s["32B"], s["32B"]])
    rows = plan_batch("crosssample", "auto", **pair32, tokens_per_row=AIME_ROW)
    assert rows == crosssample_rows(s["32B"], s["32B"], gpu_bytes=H100, gpus_base=2, gpus_rl=2, tokens_per_row=AIME_ROW)
    # the after_switch rule's longer rows (up to 16384 tokens) leave room for fewer of them
    assert plan_batch("crosssample", "auto", **pair32, tokens_per_row=16384 + 2048) < rows
    # a 7B pair sharing one H100: each model in half of it, exactly the two models' weights and caches side by side
    shared = plan_batch(
        "crosssample",
        "auto",
        device_kind="cuda",
        free_bytes=[H100, H100],
        gpus=[1, 1],
        shapes=[s["7B"], s["7B"]],
        tokens_per_row=AIME_ROW,
        shared=True,
    )
    per_row = s["7B"].kv_bytes_per_token() * AIME_ROW + 6 * 4 * s["7B"].vocab
    assert shared == int((0.9 * H100 - 2 * s["7B"].weight_bytes()) / 2 // per_row)
    # scoring: the smaller of the two models' token budgets
    tokens = plan_batch(
        "scoring", "auto", device_kind="cuda", free_bytes=[H100, H100], gpus=[1, 2], shapes=[s["7B"], s["32B"]]
    )
    assert tokens == min(scoring_tokens(s["7B"], gpu_bytes=H100), scoring_tokens(s["32B"], gpu_bytes=H100, gpus=2))
    # an architecture whose config the planner cannot read: the CPU value, not a guess
    assert (
        plan_batch("scoring", "auto", device_kind="cuda", free_bytes=[H100, H100], gpus=[1, 1], shapes=[s["7B"], None])
        == 16384
    )
    # weights that do not fit the GPUs given are refused, naming the model
    with pytest.raises(DoesNotFit, match=r"RL model: 61.0 GiB of weights do not fit 1 GPU\(s\) of 37 GiB"):
        plan_batch(
            "crosssample",
            "auto",
            device_kind="cuda",
            free_bytes=[H100, 40 * 10**9],
            gpus=[1, 1],
            shapes=[s["7B"], s["32B"]],
            tokens_per_row=AIME_ROW,
        )


def test_a_job_logs_the_batch_it_runs_at(make_checkpoint, caplog):
    import logging

    from tokenshift.loading import job_batch

    ckpt = make_checkpoint("m")
    with caplog.at_level(logging.INFO, logger="tokenshift.loading"):
        assert job_batch("rollout", "auto", (ckpt,), ("cpu",), tokens_per_row=100) == 256
        assert job_batch("scoring", 5000, (ckpt, ckpt), ("cpu", "cpu")) == 5000
    assert "rollout batch: 256 rows (auto on CPU)" in caplog.text
    assert "scoring batch: 5000 padded tokens per pass (set in the config)" in caplog.text


def test_a_job_loads_its_models_in_order_on_their_devices_with_the_batch_planned_for_them(make_checkpoint, caplog):
    import logging

    import torch

    from tokenshift.loading import load_job_models

    a, b = make_checkpoint("a", seed=1), make_checkpoint("b", seed=2)
    with caplog.at_level(logging.INFO, logger="tokenshift.loading"):
        models, batch = load_job_models(
            "crosssample", "auto", (a, b), {"device_base": "cpu", "device_rl": "auto"}, tokens_per_row=100
        )
    assert batch == 256 and "crosssample batch: 256 rows (auto on CPU)" in caplog.text
    assert [m.device.type for m in models] == ["cpu", "cpu"] and not any(m.training for m in models)
    embedding = lambda m: m.get_input_embeddings().weight
    assert not torch.equal(embedding(models[0]), embedding(models[1]))
    (again,), _ = load_job_models("rollout", 8, (a,), {"device": "cpu"})
    assert torch.equal(embedding(again), embedding(models[0]))  # a's weights first, as asked


@pytest.mark.parametrize("tied", [False, True])
def test_the_sizes_planned_from_config_json_are_those_of_the_real_model_and_its_cache(tmp_path, toy_tokenizer, tied):
    """What the planner reads off ``config.json`` against what a real checkpoint holds once loaded:
    its weights' bytes, and the bytes of the KV cache a forward pass builds for rows of tokens."""
    import torch
    from conftest import save_checkpoint

    from tokenshift.loading import load_causal_lm

    size = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    ckpt = save_checkpoint(tmp_path / "m", toy_tokenizer, tie_word_embeddings=tied, **size)
    model = load_causal_lm(ckpt, "cpu")  # float32 on the CPU: 4 bytes a number
    shape = ModelShape.from_checkpoint(ckpt)
    assert shape.weight_bytes(4) == sum(p.numel() * p.element_size() for p in model.parameters())
    rows, tokens = 3, 17
    with torch.no_grad():
        cache = model(input_ids=torch.randint(0, len(toy_tokenizer), (rows, tokens)), use_cache=True).past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert held == shape.kv_bytes_per_token(4) * rows * tokens
