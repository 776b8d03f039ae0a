# Cross-sampling: one model generates and the other's tokens are put in at the positions a policy
# picks, under a per-response budget; both decode in lockstep (engine lockstep), or the generating
# model regenerates after each switch on vLLM (engine regenerate, the authors'), to one table. Each
# (direction, policy, budget) is its own target, so re-running one budget re-runs its jobs alone; a
# table per pair and dataset aggregates them. A run is written by `crosssample.jobs` jobs, one part
# each ({scatteritem} = I-of-N), gathered in order.
# The grid, and the rule that budget 0 runs once per direction (under the registry's first policy
# of the grid, with no threshold: it switches nowhere), are tokenshift.settings.CrossSampleGrid.


rule crosssample:
    input:
        **PAIR_MANIFESTS,
        pair=layout.pair_manifest(),  # only for a pair whose tokenizers passed the check
        dataset=layout.dataset_table(),
        scores=crosssample_scores,
    output:
        layout.in_pair(layout.parts(layout.crosssample_run())),
    log:
        "logs/crosssample/{pair}/{dataset}/{direction}/{policy}/budget-{budget}/{scatteritem}.log",
    benchmark:
        "logs/benchmarks/crosssample/{pair}/{dataset}/{direction}/{policy}/budget-{budget}/{scatteritem}.tsv"
    conda:
        "../../envs/gpu.yaml"
    threads: config["crosssample"]["threads"]
    resources:
        **resources_of("crosssample"),
        # results do not depend on these (a batch size): not recorded, so changing one re-runs nothing
        tuning=settings_of(CrossSampleConfig, stage=CROSSSAMPLE_STAGES, recorded=False),
    params:
        code=stage_code("crosssample"),
        roles=pair_roles,
        threshold=threshold_args,
        scores=lambda wildcards, input: shlex.join([f"--scores={input.scores}"]) if input.scores else "",
        sampling=sampling_args,
        prompt=prompt_args,
        grading=settings_of(GradingConfig),
        run=crosssample_args,
        vllm=vllm_engine_of("crosssample", key="engine", engine="regenerate"),
    shell:
        "tokenshift crosssample --base {input.base} --rl {input.rl} --pair {input.pair} --dataset {input.dataset} "
        "--direction {wildcards.direction} --policy {wildcards.policy} --budget {wildcards.budget} "
        "{params.threshold} {params.scores} {params.sampling} {params.prompt} {params.grading} {params.run} {params.vllm} {resources.tuning} --part {wildcards.scatteritem} "
        "--out {output} > {log} 2>&1"


# the follow-up's extrapolation beside the grid (crosssample.gammas): a run as the grid's, drawing by
# extrapolation at its gamma
use rule crosssample as crosssample_extrapolated with:
    output:
        layout.in_pair(layout.parts(layout.crosssample_run(gamma="{gamma}"))),
    log:
        "logs/crosssample/{pair}/{dataset}/{direction}/{policy}/budget-{budget}.gamma-{gamma}/{scatteritem}.log",
    benchmark:
        "logs/benchmarks/crosssample/{pair}/{dataset}/{direction}/{policy}/budget-{budget}.gamma-{gamma}/{scatteritem}.tsv"


rule gather_crosssample:
    input:
        gather.crosssample(layout.gather_pattern(layout.in_pair(layout.parts(layout.crosssample_run())))),
    output:
        layout.in_pair(layout.crosssample_run()),
    log:
        "logs/crosssample/{pair}/{dataset}/{direction}/{policy}/budget-{budget}.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("gather"),
    shell:
        "tokenshift gather {input:q} --out {output} > {log} 2>&1"


use rule gather_crosssample as gather_crosssample_extrapolated with:
    input:
        gather.crosssample(layout.gather_pattern(layout.in_pair(layout.parts(layout.crosssample_run(gamma="{gamma}"))))),
    output:
        layout.in_pair(layout.crosssample_run(gamma="{gamma}")),
    log:
        "logs/crosssample/{pair}/{dataset}/{direction}/{policy}/budget-{budget}.gamma-{gamma}.log",
    # `use rule` does not carry `localrule` over: each derived rule says so itself
    localrule: True


rule crosssample_table:
    input:
        unpack(crosssample_runs),
    output:
        layout.in_pair(layout.CROSSSAMPLE),
    log:
        "logs/crosssample/{pair}/{dataset}/table.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    params:
        code=stage_code("crosssample-table"),
        extrapolation=lambda wildcards, input: (
            shlex.join(["--extrapolation", *input.extrapolation]) if input.extrapolation else ""
        ),
    shell:
        "tokenshift crosssample-table {input.grid:q} {params.extrapolation} --pair {wildcards.pair} "
        "--dataset {wildcards.dataset} --out {output} > {log} 2>&1"
