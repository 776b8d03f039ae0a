# Scoring stage: both models of a pair teacher-forced over each response source (the base
# model's rollouts and the RL model's), one row per response token with both log-probs and the
# full-vocabulary comparison of the two next-token distributions.


rule score:
    input:
        pair="resources/pairs/{pair}.json",
        rollouts="results/{pair}/{dataset}/rollouts/{source}.parquet",
        base=pair_model("base"),
        rl=pair_model("rl"),
    output:
        "results/{pair}/{dataset}/scores/{source}.parquet",
    log:
        "logs/scores/{pair}/{dataset}/{source}.log",
    benchmark:
        "logs/benchmarks/scores/{pair}/{dataset}/{source}.tsv"
    conda:
        "../../envs/gpu.yaml"
    threads: config["scoring"]["threads"]
    resources:
        gpu=gpus("scoring"),
        mem_mb=16000,
        runtime=240,
    params:
        scoring=settings_of(ScoringConfig),
    shell:
        "tokenshift score --base {input.base} --rl {input.rl} --pair {input.pair} --rollouts {input.rollouts} "
        "--source {wildcards.source} {params.scoring} --out {output} > {log} 2>&1"
