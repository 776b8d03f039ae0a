# Checkpoint stage: every model becomes resources/models/<name>/ plus a manifest written last
# (resources/models/<name>.json, with the weights' sha256); each pair's tokenizers are compared
# (resources/pairs/<pair>.json). The toy pair is built here on CPU.


rule fetch_model:
    input:
        model_source_files,
    output:
        ckpt=directory(layout.model_dir()),
        manifest=layout.model_manifest(),
    log:
        "logs/models/{model}.log",
    wildcard_constraints:
        model=alternatives(FETCHED),
    conda:
        "../../envs/cpu.yaml"
    resources:
        runtime=runtime("fetch"),
    params:
        code=stage_code("models", "fetch"),
        source=fetch_args,
        fingerprint=fingerprint_of(model_source_files),
    shell:
        "tokenshift models fetch {wildcards.model} {params.source} --out {output.ckpt} > {log} 2>&1"


rule toy_base:
    output:
        ckpt=directory(layout.model_dir()),
        manifest=layout.model_manifest(),
    log:
        "logs/models/{model}.log",
    benchmark:
        "logs/benchmarks/models/{model}.tsv"
    wildcard_constraints:
        model=alternatives(TOY_BASE),
    priority: TOY_BUILD_PRIORITY
    conda:
        "../../envs/cpu.yaml"
    threads: config["toy"]["threads"]
    resources:
        runtime=runtime("toy"),
    params:
        code=stage_code("models", "toy-base"),
        settings=settings_of(ToyBuildConfig, stage="base"),
    shell:
        "tokenshift models toy-base {wildcards.model} {params.settings} --out {output.ckpt} > {log} 2>&1"


rule toy_rl:
    input:
        init=toy_init,
    output:
        ckpt=directory(layout.model_dir()),
        manifest=layout.model_manifest(),
    log:
        "logs/models/{model}.log",
    benchmark:
        "logs/benchmarks/models/{model}.tsv"
    wildcard_constraints:
        model=alternatives(TOY_RL),
    priority: TOY_BUILD_PRIORITY
    conda:
        "../../envs/cpu.yaml"
    threads: config["toy"]["threads"]
    resources:
        runtime=runtime("toy"),
    params:
        command="toy-rl",
        code=stage_code("models", "toy-rl"),
        settings=settings_of(ToyBuildConfig, stage="rl"),
    shell:
        "tokenshift models {params.command} {wildcards.model} --init {input.init} {params.settings} "
        "--out {output.ckpt} > {log} 2>&1"


# the SFT contrast model: the same build from the base model, by supervised fine-tuning
use rule toy_rl as toy_sft with:
    wildcard_constraints:
        model=alternatives(TOY_SFT),
    priority: 0
    params:
        command="toy-sft",
        code=stage_code("models", "toy-sft"),
        settings=settings_of(ToyBuildConfig, stage="sft"),


rule check_pair:
    input:
        **PAIR_MANIFESTS,
    output:
        layout.pair_manifest(),
    log:
        "logs/pairs/{pair}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("models", "check-pair"),
        roles=pair_roles,
        chat=pair_chat_flag,
    shell:
        "tokenshift models check-pair {wildcards.pair} --base {input.base} --rl {input.rl} {params.chat} "
        "--out {output} > {log} 2>&1"


rule toy_check:
    input:
        **PAIR_MANIFESTS,
    output:
        decision_points=layout.toy_check("decision_points"),
        accuracy=layout.toy_check("accuracy"),
    log:
        "logs/toy_check/{pair}.log",
    wildcard_constraints:
        pair=alternatives(TOY_PAIRS),
    conda:
        "../../envs/cpu.yaml"
    threads: config["toy"]["threads"]
    params:
        code=stage_code("toy-check"),
        roles=pair_roles,
        check=toy_check_args,
        out=lambda wildcards, output: Path(output.accuracy).parent,
    shell:
        "tokenshift toy-check --base {input.base} --rl {input.rl} {params.check} --out {params.out} > {log} 2>&1"
