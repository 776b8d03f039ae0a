# Checkpoint stage: every model becomes resources/models/<name>/ plus a manifest written last
# (resources/models/<name>.json); each pair's tokenizers are compared (resources/pairs/<pair>.json).
# The toy pair is built here on CPU: its progress bars go to the terminal and to the log.


rule fetch_model:
    output:
        ckpt=directory("resources/models/{model}"),
        manifest="resources/models/{model}.json",
    wildcard_constraints:
        model=_alternatives(FETCHED),
    params:
        source=fetch_args,
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/models/{model}.log",
    resources:
        mem_mb=16000,
        runtime=120,
    shell:
        "tokenshift models fetch {wildcards.model} {params.source} --out {output.ckpt} > {log} 2>&1"


rule toy_base:
    output:
        ckpt=directory("resources/models/{model}"),
        manifest="resources/models/{model}.json",
    wildcard_constraints:
        model=_alternatives(TOY_BASE),
    params:
        settings=toy_settings_json(),
    threads: config["toy"]["threads"]
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/models/{model}.log",
    benchmark:
        "logs/benchmarks/models/{model}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "tokenshift models toy-base {wildcards.model} --settings {params.settings} --out {output.ckpt} 2>&1 | tee {log}"


rule toy_rl:
    input:
        init=toy_rl_init,
    output:
        ckpt=directory("resources/models/{model}"),
        manifest="resources/models/{model}.json",
    wildcard_constraints:
        model=_alternatives(TOY_RL),
    params:
        settings=toy_settings_json(),
        init_dir=lambda wc, input: input.init[: -len(".json")],
    threads: config["toy"]["threads"]
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/models/{model}.log",
    benchmark:
        "logs/benchmarks/models/{model}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "tokenshift models toy-rl {wildcards.model} --init {params.init_dir} --settings {params.settings} --out {output.ckpt} 2>&1 | tee {log}"


rule check_pair:
    input:
        unpack(pair_models),
    output:
        "resources/pairs/{pair}.json",
    params:
        base=lambda wc, input: input.base[: -len(".json")],
        rl=lambda wc, input: input.rl[: -len(".json")],
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/pairs/{pair}.log",
    shell:
        "tokenshift models check-pair {wildcards.pair} --base {params.base} --rl {params.rl} --out {output} > {log} 2>&1"


rule toy_check:
    input:
        unpack(pair_models),
    output:
        decision_points="results/{pair}/toy_check/decision_points.parquet",
        accuracy="results/{pair}/toy_check/accuracy.parquet",
    wildcard_constraints:
        pair=_alternatives(TOY_PAIRS),
    params:
        base=lambda wc, input: input.base[: -len(".json")],
        rl=lambda wc, input: input.rl[: -len(".json")],
        settings=toy_settings_json(),
        n_problems=config["datasets"].get("toy", {}).get("n_problems", 500),
        samples=config["sampling"]["n"],
        seed=config["sampling"]["seed"],
        out=lambda wc, output: os.path.dirname(output.accuracy),
    threads: config["toy"]["threads"]
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/toy_check/{pair}.log",
    shell:
        "tokenshift toy-check --base {params.base} --rl {params.rl} --settings {params.settings} "
        "--n-problems {params.n_problems} --samples {params.samples} --seed {params.seed} "
        "--out {params.out} 2>&1 | tee {log}"
