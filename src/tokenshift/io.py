"""Files: atomic writes (a file appears complete or not at all, so its existence means "done"),
content hashes, and reading tables with errors that name the file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import tempfile
from base64 import urlsafe_b64encode
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """Bad input from the user (a file, an argument): the CLI reports it in one line, exit status 2."""


def file_fingerprint(path: Path | str) -> tuple[int, ...]:
    """What any copy over ``path`` changes, even one that sets the modification time back (``cp -p``,
    ``rsync -a``, ``tar -x``, ``touch -d``): device, inode, size, mtime and the status-change time
    (ctime), which the kernel sets on every write or rename and no user tool sets back. Of a link's target."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def files_fingerprint(paths: Sequence[Path | str]) -> str:
    """One string for the fingerprints of ``paths`` (in order): the workflow records it as a setting of
    the job that reads them, so a copy with an old mtime still re-runs that job."""
    text = json.dumps([[str(p), *file_fingerprint(p)] for p in paths])
    return hashlib.sha256(text.encode()).hexdigest()


_HASHED: dict[tuple[str, tuple[int, ...]], str] = {}


def package_versions(*names: str) -> str:
    """``name==version`` of each installed distribution of ``names`` (``name absent`` where it is not), one a
    line: a key's share of the libraries what it keys depends on."""
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    for name in names:
        try:
            lines.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            lines.append(f"{name} absent")
    return "\n".join(lines)


def lone_surrogate(text: str) -> str | None:
    """The first character of ``text`` that is half of a UTF-16 pair (a JSON ``"\\ud800"``, or a byte Python kept
    from a command line that is not UTF-8), or None: no file, table, tokenizer or log can hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return text[e.start]
    return None


def link_loop(path: str | os.PathLike) -> bool:
    """Whether looking ``path`` up goes round a loop of symbolic links (it, or a folder on its way):
    ``Path.resolve`` raises a ``RuntimeError`` for one before Python 3.13, which no stage expects."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    except ValueError:  # a NUL in it: not a path at all, which the reader names
        return False
    return False


def settings_digest(config_text: str) -> str:
    """The sha256 of the recorded settings' text (``results/config.yaml``), as the report's summary records it and
    ``tokenshift.load_results`` compares it."""
    return hashlib.sha256(config_text.encode()).hexdigest()


def sha256_file(path: Path | str, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, read once per process while its fingerprint stays the same
    (a stage verifies each checkpoint several times: models of 60 GB are read once)."""
    key = (os.path.realpath(path), file_fingerprint(path))
    if key in _HASHED:
        return _HASHED[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    if file_fingerprint(path) == key[1]:  # not written to while it was read
        _HASHED[key] = h.hexdigest()
    return h.hexdigest()


def umask() -> int:
    """The process's umask (read by setting it and back: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def path_spelling(path: str) -> str:
    """``path`` without what never changes where it leads: empty and ``.`` parts and a trailing ``/`` (``./ckpt//a/``
    is ``ckpt/a``), so that another spelling of one checkpoint's path re-runs nothing (the twenty-second pass:
    ``ckpt/a/`` re-ran every job of the model). ``..`` is kept: through a link it leads elsewhere than the folder
    before it (``os.path.normpath`` would drop it)."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    root = "/" if path.startswith("/") else ""
    return root + "/".join(parts) or root or "."


def a_file(path: Path | str, what: str) -> Path:
    """``path``, a regular file, or ``InputError`` naming what it is instead (``what`` says what was expected):
    missing, a folder, or something else, which a reader would wait on (a pipe) or read without end (``/dev/zero``,
    the nineteenth pass)."""
    path = Path(path)
    if not path.is_file():
        if not path.exists():
            held = "a symbolic link to nothing (or round a loop)" if path.is_symlink() else "no such file"
        else:
            held = "a folder, not a file" if path.is_dir() else "not a regular file (a device, a pipe or a socket)"
        raise InputError(f"{path}: {held} (expected {what})")
    return path


def read_png(path: Path | str, what: str) -> bytes:
    """A PNG image's bytes, or ``InputError`` naming ``path`` (missing, or not a PNG)."""
    path = a_file(path, what)
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise InputError(f"{path}: not a PNG image (expected {what}; it starts {data[:8]!r})")
    return data


def read_html(path: Path | str, what: str) -> None:
    """``InputError`` naming ``path`` where it is missing or no HTML page (``<!doctype html>`` first)."""
    path = a_file(path, what)
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.lstrip().lower().startswith(b"<!doctype html"):
        raise InputError(f"{path}: not an HTML page (expected {what}; it starts {head[:8]!r})")


def _atomic(path: Path, write) -> None:
    """Write ``path`` through a temporary file in its directory and a rename, so a reader never sees half."""
    path = Path(path)
    if path.is_dir():  # else the rename fails last, naming the temporary file
        raise IsADirectoryError(errno.EISDIR, "is a directory, where a file is to be written", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600: give the mode open() would have
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    """Where tokenshift remembers what it has checked or computed, each record keyed by the content it
    was made from (a change is a new key, never a stale hit): ``$TOKENSHIFT_CACHE``, else
    ``$XDG_CACHE_HOME/tokenshift`` (``~/.cache/tokenshift``). Nothing there is needed: deleting it
    costs time only."""
    if os.environ.get("TOKENSHIFT_CACHE"):
        return Path(os.environ["TOKENSHIFT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokenshift"


def refuse_foreign_file(path: Path | str, keys: Sequence[str], what: str) -> None:
    """``InputError`` where ``path`` exists and is not ``what`` (a JSON object holding ``keys``): a stage writing its
    manifest there would replace another's, e.g. a dataset's manifest written over a model's (`--out
    resources/models/toy-base.parquet`: the fourteenth hostile pass, L5)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, *UNREADABLE):
        data = None
    if not isinstance(data, dict) or not set(keys) <= data.keys():
        raise InputError(f"{path}: exists and is not {what}, which writing there would replace: expected another --out")


def write_json_atomic(path: Path, data: Any) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic(path, write)


def write_text_atomic(path: Path, text: str) -> None:
    # UTF-8 whatever the locale: the HTML pages written here say <meta charset="utf-8">
    _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_yaml_atomic(path: Path, data: Any) -> None:
    import yaml

    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def write_parquet_atomic(df, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a polars DataFrame to ``path`` through a temporary file and a rename (``metadata``: the
    file's key-value metadata)."""
    _atomic(path, lambda tmp: df.write_parquet(tmp, metadata=metadata))


def write_csv_atomic(df, path: Path) -> None:
    """Write a polars DataFrame to ``path`` as CSV through a temporary file and a rename."""
    _atomic(path, lambda tmp: df.write_csv(tmp))


def place(path: Path | str) -> str:
    """Where a file is: relative to the working directory when under it (as a workflow's rules name
    their files, so a run's folder moved whole keeps its names), else absolute."""
    full = Path(os.path.abspath(path))
    try:
        return full.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return full.as_posix()


MODELS_RECORD = "tokenshift.models"
"""The key of a table's parquet metadata recording, as JSON, the checkpoints it was computed with
(``checkpoints.checkpoint_label`` by role: a score table's ``base`` and ``rl``); ``read_models_record``."""


def read_models_record(path: Path | str) -> dict[str, str] | None:
    """The checkpoints a table records it was computed with (``MODELS_RECORD``), or None where it records
    none (a table made otherwise, or rewritten by another program)."""
    import polars as pl

    try:
        metadata = pl.read_parquet_metadata(path)
    except Exception:  # not a parquet file: no record (the table's own read names a bad file)
        return None
    return models_record(metadata)


def models_record(metadata: Mapping[str, str]) -> dict[str, str] | None:
    """``read_models_record`` of a parquet file's metadata, read already."""
    try:
        record = json.loads(metadata.get(MODELS_RECORD) or "null")
    except UNREADABLE:  # no JSON there: no record
        return None
    return record if isinstance(record, dict) else None


def _snakemake_record(rel: str) -> Path | None:
    """Snakemake's record of the file ``rel`` (relative to the working directory) as an output of a finished job,
    where a run there made it: ``.snakemake/metadata/`` keeps one for each, under the path's URL-safe base64,
    cut into names of at most NAME_MAX - 1 characters (``@`` before every name but the last). A copy placed
    there by hand, or a file of a rule the study has not, has none."""
    records = Path(".snakemake", "metadata")
    try:
        longest = os.pathconf(records, "PC_NAME_MAX") or 255
    except OSError:  # no such folder: no record
        return None
    b64 = urlsafe_b64encode(rel.encode()).decode()
    names = [b64[i : i + longest - 1] for i in range(0, len(b64), longest - 1)]
    record = records.joinpath(*(f"@{n}" for n in names[:-1]), names[-1])
    return record if record.is_file() else None


def made_by_snakemake(rel: str) -> bool:
    """Whether a Snakemake run in the working directory made the file ``rel`` (``_snakemake_record``)."""
    return _snakemake_record(rel) is not None


def _changed_since_made(rel: str, record: Path) -> bool:
    """Whether the file ``rel`` changed after the job that made it finished (its content or its time, set back
    or not: the inode's change time no copy sets back), by the job's end in Snakemake's ``record``; where
    the record holds no end time, taken as changed."""
    try:
        end = float(json.loads(record.read_text())["endtime"])
        st = os.stat(rel)
    except (OSError, KeyError, TypeError, *UNREADABLE):
        return True
    return max(st.st_mtime, st.st_ctime) > end


def remake_hint(path: Path | str) -> str:
    """How to make ``path`` again where a workflow made it (a file under the working directory of a
    Snakemake run that made it: ``made_by_snakemake``) and it changed since, else "". A finished output
    damaged since (truncated, overwritten) fails the job that reads it, and Snakemake, which counts it done,
    plans its job no more: the job must be forced, and then all that follows it runs again. A file
    Snakemake did not make there (a copy into a folder of a dataset the study has not) has no job to force,
    and one as its job left it (a table of another kind given by hand) nothing to make again: no hint."""
    rel = place(path)
    record = None if os.path.isabs(rel) else _snakemake_record(rel)
    if record is None or not _changed_since_made(rel, record):
        return ""
    return (
        "; it changed after the job that made it finished (truncated, overwritten): make it again, and all "
        f"that follows it, with `snakemake --cores all all --forcerun {shlex.quote(rel)}`"
    )


COLUMN_KINDS = {
    "number": lambda dtype: dtype.is_numeric(),
    "finite": lambda dtype: dtype.is_numeric(),  # and no NaN or infinity among its values
    "count": lambda dtype: dtype.is_integer(),  # and none below 0
    "bool": lambda dtype: dtype.__class__.__name__ == "Boolean",
    "string": lambda dtype: dtype.__class__.__name__ in ("String", "Utf8", "Categorical", "Enum"),
    "list": lambda dtype: dtype.__class__.__name__ in ("List", "Array"),
}
"""What a column's kind in ``read_parquet``'s ``columns`` accepts, by polars dtype; ``list[K]`` is a list
whose values are of kind K."""


def _kind_error(column, kind: str) -> str | None:
    """Why ``column`` (a polars Series) is not of ``kind`` (no trailing ``?``), or None."""
    import polars as pl

    inner = kind[5:-1] if kind.startswith("list[") and kind.endswith("]") else None
    if not COLUMN_KINDS["list" if inner else kind](column.dtype):
        return f"holds {column.dtype}, where a {kind} was expected"
    if inner:
        values = column.explode().drop_nulls()  # a null inside a list is an empty statistic, not a type
        if values.dtype == pl.Null:
            return None
        if not COLUMN_KINDS[inner](values.dtype):
            return f"holds {column.dtype}, where a {kind} was expected"
        return _kind_error(values, inner)
    if kind == "finite" and column.dtype.is_float():
        bad = (~column.is_finite()).sum()
        return f"holds NaN or infinity in {bad} rows, where finite numbers were expected" if bad else None
    if kind == "count" and (column < 0).any():
        return f"holds {column.min()}, where a count (0 or more) was expected"
    return None


def read_parquet(
    path: Path | str,
    what: str,
    columns: Sequence[str] | Mapping[str, str] = (),
    *,
    nonempty: bool = False,
    unique: Sequence[str] = (),
    optional: Mapping[str, str] | None = None,
):
    """A parquet table, or ``InputError`` naming ``path`` and what was expected there
    (a missing file, one that is not parquet, or one without the ``columns`` needed); for a damaged
    output of the workflow, the error also says how to make it again (``remake_hint``).

    ``columns`` may map each name to its kind (``COLUMN_KINDS``: ``number``, ``finite``, ``count``, ``bool``,
    ``string``, ``list``, ``list[K]``; with a trailing ``?`` where nulls are allowed): a column of another
    type or value, or with a null where none is allowed, is refused too, as, with ``nonempty``, a table
    without rows, and a table where two rows have the same values of the ``unique`` columns (a row
    duplicated by a careless concatenation would count twice in every statistic). ``optional`` columns (name ->
    kind) are checked so where the table has them."""
    import polars as pl

    path = a_file(path, what)
    try:
        table = pl.read_parquet(path, glob=False)  # the file named: polars would take [, * or ? as a glob
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: not a readable parquet file (expected {what}): {first}{remake_hint(path)}") from None
    missing = [c for c in (*columns, *unique) if c not in table.columns]
    if missing:
        raise InputError(
            f"{path}: has no column {missing[0]!r} (expected {what}; columns: {table.columns}){remake_hint(path)}"
        )
    if nonempty and table.height == 0:
        raise InputError(f"{path}: has no rows (expected {what}){remake_hint(path)}")
    kinds = {
        **(columns if isinstance(columns, Mapping) else {}),
        **{c: k for c, k in (optional or {}).items() if c in table},
    }
    for name, kind in kinds.items():
        all_null = table.schema[name].__class__.__name__ == "Null"  # a column written with no value at all
        why = None if all_null and kind.endswith("?") else _kind_error(table[name], kind.rstrip("?"))
        if why:
            raise InputError(f"{path}: column {name!r} {why} ({what}){remake_hint(path)}")
        nulls = table[name].null_count()
        if nulls and not kind.endswith("?"):
            raise InputError(f"{path}: column {name!r} is null in {nulls} of {table.height} rows (expected {what})")
    if unique:
        repeated = table.filter(table.select(unique).is_duplicated())
        if repeated.height:
            key = ", ".join(f"{c}={v!r}" for c, v in repeated.row(0, named=True).items() if c in unique)
            raise InputError(
                f"{path}: {repeated.height} rows share their {', '.join(unique)} with another ({key}): expected one "
                f"row each ({what}; a table concatenated twice?){remake_hint(path)}"
            )
    return table


def read_text(path: Path | str, what: str) -> str:
    """A UTF-8 text file, or ``InputError`` naming ``path`` (missing, or not text)."""
    path = a_file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (expected {what})") from None
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not UTF-8 text (expected {what}; byte {e.start} is {e.object[e.start : e.start + 1]!r})"
        ) from None


UNREADABLE = (ValueError, RecursionError)
"""What Python's JSON and YAML readers raise for text they cannot read, besides their own syntax errors (which JSON's
are, a ``ValueError``): bytes that are not text, an integer of more than Python's 4,300 digits (``ValueError``),
nesting past the parser's recursion (``RecursionError``). Catching ``JSONDecodeError`` alone let the other two
through as tracebacks (the twenty-second hostile pass)."""


def read_json(path: Path | str, what: str) -> dict:
    """A JSON object, or ``InputError`` naming ``path``."""
    path = a_file(path, what)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (expected {what})") from None
    except UNREADABLE as e:
        raise InputError(f"{path}: not valid JSON (expected {what}): {e}{remake_hint(path)}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object ({what}){remake_hint(path)}")
    return data
