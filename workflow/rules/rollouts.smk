# Rollout stage: each pair's two models answer each of the pair's datasets; answers are graded
# with math-verify; an accuracy table per pair and dataset aggregates both roles.


rule rollout:
    input:
        model=role_model,
        dataset="resources/datasets/{dataset}.parquet",
    output:
        "results/{pair}/{dataset}/rollouts/{role}.parquet",
    log:
        "logs/rollouts/{pair}/{dataset}/{role}.log",
    benchmark:
        "logs/benchmarks/rollouts/{pair}/{dataset}/{role}.tsv"
    conda:
        "../../envs/gpu.yaml"
    threads: config["rollout"]["threads"]
    resources:
        gpu=1 if config["rollout"]["backend"] == "vllm" else 0,
        mem_mb=16000,
        runtime=240,
    params:
        sampling=sampling_args,
        prompt=prompt_args,
        rollout=settings_of(RolloutConfig),
    shell:
        "tokenshift rollout --model {input.model} --dataset {input.dataset} {params.sampling} {params.prompt} "
        "{params.rollout} --out {output} > {log} 2>&1"


rule accuracy:
    input:
        pair="resources/pairs/{pair}.json",  # a pair's tables exist only for a pair that passed its check
        base="results/{pair}/{dataset}/rollouts/base.parquet",
        rl="results/{pair}/{dataset}/rollouts/rl.parquet",
    output:
        "results/{pair}/{dataset}/accuracy.parquet",
    log:
        "logs/accuracy/{pair}/{dataset}.log",
    conda:
        "../../envs/cpu.yaml"
    params:
        metrics=settings_of(AccuracyConfig),
    shell:
        "tokenshift accuracy --base {input.base} --rl {input.rl} {params.metrics} --pair {wildcards.pair} "
        "--dataset {wildcards.dataset} --out {output} > {log} 2>&1"
