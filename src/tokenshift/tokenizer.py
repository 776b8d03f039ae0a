"""Tokenizers: a checkpoint's, loaded as every stage loads it, its fingerprint and round-trip check, the
token ids generation stops at, and whether a pair's two tokenizers mean the same thing by every token id.

A pair is compared over the vocabulary its two models share: one tokenizer may extend the other with
tokens at ids past the other's end (added special tokens), and logits are then sliced to the smaller;
an id that names different tokens in the two is refused (``TokenizerMismatch``). ``check_pair`` writes
the pair manifest the later stages read the shared size from.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path

from tokenshift.checkpoints import ModelFetchError, manifest_path, resolve_checkpoint
from tokenshift.io import InputError, read_json, write_json_atomic
from tokenshift.loading import loading_options

ROUNDTRIP_TEXTS = (
    "Q:8+6+8-4=?A:8+6=14.14+8=22.22-4=18.\\boxed{18}",
    "Let $x^2 + 3x - 10 = 0$. Then $x = \\frac{-3 \\pm 7}{2}$, so the answer is \\boxed{2}.",
    "  Indented text,\nnew lines\tand tabs; unicode: π ≈ 3.14159, naïve café, 数学.",
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "*.model", "*.tiktoken")
"""A checkpoint's tokenizer is one of these (Hugging Face fast, BPE, WordPiece, SentencePiece, tiktoken)."""


class TokenizerMismatch(InputError):
    """Two tokenizers whose token ids do not mean the same thing (bad input: a pair that cannot be compared)."""


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


def auto_tokenizer(ckpt_dir: Path, trust_remote_code: bool = False):
    """A checkpoint directory's tokenizer through ``AutoTokenizer`` (as the fetch checks it, before any
    manifest exists; a stage's is ``load_tokenizer``), or ``ModelFetchError`` naming the directory."""
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
    except Exception as e:  # a file that is not JSON, cut short, or whose merges name tokens it lacks (tokenizers)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFetchError(f"transformers cannot read the tokenizer of {ckpt_dir}: {first}") from None


def load_tokenizer(ckpt: Path | str, trust_remote_code: bool | None = None):
    """The tokenizer of a checkpoint (a directory, or its manifest: then the checkpoint is verified);
    its code runs where its manifest says so (``loading_options``) or ``trust_remote_code`` is given."""
    ckpt_dir = resolve_checkpoint(ckpt)
    if trust_remote_code is None:
        trust_remote_code = loading_options(ckpt_dir)["trust_remote_code"]
    return auto_tokenizer(ckpt_dir, trust_remote_code)


def stop_ids(ckpt: Path | str, tokenizer) -> list[int]:
    """The token ids generation stops at: the tokenizer's EOS and those of the checkpoint's
    ``generation_config.json`` (vLLM stops on the latter), the tokenizer's first."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    for i in generation_eos(resolve_checkpoint(ckpt)):
        if i not in ids:
            ids.append(i)
    return ids


def generation_eos(ckpt_dir: Path) -> list[int]:
    """The EOS ids a checkpoint directory's ``generation_config.json`` names (none without one), or an error
    naming the file (the fetch reads it too, so that no generating job is the first to find it broken)."""
    path = Path(ckpt_dir) / "generation_config.json"
    if not path.is_file():
        return []
    if path.resolve().name == path.name:  # a fetch's link to the source's file: name the file the user has
        path = path.resolve()
    given = read_json(path, "the checkpoint's generation settings").get("eos_token_id")
    given = [given] if isinstance(given, int) and not isinstance(given, bool) else given or []
    if not isinstance(given, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in given):
        raise ModelFetchError(f"{path}: eos_token_id is {given!r}; expected a token id or a list of them")
    return given


def check_chat_template(ckpt_dir: Path, tokenizer) -> None:
    """Fail, naming the checkpoint, where its chat template cannot make a prompt (a template that raises, or
    refers to what it is not given): the rollout jobs would fail on their first problem."""
    if not getattr(tokenizer, "chat_template", None):
        return
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "1+1"}], add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja2's TemplateError, or whatever the template's own code raised
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFetchError(f"{ckpt_dir}: its chat template cannot make a prompt: {first}") from None


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
    return compare_tokenizers(*_dir_tokenizers(base_dir, rl_dir))


def _dir_tokenizers(*ckpt_dirs: Path) -> list:
    return [auto_tokenizer(Path(d), loading_options(d)["trust_remote_code"]) for d in ckpt_dirs]


CHAT_PROBE = [{"role": "user", "content": "What is 1 + 1?"}]
"""The question two chat templates are compared on."""


def chat_prompt(tokenizer) -> str | None:
    """The prompt the tokenizer's chat template makes of ``CHAT_PROBE`` (None: it has no template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer.apply_chat_template(CHAT_PROBE, add_generation_prompt=True, tokenize=False)


def chat_prompt_difference(base, rl) -> str | None:
    """How the two tokenizers' chat templates would prompt one question differently, or None where they
    prompt it alike (both without a template, or two templates that make the same text)."""
    prompts = {"base": chat_prompt(base), "rl": chat_prompt(rl)}
    if prompts["base"] == prompts["rl"]:
        return None
    if None in prompts.values():
        return f"only the {'rl' if prompts['base'] is None else 'base'} model has a chat template"
    return "their chat templates make different prompts of one question ({})".format(
        ", ".join(f"{role}: {text!r:.100}" for role, text in prompts.items())
    )


CHAT_MISMATCH_FIX = (
    "its datasets go through the chat template, so the two models would answer different prompts (each model's "
    "rollouts take its own template, the cross-sampling runs the base model's); give both checkpoints one chat "
    "template, or set chat_template: false on the pair's datasets"
)


def read_pair_manifest(path: Path | str) -> dict:
    """A pair manifest ``check_pair`` wrote, or ``InputError`` naming the file: its pair, base and rl are names
    and its shared vocabulary a positive count (``{}``, a model's manifest or a list as a name were taken before,
    and a swap of the two models' rollouts went unseen)."""
    manifest = read_json(path, "a pair manifest (tokenshift models check-pair)")
    for key in ("pair", "base", "rl"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise InputError(
                f"{path}: {key!r} is {manifest.get(key)!r}; expected a name (a pair manifest written by "
                "`tokenshift models check-pair`)"
            )
    shared = manifest.get("shared_vocab_size")
    if not isinstance(shared, int) or isinstance(shared, bool) or shared < 1:
        raise InputError(
            f"{path}: shared_vocab_size is {shared!r}; expected a positive whole number (a pair manifest written by "
            "`tokenshift models check-pair`)"
        )
    return manifest


def check_pair(pair: str, base: Path, rl: Path, out: Path, *, chat: bool = False) -> dict:
    """Compare a pair's checkpoints (directories or manifests) and write ``out``, the pair manifest
    with the shared vocabulary size. ``chat``: the pair's prompts go through the chat template, so
    two templates that prompt a question differently are refused."""
    base_dir, rl_dir = resolve_checkpoint(base), resolve_checkpoint(rl)
    what = "a checkpoint manifest: materialise the checkpoint with `tokenshift models fetch` first"
    mb, mr = read_json(manifest_path(base_dir), what), read_json(manifest_path(rl_dir), what)
    if base_dir.resolve() == rl_dir.resolve():  # two names of one model are two checkpoints (a null control)
        raise ModelFetchError(
            f"pair {pair!r}: --base {base} and --rl {rl} are one checkpoint ({base_dir}); expected the pair's two "
            "models"
        )
    tokenizers = _dir_tokenizers(base_dir, rl_dir)
    try:
        shared = compare_tokenizers(*tokenizers)
    except TokenizerMismatch as e:
        raise TokenizerMismatch(
            f"pair {pair!r}: models {mb['name']!r} and {mr['name']!r} have different tokenizers: {e}"
        ) from None
    try:
        chat_difference = chat_prompt_difference(*tokenizers)
    except Exception as e:  # a template that raises (the fetch checks it; a checkpoint fetched before did not)
        if chat:
            raise TokenizerMismatch(f"pair {pair!r}: a chat template raises ({type(e).__name__}: {e})") from None
        chat_difference = f"a chat template raises ({type(e).__name__})"
    if chat and chat_difference:
        raise TokenizerMismatch(f"pair {pair!r}: {chat_difference}; {CHAT_MISMATCH_FIX}")
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
        "same_chat_prompts": chat_difference is None,
    }
    write_json_atomic(Path(out), info)
    return info
