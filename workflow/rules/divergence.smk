# Divergence tables: the paper's first analysis, per pair and dataset, both response sources side
# by side (and, on the toy task, checked against the recorded decision points).


def divergence_outputs(wildcards=None):
    names = ["sparsity", "position", "entropy", "reallocation"]
    return {n: f"results/{{pair}}/{{dataset}}/divergence/{n}.parquet" for n in names}


def toy_args(wildcards):
    spec = DATASETS[wildcards.dataset]
    if "toy" not in spec:
        return ""
    tok = model_manifest(PAIRS[wildcards.pair]["base"])[: -len(".json")]
    return f"--toy-n-problems {spec.get('n_problems', 500)} --tokenizer {tok} --settings {toy_settings_json()}"


rule divergence:
    input:
        base="results/{pair}/{dataset}/scores/base.parquet",
        rl="results/{pair}/{dataset}/scores/rl.parquet",
    output:
        **divergence_outputs(),
    params:
        out=lambda wc, output: os.path.dirname(output.sparsity),
        toy=toy_args,
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/divergence/{pair}/{dataset}.log",
    shell:
        "tokenshift divergence --scores-base {input.base} --scores-rl {input.rl} --pair {wildcards.pair} "
        "--dataset {wildcards.dataset} {params.toy} --out-dir {params.out} 2>&1 | tee {log}"
