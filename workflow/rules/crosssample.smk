# Cross-sampling: both models decode in lockstep and trade tokens at the positions a policy
# picks, under a per-response budget. Each (direction, policy, budget) is its own target, so
# re-running one budget re-runs that job alone; a table per pair and dataset aggregates them.
# Budget 0 never switches, and the decoder shares its randomness across policies, so budget 0 is
# one run per direction whatever the policy: the table runs it once (the first policy) and
# reports it for every policy.


rule crosssample:
    input:
        pair="resources/pairs/{pair}.json",  # only for a pair whose tokenizers passed the check
        base=lambda wc: model_manifest(PAIRS[wc.pair]["base"]),
        rl=lambda wc: model_manifest(PAIRS[wc.pair]["rl"]),
        scores=crosssample_scores,
    output:
        "results/{pair}/{dataset}/crosssample/{direction}/{policy}/budget-{budget}.parquet",
    params:
        base=lambda wc, input: input.base[: -len(".json")],
        rl=lambda wc, input: input.rl[: -len(".json")],
        spec=lambda wc: shlex.quote(json.dumps(DATASETS[wc.dataset])),
        sampling=sampling_args,
        threshold=crosssample_threshold_args,
        run=crosssample_run_args,
        toy=toy_settings_json(),
    threads: config["crosssample"]["threads"]
    conda:
        "../../envs/gpu.yaml"
    log:
        "logs/crosssample/{pair}/{dataset}/{direction}/{policy}/budget-{budget}.log",
    benchmark:
        "logs/benchmarks/crosssample/{pair}/{dataset}/{direction}/{policy}/budget-{budget}.tsv"
    resources:
        gpu=crosssample_gpus,
        mem_mb=16000,
        runtime=240,
    shell:
        "tokenshift crosssample --base {params.base} --rl {params.rl} --dataset {wildcards.dataset} "
        "--dataset-spec {params.spec} --direction {wildcards.direction} --policy {wildcards.policy} "
        "--budget {wildcards.budget} {params.threshold} {params.sampling} {params.run} --threads {threads} "
        "--toy-settings {params.toy} --out {output} 2>&1 | tee {log}"


rule crosssample_table:
    input:
        crosssample_runs,
    output:
        "results/{pair}/{dataset}/crosssample.parquet",
    conda:
        "../../envs/cpu.yaml"
    log:
        "logs/crosssample/{pair}/{dataset}/table.log",
    shell:
        "tokenshift crosssample-table {input} --pair {wildcards.pair} --dataset {wildcards.dataset} "
        "--out {output} 2>&1 | tee {log}"
