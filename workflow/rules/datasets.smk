# Dataset stage: each dataset's problems are loaded once (toy task, local file or hub) into
# resources/datasets/<dataset>.parquet, which every later stage reads. A local file is an input,
# so editing it re-runs everything that depends on its problems. Its manifest beside it records the
# source and, for a hub dataset, the commit actually read.


rule dataset:
    input:
        dataset_source_files,
    output:
        problems=layout.dataset_table(),
        manifest=layout.dataset_manifest(),
    log:
        "logs/datasets/{dataset}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("dataset"),
        source=dataset_args,
        fingerprint=fingerprint_of(dataset_source_files),
    shell:
        "tokenshift dataset {wildcards.dataset} {params.source} --out {output.problems} > {log} 2>&1"
