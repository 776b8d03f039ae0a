# The paper's third analysis on the toy task: GRPO from the toy base model under each
# divergence-weighted advantage (config `advantages:`), for several seeds, evaluated during
# training; and how the toy RL model's shifts from the base model evolve over its training.


rule advantage_run:
    input:
        base=model_manifest(ADVANTAGE_BASE) if ADVANTAGE_BASE else [],
    output:
        evals="results/advantages/runs/{variant}/seed-{seed}/eval.parquet",
        history="results/advantages/runs/{variant}/seed-{seed}/history.parquet",
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
        curve="results/advantages/curve.parquet",
        comparison="results/advantages/comparison.parquet",
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
        rules.advantage_tables.output,
    output:
        png=report("results/advantages/advantages.png", caption="../report/training.rst", category="Training"),
        pdf="results/advantages/advantages.pdf",
    log:
        "logs/figures/advantages.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("figure-training"),
        out=lambda wildcards, output: Path(output.png).parent,
    shell:
        "tokenshift figure-training --advantages {params.out} --out-dir {params.out} > {log} 2>&1"


rule training_shifts:
    input:
        **PAIR_MANIFESTS,
    output:
        "results/{pair}/training/shifts.parquet",
    log:
        "logs/training/{pair}.log",
    wildcard_constraints:
        pair=alternatives(TOY_RL_PAIRS),
    conda:
        "../../envs/cpu.yaml"
    threads: config["toy"]["threads"]
    params:
        code=stage_code("training-shifts"),
        n=settings_of(AdvantageExperimentConfig, keys=("eval_problems",)),
    shell:
        "tokenshift training-shifts --base {input.base} --rl {input.rl} {params.n} --out {output} > {log} 2>&1"


rule figure_training_shifts:
    input:
        "results/{pair}/training/shifts.parquet",
    output:
        png=report(
            "results/{pair}/training/training_shifts.png",
            caption="../report/training.rst",
            category="Training",
            labels={"pair": "{pair}", "figure": "training shifts"},
        ),
        pdf="results/{pair}/training/training_shifts.pdf",
    log:
        "logs/figures/{pair}/training_shifts.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("figure-training"),
        out=lambda wildcards, output: Path(output.png).parent,
    shell:
        "tokenshift figure-training --shifts {input} --out-dir {params.out} > {log} 2>&1"
