# Input functions, wildcard constraints and the target list: the one place that decides what
# `all` means. Config is validated here, before any job runs. Settings reach a job only as
# params built from the config (recorded by Snakemake, so a changed setting re-runs its jobs),
# and files only as inputs; each rule also records the code its command runs (param `code`,
# tokenshift.codehash), so an upgrade re-runs the jobs whose code changed. The flags of a stage's
# settings come from its dataclass. A param that reaches a shell line is already shell-quoted
# (shlex.join, shell_args), a list of files is `:q`: a config value such as a revision, a path or
# a template is one argument, whatever it holds, joined to its flag (--revision=-x), so that no
# value is ever read as an option.
import dataclasses
import itertools
import json
import os
import shlex
from pathlib import Path
from types import SimpleNamespace

from snakemake.utils import validate

from tokenshift import layout
from tokenshift.checkpoints import linked_files
from tokenshift.cluster import job_resources, manifest_needed
from tokenshift.codehash import PACKAGE_ENV, running_package, stage_code
from tokenshift.config import (
    SCHEMA_PATH,
    ConfigError,
    advantage_base,
    check_command_paths,
    check_workflow_config,
    dataset_sampling,
    model_source,
    pair_chat,
    recorded_settings,
    toy_check_problems,
)
from tokenshift.datasets import given_settings
from tokenshift.io import InputError, files_fingerprint, path_spelling
from tokenshift.loading import LOADING_KEYS
from tokenshift.options import canonical, flag, section_values, shell_args
from tokenshift.registry import (
    DIRECTIONS,
    DIVERGENCE_FIGURES,
    DIVERGENCE_TABLES,
    GENERATOR,
    INJECTIONS,
    PAIR_FIGURES,
    POLICIES,
    ROLES,
    SCORE_ORDER,
    alternatives,
    report_files,
)
from tokenshift.settings import (
    VLLM_ENGINE_KEYS,
    AccuracyConfig,
    ClusterConfig,
    CrossSampleConfig,
    CrossSampleGrid,
    DatasetSpec,
    DivergenceConfig,
    ExplorerConfig,
    GradingConfig,
    PromptConfig,
    RolloutConfig,
    SamplingConfig,
    ScoringConfig,
)
from tokenshift.toy.config import AdvantageExperimentConfig, ToyBuildConfig, ToyCheckOptions
from tokenshift.toy.task import ToyTaskConfig

# a bad config is one line naming the key, before any job; Snakemake's validate() fills the defaults in.
# Relative paths resolve against the working directory, as rule paths do.
# The error is raised again from here, so Snakemake's summary names this line and none of the library's.
try:
    warnings = check_workflow_config(config, SCHEMA_PATH, validate)
except ConfigError as error:
    raise error.with_traceback(None) from None
for message in warnings:
    logger.warning(message)

# the package this plan's code hashes describe: each job compares its own with it and refuses to run another
# (a rule's conda environment built from another tokenshift, or code edited while the workflow runs)
try:
    os.environ[PACKAGE_ENV] = running_package()
except InputError as error:  # a compiled module in the package: no job could run the code hashed
    raise error.with_traceback(None) from None

MODELS = config["models"]
PAIRS = {p["name"]: p for p in config["pairs"]}
DATASETS = config["datasets"]
TOY_BASE = [m for m, s in MODELS.items() if s.get("toy") == "base"]
TOY_RL = [m for m, s in MODELS.items() if s.get("toy") == "rl"]
TOY_SFT = [m for m, s in MODELS.items() if s.get("toy") == "sft"]
# the toy base and RL builds gate nearly every job: run them first when they are ready (left to
# itself, Snakemake fills two cores with two one-thread jobs before one two-thread build)
TOY_BUILD_PRIORITY = 10
FETCHED = [m for m, s in MODELS.items() if model_source(s) in ("path", "hub")]
TOY_DATASETS = [d for d, s in DATASETS.items() if "toy" in s]
PAIR_DATASETS = [(p, d) for p, spec in PAIRS.items() for d in spec["datasets"]]
CROSSSAMPLED = [p for p, spec in PAIRS.items() if spec.get("crosssample", True)]
TOY_PAIRS = [p for p, d in PAIRS.items() if "toy" in MODELS[d["base"]] and "toy" in MODELS[d["rl"]]]
# the toy pairs whose tuned model is trained by GRPO (with checkpoints along the way)
TOY_RL_PAIRS = [p for p in TOY_PAIRS if PAIRS[p]["rl"] in TOY_RL]
GRID = CrossSampleGrid.from_config(config["crosssample"])
# the cross-sampling keys a job reads follow its length_rule, its injection (gamma under extrapolate only)
# and its engine (batch size and devices: lockstep's; the vLLM engines' settings: regenerate's)
CROSSSAMPLE_STAGES = tuple(config["crosssample"][k] for k in ("length_rule", "injection", "engine"))
ADVANTAGES = AdvantageExperimentConfig.from_mapping(config["advantages"])
# the config sections of stage settings: the fields of each that no result depends on are not recorded
SETTINGS = (
    SamplingConfig,
    GradingConfig,
    RolloutConfig,
    AccuracyConfig,
    ScoringConfig,
    DivergenceConfig,
    CrossSampleConfig,
    ExplorerConfig,
    ClusterConfig,
    ToyBuildConfig,
    AdvantageExperimentConfig,
)
# what results/config.yaml records, as its job takes it (in a canonical order: a changed setting rewrites it, and
# the report; not those no result depends on, a batch size or the cluster's resources, which no job records either)
try:
    RECORDED_SETTINGS = recorded_settings(config, SETTINGS)
except ConfigError as error:
    raise error.with_traceback(None) from None
# the advantage experiment trains from the toy base model (none: no experiment), whatever the order of pairs
ADVANTAGE_BASE = advantage_base(config)


# how many jobs each table of a stage is split over; each job writes one part, {scatteritem} = I-of-N
scattergather:
    rollout=config["rollout"]["jobs"],
    score=config["scoring"]["jobs"],
    crosssample=config["crosssample"]["jobs"],


wildcard_constraints:
    pair=alternatives(PAIRS),
    model=alternatives(MODELS),
    dataset=alternatives(DATASETS),
    role=alternatives(ROLES),
    source=alternatives(ROLES),
    direction=alternatives(DIRECTIONS),
    policy=alternatives(POLICIES),
    budget=r"\d+|all",
    gamma=r"\d+(?:\.\d+)?",
    scatteritem=r"\d+-of-\d+",


# --- paths ---------------------------------------------------------------------------------


# every path is tokenshift.layout's; these name a pair's runs by their wildcards' values


def crosssample_run(pair, dataset, direction, policy, budget, gamma=None):
    """A run of the grid, or (``gamma``) an extrapolation run beside it: ``budget-all.gamma-0.1``."""
    return layout.in_pair(layout.crosssample_run(direction, policy, budget, gamma), pair, dataset)


# --- inputs --------------------------------------------------------------------------------


def model_source_files(wildcards):
    """A local checkpoint's files: overwriting them re-runs the fetch, and all that follows."""
    spec = MODELS[wildcards.model]
    if "path" not in spec:
        return []
    return [str(f) for f in linked_files(Path(spec["path"]), spec.get("trust_remote_code", False))]


def dataset_source_files(wildcards):
    spec = DATASETS[wildcards.dataset]
    return [spec["path"]] if "path" in spec else []


def fingerprint_of(files):
    """A recorded param that any copy over ``files`` changes, however old the mtime it gives them (cp -p,
    rsync -a, tar -x, touch -d): Snakemake's own check compares mtimes only."""
    return lambda wildcards: files_fingerprint(files(wildcards))


def toy_init(wildcards):
    return layout.model_manifest(MODELS[wildcards.model]["init"])


def manifest_of(role):
    """Input function: the manifest of the ``{pair}``'s ``role`` model (``"{role}"``: the job's role)."""
    return lambda wildcards: layout.model_manifest(PAIRS[wildcards.pair][wildcards.role if role == "{role}" else role])


PAIR_MANIFESTS = {role: manifest_of(role) for role in ROLES}
"""Named inputs ``base`` and ``rl``: the manifests of both models of the ``{pair}``; a rule that takes
them records ``pair_roles`` too."""


def pair_roles(wildcards):
    """Which model is which, a recorded param of each job that reads both: Snakemake compares a job's
    inputs as a set of files, so with a pair's ``base`` and ``rl`` swapped in the config, the jobs reading
    both (the pair check, the score-free cross-sampling runs) stayed "up to date"."""
    return " ".join(f"{role}={PAIRS[wildcards.pair][role]}" for role in ROLES)


def pair_chat_flag(wildcards):
    """``--chat-template`` where a dataset of the pair is prompted through the chat template: the pair
    check then refuses two templates that prompt a question differently."""
    return "--chat-template" if pair_chat(config, PAIRS[wildcards.pair]) else ""


def crosssample_scores(wildcards):
    """A percentile of a scored statistic is read off the generating model's own scored rollouts."""
    if not POLICIES[wildcards.policy].needs_scores(GRID.threshold_spec(wildcards.policy, wildcards.budget)):
        return []
    return layout.in_pair(layout.scores(GENERATOR[wildcards.direction]), wildcards.pair, wildcards.dataset)


def advantage_runs():
    return [layout.advantage_run(v, s) for v in ADVANTAGES.variants for s in ADVANTAGES.seeds]


def crosssample_runs(wildcards):
    max_new = dataset_sampling(config, wildcards.dataset)["max_new_tokens"]
    return {
        "grid": [crosssample_run(wildcards.pair, wildcards.dataset, *run) for run in GRID.runs(max_new)],
        "extrapolation": [crosssample_run(wildcards.pair, wildcards.dataset, *r) for r in GRID.extrapolation_runs()],
    }


def example_inputs(wildcards):
    """Figure 6's forward run, its budget-0 twin (same noise) and the tokenizer to decode it."""
    runs = GRID.example_runs(dataset_sampling(config, wildcards.dataset)["max_new_tokens"])
    if runs is None:
        return {}
    run, baseline = (crosssample_run(wildcards.pair, wildcards.dataset, *r) for r in runs)
    return {"example_run": run, "example_baseline": baseline, "tokenizer": manifest_of("base")(wildcards)}


def figure_inputs(wildcards):
    """A pair's figures' tables (``tokenshift figures``' flags by name), and a cross-sampled pair's example run."""
    of_pair = lambda name: layout.in_pair(name, wildcards.pair, wildcards.dataset)
    inputs = {n: of_pair(layout.divergence(n)) for n in DIVERGENCE_FIGURES}
    if wildcards.pair not in CROSSSAMPLED:
        return inputs
    crossed = {"accuracy": of_pair(layout.ACCURACY), "crosssample": of_pair(layout.CROSSSAMPLE)}
    return {**inputs, **crossed, **example_inputs(wildcards)}


def input_args(wildcards, input):
    """Each named input of a job as the flag of that name (``--position=<its path>``)."""
    return shlex.join(f"{flag(name)}={input[name]}" for name in input.keys())


def explorer_inputs():
    """What the token explorer embeds: every pair and dataset's scored rollouts and cross-sampling
    runs, the datasets' problems (questions, and the toy task's decision points) and each pair's
    tokenizer (its base model's)."""
    return {
        "scores": [layout.in_pair(layout.scores(role), p, d) for p, d in PAIR_DATASETS for role in ROLES],
        "runs": [
            crosssample_run(p, d, *run)
            for p, d in PAIR_DATASETS
            if p in CROSSSAMPLED
            for run in GRID.runs(dataset_sampling(config, d)["max_new_tokens"])
        ],
        "problems": [layout.dataset_table(d) for d in dict.fromkeys(d for _, d in PAIR_DATASETS)],
        "tokenizers": [layout.model_manifest(PAIRS[p]["base"]) for p in dict.fromkeys(p for p, _ in PAIR_DATASETS)],
    }


# the explorer's one job names every pair's scores and every cross-sampling run on its command line: a study whose
# paths could not reach it is refused now, not at its end
try:
    _explorer = explorer_inputs()
    check_command_paths(
        "crosssample" if _explorer["runs"] else "pairs",
        "the token explorer's job",
        [path for paths in _explorer.values() for path in paths],
    )
except ConfigError as error:
    raise error.with_traceback(None) from None


def pair_figure_report(name):
    """A pair's figure as Snakemake's report shows it (``snakemake --report``): by pair, dataset and name."""
    return report(
        layout.in_pair(layout.figure(name)),
        caption="../report/pair_figure.rst",
        category="Figures",
        subcategory="{pair} / {dataset}",
        labels={"pair": "{pair}", "dataset": "{dataset}", "figure": name},
    )


# --- params: settings as the flags of their dataclass --------------------------------------


def settings_of(cls, stage=None, recorded=True, keys=None):
    """The flags of a config section (``cls.section``): the keys ``stage`` reads, or all of them (or
    ``keys`` of them: what a job of another section reads there). ``recorded=False``: those results do
    not depend on (a batch size), which a rule passes as a resource (``tuning``) and not as a param,
    since Snakemake records params and changing one would re-run jobs."""

    def flags(wildcards):
        values = section_values(cls, config, stage=stage, recorded=recorded)
        return shell_args(cls, {k: v for k, v in values.items() if keys is None or k in keys})

    return flags


def vllm_engine_of(section, key="backend", engine="vllm"):
    """The vLLM engine's settings (``rollout.vllm_*``) for the jobs of a stage that runs vLLM (config
    ``section``'s ``key`` is ``engine``: scoring's backend vllm, cross-sampling's engine regenerate); none
    for the others, whose jobs read none of them, so changing one re-runs none of theirs."""
    if config[section][key] != engine:
        return ""
    return shell_args(RolloutConfig, {k: v for k, v in config["rollout"].items() if k in VLLM_ENGINE_KEYS})


def fetch_args(wildcards):
    # each value joined to its flag, as to_argv does: a revision "-x" is a revision, not an option; a path as the
    # config gives it (relative to the working directory), so a study moved whole re-runs nothing, and spelled alike
    # (path_spelling: `./ckpt/a/` is `ckpt/a`), so another spelling of it re-runs nothing either
    spec = MODELS[wildcards.model]
    args = [f"--path={path_spelling(spec['path'])}"] if "path" in spec else [f"--hub={spec['hub']}"]
    args += [f"--revision={spec['revision']}"] if "revision" in spec else []
    args += [f"--{k.replace('_', '-')}={spec[k]}" for k in LOADING_KEYS if k in spec]
    return shlex.join(args + (["--trust-remote-code"] if spec.get("trust_remote_code") else []))


def dataset_args(wildcards):
    spec = DATASETS[wildcards.dataset]
    args = shell_args(DatasetSpec, given_settings(DatasetSpec.from_config(spec)))
    if "toy" in spec:  # the toy eval problems are drawn as the toy pair's task
        task = ToyBuildConfig.from_mapping(config["toy"]).task
        args = f"{args} {shell_args(ToyTaskConfig, dataclasses.asdict(task))}"
    return args


def sampling_args(wildcards):
    return shell_args(SamplingConfig, dataset_sampling(config, wildcards.dataset))


def prompt_args(wildcards):
    return shell_args(PromptConfig, dataclasses.asdict(PromptConfig.for_dataset(DATASETS[wildcards.dataset])))


def crosssample_args(wildcards):
    """A run's recorded settings: the grid's, or for an extrapolation run beside it (a ``gamma``
    wildcard) the grid's drawing by extrapolation at that gamma."""
    if "gamma" not in wildcards.keys():
        return shell_args(CrossSampleConfig, section_values(CrossSampleConfig, config, stage=CROSSSAMPLE_STAGES))
    stages = (*(s for s in CROSSSAMPLE_STAGES if s not in INJECTIONS), "extrapolate")
    values = section_values(CrossSampleConfig, config, stage=stages)
    return shell_args(CrossSampleConfig, {**values, "injection": "extrapolate", "gamma": float(wildcards.gamma)})


def threshold_args(wildcards):
    """``--threshold=t`` or ``--percentile=q [--level=L]`` (none for a policy whose threshold is fixed,
    nor at budget 0, which never switches), in one order whatever the YAML's, so a reordered config
    is the same recorded setting (and ``50.0`` the same as ``50``); joined, so a threshold of -1e-05 is a
    value, not an option."""
    spec = GRID.threshold_spec(wildcards.policy, wildcards.budget)
    return shlex.join(f"--{k}={canonical(v)}" for k, v in sorted(spec.items()))


def toy_check_args(wildcards):
    # the toy task's eval problems: as many as the largest toy dataset the pair is evaluated on
    n, _ = toy_check_problems(config, PAIRS[wildcards.pair])
    s = config["sampling"]
    return shell_args(ToyCheckOptions, {"n_problems": n, "samples": s["n"], "seed": s["seed"]})


def explorer_args(wildcards, input):
    """The explorer's inputs (``explorer_inputs``, in its order) as its flags: each pair and dataset's scores
    (``--scores PAIR DATASET BASE RL``) and each pair's tokenizer (``--tokenizer PAIR=CHECKPOINT``)."""
    scores = iter(input.scores)
    args = [["--scores", p, d, *(next(scores) for _ in ROLES)] for p, d in PAIR_DATASETS]
    pairs = dict.fromkeys(p for p, _ in PAIR_DATASETS)
    args.append([f"--tokenizer={p}={t}" for p, t in zip(pairs, input.tokenizers, strict=True)])
    return " ".join(shlex.join(a) for a in args)


def kind_args(wildcards):
    return shlex.join(f"--kind={p}={spec['kind']}" for p, spec in PAIRS.items())


def report_inputs(pair, dataset):
    """One pair and dataset's files the report reads, by the names ``tokenshift report --result`` gives them."""
    names = report_files(pair in CROSSSAMPLED)
    return {name: layout.in_pair(layout.pair_file(name), pair, dataset) for name in names}


def result_args(wildcards):
    """``--result NAME=PATH ...`` for each pair and dataset (``report_inputs``)."""
    return " ".join(
        shlex.join(["--result", *(f"{n}={f}" for n, f in report_inputs(p, d).items())]) for p, d in PAIR_DATASETS
    )


def training_args(wildcards, input):
    """The toy training analyses' tables and the figures the report embeds."""
    args = ["--advantages", input.advantage_table, input.advantages] if input.advantages else []
    for pair, table, figure in zip(TOY_RL_PAIRS, input.shift_tables, input.shifts, strict=True):
        args += ["--training-shifts", pair, table, figure]
    return shlex.join(args)


def example_args(wildcards, output):
    """The table of figure 6's tokens (an output of a cross-sampled pair's figures)."""
    return shlex.join([f"--example-table={output.example}"] if "example" in output.keys() else [])


# --- resources: what a job asks the scheduler for, from the config and its models' manifests --


def job_models(stage, wildcards, input, key):
    """(config spec, manifest, device) of each model a job of ``stage`` loads (the manifest None where
    resource ``key`` needs no manifest and it is not written yet; the device the stage's config gives it)."""
    if stage == "rollout":
        roles = {PAIRS[wildcards.pair][wildcards.role]: (input.model, "auto")}
    elif stage in ("score", "crosssample"):
        section = config["scoring" if stage == "score" else "crosssample"]
        # regenerate's vLLM engines go where vLLM is built for, sharing the job's GPUs: the devices are lockstep's
        placed = stage == "score" or config["crosssample"]["engine"] == "lockstep"
        roles = {
            PAIRS[wildcards.pair][role]: (path, section[f"device_{role}"] if placed else "auto")
            for role, path in (("base", input.base), ("rl", input.rl))
        }
    else:
        roles = {}
    # a manifest needed but not written yet raises FileNotFoundError: Snakemake then leaves the
    # resource <TBD> and evaluates it again once the checkpoint exists, before the job is submitted
    return [
        (
            MODELS[name],
            json.loads(Path(path).read_text()) if Path(path).is_file() or manifest_needed(key, MODELS[name]) else None,
            device,
        )
        for name, (path, device) in roles.items()
    ]


def resources_of(stage):
    """The resources a job of ``stage`` declares: gpu, gpu_model or gres, mem_mb and runtime (tokenshift.cluster)."""

    def get(key):
        def value(wildcards, input, attempt):
            got = job_resources(stage, job_models(stage, wildcards, input, key), config["cluster"], attempt)
            return got.get(key, "")

        return value

    return {key: get(key) for key in ("gpu", "gpu_model", "gres", "mem_mb", "runtime")}


def runtime(stage):
    return lambda wildcards, attempt: config["cluster"]["runtime"][stage] * attempt


# --- targets -------------------------------------------------------------------------------


def aggregate_tables():
    """The study's aggregate tables (paths without ``.parquet``), each also written as CSV beside it."""
    tables = [layout.toy_check("accuracy", p) for p in TOY_RL_PAIRS]
    tables += [layout.training(layout.SHIFTS, p) for p in TOY_RL_PAIRS]
    tables += [f"{layout.ADVANTAGES}/{t}" for t in (layout.CURVE, layout.COMPARISON)] if ADVANTAGE_BASE else []
    for p, d in PAIR_DATASETS:
        names = [layout.ACCURACY, *(layout.divergence(n) for n in DIVERGENCE_TABLES)]
        names += [layout.divergence("decision_points")] if d in TOY_DATASETS else []
        names += [layout.CROSSSAMPLE] if p in CROSSSAMPLED else []
        tables += [layout.in_pair(n, p, d) for n in names]
    return [t.removesuffix(".parquet") for t in tables]


def get_final_output():
    # the models the pairs compare (a config read over the default one, such as config/paper.yaml,
    # keeps the default's toy models, which no pair then uses: they are not built)
    used = dict.fromkeys(m for pair in PAIRS.values() for m in (pair["base"], pair["rl"]))
    targets = [layout.model_manifest(m) for m in used]
    targets += [layout.pair_manifest(p) for p in PAIRS]
    # the ground-truth check of a toy RL pair (an SFT pair's decision points are in its divergence tables)
    targets += [layout.toy_check("accuracy", p) for p in TOY_RL_PAIRS]
    targets += [layout.training(layout.shifts_figure(), p) for p in TOY_RL_PAIRS]
    targets += [f"{layout.ADVANTAGES}/{layout.advantages_figure()}"] if ADVANTAGE_BASE else []
    for p, d in PAIR_DATASETS:
        names = [layout.ACCURACY, layout.divergence("sparsity")] + ([layout.CROSSSAMPLE] if p in CROSSSAMPLED else [])
        targets += [layout.in_pair(n, p, d) for n in names]
    targets += [layout.REPORT, layout.EXPLORER, layout.SUMMARY] if PAIR_DATASETS else []
    targets += [f"{t}.csv" for t in aggregate_tables()]
    return list(dict.fromkeys(targets + made_between()))


def made_between():
    """The files a study makes on the way to its results, requested by `all` too. Snakemake makes a missing
    file again only where a job it runs needs it, and a job that fails (killed, preempted) has its output
    deleted with the record of the settings and code it was made with: after a changed setting, a rollout part
    whose job was killed left the gathered rollouts, and all made from them, up to date under the old setting
    (the sixteenth hostile pass). Requested, a missing file is made again, and what reads it after it."""
    files = [layout.dataset_table(d) for d in dict.fromkeys(d for _, d in PAIR_DATASETS)]
    for p, d in PAIR_DATASETS:
        of_pair = lambda names: [layout.in_pair(n, p, d) for n in names]
        sharded = {
            gather.rollout: of_pair(map(layout.rollouts, ROLES)),
            gather.score: of_pair(map(layout.scores, ROLES)),
        }
        if p in CROSSSAMPLED:
            runs = crosssample_runs(SimpleNamespace(pair=p, dataset=d))
            sharded[gather.crosssample] = [run for rs in runs.values() for run in rs]
        files += [f for parts_of, tables in sharded.items() for t in tables for f in (t, *parts_of(layout.parts(t)))]
        files += report_inputs(p, d).values()
    files += [layout.toy_check("decision_points", p) for p in TOY_RL_PAIRS]
    if ADVANTAGE_BASE:
        runs = itertools.product(ADVANTAGES.variants, ADVANTAGES.seeds, ("eval", "history"))
        files += [layout.advantage_run(*run) for run in runs]
    return files + ([layout.overview_figure(), layout.RUN_CONFIG] if PAIR_DATASETS else [])
