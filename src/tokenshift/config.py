"""Checks of a workflow config beyond what its JSON schema can say.

The schema (``tokenshift/schemas/config.schema.yaml``, package data that ``workflow/schemas/`` links
to) checks keys, types and ranges; Snakemake's ``validate()`` applies it and fills defaults.
``check_config`` then checks what relates one
part of the config to another: unique pair names, references to models and datasets that
exist, toy models paired only with toy models, local checkpoints that exist, and pairs whose
two tokenizers can be compared (where both are local and neither trusts its own code, which
this check never runs). Every error names the key and the bad value.

Loading two tokenizers costs seconds (transformers' import alone), at every Snakemake start: a
passed comparison is remembered under ``tokenshift.io.cache_dir()``, keyed by the bytes of every
non-weight file of both checkpoints, the transformers/tokenizers versions and this code, so it
runs again only when one of them changes. A failed one is never remembered.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenshift import layout
from tokenshift.options import MAX_INTEGER  # the largest integer a config (or a flag) may hold anywhere
from tokenshift.registry import gamma_label

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
"""The schema's one home: package data, so an installed wheel has it (the workflow's
``workflow/schemas/config.schema.yaml``, where Snakemake's catalog looks, is a link to it)."""

TOY_DATASET_KEYS = {"toy", "n_problems", "sampling"}
"""What a ``toy: eval`` dataset entry may set: any other key would be silently without effect."""

RESERVED = {
    "pairs": {
        "figures",
        "report.html",
        "explorer.html",
        "summary.json",
        "config.yaml",
        "advantages",
        "advantages.log",
        "overview.log",
    },
    "datasets": {"toy_check", "training", "training_shifts", "figures"},
}
"""Names the workflow's own paths take (every literal beside a ``{pair}`` or ``{dataset}`` in the rules'
paths): results/<pair>/ sits beside results/figures/, results/report.html, results/explorer.html,
results/summary.json, results/config.yaml and results/advantages/, and logs/figures/<pair>/ beside
logs/figures/advantages.log and logs/figures/overview.log; results/<pair>/<dataset>/ beside
results/<pair>/toy_check/ and results/<pair>/training/, and logs/figures/<pair>/<dataset>.log beside
logs/figures/<pair>/training_shifts.log."""


# a config error is one line: the value it quotes is cut at VALUE_CHARS, what was expected (which may quote
# the value again) at EXPECTED_CHARS, and jsonschema's message within it at SCHEMA_MESSAGE_CHARS, so the
# schema's description of the key that follows it is still read
VALUE_CHARS, EXPECTED_CHARS, SCHEMA_MESSAGE_CHARS = 160, 600, 300


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConfigError(ValueError):
    """A config value that cannot work; the message names its key."""

    def __init__(self, key: str, value: Any, expected: str):
        self.key = key
        self.value = value
        super().__init__(f"config key {key}: got {_cut(repr(value), VALUE_CHARS)}; {_cut(expected, EXPECTED_CHARS)}")


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _one_folder_each(kind: str, names: list[tuple[str, str]]) -> None:
    """Refuse two ``(key, name)`` whose names differ in case only (``TOY``, ``toy``): on a case-insensitive
    disk (macOS's and Windows' defaults) they are one folder, and one's results would overwrite the other's.
    A name given twice is left to the checks that say so."""
    seen: dict[str, tuple[str, str]] = {}
    for key, name in names:
        first = seen.setdefault(name.casefold(), (key, name))
        if first[1] != name:
            raise ConfigError(
                key,
                name,
                f"differs from {kind} {first[1]!r} ({first[0]}) in case only: on a case-insensitive disk (macOS, "
                "Windows) both are one folder; rename one",
            )


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def validate_schema(config: Mapping[str, Any], schema_path: Path = SCHEMA_PATH) -> None:
    """Check ``config`` against the JSON schema; the first problem becomes a one-line ``ConfigError``.

    Snakemake's ``validate()`` runs after this (it also fills in defaults) but reports a failure
    with the whole schema attached; this names the key, the value and what the schema says of it.
    """
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(_strict_validator(jsonschema)(schema).iter_errors(config))
    if error is None:
        return
    desc = error.schema.get("description") if isinstance(error.schema, dict) else None
    if desc is None and error.parent is not None and isinstance(error.parent.schema, dict):
        desc = error.parent.schema.get("description")
    message = _shortened(error.message, error.instance)
    expected = message if not desc else f"{message}. {' '.join(desc.split())}"
    wants_integer = any(  # the key (or one of its choices) is an integer: not said of number keys (top_p: 0.0)
        e.validator == "type" and "integer" in _as_list(e.validator_value)
        for e in [error, *(error.context or ()), *(error.parent.context if error.parent else ())]
    )
    if wants_integer and isinstance(error.instance, float) and error.instance.is_integer():
        expected += f" (a whole number is written without a decimal point: {int(error.instance)}, not {error.instance})"
    raise ConfigError(_dotted(error.absolute_path), error.instance, expected)


def _shortened(message: str, instance: Any) -> str:
    """jsonschema's ``message`` with the value it quotes whole (``'xxx…' is too long``) cut as
    ``ConfigError`` cuts it, and the whole cut at ``SCHEMA_MESSAGE_CHARS``: one line, not 100,000."""
    whole = repr(instance)
    return _cut(message.replace(whole, _cut(whole, VALUE_CHARS)), SCHEMA_MESSAGE_CHARS)


def _strict_validator(jsonschema):
    """Draft 2020-12 with ``integer`` meaning an int: the draft counts 2.0 an integer, so ``n: 2.0`` passed
    the schema and then failed in a job, and a budget of 1.0 would read as a share of
    max_new_tokens. A bool is no integer either (YAML's ``yes``)."""
    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool)
    )
    base = jsonschema.Draft202012Validator.VALIDATORS["pattern"]

    def pattern(validator, regex, instance, schema):
        # Python's re.search lets a pattern's `$` match before a final newline: "toy\n" passed "^[a-z]+$"
        yield from base(validator, regex, instance, schema)
        if validator.is_type(instance, "string") and regex.endswith("$") and instance.endswith("\n"):
            yield jsonschema.ValidationError(f"{instance!r} ends in a newline, which {regex!r} does not allow")

    return jsonschema.validators.extend(
        jsonschema.Draft202012Validator, validators={"pattern": pattern}, type_checker=checker
    )


def model_source(spec: Mapping[str, Any]) -> str:
    """``path``, ``hub`` or ``toy``: where a (schema-valid) model spec comes from."""
    for source in ("path", "hub", "toy"):
        if source in spec:
            return source
    raise ValueError(f"model spec {dict(spec)!r} names no source")


MAX_CONFIG_VALUES = 100_000
"""More values than any study's config holds (the default has a few hundred); YAML aliases repeated
inside each other (a "billion laughs") expand past it in a few lines, and walking those (as schema
validation does) would never end."""


def check_size(config: Mapping[str, Any], limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuse a config of more than ``limit`` values, counted with its aliases expanded, naming the
    top-level key where the count passed it; the walk stops there."""
    count = 0
    for key, value in config.items():
        stack = [value]
        while stack:
            node = stack.pop()
            count += 1
            if count > limit:
                raise ConfigError(
                    str(key),
                    f"<more than {limit} values>",
                    f"expected a config of at most {limit} values, YAML aliases expanded: is an alias "
                    "repeated inside others (a 'billion laughs')?",
                )
            if isinstance(node, Mapping):
                stack += [*node.keys(), *node.values()]
            elif isinstance(node, list | tuple):
                stack += node


MAX_INTEGER_DIGITS = 4300
"""The most digits Python turns text into an integer of (``sys.get_int_max_str_digits``' default): PyYAML's
ValueError past it named no key (the twenty-second pass)."""


def _huge_integer(event) -> bool:
    """Whether a YAML event is a plain scalar PyYAML reads as an integer of more digits than Python converts."""
    import yaml

    plain = isinstance(event, yaml.ScalarEvent) and event.style is None and len(event.value) > MAX_INTEGER_DIGITS
    return plain and re.fullmatch(r"[-+]?(0[xob])?[0-9a-fA-F_]+", event.value) is not None


MAX_CONFIG_DEPTH = 32
"""More levels of nesting than any config holds (its deepest keys are four down)."""


class _Open:
    """A collection a YAML event stream is inside (``check_config_file``): where the next node goes."""

    A_KEY = object()

    def __init__(self, mapping: bool, key: str | int | None, anchor: str | None):
        self.mapping, self.key, self.anchor = mapping, key, anchor
        self.seen: set = set()  # a mapping's keys so far
        self.items = 0
        self.value_of: str | None = None

    def place(self, event) -> object:
        """``A_KEY`` where ``event`` is a mapping's key; else the key (or index) of the value it is."""
        if not self.mapping:
            self.items += 1
            return self.items - 1
        if self.value_of is None:
            self.value_of = event.value if hasattr(event, "value") and event.value is not None else "?"
            return self.A_KEY
        key, self.value_of = self.value_of, None
        return key


YTE_KEY = "__use_yte__"
"""The top-level key that makes Snakemake load a YAML config as a YTE template: Python, run at the load."""


def check_config_file(path: Path | str, limit: int = MAX_CONFIG_DEPTH) -> None:
    """Refuse, in one line naming the key and the line, a YAML or JSON config file that Snakemake's own
    load would take wrongly or end in a traceback:

    - nested more than ``limit`` levels deep (Snakemake composes it recursively: a few thousand levels
      ended in a RecursionError and a thousand lines of traceback);
    - an alias inside the collection its anchor names (``a: &L {b: *L}``): a cycle, on which Snakemake's
      config merge recursed until a RecursionError;
    - a key given twice in one mapping: YAML loaders keep the last, so a second ``toy:`` block silently
      replaced the first one whole;
    - bytes that are not UTF-8, or text that is not YAML (Snakemake's message named neither the file nor
      the line);
    - a YTE template (``__use_yte__: true``), whose Python Snakemake runs as it loads the file.

    The file is read as a stream of parser events, which does not recurse. The workflow runs this on its
    ``configfile:`` before Snakemake loads it; a ``--configfile`` Snakemake reads before any of the
    workflow's code (docs/pairs.md). A file that is not YAML (nor JSON) is refused naming its line and what is
    wrong there (Snakemake's message named neither); a missing one is left to Snakemake, which names it."""
    import json

    import yaml

    try:
        data = Path(path).read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(
            "(the file)",
            f"<the byte {data[error.start]:#04x} at line {line} of {path}>",
            "expected a UTF-8 text file",
        ) from None
    except OSError:
        return
    opened: list[_Open] = []  # the collections the stream is inside, outermost first

    def name(key=None) -> str:
        parts = [c.key for c in opened[1:]] + ([key] if key is not None else [])
        return _dotted(parts)

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionEndEvent):
                opened.pop()
            if not isinstance(event, yaml.ScalarEvent | yaml.AliasEvent | yaml.CollectionStartEvent):
                continue
            where = f"line {event.start_mark.line + 1} of {path}"
            inside = opened[-1] if opened else None
            key = inside.place(event) if inside else None
            if key is _Open.A_KEY:
                if isinstance(event, yaml.ScalarEvent):
                    if event.value != "<<" and event.value in inside.seen:
                        raise ConfigError(
                            name(event.value),
                            f"<a second {event.value!r} in one mapping, at {where}>",
                            "expected each key once: YAML keeps the last and drops the first without a word",
                        )
                    inside.seen.add(event.value)
                if not isinstance(event, yaml.CollectionStartEvent):
                    continue
                key = "?"  # a collection as a key (YAML's `? [a, b]`): opened like any other
            if _huge_integer(event):
                raise ConfigError(
                    name(key),
                    f"<an integer of {len(event.value)} characters, at {where}>",
                    f"expected a number Python reads (an integer of at most {MAX_INTEGER_DIGITS} digits)",
                )
            if isinstance(event, yaml.AliasEvent) and event.anchor in {c.anchor for c in opened}:
                raise ConfigError(
                    name(key),
                    f"<an alias *{event.anchor} inside the collection &{event.anchor} names, at {where}>",
                    "expected no alias to a collection inside itself (a cycle: an endless config)",
                )
            if isinstance(event, yaml.CollectionStartEvent):
                opened.append(_Open(isinstance(event, yaml.MappingStartEvent), key, event.anchor))
                if len(opened) > limit:
                    top = opened[1].key if len(opened) > 1 else None
                    raise ConfigError(
                        str(top) if top is not None else "(top level)",
                        f"<more than {limit} levels of nesting, at {where}>",
                        f"expected at most {limit} levels (the config's deepest keys are four down)",
                    )
        loaded = yaml.safe_load(text)  # what the events leave: an alias to no anchor, a tag no safe loader constructs
        if isinstance(loaded, dict) and YTE_KEY in loaded:
            raise ConfigError(
                YTE_KEY,
                loaded[YTE_KEY],
                f"a YTE template ({path}) is Python that Snakemake runs as it loads the file; expected plain YAML "
                "(a config is input from strangers: the workflow takes no code in one)",
            )
    except yaml.YAMLError as error:
        try:
            json.loads(text)  # Snakemake reads JSON first: a JSON file YAML refuses (tabs) is a config
        except RecursionError:  # arrays or objects nested past what JSON's parser reads
            _check_json_config(text, path, limit)
        except ValueError:
            mark = getattr(error, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError("(the file)", f"<{problem}{at} of {path}>", "expected a YAML or JSON mapping") from None
        else:
            _check_json_config(text, path, limit)  # which the YAML events above could not read


def _check_json_config(text: str, path: Path | str, limit: int) -> None:
    """``check_config_file``'s checks of a JSON file YAML refuses (tab-indented): no key twice in one object
    (``json`` keeps the last) and at most ``limit`` levels of nesting."""
    import json

    twice: list[tuple[dict, str]] = []  # the first object seen to hold a key twice, and that key

    def unique(pairs):
        mapping: dict = {}
        for k, v in pairs:
            if k in mapping and not twice:
                twice.append((mapping, k))
            mapping[k] = v
        return mapping

    try:
        loaded = json.loads(text, object_pairs_hook=unique)
    except RecursionError:
        raise ConfigError(
            "(top level)", f"<nested past what JSON's parser reads, in {path}>", f"expected at most {limit} levels"
        ) from None
    stack = [(loaded, [], 1)]  # not recursive: the nesting is what is checked
    while stack:
        node, where, depth = stack.pop()
        if depth > limit:
            nested = f"<more than {limit} levels of nesting, in {path}>"
            raise ConfigError(_dotted(where[:1]), nested, f"expected at most {limit} levels")
        if twice and node is twice[0][0]:
            raise ConfigError(
                _dotted([*where, twice[0][1]]),
                f"<a second {twice[0][1]!r} in one mapping, in {path}>",
                "expected each key once: JSON keeps the last and drops the first without a word",
            )
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack.extend((child, [*where, k], depth + 1) for k, child in children if isinstance(child, dict | list))


def check_finite(node: Any, key: str = "") -> None:
    """Refuse a NaN or infinite number anywhere in the config, naming its key: a JSON schema's
    ``minimum``/``maximum`` compare false for NaN, so NaN passes every bound (a temperature of NaN
    sampled garbage), and no setting takes an infinity (``all`` is the unlimited budget); nor an
    integer past ``MAX_INTEGER``, whatever key holds it."""
    for value, where in _leaves(node, key):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(where, value, "expected a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            raise ConfigError(where, value, f"expected a number of at most 2**63 - 1 ({MAX_INTEGER})")


def _leaves(node: Any, key: str = "", *, names: bool = False) -> Iterator[tuple[Any, str]]:
    """(value, its key) of every value in ``node`` that is no mapping or list, depth first, the key spelt as
    errors name it (``a.b[2]``; ``<config>`` for ``node`` itself); with ``names``, each mapping's keys too,
    each under the key it names, before its value."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            child = f"{key}.{k}" if key else str(k)
            if names:
                yield k, child
            yield from _leaves(v, child, names=names)
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{key}[{i}]", names=names)
    else:
        yield node, key or "<config>"


MAX_STRING_BYTES = 32_768
"""The longest string a config may hold (UTF-8 bytes): far past any name, path, id or prompt template, and
a quarter of what Linux lets one argument of a command be (``MAX_ARG_STRLEN``, 128 KiB). A value reaching a
job's command line past that failed as "Argument list too long"."""


def check_strings(node: Any, key: str = "") -> None:
    """Refuse a string no job can take anywhere in the config, naming its key: one holding a NUL byte (no
    command-line argument, path or environment value can: the job failed as it started), one that is not
    text (a lone surrogate) or one of more than ``MAX_STRING_BYTES`` bytes."""
    for value, where in _leaves(node, key, names=True):
        if not isinstance(value, str):
            continue
        if "\0" in value:
            raise ConfigError(where, value, "expected a string without a NUL byte (\\0)")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as e:  # half a surrogate pair, from a JSON "\ud800": no file or log can hold it
            raise ConfigError(
                where,
                value,
                f"expected text: {value[e.start]!r} at character {e.start} is half of a UTF-16 surrogate pair, no "
                "character",
            ) from None
        if size > MAX_STRING_BYTES:
            raise ConfigError(
                where,
                value,
                f"expected a string of at most {MAX_STRING_BYTES} bytes (this one has {size}): past that it cannot "
                "reach a job's command line",
            )


MAX_COMMAND_BYTES = 120_000
"""The most bytes a value (the recorded settings, the job that writes ``results/config.yaml`` takes as one
shell-quoted argument) or a list of paths (every cross-sampling run, which the explorer takes) may take on a job's
command line: under the 128 KiB Linux lets one argument be (``MAX_ARG_STRLEN``; the whole command is one argument
of ``bash -c``), with room for the rest of the command."""


def check_command_paths(key: str, what: str, paths: Sequence[str]) -> None:
    """``ConfigError`` naming ``key`` where ``paths``, shell-quoted, could not reach the command line of the job
    that takes them all (``what``): the plan was made and that job could never start, at the end of the study
    (the twenty-first pass: the explorer's, for a grid of 3,000 cross-sampling runs)."""
    import shlex

    size = len(shlex.join(paths).encode("utf-8"))
    if size > MAX_COMMAND_BYTES:
        raise ConfigError(
            key,
            f"<{len(paths)} files>",
            f"{what} takes their {len(paths)} paths on its command line, {size} bytes, past the {MAX_COMMAND_BYTES} "
            "it allows: expected fewer of them (a smaller grid, fewer datasets or pairs, or shorter names)",
        )


def recorded_settings(config: Mapping[str, Any], settings: Sequence[type]) -> str:
    """The settings the study's results depend on (``options.recorded_config``) as the JSON text the job writing
    ``results/config.yaml`` takes; refused, naming the longest value, where it could not reach that job's command
    line (each string may be 32 KiB, ``MAX_STRING_BYTES``, but not all of them together)."""
    import shlex

    from tokenshift.options import recorded_config

    recorded = recorded_config(config, settings)
    text = json.dumps(recorded, sort_keys=True, default=str, ensure_ascii=False)
    size = len(shlex.quote(text).encode("utf-8"))
    if size > MAX_COMMAND_BYTES:
        strings = [(v, k) for v, k in _leaves(recorded) if isinstance(v, str)]
        longest, key = max(strings, key=lambda found: len(found[0].encode("utf-8")))
        raise ConfigError(
            key,
            longest,
            f"the recorded settings take {size} bytes on the command line of the job that writes results/config.yaml,"
            f" past the {MAX_COMMAND_BYTES} it allows (the longest value: this one, {len(longest.encode())} bytes):"
            " expected shorter values",
        )
    return text


def check_workflow_config(
    config: dict[str, Any],
    schema_path: Path,
    fill_defaults: Callable[[dict[str, Any], str], None],
    *,
    base_dir: Path | None = None,
) -> list[str]:
    """Everything the workflow checks before it builds its DAG, in its order; returns the warnings.

    Its size first (``check_size``: aliases can expand a few lines past any walk's end), then that
    every number is finite (``check_finite``: NaN passes a schema's bounds) and every string one a job can
    take (``check_strings``), the schema,
    as one line naming the key (``validate_schema``); then ``fill_defaults(config,
    schema_path)`` (the workflow passes Snakemake's ``validate``, which also fills the schema's
    defaults in); then what relates one part of the config to another (``check_config``).
    """
    check_size(config)
    check_finite(config)
    check_strings(config)
    validate_schema(config, schema_path)
    fill_defaults(config, str(schema_path))
    check_config(config, base_dir=base_dir)
    return config_warnings(config)


def check_config(config: Mapping[str, Any], *, base_dir: Path | None = None) -> None:
    """Raise ``ConfigError`` for the first cross-reference problem in a schema-valid config, one section's
    checks after another.

    ``base_dir`` is where relative ``path`` entries are resolved (the working directory when
    None), as Snakemake does.
    """
    base_dir = Path.cwd() if base_dir is None else base_dir
    _check_paths(config, base_dir)
    _check_models(config, base_dir)
    _check_names(config)
    _check_datasets(config, base_dir)
    _check_pairs(config, base_dir)
    _check_crosssample(config)
    _check_toy(config)
    _check_scoring(config)
    _check_divergence(config)
    _check_devices(config)


def _check_devices(config: Mapping[str, Any]) -> None:
    """Each ``device_base``/``device_rl`` names GPUs one node can hold, each once: a job asks the scheduler
    for GPUs up to the highest index it names (``cluster.job_resources``), so ``cuda:99999`` asked for
    100,000, and ``cuda:0,0`` spreads one model over one GPU twice."""
    from tokenshift.memory import MAX_NODE_GPUS, gpu_ids

    for section in ("scoring", "crosssample"):
        for role in ("base", "rl"):
            key = f"{section}.device_{role}"
            device = config.get(section, {}).get(f"device_{role}")
            ids = gpu_ids(device) if isinstance(device, str) else []
            if len(set(ids)) < len(ids):
                raise ConfigError(key, device, "expected each GPU once (cuda:0,1 spreads a model over two)")
            if ids and max(ids) >= MAX_NODE_GPUS:
                raise ConfigError(
                    key,
                    device,
                    f"a job's GPUs are numbered from 0 on one node, and the job would ask for {max(ids) + 1}: "
                    f"expected indices below {MAX_NODE_GPUS}",
                )


def _check_divergence(config: Mapping[str, Any]) -> None:
    """``divergence.rank_k`` holds the k the report's headline and the reallocation figure read."""
    from tokenshift.registry import HEADLINE_RANK_K

    rank_k = config.get("divergence", {}).get("rank_k")
    missing = [k for k in HEADLINE_RANK_K if rank_k is not None and k not in rank_k]
    if missing:
        raise ConfigError(
            "divergence.rank_k",
            rank_k,
            f"the report's headline and the reallocation figure read k = {', '.join(map(str, HEADLINE_RANK_K))} "
            f"(RL's top token is the base model's own, and in its top 3): expected a list holding {missing[0]} too",
        )


def _check_paths(config: Mapping[str, Any], base_dir: Path) -> None:
    """Each model's and dataset's ``path:`` one this system can look up: a name too long for it, or a loop
    of links, is refused naming the key (a path merely missing is left to the section's own check)."""
    for section in ("models", "datasets"):
        for name, spec in config.get(section, {}).items():
            if "path" not in spec:
                continue
            path = base_dir / spec["path"]
            try:
                path.stat()  # as the jobs spell it: `./` 2,000 times over is too long a name, though it resolves
                path.resolve().stat()
            except FileNotFoundError:
                continue
            except (OSError, RuntimeError) as e:  # ENAMETOOLONG, ELOOP (RuntimeError from resolve() before 3.13)
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise ConfigError(
                    f"{section}.{name}.path", spec["path"], f"expected a path this system can look up ({why})"
                ) from None


def _check_models(config: Mapping[str, Any], base_dir: Path) -> None:
    """Each model entry: its attention implementation, a local checkpoint that can be read as given, a toy
    model's ``init``."""
    models = config["models"]
    for name, spec in models.items():
        source = model_source(spec)
        if "attn_implementation" in spec:
            _check_attention(f"models.{name}.attn_implementation", spec["attn_implementation"])
        if source == "path":
            _no_wildcards(f"models.{name}.path", spec["path"])
            p = base_dir / spec["path"]
            models_dir = (base_dir / "resources" / "models").resolve()
            if p.resolve() == models_dir or models_dir in p.resolve().parents:
                # the fetch job's output: Snakemake deletes it before the job runs, the checkpoint with it
                raise ConfigError(
                    f"models.{name}.path",
                    spec["path"],
                    "expected a checkpoint outside resources/models/, where the workflow writes its own",
                )
            if not p.is_dir():
                raise ConfigError(f"models.{name}.path", spec["path"], "expected an existing checkpoint directory")
            if not (p / "config.json").is_file():
                raise ConfigError(
                    f"models.{name}.path",
                    spec["path"],
                    "expected a directory with config.json (a Hugging Face checkpoint)",
                )
            from tokenshift.checkpoints import custom_code, linked_files, unreadable_files
            from tokenshift.tokenizer import TOKENIZER_FILES, has_tokenizer

            if not spec.get("trust_remote_code") and custom_code(p):
                raise ConfigError(
                    f"models.{name}.path",
                    spec["path"],
                    "its config.json names code of its own (auto_map), which transformers runs only when trusted: "
                    f"set models.{name}.trust_remote_code: true if you trust it",
                )

            for f in linked_files(p, bool(spec.get("trust_remote_code"))):  # each a Snakemake input too
                _no_wildcards(f"models.{name}.path", spec["path"], f.name)
            if odd := unreadable_files(p, bool(spec.get("trust_remote_code"))):  # the fetch would leave it out
                raise ConfigError(
                    f"models.{name}.path",
                    spec["path"],
                    f"its {odd[0].name} is no regular file (a broken or looping link, a directory, a pipe): "
                    "expected the checkpoint's files",
                )
            if not spec.get("trust_remote_code") and not has_tokenizer(p):
                raise ConfigError(
                    f"models.{name}.path",
                    spec["path"],
                    f"expected a checkpoint with its tokenizer (one of {', '.join(TOKENIZER_FILES)}); "
                    "a tuned model's is its base model's: copy it in",
                )
        if source == "toy" and spec["toy"] == "base" and "init" in spec:
            raise ConfigError(
                f"models.{name}.init",
                spec["init"],
                "expected no init on a `toy: base` model, which is built from nothing (init is where `toy: rl` "
                "and `toy: sft` training starts)",
            )
        if source == "toy" and spec["toy"] in ("rl", "sft"):
            init = spec["init"]
            if init not in models:
                raise ConfigError(f"models.{name}.init", init, f"expected one of the models: {sorted(models)}")
            if models[init].get("toy") != "base":
                raise ConfigError(
                    f"models.{name}.init",
                    init,
                    f"expected a model with `toy: base`: {spec['toy'].upper()} starts from the toy base model",
                )


def _check_dataset_fields(name: str, spec: Mapping[str, Any], path: Path) -> None:
    """A local dataset's rows: some, at least ``n_problems`` of them, and its ``question_field``,
    ``answer_field`` and ``id_field`` among their fields: a parquet file's columns, a JSONL file's first row's
    keys (the dataset job checks every row). A file that cannot be read so is left to that job, which names
    what is wrong with it."""
    import json

    from tokenshift.settings import ROW_FIELDS

    fields = {key: spec.get(key) or default for key, default in ROW_FIELDS.items()}
    try:
        if path.suffix == ".parquet":
            import polars as pl

            table = pl.scan_parquet(path, glob=False)  # the file named: polars would take [, * or ? as a glob
            held = table.collect_schema().names()
            rows = table.select(pl.len()).collect().item()
        else:
            with path.open(encoding="utf-8-sig") as f:
                lines = (line for line in f if line.strip())
                first = next(lines, None)
                # the rest counted only where n_problems asks how many: this runs at every Snakemake start
                rows = (first is not None) + (sum(1 for _ in lines) if spec.get("n_problems") else 0)
            row = json.loads(first) if first is not None else {}
            if not isinstance(row, dict):
                return
            held = list(row)
    except Exception:  # not UTF-8, not JSON, nested past the parser, not parquet: the job's one-line error
        return
    if not rows:
        raise ConfigError(f"datasets.{name}.path", spec["path"], "holds no rows; expected a dataset's problems")
    if (spec.get("n_problems") or 0) > rows:  # the job refuses it too, after the rollouts' plan was made on it
        raise ConfigError(
            f"datasets.{name}.n_problems", spec["n_problems"], f"expected at most the {rows} rows of {spec['path']}"
        )
    for key, field in fields.items():
        if field is not None and field not in held:
            shown = ", ".join(map(repr, held[:12])) + (", ..." if len(held) > 12 else "")
            raise ConfigError(
                f"datasets.{name}.{key}",
                field,
                f"expected a field of the rows of {spec['path']}, which have {shown or 'none'}; set "
                f"datasets.{name}.{key} to the one that holds it",
            )


def _check_names(config: Mapping[str, Any]) -> None:
    """Names that would be one folder, or a path of the workflow's own."""
    models, datasets = config["models"], config.get("datasets", {})
    _one_folder_each("model", [(f"models.{name}", name) for name in models])
    _one_folder_each("dataset", [(f"datasets.{name}", name) for name in datasets])
    _one_folder_each("pair", [(f"pairs[{i}].name", pair["name"]) for i, pair in enumerate(config["pairs"])])
    for name in models:
        if name.casefold().endswith(".json"):  # any case: one path on a case-insensitive file system
            raise ConfigError(
                "models",
                name,
                "a model name must not end in .json: resources/models/<name>.json is the manifest of model <name>",
            )


def _check_datasets(config: Mapping[str, Any], base_dir: Path) -> None:
    """Each dataset entry, and the sampling settings it is drawn with."""
    datasets = config.get("datasets", {})
    for name, spec in datasets.items():
        if name.casefold() in {r.casefold() for r in RESERVED["datasets"]}:
            raise ConfigError(
                "datasets",
                name,
                f"this name is taken by the workflow's own paths ({sorted(RESERVED['datasets'])}); rename the dataset",
            )
        if "path" in spec:
            _no_wildcards(f"datasets.{name}.path", spec["path"])
            parents = (base_dir / spec["path"]).resolve().parents
            if any((base_dir / d).resolve() in parents for d in layout.WRITTEN):
                # an output of a job: Snakemake took it as the source of the job that makes it, or looped
                raise ConfigError(
                    f"datasets.{name}.path",
                    spec["path"],
                    f"expected a file outside {', '.join(d + '/' for d in layout.WRITTEN)}, where the workflow writes "
                    "its own (a dataset's table there was taken as prepared, its settings ignored)",
                )
        if "path" in spec and not (base_dir / spec["path"]).is_file():
            raise ConfigError(f"datasets.{name}.path", spec["path"], "expected an existing .jsonl or .parquet file")
        if "path" in spec:
            _check_dataset_fields(name, spec, base_dir / spec["path"])
        if "toy" not in spec:
            from tokenshift.settings import PromptConfig

            try:
                PromptConfig.for_dataset(spec)
            except ValueError as e:
                raise ConfigError(f"datasets.{name}.template", spec.get("template"), str(e)) from None
        if "toy" in spec:
            ignored = sorted(set(spec) - TOY_DATASET_KEYS)
            if ignored:
                raise ConfigError(
                    f"datasets.{name}.{ignored[0]}",
                    spec[ignored[0]],
                    f"the toy task's problems and prompt are its own; a toy dataset takes only "
                    f"{sorted(TOY_DATASET_KEYS)}",
                )
    for name in datasets:
        sampling = dataset_sampling(config, name)
        n = sampling.get("n", 1)
        for j, k in enumerate(config.get("rollout", {}).get("pass_k", [])):
            if k > n:
                raise ConfigError(
                    f"rollout.pass_k[{j}]",
                    k,
                    f"pass@k needs k <= the samples per problem of dataset {name!r} (sampling.n = {n})",
                )
        if sampling.get("temperature", 1.0) == 0 and n > 1:
            key = f"datasets.{name}.sampling.n" if "n" in datasets[name].get("sampling", {}) else "sampling.n"
            raise ConfigError(
                key,
                n,
                f"temperature 0 is greedy decoding, so the {n} samples of dataset {name!r} "
                "would be one response repeated; set n: 1, or a temperature above 0",
            )


def _check_pairs(config: Mapping[str, Any], base_dir: Path) -> None:
    """Each pair: a unique name, two models that exist and differ, datasets that exist, comparable tokenizers."""
    models, datasets = config["models"], config.get("datasets", {})
    seen: dict[str, int] = {}
    for i, pair in enumerate(config["pairs"]):
        key = f"pairs[{i}]"
        if pair["name"].casefold() in {r.casefold() for r in RESERVED["pairs"]}:
            raise ConfigError(
                f"{key}.name",
                pair["name"],
                f"this name is taken by the workflow's own paths ({sorted(RESERVED['pairs'])}); rename the pair",
            )
        if pair["name"] in seen:
            raise ConfigError(
                f"{key}.name", pair["name"], f"pair names must be unique; pairs[{seen[pair['name']]}] has it already"
            )
        seen[pair["name"]] = i
        for role in ("base", "rl"):
            if pair[role] not in models:
                raise ConfigError(f"{key}.{role}", pair[role], f"expected one of the models: {sorted(models)}")
        if pair["base"] == pair["rl"]:
            raise ConfigError(f"{key}.rl", pair["rl"], "base and rl must be two different models")
        if _same_checkpoint(models[pair["base"]], models[pair["rl"]], base_dir):
            raise ConfigError(
                f"{key}.rl",
                pair["rl"],
                f"base and rl must be two different models; {pair['base']!r} is the same checkpoint",
            )
        for ds in pair.get("datasets", []):
            if ds not in datasets:
                raise ConfigError(f"{key}.datasets", ds, f"expected one of the datasets: {sorted(datasets)}")
        _check_pair_tokenizers(key, pair, models, base_dir, chat=pair_chat(config, pair))


def advantage_base(config: Mapping[str, Any]) -> str | None:
    """The model the advantage experiment's GRPO starts from: the toy base model, where the toy RL build starts
    (the init of a toy RL model a pair compares, else a toy base model a pair compares), the first by name, so
    that no order in the config moves it; None where no pair compares two toy models (no experiment)."""
    models = config["models"]
    toy_pairs = [p for p in config["pairs"] if "toy" in models[p["base"]] and "toy" in models[p["rl"]]]
    inits = {models[p["rl"]]["init"] for p in toy_pairs if models[p["rl"]]["toy"] == "rl"}
    bases = {p[role] for p in toy_pairs for role in ("base", "rl") if models[p[role]]["toy"] == "base"}
    return min(inits or bases, default=None)


def toy_check_problems(config: Mapping[str, Any], pair: Mapping[str, Any]) -> tuple[int, str]:
    """How many toy eval problems a toy pair's check draws, and the key that sets it: as many as the largest toy
    dataset the pair is evaluated on (whatever the order of ``datasets``, and not a toy dataset no pair uses),
    else ``EVAL_PROBLEMS`` (no key sets it: ``toy.max_steps`` bounds how many there are)."""
    from tokenshift.toy.task import EVAL_PROBLEMS

    datasets = config.get("datasets", {})
    return max(
        (
            (datasets[d].get("n_problems", EVAL_PROBLEMS), f"datasets.{d}.n_problems")
            for d in pair.get("datasets", [])
            if "toy" in datasets[d]
        ),
        default=(EVAL_PROBLEMS, "toy.max_steps"),
    )


def pair_chat(config: Mapping[str, Any], pair: Mapping[str, Any]) -> bool:
    """Whether a dataset of the pair is prompted through the chat template (where the models have one), so
    that its two models must prompt a question alike (``tokenizer.chat_prompt_difference``)."""
    from tokenshift.settings import PromptConfig

    datasets = config.get("datasets", {})
    return any(PromptConfig.for_dataset(datasets[d]).chat_template for d in pair.get("datasets", []))


def _check_crosssample(config: Mapping[str, Any]) -> None:
    """The cross-sampling grid: its extrapolation runs, length rule, thresholds, engine and statistic."""
    from tokenshift.registry import POLICIES, TOPK_STATISTICS
    from tokenshift.settings import CrossSampleConfig, CrossSampleGrid

    datasets = config.get("datasets", {})
    cross = config.get("crosssample", {})
    labels: dict[str, float] = {}
    for j, g in enumerate(cross.get("gammas", [])):
        if (label := gamma_label(g)) in labels:
            raise ConfigError(
                f"crosssample.gammas[{j}]", g, f"the same run as {labels[label]} (gammas are read to six decimals)"
            )
        labels[label] = g
    if not any(pair.get("crosssample", True) for pair in config.get("pairs", [])):
        return  # no pair cross-samples: the section is read by no job (each pair's own switch, pairs[].crosssample)
    directions = cross.get("directions", CrossSampleGrid.directions)
    if cross.get("gammas") and "forward" not in directions:
        raise ConfigError(
            "crosssample.gammas",
            cross["gammas"],
            f"the extrapolation runs are forward runs, drawn beside the grid's forward ones, and directions is "
            f"{list(directions)}: add forward to crosssample.directions, or set gammas: []",
        )
    if cross.get("length_rule") == "after_switch":
        total = cross.get("max_total_tokens", CrossSampleConfig.max_total_tokens)
        for name in datasets:
            max_new = dataset_sampling(config, name).get("max_new_tokens", 0)
            if total < max_new:
                raise ConfigError(
                    "crosssample.max_total_tokens",
                    total,
                    f"under length_rule after_switch a response may run to max_total_tokens, which must be at "
                    f"least the max_new_tokens of dataset {name!r} ({max_new})",
                )
    for policy, spec in cross.get("thresholds", {}).items():
        try:
            POLICIES[policy].per_row(spec)  # a level its statistic can be taken at
        except ValueError as e:
            raise ConfigError(f"crosssample.thresholds.{policy}", dict(spec), str(e)) from None
    if cross.get("engine") == "regenerate":
        from tokenshift.registry import DEFAULT_POLICIES, regenerate_refuses

        statistic = cross.get("statistic", CrossSampleConfig.statistic)
        topk = CrossSampleConfig(statistic=statistic).topk
        for policy in cross.get("policies", DEFAULT_POLICIES):
            refused = regenerate_refuses(
                policy,
                cross.get("injected_eos", CrossSampleConfig.injected_eos),
                cross.get("injection", CrossSampleConfig.injection),
                topk,
            )
            if refused:
                key, why = refused
                shown = cross.get(key, getattr(CrossSampleConfig, key))
                raise ConfigError(f"crosssample.{key}", shown, f"{why}; or use engine lockstep")
        if cross.get("gammas"):
            raise ConfigError(
                "crosssample.gammas",
                cross["gammas"],
                "the extrapolation runs beside the grid draw by extrapolation, which engine regenerate does not "
                "(injection sample only): gammas: [], or engine lockstep",
            )
    if cross.get("statistic", "exact") != "exact":
        for policy, spec in cross.get("thresholds", {}).items():
            pol = POLICIES[policy]
            selected = policy in cross.get("policies", POLICIES) and pol.statistic in TOPK_STATISTICS
            if selected and pol.needs_scores(spec):
                raise ConfigError(
                    f"crosssample.thresholds.{policy}",
                    dict(spec),
                    f"a percentile over the dataset is one of the exact statistic; with statistic "
                    f"{cross['statistic']} give it a level (prompt or response) or an absolute threshold",
                )


def _check_toy(config: Mapping[str, Any]) -> None:
    """The toy build and the advantage experiment: settings a toy task and model can take."""
    from tokenshift.toy.config import AdvantageExperimentConfig, ToyBuildConfig, grpo_batch_refusal

    given = config.get("toy") or {}
    low, high = (given.get(k, getattr(ToyBuildConfig, k)) for k in ("min_steps", "max_steps"))
    if low > high:  # named here, before the settings refuse it in a line that names no key
        raise ConfigError("toy.min_steps", low, f"expected at most toy.max_steps ({high})")
    toy = ToyBuildConfig.from_mapping(given)
    if toy.hidden_size % 8:
        raise ConfigError(
            "toy.hidden_size",
            toy.hidden_size,
            "a multiple of 8: the toy model's attention heads each take an even width (rotary embeddings)",
        )
    _check_toy_lengths(config, toy)
    adv = config.get("advantages", {})
    prompts = adv.get("prompts_per_step", AdvantageExperimentConfig.prompts_per_step)
    group = adv.get("group_size", AdvantageExperimentConfig.group_size)
    if refusal := grpo_batch_refusal(prompts, group):
        raise ConfigError("advantages.group_size", group, refusal)
    _check_toy_problems(config, toy)


def _check_scoring(config: Mapping[str, Any]) -> None:
    """What ``scoring.backend`` and ``scoring.statistic`` can compute, and what the stages that read
    the score tables can take of a top-K statistic."""
    from tokenshift.registry import DIRECTIONS, POLICIES, RANK_BUCKETS, TOPK_SCORE_COLUMNS
    from tokenshift.settings import DivergenceConfig, statistic_k

    scoring = config.get("scoring", {})
    statistic = scoring.get("statistic", "exact")
    k = statistic_k(statistic)  # the schema's pattern holds
    if scoring.get("backend") == "vllm" and k is None:
        raise ConfigError(
            "scoring.backend",
            "vllm",
            "vLLM returns at most K log-probs per position, which give no exact JS, KL or entropy: set "
            "scoring.statistic to topk:K (the authors' K: 50), or use backend hf",
        )
    if k is None:
        return
    for j, r in enumerate(config.get("divergence", {}).get("rank_k", DivergenceConfig.rank_k)):
        if r > k:
            raise ConfigError(
                f"divergence.rank_k[{j}]",
                r,
                f"under scoring.statistic {statistic} a rank is known below {k} only (K means K or more): "
                f"expected at most {k}",
            )
    if k < RANK_BUCKETS:
        raise ConfigError(
            "scoring.statistic",
            statistic,
            f"the reallocation table counts the ranks 0 to {RANK_BUCKETS - 1} of RL's top token under the base "
            f"model, and under topk:K a rank is known below K only: expected K >= {RANK_BUCKETS}",
        )
    cross = config.get("crosssample", {})
    for policy, spec in cross.get("thresholds", {}).items():
        pol = POLICIES[policy]
        if policy not in cross.get("policies", POLICIES) or not pol.needs_scores(spec):
            continue
        columns = sorted({c for d in DIRECTIONS for c in pol.score_columns_for(d)} & set(TOPK_SCORE_COLUMNS))
        if columns:
            raise ConfigError(
                f"crosssample.thresholds.{policy}",
                dict(spec),
                f"a percentile over the dataset is read off the score tables, whose {', '.join(columns)} are of "
                f"each model's top {k} tokens under scoring.statistic {statistic}, not of what the {policy} policy "
                "selects on; give it a level (prompt or response) or an absolute threshold",
            )


def _check_toy_lengths(config: Mapping[str, Any], toy) -> None:
    """Refuse a dataset's max_new_tokens that a toy model of a pair using it cannot hold after the longest
    prompt the toy task draws (``toy.task.longest_prompt``) in its context (``toy.config.TOY_CONTEXT``): the
    first rollout failed after the toy builds. The same of ``crosssample.max_total_tokens`` under
    ``length_rule: after_switch``, the longest cross-sampled response (its budget-all job failed)."""
    from tokenshift.settings import SamplingConfig
    from tokenshift.toy.config import TOY_CONTEXT
    from tokenshift.toy.task import longest_prompt

    models = config["models"]
    prompt = longest_prompt(toy.task)
    toy_pairs = [p["name"] for p in config["pairs"] if any("toy" in models[p[role]] for role in ("base", "rl"))]
    for pair in config["pairs"]:
        if pair["name"] not in toy_pairs:
            continue
        for name in pair.get("datasets", []):
            max_new = dataset_sampling(config, name).get("max_new_tokens", SamplingConfig().max_new_tokens)
            if max_new + prompt > TOY_CONTEXT:
                own = "max_new_tokens" in config["datasets"][name].get("sampling", {})
                where = f"datasets.{name}.sampling" if own else "sampling"
                raise ConfigError(
                    f"{where}.max_new_tokens",
                    max_new,
                    f"at most {TOY_CONTEXT - prompt}: the toy models' context of {TOY_CONTEXT} positions holds the "
                    f"prompt too, up to {prompt} tokens at toy.max_steps {toy.max_steps} (pair {pair['name']!r})",
                )
    cross = config.get("crosssample", {})
    if toy_pairs and cross.get("length_rule") == "after_switch":  # a cross-sampled response runs to max_total_tokens
        from tokenshift.settings import CrossSampleConfig

        total = cross.get("max_total_tokens", CrossSampleConfig.max_total_tokens)
        if total + prompt > TOY_CONTEXT:
            raise ConfigError(
                "crosssample.max_total_tokens",
                total,
                f"at most {TOY_CONTEXT - prompt} under length_rule after_switch, where a cross-sampled response may "
                f"run to max_total_tokens: the toy models' context of {TOY_CONTEXT} positions holds the prompt too, "
                f"up to {prompt} tokens at toy.max_steps {toy.max_steps} (pair {toy_pairs[0]!r})",
            )


def _check_toy_problems(config: Mapping[str, Any], toy) -> None:
    """Refuse asking the toy task for more distinct problems than its settings allow (``toy.min_steps``
    to ``toy.max_steps`` operations): the draw ended in a traceback in the job. Each count the
    study draws is checked where a pair uses it: a toy dataset's ``n_problems`` (and each toy check's,
    ``toy_check_problems``), the toy models' training problems, the advantage experiment's."""
    from tokenshift.toy.config import AdvantageExperimentConfig
    from tokenshift.toy.task import EVAL_PROBLEMS, split_capacity

    models, datasets = config["models"], config.get("datasets", {})
    pairs = config["pairs"]
    used = {d for p in pairs for d in p.get("datasets", [])}
    toy_datasets = [d for d, spec in datasets.items() if "toy" in spec]
    asked = [
        (f"datasets.{d}.n_problems", datasets[d].get("n_problems", EVAL_PROBLEMS), "eval")
        for d in toy_datasets
        if d in used
    ]
    if any("toy" in models[p[role]] for p in pairs for role in ("base", "rl")):
        asked.append(("toy.n_train_problems", toy.n_train_problems, "train"))
    for pair in pairs:
        if models[pair["rl"]].get("toy") == "rl":  # the toy check of the pair (toy_check_problems)
            n, key = toy_check_problems(config, pair)
            asked.append((key, n, "eval"))
    if any(models[p["rl"]].get("toy") == "rl" for p in pairs):
        adv = AdvantageExperimentConfig.from_mapping(config.get("advantages"))
        asked.append(("advantages.eval_problems", adv.eval_problems, "eval"))
    for key, n, split in asked:
        most = split_capacity(toy.task, split)
        if n > most:
            raise ConfigError(
                key,
                toy.max_steps if key == "toy.max_steps" else n,
                f"the toy task with {toy.min_steps} to {toy.max_steps} operations per problem (toy.min_steps, "
                f"toy.max_steps) has at most {most} distinct {split} problems"
                + (f"; the toy check draws {EVAL_PROBLEMS}" if key == "toy.max_steps" else "")
                + ": ask for fewer, or allow more operations",
            )


def _check_attention(key: str, name: str) -> None:
    """Refuse an attention implementation the installed transformers does not have (a ``ValueError`` in
    the first job that loaded the model). Imported only where a model sets one: it costs seconds."""
    from tokenshift.loading import unknown_attention

    if expected := unknown_attention(name):
        raise ConfigError(key, name, expected)


def _no_wildcards(key: str, path: str, file: str = "") -> None:
    """Refuse braces in a path the workflow declares as a Snakemake input (a local dataset, a local
    checkpoint's files): Snakemake reads ``{name}`` in an input's path as a wildcard, with no escape, and
    failed with a WildcardError; the config check says which key, and what to do."""
    if "{" in path + file or "}" in path + file:
        where = f" (its file {file!r})" if file and ("{" in file or "}" in file) else ""
        raise ConfigError(
            key,
            path,
            f"expected a path without {{ or }}{where}: Snakemake reads {{...}} in an input file's path as a "
            "wildcard; rename it, or link it under a name without braces",
        )


def dataset_sampling(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The sampling settings of ``dataset``: the top-level ``sampling`` with its own overrides."""
    return {**config.get("sampling", {}), **config.get("datasets", {}).get(dataset, {}).get("sampling", {})}


def _same_checkpoint(a: Mapping, b: Mapping, base_dir: Path) -> bool:
    """Whether two model specs name one checkpoint (one local directory, or one hub id at one revision)."""
    if "path" in a and "path" in b:
        return (base_dir / a["path"]).resolve() == (base_dir / b["path"]).resolve()
    return "hub" in a and "hub" in b and (a["hub"], a.get("revision")) == (b["hub"], b.get("revision"))


def _check_pair_tokenizers(key: str, pair: Mapping, models: Mapping, base_dir: Path, *, chat: bool) -> None:
    """Refuse pairs whose tokenizers cannot be compared, or (``chat``) whose chat templates prompt a question
    differently, as far as can be known before download. An error names the pair's key (``key``.base or .rl) with
    its value, the model's name, and the checkpoint's path in its words."""
    base, rl = models[pair["base"]], models[pair["rl"]]
    sources = (model_source(base), model_source(rl))
    if ("toy" in sources) and sources != ("toy", "toy"):
        raise ConfigError(
            f"{key}",
            {"base": dict(base), "rl": dict(rl)},
            "a toy model can only be paired with a toy model: their tokenizers differ from any other",
        )
    if sources == ("path", "path") and not (base.get("trust_remote_code") or rl.get("trust_remote_code")):
        # both checkpoints are here: compare their tokenizers now rather than after hours of work. Not
        # where one's tokenizer may be code of its own: loading it would run that code at `snakemake -n`;
        # the pair's check_pair job compares them, after the fetch, as it does a hub pair's
        from tokenshift.tokenizer import (
            CHAT_MISMATCH_FIX,
            TokenizerMismatch,
            chat_prompt,
            chat_prompt_difference,
            compare_tokenizers,
            load_tokenizer,
        )

        dirs = [base_dir / spec["path"] for spec in (base, rl)]
        record = _tokenizer_check_record(*dirs, chat=chat)
        if record is not None and record.is_file():
            return  # these very files passed this very check before (transformers' import alone is seconds)
        tokenizers = []
        for role, spec in (("base", base), ("rl", rl)):
            try:
                tokenizers.append(load_tokenizer(base_dir / spec["path"], trust_remote_code=False))
            except Exception as e:  # a damaged or partly copied tokenizer: name it, not a traceback
                first = str(e).splitlines()[0] if str(e) else ""
                raise ConfigError(
                    f"{key}.{role}",
                    pair[role],
                    f"{spec['path']}'s tokenizer does not load ({type(e).__name__}: {first})",
                ) from None
        try:
            compare_tokenizers(*tokenizers)
        except TokenizerMismatch as e:
            raise ConfigError(
                f"{key}.rl",
                pair["rl"],
                f"the tokenizer of {rl['path']} cannot be compared with the base model's, of {base['path']}: {e}",
            ) from None
        if chat:
            for role, spec, tokenizer in zip(("base", "rl"), (base, rl), tokenizers, strict=True):
                try:
                    chat_prompt(tokenizer)
                except Exception as e:  # a template that raises: name it, not a traceback
                    first = str(e).splitlines()[0] if str(e) else ""
                    raise ConfigError(
                        f"{key}.{role}",
                        pair[role],
                        f"{spec['path']}'s chat template raises ({type(e).__name__}: {first})",
                    ) from None
            if difference := chat_prompt_difference(*tokenizers):
                raise ConfigError(
                    f"{key}.rl", pair["rl"], f"{rl['path']} against {base['path']}: {difference}; {CHAT_MISMATCH_FIX}"
                )
        if record is not None:
            _write_record(record)


UNREAD_BY_TOKENIZERS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".index")
"""Files no tokenizer reads (weights in any format, and their indexes), left out of a tokenizer check's key;
not ``tokenshift.checkpoints.WEIGHT_SUFFIXES``, the one format the workflow loads."""


def _tokenizer_check_record(*ckpt_dirs: Path, chat: bool) -> Path | None:
    """The record a passed comparison of these checkpoints' tokenizers leaves, keyed by the bytes of every
    file of theirs a tokenizer may read (all but the weights), the transformers and tokenizers versions that
    load them and the code that compares them: any change is a new key, so the check runs again. None
    where a file cannot be read (the check then runs, and names it)."""
    import hashlib

    import tokenshift.checkpoints
    import tokenshift.loading
    import tokenshift.tokenizer
    from tokenshift.io import cache_dir, package_versions

    h = hashlib.sha256(f"chat={chat}\0".encode())  # a pair passes without its templates compared, not with
    h.update(f"{package_versions('transformers', 'tokenizers')}\0".encode())
    try:
        # the code that loads and compares the tokenizers: tokenizer.py, and checkpoints.py and loading.py it calls
        modules = (tokenshift.checkpoints, tokenshift.loading, tokenshift.tokenizer)
        for module in (__file__, *(m.__file__ for m in modules)):
            h.update(hashlib.sha256(Path(module).read_bytes()).digest())
        for d in ckpt_dirs:
            for f in sorted(Path(d).iterdir()):
                if f.is_file() and not f.name.endswith(UNREAD_BY_TOKENIZERS):
                    h.update(os.fsencode(f.name) + b"\0" + hashlib.sha256(f.read_bytes()).digest())
            h.update(b"\1")  # the end of one checkpoint's files
    except OSError:
        return None
    return cache_dir() / "tokenizer-pairs" / f"{h.hexdigest()}.ok"


def _write_record(record: Path) -> None:
    """Leave ``record`` (best effort: an unwritable cache only means the check runs each time)."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.touch()
    except OSError:
        pass


def config_warnings(config: Mapping[str, Any]) -> list[str]:
    """Settings that work but probably do not do what was meant, one line each, naming the key."""
    from tokenshift.loading import missing_attention_package
    from tokenshift.registry import budget_label
    from tokenshift.settings import CrossSampleConfig, SamplingConfig

    out = []
    for name, spec in config.get("models", {}).items():
        if package := missing_attention_package(spec.get("attn_implementation")):
            out.append(
                f"config key models.{name}.attn_implementation: {spec['attn_implementation']} needs the {package} "
                "package, which is not installed here: the jobs that load this model fail on a machine without it"
            )
    cross = config.get("crosssample", {})
    if "level" in cross.get("thresholds", {}).get("random", {}):  # accepted: a --configfile may merge it in
        out.append(
            f"config key crosssample.thresholds.random.level: {cross['thresholds']['random']['level']!r} has no "
            "effect: a uniform draw's percentile q is the threshold q / 100 over any level"
        )
    if cross.get("engine") == "regenerate":
        for key in ("batch_size", "device_base", "device_rl"):
            if cross.get(key, getattr(CrossSampleConfig, key)) != getattr(CrossSampleConfig, key):
                out.append(
                    f"config key crosssample.{key}: {cross[key]!r} is read by engine lockstep only; engine "
                    "regenerate's vLLM engines batch their own requests and go where vLLM is built for"
                )
    after_switch = cross.get("length_rule", CrossSampleConfig.length_rule) == "after_switch"
    for name in config.get("datasets", {}):
        max_new = dataset_sampling(config, name).get("max_new_tokens")
        labels: dict[str, int] = {}
        tokens = max_new or SamplingConfig().max_new_tokens
        for j, b in enumerate(cross.get("budgets", [])):  # a share of max_new_tokens rounds up to whole tokens
            label = budget_label(b, tokens)
            first = labels.setdefault(label, j)
            if first != j:
                out.append(
                    f"config key crosssample.budgets[{j}]: budget {b} is {label} of dataset {name!r}'s "
                    f"{tokens} new tokens, the same run as crosssample.budgets[{first}] ({cross['budgets'][first]}): "
                    "it is run once"
                )
        # the longest response: after_switch lets it run past max_new_tokens, up to max_total_tokens
        longest = cross.get("max_total_tokens", CrossSampleConfig.max_total_tokens) if after_switch else max_new
        for j, b in enumerate(cross.get("budgets", [])):
            if isinstance(b, int) and longest is not None and b > longest:
                out.append(
                    f"config key crosssample.budgets[{j}]: budget {b} exceeds the "
                    + (f"{longest} tokens (max_total_tokens) a response" if after_switch else f"{max_new} new tokens")
                    + f" of dataset {name!r}, so it is the same run as budget `all`"
                )
    return out
