"""Stage settings as frozen dataclasses: one home for each default, its help text and its CLI flag.

Each stage's settings are a frozen dataclass whose fields are the keys of one section of the
workflow config (the class attribute ``section`` names it), declared with ``option(default,
help)``. From that one declaration:

- ``add_options(parser, cls)`` adds a ``--field-name`` flag per field, with the field's type,
  default and help (as TRL's ``TrlParser`` builds its CLI from config dataclasses);
- ``from_args(cls, args)`` builds the dataclass back from the parsed arguments;
- ``to_argv(cls, values)`` is the inverse: a config section (a mapping of field names) as the
  flags that reproduce it; the workflow's rules pass settings to the CLI this way, so a rule
  never spells out a flag that a dataclass already declares. A value is joined to its flag
  (``--tau=-1e-05``), so no value is ever read as an option.

A test checks every default of the config schema against the dataclass field it feeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from tokenshift.io import path_spelling

MAX_THREADS = 1024
"""The most torch CPU threads a setting may ask for (``torch.set_num_threads`` overflows past 2**31)."""
MAX_SAMPLES = 1024
"""The most samples per problem (pass@1024 is the largest k this field reports; the tables hold n rows a problem)."""
MAX_TIMEOUT_S = 3600
"""The longest math-verify may take for one answer (its alarms overflow past ~9e9 s; an hour is already none)."""
MAX_SEED = 2**32 - 1
"""The largest seed (numpy's generators take no larger; the schema's ``seed`` says the same)."""


def option(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its help text (and optional ``choices``, ``minimum``, ``maximum``) as metadata.

    ``auto=True`` marks an ``int | str`` field that takes a number or the word ``auto`` (a batch
    size the stage plans itself); ``recorded=False`` one that results do not depend on, which the
    workflow passes to its jobs without recording it (``section_values``); ``unordered=True`` a list whose
    order nothing depends on, which jobs are given and the config is recorded sorted, so that reordering it
    re-runs nothing."""
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for a sequence default: settings are frozen")
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_type(cls: type, f: dataclasses.Field) -> tuple[type, bool, bool]:
    """(scalar type, optional, sequence) of a field annotated int, float | None, tuple[int, ...], ..."""
    hint = typing.get_type_hints(cls)[f.name]
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None) and not (f.metadata.get("auto") and a is str)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"{cls.__name__}.{f.name}: a union of {args} cannot be a CLI option")
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], optional, True
    return hint, optional, False


MAX_INTEGER = 2**63 - 1
"""The largest integer a config or a flag may hold anywhere: what torch, numpy and polars store (int64); past
it a job's first conversion raises OverflowError. Keys the schema bounds lower say so there."""


def _checked(
    kind: type, minimum: float | None, name: str, auto: bool = False, maximum: float | None = None, empty: bool = False
):
    def convert(text: str):
        if auto and text == "auto":
            return text
        if kind is str and not text and not empty:  # `--path=`: read as the folder '.', a hub id '' (the 21st pass)
            raise argparse.ArgumentTypeError("expected a value, got an empty one")
        try:
            value = kind(text)
        except ValueError:
            wanted = f"'auto' or {kind.__name__}" if auto else kind.__name__
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):  # NaN compares with no bound, so passed them all
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if isinstance(value, int) and abs(value) > MAX_INTEGER:  # an OverflowError in the first conversion to int64
            raise argparse.ArgumentTypeError(f"expected a whole number of at most 2**63 - 1, got {text}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"expected a value >= {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"expected a value <= {maximum}, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def nonempty(text: str) -> str:
    """An argparse ``type`` that takes any text but the empty one (a path, a hub id, a revision)."""
    return _checked(str, None, "str")(text)


def at_least(minimum: int, kind: type = int, maximum: float | None = None):
    """An argparse ``type`` that takes a ``kind`` of value at least ``minimum`` (and at most ``maximum``), naming
    what it got."""
    return _checked(kind, minimum, kind.__name__, maximum=maximum)


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: Sequence[str] = (),
    only: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """A ``--flag`` for each field of dataclass ``cls`` (but ``exclude``; or ``only`` those), default and help
    from the field."""
    group = parser.add_argument_group(title or f"{cls.__name__} (config `{getattr(cls, 'section', '?')}:`)")
    for f in dataclasses.fields(cls):
        if f.name in exclude or (only is not None and f.name not in only):
            continue
        kind, optional, sequence = _field_type(cls, f)
        meta = f.metadata
        help_text = meta.get("help", "")
        shown = "none" if f.default is None else (" ".join(map(str, f.default)) if sequence else f.default)
        kw: dict[str, Any] = {"dest": f.name, "default": f.default, "help": f"{help_text} (default: {shown})"}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _checked(
                kind, meta.get("minimum"), f.name, bool(meta.get("auto")), meta.get("maximum"), empty=f.default == ""
            )
            kw["metavar"] = f.name.upper()
            if "choices" in meta:
                kw["choices"] = meta["choices"]
                kw.pop("metavar")
            if sequence:
                kw["nargs"] = "+"
        del optional  # None is reachable only as the default: a flag given always sets a value
        group.add_argument(flag(f.name), **kw)


def from_args(cls: type, args: argparse.Namespace, **given: Any):
    """The dataclass ``cls`` from parsed ``args`` (fields not parsed keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    for f in dataclasses.fields(cls):
        if f.name in values and _field_type(cls, f)[2] and values[f.name] is not None:
            values[f.name] = tuple(values[f.name])
    return cls(**{**values, **given})


def from_mapping(cls: type, values: Mapping[str, Any] | None, *, key: str | None = None):
    """The dataclass from a config section; an unknown key is a ``ValueError`` naming it."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = key or getattr(cls, "section", cls.__name__)
        raise ValueError(f"unknown {where} settings {unknown}; known: {sorted(names)}")
    for f in dataclasses.fields(cls):
        if f.name in values and isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


def to_argv(cls: type, values: Mapping[str, Any]) -> list[str]:
    """The flags that make ``add_options(cls)`` parse to ``values`` (keys: field names of ``cls``).

    Flags come in the order the fields are declared, whatever the order of ``values``: the same
    settings are the same command line (Snakemake compares a job's recorded params as text). A
    scalar is joined to its flag (``--opening=-x``, ``--tau=-1e-05``): apart, argparse reads a value
    that starts with ``-`` as an option of its own (it spares only plain negative numbers such as
    ``-0.3``). A sequence's values follow its flag apart (``--pass-k 1 4``), so none may start with
    ``-`` (the settings' sequences are counts, seeds and names: none does).
    """
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting {unknown[0]!r}; known: {sorted(names)}")
    argv: list[str] = []
    for name in names:
        if name not in values:
            continue
        value = values[name]
        if value is None:
            continue  # the field's default, None, is what an absent flag gives
        kind, _, sequence = _field_type(cls, names[name])
        if kind is bool:
            argv.append(flag(name) if value else "--no-" + name.replace("_", "-"))
        elif sequence:
            items = [str(v) for v in value]
            if not items or any(v.startswith("-") for v in items):
                raise ValueError(
                    f"{cls.__name__}.{name}: expected one or more values none of which starts with '-', got {value!r}"
                )
            argv += [flag(name), *items]
        else:
            argv.append(f"{flag(name)}={value}")
    return argv


def canonical(value: Any) -> Any:
    """``value`` with every integral float as an int, in lists and mappings too: YAML's ``50.0`` and
    ``50`` are one setting, and the workflow records settings as text (a float flag parses either)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return type(value)(canonical(v) for v in value)
    if isinstance(value, Mapping):
        return {k: canonical(v) for k, v in value.items()}
    return value


def settings_label(*settings: Any, leave_out: Sequence[str] = ()) -> str:
    """What a stage's rows were made with, as the label its tables carry in a ``settings`` column: 16 hex
    digits of a hash of each settings dataclass's recorded fields (those results depend on; ``option``'s
    ``recorded``), but ``leave_out`` (a cross-sampling run's own injection), and of any other value given
    (the label of the rows a stage read). Where two tables that must have been made alike meet (both
    models' rollouts, both sources' scores, a grid's runs), a part copied in from a study made under
    other settings holds another label and is refused; its place and name alone matched."""
    import hashlib
    import json

    parts = [
        {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.metadata.get("recorded", True)}
        if dataclasses.is_dataclass(s)
        else s
        for s in settings
    ]
    parts = [{k: v for k, v in p.items() if k not in leave_out} if isinstance(p, dict) else p for p in parts]
    text = json.dumps(parts, sort_keys=True, default=lambda v: list(v) if isinstance(v, tuple | set) else str(v))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shell_args(cls: type, values: Mapping[str, Any]) -> str:
    """``to_argv`` quoted for a shell command line, each number in one text (``canonical``)."""
    return " ".join(shlex.quote(a) for a in to_argv(cls, canonical(values)))


def section_values(
    cls: type, config: Mapping[str, Any], *, stage: str | Sequence[str] | None = None, recorded: bool = True
) -> dict[str, Any]:
    """The keys of ``config``'s section for ``cls`` that are fields of ``cls`` (and, given ``stage``,
    that the stage reads: a field declared with ``stages=(...)`` is read by those stages only), so a
    job's recorded settings are exactly those it uses. ``stage`` may name several (a length rule and
    an injection): a field is read if any of them is among its ``stages``. ``recorded=False`` gives the others: the
    fields declared ``recorded=False``, which results do not depend on (a batch size), so that
    changing one re-runs nothing."""
    stages = (stage,) if isinstance(stage, str) else stage
    names = {
        f.name
        for f in dataclasses.fields(cls)
        if (stages is None or "stages" not in f.metadata or set(stages) & set(f.metadata["stages"]))
        and f.metadata.get("recorded", True) == recorded
    }
    unordered = {f.name for f in dataclasses.fields(cls) if f.metadata.get("unordered")}
    return {
        k: sorted(v) if k in unordered and isinstance(v, list | tuple) else v
        for k, v in config.get(cls.section, {}).items()
        if k in names
    }


def recorded_config(config: Mapping[str, Any], classes: Sequence[type]) -> dict[str, Any]:
    """``config`` less the settings no result depends on (the fields of ``classes`` declared
    ``recorded=False``: a batch size, what a job asks the scheduler for), each number in one text
    (``canonical``): what the workflow records of the whole config (``results/config.yaml``, which the
    report quotes), so that changing such a setting rewrites no page."""
    out = canonical(dict(config))
    if isinstance(out.get("models"), Mapping):  # a checkpoint's path as the fetch takes it (io.path_spelling)
        out["models"] = {
            name: {**spec, "path": path_spelling(spec["path"])}
            if isinstance(spec, Mapping) and "path" in spec
            else spec
            for name, spec in out["models"].items()
        }
    for cls in classes:
        section = out.get(cls.section)
        if isinstance(section, Mapping):
            unrecorded = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("recorded", True)}
            unordered = {f.name for f in dataclasses.fields(cls) if f.metadata.get("unordered")}
            out[cls.section] = {
                k: sorted(v) if k in unordered and isinstance(v, list | tuple) else v
                for k, v in section.items()
                if k not in unrecorded
            }
    return out
