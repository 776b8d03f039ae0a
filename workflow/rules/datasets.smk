# Dataset stage: each dataset's problems are loaded once (toy task, local file or hub) into
# resources/datasets/<dataset>.parquet, which every later stage reads. A local file is an input,
# so editing it re-runs everything that depends on its problems.


rule dataset:
    input:
        dataset_source_files,
    output:
        "resources/datasets/{dataset}.parquet",
    log:
        "logs/datasets/{dataset}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        source=dataset_args,
    shell:
        "tokenshift dataset {wildcards.dataset} {params.source} --out {output} > {log} 2>&1"
