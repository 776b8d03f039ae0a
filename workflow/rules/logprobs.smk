# Scoring stage: both models of a pair teacher-forced over each response source (the base
# model's rollouts and the RL model's), one row per response token with both log-probs and the
# full-vocabulary comparison of the two next-token distributions.


rule score:
    input:
        pair="resources/pairs/{pair}.json",
        rollouts="results/{pair}/{dataset}/rollouts/{source}.parquet",
        base=lambda wc: model_manifest(PAIRS[wc.pair]["base"]),
        rl=lambda wc: model_manifest(PAIRS[wc.pair]["rl"]),
    output:
        "results/{pair}/{dataset}/scores/{source}.parquet",
    params:
        base=lambda wc, input: input.base[: -len(".json")],
        rl=lambda wc, input: input.rl[: -len(".json")],
        scoring=lambda wc: (f"--chunk-memory-mb {config['scoring']['chunk_memory_mb']} "
                            f"--max-batch-tokens {config['scoring']['max_batch_tokens']} "
                            f"--device-base {config['scoring']['device_base']} "
                            f"--device-rl {config['scoring']['device_rl']}"),
    threads: config["rollout"]["threads"]
    conda:
        "../../envs/gpu.yaml"
    log:
        "logs/scores/{pair}/{dataset}/{source}.log",
    benchmark:
        "logs/benchmarks/scores/{pair}/{dataset}/{source}.tsv"
    resources:
        gpu=0 if config["scoring"]["device_base"] == config["scoring"]["device_rl"] == "cpu" else 1,
        mem_mb=16000,
        runtime=240,
    shell:
        "tokenshift score --base {params.base} --rl {params.rl} --pair {input.pair} --rollouts {input.rollouts} "
        "--source {wildcards.source} {params.scoring} --threads {threads} --out {output} 2>&1 | tee {log}"
