# Scoring stage: both models of a pair teacher-forced over each response source (the base
# model's rollouts and the RL model's), one row per response token with both log-probs and the
# comparison of the two next-token distributions (whole, or each model's top K: scoring.statistic),
# read by transformers or by vLLM engines (scoring.backend; the engines' settings are rollout.vllm_*).
# A table is written by `scoring.jobs` jobs, each scoring its share of the batches, gathered in the
# table's order.


rule score:
    input:
        **PAIR_MANIFESTS,
        pair=layout.pair_manifest(),
        rollouts=layout.in_pair(layout.rollouts("{source}")),
    output:
        layout.in_pair(layout.parts(layout.scores())),
    log:
        "logs/scores/{pair}/{dataset}/{source}/{scatteritem}.log",
    benchmark:
        "logs/benchmarks/scores/{pair}/{dataset}/{source}/{scatteritem}.tsv"
    conda:
        "../../envs/gpu.yaml"
    threads: config["scoring"]["threads"]
    resources:
        **resources_of("score"),
    params:
        code=stage_code("score"),
        roles=pair_roles,
        scoring=settings_of(ScoringConfig, stage=ScoringConfig.stages_read(config["scoring"])),
        engine=vllm_engine_of("scoring"),
    shell:
        "tokenshift score --base {input.base} --rl {input.rl} --pair {input.pair} --rollouts {input.rollouts} "
        "--source {wildcards.source} {params.scoring} {params.engine} --part {wildcards.scatteritem} --out {output} > {log} 2>&1"


rule gather_scores:
    input:
        gather.score(layout.gather_pattern(layout.in_pair(layout.parts(layout.scores())))),
    output:
        layout.in_pair(layout.scores()),
    log:
        "logs/scores/{pair}/{dataset}/{source}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("gather"),
        sort_by=" ".join(SCORE_ORDER),
    shell:
        "tokenshift gather {input:q} --sort-by {params.sort_by} --out {output} > {log} 2>&1"
