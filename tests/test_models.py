"""The checkpoint stage on real checkpoints: link, hub snapshot (offline cache), manifests, tokenizer rules."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import save_checkpoint
from helpers import cli, custom_code_checkpoint, one_line_error, other_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenshift.checkpoints import (
    ModelFetchError,
    checkpoint_files,
    checkpoint_identity,
    checkpoint_label,
    fetch_model,
    manifest_path,
    resolve_checkpoint,
    verify_checkpoint,
    write_manifest,
)
from tokenshift.io import sha256_file
from tokenshift.tokenizer import TokenizerMismatch, check_pair, compare_tokenizer_dirs, compare_tokenizers
from tokenshift.toy.tokenizer import QWEN2_PRETOKENIZE_REGEX


def test_local_checkpoint_is_linked_verified_and_reloads(make_checkpoint, tmp_path):
    src = make_checkpoint("src")
    out = tmp_path / "resources" / "models" / "m"
    manifest = fetch_model("m", {"path": str(src)}, out)
    assert manifest_path(out).is_file() and json.loads(manifest_path(out).read_text()) == manifest
    assert manifest["source"] == "path" and manifest["tokenizer_roundtrip"] == "ok"
    # every file loading reads: weights, configs, tokenizer
    assert manifest["files_sha256"] == {f.name: sha256_file(f) for f in src.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(
        manifest["files_sha256"]
    )
    assert (out / "model.safetensors").is_symlink()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == manifest["embedding_rows"] == len(tok) == manifest["tokenizer_size"]


def test_a_relative_path_is_linked_relatively_only_where_that_reaches_its_files(make_checkpoint, tmp_path, monkeypatch):
    # eighteenth pass: links relative to a relative `path:`, so a study moved whole finds its checkpoints; nineteenth:
    # a relative link is followed from where the link really is, so `shared/../m` after a linked folder, or a
    # resources/ that is a link to another disk, linked another checkpoint, or none
    import shutil

    study, elsewhere = tmp_path / "study", tmp_path / "elsewhere"
    shutil.copytree(make_checkpoint("m"), study / "ckpt" / "m")
    shutil.copytree(make_checkpoint("other", seed=1), study / "m")  # what `shared/../m` reads as, lexically
    shutil.copytree(study / "ckpt" / "m", elsewhere / "m")
    (elsewhere / "shared").mkdir()
    (study / "shared").symlink_to(elsewhere / "shared")
    (tmp_path / "scratch" / "resources").mkdir(parents=True)
    monkeypatch.chdir(study)
    for path, out, relative in (
        ("ckpt/m", Path("resources/models/a"), True),
        ("shared/../m", Path("resources/models/b"), False),  # the OS reads elsewhere/m
        (str(study / "ckpt" / "m"), Path("resources/models/c"), False),
        ("ckpt/m", Path("linked/models/d"), False),  # linked/ is another disk's folder
    ):
        if out.parts[0] == "linked" and not Path("linked").exists():
            Path("linked").symlink_to(tmp_path / "scratch" / "resources")
        fetch_model(out.name, {"path": path}, out)
        named = Path(os.path.realpath(path))
        for link in out.iterdir():
            assert os.path.realpath(link) == str(named / link.name), (path, link)
            assert os.path.isabs(os.readlink(link)) is not relative, (path, link)
        resolve_checkpoint(manifest_path(out))  # and verified against its manifest


def test_a_fingerprints_file_that_is_a_pipe_is_taken_as_none(make_checkpoint, tmp_path):
    # twentieth pass: `.m.fingerprints.json` a FIFO: every stage resolving the checkpoint waited for a writer for ever
    out = tmp_path / "resources" / "models" / "m"
    fetch_model("m", {"path": str(make_checkpoint("src"))}, out)
    fingerprints = out.parent / ".m.fingerprints.json"
    fingerprints.unlink()
    os.mkfifo(fingerprints)
    assert resolve_checkpoint(manifest_path(out)) == out  # each file hashed again, and found the one recorded


def test_pickle_weights_are_never_linked(make_checkpoint, tmp_path):
    src = make_checkpoint("src")
    (src / "pytorch_model.bin").write_bytes(b"not loaded")
    out = tmp_path / "out"
    fetch_model("m", {"path": str(src)}, out)
    assert not (out / "pytorch_model.bin").exists()


def test_checkpoint_without_safetensors_is_refused(make_checkpoint, tmp_path):
    src = make_checkpoint("src")
    (src / "model.safetensors").unlink()
    with pytest.raises(ModelFetchError, match="no safetensors"):
        fetch_model("m", {"path": str(src)}, tmp_path / "out")
    assert not manifest_path(tmp_path / "out").exists()


def hub_cache(root: Path, repo: str, revision: str, files_from: Path) -> Path:
    """Lay out a Hugging Face hub cache the way snapshot_download leaves it (blobs + snapshot links)."""
    owner, name = repo.split("/")
    base = root / f"models--{owner}--{name}"
    snap = base / "snapshots" / revision
    (base / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        # Git LFS files (the weights) under the sha256 of their content, the others under their git object id
        data = f.read_bytes()
        lfs = f.suffix == ".safetensors"
        blob = base / "blobs" / (sha256_file(f) if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(revision)
    return root


def test_hub_model_from_a_snapshot_cache_offline(make_checkpoint, tmp_path):
    # huggingface_hub reads HF_HUB_CACHE when imported, so run the real CLI in a fresh process
    rev = "0123456789abcdef0123456789abcdef01234567"
    cache = hub_cache(tmp_path / "hf", "acme/tiny-qwen", rev, make_checkpoint("src"))
    out = tmp_path / "out"
    r = cli(
        ["models", "fetch", "tiny", "--hub", "acme/tiny-qwen", "--revision", rev, "--out", str(out)],
        env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["source"] == "hub" and manifest["revision"] == rev
    # the weights' sha256 is the hub's record (their blob's name), the other files' their own: all true
    assert manifest["files_sha256"] == {p.name: sha256_file(p) for p in checkpoint_files(out)}
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"
    # a branch is allowed where no commit is published: the manifest records the commit it resolved to
    r = cli(
        ["models", "fetch", "tiny", "--hub", "acme/tiny-qwen", "--revision", "main", "--out", str(tmp_path / "main")],
        env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads(manifest_path(tmp_path / "main").read_text())
    assert (manifest["revision"], manifest["commit"]) == ("main", rev)


def test_the_hubs_sha256_is_read_off_an_lfs_blobs_name_and_nothing_else(make_checkpoint, tmp_path):
    from tokenshift.checkpoints import hub_sha256

    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = hub_cache(tmp_path / "hf", "acme/tiny-qwen", rev, make_checkpoint("src")) / "models--acme--tiny-qwen"
    snap = snap / "snapshots" / rev
    weights = snap / "model.safetensors"
    assert hub_sha256(weights) == sha256_file(weights) == os.path.basename(os.path.realpath(weights))
    assert hub_sha256(snap / "config.json") is None  # a git object id (40 hex digits), no sha256
    assert hub_sha256(tmp_path / "src" / "model.safetensors") is None  # a local checkpoint's file
    renamed = tmp_path / "blobs" / ("f" * 63)  # a 63-digit name in a folder named blobs: not a record
    renamed.parent.mkdir()
    renamed.write_bytes(b"x")
    assert hub_sha256(renamed) is None


def test_hub_model_offline_fails_naming_model_and_revision(tmp_path):
    r = cli(
        [
            "models",
            "fetch",
            "qwen",
            "--hub",
            "Qwen/Qwen2.5-0.5B",
            "--revision",
            "deadbeef",
            "--out",
            str(tmp_path / "out"),
        ],
        env={"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 2
    assert re.search(r"model 'qwen'.*'Qwen/Qwen2.5-0.5B'.*revision 'deadbeef'", r.stderr)
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_silent_tokenizer_rebuild_is_an_error(tmp_path, toy_tokenizer):
    # A BPE whose pre-tokenizer keeps two-digit numbers whole: transformers rebuilds it as a Qwen2
    # tokenizer (digits split one by one) because config.json says qwen2. That must not pass.
    tok = other_tokenizer(["Q:8+6=14.14+8=22.\\boxed{22}"] * 20, pattern=r"\p{N}{1,2}| ?[^\s\p{L}\p{N}]+|\p{L}+|\s+")
    ckpt = save_checkpoint(tmp_path / "rebuilt", tok)
    with pytest.raises(TokenizerMismatch, match="rebuilt the tokenizer"):
        write_manifest(ckpt, name="rebuilt", spec={"path": str(ckpt)})


def test_checkpoint_without_tokenizer_files_is_refused(make_checkpoint, tmp_path):
    # transformers would build an empty tokenizer from the model type; it "shares" one token with any other
    a, b = make_checkpoint("a"), make_checkpoint("b", seed=1)
    for f in b.iterdir():
        if f.name.startswith("tokenizer"):
            f.unlink()
    with pytest.raises(ModelFetchError, match="has no tokenizer"):
        compare_tokenizer_dirs(a, b)
    with pytest.raises(ModelFetchError, match="has no tokenizer"):
        fetch_model("b", {"path": str(b)}, tmp_path / "m" / "b")
    assert not manifest_path(tmp_path / "m" / "b").exists()


def test_a_checkpoints_identity_is_its_content_not_how_long_it_took_to_make(make_checkpoint, tmp_path):
    # a toy built on a laptop and on a cluster's node is the same weights with a different build time: the
    # tables made with each must name one model (the slurm module compares them)
    out = tmp_path / "m" / "m"
    fetch_model("m", {"path": str(make_checkpoint("src"))}, out)
    manifest = json.loads(manifest_path(out).read_text())
    before = checkpoint_identity(out), checkpoint_label(out)
    machine = {"cpu": "another CPU", "cpu_capability": "AVX2"}
    manifest_path(out).write_text(json.dumps({**manifest, "toy_build_seconds": 12.5, "toy_build_machine": machine}))
    assert (checkpoint_identity(out), checkpoint_label(out)) == before
    other = {**manifest["files_sha256"], "model.safetensors": "0" * 64}
    manifest_path(out).write_text(json.dumps({**manifest, "files_sha256": other}))
    assert checkpoint_identity(out) != before[0] and checkpoint_label(out) != before[1]


def test_fetch_replaces_only_its_own_folder(make_checkpoint, tmp_path):
    """Eleventh hostile pass (H6, H7): `models fetch --out DIR` deleted whatever DIR was (a user's folder; with
    `--out keep/..` the working directory), and `--out <source>/sub` wrote into the source checkpoint."""
    src = make_checkpoint("src")
    work = tmp_path / "work"
    (work / "keep").mkdir(parents=True)
    (work / "keep" / "a.txt").write_text("mine")
    (work / "top.txt").write_text("mine too")
    for out, needle in (
        ("keep", "holds a.txt, which no fetch made"),
        ("keep/..", "holds keep, which no fetch made"),
        (".", "holds keep, which no fetch made"),
        ("top.txt", "--out top.txt: is a file"),  # the CLI's output check, first
        (str(src / "sub"), f"lies inside its source {src.resolve()}"),
    ):
        r = cli(["models", "fetch", "m", "--path", str(src), "--out", out], cwd=work)
        one_line_error(r, needle)
    assert (work / "keep" / "a.txt").read_text() == "mine" and (work / "top.txt").read_text() == "mine too"
    assert not (src / "sub").exists() and not (src / "sub.json").exists()
    # its own earlier folder (links alone) it replaces, as a re-fetch must
    first = fetch_model("m", {"path": str(src)}, work / "m")
    assert fetch_model("m", {"path": str(src)}, work / "m") == first


def test_a_copied_checkpoint_is_hashed_and_said_so_once_per_process(make_checkpoint, tmp_path, caplog):
    """Tenth hostile pass: after a study was copied, each job logged "hashing it again" about seven times per file
    (it verifies each checkpoint several times), though the file was read once."""
    import logging
    import shutil

    src = make_checkpoint("src")
    manifest = write_manifest(src, name="m", spec={"path": str(src)})
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)  # new inodes: every fingerprint differs from the manifest's record
    shutil.copy(src.with_name(".src.fingerprints.json"), copy.with_name(".copy.fingerprints.json"))
    with caplog.at_level(logging.INFO, logger="tokenshift.checkpoints"):
        for _ in range(3):
            verify_checkpoint(copy, manifest)
    said = [r.getMessage() for r in caplog.records if "hashing it again" in r.getMessage()]
    assert len(said) == len(manifest["files_sha256"]) and len(set(said)) == len(said), said


def test_a_failed_refetch_leaves_the_finished_checkpoint_as_it_was(make_checkpoint, tmp_path):
    """Tenth hostile pass (G9): a refused fetch left its --out folder behind, and over a finished checkpoint
    it deleted the manifest and pointed the folder at the refused files. The new files are checked before they
    take the folder's place."""
    good, bad = make_checkpoint("good"), make_checkpoint("bad")
    out = tmp_path / "m" / "m"
    first = fetch_model("m", {"path": str(good)}, out)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "banana"}))
    with pytest.raises(ModelFetchError, match=f"transformers cannot read {bad / 'config.json'}"):
        fetch_model("m", {"path": str(bad)}, out)
    assert json.loads(manifest_path(out).read_text()) == first
    assert {p.resolve().parent for p in out.iterdir()} == {good.resolve()}
    verify_checkpoint(out, first)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["m", "m.json", ".m.fingerprints.json"])
    # the source edited in place under a finished fetch: its manifest, left, no longer vouches for the file
    tok = json.loads((good / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Lowercase"}
    (good / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(TokenizerMismatch):
        fetch_model("m", {"path": str(good)}, out)
    with pytest.raises(ModelFetchError, match=r"tokenizer\.json is not the file its manifest"):
        verify_checkpoint(out, first)


@pytest.mark.parametrize("where", ["itself", "its parent"])
def test_fetch_into_its_own_source_is_refused_and_deletes_nothing(make_checkpoint, tmp_path, where):
    # replacing the output directory would delete the checkpoint the links point at
    src = make_checkpoint("ckpts/src")
    out = src if where == "itself" else src.parent
    r = cli(["models", "fetch", "m", "--path", str(src), "--out", str(out)])
    assert r.returncode == 2 and "Traceback" not in r.stderr and "source" in r.stderr, r.stderr
    assert (src / "model.safetensors").is_file() and not (src / "model.safetensors").is_symlink()


def test_pair_with_identical_tokenizers_passes(make_checkpoint, tmp_path):
    a, b = make_checkpoint("a"), make_checkpoint("b", seed=1)
    fetch_model("a", {"path": str(a)}, tmp_path / "m" / "a")
    fetch_model("b", {"path": str(b)}, tmp_path / "m" / "b")
    info = check_pair("p", tmp_path / "m" / "a", tmp_path / "m" / "b", tmp_path / "p.json", chat=True)
    assert info["identical_tokenizers"] and info["shared_vocab_size"] == len(AutoTokenizer.from_pretrained(a))
    assert info["same_chat_prompts"]


def test_a_pair_whose_chat_templates_prompt_differently_is_refused_where_its_prompts_use_them(
    make_checkpoint, tmp_path, toy_tokenizer
):
    # twelfth hostile pass: the rl checkpoint alone had a template, and the manifest said identical_tokenizers
    import copy

    chat = copy.deepcopy(toy_tokenizer)
    chat.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"
    a, b = make_checkpoint("a"), make_checkpoint("b", tokenizer=chat, seed=1)
    fetch_model("a", {"path": str(a)}, tmp_path / "m" / "a")
    fetch_model("b", {"path": str(b)}, tmp_path / "m" / "b")
    out = tmp_path / "p.json"
    r = cli(["models", "check-pair", "p", "--base", str(tmp_path / "m" / "a"), "--rl", str(tmp_path / "m" / "b"),
             "--chat-template", "--out", str(out)])  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr and not out.exists()
    assert "pair 'p': only the rl model has a chat template" in r.stderr and "chat_template: false" in r.stderr
    # prompted without templates, the pair passes, and its manifest says the templates differ
    info = check_pair("p", tmp_path / "m" / "a", tmp_path / "m" / "b", out)
    assert info["identical_tokenizers"] and not info["same_chat_prompts"]


def test_padded_embedding_rows_slice_to_the_tokenizer(make_checkpoint, tmp_path, toy_tokenizer):
    n = len(toy_tokenizer)
    a, b = make_checkpoint("a"), make_checkpoint("b", embedding_rows=n + 64)  # like 151936 vs 152064
    fetch_model("a", {"path": str(a)}, tmp_path / "m" / "a")
    fetch_model("b", {"path": str(b)}, tmp_path / "m" / "b")
    info = check_pair("p", tmp_path / "m" / "a", tmp_path / "m" / "b", tmp_path / "p.json")
    assert info["shared_vocab_size"] == n
    assert info["embedding_rows"] == {"base": n, "rl": n + 64}
    assert json.loads((tmp_path / "p.json").read_text()) == info


def test_different_tokenizers_are_refused(make_checkpoint, tmp_path, toy_tokenizer):
    a = make_checkpoint("a")
    b = make_checkpoint(
        "b",
        tokenizer=other_tokenizer(
            ["completely different text, hello world"] * 20,
            pattern=QWEN2_PRETOKENIZE_REGEX,
        ),
    )
    fetch_model("a", {"path": str(a)}, tmp_path / "m" / "a")
    fetch_model("b", {"path": str(b)}, tmp_path / "m" / "b")
    with pytest.raises(TokenizerMismatch, match=r"pair 'p'.*different tokenizers.*token ids differ"):
        check_pair("p", tmp_path / "m" / "a", tmp_path / "m" / "b", tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()


def test_vocab_extended_with_added_tokens_shares_the_common_prefix(toy_tokenizer):
    import copy

    extended = copy.deepcopy(toy_tokenizer)
    extended.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    assert compare_tokenizers(toy_tokenizer, extended) == len(toy_tokenizer)


def test_custom_code_without_trust_is_refused_naming_the_key(tmp_path, toy_tokenizer, monkeypatch):
    # fourth hostile pass (8a): the fetch ended in transformers' ValueError traceback; a local checkpoint is
    # refused already by the config check (snakemake -n), a hub one by the fetch, in one line
    from tokenshift.config import ConfigError, check_config

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setenv("CUSTOM_CODE_RAN", str(tmp_path / "custom-code-ran"))
    src = custom_code_checkpoint(tmp_path / "ckpt" / "a", toy_tokenizer)
    save_checkpoint(tmp_path / "ckpt" / "b", toy_tokenizer)
    config = {
        "models": {"a": {"path": "ckpt/a"}, "b": {"path": "ckpt/b"}},
        "datasets": {},
        "pairs": [{"name": "ab", "base": "a", "rl": "b", "datasets": []}],
    }
    with pytest.raises(ConfigError, match=r"models\.a\.path: .*set models\.a\.trust_remote_code: true"):
        check_config(config, base_dir=tmp_path)
    with pytest.raises(ModelFetchError, match=r"set models\.a\.trust_remote_code: true") as e:
        fetch_model("a", {"path": str(src)}, tmp_path / "resources" / "models" / "a")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "custom-code-ran").exists()
    # a type transformers has loads without its code: not refused (an auto_map kept for older versions)
    cfg = json.loads((tmp_path / "ckpt" / "b" / "config.json").read_text())
    (tmp_path / "ckpt" / "b" / "config.json").write_text(json.dumps(cfg | {"auto_map": {"AutoConfig": "x.Y"}}))
    config["models"]["a"] = {"path": "ckpt/b"}
    config["models"]["b"]["trust_remote_code"] = False
    check_config({**config, "pairs": []}, base_dir=tmp_path)


def test_trust_remote_code_reaches_every_loader_and_the_config_check(tmp_path, toy_tokenizer, monkeypatch):
    # issue 24.8: fetched with trust, then dropped by rollout, scoring and cross-sampling (a ValueError)
    from tokenshift.config import check_config
    from tokenshift.loading import load_causal_lm
    from tokenshift.tokenizer import load_tokenizer

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    ran = tmp_path / "custom-code-ran"
    monkeypatch.setenv("CUSTOM_CODE_RAN", str(ran))  # the tokenizer's code leaves this file where it runs
    a = custom_code_checkpoint(tmp_path / "ckpt" / "a", toy_tokenizer)
    b = custom_code_checkpoint(tmp_path / "ckpt" / "b", toy_tokenizer)
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoTokenizer.from_pretrained(a)  # the checkpoint really needs its code run
    config = {
        "models": {
            "a": {"path": "ckpt/a", "trust_remote_code": True},
            "b": {"path": "ckpt/b", "trust_remote_code": True},
        },
        "datasets": {},
        "pairs": [{"name": "ab", "base": "a", "rl": "b", "datasets": []}],
    }
    # accepted without running the checkpoints' code (a dry run runs this): check_pair compares them
    check_config(config, base_dir=tmp_path)
    assert not ran.exists()
    root = tmp_path / "resources" / "models"
    for name, src in (("a", a), ("b", b)):
        fetch_model(name, {"path": str(src), "trust_remote_code": True}, root / name)
    assert type(load_tokenizer(root / "a.json")).__name__ == "CustomTokenizerFast"
    assert ran.exists()
    assert load_causal_lm(root / "a.json", "cpu").config.vocab_size == len(toy_tokenizer)
    check_pair("ab", root / "a.json", root / "b.json", tmp_path / "ab.json")
    # a stage's command, as the workflow runs it: the rollout loads the model and its tokenizer
    data = tmp_path / "tiny.jsonl"
    data.write_text(json.dumps({"problem": "1+1", "answer": "2"}) + "\n")
    dataset = tmp_path / "tiny.parquet"
    r = cli(["dataset", "tiny", "--path", str(data), "--out", str(dataset)])
    assert r.returncode == 0, r.stderr
    out = tmp_path / "rollouts.parquet"
    flags = ["--n", "1", "--max-new-tokens", "2", "--template", "{question}", "--no-chat-template"]
    r = cli(["rollout", "--model", str(root / "a.json"), "--dataset", str(dataset), *flags, "--out", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.is_file()


@pytest.mark.parametrize(("mask", "folder", "file"), [(0o002, 0o775, 0o664), (0o027, 0o750, 0o640)])
def test_a_fetched_checkpoint_has_the_modes_the_umask_gives(make_checkpoint, tmp_path, mask, folder, file):
    # issue 24.10: fetched checkpoints were 0700 and 0600 whatever the umask: a group could not share the cache
    src = make_checkpoint("src")
    old = os.umask(mask)
    try:
        fetch_model("m", {"path": str(src)}, tmp_path / "models" / "m")
    finally:
        os.umask(old)
    assert (tmp_path / "models" / "m").stat().st_mode & 0o777 == folder
    assert manifest_path(tmp_path / "models" / "m").stat().st_mode & 0o777 == file


def test_a_copied_checkpoint_is_hashed_once_per_process(toy_tokenizer, tmp_path, monkeypatch):
    # issue 24.10: after a tree copy each weight file was hashed again at every verification (~8 a job)
    import hashlib

    from tokenshift.checkpoints import resolve_checkpoint

    save_checkpoint(tmp_path / "a" / "m", toy_tokenizer)
    write_manifest(tmp_path / "a" / "m", name="m", spec={"path": "x"})
    # as `cp -r` copies: new inodes, mtimes and ctimes, so the recorded fingerprints differ
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy)
    calls = []
    sha256 = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or sha256(*a))
    for _ in range(8):
        resolve_checkpoint(tmp_path / "b" / "m.json")
    assert len(calls) == len(list((tmp_path / "b" / "m").iterdir()))  # each file of the checkpoint, read once
    (tmp_path / "b" / "m" / "model.safetensors").write_bytes(b"other")
    with pytest.raises(ModelFetchError, match="not the file its manifest"):
        resolve_checkpoint(tmp_path / "b" / "m.json")


@pytest.mark.parametrize("flags", [{}, {"dtype": "float16", "attn_implementation": "eager"}])
def test_a_models_dtype_and_attention_reach_every_loader(make_checkpoint, tmp_path, flags):
    """Issue 28.4: the entry's dtype and attn_implementation, recorded by the fetch in the manifest, are what
    transformers loads the model with and what vLLM is started with (its own attention aside); unset, ours."""
    from tokenshift.cli import main
    from tokenshift.loading import load_causal_lm
    from tokenshift.settings import RolloutConfig, SamplingConfig
    from tokenshift.vllm_engine import engine_args

    src = make_checkpoint("src")
    out = tmp_path / "models" / "m"
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    assert main(["models", "fetch", "m", f"--path={src}", *argv, f"--out={out}"]) == 0
    assert {k: v for k, v in json.loads(manifest_path(out).read_text())["spec"].items() if k != "path"} == flags
    model = load_causal_lm(out.with_suffix(".json"), "cpu")
    assert model.dtype == getattr(torch, flags.get("dtype", "float32"))
    assert model.config._attn_implementation == flags.get("attn_implementation", "sdpa")
    args = engine_args(out, RolloutConfig(vllm_dtype="bfloat16"), SamplingConfig(), gpus=0, kind="cpu")
    assert args["dtype"] == flags.get("dtype", "bfloat16") and "attn_implementation" not in args


def refused_fetch(src: Path, out: Path, *flags: str) -> str:
    """``models fetch`` of ``src`` into ``out``, refused in one line (exit 2) with no manifest written: its stderr."""
    r = cli(["models", "fetch", "m", "--path", str(src), *flags, "--out", str(out)])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert not manifest_path(out).exists()
    return r.stderr


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        # the weights have the toy tokenizer's rows: a rollout died in transformers' size-mismatch traceback
        ({"vocab_size": 10}, "weight as [10, 32] but the weights hold [265, 32] (2 of 15 tensors differ)"),
        ({"hidden_size": 16}, "tensors differ): expected the config.json of these weights"),
        # huggingface_hub's StrictDataclassError escaped the fetch as a traceback
        ({"num_hidden_layers": 1, "layer_types": ["full_attention"] * 2}, "`num_hidden_layers` (1) must be equal"),
        # fifteenth hostile pass (M1-M3): a ZeroDivisionError, an AssertionError and an AttributeError escaped the
        # fetch, and a quantized checkpoint was fetched for every job to fail on bitsandbytes
        ({"num_attention_heads": 0}, "transformers cannot build the model"),
        ({"pad_token_id": 100000}, "transformers cannot"),
        ({"dtype": "auto", "torch_dtype": "auto"}, "transformers cannot"),
        ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}, "(bitsandbytes): quantized"),
    ],
)
def test_a_config_json_that_is_not_its_weights_is_refused_by_the_fetch(make_checkpoint, tmp_path, edit, needle):
    """Fourteenth hostile pass (L1, L4): a local checkpoint whose config.json disagrees with its weights (an edited
    vocab_size or hidden_size) was fetched and vouched for, and every job that loaded it died in a traceback."""
    src = make_checkpoint("src")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, **edit}))
    assert needle in refused_fetch(src, tmp_path / "m" / "m")


def test_a_cut_weights_file_gets_no_manifest(make_checkpoint, tmp_path):
    # fifth hostile pass (L24, L32): a copy cut short was vouched for, then a rollout job failed with a traceback
    src = make_checkpoint("src")
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    out = tmp_path / "m" / "m"
    assert f"{src / 'model.safetensors'} is not a whole safetensors file" in refused_fetch(src, out)
    assert not out.exists()  # nor its folder (the tenth hostile pass, G9)


def test_a_tokenizer_file_that_is_not_json_gets_no_manifest(make_checkpoint, tmp_path):
    # seventh hostile pass (M1): a JSONDecodeError traceback from transformers
    src = make_checkpoint("src")
    (src / "tokenizer.json").write_text('{"x":\n')
    out = tmp_path / "m" / "m"
    assert f"transformers cannot read the tokenizer of {src}: Expecting value" in refused_fetch(src, out)


def test_a_tokenizer_whose_merges_name_tokens_it_lacks_gets_no_manifest(make_checkpoint, tmp_path):
    # twelfth hostile pass (J9): tokenizers' own Exception, "Error while initializing BPE", was a traceback
    src = make_checkpoint("src")
    tok = json.loads((src / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE"
    tok["model"]["vocab"] = dict(list(tok["model"]["vocab"].items())[:3])
    (src / "tokenizer.json").write_text(json.dumps(tok))
    assert f"transformers cannot read the tokenizer of {src}: " in refused_fetch(src, tmp_path / "m" / "m")


def test_a_chat_template_that_raises_or_a_broken_generation_config_gets_no_manifest(make_checkpoint, tmp_path):
    # twelfth hostile pass (J4, J5): both passed the fetch, then the first rollout job died in a traceback
    src = make_checkpoint("src")
    config = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ raise_exception('boom') }}"}))
    assert f"{src}: its chat template cannot make a prompt: boom" in refused_fetch(src, tmp_path / "m" / "m")
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    for text, needle in (('{"eos_token_id": ', "not valid JSON"), ('{"eos_token_id": "x"}', "eos_token_id is 'x'")):
        (src / "generation_config.json").write_text(text)
        assert f"{src / 'generation_config.json'}: {needle}" in refused_fetch(src, tmp_path / "m" / "m")


def test_a_config_with_no_positive_vocabulary_gets_no_manifest(make_checkpoint, tmp_path):
    # seventh hostile pass (M2): a manifest of -5 embedding rows was written, refused only by the pair check
    src = make_checkpoint("src")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "vocab_size": -5}))
    stderr = refused_fetch(src, tmp_path / "m" / "m")
    assert "config.json gives vocab_size -5; expected a positive whole number" in stderr


def test_an_attention_transformers_lacks_gets_no_manifest(make_checkpoint, tmp_path):
    # fifth hostile pass (L28, L33): the config refused it, `models fetch --attn-implementation` exited 0
    stderr = refused_fetch(make_checkpoint("src"), tmp_path / "m" / "m", "--attn-implementation", "bogus")
    assert "attn_implementation 'bogus': expected one of transformers' attention implementations" in stderr


def test_flash_attention_without_its_package_is_a_warning_and_a_one_line_refusal(make_checkpoint, tmp_path):
    # fifth hostile pass (c34, L35): transformers knows flash_attention_2, this machine lacks flash_attn: the
    # plan passed and the job died in an ImportError traceback. A cluster's GPU nodes may have it where the
    # submit host does not, so planning warns and the loader refuses
    from transformers.utils import is_flash_attn_2_available

    from tokenshift.config import config_warnings
    from tokenshift.loading import load_causal_lm

    if is_flash_attn_2_available():
        pytest.skip("flash_attn is installed here")
    config = {"models": {"q": {"hub": "a/b", "revision": "r", "attn_implementation": "flash_attention_2"}}}
    assert any(
        w.startswith("config key models.q.attn_implementation: flash_attention_2 needs the flash_attn package")
        for w in config_warnings(config)
    )
    out = tmp_path / "m" / "q"
    fetch_model("q", {"path": str(make_checkpoint("src")), "attn_implementation": "flash_attention_2"}, out)
    with pytest.raises(ModelFetchError, match="model 'q': attn_implementation flash_attention_2 needs the flash_attn"):
        load_causal_lm(out.with_suffix(".json"), "cpu")


def test_a_changed_toy_model_says_how_to_build_it_again(make_checkpoint):
    # sixth hostile pass: the message said Snakemake re-runs the job when the source files change, which a
    # model the workflow built has none of: it must be forced
    ckpt = make_checkpoint("toy")
    write_manifest(ckpt, name="toy-rl", spec={"toy": "rl", "init": "toy-base"})
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    from tokenshift.checkpoints import resolve_checkpoint

    with pytest.raises(ModelFetchError, match=r"build it again \(snakemake --forcerun toy_rl"):
        resolve_checkpoint(ckpt.with_suffix(".json"))


@pytest.mark.parametrize("damage", ["a tensor dropped", "a NaN weight"])
def test_weights_short_of_the_model_or_not_finite_are_refused_at_load_naming_a_tensor(make_checkpoint, damage):
    """Twelfth hostile pass (J2, J3): a checkpoint without one tensor loaded with that tensor drawn at random,
    differently in each job; NaN weights gave rollouts of one repeated token, and a traceback only in scoring."""
    from safetensors.torch import load_file, save_file

    from tokenshift.loading import load_causal_lm

    ckpt = make_checkpoint("m")
    weights = load_file(ckpt / "model.safetensors")
    name = next(k for k in sorted(weights) if k.endswith("mlp.up_proj.weight"))
    if damage == "a tensor dropped":
        del weights[name]
    else:
        weights[name][0, 0] = float("nan")
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelFetchError, match=re.escape(name)):
        load_causal_lm(ckpt, "cpu")
