# Input functions, wildcard constraints and the target list: the one place that decides what
# `all` means. Config is validated here, before any job runs.
import json
import math
import os
import re
import shlex
from pathlib import Path

from snakemake.utils import validate

from tokenshift.config import check_config, dataset_sampling, model_source, validate_schema


# one line naming the key; Snakemake's validate() then fills defaults
validate_schema(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
validate(config, "../schemas/config.schema.yaml")
check_config(config)  # relative paths resolve against the working directory, as rule paths do

MODELS = config["models"]
PAIRS = {p["name"]: p for p in config["pairs"]}
TOY_BASE = [m for m, s in MODELS.items() if s.get("toy") == "base"]
TOY_RL = [m for m, s in MODELS.items() if s.get("toy") == "rl"]
FETCHED = [m for m, s in MODELS.items() if model_source(s) in ("path", "hub")]
DATASETS = config["datasets"]
PAIR_DATASETS = [(p, d) for p, spec in PAIRS.items() for d in spec.get("datasets", [])]
TOY_PAIRS = [p for p, d in PAIRS.items() if "toy" in MODELS[d["base"]] and "toy" in MODELS[d["rl"]]]


def _alternatives(names):
    # a pattern that matches nothing when the list is empty, so the rule never applies
    return "|".join(map(re.escape, names)) if names else "(?!x)x"


wildcard_constraints:
    pair=_alternatives(PAIRS),
    model=_alternatives(MODELS),
    dataset=_alternatives(DATASETS),
    role="base|rl",
    source="base|rl",
    direction="forward|reverse",
    policy="js|entropy|argmax|random",
    budget=r"\d+|all",


def model_manifest(name):
    return f"resources/models/{name}.json"


def toy_settings_json():
    return shlex.quote(json.dumps(config.get("toy", {}), sort_keys=True))


def fetch_args(wildcards):
    spec = MODELS[wildcards.model]
    if "path" in spec:
        args = ["--path", str(Path(spec["path"]).resolve())]
    else:
        args = ["--hub", spec["hub"], "--revision", spec["revision"]]
    if spec.get("trust_remote_code"):
        args.append("--trust-remote-code")
    return " ".join(shlex.quote(a) for a in args)


def toy_rl_init(wildcards):
    return model_manifest(MODELS[wildcards.model]["init"])


def pair_models(wildcards):
    pair = PAIRS[wildcards.pair]
    return {"base": model_manifest(pair["base"]), "rl": model_manifest(pair["rl"])}


def role_manifest(wildcards):
    return model_manifest(PAIRS[wildcards.pair][wildcards.role])


def sampling_args(wildcards):
    s = dataset_sampling(config, wildcards.dataset)
    return (f"--n {s['n']} --temperature {s['temperature']} --top-p {s['top_p']} "
            f"--max-new-tokens {s['max_new_tokens']} --seed {s['seed']}")


def rollout_args(wildcards):
    r = config["rollout"]
    return f"--backend {r['backend']} --batch-size {r['batch_size']} --problems-per-shard {r['problems_per_shard']}"


CROSS = config["crosssample"]


def crosssample_budgets(dataset):
    """Budget labels of a dataset's targets: fractions become tokens of its max_new_tokens."""
    max_new = dataset_sampling(config, dataset)["max_new_tokens"]
    labels = []
    for b in CROSS["budgets"]:
        label = b if b == "all" else str(b if isinstance(b, int) else math.ceil(b * max_new))
        if label not in labels:
            labels.append(label)
    return labels


def crosssample_runs(wildcards):
    # budget 0 is the same run under every policy (tested): run it for the first policy only
    return [f"results/{wildcards.pair}/{wildcards.dataset}/crosssample/{d}/{p}/budget-{b}.parquet"
            for d in CROSS["directions"] for i, p in enumerate(CROSS["policies"])
            for b in crosssample_budgets(wildcards.dataset) if b != "0" or i == 0]


def _threshold_spec(policy):
    # the schema fills every policy's default threshold; argmax has none
    return {} if policy == "argmax" else CROSS["thresholds"][policy]


def crosssample_scores(wildcards):
    """A percentile of js or entropy is read off the generating model's own scored rollouts."""
    if wildcards.policy in ("js", "entropy") and "percentile" in _threshold_spec(wildcards.policy):
        source = "base" if wildcards.direction == "forward" else "rl"
        return f"results/{wildcards.pair}/{wildcards.dataset}/scores/{source}.parquet"
    return []


def crosssample_threshold_args(wildcards, input):
    spec = _threshold_spec(wildcards.policy)
    if "threshold" in spec:
        return f"--threshold {spec['threshold']}"
    if "percentile" in spec:
        scores = f" --scores {input.scores}" if input.scores else ""
        return f"--percentile {spec['percentile']}{scores}"
    return ""


def crosssample_run_args(wildcards):
    c = CROSS
    return (f"--n-problems {c['n_problems']} --batch-size {c['batch_size']} "
            f"--problems-per-shard {c['problems_per_shard']} --device-base {c['device_base']} --device-rl {c['device_rl']}")


def crosssample_gpus(wildcards):
    # `auto` takes a GPU where the job lands on one, as the hf rollout backend does, but asks for none
    return int(any(CROSS[k].startswith("cuda") for k in ("device_base", "device_rl")))


def get_final_output():
    targets = [model_manifest(m) for m in MODELS]
    targets += [f"resources/pairs/{p}.json" for p in PAIRS]
    targets += [f"results/{p}/toy_check/accuracy.parquet" for p in TOY_PAIRS]
    targets += [f"results/{p}/{d}/accuracy.parquet" for p, d in PAIR_DATASETS]
    targets += [f"results/{p}/{d}/divergence/sparsity.parquet" for p, d in PAIR_DATASETS]
    targets += [f"results/{p}/{d}/crosssample.parquet" for p, d in PAIR_DATASETS]
    targets += ["results/report.html", "results/summary.json"] if PAIR_DATASETS else []
    return targets
