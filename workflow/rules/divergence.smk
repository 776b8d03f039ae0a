# Divergence tables: the paper's first analysis, per pair and dataset, both response sources side
# by side (and, on the toy task, checked against the recorded decision points).


rule divergence:
    input:
        base="results/{pair}/{dataset}/scores/base.parquet",
        rl="results/{pair}/{dataset}/scores/rl.parquet",
        problems="resources/datasets/{dataset}.parquet",
        tokenizer=manifest_of("base"),
    output:
        **{n: f"results/{{pair}}/{{dataset}}/divergence/{n}.parquet" for n in DIVERGENCE_TABLES},
    log:
        "logs/divergence/{pair}/{dataset}.log",
    wildcard_constraints:
        dataset=alternatives([d for d in DATASETS if d not in TOY_DATASETS]),
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("divergence"),
        out=lambda wildcards, output: Path(output.sparsity).parent,
        tables=settings_of(DivergenceConfig),
    shell:
        "tokenshift divergence --scores-base {input.base} --scores-rl {input.rl} --problems {input.problems} "
        "--tokenizer {input.tokenizer} --pair {wildcards.pair} --dataset {wildcards.dataset} {params.tables} "
        "--out-dir {params.out} > {log} 2>&1"


# on the toy task the same command also writes the decision-point table
use rule divergence as divergence_toy with:
    output:
        **{n: f"results/{{pair}}/{{dataset}}/divergence/{n}.parquet" for n in DIVERGENCE_TABLES},
        decision_points="results/{pair}/{dataset}/divergence/decision_points.parquet",
    wildcard_constraints:
        dataset=alternatives(TOY_DATASETS),
