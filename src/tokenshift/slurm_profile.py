"""The SLURM profile: ``tokenshift profile install slurm``.

``install_profile`` fills the template in ``tokenshift/profiles/slurm/`` (package data; the repository's
``profiles/slurm`` links to it) with a site's values (account,
partitions, GPU model) and writes it where Snakemake looks for a profile named ``slurm``
(``$XDG_CONFIG_HOME/snakemake/slurm/``), so that ``snakemake --profile slurm all`` works as typed.
Each value is checked first (``check_site``) and the files are written by ``yaml.safe_dump``, so no
value can add a key of its own (an account ``"lab\nslurm_extra: ..."``). What each job asks the
scheduler for is ``tokenshift.cluster``'s.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent / "profiles" / "slurm"
"""The profile template: package data, so ``pip install tokenshift`` has it as a checkout does."""


class ProfileError(ValueError):
    """The profile cannot be written as asked; the message says why."""


def profile_dir(name: str = "slurm") -> Path:
    """Where Snakemake finds ``--profile <name>``: the user's Snakemake config directory."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snakemake" / name


@dataclass(frozen=True)
class SiteSettings:
    """A site's SLURM settings, as ``tokenshift profile install slurm`` takes them."""

    partition: str
    gpu_partition: str
    account: str | None = None
    gpu_model: str | None = None
    gpus_per_node: int = 8
    accounting: bool = True
    """False where ``sacct`` does not work: job status then comes from ``squeue``."""
    status_command: str = "auto"
    """How the executor learns a job's state: ``sacct``, ``squeue``, or ``auto`` (see ``status_command``)."""
    conda: bool = False
    jobs: int = 100
    status_delay: int = 40
    """Seconds before the first status check of a job (the plugin's default is 40)."""
    qos: str | None = None
    """The quality of service every job is submitted with (``sbatch --qos``)."""
    reservation: str | None = None
    """A reservation every job runs in (``sbatch --reservation``)."""
    requeue: bool = False
    """SLURM requeues a job that fails or is preempted (``sbatch --requeue``): its shards resume it."""
    gres: bool = False
    """GPU jobs ask for ``--gres=gpu[:<model>]:<n>`` instead of ``--gpus``, where a site refuses the latter."""
    efficiency_report: bool = False
    """The plugin writes a report of each job's CPU and memory efficiency at the end of the run."""


SITE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
"""A partition or account name the installer writes: letters, digits, ``_``, ``.`` and ``-`` (not first)."""
GPU_MODEL = re.compile(r"[A-Za-z0-9_.]+")
"""A GPU model: what snakemake-executor-plugin-slurm 2.8 accepts in ``--gpus=<model>:<n>`` (its
``gpu_model_re``; it fails every GPU job with another), and the config schema's ``cluster.gpu_model``
pattern, through which the profile passes it (a test keeps the two the same)."""
STATUS_COMMANDS = ("auto", "sacct", "squeue")


def check_site(site: SiteSettings) -> None:
    """Refuse a site value the profile cannot hold as given, naming its option and what is expected."""

    def refuse(field: str, expected: str) -> None:
        option = "--" + field.replace("_", "-")
        raise ProfileError(f"{option} {getattr(site, field)!r}: expected {expected}")

    for field in ("partition", "gpu_partition", "account", "qos", "reservation"):
        value = getattr(site, field)
        optional = field not in ("partition", "gpu_partition")
        if (value is not None or not optional) and not (isinstance(value, str) and SITE_NAME.fullmatch(value)):
            refuse(field, "a name of letters, digits, '_', '.' and '-' (not first), as SLURM names them")
    if site.gpu_model is not None and not (isinstance(site.gpu_model, str) and GPU_MODEL.fullmatch(site.gpu_model)):
        refuse(
            "gpu_model",
            "letters, digits, '_' and '.' only: snakemake-executor-plugin-slurm refuses any other GPU model in "
            "--gpus=<model>:<n>, so every GPU job would fail (leave --gpu-model out where the partition decides)",
        )
    for field, least in (("gpus_per_node", 1), ("jobs", 1), ("status_delay", 0)):
        value = getattr(site, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            refuse(field, f"a whole number of at least {least}")
    for field in ("accounting", "conda", "requeue", "gres", "efficiency_report"):
        if not isinstance(getattr(site, field), bool):
            refuse(field, "true or false")
    if site.status_command not in STATUS_COMMANDS:
        refuse("status_command", f"one of {', '.join(STATUS_COMMANDS)}")


SQUEUE_MIN_JOB_AGE = 120
"""Seconds a finished job must stay visible to squeue for it to report the job's end (the executor's own bound)."""


SCONTROL_TIMEOUT_S = 5
"""How long the profile installer waits for the controller's answer. scontrol itself retries an
unreachable controller for about 10 s per call; a controller that answers at all does so in well
under a second."""


def min_job_age(timeout: float = SCONTROL_TIMEOUT_S) -> int | None:
    """The cluster's MinJobAge (seconds a finished job stays in the controller), or None if unknown:
    no scontrol, or no controller answering within ``timeout`` seconds (said in a warning)."""
    import re
    import subprocess

    try:
        done = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return None
    except (OSError, subprocess.SubprocessError):
        done = None
    m = re.search(r"^MinJobAge\s*=\s*(\d+)", done.stdout, re.M) if done is not None else None
    if m is None:
        why = f"no answer within {timeout:g} s" if done is None else (done.stderr.strip() or "no MinJobAge in it")
        log.warning("`scontrol show config`: %s; MinJobAge unknown, the status command is chosen without it", why)
    return int(m[1]) if m else None


def status_command(site: SiteSettings, job_age: int | None) -> tuple[str, str]:
    """The executor's status command for ``site``, and why (a comment for the profile).

    ``auto`` takes ``squeue`` where there is no accounting, and also where finished jobs stay
    visible to it long enough (MinJobAge >= 120 s): snakemake-executor-plugin-slurm 2.8 reads a
    job cancelled by hand as sacct reports it, ``CANCELLED by <uid>``, which it does not take for
    a failure, so with ``sacct`` the workflow waits for that job forever; squeue says
    ``CANCELLED``, and the job is retried. Elsewhere ``sacct``.
    """
    if site.status_command == "sacct" and not site.accounting:
        raise ProfileError("status command sacct needs accounting, and the site has none (--no-accounting)")
    if site.status_command != "auto":
        return site.status_command, "as asked"
    if not site.accounting:
        return "squeue", "no accounting here: sacct cannot report job states"
    if job_age is not None and job_age >= SQUEUE_MIN_JOB_AGE:
        return "squeue", (
            f"finished jobs stay in squeue for {job_age} s here, and it reports a job cancelled by hand "
            "as cancelled (sacct's 'CANCELLED by <uid>' would leave the workflow waiting)"
        )
    return "sacct", (
        "the accounting database; a job cancelled by hand (scancel) is then not seen to end: stop "
        "Snakemake and start it again"
    )


def render_profile(
    site: SiteSettings, template_dir: Path = TEMPLATE_DIR, *, job_age: int | None = None
) -> dict[str, str]:
    """The profile's files (name -> text) for ``site``: each template's leading comments, then its
    settings with the site's values, written by ``yaml.safe_dump``."""
    import yaml

    if not (template_dir / "config.yaml").is_file():
        raise ProfileError(f"no profile template at {template_dir}: expected its config.yaml and partitions.yaml")
    check_site(site)
    text = {name: (template_dir / name).read_text() for name in ("config.yaml", "partitions.yaml")}
    config = yaml.safe_load(text["config.yaml"])
    command, why = status_command(site, job_age)
    config.update({"jobs": site.jobs, "slurm-init-seconds-before-status-checks": site.status_delay})
    config["slurm-status-command"] = command
    if not site.account:
        config["slurm-no-account"] = True
    if site.conda:
        config["software-deployment-method"] = "conda"
    if site.account:
        config["default-resources"] = {"slurm_account": site.account, **config["default-resources"]}
    # the plugin's own settings for these, each as its flag (`--slurm-qos`, ...) names it
    for key in ("qos", "reservation"):
        if getattr(site, key):
            config[f"slurm-{key}"] = getattr(site, key)
    for key in ("requeue", "efficiency_report"):
        if getattr(site, key):
            config["slurm-" + key.replace("_", "-")] = True
    # what GPU jobs ask for, which the workflow reads from its config: cluster.gpu_model and cluster.gpu_request
    cluster = {"gpu_model": site.gpu_model} if site.gpu_model else {}
    cluster |= {"gpu_request": "gres"} if site.gres else {}
    if cluster:
        config["config"] = [f"cluster={yaml.safe_dump(cluster, default_flow_style=True).strip()}"]
    gpu = {"max_gpu": site.gpus_per_node} | ({"available_gpu_models": [site.gpu_model]} if site.gpu_model else {})
    # one partition for both kinds of job: it takes the GPU partition's limits
    partitions = {site.partition: {"max_gpu": 0}} | {site.gpu_partition: gpu}
    parts = {**yaml.safe_load(text["partitions.yaml"]), "partitions": partitions}
    status = f"# Job states come from {command}: {why}.\n"
    return {
        "config.yaml": _leading_comments(text["config.yaml"]) + status + yaml.safe_dump(config, sort_keys=False),
        "partitions.yaml": _leading_comments(text["partitions.yaml"]) + yaml.safe_dump(parts, sort_keys=False),
    }


def _leading_comments(text: str) -> str:
    """The comment lines a template starts with (its settings' documentation), each ending in a newline."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line + "\n")
    return "".join(lines)


def install_profile(site: SiteSettings, *, target: Path | None = None, force: bool = False) -> list[Path]:
    """Write the profile for ``site`` to ``target`` (``profile_dir()``); returns the files written.

    A profile already there that differs from the one asked for (edited by hand, or made for
    other settings) is kept unless ``force``.
    """
    target = Path(target) if target else profile_dir()
    check_site(site)  # before asking the controller anything
    if target.exists() and not target.is_dir():  # /dev/null, a file: "File exists" said nothing
        raise ProfileError(f"{target} exists and is not a folder; expected a folder to write the profile's files into")
    files = render_profile(site, job_age=min_job_age() if site.status_command == "auto" else None)
    changed = [n for n, text in files.items() if (target / n).is_file() and (target / n).read_text() != text]
    if changed and not force:
        raise ProfileError(
            f"{target / changed[0]} exists and differs from the profile asked for; keep it, or "
            "run again with --force to replace it"
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent that is a file, or not writable
        raise ProfileError(
            f"cannot make the profile folder {target} ({e.strerror}); expected a folder that can be written"
        ) from None
    written = []
    for name, text in files.items():
        (target / name).write_text(text)
        written.append(target / name)
    return written
