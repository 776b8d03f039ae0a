"""The checkpoint stage: materialise every model as a local Hugging Face checkpoint.

Each model spec becomes a directory ``resources/models/<name>/`` that later stages load with
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``, plus a
manifest ``resources/models/<name>.json`` written last (its existence means "complete"):
source, revision, sha256 of every file of the checkpoint (weights, configs, generation config,
tokenizer files, chat template: all that loading reads; for a hub snapshot's Git LFS files, the
hub's own sha256, which its cache names their blobs by), vocabulary sizes and a tokenizer hash.

- ``path``: the files of a local checkpoint are linked (not copied: weights can be 60 GB).
- ``hub``: ``huggingface_hub.snapshot_download`` at the pinned revision, safetensors only.
- ``toy``: built by ``tokenshift.toy.build`` (the rules of the checkpoint stage call it).

Every materialised tokenizer is checked to survive the ``AutoTokenizer`` path: its encoding of
sample text must equal the raw ``tokenizer.json``'s, and decoding must give the text back. A
silent tokenizer rebuild (transformers may rebuild one from the vocabulary by model type) is
an error here, not a wrong number later (``tokenizer.check_tokenizer_roundtrip``, which ``write_manifest``
runs).

The stages take a checkpoint by its directory or its manifest (``resolve_checkpoint``: the files are
verified against the manifest first) and name it in the tables made with it by what it is
(``checkpoint_identity``, ``checkpoint_label``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tokenshift.io import (
    UNREADABLE,
    InputError,
    file_fingerprint,
    path_spelling,
    read_json,
    sha256_file,
    umask,
    write_json_atomic,
)

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors",)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


T = TypeVar("T")


class ModelFetchError(InputError):
    """A model could not be materialised, or its files are not what they should be; the message names the model
    and its source. An ``InputError``: the notebook API and the CLI report it as bad input (the nineteenth pass:
    ``compare`` raised it as a RuntimeError beside its InputErrors)."""


def manifest_path(ckpt_dir: Path) -> Path:
    """``<dir>.json`` beside the checkpoint folder ``ckpt_dir``; a folder named by ``.``, ``..`` or ``''`` is named by
    its absolute path first (pathlib has no name for it: a ValueError traceback, the eighteenth pass)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.name in ("", ".."):
        ckpt_dir = Path(os.path.abspath(ckpt_dir))
    if not ckpt_dir.name:
        raise InputError(f"{ckpt_dir}: the root folder, expected a checkpoint folder (or its manifest .json)")
    return ckpt_dir.with_name(ckpt_dir.name + ".json")


MANIFEST_KEYS = ("files_sha256",)
"""What every checkpoint manifest holds (``checked_manifest``): a file at a manifest's path without them is not one."""


def refuse_foreign_manifest(ckpt_dir: Path) -> None:
    """``InputError`` where the manifest path of a checkpoint about to be written holds another kind of file."""
    from tokenshift.io import refuse_foreign_file

    refuse_foreign_file(manifest_path(ckpt_dir), MANIFEST_KEYS, "a checkpoint's manifest")


def fingerprints_path(ckpt_dir: Path) -> Path:
    """Where the files' fingerprints (``io.file_fingerprint``) at hashing time are kept: beside the
    manifest, not in it, so a fetch run again on the same bytes writes the same manifest (and a later
    Snakemake run, comparing its checksum, finds what was made from it up to date)."""
    return ckpt_dir.with_name(f".{ckpt_dir.name}.fingerprints.json")


def checkpoint_files(ckpt_dir: Path) -> list[Path]:
    """The files of a checkpoint its manifest hashes: every file in its directory (a link's target),
    but hidden ones. Loading reads some of them (the weights, ``config.json``,
    ``generation_config.json``, the tokenizer's files and chat template), the stages others
    (``toy_build.json``); a subdirectory (a toy RL model's ``checkpoints/``) is a checkpoint of its
    own, with its own manifest."""
    return sorted(p for p in Path(ckpt_dir).iterdir() if p.is_file() and not p.name.startswith("."))


def hub_sha256(path: Path) -> str | None:
    """The sha256 the Hugging Face hub records for a file of its cache, where it has one: the cache names
    a Git LFS file's blob (``blobs/<sha256>``, where snapshot links point) by the sha256 of its content,
    a small file's blob by its git object id (40 hex digits: no sha256, None)."""
    import re

    target = Path(os.path.realpath(path))
    return target.name if target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", target.name) else None


def custom_code(ckpt_dir: Path) -> bool:
    """Whether a checkpoint needs code of its own: its config.json names some (``auto_map``) for a model type
    the installed transformers does not have, so it loads only under ``trust_remote_code`` (one whose type
    transformers has loads without it). False where the file does not read as a JSON object."""
    try:
        cfg = json.loads((Path(ckpt_dir) / "config.json").read_text())
    except (OSError, *UNREADABLE):
        return False
    if not isinstance(cfg, dict) or not cfg.get("auto_map"):
        return False
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return cfg.get("model_type") not in CONFIG_MAPPING_NAMES


def _check_safetensors(name: str, path: Path) -> dict[str, tuple[int, ...]]:
    """Refuse a weights file safetensors cannot open: cut short, or not safetensors at all; else the shape of
    each tensor it holds (read from its header: no weight is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            names = f.keys()  # a safe_open is no mapping: it has keys() but no iteration
            return {k: tuple(f.get_slice(k).get_shape()) for k in names}
    except (SafetensorError, OSError) as e:
        raise ModelFetchError(f"model {name!r}: {path} is not a whole safetensors file: {e}") from None


def _first_line(error: BaseException) -> str:
    """An error's message in one line: its first, with the next where the first only announces it (``...:``, as
    huggingface_hub's validation errors write the cause on the line after)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def _check_shapes(name: str, ckpt_dir: Path, cfg, shapes: Mapping[str, tuple[int, ...]], trust: bool) -> None:
    """Refuse a ``config.json`` that describes tensors of other shapes than its weights hold (a ``vocab_size`` or
    ``hidden_size`` edited, another model's config copied in): every job would load the checkpoint and die in
    transformers' size-mismatch traceback (the fourteenth hostile pass, L1). The model is built on the meta
    device (no memory); tensors the weights name otherwise (renamed on load, tied) are not compared. A quantized
    checkpoint is refused."""
    import torch
    from transformers import AutoModelForCausalLM

    where = ckpt_dir / "config.json"
    quantized = getattr(cfg, "quantization_config", None)
    if quantized:  # every job loaded it into a library that may not be here (bitsandbytes), or planned it wrong
        method = quantized.get("quant_method") if isinstance(quantized, dict) else type(quantized).__name__
        raise ModelFetchError(
            f"model {name!r}: {where} has a quantization_config ({method}): quantized checkpoints are not supported "
            "(the memory planner and the divergences assume the weights as trained); expected an unquantized checkpoint"
        )
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust)
    # a size of 0 divides by zero, a pad_token_id past the vocabulary fails an assertion, an unknown dtype is an
    # AttributeError (the fifteenth hostile pass): whatever stops the model being built stops every job that loads it
    except Exception as e:
        first = _first_line(e)
        raise ModelFetchError(
            f"model {name!r}: transformers cannot build the model {where} describes: {first}"
        ) from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = sorted(k for k in expected.keys() & shapes.keys() if shapes[k] != expected[k])
    if wrong:
        k = wrong[0]
        raise ModelFetchError(
            f"model {name!r}: {where} describes {k} as {list(expected[k])} but the weights hold {list(shapes[k])} "
            f"({len(wrong)} of {len(expected.keys() & shapes.keys())} tensors differ): expected the config.json of "
            "these weights"
        )


def _checked_weights(name: str, ckpt_dir: Path) -> tuple[list[Path], dict[str, tuple[int, ...]]]:
    """The checkpoint's safetensors files, each whole (``_check_safetensors``), and the shape of every tensor."""
    weights = sorted(p for p in ckpt_dir.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise ModelFetchError(f"model {name!r}: {ckpt_dir} has no safetensors weights (only safetensors are loaded)")
    shapes, held = {}, {}
    for p in weights:  # a cut download or copy: its header names more bytes than it holds (read: the header alone)
        found = _check_safetensors(name, p)
        shapes.update(found)
        held.update(dict.fromkeys(found, p.name))
    _check_index(name, ckpt_dir, held)
    return weights, shapes


def _check_index(name: str, ckpt_dir: Path, held: Mapping[str, str]) -> None:
    """Refuse a sharded checkpoint's ``model.safetensors.index.json`` that is not its shards' (``held``: tensor ->
    the file holding it): a shard it names missing, a tensor in another file, or no map at all. Loading otherwise
    failed in transformers' FileNotFoundError or AttributeError (the twentieth pass)."""
    index = ckpt_dir / "model.safetensors.index.json"
    if not index.exists():
        return
    weight_map = read_json(index, "a sharded checkpoint's index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelFetchError(f"model {name!r}: {index} has no weight_map of tensor names to shard files")
    wrong = sorted(k for k, f in weight_map.items() if held.get(k) != f)
    if wrong:
        k = wrong[0]
        where = f"in {held[k]}" if k in held else "in no shard"
        raise ModelFetchError(
            f"model {name!r}: {index} puts {k} in {weight_map[k]}, but it is {where} ({len(wrong)} of "
            f"{len(weight_map)} tensors): expected the index of these shards"
        )


def _checked_config(name: str, ckpt_dir: Path, shapes: Mapping[str, tuple[int, ...]], trust: bool):
    """The checkpoint's config, once transformers reads it and it describes the weights' ``shapes``."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(ckpt_dir, trust_remote_code=trust)
    # a type transformers lacks, custom code not trusted, a field a config class refuses (num_hidden_layers against
    # layer_types: huggingface_hub's StrictDataclassError, the fourteenth hostile pass, L4), or a value it cannot
    # take (a dtype of "auto": an AttributeError, the fifteenth): a stranger's file may raise anything here
    except Exception as e:
        first = _first_line(e)
        hint = (
            f"; its config names code of its own (auto_map): set models.{name}.trust_remote_code: true to run it, "
            "if you trust it"
            if not trust and custom_code(ckpt_dir)
            else ""
        )
        where = ckpt_dir / "config.json"
        raise ModelFetchError(f"model {name!r}: transformers cannot read {where}: {first}{hint}") from None
    rows = getattr(cfg, "vocab_size", None)
    if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 1):
        # a manifest of -5 embedding rows was written, and refused only by the pair check (seventh hostile pass, M2)
        raise ModelFetchError(
            f"model {name!r}: {ckpt_dir / 'config.json'} gives vocab_size {rows!r}; expected a positive whole number"
        )
    _check_shapes(name, ckpt_dir, cfg, shapes, trust)
    return cfg


def check_unvouched(ckpt_dir: Path) -> None:
    """The fetch's checks of a checkpoint folder no manifest vouches for (the notebook API's, a stage given a folder),
    less hashing and the tokenizer's: every file it names a regular file, the weights whole, the config theirs.
    Loading it otherwise failed in safetensors' or transformers' own traceback, or waited on a pipe for ever (the
    nineteenth and twentieth passes). Once per process for the same files."""
    files = _named(ckpt_dir, False)
    key = (Path(os.path.abspath(ckpt_dir)), tuple((f.name, file_fingerprint(f)) for f in files if f.is_file()))
    if key in _UNVOUCHED_CHECKED:
        return
    if odd := unreadable_files(ckpt_dir):
        raise ModelFetchError(f"model {ckpt_dir.name!r}: {odd[0]} is no regular file (a broken link, a directory?)")
    _, shapes = _checked_weights(ckpt_dir.name, ckpt_dir)
    _checked_config(ckpt_dir.name, ckpt_dir, shapes, trust=False)
    _UNVOUCHED_CHECKED.add(key)


_UNVOUCHED_CHECKED: set = set()


def write_manifest(
    ckpt_dir: Path, *, name: str, spec: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict:
    """Verify the checkpoint at ``ckpt_dir`` and write its manifest next to it, last."""
    manifest, fingerprints = checked_manifest(ckpt_dir, name=name, spec=spec, extra=extra)
    _write_manifest(ckpt_dir, manifest, fingerprints)
    return manifest


def _write_manifest(ckpt_dir: Path, manifest: Mapping[str, Any], fingerprints: Mapping[str, Any]) -> None:
    write_json_atomic(fingerprints_path(ckpt_dir), fingerprints)
    write_json_atomic(manifest_path(ckpt_dir), manifest)


def checked_manifest(
    ckpt_dir: Path, *, name: str, spec: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> tuple[dict, dict]:
    """The manifest of the checkpoint at ``ckpt_dir`` once its files pass every check (``ModelFetchError``
    otherwise), and its files' fingerprints; nothing is written."""
    # imported here, not at the top: both modules import this one
    from tokenshift.loading import unknown_attention
    from tokenshift.tokenizer import (
        auto_tokenizer,
        check_chat_template,
        check_tokenizer_roundtrip,
        generation_eos,
        tokenizer_fingerprint,
    )

    trust = bool(spec.get("trust_remote_code", False))
    if "attn_implementation" in spec and (expected := unknown_attention(spec["attn_implementation"])):
        raise ModelFetchError(f"model {name!r}: attn_implementation {spec['attn_implementation']!r}: {expected}")
    weights, shapes = _checked_weights(name, ckpt_dir)
    # hashed before anything is loaded from them: the manifest vouches for the files that were checked
    files = checkpoint_files(ckpt_dir)
    # a linked file's fingerprint is its target's: the source checkpoint's
    fingerprints = {p.name: file_fingerprint(p) for p in files}
    # a hub snapshot's large files carry the hub's own sha256 (its cache names their blobs by it): a 32B
    # model's 65 GB are not read again for it; a local `path:` is hashed whatever its files' names
    hashes = {p.name: ("hub" in spec and hub_sha256(p)) or sha256_file(p) for p in files}
    cfg = _checked_config(name, ckpt_dir, shapes, trust)
    tok = auto_tokenizer(ckpt_dir, trust)
    check_tokenizer_roundtrip(ckpt_dir, tok)
    check_chat_template(ckpt_dir, tok)
    generation_eos(ckpt_dir)  # its generation_config.json, read as every job that generates reads it
    manifest = {
        "name": name,
        "spec": dict(spec),
        "source": next(k for k in ("path", "hub", "toy") if k in spec),
        "revision": spec.get("revision"),
        "model_type": cfg.model_type,
        "embedding_rows": int(getattr(cfg, "vocab_size", 0) or 0),
        "tokenizer_size": len(tok),
        "tokenizer_sha256": tokenizer_fingerprint(tok),
        "files_sha256": hashes,
        "weights_bytes": {p.name: p.stat().st_size for p in weights},
        "tokenizer_roundtrip": "ok",
    }
    if extra:
        manifest.update(extra)
    return manifest, fingerprints


def _fingerprints(ckpt_dir: Path) -> dict[str, list[int]]:
    if not fingerprints_path(ckpt_dir).is_file():  # none, or a pipe, which waited for ever (twentieth pass)
        return {}
    try:
        return json.loads(fingerprints_path(ckpt_dir).read_text())
    except (OSError, *UNREADABLE):
        return {}


def verify_checkpoint(ckpt_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Fail if the files at ``ckpt_dir`` are not those its manifest hashed (``checkpoint_files``: the
    weights, the configs, the tokenizer's files and chat template; one added or gone fails too).

    A file whose fingerprint (device, inode, size, mtime and ctime: ``io.file_fingerprint``) is the
    one recorded when it was hashed is taken as unchanged; any other is hashed again (once per
    process) and must match. A copy that sets the mtime back (``cp -p``, ``rsync -a``) still changes
    the ctime, so a source checkpoint overwritten after its manifest was written is refused before
    any model is loaded.
    """
    name = manifest.get("name", ckpt_dir.name)
    recorded = manifest.get("files_sha256")
    if not isinstance(recorded, dict):
        raise ModelFetchError(
            f"model {name!r}: its manifest {manifest_path(ckpt_dir)} records no hash of the checkpoint's files "
            "(written by an older tokenshift); run the checkpoint stage again"
        )
    present = [p.name for p in checkpoint_files(ckpt_dir)]
    if present != sorted(recorded):
        added, gone = sorted(set(present) - set(recorded)), sorted(set(recorded) - set(present))
        raise ModelFetchError(
            f"model {name!r}: {ckpt_dir} holds files its manifest {manifest_path(ckpt_dir)} does not list "
            f"({', '.join(added) or 'none'}) and lacks files it lists ({', '.join(gone) or 'none'}; a broken "
            "link to its source?); run the checkpoint stage again"
        )
    fingerprints = _fingerprints(ckpt_dir)
    for fname, digest in recorded.items():
        path = ckpt_dir / fname
        now = file_fingerprint(path)
        if fingerprints.get(fname) == list(now) or (path, now, digest) in _VERIFIED:
            continue
        log.info("model %r: %s changed on disk since its manifest; hashing it again", name, fname)
        if sha256_file(path) == digest:
            _VERIFIED.add((path, now, digest))  # said, and hashed, once per process (a job verifies ~7 times)
        else:
            toy = manifest.get("spec", {}).get("toy")
            again = (
                f"build it again (snakemake --forcerun toy_{toy}: Snakemake sees no change to a model it built)"
                if toy
                else "run its fetch again (Snakemake does so when the source files change; a file changed inside the "
                f"fetched folder it does not see: snakemake --cores all --forcerun {manifest_path(ckpt_dir)} -- all)"
            )
            raise ModelFetchError(
                f"model {name!r}: {path} is not the file its manifest {manifest_path(ckpt_dir)} hashed (overwritten "
                f"since?); {again}, so that every result is recomputed from the new files"
            )


_VERIFIED: set[tuple[Path, tuple[int, ...], str]] = set()
"""Files ``verify_checkpoint`` hashed again and found as their manifest hashed them, with their fingerprint then."""


def resolve_checkpoint(path: Path | str) -> Path:
    """The checkpoint directory of ``path`` (a checkpoint directory or its manifest ``<dir>.json``),
    verified against the manifest when there is one."""
    path = Path(path)
    if path.suffix == ".json":
        ckpt, manifest = path.with_suffix(""), path
    else:
        ckpt, manifest = path, manifest_path(path)
    if not (ckpt / "config.json").is_file():
        raise InputError(
            f"{path}: not a checkpoint (expected a Hugging Face checkpoint directory with config.json, "
            "or the manifest .json next to one)"
        )
    if manifest.is_file():
        verify_checkpoint(ckpt, read_json(manifest, "a checkpoint manifest"))
    elif path.suffix == ".json":
        raise InputError(f"{path}: no such manifest")
    else:  # a folder no fetch vouched for (the notebook API's, a stage given a folder): the fetch's checks
        check_unvouched(ckpt)
    return ckpt


# what a manifest records about how a checkpoint was made, not what it is: a toy built twice into the same
# weights, on a laptop and on a cluster's node, is one checkpoint (toy_build_seconds: manifests written before
# 2026-12-07 held the build's seconds)
MANIFEST_HOW_MADE = ("toy_build_seconds", "toy_build_machine")


def checkpoint_identity(path: Path | str) -> str:
    """What a checkpoint is, for keys of runs made with it: the sha256 of its manifest (which holds the
    weights', configs' and tokenizer's hashes) less ``MANIFEST_HOW_MADE``, or its resolved path where it has
    no manifest."""
    ckpt = resolve_checkpoint(path)
    manifest = manifest_path(ckpt)
    if not manifest.is_file():
        return str(ckpt.resolve())
    content = {k: v for k, v in read_json(manifest, "a checkpoint manifest").items() if k not in MANIFEST_HOW_MADE}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def checkpoint_label(path: Path | str) -> str:
    """A checkpoint as the tables made with it record it: ``<its manifest's name>@<the first 16 hex digits of
    checkpoint_identity>`` (rollout tables' ``model`` column, score tables' ``MODELS_RECORD``), so a table
    given as another model's, or another pair's, is told apart; its resolved path where it has no manifest."""
    identity = checkpoint_identity(path)
    manifest = manifest_path(resolve_checkpoint(path))
    if not manifest.is_file():
        return identity
    return f"{read_json(manifest, 'a checkpoint manifest').get('name', manifest.stem)}@{identity[:16]}"


def label_name(label: str) -> str:
    """The model name in a ``checkpoint_label``."""
    return label.rsplit("@", 1)[0]


def _check_replaceable(name: str, out_dir: Path) -> None:
    """Refuse an ``out_dir`` a fetch may not replace: one that is no directory, or holds anything but the links
    an earlier fetch made (the fetch replaced any directory whole: a user's folder, or the working directory)."""
    if not out_dir.name:
        raise ModelFetchError(f"model {name!r}: {out_dir} names no folder; expected a path for the checkpoint")
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise ModelFetchError(f"model {name!r}: {out_dir} exists and is no folder; expected a new path or a checkpoint")
    kept = next((f for f in sorted(out_dir.iterdir()) if not f.is_symlink()), None)
    if kept is not None:
        raise ModelFetchError(
            f"model {name!r}: {out_dir} holds {kept.name}, which no fetch made (a fetch's folder holds links "
            "alone): expected a new path, or an earlier fetch's folder to replace"
        )


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def _patterns(trust_remote_code: bool) -> list[str]:
    return HUB_PATTERNS + (["*.py"] if trust_remote_code else [])


def _named(src: Path, trust_remote_code: bool) -> list[Path]:
    """The entries of a local checkpoint directory that its file patterns name, sorted."""
    patterns = _patterns(trust_remote_code)
    return sorted(f for f in Path(src).iterdir() if any(fnmatch.fnmatch(f.name, p) for p in patterns))


def linked_files(src: Path, trust_remote_code: bool = False) -> list[Path]:
    """The files of a local checkpoint that ``fetch_model`` links (configs, tokenizer, safetensors)."""
    return [f for f in _named(src, trust_remote_code) if f.is_file()]


def unreadable_files(src: Path, trust_remote_code: bool = False) -> list[Path]:
    """Entries of a local checkpoint that its file patterns name but that are no regular file: a dangling or
    looping link, a directory, a FIFO, a device. Linking takes regular files alone, so the checkpoint would be
    fetched without them: a tokenizer or weights file gone without a word."""
    return [f for f in _named(src, trust_remote_code) if not f.is_file()]


def fetch_model(name: str, spec: Mapping[str, Any], out_dir: Path) -> dict:
    """Materialise a ``path`` or ``hub`` model spec at ``out_dir``; returns its manifest.

    The checkpoint directory holds links to the source files (the local directory's, or the
    Hugging Face cache's snapshot), restricted to configs, tokenizer files and safetensors
    weights, so no pickle weights can be loaded from it.
    """
    from tokenshift.tokenizer import TokenizerMismatch  # here: that module imports this one

    out_dir = Path(os.path.abspath(out_dir))  # `keep/..` is keep's parent, whose name is not ''
    trust = bool(spec.get("trust_remote_code", False))
    if "path" in spec:
        spec = {**spec, "path": path_spelling(spec["path"])}  # the manifest records it so
        src = Path(spec["path"]).resolve()
        if not (src / "config.json").is_file():
            raise ModelFetchError(f"model {name!r}: {src} is not a Hugging Face checkpoint (no config.json)")
        if odd := unreadable_files(src, trust):
            raise ModelFetchError(f"model {name!r}: {odd[0]} is no regular file (a broken link, a directory?)")
    elif "hub" in spec:
        src = _snapshot(name, spec)
    else:
        raise ModelFetchError(f"model {name!r}: fetch_model handles path and hub specs, got {dict(spec)}")
    if out_dir.resolve() == src or out_dir.resolve() in src.parents:
        raise ModelFetchError(
            f"model {name!r}: {out_dir} holds its source {src}: fetching would replace the source's files with links"
        )
    if src in out_dir.resolve().parents:  # its links and manifest written into the checkpoint they link
        raise ModelFetchError(f"model {name!r}: {out_dir} lies inside its source {src}: expected a path outside it")
    _check_replaceable(name, out_dir)
    refuse_foreign_manifest(out_dir)

    def link_and_check(tmp: Path) -> tuple[dict, dict]:
        for f in linked_files(src, trust):
            (tmp / f.name).symlink_to(_link_target(spec, f, tmp))
        # checked before it takes out_dir's place: a checkpoint refused leaves no directory behind, and a
        # finished one there (with its manifest) as it was (the tenth hostile pass, G9)
        # a hub snapshot's directory is named by its commit: what a branch such as `main` resolved to
        extra = {"commit": src.name} if "hub" in spec else None
        try:
            return checked_manifest(tmp, name=name, spec=spec, extra=extra)
        except (ModelFetchError, TokenizerMismatch) as e:  # named where the files are: the source (tmp links to it)
            raise type(e)(str(e).replace(str(tmp), str(src))) from None

    manifest, fingerprints = made_beside(out_dir, link_and_check)
    _write_manifest(out_dir, manifest, fingerprints)  # a link's fingerprint is its target's: moved, the same
    return manifest


def _link_target(spec: Mapping[str, Any], f: Path, tmp: Path) -> str:
    """Where the fetch's link to the source's file ``f`` points, from the folder ``tmp`` (beside ``out_dir``, so at
    its depth): a ``path:`` given relative, as relative to the link (the way the config names it: a study moved
    whole with the checkpoints beside it finds them where they now are, the eighteenth pass), where that reaches
    the very file ``f`` is; else (a ``..`` after a linked folder, or ``resources/`` itself a link elsewhere: a
    relative link is followed from where the link really is, the nineteenth pass) the file's real path."""
    if "path" in spec and not Path(spec["path"]).is_absolute():
        relative = os.path.relpath(Path(os.path.abspath(spec["path"])) / f.name, tmp)
        if os.path.realpath(tmp / relative) == os.path.realpath(f):
            return relative
    return str(f.resolve())


def made_beside(out_dir: Path, fill: Callable[[Path], T]) -> T:
    """Run ``fill`` on a new folder beside ``out_dir``, which then takes ``out_dir``'s place (its manifest gone
    first: it vouched for the files replaced); returns what ``fill`` returns. A ``fill`` that fails, or is
    interrupted, leaves ``out_dir`` as it was and no folder behind. The folder gets the mode the umask gives, not
    mkdtemp's 0700: a group sharing a cache or a study's results reads it. The fetch and the toy builds make their
    checkpoints so."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    os.chmod(tmp, 0o777 & ~umask())
    try:
        made = fill(tmp)
        manifest_path(out_dir).unlink(missing_ok=True)  # gone before the files it vouches for
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return made


def _snapshot(name: str, spec: Mapping[str, Any]) -> Path:
    """Download (or find in the Hugging Face cache) a hub snapshot at the pinned revision."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id=spec["hub"],
                revision=spec["revision"],
                allow_patterns=_patterns(bool(spec.get("trust_remote_code"))),
            )
        )
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelFetchError(
            f"model {name!r}: could not download hub id {spec['hub']!r} at revision {spec['revision']!r} "
            f"({type(e).__name__}: {first}). Is the hub reachable (network, HF_HUB_OFFLINE, token)? "
            f"Or download it elsewhere and point `path:` at the directory."
        ) from e
