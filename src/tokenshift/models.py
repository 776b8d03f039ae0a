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
an error here, not a wrong number later.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenshift.io import InputError, file_fingerprint, read_json, sha256_file, umask, write_json_atomic

log = logging.getLogger(__name__)

ROUNDTRIP_TEXTS = (
    "Q:8+6+8-4=?A:8+6=14.14+8=22.22-4=18.\\boxed{18}",
    "Let $x^2 + 3x - 10 = 0$. Then $x = \\frac{-3 \\pm 7}{2}$, so the answer is \\boxed{2}.",
    "  Indented text,\nnew lines\tand tabs; unicode: π ≈ 3.14159, naïve café, 数学.",
)
WEIGHT_SUFFIXES = (".safetensors",)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "*.model", "*.tiktoken")
"""A checkpoint's tokenizer is one of these (Hugging Face fast, BPE, WordPiece, SentencePiece, tiktoken)."""
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


class ModelFetchError(RuntimeError):
    """A model could not be materialised; the message names the model and its source."""


class TokenizerMismatch(ValueError):
    """Two tokenizers whose token ids do not mean the same thing."""


def manifest_path(ckpt_dir: Path) -> Path:
    return ckpt_dir.with_name(ckpt_dir.name + ".json")


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


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the token -> id map and the tokenization of the round-trip texts."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    h = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode())
    for text in ROUNDTRIP_TEXTS:
        h.update(json.dumps(tokenizer.encode(text, add_special_tokens=False)).encode())
    return h.hexdigest()


def check_tokenizer_roundtrip(ckpt_dir: Path, tokenizer) -> None:
    """Fail if the Auto-loaded tokenizer differs from the checkpoint's own ``tokenizer.json``."""
    from tokenizers import Tokenizer

    raw_path = ckpt_dir / "tokenizer.json"
    raw = Tokenizer.from_file(str(raw_path)) if raw_path.is_file() else None
    for text in ROUNDTRIP_TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if raw is not None:
            raw_ids = raw.encode(text, add_special_tokens=False).ids
            if raw_ids != ids:
                raise TokenizerMismatch(
                    f"{ckpt_dir}: AutoTokenizer encodes {text[:40]!r}... as {ids[:12]}... but the checkpoint's "
                    f"tokenizer.json gives {raw_ids[:12]}...: transformers rebuilt the tokenizer "
                    f"({type(tokenizer).__name__}) and changed it"
                )
        back = tokenizer.decode(ids)
        if back != text:
            raise TokenizerMismatch(f"{ckpt_dir}: tokenizer does not round-trip {text!r}: decoded {back!r}")


def has_tokenizer(ckpt_dir: Path | str) -> bool:
    """Whether a checkpoint directory holds tokenizer files (RL trainers may save the weights alone)."""
    return any(fnmatch.fnmatch(f.name, p) for f in Path(ckpt_dir).iterdir() for p in TOKENIZER_FILES)


def _auto_tokenizer(ckpt_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    # without its files transformers builds an empty tokenizer from the model type, which every
    # other tokenizer "extends", so a pair would pass with one shared token
    if not trust_remote_code and not has_tokenizer(ckpt_dir):
        raise ModelFetchError(
            f"{ckpt_dir} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the tokenizer "
            "with the checkpoint (a tuned model's is its base model's)"
        )
    try:
        return AutoTokenizer.from_pretrained(ckpt_dir, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError, TypeError) as e:  # a tokenizer file that is not JSON, or cut short
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFetchError(f"transformers cannot read the tokenizer of {ckpt_dir}: {first}") from None


LOADING_KEYS = ("dtype", "attn_implementation")
"""A model entry's keys that its loaders read besides ``trust_remote_code``, recorded in its manifest."""


# transformers' attention implementations that need a package of their own, and their availability checks
ATTENTION_PACKAGES = {
    "flash_attention_2": ("flash_attn", "is_flash_attn_2_available"),
    "flash_attention_3": ("flash_attn_3", "is_flash_attn_3_available"),
    "flash_attention_4": ("flash_attn_4", "is_flash_attn_4_available"),
}


def unknown_attention(name: str) -> str | None:
    """What an ``attn_implementation`` was expected to be where the installed transformers has no ``name``
    (a ``ValueError`` in the first job that loaded the model), else None. A hub kernel (``owner/name``)
    passes: it is fetched where a job loads it."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if "/" in name or name in known:
        return None
    return f"expected one of transformers' attention implementations ({', '.join(known)}) or a hub kernel (owner/name)"


def missing_attention_package(name: str | None) -> str | None:
    """The package an ``attn_implementation`` needs where this machine lacks it (flash_attention_2 without
    flash_attn), else None: a warning at planning, since a cluster's GPU nodes may have what the submit
    host lacks; ``load_causal_lm`` refuses it in one line where the model is loaded."""
    if name not in ATTENTION_PACKAGES:
        return None
    import transformers.utils

    package, available = ATTENTION_PACKAGES[name]
    return None if getattr(transformers.utils, available, lambda: False)() else package


def loading_options(ckpt_dir: Path | str) -> dict[str, Any]:
    """How every loader of a checkpoint (transformers' and vLLM's) loads it, as the model's config entry
    says and its manifest records: ``trust_remote_code`` (off for a checkpoint without a manifest), and
    ``dtype`` and ``attn_implementation`` where the entry sets them. The one place a stage learns whether
    the checkpoint's own code may run."""
    manifest = manifest_path(Path(ckpt_dir))
    spec = read_json(manifest, "a checkpoint manifest").get("spec", {}) if manifest.is_file() else {}
    return {
        "trust_remote_code": bool(spec.get("trust_remote_code", False)),
        **{k: spec[k] for k in LOADING_KEYS if spec.get(k) is not None},
    }


def load_tokenizer(ckpt: Path | str, trust_remote_code: bool | None = None):
    """The tokenizer of a checkpoint (a directory, or its manifest: then the checkpoint is verified);
    its code runs where its manifest says so (``loading_options``) or ``trust_remote_code`` is given."""
    ckpt_dir = resolve_checkpoint(ckpt)
    if trust_remote_code is None:
        trust_remote_code = loading_options(ckpt_dir)["trust_remote_code"]
    return _auto_tokenizer(ckpt_dir, trust_remote_code)


def stop_ids(ckpt: Path | str, tokenizer) -> list[int]:
    """The token ids generation stops at: the tokenizer's EOS and those of the checkpoint's
    ``generation_config.json`` (vLLM stops on the latter), the tokenizer's first."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    path = resolve_checkpoint(ckpt) / "generation_config.json"
    if path.is_file():
        given = json.loads(path.read_text()).get("eos_token_id")
        for i in [given] if isinstance(given, int) else given or []:
            if int(i) not in ids:
                ids.append(int(i))
    return ids


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
    except (OSError, ValueError):
        return False
    if not isinstance(cfg, dict) or not cfg.get("auto_map"):
        return False
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return cfg.get("model_type") not in CONFIG_MAPPING_NAMES


def _check_safetensors(name: str, path: Path) -> None:
    """Refuse a weights file safetensors cannot open: cut short, or not safetensors at all."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise ModelFetchError(f"model {name!r}: {path} is not a whole safetensors file: {e}") from None


def write_manifest(
    ckpt_dir: Path, *, name: str, spec: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict:
    """Verify the checkpoint at ``ckpt_dir`` and write its manifest next to it, last."""
    from transformers import AutoConfig

    trust = bool(spec.get("trust_remote_code", False))
    if "attn_implementation" in spec and (expected := unknown_attention(spec["attn_implementation"])):
        raise ModelFetchError(f"model {name!r}: attn_implementation {spec['attn_implementation']!r}: {expected}")
    weights = sorted(p for p in ckpt_dir.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise ModelFetchError(f"model {name!r}: {ckpt_dir} has no safetensors weights (only safetensors are loaded)")
    for p in weights:  # a cut download or copy: its header names more bytes than it holds (read: the header alone)
        _check_safetensors(name, p)
    # hashed before anything is loaded from them: the manifest vouches for the files that were checked
    files = checkpoint_files(ckpt_dir)
    # a linked file's fingerprint is its target's: the source checkpoint's
    fingerprints = {p.name: file_fingerprint(p) for p in files}
    # a hub snapshot's large files carry the hub's own sha256 (its cache names their blobs by it): a 32B
    # model's 65 GB are not read again for it; a local `path:` is hashed whatever its files' names
    hashes = {p.name: ("hub" in spec and hub_sha256(p)) or sha256_file(p) for p in files}
    try:
        cfg = AutoConfig.from_pretrained(ckpt_dir, trust_remote_code=trust)
    except (ValueError, OSError, KeyError) as e:  # a type transformers lacks, custom code not trusted
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
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
    tok = _auto_tokenizer(ckpt_dir, trust)
    check_tokenizer_roundtrip(ckpt_dir, tok)
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
    write_json_atomic(fingerprints_path(ckpt_dir), fingerprints)
    write_json_atomic(manifest_path(ckpt_dir), manifest)
    return manifest


def _fingerprints(ckpt_dir: Path) -> dict[str, list[int]]:
    try:
        return json.loads(fingerprints_path(ckpt_dir).read_text())
    except (OSError, ValueError):
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
        if fingerprints.get(fname) == list(file_fingerprint(path)):
            continue
        log.info("model %r: %s changed on disk since its manifest; hashing it again", name, fname)
        if sha256_file(path) != digest:
            toy = manifest.get("spec", {}).get("toy")
            again = (
                f"build it again (snakemake --forcerun toy_{toy}: Snakemake sees no change to a model it built)"
                if toy
                else "run its fetch again (snakemake does so when the source files change)"
            )
            raise ModelFetchError(
                f"model {name!r}: {path} is not the file its manifest {manifest_path(ckpt_dir)} hashed (overwritten "
                f"since?); {again}, so that every result is recomputed from the new files"
            )


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
    return ckpt


# what a manifest records about how a checkpoint was made, not what it is: a toy built twice into the same
# weights, on a laptop and on a cluster's node, is one checkpoint
MANIFEST_TIMINGS = ("toy_build_seconds",)


def checkpoint_identity(path: Path | str) -> str:
    """What a checkpoint is, for keys of runs made with it: the sha256 of its manifest (which holds the
    weights', configs' and tokenizer's hashes) less ``MANIFEST_TIMINGS``, or its resolved path where it has
    no manifest."""
    ckpt = resolve_checkpoint(path)
    manifest = manifest_path(ckpt)
    if not manifest.is_file():
        return str(ckpt.resolve())
    content = {k: v for k, v in read_json(manifest, "a checkpoint manifest").items() if k not in MANIFEST_TIMINGS}
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


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def _patterns(trust_remote_code: bool) -> list[str]:
    return HUB_PATTERNS + (["*.py"] if trust_remote_code else [])


def linked_files(src: Path, trust_remote_code: bool = False) -> list[Path]:
    """The files of a local checkpoint that ``fetch_model`` links (configs, tokenizer, safetensors)."""
    patterns = _patterns(trust_remote_code)
    return sorted(f for f in Path(src).iterdir() if f.is_file() and any(fnmatch.fnmatch(f.name, p) for p in patterns))


def fetch_model(name: str, spec: Mapping[str, Any], out_dir: Path) -> dict:
    """Materialise a ``path`` or ``hub`` model spec at ``out_dir``; returns its manifest.

    The checkpoint directory holds links to the source files (the local directory's, or the
    Hugging Face cache's snapshot), restricted to configs, tokenizer files and safetensors
    weights, so no pickle weights can be loaded from it.
    """
    out_dir = Path(out_dir)
    trust = bool(spec.get("trust_remote_code", False))
    if "path" in spec:
        src = Path(spec["path"]).resolve()
        if not (src / "config.json").is_file():
            raise ModelFetchError(f"model {name!r}: {src} is not a Hugging Face checkpoint (no config.json)")
    elif "hub" in spec:
        src = _snapshot(name, spec)
    else:
        raise ModelFetchError(f"model {name!r}: fetch_model handles path and hub specs, got {dict(spec)}")
    if out_dir.resolve() == src or out_dir.resolve() in src.parents:
        raise ModelFetchError(
            f"model {name!r}: {out_dir} holds its source {src}: fetching would replace the source's files with links"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # an earlier fetch's manifest would vouch for the new files if verifying them fails
    manifest_path(out_dir).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700: a shared cache is read by the group
    try:
        for f in linked_files(src, trust):
            (tmp / f.name).symlink_to(f.resolve())
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # a hub snapshot's directory is named by its commit: what a branch such as `main` resolved to
    return write_manifest(out_dir, name=name, spec=spec, extra={"commit": src.name} if "hub" in spec else None)


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


def resolve_device(device: str) -> str:
    """``auto`` is CUDA where a GPU is visible, else CPU; anything else is passed through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_causal_lm(path: Path | str, device: str = "auto"):
    """A checkpoint's ``AutoModelForCausalLM`` in eval mode on ``device``: float32 on CPU, bf16 on a GPU,
    unless the model's entry sets its ``dtype`` (and ``attn_implementation``; ``loading_options``).

    ``path`` is a checkpoint directory or its manifest (then the weights are verified first).
    ``device`` ``cuda:i,j,...`` spreads the layers over those GPUs, balanced, with Accelerate's
    ``device_map`` (``pip install accelerate``); each keeps a tenth free beside its share.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from tokenshift.memory import gpu_ids, max_memory

    ckpt = resolve_checkpoint(path)
    device = resolve_device(device)
    options = loading_options(ckpt)
    ours = torch.float32 if device == "cpu" else torch.bfloat16
    options["dtype"] = getattr(torch, options["dtype"]) if "dtype" in options else ours
    if package := missing_attention_package(options.get("attn_implementation")):
        name = read_json(manifest_path(ckpt), "a checkpoint manifest").get("name", ckpt.name)
        raise ModelFetchError(
            f"model {name!r}: attn_implementation {options['attn_implementation']} needs the {package} package, "
            f"which is not installed on this machine: install it, or set models.{name}.attn_implementation to "
            "one it has (sdpa, eager)"
        )
    gpus = gpu_ids(device)
    if len(gpus) > 1:
        total = torch.cuda.get_device_properties(gpus[0]).total_memory
        model = AutoModelForCausalLM.from_pretrained(
            ckpt, device_map="balanced", max_memory=max_memory(gpus, total), **options
        )
        return model.eval()
    return AutoModelForCausalLM.from_pretrained(ckpt, **options).to(device).eval()


def check_devices(requested: Mapping[str, str]) -> None:
    """Refuse, naming the setting (``requested``: setting -> device), a GPU device this job cannot have: any where
    torch sees no GPU (a CPU-only build, or a node without one), an index past the GPUs it sees. The config
    check cannot know: ``snakemake -n`` may plan for a cluster's GPU nodes."""
    import torch

    from tokenshift.memory import gpu_ids

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for key, device in requested.items():
        ids = gpu_ids(device)
        if not ids:  # auto or cpu
            continue
        flag = f"{key} (--{key.replace('_', '-')})"
        if visible == 0:
            why = "torch is built without CUDA" if torch.version.cuda is None else "torch sees no GPU on this machine"
            raise InputError(f"{flag} {device!r}: {why}; set it to auto or cpu, or run this job where a GPU is")
        if max(ids) >= visible:
            raise InputError(
                f"{flag} {device!r}: this job sees {visible} GPU(s), cuda:0 to cuda:{visible - 1}; name one of those"
            )


def job_devices(checkpoints: Sequence[Path | str], requested: Sequence[str]) -> list[str]:
    """The devices of the models one job loads (``memory.plan_devices`` over the GPUs it sees):
    ``auto`` models on GPU sets of their own where the job has enough GPUs."""
    import torch

    from tokenshift.memory import ModelShape, plan_devices

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible == 0 or "auto" not in requested:
        return [resolve_device(r) for r in requested]
    shapes = []
    for ckpt in checkpoints:
        try:
            shapes.append(ModelShape.from_checkpoint(resolve_checkpoint(ckpt)))
        except (KeyError, OSError, ValueError):  # an architecture whose config names its sizes otherwise
            shapes.append(None)
    return plan_devices(shapes, requested, visible=visible, gpu_bytes=torch.cuda.get_device_properties(0).total_memory)


def job_batch(
    stage: str,
    setting: int | str,
    checkpoints: Sequence[Path | str],
    devices: Sequence[str],
    *,
    tokens_per_row: int = 0,
    chunk_memory_bytes: int = 512 * 2**20,
) -> int:
    """A stage's batch setting for the models ``checkpoints`` about to be loaded on ``devices``:
    ``memory.plan_batch`` with the free memory of their GPUs now and their ``config.json`` shapes.
    The value is logged, with what it was planned from."""
    import torch

    from tokenshift.memory import GIB, ModelShape, gpu_ids, plan_batch

    sets = [gpu_ids(resolve_device(d)) for d in devices]
    kind = "cuda" if all(sets) else "cpu"
    shapes, free = [], []
    for ckpt, ids in zip(checkpoints, sets):
        try:
            shapes.append(ModelShape.from_checkpoint(resolve_checkpoint(ckpt)))
        except (KeyError, OSError, ValueError):  # an architecture whose config names its sizes otherwise
            shapes.append(None)
        free.append(min(torch.cuda.mem_get_info(i)[0] for i in ids) if kind == "cuda" else 0)
    shared = len(sets) == 2 and bool(set(sets[0]) & set(sets[1]))
    value = plan_batch(
        stage,
        setting,
        device_kind=kind,
        free_bytes=free,
        gpus=[len(ids) for ids in sets],
        shapes=shapes,
        tokens_per_row=tokens_per_row,
        chunk_memory_bytes=chunk_memory_bytes,
        shared=shared,
    )
    unit = "padded tokens per pass" if stage == "scoring" else "rows"
    if setting != "auto":
        log.info("%s batch: %d %s (set in the config)", stage, value, unit)
    elif kind == "cuda" and None not in shapes:
        log.info(
            "%s batch: %d %s, planned from %s GiB free on %s (%s)",
            stage,
            value,
            unit,
            " / ".join(f"{f / GIB:.1f}" for f in free),
            " / ".join(resolve_device(d) for d in devices),
            f"{tokens_per_row} tokens per row" if stage != "scoring" else "teacher forcing",
        )
    else:
        log.info("%s batch: %d %s (auto on %s)", stage, value, unit, "CPU" if kind == "cpu" else "an unknown shape")
    return value


def load_job_models(
    stage: str,
    setting: int | str,
    checkpoints: Sequence[Path | str],
    requested: Mapping[str, str],
    **batch_kw: int,
) -> tuple[list, int]:
    """What a job of the transformers backend loads, the one way every stage loads it: the models'
    devices (``job_devices``: disjoint GPU sets where the job has enough), the stage's batch planned
    for them (``job_batch``, before the weights take their share of the GPUs' free memory), then each
    checkpoint on its device. ``requested`` names each checkpoint's device setting and its value, in
    ``checkpoints``' order. Returns the models, in that order, and the batch."""
    check_devices(requested)
    devices = job_devices(checkpoints, list(requested.values()))
    batch = job_batch(stage, setting, checkpoints, devices, **batch_kw)
    return [load_causal_lm(c, d) for c, d in zip(checkpoints, devices, strict=True)], batch


LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
"""Config keys of architectures whose CausalLM forward reshapes the LM head's output (Gemma 2/3
softcapping, Cohere and Granite scaling): their logits are not ``head(hidden)``."""


def plain_lm_head(model) -> bool:
    """Whether the model's logits are exactly its output embeddings applied to the final hidden state."""
    cfg = model.config
    return all(getattr(cfg, k, None) in (None, 1, 1.0) for k in LOGIT_TRANSFORMS)


def transformer_body(model):
    """The transformer without its LM head (``model.model`` for Qwen2/Llama-style models)."""
    return getattr(model, model.base_model_prefix)


def compare_tokenizers(base, rl) -> int:
    """The vocabulary size both models share, or ``TokenizerMismatch``.

    Identical vocabularies pass. One vocabulary may extend the other with tokens at ids past
    the other's end (added special tokens); the shared size is then the smaller one, and
    logits are sliced to it. Any id that names different tokens is refused.
    """
    vb, vr = base.get_vocab(), rl.get_vocab()
    ib = {i: t for t, i in vb.items()}
    ir = {i: t for t, i in vr.items()}
    shared = min(len(base), len(rl))
    diff = [i for i in range(shared) if ib.get(i) != ir.get(i)]
    if diff:
        i = diff[0]
        raise TokenizerMismatch(
            f"{len(diff)} of the first {shared} token ids differ, e.g. id {i} is {ib.get(i)!r} in the base "
            f"tokenizer but {ir.get(i)!r} in the rl tokenizer"
        )
    return shared


def compare_tokenizer_dirs(base_dir: Path, rl_dir: Path) -> int:
    """``compare_tokenizers`` of two checkpoint directories (taken as they are: no manifest needed)."""
    tokenizers = [_auto_tokenizer(Path(d), loading_options(d)["trust_remote_code"]) for d in (base_dir, rl_dir)]
    return compare_tokenizers(*tokenizers)


def check_pair(pair: str, base: Path, rl: Path, out: Path) -> dict:
    """Compare a pair's checkpoints (directories or manifests) and write ``out``, the pair manifest
    with the shared vocabulary size."""
    base_dir, rl_dir = resolve_checkpoint(base), resolve_checkpoint(rl)
    what = "a checkpoint manifest: materialise the checkpoint with `tokenshift models fetch` first"
    mb, mr = read_json(manifest_path(base_dir), what), read_json(manifest_path(rl_dir), what)
    if base_dir.resolve() == rl_dir.resolve():  # two names of one model are two checkpoints (a null control)
        raise ModelFetchError(
            f"pair {pair!r}: --base {base} and --rl {rl} are one checkpoint ({base_dir}); expected the pair's two "
            "models"
        )
    try:
        shared = compare_tokenizer_dirs(base_dir, rl_dir)
    except TokenizerMismatch as e:
        raise TokenizerMismatch(
            f"pair {pair!r}: models {mb['name']!r} and {mr['name']!r} have different tokenizers: {e}"
        ) from None
    for m in (mb, mr):
        if m["embedding_rows"] and m["embedding_rows"] < shared:
            raise TokenizerMismatch(
                f"pair {pair!r}: model {m['name']!r} has {m['embedding_rows']} embedding rows, fewer than the "
                f"{shared} tokens of the tokenizer"
            )
    info = {
        "pair": pair,
        "base": mb["name"],
        "rl": mr["name"],
        "shared_vocab_size": shared,
        "embedding_rows": {"base": mb["embedding_rows"], "rl": mr["embedding_rows"]},
        "identical_tokenizers": mb["tokenizer_sha256"] == mr["tokenizer_sha256"],
    }
    write_json_atomic(Path(out), info)
    return info
