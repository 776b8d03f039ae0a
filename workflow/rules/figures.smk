# Figures and report: the paper's figures drawn from the tables (nothing recomputed), and one
# self-contained report.html with the headline numbers, plus summary.json for comparing runs.


def figure_inputs(wildcards):
    base = f"results/{wildcards.pair}/{wildcards.dataset}"
    inputs = {f"div_{n}": f"{base}/divergence/{n}.parquet" for n in ("position", "entropy", "reallocation")}
    inputs["accuracy"] = f"{base}/accuracy.parquet"
    inputs["crosssample"] = f"{base}/crosssample.parquet"
    example = example_runs(wildcards)
    if example:
        inputs["example_run"], inputs["example_baseline"] = example
        inputs["tokenizer"] = model_manifest(PAIRS[wildcards.pair]["base"])
    return inputs


def example_runs(wildcards):
    """Figure 6 takes a forward run at the largest budget and its budget-0 baseline (same noise)."""
    if "forward" not in CROSS["directions"]:
        return None
    policy = "js" if "js" in CROSS["policies"] else CROSS["policies"][0]
    budgets = crosssample_budgets(wildcards.dataset)
    if budgets == ["0"]:
        return None
    top = "all" if "all" in budgets else max((b for b in budgets if b != "0"), key=int)
    run = f"results/{wildcards.pair}/{wildcards.dataset}/crosssample/forward/{policy}/budget-{top}.parquet"
    zero = f"results/{wildcards.pair}/{wildcards.dataset}/crosssample/forward/{CROSS['policies'][0]}/budget-0.parquet"
    return [run, zero] if "0" in budgets else [run, run]


def figure_args(wildcards, input):
    args = f"--divergence-dir {os.path.dirname(input.div_position)} --accuracy {input.accuracy} "
    args += f"--crosssample {input.crosssample}"
    if "example_run" in input.keys():
        args += (f" --example-run {input.example_run} --example-baseline {input.example_baseline} "
                 f"--tokenizer {input.tokenizer[: -len('.json')]}")
    return args


FIGURE_NAMES = ["position", "entropy", "reallocation", "crosssample", "example"]


rule figures:
    input:
        unpack(figure_inputs),
    output:
        png=[f"results/{{pair}}/{{dataset}}/figures/{n}.png" for n in FIGURE_NAMES],
        pdf=[f"results/{{pair}}/{{dataset}}/figures/{n}.pdf" for n in FIGURE_NAMES],
    params:
        args=figure_args,
        out=lambda wc: f"results/{wc.pair}/{wc.dataset}/figures",
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/figures/{pair}/{dataset}.log",
    shell:
        "tokenshift figures {params.args} --out-dir {params.out} 2>&1 | tee {log}"


rule figure_overview:
    input:
        [f"results/{p}/{d}/divergence/sparsity.parquet" for p, d in PAIR_DATASETS],
    output:
        png="results/figures/sparsity.png",
        pdf="results/figures/sparsity.pdf",
    params:
        kinds=shlex.quote(json.dumps({p: spec.get("kind", "rlvr") for p, spec in PAIRS.items()})),
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/figures/overview.log",
    shell:
        "tokenshift figure-overview {input} --kinds {params.kinds} --out results/figures/sparsity 2>&1 | tee {log}"


def report_entries(wildcards=None):
    entries = []
    for p, d in PAIR_DATASETS:
        base = f"results/{p}/{d}"
        entries.append({"pair": p, "dataset": d, "kind": PAIRS[p].get("kind", "rlvr"),
                        "accuracy": f"{base}/accuracy.parquet", "divergence_dir": f"{base}/divergence",
                        "crosssample": f"{base}/crosssample.parquet", "figures_dir": f"{base}/figures"})
    return entries


rule report:
    input:
        figures=[f"results/{p}/{d}/figures/{n}.png" for p, d in PAIR_DATASETS for n in FIGURE_NAMES],
        overview="results/figures/sparsity.png",
        tables=[f"results/{p}/{d}/{t}" for p, d in PAIR_DATASETS
                for t in ("accuracy.parquet", "crosssample.parquet", "divergence/sparsity.parquet")],
    output:
        html="results/report.html",
        json="results/summary.json",
    params:
        entries=" ".join(f"--entry {shlex.quote(json.dumps(e))}" for e in report_entries()),
        config=shlex.quote(json.dumps(config, indent=2, sort_keys=True, default=str)),
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/report.log",
    shell:
        "tokenshift report {params.entries} --overview {input.overview} --config-text {params.config} "
        "--html {output.html} --json {output.json} 2>&1 | tee {log}"
