# Divergence tables: the paper's first analysis, per pair and dataset, both response sources side
# by side (and, on the toy task, checked against the recorded decision points).


rule divergence:
    input:
        base=layout.in_pair(layout.scores("base")),
        rl=layout.in_pair(layout.scores("rl")),
        problems=layout.dataset_table(),
        tokenizer=manifest_of("base"),
    output:
        **{n: layout.in_pair(layout.divergence(n)) for n in DIVERGENCE_TABLES},
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
        **{n: layout.in_pair(layout.divergence(n)) for n in DIVERGENCE_TABLES},
        decision_points=layout.in_pair(layout.divergence("decision_points")),
    wildcard_constraints:
        dataset=alternatives(TOY_DATASETS),
