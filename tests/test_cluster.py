"""What a job asks a scheduler for, from its models and the config (tokenshift.cluster); the SLURM profile
(tokenshift.slurm_profile)."""

from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

from tokenshift.cluster import job_resources, manifest_needed, model_gpus
from tokenshift.config import SCHEMA_PATH
from tokenshift.settings import ClusterConfig
from tokenshift.slurm_profile import (
    GPU_MODEL,
    ProfileError,
    SiteSettings,
    min_job_age,
    render_profile,
    status_command,
)

CLUSTER = {"gpu_memory_gb": 80, "gpu_model": None, "runtime": ClusterConfig().runtime}
GB = 2**30


def manifest(gb: float) -> dict:
    return {
        "weights_bytes": {
            "model-00001.safetensors": int(gb * GB / 2),
            "model-00002.safetensors": int(gb * GB / 2),
        }
    }


def test_a_model_needs_the_gpus_its_weights_fill_unless_its_entry_says():
    assert model_gpus({"toy": "base"}, manifest(0.002), 80) == 0  # the toy models run on CPUs
    assert model_gpus({"hub": "q/7b"}, manifest(15), 80) == 1  # 7B in bf16
    assert model_gpus({"hub": "q/32b"}, manifest(64), 80) == 1  # 64 x 1.25 = 80: just fits
    assert model_gpus({"hub": "q/32b"}, manifest(66), 80) == 2
    assert model_gpus({"hub": "q/72b"}, manifest(145), 40) == 5
    assert model_gpus({"hub": "q/7b", "resources": {"gpus": 0}}, manifest(15), 80) == 0
    assert model_gpus({"toy": "rl", "resources": {"gpus": 1}}, manifest(0.002), 80) == 1


def test_what_the_config_says_needs_no_manifest_so_a_dry_run_shows_it():
    hub = {"hub": "Qwen/Qwen2.5-32B", "revision": "main"}
    assert manifest_needed("gpu", hub) and manifest_needed("mem_mb", hub) and not manifest_needed("runtime", hub)
    given = {**hub, "resources": {"gpus": 2}}
    assert not manifest_needed("gpu", given) and not manifest_needed("gpu_model", given)
    assert manifest_needed("mem_mb", given)  # host memory follows the weights' size unless given too
    assert not manifest_needed("mem_mb", {**hub, "resources": {"gpus": 2, "mem_mb": 200_000}})
    assert not manifest_needed("gpu", {"toy": "base"})
    # and with the config's GPUs and no manifest yet, the job's GPUs are known
    assert job_resources("crosssample", [(given, None), (given, None)], CLUSTER)["gpu"] == 4
    # a model the stage's config puts on the CPU asks for no GPU, whatever its size
    assert job_resources("crosssample", [(given, None, "cpu"), (given, None, "auto")], CLUSTER)["gpu"] == 2
    assert job_resources("score", [(given, None, "cpu"), (given, None, "cpu")], CLUSTER)["gpu"] == 0


def test_a_model_the_config_puts_on_a_named_gpu_makes_its_job_ask_for_that_gpu():
    # a toy model asks for no GPU; `cuda:1` on the cluster would then reach a node without one (a job's GPUs
    # are numbered from 0, so cuda:1 needs two)
    toy = ({"toy": "base"}, None)
    assert job_resources("score", [(*toy, "cuda:1"), (*toy, "cpu")], CLUSTER)["gpu"] == 2
    assert job_resources("crosssample", [(*toy, "cuda"), (*toy, "auto")], CLUSTER)["gpu"] == 1
    assert job_resources("score", [(*toy, "cuda:0,3"), (*toy, "cuda:1")], CLUSTER)["gpu"] == 4
    assert job_resources("score", [(*toy, "auto"), (*toy, "auto")], CLUSTER)["gpu"] == 0
    # the models' own GPUs count where they are more; a named GPU is no reason for one on a CPU stage
    big = ({"hub": "q/7b", "resources": {"gpus": 2}}, None)
    assert job_resources("score", [(*big, "cuda:0"), (*big, "cuda:1")], CLUSTER)["gpu"] == 4
    assert job_resources("divergence", [(*toy, "cuda:1")], CLUSTER)["gpu"] == 0


def test_a_job_asks_for_its_models_gpus_memory_and_a_runtime_that_grows_with_retries():
    base, rl = ({"hub": "q/32b"}, manifest(64)), ({"path": "/ckpt"}, manifest(66))
    rollout = job_resources("rollout", [rl], CLUSTER)
    assert rollout["gpu"] == 2 and rollout["runtime"] == 240 and "gpu_model" not in rollout
    both = job_resources("crosssample", [base, rl], {**CLUSTER, "gpu_model": "h100"}, attempt=2)
    assert both["gpu"] == 3 and both["gpu_model"] == "h100" and both["runtime"] == 480
    assert both["mem_mb"] == 2000 + 130 * 1024  # the weights pass through host memory once, on GPUs
    cpu = job_resources("rollout", [({"toy": "base"}, manifest(1))], CLUSTER)
    assert cpu["gpu"] == 0 and cpu["mem_mb"] == 2000 + 2 * 1024  # float32 on the CPU: twice the bf16 weights
    assert (
        job_resources("rollout", [({"hub": "q/7b", "resources": {"mem_mb": 123}}, manifest(15))], CLUSTER)["mem_mb"]
        == 123
    )
    table = job_resources("crosssample_table", [], CLUSTER)
    assert table["gpu"] == 0 and table["runtime"] == CLUSTER["runtime"]["default"]


def test_the_profile_names_the_site_partitions_and_says_what_a_site_without_accounting_needs():
    files = render_profile(
        SiteSettings(
            partition="short", gpu_partition="a100", account="lab", gpu_model="a100", gpus_per_node=4, accounting=False
        )
    )
    config, parts = yaml.safe_load(files["config.yaml"]), yaml.safe_load(files["partitions.yaml"])
    assert config["executor"] == "slurm" and config["slurm-status-command"] == "squeue"
    assert config["default-resources"]["slurm_account"] == "lab" and "slurm-no-account" not in config
    assert config["slurm-partition-config"] == "partitions.yaml" and config["retries"] >= 1
    assert "software-deployment-method" not in config  # the submitting environment, unless --conda
    assert parts["partitions"] == {"short": {"max_gpu": 0}, "a100": {"max_gpu": 4, "available_gpu_models": ["a100"]}}
    conda = yaml.safe_load(render_profile(SiteSettings(partition="p", gpu_partition="g", conda=True))["config.yaml"])
    assert conda["software-deployment-method"] == "conda" and conda["slurm-no-account"] is True
    assert conda["slurm-status-command"] == "sacct"  # where finished jobs leave squeue soon: the accounting database
    long_lived = render_profile(SiteSettings(partition="p", gpu_partition="g"), job_age=600)["config.yaml"]
    assert yaml.safe_load(long_lived)["slurm-status-command"] == "squeue"  # it names a job cancelled by hand


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"account": "lab\nslurm_extra: --wrap=touch"}, "--account 'lab\\nslurm_extra"),
        ({"partition": "cpu\n  evil:\n    max_gpu: 64"}, "--partition 'cpu\\n"),
        ({"gpu_partition": "gpu: {max_gpu: 99}"}, "--gpu-partition 'gpu: {max_gpu: 99}'"),
        ({"gpu_partition": "-g"}, "--gpu-partition '-g'"),
        ({"account": ""}, "--account ''"),
        # snakemake-executor-plugin-slurm refuses it in --gpus=<model>:<n>: every GPU job would fail
        ({"gpu_model": "a100-80gb"}, "--gpu-model 'a100-80gb': expected letters, digits, '_' and '.' only"),
        ({"gpu_model": "a100]\nslurm_extra: x"}, "--gpu-model"),
        ({"jobs": -5}, "--jobs -5: expected a whole number of at least 1"),
        ({"status_delay": 1.5}, "--status-delay 1.5"),
        ({"status_command": "sacct; rm"}, "--status-command"),
        ({"qos": "high\nslurm-requeue: true"}, "--qos 'high\\nslurm-requeue"),
        ({"reservation": "-x"}, "--reservation '-x'"),
    ],
)
def test_the_profile_refuses_a_value_it_cannot_hold_naming_its_option(values, needle):
    # issue 24 (F1): values were formatted into the YAML as text, so a newline added keys of its own
    site = SiteSettings(**{"partition": "cpu", "gpu_partition": "gpu", **values})
    with pytest.raises(ProfileError) as e:
        render_profile(site)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_profile_holds_each_value_as_given():
    """Names YAML would read as something else (a boolean, a number, null) come back as the strings given."""
    site = SiteSettings(partition="true", gpu_partition="1e3", account="null", gpu_model="1.5")
    files = render_profile(site)
    config, parts = yaml.safe_load(files["config.yaml"]), yaml.safe_load(files["partitions.yaml"])
    assert config["default-resources"]["slurm_account"] == "null"
    assert parts["partitions"] == {"true": {"max_gpu": 0}, "1e3": {"max_gpu": 8, "available_gpu_models": ["1.5"]}}
    key, _, value = config["config"][0].partition("=")
    assert key == "cluster" and yaml.safe_load(value) == {"gpu_model": "1.5"}
    # the GPU models the profile takes are those the workflow's config check takes from it
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert schema["properties"]["cluster"]["properties"]["gpu_model"]["pattern"] == f"^{GPU_MODEL.pattern}$"


def test_an_unanswered_scontrol_is_given_up_on_and_said_so(tmp_path, monkeypatch, caplog):
    """A controller that does not answer costs the profile installer its short timeout, not scontrol's
    own retries; it says so, and the status command is chosen without MinJobAge (sacct)."""
    hung = tmp_path / "bin"
    hung.mkdir()
    (hung / "scontrol").write_text("#!/bin/sh\nsleep 60\n")
    (hung / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{hung}:{os.environ['PATH']}")
    with caplog.at_level("WARNING"):
        assert min_job_age(timeout=0.5) is None
    assert "no answer within 0.5 s" in caplog.text
    assert status_command(SiteSettings(partition="p", gpu_partition="g"), None)[0] == "sacct"


def test_min_job_age_is_read_from_the_controllers_answer(tmp_path, monkeypatch):
    answering = tmp_path / "bin"
    answering.mkdir()
    (answering / "scontrol").write_text(
        "#!/bin/sh\necho 'MaxJobCount             = 10000'\necho 'MinJobAge               = 300 sec'\n"
    )
    (answering / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{answering}:{os.environ['PATH']}")
    assert min_job_age() == 300


def test_the_profile_takes_a_sites_qos_reservation_requeue_gres_and_efficiency_report():
    """Issue 28.5: the plugin's own settings, each as its flag names it; --gres reaches the workflow's config,
    whose GPU jobs then ask for --gres=gpu:<model>:<n> (a dry run on the plugin: test_workflow)."""
    site = SiteSettings(
        partition="p", gpu_partition="g", gpu_model="h100", qos="high", reservation="maint", requeue=True, gres=True
    )
    config = yaml.safe_load(render_profile(dataclasses.replace(site, efficiency_report=True))["config.yaml"])
    asked = {"slurm-qos": "high", "slurm-reservation": "maint", "slurm-requeue": True, "slurm-efficiency-report": True}
    assert {k: config.get(k) for k in asked} == asked
    key, _, value = config["config"][0].partition("=")
    assert key == "cluster" and yaml.safe_load(value) == {"gpu_model": "h100", "gpu_request": "gres"}
    plain = yaml.safe_load(render_profile(SiteSettings(partition="p", gpu_partition="g"))["config.yaml"])
    assert not {"slurm-qos", "slurm-reservation", "slurm-requeue", "slurm-efficiency-report", "config"} & set(plain)
    gres = {**CLUSTER, "gpu_request": "gres"}
    rl = ({"path": "/ckpt"}, manifest(66))
    assert job_resources("rollout", [rl], {**gres, "gpu_model": "h100"}) | {"runtime": 0, "mem_mb": 0} == {
        "gpu": 0,
        "gres": "gpu:h100:2",
        "runtime": 0,
        "mem_mb": 0,
    }
    assert job_resources("rollout", [rl], gres)["gres"] == "gpu:2"
    assert "gres" not in job_resources("rollout", [({"toy": "base"}, manifest(1))], gres)  # a CPU job asks for none
