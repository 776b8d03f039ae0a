# Rollout stage: each pair's two models answer each of the pair's datasets; answers are graded
# with math-verify; an accuracy table per pair and dataset aggregates both roles. A table is
# written by `rollout.jobs` jobs, one part each ({scatteritem} = I-of-N), gathered in order.


rule rollout:
    input:
        model=manifest_of("{role}"),
        dataset=layout.dataset_table(),
    output:
        layout.in_pair(layout.parts(layout.rollouts())),
    log:
        "logs/rollouts/{pair}/{dataset}/{role}/{scatteritem}.log",
    benchmark:
        "logs/benchmarks/rollouts/{pair}/{dataset}/{role}/{scatteritem}.tsv"
    conda:
        "../../envs/gpu.yaml"
    threads: config["rollout"]["threads"]
    resources:
        **resources_of("rollout"),
        # results do not depend on these (a batch size): not recorded, so changing one re-runs nothing
        tuning=settings_of(RolloutConfig, stage=config["rollout"]["backend"], recorded=False),
    params:
        code=stage_code("rollout"),
        sampling=sampling_args,
        prompt=prompt_args,
        grading=settings_of(GradingConfig),
        rollout=settings_of(RolloutConfig, stage=config["rollout"]["backend"]),
    shell:
        "tokenshift rollout --model {input.model} --dataset {input.dataset} {params.sampling} {params.prompt} "
        "{params.grading} {params.rollout} {resources.tuning} --part {wildcards.scatteritem} --out {output} > {log} 2>&1"


rule gather_rollouts:
    input:
        gather.rollout(layout.gather_pattern(layout.in_pair(layout.parts(layout.rollouts())))),
    output:
        layout.in_pair(layout.rollouts()),
    log:
        "logs/rollouts/{pair}/{dataset}/{role}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("gather"),
    shell:
        "tokenshift gather {input:q} --out {output} > {log} 2>&1"


rule accuracy:
    input:
        pair=layout.pair_manifest(),  # a pair's tables exist only for a pair that passed its check
        base=layout.in_pair(layout.rollouts("base")),
        rl=layout.in_pair(layout.rollouts("rl")),
    output:
        layout.in_pair(layout.ACCURACY),
    log:
        "logs/accuracy/{pair}/{dataset}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("accuracy"),
        metrics=settings_of(AccuracyConfig),
    shell:
        "tokenshift accuracy --rollouts-base {input.base} --rollouts-rl {input.rl} {params.metrics} --pair {wildcards.pair} "
        "--pair-manifest {input.pair} --dataset {wildcards.dataset} --out {output} > {log} 2>&1"
