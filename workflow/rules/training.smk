# The paper's third analysis on the toy task: GRPO from the toy base model under each
# divergence-weighted advantage (config `advantages:`), for several seeds, evaluated during
# training; and how the toy RL model's shifts from the base model evolve over its training.


rule advantage_run:
    input:
        base=layout.model_manifest(ADVANTAGE_BASE) if ADVANTAGE_BASE else [],
    output:
        evals=layout.advantage_run(table="eval"),
        history=layout.advantage_run(table="history"),
    log:
        "logs/advantages/{variant}/seed-{seed}.log",
    benchmark:
        "logs/benchmarks/advantages/{variant}/seed-{seed}.tsv"
    wildcard_constraints:
        variant=alternatives(ADVANTAGES.variants),
        seed=r"\d+",
    conda:
        "../../envs/cpu.yaml"
    threads: config["advantages"]["threads"]
    resources:
        runtime=runtime("toy"),
    params:
        code=stage_code("advantages", "run"),
        settings=settings_of(AdvantageExperimentConfig, stage="run"),
        lr=settings_of(ToyBuildConfig, keys=("grpo_lr",)),  # the toy RL model's
        out=lambda wildcards, output: Path(output.evals).parent,
    shell:
        "tokenshift advantages run --base {input.base} --variant {wildcards.variant} --seed {wildcards.seed} "
        "{params.lr} {params.settings} --out {params.out} > {log} 2>&1"


rule advantage_tables:
    input:
        advantage_runs(),
    output:
        curve=f"{layout.ADVANTAGES}/{layout.CURVE}",
        comparison=f"{layout.ADVANTAGES}/{layout.COMPARISON}",
    log:
        "logs/advantages/tables.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("advantages", "table"),
        out=lambda wildcards, output: Path(output.curve).parent,
    shell:
        "tokenshift advantages table {input:q} --out-dir {params.out} > {log} 2>&1"


rule figure_advantages:
    input:
        curve=rules.advantage_tables.output.curve,
        comparison=rules.advantage_tables.output.comparison,
    output:
        png=report(
            f"{layout.ADVANTAGES}/{layout.advantages_figure()}", caption="../report/training.rst", category="Training"
        ),
        pdf=f"{layout.ADVANTAGES}/{layout.advantages_figure('.pdf')}",
    log:
        "logs/figures/advantages.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("figure-training"),
        inputs=input_args,
        out=lambda wildcards, output: Path(output.png).parent,
    shell:
        "tokenshift figure-training {params.inputs} --out-dir {params.out:q} > {log:q} 2>&1"


rule training_shifts:
    input:
        **PAIR_MANIFESTS,
    output:
        layout.training(layout.SHIFTS),
    log:
        "logs/training/{pair}.log",
    wildcard_constraints:
        pair=alternatives(TOY_RL_PAIRS),
    conda:
        "../../envs/cpu.yaml"
    threads: config["toy"]["threads"]
    params:
        code=stage_code("training-shifts"),
        roles=pair_roles,
        n=settings_of(AdvantageExperimentConfig, keys=("eval_problems",)),
    shell:
        "tokenshift training-shifts --base {input.base} --rl {input.rl} {params.n} --out {output} > {log} 2>&1"


rule figure_training_shifts:
    input:
        shifts=layout.training(layout.SHIFTS),
    output:
        png=report(
            layout.training(layout.shifts_figure()),
            caption="../report/training.rst",
            category="Training",
            labels={"pair": "{pair}", "figure": "training shifts"},
        ),
        pdf=layout.training(layout.shifts_figure(".pdf")),
    log:
        "logs/figures/{pair}/training_shifts.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("figure-training"),
        inputs=input_args,
        out=lambda wildcards, output: Path(output.png).parent,
    shell:
        "tokenshift figure-training {params.inputs} --out-dir {params.out:q} > {log:q} 2>&1"
