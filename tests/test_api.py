"""The notebook calls: ``tokenshift.compare`` and ``tokenshift.load_results``, on real checkpoints and files."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

import tokenshift
from tokenshift.io import InputError

PROMPTS = ["Q:8a+6b=?", "Q:2a+3b-1c=?"]
RESPONSES = ["8a+6=14.\n14b", "2a+3=5.\n5b-1=4.\n\\boxed{4}"]


def test_compare_scores_every_response_token_with_the_tables_statistics(make_checkpoint, toy_tokenizer):
    base, rl = make_checkpoint("base", seed=0), make_checkpoint("rl", seed=1)
    table = tokenshift.compare(base, rl, PROMPTS, RESPONSES, device="cpu")
    for i, response in enumerate(RESPONSES):
        rows = table.filter(pl.col("text") == i).sort("position")
        ids = toy_tokenizer(response, add_special_tokens=False).input_ids
        assert rows["token_id"].to_list() == ids and "".join(rows["token"]) == response
    stats = {"js", "kl_base_rl", "kl_rl_base", "entropy_base", "entropy_rl", "logp_base", "logp_rl"}
    assert stats <= set(table.columns)
    assert (table["js"] >= 0).all() and (table["js"] > 1e-6).any()
    same = tokenshift.compare(base, base, PROMPTS, RESPONSES, device="cpu")
    assert same["js"].max() < 1e-6 and (same["logp_base"] == same["logp_rl"]).all()
    # without responses, each text after its first token
    alone = tokenshift.compare(base, rl, PROMPTS, device="cpu")
    assert alone.height == sum(len(toy_tokenizer(p, add_special_tokens=False).input_ids) - 1 for p in PROMPTS)


def test_compare_refuses_unpaired_texts(make_checkpoint):
    base = make_checkpoint("base")
    with pytest.raises(InputError, match="2 prompts but 1 responses"):
        tokenshift.compare(base, base, PROMPTS, RESPONSES[:1])
    with pytest.raises(InputError, match="text 1: empty"):
        tokenshift.compare(base, base, ["Q:1a=?", ""])
    # a lone string was scored as its characters, each a text of its own, and a number got the tokenizer's words
    with pytest.raises(InputError, match=r"prompts: a str, expected a list of texts \(one text: \[text\]\)"):
        tokenshift.compare(base, base, "Q:1a=?")
    with pytest.raises(InputError, match=r"responses\[1\]: a int, expected a string"):
        tokenshift.compare(base, base, PROMPTS, [RESPONSES[0], 4])
    # fifteenth hostile pass (M10): torch's, pathlib's and the memory planner's own errors
    with pytest.raises(InputError, match="base: a int, expected a path"):
        tokenshift.compare(5, base, PROMPTS)
    for device, needle in (("nope", "expected auto, cpu, cuda"), ("", "expected auto"), (None, "device: a NoneType")):
        with pytest.raises(InputError, match=needle):
            tokenshift.compare(base, base, PROMPTS, device=device)
    # sixteenth hostile pass: a lone surrogate reached the tokenizer's TypeError, which names no text
    with pytest.raises(InputError, match=r"prompts\[1\]: a lone surrogate '\\ud800' \(half of a UTF-16 pair\)"):
        tokenshift.compare(base, base, ["Q:1a=?", "\ud800"])
    # eighteenth hostile pass: pathlib's ValueError for a folder with no name, a TypeError for no prompts, and its
    # RuntimeError for a loop of symbolic links
    with pytest.raises(InputError, match=r"^/: the root folder, expected a checkpoint folder"):
        tokenshift.compare("/", base, PROMPTS)
    for path in (".", ""):
        with pytest.raises(InputError, match=r"^\.: not a checkpoint"):
            tokenshift.compare(path, base, PROMPTS)
    with pytest.raises(InputError, match=r"prompts: a NoneType, expected a list of texts"):
        tokenshift.compare(base, base, None)
    loop = base.parent / "loop"
    loop.symlink_to(loop)
    for call in (lambda: tokenshift.compare(base, loop, PROMPTS), lambda: tokenshift.load_results(loop / "results")):
        with pytest.raises(InputError, match=r"loop(/results)?: a loop of symbolic links"):
            call()
    # nineteenth pass: weights cut short were safetensors' own error, and a refused checkpoint or pair a
    # ModelFetchError (a RuntimeError) or TokenizerMismatch beside the InputErrors: each is an InputError now
    import shutil

    from helpers import other_tokenizer

    cut = shutil.copytree(base, base.parent / "cut")
    (cut / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(InputError, match=r"cut/model\.safetensors is not a whole safetensors file"):
        tokenshift.compare(base, cut, PROMPTS)
    # twentieth: weights whose shapes are not their config's were transformers' RuntimeError, and weights that are a
    # pipe waited for ever: a folder without a manifest passes the fetch's checks of its files, weights and config
    import os

    import safetensors.torch

    shaped = shutil.copytree(base, base.parent / "shaped")
    tensors = safetensors.torch.load_file(shaped / "model.safetensors")
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:-1].clone()
    safetensors.torch.save_file(tensors, shaped / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"describes model\.embed_tokens\.weight as \[\d+, \d+\] but the weights hold"):
        tokenshift.compare(base, shaped, PROMPTS)
    piped = shutil.copytree(base, base.parent / "piped")
    (piped / "model.safetensors").unlink()
    os.mkfifo(piped / "model.safetensors")
    with pytest.raises(InputError, match=r"piped/model\.safetensors is no regular file"):
        tokenshift.compare(base, piped, PROMPTS)
    # and a sharded checkpoint whose index is not its shards' was transformers' FileNotFoundError or AttributeError
    sharded = shutil.copytree(base, base.parent / "sharded")
    tensors = safetensors.torch.load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {f"model-0000{i + 1}-of-00002.safetensors": names[i::2] for i in range(2)}
    for file, keys in shards.items():
        safetensors.torch.save_file({k: tensors[k] for k in keys}, sharded / file, metadata={"format": "pt"})
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert tokenshift.compare(base, sharded, PROMPTS).height > 0  # the index of these shards
    for wrong, needle in (([], "has no weight_map"), ({**weight_map, names[0]: "gone.safetensors"}, "puts")):
        (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wrong}))
        with pytest.raises(InputError, match=rf"sharded/model\.safetensors\.index\.json {needle}"):
            tokenshift.compare(base, sharded, PROMPTS)
    other = make_checkpoint("other", other_tokenizer(["other words entirely, nothing alike"] * 20))
    with pytest.raises(InputError, match="token ids differ"):
        tokenshift.compare(base, other, PROMPTS)


def recorded(**pair) -> str:
    """The settings a study of pair ``a`` (two local models) on dataset ``toy`` records (results/config.yaml)."""
    models = {"m": {"path": "ckpt/m"}, "n": {"path": "ckpt/n"}}
    return yaml.safe_dump(
        {"models": models, "pairs": [{"name": "a", "base": "m", "rl": "n", "datasets": ["toy"], **pair}]}
    )


def test_load_results_reads_the_folder_named_when_its_name_holds_glob_characters(tmp_path):
    # eighteenth hostile pass: polars took `study[1]`'s tables as a glob and read `study1`'s, another study's
    for folder, acc in (("study[1]", 0.5), ("study1", 0.999)):
        d = tmp_path / folder / "a" / "toy"
        d.mkdir(parents=True)
        pl.DataFrame({"pair": ["a"], "dataset": ["toy"], "accuracy": [acc]}).write_parquet(d / "accuracy.parquet")
    assert tokenshift.load_results(tmp_path / "study[1]")["accuracy"]["accuracy"].to_list() == [0.5]
    with pytest.raises(InputError, match=r"study\*: no such results directory"):
        tokenshift.load_results(tmp_path / "study*")


def test_load_results_names_a_damaged_record_or_table_it_would_have_passed_over(tmp_path):
    """Twenty-first pass: a recorded config that was a pipe, a folder or a link loop was taken as none (a former
    pair's tables loaded with the study's), and a table that was a link to nothing dropped from the tables."""
    import os

    d = tmp_path / "a" / "toy"
    d.mkdir(parents=True)
    pl.DataFrame({"pair": ["a"], "dataset": ["toy"], "accuracy": [0.5]}).write_parquet(d / "accuracy.parquet")
    record = tmp_path / "config.yaml"
    for damage, held in (
        (os.mkfifo, "not a regular file"),
        (lambda p: p.mkdir(), "a folder, not a file"),
        (lambda p: p.symlink_to(p.name), "a symbolic link to nothing"),
    ):
        damage(record)
        with pytest.raises(InputError, match=f"config.yaml: {held}"):
            tokenshift.load_results(tmp_path)
        record.rmdir() if record.is_dir() and not record.is_symlink() else record.unlink()
    record.write_text("pairs: " + "9" * 5000)  # twenty-second pass: PyYAML's ValueError, a traceback
    with pytest.raises(InputError, match=r"config.yaml: not the settings a study records .*4300 digits"):
        tokenshift.load_results(tmp_path)
    record.write_text(recorded())
    (d / "divergence").mkdir()
    pl.DataFrame({"pair": ["a"], "dataset": ["toy"], "share": [0.8]}).write_parquet(
        d / "divergence" / "sparsity.parquet"
    )
    assert set(tokenshift.load_results(tmp_path)) == {"accuracy", "sparsity"}
    (d / "accuracy.parquet").unlink()
    (d / "accuracy.parquet").symlink_to(tmp_path / "gone.parquet")
    with pytest.raises(InputError, match=r"toy/accuracy.parquet: a symbolic link to nothing"):
        tokenshift.load_results(tmp_path)


def test_load_results_gathers_each_table_over_pairs_and_datasets(tmp_path):
    for pair, acc in (("a", 0.5), ("b", 0.75)):
        d = tmp_path / pair / "toy"
        (d / "divergence").mkdir(parents=True)
        pl.DataFrame({"pair": [pair], "dataset": ["toy"], "accuracy": [acc]}).write_parquet(d / "accuracy.parquet")
        sparsity = pl.DataFrame({"pair": [pair], "dataset": ["toy"], "share": [0.8]})
        sparsity.write_parquet(d / "divergence" / "sparsity.parquet")
    tables = tokenshift.load_results(tmp_path)
    assert set(tables) == {"accuracy", "sparsity"}  # what the study did not make is absent
    assert tables["accuracy"].sort("pair")["accuracy"].to_list() == [0.5, 0.75]
    # sixteenth hostile pass: a study whose config has dropped a pair, or its cross-sampling, keeps the old files,
    # and they were loaded as its own; its recorded settings (results/config.yaml) say what it makes
    d = tmp_path / "a" / "toy"
    pl.DataFrame({"pair": ["a"], "dataset": ["toy"], "accuracy": [0.5]}).write_parquet(d / "crosssample.parquet")
    (tmp_path / "config.yaml").write_text(recorded(crosssample=False))
    tables = tokenshift.load_results(tmp_path)
    assert set(tables) == {"accuracy", "sparsity"} and tables["accuracy"]["pair"].to_list() == ["a"]
    (tmp_path / "config.yaml").write_text(recorded())
    assert tokenshift.load_results(tmp_path)["crosssample"].height == 1
    # seventeenth pass: a run interrupted after a setting changed leaves the new settings recorded (written as a run
    # starts) over tables of the old: the report's summary names the settings it was made with
    import json

    from tokenshift.io import settings_digest

    (tmp_path / "summary.json").write_text(json.dumps({"config_sha256": settings_digest(recorded(crosssample=True))}))
    with pytest.raises(InputError, match=r"config.yaml: settings the study's report .* was not made with"):
        tokenshift.load_results(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"config_sha256": settings_digest(recorded())}))
    assert "crosssample" in tokenshift.load_results(tmp_path)
    (tmp_path / "summary.json").unlink()
    (tmp_path / "config.yaml").write_text("pairs: 3")
    with pytest.raises(InputError, match=r"config.yaml: not the settings a study records"):
        tokenshift.load_results(tmp_path)
    # seventeenth pass: settings nested past Python's recursion were a RecursionError; two pairs' tables whose
    # columns do not combine, polars' error; an advantage experiment's tables taken in a study with no toy pair
    (tmp_path / "config.yaml").write_text("[" * 5000)
    with pytest.raises(InputError, match=r"config.yaml: nested too deep to read"):
        tokenshift.load_results(tmp_path)
    (tmp_path / "config.yaml").write_text(recorded())
    (tmp_path / "advantages").mkdir()
    pl.DataFrame({"variant": ["js"]}).write_parquet(tmp_path / "advantages" / "comparison.parquet")
    assert "advantages_comparison" not in tokenshift.load_results(tmp_path)
    (tmp_path / "advantages" / "comparison.parquet").unlink()
    (tmp_path / "config.yaml").unlink()
    clash = pl.DataFrame({"pair": ["b"], "dataset": ["toy"], "share": [[1, 2]]})
    clash.write_parquet(tmp_path / "b" / "toy" / "divergence" / "sparsity.parquet")
    with pytest.raises(InputError, match=r"sparsity tables \(2\): columns of types that do not combine"):
        tokenshift.load_results(tmp_path)
    sparsity.write_parquet(tmp_path / "b" / "toy" / "divergence" / "sparsity.parquet")
    (d / "crosssample.parquet").unlink()
    with pytest.raises(InputError, match="no such results directory"):
        tokenshift.load_results(tmp_path / "nowhere")
    for wrong in (5, None):
        with pytest.raises(InputError, match=r"results: a .*, expected a path"):
            tokenshift.load_results(wrong)
    with pytest.raises(InputError, match=r"accuracy\.parquet: not a folder"):
        tokenshift.load_results(tmp_path / "a" / "toy" / "accuracy.parquet")
    # a folder without a study's tables (another folder, a study not yet run) was an empty dict
    with pytest.raises(InputError, match="no aggregate table of a study"):
        tokenshift.load_results(tmp_path / "a" / "toy" / "divergence")
    # a damaged table is named, as the workflow's own reads name it
    (tmp_path / "b" / "toy" / "accuracy.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(InputError, match=r"b/toy/accuracy.parquet: .*the accuracy table of a study"):
        tokenshift.load_results(tmp_path)
