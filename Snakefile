# tokenshift: where does RL fine-tuning change a language model, token by token?
# Reproduces "Sparse but Critical" (Meng et al., ICLR 2026) for the model pairs in config.
#
#   snakemake --cores all all                    # the whole study (embedded toy pair by default)
#   snakemake --profile slurm all                # on a SLURM cluster (tokenshift profile install slurm, docs/cluster.md)
#
# Stages, in order (one rule file each):
#   models      materialise checkpoints (local, hub, or the embedded toy pair built here)
#               and check that each pair's tokenizers agree
#   datasets    load each dataset's problems once (toy task, local file, or hub)
#   rollouts    both models of each pair answer each of its datasets; math-verify grades;
#               accuracy tables (avg@n with bootstrap CIs, pass@k)
#   scores      both models teacher-forced over both models' rollouts: per-token JS, KL,
#               entropies, top-k overlap, ranks (chunked LM head, bounded memory)
#   divergence  sparsity, position, entropy and reallocation tables per pair and dataset
#               (on the toy task also checked against the recorded decision points)
#   crosssample both models decode in lockstep, trading tokens where they diverge, one target
#               per direction x policy x budget; a table of accuracy per budget
#   training    on the toy task: GRPO under each divergence-weighted advantage and seed,
#               compared with plain GRPO; the toy RL model's shifts at each of its checkpoints
#   figures     the paper's figures from those tables, report.html and summary.json
#               (common.smk:get_final_output() decides what `all` means)

from snakemake.utils import min_version

min_version("9.0")

# what Snakemake's own load of the config would take wrongly or end in a traceback (nesting thousands
# deep, an alias cycle, a key given twice, bytes not UTF-8, text not YAML): refused first, in one line
# naming the key. Each --configfile too: Snakemake has loaded it already, so what its load got wrong
# silently (a key given twice) is refused here, before anything is planned.
from tokenshift.config import ConfigError, check_config_file

try:
    for path in ("config/config.yaml", *workflow.overwrite_configfiles):
        check_config_file(path)
except ConfigError as error:
    raise error.with_traceback(None) from None


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/rollouts.smk"
include: "workflow/rules/scores.smk"
include: "workflow/rules/divergence.smk"
include: "workflow/rules/crosssample.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
