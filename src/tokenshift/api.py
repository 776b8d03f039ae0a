"""Two calls for a notebook: compare two checkpoints on a few texts, and read a study's tables.

    import tokenshift
    tokens = tokenshift.compare("resources/models/toy-base", "resources/models/toy-rl",
                                ["Q:8a+6b+8c-4=?", "Q:2a+3b=?"], responses=["8a+6=14. ...", "2a+3=5. ..."])
    tokens.sort("js", descending=True).head()      # where the two models disagree most
    tables = tokenshift.load_results("results")    # every aggregate table of a finished study
    tables["crosssample"].filter(pl.col("direction") == "forward")

``compare`` scores with the workflow's own code (``tokenshift.scoring.score_rows``, the columns of
``results/<pair>/<dataset>/scores/*.parquet``), so a notebook's numbers are the study's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from tokenshift import layout
from tokenshift.registry import DIVERGENCE_TABLES

AGGREGATE_TABLES = {
    "accuracy": f"*/*/{layout.ACCURACY}",
    "crosssample": f"*/*/{layout.CROSSSAMPLE}",
    **{name: f"*/*/{layout.divergence(name)}" for name in (*DIVERGENCE_TABLES, "decision_points")},
    "advantages_curve": layout.under_results(f"{layout.ADVANTAGES}/{layout.CURVE}"),
    "advantages_comparison": layout.under_results(f"{layout.ADVANTAGES}/{layout.COMPARISON}"),
    "training_shifts": layout.under_results(layout.training(layout.SHIFTS, "*")),
}
"""Each aggregate table of a study, by name, and where it lies under the results directory."""
PAIR_FOLDERS = tuple(Path(f(layout.ACCURACY, "p")).parts[-2] for f in (layout.toy_check, layout.training))
"""A pair's folders of its own beside its datasets' (the toy check's, the training analyses')."""


def compare(
    base: str | Path,
    rl: str | Path,
    prompts: Sequence[str],
    responses: Sequence[str] | None = None,
    *,
    device: str = "auto",
) -> pl.DataFrame:
    """Both models' next-token distributions compared at every token of each response.

    ``base`` and ``rl`` are checkpoint directories (or the workflow's manifests, ``<name>.json``)
    sharing a tokenizer. Each response is scored after its prompt (teacher forcing); without
    ``responses`` each prompt is scored on its own, every token after its first. One row per scored
    token: ``text`` (the index of its prompt), ``position`` in the response, ``token`` (decoded),
    ``token_id``, both models' log-probabilities of it, and the statistics of the divergence tables
    (``js``, ``kl_base_rl``, ``kl_rl_base``, ``entropy_base``, ``entropy_rl``, top-k overlap, ranks).
    """
    from tokenshift.checkpoints import resolve_checkpoint
    from tokenshift.io import InputError
    from tokenshift.loading import check_devices, load_causal_lm
    from tokenshift.scoring import pad_id_of, score_rows
    from tokenshift.tokenizer import compare_tokenizers, load_tokenizer

    _check_path("base", base)
    _check_path("rl", rl)
    _check_texts("prompts", prompts)
    if responses is not None:  # None: the first token of each prompt is the context of the rest
        _check_texts("responses", responses)
    if not isinstance(device, str):  # None reached the memory planner as an AttributeError
        raise InputError(f"device: a {type(device).__name__}, expected a string: auto, cpu, cuda or cuda:<i>")
    check_devices({"device": device})  # `nope`, '', or cuda where torch has none: torch's own errors otherwise
    if responses is not None and len(responses) != len(prompts):
        raise InputError(f"{len(prompts)} prompts but {len(responses)} responses: expected one response per prompt")
    dirs = [resolve_checkpoint(p) for p in (base, rl)]
    tokenizers = [load_tokenizer(d) for d in dirs]
    vocab = compare_tokenizers(*tokenizers)  # refuses a pair whose tokenizers differ
    tok = tokenizers[0]

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False).input_ids

    if responses is None:  # the first token is the context of the rest
        rows = [(t[:1], t[1:]) for t in map(ids, prompts)]
    else:
        rows = [(ids(p), ids(r)) for p, r in zip(prompts, responses)]
    empty = next((i for i, (p, _) in enumerate(rows) if not p), None)
    if empty is not None:
        raise InputError(f"text {empty}: empty, so no token of it can be scored")
    models = [load_causal_lm(d, device) for d in dirs]
    scored = score_rows(*models, rows, vocab_size=vocab, pad_id=pad_id_of(models[0])).columns
    table = pl.DataFrame({k: v for k, v in scored.items() if v.ndim == 1}).rename({"row": "text"})
    tokens = tok.convert_ids_to_tokens(table["token_id"].to_list())
    return table.with_columns(pl.Series("token", [tok.convert_tokens_to_string([t]) for t in tokens]))


def _check_path(name: str, path) -> None:
    """``InputError`` unless ``path`` is a path (a str or ``os.PathLike``): a number reached ``pathlib``'s TypeError."""
    import os

    from tokenshift.io import InputError, link_loop

    if not isinstance(path, str | os.PathLike):
        raise InputError(f"{name}: a {type(path).__name__}, expected a path")
    if link_loop(path):  # pathlib's resolve() raised a RuntimeError (the eighteenth pass)
        raise InputError(f"{name}: {os.fspath(path)}: a loop of symbolic links, expected a file or folder")


def _check_texts(name: str, texts) -> None:
    """``InputError`` unless ``texts`` is a list of strings: a lone string would be read as its characters, each
    a text of its own, and a number reach the tokenizer's own message, which names no text."""
    from tokenshift.io import InputError, lone_surrogate

    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise InputError(f"{name}: a {type(texts).__name__}, expected a list of texts (one text: [text])")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise InputError(f"{name}[{bad}]: a {type(texts[bad]).__name__}, expected a string")
    for i, text in enumerate(texts):  # the tokenizer's TypeError names no text (the sixteenth pass)
        if lone := lone_surrogate(text):
            raise InputError(f"{name}[{i}]: a lone surrogate {lone!r} (half of a UTF-16 pair), expected text")


def load_results(results: str | Path = "results") -> dict[str, pl.DataFrame]:
    """Every aggregate table of a finished study, by name (``AGGREGATE_TABLES``); a table that several
    pairs and datasets have is one frame of them all (each row names its pair and dataset). Tables
    the study did not make are absent, also those an earlier config of it left (``_made_by_the_study``)."""
    from tokenshift.io import InputError, read_parquet

    _check_path("results", results)
    root = Path(results)
    if not root.is_dir():
        what = "not a folder" if root.exists() else "no such results directory"
        raise InputError(f"{root}: {what} (expected the workflow's results/)")
    made = _made_by_the_study(root)
    out = {}
    for name, pattern in AGGREGATE_TABLES.items():
        paths = [p for p in _matches(root, pattern) if made(name, p.relative_to(root).parts)]
        if paths:
            frames = [read_parquet(p, f"the {name} table of a study") for p in paths]
            try:
                out[name] = pl.concat(frames, how="diagonal_relaxed")
            except pl.exceptions.PolarsError as e:  # a column of other types in two tables (the seventeenth pass)
                raise InputError(
                    f"{paths[0]} and the other {name} tables ({len(paths)}): columns of types that do not combine "
                    f"({str(e).splitlines()[0]}); expected tables the workflow wrote"
                ) from None
    if not out:  # another folder, or a study not yet run: an empty dict would read as a study without findings
        raise InputError(
            f"{root}: no aggregate table of a study (expected a finished study's results/, with e.g. "
            f"{AGGREGATE_TABLES['accuracy']})"
        )
    return out


def _matches(root: Path, pattern: str) -> list[Path]:
    """The paths under ``root`` that ``pattern`` matches, as ``Path.glob`` finds them, and those it leaves out where
    the last part is a name: a link that points nowhere or round a loop, so that reading it names it (a table so
    damaged was dropped from the study's tables without a word: the twenty-first pass)."""
    import os

    folders, _, name = pattern.rpartition("/")
    if not folders or any(c in name for c in "*?["):
        return sorted(root.glob(pattern))
    return sorted(folder / name for folder in root.glob(folders) if os.path.lexists(folder / name))


def _made_by_the_study(root: Path):
    """Whether the table ``name`` at ``parts`` (relative to ``root``) is one the study whose settings
    ``root/config.yaml`` records makes: Snakemake leaves the tables of a pair, dataset or cross-sampling grid a
    changed config no longer has, and they were loaded as this study's (the sixteenth pass). A pair and
    dataset's table must be of a pair and dataset the config has, cross-sampling of a pair it cross-samples, the
    advantage experiment's of a study with a toy pair (``config.advantage_base``). Without that file (tables
    gathered by hand), every table is taken."""
    import os

    import yaml

    from tokenshift.config import advantage_base
    from tokenshift.io import InputError, read_text

    where = root / "config.yaml"
    if not os.path.lexists(where):  # none at all: a folder, a pipe or a broken link is a damaged record, and named
        return lambda name, parts: True
    text = read_text(where, "the study's recorded settings")
    _check_finished(root, text)
    try:
        recorded = yaml.safe_load(text)
        pairs = {p["name"]: p for p in recorded["pairs"]}
        datasets = {(n, d) for n, p in pairs.items() for d in p["datasets"]}
        experiment = advantage_base(recorded) is not None  # a toy pair's study runs it (the seventeenth pass)
    except (yaml.YAMLError, TypeError, KeyError, ValueError) as e:  # ValueError: an integer past 4,300 digits
        raise InputError(f"{where}: not the settings a study records (expected its pairs): {e}") from None
    except RecursionError:  # the seventeenth pass
        raise InputError(f"{where}: nested too deep to read (expected the settings a study records)") from None

    def made(name: str, parts: tuple[str, ...]) -> bool:
        if name == "training_shifts":
            return parts[-3] in pairs
        if name.startswith("advantages"):
            return experiment
        if len(parts) < 3:
            return True
        if parts[1] in PAIR_FOLDERS:  # <pair>/toy_check/accuracy.parquet
            return parts[0] in pairs
        crossed = name != "crosssample" or pairs.get(parts[0], {}).get("crosssample", True)
        return (parts[0], parts[1]) in datasets and crossed  # <pair>/<dataset>/...

    return made


def _check_finished(root: Path, settings: str) -> None:
    """``InputError`` where the report (``root/summary.json``) was made under other settings than
    ``root/config.yaml`` now records: the recorded settings are written as a run starts, so a run interrupted
    after a setting changed left tables of the old settings under the new record (the seventeenth pass)."""
    from tokenshift.io import InputError, read_json, settings_digest

    summary = root / "summary.json"
    if not summary.is_file():  # a study not yet reported on, or tables gathered by hand
        return
    made = read_json(summary, "the study's summary (tokenshift report)").get("config_sha256")
    if made is not None and made != settings_digest(settings):
        raise InputError(
            f"{root / 'config.yaml'}: settings the study's report ({summary}) was not made with: a run since they "
            "changed has not finished, so its tables are of both; expected a finished study (`snakemake --cores all "
            "all`)"
        )
