# Figures and report: the paper's figures drawn from the tables (nothing recomputed), and one
# self-contained report.html with the headline numbers, plus summary.json for comparing runs, and the
# token explorer (explorer.html, linked from the report).


rule figures:
    input:
        unpack(figure_inputs),
    output:
        png=[pair_figure_report(n) for n in PAIR_FIGURES],
        pdf=[layout.in_pair(layout.figure(n, ".pdf")) for n in PAIR_FIGURES],
        example=layout.in_pair(layout.EXAMPLE_TOKENS),
    log:
        "logs/figures/{pair}/{dataset}.log",
    wildcard_constraints:
        pair=alternatives(CROSSSAMPLED),
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("figures"),
        inputs=input_args,
        example=example_args,
        out=lambda wildcards, output: Path(output.png[0]).parent,
    shell:
        "tokenshift figures {params.inputs} {params.example} --out-dir {params.out:q} > {log:q} 2>&1"


# a pair that is not cross-sampled: the divergence figures only
use rule figures as figures_divergence with:
    output:
        png=[pair_figure_report(n) for n in DIVERGENCE_FIGURES],
        pdf=[layout.in_pair(layout.figure(n, ".pdf")) for n in DIVERGENCE_FIGURES],
    wildcard_constraints:
        pair=alternatives([p for p in PAIRS if p not in CROSSSAMPLED]),
    localrule: True


rule figure_overview:
    input:
        [layout.in_pair(layout.divergence("sparsity"), p, d) for p, d in PAIR_DATASETS],
    output:
        png=report(layout.overview_figure(), caption="../report/overview.rst", category="Figures"),
        pdf=layout.overview_figure(".pdf"),
    log:
        "logs/figures/overview.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("figure-overview"),
        kinds=kind_args,
        out=lambda wildcards, output: Path(output.png).with_suffix(""),
    shell:
        "tokenshift figure-overview {input:q} {params.kinds} --out {params.out} > {log} 2>&1"


# the token explorer: a sample of responses token by token, with both models' candidates
rule explorer:
    input:
        **explorer_inputs(),
    output:
        report(layout.EXPLORER, caption="../report/pages.rst", category="Report"),
    log:
        "logs/explorer.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("explorer"),
        inputs=explorer_args,
        explorer=settings_of(ExplorerConfig),
    shell:
        "tokenshift explorer {params.inputs} --runs {input.runs:q} --problems {input.problems:q} "
        "{params.explorer} --out {output:q} > {log:q} 2>&1"


rule run_config:
    output:
        layout.RUN_CONFIG,
    log:
        "logs/config.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("record-config"),
        config=lambda wildcards: RECORDED_SETTINGS,  # a function: Snakemake formats a string for wildcards
    # a shell command, as every rule's: Snakemake runs a `run:` job by a shell line it builds itself, which
    # quoted the working directory's path wrongly (a folder named x'$(cmd)' ran cmd: the tenth hostile pass, G6)
    shell:
        "tokenshift record-config {params.config:q} --out {output:q} > {log:q} 2>&1"


rule report:
    input:
        results=[f for p, d in PAIR_DATASETS for f in report_inputs(p, d).values()],
        overview=layout.overview_figure(),
        config=layout.RUN_CONFIG,
        advantages=rules.figure_advantages.output.png if ADVANTAGE_BASE else [],
        advantage_table=rules.advantage_tables.output.comparison if ADVANTAGE_BASE else [],
        shifts=[layout.training(layout.shifts_figure(), p) for p in TOY_RL_PAIRS],
        shift_tables=[layout.training(layout.SHIFTS, p) for p in TOY_RL_PAIRS],
        explorer=rules.explorer.output[0],
    output:
        html=report(layout.REPORT, caption="../report/pages.rst", category="Report"),
        json=layout.SUMMARY,
    log:
        "logs/report.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("report"),
        results=result_args,
        kinds=kind_args,
        training=training_args,
    shell:
        "tokenshift report {params.results} {params.kinds} --overview {input.overview:q} --config {input.config:q} "
        "{params.training} --explorer {input.explorer:q} --html {output.html:q} --json {output.json:q} > {log:q} 2>&1"


# each aggregate table as CSV beside its parquet, for a spreadsheet or R
rule csv_table:
    input:
        "{table}.parquet",
    output:
        report("{table}.csv", caption="../report/table.rst", category="Tables", labels={"table": "{table}"}),
    log:
        "logs/csv/{table}.log",
    wildcard_constraints:
        table=alternatives(aggregate_tables()),
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("csv"),
    shell:
        "tokenshift csv {input:q} --out {output:q} > {log:q} 2>&1"
