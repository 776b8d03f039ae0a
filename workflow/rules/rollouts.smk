# Rollout stage: each pair's two models answer each of the pair's datasets; answers are graded
# with math-verify; an accuracy table per pair and dataset aggregates both roles.


rule rollout:
    input:
        manifest=role_manifest,
    output:
        "results/{pair}/{dataset}/rollouts/{role}.parquet",
    params:
        model=lambda wc, input: input.manifest[: -len(".json")],
        spec=lambda wc: shlex.quote(json.dumps(DATASETS[wc.dataset])),
        sampling=sampling_args,
        rollout=rollout_args,
        toy=toy_settings_json(),
    threads: config["rollout"]["threads"]
    conda:
        "../../envs/gpu.yaml"
    log:
        "logs/rollouts/{pair}/{dataset}/{role}.log",
    benchmark:
        "logs/benchmarks/rollouts/{pair}/{dataset}/{role}.tsv"
    resources:
        gpu=1 if config["rollout"]["backend"] == "vllm" else 0,
        mem_mb=16000,
        runtime=240,
    shell:
        "tokenshift rollout --model {params.model} --dataset {wildcards.dataset} --dataset-spec {params.spec} "
        "{params.sampling} {params.rollout} --threads {threads} --toy-settings {params.toy} "
        "--out {output} 2>&1 | tee {log}"


rule accuracy:
    input:
        pair="resources/pairs/{pair}.json",  # a pair's tables exist only for a pair that passed its check
        base="results/{pair}/{dataset}/rollouts/base.parquet",
        rl="results/{pair}/{dataset}/rollouts/rl.parquet",
    output:
        "results/{pair}/{dataset}/accuracy.parquet",
    params:
        k=" ".join(map(str, config["rollout"]["pass_k"])),
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/accuracy/{pair}/{dataset}.log",
    shell:
        "tokenshift accuracy --base {input.base} --rl {input.rl} --k {params.k} --pair {wildcards.pair} "
        "--dataset {wildcards.dataset} --out {output} 2>&1 | tee {log}"
