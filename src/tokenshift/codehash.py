"""The code each stage runs, as one hash per ``tokenshift`` subcommand.

The workflow records it as a setting of every job that runs the subcommand (a ``params:`` value), so a
change to code a job runs re-runs that job, and a change to code it does not run re-runs nothing: a new
grader re-runs the rollouts and cross-samples, not the scores; a new figure style re-runs the figures
alone; a new cross-sampling policy re-runs the cross-samples, not the rollouts, though a rollout decodes
with the cross-sampling decoder (``decoding.decode_alone``).

The hash is taken over *units*: a top-level statement of a module of the package (a function or class
with its decorators, an assignment, an import-time statement), read with ``ast``. A stage's units are
those its handler reaches, and the module's ``register`` that builds its arguments (whose defaults the
handler runs with): every name a reached unit uses that is a function, class or assignment of the
package (in its own module, or imported from another, at the top or inside a function) is reached in
turn, at any depth; a module that is imported adds the statements it runs when imported that bind no
name (an ``if`` at the top, a call) or bind, by a call, a private name the module never reads (kept for
the call's effect), and the modules it imports. A class is one unit (all its methods).
Data files of the package (``templates/``) are covered where a reached unit names them.

Names are resolved by their text, not their scope (a local variable named as a function reaches that
function: more, never less); a relative import is resolved as Python resolves it, and a module given another
name (``_st = tokenshift.stats``, at the top or in a function) is followed through that name; annotations are
not followed (``from __future__ import annotations``
makes them strings that nothing runs). Every stage's units include the dispatcher's
(``cli/__init__.py``'s ``main`` and what it reaches: the parser, the output check, what an error means);
the parser a stage's command builds registers that stage's module alone (``cli.COMMANDS``), so the other
stages' ``register`` functions, which it calls through a loop variable, neither run nor are followed: a new
flag of one stage re-runs that stage alone. Not covered: the package's ``__init__.py`` (a
version string), third-party packages (torch, transformers, math-verify: their versions are not part of
the hash). Followed: a star import (name by name), a module or name given as a constant string (any call or
subscript of ``"tokenshift.x"``: ``import_module``, ``__import__``, ``sys.modules[...]``, ``".x"`` relative to
the module's package, ``"tokenshift.x:f"``; ``getattr(m, "f")``, ``vars(m)["f"]``: f of a module in scope), a
name a module's ``__getattr__`` gives (its ``__getattr__``), and code that the package's own code is handed
when a module is imported (a decorator or an assignment's call that is the package's:
``@dispatch.register(float)``, ``IMPL = registry.add(f)``, which may fill a registry: the statement is
import-time code of its module). Not followed, and used nowhere in the
package: what a lookup by a name computed at run time would reach (``getattr(m, prefix + "f")``), and a
registry filled by a statement inside a class body; tests/test_codehash.py runs every
stage of a small study under a tracer and checks
that each function it ran is in its stage's units.

Reading the package takes about a second, at every Snakemake start (and on a cluster in every job, which
starts Snakemake again): the hashes are remembered under ``tokenshift.io.cache_dir()``, keyed by the bytes
of every file of the package and the Python version that parses them, so a change to any file is a new
key and they are taken again.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = "tokenshift"
SKIPPED = (("__init__.py", "__version__"),)
"""Units of the package no stage's hash includes (its file, relative to the package, and its name): the version
string the pages quote, so that a release re-runs what its code changed and no more. The rest of the package's
``__init__.py`` is in every stage's reach, as importing any of its modules runs it (code added there was
hashed nowhere: the twelfth hostile pass, J8)."""
DISPATCHER = ("tokenshift.cli", "main")
"""What the ``tokenshift`` script runs (pyproject's ``[project.scripts]``) before a stage's handler, in every stage."""
MAIN_TESTS = ("__name__ == '__main__'", "'__main__' == __name__")
"""The tests of an ``if`` at a module's top whose body runs only when the module runs as a script."""
IMPORT_TIME = "<import>"
"""The name of a module's unit that holds the statements it runs when imported and that bind no name."""


def _source(module: str) -> Path | None:
    """The file of ``tokenshift`` module ``module`` (a package's ``__init__.py``), None for another package. A
    package and a module of one name (an rsync without --delete left ``grading.py`` beside ``grading/``): the
    package, which Python imports (the twentieth pass: the module's file was hashed, the package's code ran)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts[1:])
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join((PACKAGE, *parts))


def _package_of(path: Path) -> str:
    """The package a relative import in the file ``path`` starts from."""
    module = _module_of(path)
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _module_chain(chain: tuple[str, ...], scope: dict[str, tuple[str, str | None]]) -> str | None:
    """The ``tokenshift`` module that the name or ``name.attribute`` chain ``chain`` is, under the imports
    ``scope``; None where it is no module of the package."""
    target, inner = scope.get(chain[0], (None, "-"))
    if target is None or inner is not None:
        return None
    for attribute in chain[1:]:
        if not _source(f"{target}.{attribute}"):
            return None
        target = f"{target}.{attribute}"
    return target


def _alias(node: ast.AST) -> tuple[str, tuple[str, ...]] | None:
    """(name, chain) for ``name = a.b.c`` (or ``name = a``), which may give a module another name; else None."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        chain = _chain(node.value)
        return (node.targets[0].id, chain) if chain else None
    return None


def _chain(node: ast.AST) -> tuple[str, ...] | None:
    """``a.b.c`` as ``("a", "b", "c")``; None for any other expression."""
    attributes = []
    while isinstance(node, ast.Attribute):
        attributes.append(node.attr)
        node = node.value
    return (node.id, *reversed(attributes)) if isinstance(node, ast.Name) else None


def _bound(target: ast.AST) -> list[str]:
    """The names an assignment target binds (``a``, ``a, b``; not ``a.b`` nor ``a[0]``)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        return [n for t in target.elts for n in _bound(t)]
    return []


def _imports(nodes, package: str) -> dict[str, tuple[str, str | None]]:
    """What the import statements among ``nodes`` bind: name -> (module, None) for a module, (module,
    attribute) for a name imported from one (``tokenshift`` modules only; ``from m import *`` binds ``"* m"`` to
    ``(m, "*")``). ``package`` is the package a relative import (``from .stats import mean_ci``) starts from: that
    of the module holding ``nodes``."""
    bound = {}
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:  # `from ..a import b`: as `from <package>.a import b`
            above = package.split(".")
            if node.level - 1 >= len(above):
                continue  # above the top package: Python refuses it
            start = above[: len(above) - (node.level - 1)]
            node = ast.ImportFrom(".".join([*start, *([node.module] if node.module else [])]), node.names, 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    # `import a.b` binds a (and imports a.b); `import a.b as c` binds c to a.b
                    bound[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0],
                        None,
                    )
                    bound[f"<import {alias.name}>"] = (alias.name, None)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                if alias.name == "*":  # each star import its own: a module may star-import several
                    bound[f"* {node.module}"] = (node.module, "*")
                    continue
                sub = f"{node.module}.{alias.name}"
                bound[alias.asname or alias.name] = (sub, None) if _source(sub) else (node.module, alias.name)
    return bound


def _imported_by_string(node: ast.AST, package: str) -> str | None:
    """The ``tokenshift`` module a call or subscript names by a constant string (``importlib.import_module(
    "tokenshift.x")``, ``import_module(".x", __package__)`` from a module of ``package``, ``__import__(...)``,
    ``sys.modules["tokenshift.x"]``, under any name), else None."""
    if isinstance(node, ast.Call) and node.args:
        given = node.args[0]
    elif isinstance(node, ast.Subscript):
        given = node.slice
    else:
        return None
    found = _string_target(given.value, package) if isinstance(given, ast.Constant) else None
    return found[0] if found and found[1] is None else None


def _string_target(text, package: str) -> tuple[str, str | None] | None:
    """(module, name or None) that a constant string names: ``tokenshift.x``, ``tokenshift.x:f``, ``tokenshift.x.f``,
    or ``.x`` relative to ``package`` (``import_module(".x", __package__)``); None for any other text."""
    if not isinstance(text, str):
        return None
    text = f"{package}{text}" if text.startswith(".") else text
    module, _, name = text.partition(":")
    if _source(module):
        return module, name or None
    head, _, last = module.rpartition(".")
    return (head, last) if not name and _source(head) else None


def _stars(imports: dict[str, tuple[str, str | None]]) -> list[str]:
    """The modules ``imports`` star-imports (``from tokenshift.x import *``)."""
    return [module for module, attribute in imports.values() if attribute == "*"]


def _statement_lines(node: ast.stmt) -> tuple[int, int]:
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return start, node.end_lineno or node.lineno


@dataclass
class _Module:
    path: Path
    units: dict[str, list[ast.stmt]] = field(default_factory=dict)
    """name -> the top-level statements that bind it (IMPORT_TIME: those that bind none)."""
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    import_code: list[str] = field(default_factory=list)
    """The module's top-level imports as they run: what its units' names are bound to (``math.comb``, or
    another function imported under that name), so each stage that reaches a unit of it covers them."""

    def code(self, name: str) -> str:
        """The unit's statements as they run: the tree written out again (``ast.unparse``), so comments, layout
        and quoting drop out, and without docstrings (``_Bare``). Editing those re-runs nothing."""
        return "\n".join(ast.unparse(_Bare().visit(copy.deepcopy(node))) for node in self.units[name])

    def unit_at(self, line: int) -> str | None:
        """The unit whose statement holds ``line`` (None: a line between statements, or an import)."""
        for name, nodes in self.units.items():
            if any(a <= line <= b for a, b in map(_statement_lines, nodes)):
                return name
        return None


class _Bare(ast.NodeTransformer):
    """A tree without its docstrings, nor any other string standing alone as a statement (an attribute's
    docstring after its assignment): Python evaluates and drops them."""

    def generic_visit(self, node):
        super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                kept = [s for s in block if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
                setattr(node, name, kept or [ast.Pass()])
        return node


def _calls_the_package(node: ast.stmt, mod: _Module) -> bool:
    """Whether the top-level statement ``node`` calls code of the package when its module is imported: a decorator of
    a function or class, or the value of an assignment, that is the package's (a unit of the module, or a name it
    imports from the package). ``@dataclass``, ``@functools.cache`` and ``log = logging.getLogger(...)`` are not."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        called = node.decorator_list
    elif isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
        called = [node.value]
    else:
        return False
    for expr in called:
        chain = _chain(expr.func if isinstance(expr, ast.Call) else expr)
        if chain and (chain[0] in mod.units or chain[0] in mod.imports):
            return True
    return False


def _main_guard(node: ast.stmt) -> bool:
    """Whether ``node`` is ``if __name__ == "__main__":`` (not ``!=``, which runs at every import: the 22nd pass)."""
    return isinstance(node, ast.If) and ast.unparse(node.test) in MAIN_TESTS


@functools.cache
def _parse(path: Path) -> _Module:
    tree = ast.parse(path.read_bytes())  # bytes, as Python reads a module: a byte order mark, a coding line
    mod, package = _Module(path), _package_of(path)
    # `if __name__ == "__main__":` runs only as a script; its `else:` (and `elif`) at every import, as top-level code
    body = [n for node in tree.body for n in (node.orelse if _main_guard(node) else [node])]
    for node in body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring (the module's, or an attribute's after its assignment)
        if isinstance(node, ast.Import | ast.ImportFrom):
            mod.imports |= _imports([node], package)
            mod.import_code.append(ast.unparse(node))
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [n for t in node.targets for n in _bound(t)]
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            names = _bound(node.target)
        else:  # an `if`, `try` or call at the top: it runs when the module is imported
            names = [IMPORT_TIME]
            mod.imports |= _imports(ast.walk(node), package)
        for name in names or [IMPORT_TIME]:
            mod.units.setdefault(name, []).append(node)
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    for name, nodes in list(mod.units.items()):
        # `_x = plt.rcParams.update(...)`: a private name its module never reads is bound for the call's
        # effect, which runs when the module is imported, as a bare call does
        if name.startswith("_") and name not in read and name != IMPORT_TIME:
            ran = [n for n in nodes if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
            if any(isinstance(c, ast.Call) for n in ran for c in ast.walk(n)):
                mod.units.setdefault(IMPORT_TIME, []).extend(ran)
                mod.imports |= _imports((c for n in ran for c in ast.walk(n)), package)
    for name, nodes in list(mod.units.items()):
        # `@dispatch.register(float)` on a function, `IMPL = registry.add("m", _impl)`: the package's own code, called
        # when the module is imported, may keep what it is given (a registry) for code that never names it
        if name != IMPORT_TIME and any(_calls_the_package(n, mod) for n in nodes):
            mod.units.setdefault(IMPORT_TIME, []).extend(nodes)
    for name, chain in filter(None, map(_alias, body)):  # `_st = tokenshift.stats`: a module, renamed
        if module := _module_chain(chain, mod.imports):
            mod.imports[name] = (module, None)
    return mod


class _Uses(ast.NodeVisitor):
    """The names and ``name.attribute`` chains a unit uses, and the imports inside it; not annotations,
    nor the handlers a parser is given (``set_defaults(func=...)``: those are other stages' code)."""

    def __init__(self, package: str):
        self.package = package
        self.names: set[str] = set()
        self.chains: set[tuple[str, ...]] = set()
        self.imports: dict[str, tuple[str, str | None]] = {}
        self.aliases: dict[str, tuple[str, ...]] = {}
        """A local name given a name or ``name.attribute`` chain (``st = tokenshift.stats``): maybe a module."""
        self.strings: set[str] = set()

    def visit_Assign(self, node):
        if alias := _alias(node):
            self.aliases[alias[0]] = alias[1]
        self.generic_visit(node)

    def visit_Name(self, node):
        self.names.add(node.id)

    def visit_Attribute(self, node):
        chain, inner = [], node
        while isinstance(inner, ast.Attribute):
            chain.append(inner.attr)
            inner = inner.value
        if isinstance(inner, ast.Name):  # `a.b.c`: a, and the chain (a module's function, a.b's)
            self.names.add(inner.id)
            self.chains.add((inner.id, *reversed(chain)))
        elif module := _imported_by_string(inner, self.package):  # `importlib.import_module("tokenshift.x").f`: x's f
            self.imports[f"<import {module}>"] = (module, None)
            self.chains.add((f"<import {module}>", *reversed(chain)))
            self.visit(inner)
        else:
            self.visit(inner)

    def visit_Call(self, node):
        # `parser.set_defaults(func=handler)`: the handler is another stage's code; any other `func=` is used
        handlers = isinstance(node.func, ast.Attribute) and node.func.attr == "set_defaults"
        if module := _imported_by_string(node, self.package):  # a module imported by its name as a string: imported
            self.imports[f"<import {module}>"] = (module, None)
        self.visit(node.func)
        for child in (*node.args, *(k.value for k in node.keywords if not (handlers and k.arg == "func"))):
            self.visit(child)

    def visit_Constant(self, node):
        if isinstance(node.value, str):
            self.strings.add(node.value)

    def visit_Import(self, node):
        self.imports |= _imports([node], self.package)

    visit_ImportFrom = visit_Import

    def visit_arg(self, node):
        pass  # an argument's annotation

    def visit_FunctionDef(self, node):
        for child in (*node.decorator_list, node.args, *node.body):
            self.visit(child)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_arguments(self, node):
        for default in (*node.defaults, *(d for d in node.kw_defaults if d is not None)):
            self.visit(default)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)


@functools.cache
def _uses(path: Path, name: str) -> _Uses:
    uses = _Uses(_package_of(path))
    for node in _parse(path).units[name]:
        if isinstance(node, ast.ClassDef):  # its bases, decorators and body, not its annotations
            for child in (*node.bases, *node.decorator_list, *node.keywords, *node.body):
                uses.visit(child)
        else:
            uses.visit(node)
    return uses


def _package_files() -> list[Path]:
    """Every regular file of the package, ``__pycache__`` aside, sorted; folders that are symbolic links are entered
    (Python imports from them; ``Path.rglob`` of Python 3.11 does not enter them, so a linked ``plots/`` or
    ``templates/`` folder's edits changed no hash: the twenty-first pass), each real folder once."""
    found, seen = [], set()
    for top, dirs, files in os.walk(ROOT, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a loop of links, or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [Path(top, f) for f in files if os.path.isfile(os.path.join(top, f))]
    return sorted(found)


@functools.cache
def _data_files() -> tuple[str, ...]:
    """The package's files that are not code (``templates/explorer.html``), relative to it."""
    return tuple(p.relative_to(ROOT).as_posix() for p in _package_files() if p.suffix not in (".py", ".pyc", ".typed"))


@functools.cache
def _templates_used(rel: str) -> frozenset[str]:
    """The package's templates that the Jinja template ``rel`` includes, imports or extends, at any depth (the
    loader finds them beside it: a template only they name was hashed nowhere, the twenty-second pass); every
    template of its folder where one is named by an expression Jinja cannot read without running it."""
    from jinja2 import Environment, meta

    folder = rel.rpartition("/")[0]
    found, todo = set(), [rel]
    while todo:
        names = meta.find_referenced_templates(Environment().parse((ROOT / todo.pop()).read_text(encoding="utf-8")))
        for name in names:
            if name is None:  # a computed name: any of them
                return frozenset(f for f in _data_files() if f.startswith(f"{folder}/"))
            path = f"{folder}/{name}" if folder else name
            if path in _data_files() and path not in found:
                found.add(path)
                todo.append(path)
    return frozenset(found)


@dataclass(frozen=True)
class Units:
    """The units a stage reaches: ``(file relative to the package, name)``, and the data files it names."""

    units: frozenset[tuple[str, str]]
    data: frozenset[str]
    modules: frozenset[str] = frozenset()
    """The package's modules the stage imports (files relative to it): their import statements run, so what a name
    they import is (`from math import floor as kk`, re-exported) is the stage's code though no unit of theirs is."""

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(sorted({f for f, _ in self.units} | self.data))


def _reach(start: list[tuple[str, str]]) -> Units:
    skipped = {(ROOT / f, name) for f, name in SKIPPED}
    units: set[tuple[Path, str]] = set()
    imported: set[str] = set()
    data: set[str] = set()
    todo_units = [(_source(m), n) for m, n in start]
    todo_modules: list[str] = []

    def import_module(module: str) -> None:
        # importing a.b.c runs a.b's and a's files first
        parts = module.split(".")
        todo_modules.extend(".".join(parts[:k]) for k in range(1, len(parts) + 1))

    def resolve(module: str, name: str, seen=()) -> None:
        """Reach what ``name`` of ``module`` is: its own unit, or what its module imported under that name."""
        path = _source(module)
        if path is None or (module, name) in seen:
            return
        mod = _parse(path)
        if name in mod.units:
            todo_units.append((path, name))
        elif name in mod.imports:
            target, attribute = mod.imports[name]
            import_module(target)
            if attribute is not None:
                resolve(target, attribute, (*seen, (module, name)))
        elif _source(f"{module}.{name}"):
            import_module(f"{module}.{name}")
        else:  # a name a star import brought in (`from tokenshift.x import *`): x's, or what x imported so
            for star in _stars(mod.imports):
                resolve(star, name, (*seen, (module, name)))
            if "__getattr__" in mod.units:  # or what the module's __getattr__ gives for it (PEP 562)
                todo_units.append((path, "__getattr__"))

    while todo_units or todo_modules:
        while todo_modules:
            module = todo_modules.pop()
            path = _source(module)
            if module in imported or path is None:
                continue
            imported.add(module)
            mod = _parse(path)
            if IMPORT_TIME in mod.units:
                todo_units.append((path, IMPORT_TIME))
            for target, _ in mod.imports.values():
                import_module(target)
        if not todo_units:
            continue
        path, name = todo_units.pop()
        if path is None or (path, name) in units or (path, name) in skipped:
            continue
        units.add((path, name))
        import_module(_module_of(path))
        mod, uses = _parse(path), _uses(path, name)
        scope = mod.imports | uses.imports
        for alias, chain in uses.aliases.items():  # a module given a local name
            if module := _module_chain(chain, scope):
                scope[alias] = (module, None)
        for target, _ in uses.imports.values():
            import_module(target)
        for used in uses.names:
            if used in mod.units:
                todo_units.append((path, used))
            elif used in scope:
                target, attribute = scope[used]
                import_module(target)
                if attribute is not None:
                    resolve(target, attribute)
            else:
                for star in _stars(scope):
                    resolve(star, used)
        for base, *attributes in uses.chains:
            target, inner = scope.get(base, (None, "-"))
            if target is None or inner is not None:
                continue  # an attribute of an object, not of a module: its class is reached by its name
            for attribute in attributes:  # `module.submodule.function`
                if not _source(f"{target}.{attribute}"):
                    resolve(target, attribute)
                    break
                target = f"{target}.{attribute}"
                import_module(target)
        for text in uses.strings:  # a module, or a name of one, given as a constant string
            if found := _string_target(text, uses.package):  # `resolve_name("tokenshift.x:f")`, `.x`
                import_module(found[0])
                if found[1]:
                    resolve(*found)
            if text.isidentifier():  # `getattr(m, "f")`, `vars(m)["f"]`: f of a module in scope
                for target, attribute in scope.values():
                    source = _source(target) if attribute is None else None  # None: `import tokenshift.gone`
                    if source and text in _parse(source).units:
                        todo_units.append((source, text))
        named = {f for f in _data_files() if any(s.endswith(f) for s in uses.strings)}
        data |= named | {t for f in named if f.endswith(".j2") for t in _templates_used(f)}

    return Units(
        frozenset((p.relative_to(ROOT).as_posix(), n) for p, n in units),
        frozenset(data),
        frozenset(_source(m).relative_to(ROOT).as_posix() for m in imported),
    )


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


@functools.cache
def stage_units(*words: str) -> Units:
    """The units subcommand ``tokenshift <words>`` runs (see the module's docstring)."""
    handler = _handler(words)
    # the handler, its module's `register`, whose arguments' defaults the handler runs with, and the
    # dispatcher that runs it (the `tokenshift` script's `main`: the parser, the output check, what errors mean)
    return _reach([(handler.__module__, handler.__name__), (handler.__module__, "register"), DISPATCHER])


def stage_files(*words: str) -> tuple[str, ...]:
    """The files (relative to the package) of which subcommand ``tokenshift <words>`` runs some code."""
    return stage_units(*words).files


def unit_at(path: Path | str, line: int) -> tuple[str, str | None]:
    """(file relative to the package, unit) of line ``line`` of the package's file ``path``."""
    path = Path(path).resolve()
    return path.relative_to(ROOT).as_posix(), _parse(path).unit_at(line)


def unit_names(rel: str) -> set[str]:
    """The units of the package's file ``rel`` (relative to the package)."""
    return set(_parse(ROOT / rel).units)


@functools.cache
def stage_code(*words: str) -> str:
    """sha256 over the code of the units of ``stage_units(*words)`` (``_Module.code``: without comments,
    layout or docstrings) and the bytes of its data files."""
    return _remembered(("stage", *words), lambda: _digest(stage_units(*words)))


@functools.cache
def package_key() -> str:
    """sha256 over every file of the package (path and bytes, ``__pycache__`` aside) and the Python version
    that parses them: all a hash of this module depends on."""
    h = hashlib.sha256(f"python {sys.version_info.major}.{sys.version_info.minor}\0".encode())
    for path in _package_files():
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


PACKAGE_ENV = "TOKENSHIFT_PACKAGE"
"""Set by the workflow (``common.smk``) to the ``running_package`` it planned with, for its jobs to compare."""


@functools.cache
def running_package() -> str:
    """sha256 over the package's code and data files as they run (paths and bytes; editors' hidden and backup
    files aside): what a job compares with the workflow's ``PACKAGE_ENV``. ``InputError`` for a compiled module in
    the package, which Python would import before its source or for it (``tokenshift._Finder`` refuses it there)."""
    from importlib.machinery import EXTENSION_SUFFIXES

    h = hashlib.sha256()
    for path in _package_files():
        if path.name.endswith((".pyc", *EXTENSION_SUFFIXES)):
            from tokenshift.io import InputError

            raise InputError(
                f"{path}: a compiled module in tokenshift, which is Python source: the code that would run is not "
                "the code its results record; remove it (or reinstall tokenshift)"
            )
        edited = path.name.startswith(".") or path.name.endswith("~")  # an editor's swap or backup file
        if not edited:
            h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def check_job_package() -> None:
    """Refuse to run a job whose tokenshift is not the package the workflow planned it with (``PACKAGE_ENV``):
    a rule's conda environment built from another release, or code edited while the workflow ran. The code
    hash Snakemake records for the job would describe code that did not run."""
    import os

    planned = os.environ.get(PACKAGE_ENV)
    if planned and planned != running_package():
        from tokenshift.io import InputError

        raise InputError(
            f"this job's tokenshift ({ROOT}) is not the package the workflow planned it with (their files differ: "
            "a rule's conda environment built from another tokenshift, or code edited while the workflow ran); "
            "nothing was run: install this tokenshift there (docs/cluster.md) and run again"
        )


def _remembered(key: tuple[str, ...], compute) -> str:
    """``compute()``, or what it gave for ``key`` before on this package's files (``package_key``).
    The record is best effort: where it cannot be read or written, the hash is taken each time."""
    from tokenshift.io import UNREADABLE, cache_dir, write_json_atomic

    record = cache_dir() / "stage-code" / f"{package_key()}.json"
    name = " ".join(key)
    try:
        known = json.loads(record.read_text())
    except (OSError, *UNREADABLE):  # a damaged record is none: it costs time only
        known = {}
    if isinstance(known, dict) and isinstance(known.get(name), str):
        return known[name]
    value = compute()
    try:  # another process may have added its own meanwhile: keep them
        latest = json.loads(record.read_text()) if record.is_file() else {}
        write_json_atomic(record, {**(latest if isinstance(latest, dict) else {}), name: value})
    except (OSError, *UNREADABLE):
        pass
    return value


def _digest(found: Units) -> str:
    h = hashlib.sha256()
    for rel, name in sorted(found.units):
        h.update(f"{rel}:{name}\0".encode())
        h.update(_parse(ROOT / rel).code(name).encode() + b"\0")
    for rel in sorted({rel for rel, _ in found.units} | found.modules):  # by module: a package or a module of it
        imports = "\n".join(_parse(ROOT / rel).import_code)
        h.update(f"{_module_of(ROOT / rel)}:<imports>\0{imports}\0".encode())
    for rel in sorted(found.data):
        h.update(f"{rel}\0".encode())
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()
