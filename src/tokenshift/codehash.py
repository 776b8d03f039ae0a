"""The code each stage runs, as one hash per ``tokenshift`` subcommand.

The workflow records it as a setting of every job that runs the subcommand (a ``params:`` value), so a
changed module re-runs the jobs whose command imports it, and no other: a new grader re-runs the
rollouts and cross-samples, not the scores; a new figure style re-runs the figures alone.

A subcommand's code is the source of its CLI module (``tokenshift/cli/<stage>.py``, with
``cli/common.py`` where it uses it) and of every library module that the functions it runs import
(its handler and ``register``, and the CLI functions they call; one CLI module serves several
stages), followed through the library's imports at any depth (inside functions too). Imports are
read off the source with ``ast``; nothing is imported but the CLI's parser. Not followed: the
package's ``tokenshift/__init__.py`` (a version string) and ``tokenshift/cli/__init__.py`` (the
dispatcher), third-party packages (torch, transformers, math-verify: their versions are not part of
the hash), and data files read at run time (``templates/``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SKIPPED = ("__init__.py", "cli/__init__.py")
"""Files of the package no stage's hash includes (relative to the package)."""


def _source(module: str) -> Path | None:
    """The file of ``tokenshift`` module ``module`` (a package's ``__init__.py``), None for another package."""
    parts = module.split(".")
    if parts[0] != "tokenshift":
        return None
    base = ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file() and parts[1:]:
            return path
    return None


def _imported(nodes) -> set[str]:
    """The ``tokenshift`` modules the import statements among ``nodes`` name (``from a import b``: ``a.b``
    too where that is a module)."""
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {m for m in found if _source(m)}


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


@functools.cache
def _imports_of(path: Path) -> frozenset[str]:
    return frozenset(_imported(ast.walk(_tree(path))))


def _closure(modules: set[str]) -> set[Path]:
    files, todo = set(), list(modules)
    while todo:
        path = _source(todo.pop())
        if path in files:
            continue
        files.add(path)
        todo += _imports_of(path)
    return files


@functools.cache
def _parser():
    from tokenshift.cli import build_parser

    return build_parser()


def _handler(words: tuple[str, ...]):
    parser = _parser()
    for word in words:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        if word not in sub.choices:
            known = sorted(sub.choices)
            raise ValueError(f"tokenshift {' '.join(words)}: no such subcommand ({word!r}; known: {known})")
        parser = sub.choices[word]
    return parser.get_default("func")


def _cli(module: str, names: set[str]) -> tuple[set[Path], set[str]]:
    """The CLI files that functions ``names`` of CLI module ``module`` reach, function by function (the
    functions of their module they call, and those they import from another CLI module, such as
    ``cli/common.py``'s), and the library modules those functions and their modules' tops import."""
    files, libraries, seen, todo = set(), set(), set(), [(module, n) for n in names]
    while todo:
        module, name = todo.pop()
        if (module, name) in seen:
            continue
        seen.add((module, name))
        path = _source(module)
        tree = _tree(path)
        files.add(path)
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        from_cli = {
            alias.asname or alias.name: node.module
            for node in top
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tokenshift.cli")
            for alias in node.names
        }
        body = list(ast.walk(functions[name])) if name in functions else []
        for node in body:
            # `register` names every handler of its module (set_defaults(func=...)): those are not its code
            if isinstance(node, ast.Name) and node.id in functions and name != "register":
                todo.append((module, node.id))
            elif isinstance(node, ast.Name) and node.id in from_cli:
                todo.append((from_cli[node.id], node.id))
        libraries |= {m for m in _imported(top + body) if not m.startswith("tokenshift.cli")}
    return files, libraries


@functools.cache
def stage_files(*words: str) -> tuple[Path, ...]:
    """The source files subcommand ``tokenshift <words>`` runs (see the module's docstring), in order."""
    handler = _handler(words)
    # the handler, and the module's `register`, whose arguments' defaults the handler runs with
    cli, libraries = _cli(handler.__module__, {handler.__name__, "register"})
    files = cli | _closure(libraries)
    skipped = {ROOT / s for s in SKIPPED}
    return tuple(sorted((f for f in files if f not in skipped), key=lambda f: f.relative_to(ROOT).as_posix()))


@functools.cache
def stage_code(*words: str) -> str:
    """sha256 over the relative paths and bytes of ``stage_files(*words)``."""
    h = hashlib.sha256()
    for path in stage_files(*words):
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()
