"""One home for each setting: the schema's defaults are the dataclasses', and the CLI's flags are built from them."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest
import yaml
from helpers import SECTIONS, cli

from tokenshift.config import SCHEMA_PATH
from tokenshift.options import add_options, from_args, section_values, to_argv
from tokenshift.registry import DIRECTIONS, POLICIES
from tokenshift.settings import (
    AccuracyConfig,
    ClusterConfig,
    CrossSampleConfig,
    CrossSampleGrid,
    DatasetSpec,
    DivergenceConfig,
    ExplorerConfig,
    GradingConfig,
    PromptConfig,
    RolloutConfig,
    SamplingConfig,
    ScoringConfig,
)
from tokenshift.toy.config import AdvantageExperimentConfig, ToyBuildConfig

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
SECTION_CLASSES = [
    SamplingConfig,
    GradingConfig,
    DivergenceConfig,
    RolloutConfig,
    AccuracyConfig,
    ScoringConfig,
    ClusterConfig,
    CrossSampleConfig,
    CrossSampleGrid,
    ToyBuildConfig,
    AdvantageExperimentConfig,
    ExplorerConfig,
]
WORKFLOW_ONLY = {"jobs"}
"""Keys the workflow reads and no stage does: how many jobs a table is split over (a job runs one --part)."""
FLAG_CLASSES = [
    SamplingConfig,
    RolloutConfig,
    AccuracyConfig,
    ScoringConfig,
    CrossSampleConfig,
    ToyBuildConfig,
    AdvantageExperimentConfig,
    DatasetSpec,
    PromptConfig,
    ExplorerConfig,
]


def plain(value):
    """Tuples as the lists YAML gives, mappings as dicts."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def field_defaults(cls) -> dict:
    return {
        f.name: plain(f.default if f.default is not dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(cls)
    }


@pytest.mark.parametrize("section", SECTIONS)
def test_every_schema_default_is_the_dataclass_default_it_feeds(section):
    props = SCHEMA["properties"][section]["properties"]
    fields = {}
    for cls in SECTION_CLASSES:
        if cls.section == section:
            fields.update(field_defaults(cls))
    assert set(props) - WORKFLOW_ONLY == set(fields), f"schema keys and dataclass fields of `{section}` differ"
    for key, spec in props.items():
        assert spec.get("description"), f"{section}.{key} has no description"
        if key in WORKFLOW_ONLY:
            continue
        if key in ("thresholds", "runtime"):  # defaults per policy or stage, one level down
            got = {p: v["default"] for p, v in spec["properties"].items()}
        else:
            got = spec["default"]
        assert got == fields[key], f"{section}.{key}: schema default {got!r}, library default {fields[key]!r}"


BOUNDS = ("minimum", "maximum")


@pytest.mark.parametrize("cls", SECTION_CLASSES, ids=lambda c: c.__name__)
def test_every_bound_of_a_flag_is_the_schema_bound_of_its_key(cls):
    """A value the CLI refuses is refused by the config check, and the other way round (sampling.n, timeout_s, ...)."""
    props = SCHEMA["properties"][cls.section]["properties"]
    for f in dataclasses.fields(cls):
        spec = numeric(props[f.name])
        for bound in BOUNDS:
            if bound in f.metadata:
                # an exclusive bound of the schema (a rate > 0) is the flag's bound, refused by its dataclass
                got = spec.get(bound, spec.get(f"exclusive{bound.title()}"))
                assert got == f.metadata[bound], f"{cls.section}.{f.name}: {bound} {got} in the schema"


def numeric(spec: dict) -> dict:
    """The numeric schema of a key: through a $ref, a list's items, or the number among a oneOf's choices."""
    if "$ref" in spec:
        spec = SCHEMA["$defs"][spec["$ref"].rsplit("/", 1)[1]]
    if "items" in spec:
        spec = spec["items"]
    return next((o for o in spec.get("oneOf", ()) if o.get("type") in ("integer", "number")), spec)


def test_a_datasets_sampling_overrides_are_bounded_as_the_sampling_section():
    entry = SCHEMA["properties"]["datasets"]["additionalProperties"]["properties"]["sampling"]["properties"]
    top = SCHEMA["properties"]["sampling"]["properties"]
    for key, spec in entry.items():
        if "$ref" not in spec:
            assert {b: spec.get(b) for b in BOUNDS} == {b: top[key].get(b) for b in BOUNDS}, key


def test_dataset_entries_are_the_dataset_prompt_and_sampling_settings():
    entry = SCHEMA["properties"]["datasets"]["additionalProperties"]["properties"]
    fields = {f.name for cls in (DatasetSpec, PromptConfig) for f in dataclasses.fields(cls)}
    assert set(entry) == fields | {"sampling"}
    assert set(entry["sampling"]["properties"]) == {f.name for f in dataclasses.fields(SamplingConfig)}


def schema_enums(node, pointer: str = "") -> dict[str, list]:
    """Every ``enum`` of the schema, by its JSON pointer (``properties/grading/properties/mode``)."""
    found = {pointer.lstrip("/"): node["enum"]} if isinstance(node, dict) and "enum" in node else {}
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        found |= schema_enums(child, f"{pointer}/{key}")
    return found


def test_every_enumeration_of_the_schema_is_one_the_code_holds():
    """A value the schema lists is one the code knows, and the other way round: each enum has its home in the
    library (issue 27.3), and a new one must be given one here."""
    from tokenshift.cli import build_parser
    from tokenshift.crosssample import LENGTH_RULES
    from tokenshift.plots.style import KIND_STYLE
    from tokenshift.registry import (
        ADVANTAGE_MODES,
        BACKENDS,
        ENGINES,
        GPU_REQUESTS,
        GRADING_MODES,
        INJECTED_EOS,
        INJECTIONS,
        MODEL_DTYPES,
        THRESHOLD_LEVELS,
    )
    from tokenshift.settings import PRESETS

    models = next(a for a in build_parser()._subparsers._group_actions[0].choices["models"]._actions if a.choices)
    toy_builds = {c.removeprefix("toy-") for c in models.choices if c.startswith("toy-")}
    section = "properties/{}/properties/{}".format
    homes = {
        "$defs/model_spec/properties/toy": toy_builds,  # `tokenshift models toy-<kind>` builds each
        "$defs/model_spec/if/properties/toy": toy_builds - {"base"},  # those trained from a base
        "$defs/model_spec/properties/dtype": MODEL_DTYPES,
        "$defs/percentile/properties/level": THRESHOLD_LEVELS,
        "properties/pairs/items/properties/kind": KIND_STYLE,  # each kind is drawn in its style
        "properties/datasets/additionalProperties/properties/toy": {"eval"},
        "properties/datasets/additionalProperties/properties/preset": PRESETS,
        section("rollout", "backend"): BACKENDS,
        section("rollout", "vllm_dtype"): MODEL_DTYPES,
        section("scoring", "backend"): BACKENDS,
        section("grading", "mode"): GRADING_MODES,
        section("crosssample", "directions") + "/items": DIRECTIONS,
        section("crosssample", "policies") + "/items": POLICIES,
        section("crosssample", "engine"): ENGINES,
        section("crosssample", "injected_eos"): INJECTED_EOS,
        section("crosssample", "injection"): INJECTIONS,
        section("crosssample", "length_rule"): LENGTH_RULES,
        section("cluster", "gpu_request"): GPU_REQUESTS,
        section("advantages", "variants") + "/items": ADVANTAGE_MODES,
    }
    enums = schema_enums(SCHEMA)
    assert set(enums) == set(homes)
    for pointer, values in enums.items():
        assert len(values) == len(set(values)) and set(values) == set(homes[pointer]), pointer
    # a flag's choices are its key's enum
    for cls in SECTION_CLASSES:
        for f in dataclasses.fields(cls):
            if "choices" in f.metadata:
                spec = SCHEMA["properties"][cls.section]["properties"][f.name]
                assert set(f.metadata["choices"]) == set(spec.get("items", spec)["enum"]), f"{cls.section}.{f.name}"


def test_the_schemas_device_is_the_registrys():
    from tokenshift.registry import DEVICE_PATTERN

    assert SCHEMA["$defs"]["device"]["pattern"] == DEVICE_PATTERN


def test_policies_and_directions_are_the_registry():
    cs = SCHEMA["properties"]["crosssample"]["properties"]
    assert set(cs["policies"]["items"]["enum"]) == set(POLICIES)
    assert cs["directions"]["items"]["enum"] == list(DIRECTIONS)
    thresholds = cs["thresholds"]["properties"]
    assert set(thresholds) == {p.name for p in POLICIES.values() if p.configurable}
    for name, spec in thresholds.items():
        absolute = next(o for o in spec["oneOf"] if "threshold" in o.get("properties", {}))["properties"]["threshold"]
        low, high = POLICIES[name].bounds
        assert absolute.get("minimum", -float("inf")) == low
        assert absolute.get("maximum", float("inf")) == pytest.approx(high)


@pytest.mark.parametrize("cls", FLAG_CLASSES, ids=lambda c: c.__name__)
def test_flags_round_trip_through_the_parser(cls):
    parser = argparse.ArgumentParser()
    add_options(parser, cls)
    assert from_args(cls, parser.parse_args([])) == cls()  # no flags: the library's defaults
    changed = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = f.default
        if f.metadata.get("auto"):  # a number instead of auto
            value = 7
        elif f.metadata.get("choices"):
            value = f.metadata["choices"][-1]
            value = (value,) if isinstance(f.default, tuple) else value
        elif value is None:
            value = 3 if "int" in str(hints[f.name]) else "x"
        elif isinstance(value, bool):
            value = not value
        elif isinstance(value, int | float):  # another value, within the option's bounds
            value = (
                value + 1 if value + 1 <= f.metadata.get("maximum", value + 1) else (value + f.metadata["maximum"]) / 2
            )
        elif isinstance(value, tuple):
            value = (*value, 7)
        elif isinstance(value, str) and "{question}" in value:
            value = "Q: {question}"
        else:
            value = "x"
        changed[f.name] = value
    if cls is PromptConfig:
        changed["template"] = "Q: {question}"
    if cls is SamplingConfig:
        changed["top_p"] = 0.5
    if cls in (CrossSampleConfig, ScoringConfig):
        changed["statistic"] = "topk:50"
    if cls is RolloutConfig:
        changed["vllm_gpu_memory_utilization"] = 0.5
    if cls is DivergenceConfig:
        changed.update(high_js_quantile=0.9, high_js_cut=0.1)
    if cls is AdvantageExperimentConfig:
        changed.update(q=0.3, alpha=0.25)  # shares, at most 1
    if cls is ToyBuildConfig:
        changed.update(pretrain_lr=0.003, grpo_lr=2e-4, sft_lr=0.002)  # rates, at most 1
    expected = cls(**changed)
    assert from_args(cls, parser.parse_args(to_argv(cls, changed))) == expected


def test_a_value_is_joined_to_its_flag_so_that_none_is_read_as_an_option():
    # issue 24 (F12): apart, `--opening -x` (or a threshold `--tau -1e-05`) read -x as an option of its own
    argv = to_argv(PromptConfig, {"template": "{question}", "opening": "-x -y"})
    assert argv == ["--template={question}", "--opening=-x -y"]
    parser = argparse.ArgumentParser()
    add_options(parser, PromptConfig)
    assert from_args(PromptConfig, parser.parse_args(argv)).opening == "-x -y"
    with pytest.raises(ValueError, match="pass_k"):  # a sequence's values stay apart: none may look like an option
        to_argv(AccuracyConfig, {"pass_k": []})


def test_cli_defaults_are_the_library_defaults():
    # the drift this guards against: cross-sampling batch_size was 256 in the schema, 64 in the CLI
    out = cli(["crosssample", "--help"]).stdout
    assert f"(default: {CrossSampleConfig().batch_size})" in " ".join(out.split())
    assert CrossSampleConfig().batch_size == SCHEMA["properties"]["crosssample"]["properties"]["batch_size"]["default"]


def test_a_refused_value_exits_2_naming_the_setting(tmp_path):
    r = cli(["models", "toy-base", "t", "--hidden-size", "3", "--out", str(tmp_path / "t")])
    assert r.returncode == 2 and "--hidden-size" in r.stderr and "Traceback" not in r.stderr
    r = cli(["rollout", "--model", "m", "--dataset", "d", "--out", "o.parquet", "--n", "0"])
    assert r.returncode == 2 and "--n" in r.stderr and ">= 1" in r.stderr


@pytest.mark.parametrize(
    ("cls", "name"),
    [(RolloutConfig, "batch_size"), (CrossSampleConfig, "batch_size"), (ScoringConfig, "max_batch_tokens")],
)
def test_a_batch_setting_is_auto_or_a_positive_number(cls, name):
    import jsonschema

    parser = argparse.ArgumentParser()
    add_options(parser, cls)
    assert getattr(from_args(cls, parser.parse_args([])), name) == "auto"
    assert getattr(from_args(cls, parser.parse_args([f"--{name.replace('_', '-')}", "64"])), name) == 64
    for bad in ("0", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args([f"--{name.replace('_', '-')}", bad])
    for bad in (0, "x", True, 2.5):
        with pytest.raises(ValueError, match=f"{name} .*expected 'auto' or an integer >= 1"):
            cls(**{name: bad})
    spec = SCHEMA["properties"][cls.section]["properties"][name]
    for good in ("auto", 1, 512):
        jsonschema.validate(good, spec)
    for bad in (0, "x"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, spec)


def test_every_policy_has_a_colour_of_its_own():
    from tokenshift.plots.style import POLICY

    assert set(POLICY) == set(POLICIES) and len(set(POLICY.values())) == len(POLICY)


def test_a_key_read_under_one_stage_reaches_only_that_stages_jobs():
    # gamma is read under injection extrapolate, max_total_tokens under length_rule after_switch
    section = {"crosssample": {"gamma": 0.5, "max_total_tokens": 512, "injection": "sample"}}
    read = section_values(CrossSampleConfig, section, stage=("response", "sample"))
    assert read == {"injection": "sample"}
    read = section_values(CrossSampleConfig, section, stage=("after_switch", "extrapolate"))
    assert read == section["crosssample"]
    assert section_values(CrossSampleConfig, section, stage="extrapolate").keys() == {"gamma", "injection"}


def test_compile_reaches_scoring_jobs_unless_both_models_are_set_on_the_cpu():
    # second hostile pass: scoring.compile: false re-ran every scoring job of a CPU-only study
    def read(**section):
        return section_values(ScoringConfig, {"scoring": section}, stage=ScoringConfig.stages_read(section))

    assert "compile" not in read(compile=False, device_base="cpu", device_rl="cpu")
    assert read(compile=False, device_base="cpu", device_rl="cuda:1")["compile"] is False  # one on a GPU
    assert read(compile=False)["compile"] is False  # auto: the job may start on a GPU node
    assert "compile" not in read(compile=False, backend="vllm")


def test_each_gamma_is_one_forward_dlogp_run_with_no_budget_beside_the_grid():
    from tokenshift.registry import gamma_label

    grid = CrossSampleGrid.from_config({"policies": ["js"], "gammas": [0.1, 0.05, 1, 0.0000015]})
    assert grid.extrapolation_runs() == [
        ("forward", "dlogp", "all", "0.1"),
        ("forward", "dlogp", "all", "0.05"),
        ("forward", "dlogp", "all", "1"),
        ("forward", "dlogp", "all", "0.000002"),
    ]
    assert all("e" not in gamma_label(g) for g in (1e-6, 1e-5, 123.456789))
    assert CrossSampleGrid.from_config({}).extrapolation_runs() == []


def test_a_list_whose_order_nothing_depends_on_reaches_jobs_and_the_record_sorted():
    """``rollout.pass_k: [4, 1]`` and ``[1, 4]`` give the accuracy job the same flags and the run the same
    recorded config, so reordering it re-runs nothing (the hostile pass of 2026-12-04 re-ran 7 jobs)."""
    from tokenshift.options import recorded_config
    from tokenshift.settings import AccuracyConfig, RolloutConfig

    given = [{"rollout": {"pass_k": order, "threads": 2}} for order in ([4, 1], [1, 4])]
    assert [section_values(AccuracyConfig, c) for c in given] == [{"pass_k": [1, 4]}] * 2
    assert recorded_config(given[0], [AccuracyConfig, RolloutConfig]) == recorded_config(
        given[1], [AccuracyConfig, RolloutConfig]
    )
    assert recorded_config(given[0], [AccuracyConfig])["rollout"]["pass_k"] == [1, 4]
    ranks = [{"divergence": {"rank_k": order}} for order in ([5, 1, 3], [1, 3, 5])]
    assert [section_values(DivergenceConfig, c) for c in ranks] == [{"rank_k": [1, 3, 5]}] * 2


def test_figure_6s_example_run_does_not_move_with_the_order_of_the_policies():
    # thirteenth hostile pass (K8): without js, the first policy listed was the example; reordering re-ran figures
    def example(*policies):
        return CrossSampleGrid.from_config({"policies": list(policies), "budgets": [0, 4, "all"]}).example_runs(96)

    assert example("random", "argmax", "entropy") == example("entropy", "argmax", "random")
    assert example("argmax", "entropy", "random") == (("forward", "random", "all"), ("forward", "random", "0"))
    assert example("random", "js") == (("forward", "js", "all"), ("forward", "js", "0"))
