"""Where a study's files live: the one home of the results layout.

The rules (``workflow/rules/*.smk``) name their inputs and outputs with these functions and give each
stage the files they declare (no stage looks one up in a results directory); ``tokenshift.api`` finds a
finished study's tables by the same names, so a file moved here moves for both. Each function takes the
wildcards it fills; one left out stays a Snakemake wildcard (``{pair}``). A pair's files on one dataset lie
under ``pair_dir``, named by the functions below relative to it (``accuracy``, ``divergence``, ...);
``in_pair`` joins the two.
"""

from __future__ import annotations

RESULTS = "results"
RESOURCES = "resources"
LOGS = "logs"
WRITTEN = (RESOURCES, RESULTS, LOGS)
"""The folders the workflow writes its jobs' outputs and logs in, under its working directory: no input
from a config may lie in them."""


def model_dir(name: str = "{model}") -> str:
    """A checkpoint: a Hugging Face directory (a local one's files linked)."""
    return f"{RESOURCES}/models/{name}"


def model_manifest(name: str = "{model}") -> str:
    """A checkpoint's manifest, written beside its directory, last (``checkpoints.manifest_path``)."""
    return f"{model_dir(name)}.json"


def pair_manifest(pair: str = "{pair}") -> str:
    """A pair's check: its tokenizers agree, its shared vocabulary."""
    return f"{RESOURCES}/pairs/{pair}.json"


def dataset_table(dataset: str = "{dataset}") -> str:
    """A dataset's problems, prepared once (``datasets.prepare_dataset``)."""
    return f"{RESOURCES}/datasets/{dataset}.parquet"


def dataset_manifest(dataset: str = "{dataset}") -> str:
    return f"{RESOURCES}/datasets/{dataset}.json"


def under_results(path: str) -> str:
    """A path of this layout relative to the results directory (``tokenshift.api`` reads a study's tables there)."""
    return path.removeprefix(f"{RESULTS}/")


def pair_dir(pair: str = "{pair}", dataset: str = "{dataset}") -> str:
    """A pair's results on one dataset."""
    return f"{RESULTS}/{pair}/{dataset}"


def in_pair(name: str, pair: str = "{pair}", dataset: str = "{dataset}") -> str:
    """``name`` (one of the functions below) under ``pair_dir``."""
    return f"{pair_dir(pair, dataset)}/{name}"


def dataset_of(path: str) -> str | None:
    """The dataset whose ``pair_dir`` holds ``path`` (relative to the working directory, as ``io.place``
    gives it), or None for a path outside this layout's pair directories."""
    parts = path.split("/")
    return parts[2] if len(parts) > 3 and parts[0] == RESULTS else None


# --- a pair's files on one dataset, relative to pair_dir -------------------------------------


def rollouts(role: str = "{role}") -> str:
    return f"rollouts/{role}.parquet"


def scores(role: str = "{source}") -> str:
    """The scores of ``role``'s rollouts under both models."""
    return f"scores/{role}.parquet"


ACCURACY = "accuracy.parquet"
CROSSSAMPLE = "crosssample.parquet"
"""The cross-sampling table: every run of the grid, aggregated."""


def divergence(table: str) -> str:
    """A table of the divergence stage (``registry.DIVERGENCE_TABLES``, and the toy's ``decision_points``)."""
    return f"divergence/{table}.parquet"


def crosssample_run(
    direction: str = "{direction}", policy: str = "{policy}", budget: str = "{budget}", gamma: str | None = None
) -> str:
    """A run of the cross-sampling grid, or (``gamma``) an extrapolation run beside it:
    ``budget-all.gamma-0.1``."""
    extrapolated = "" if gamma is None else f".gamma-{gamma}"
    return f"crosssample/{direction}/{policy}/budget-{budget}{extrapolated}.parquet"


def figure(name: str, suffix: str = ".png") -> str:
    """A figure of the pair (``registry.PAIR_FIGURES``), as PNG or (``.pdf``) PDF."""
    return f"figures/{name}{suffix}"


def pair_file(name: str) -> str:
    """A pair's table or figure by the name the figure and report stages take it (``registry.report_files``):
    ``accuracy``, ``crosssample``, a divergence table's name, or ``<figure>.png``."""
    if name.endswith(".png"):
        return figure(name.removesuffix(".png"))
    return {"accuracy": ACCURACY, "crosssample": CROSSSAMPLE}.get(name) or divergence(name)


EXAMPLE_TOKENS = figure("example", ".parquet")
"""The tokens of figure 6's example response, as a table."""


# --- the toy pair's own checks and training analyses, and the study's pages ------------------


def toy_check(table: str, pair: str = "{pair}") -> str:
    """A table of the toy pair's ground-truth check (``accuracy``, ``decision_points``)."""
    return f"{RESULTS}/{pair}/toy_check/{table}.parquet"


def training(name: str, pair: str = "{pair}") -> str:
    """A file of the toy RL pair's training analyses (``SHIFTS``, ``shifts_figure``)."""
    return f"{RESULTS}/{pair}/training/{name}"


SHIFTS = "shifts.parquet"
"""The shifts over the toy RL model's training, checkpoint by checkpoint."""


def shifts_figure(suffix: str = ".png") -> str:
    return f"training_shifts{suffix}"


ADVANTAGES = f"{RESULTS}/advantages"
"""The divergence-weighted advantage experiment: its runs, and (relative to it) its tables and figure."""
CURVE, COMPARISON = "curve.parquet", "comparison.parquet"


def advantages_figure(suffix: str = ".png") -> str:
    return f"advantages{suffix}"


def advantage_run(variant: str = "{variant}", seed: str = "{seed}", table: str = "eval") -> str:
    """A GRPO run of one weighting and seed: its ``eval`` and ``history`` tables."""
    return f"{ADVANTAGES}/runs/{variant}/seed-{seed}/{table}.parquet"


def overview_figure(suffix: str = ".png") -> str:
    """Figure 1: every pair's sparsity on one plot."""
    return f"{RESULTS}/figures/sparsity{suffix}"


REPORT, SUMMARY, EXPLORER = f"{RESULTS}/report.html", f"{RESULTS}/summary.json", f"{RESULTS}/explorer.html"
RUN_CONFIG = f"{RESULTS}/config.yaml"
"""The settings the study's results depend on, as the report records them."""


# --- a sharded table's parts ----------------------------------------------------------------


def parts(table: str) -> str:
    """The parts of a sharded table, one per job (``sharding.PART_NAME``): ``{scatteritem}`` is Snakemake's."""
    return table.removesuffix(".parquet") + ".parts/{scatteritem}.parquet"


def gather_pattern(pattern: str) -> str:
    """``pattern`` as Snakemake's ``gather.<name>()`` takes it: it formats the pattern with ``scatteritem``
    only, so every other wildcard is written doubled (``{{pair}}``)."""
    return pattern.replace("{", "{{").replace("}", "}}").replace("{{scatteritem}}", "{scatteritem}")
