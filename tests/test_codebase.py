"""The codebase's shape, read from src/napari_cdal with ast: no import circles (at import time: imports inside
functions and under TYPE_CHECKING run later or never), no private name borrowed from another module, no private
module used outside its package, no module over 400 lines, an engine that never imports napari or Qt, and no
environment variable set by importing. Each check is also run on a made-up package that breaks it (at the end)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "napari_cdal"
MAX_LINES = 400
GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")
"""What the engine never imports: napari, Qt through any binding, and the GUI libraries on top of them."""


@dataclass(frozen=True)
class Import:
    """One import statement's target in `module`: the module named, and for `from m import n` the name n."""

    module: str
    target: str
    name: str | None
    line: int
    at_import_time: bool
    """False inside a function body or under `if TYPE_CHECKING:`: it runs later, or never."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name."""
    return {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module of a `from ... import` in `module`, relative forms resolved."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if modules()[module].name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _walk(module: str, nodes: list[ast.stmt], at_import_time: bool) -> Iterator[Import]:
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, None, node.lineno, at_import_time)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            for alias in node.names:
                yield Import(module, target, alias.name, node.lineno, at_import_time)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _walk(module, node.body, False)
        elif isinstance(node, ast.If):
            yield from _walk(module, node.body, at_import_time and not _is_type_checking(node.test))
            yield from _walk(module, node.orelse, at_import_time)
        else:  # classes, try, with, loops, match: their bodies run at import time as the module's do
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(node, field, []):
                    body = child.body if isinstance(child, ast.ExceptHandler | ast.match_case) else [child]
                    yield from _walk(module, body, at_import_time)


@cache
def imports() -> tuple[Import, ...]:
    """Every import in the package, wherever it stands."""
    found: list[Import] = []
    for name, path in modules().items():
        found.extend(_walk(name, ast.parse(path.read_text(), str(path)).body, True))
    return tuple(found)


def package_targets(imp: Import) -> list[str]:
    """The package's module an import needs: `from a import b` needs a.b when b is a module, else a (the package
    that defines b). Parent packages that Python loads on the way are left out: `import a.b` needs a.b, and a
    package's __init__ importing its own modules is no circle with them."""
    if imp.name is not None and f"{imp.target}.{imp.name}" in modules():
        return [f"{imp.target}.{imp.name}"]
    return [imp.target] if imp.target in modules() else []


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports at import time (functions and TYPE_CHECKING left out)."""
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for imp in imports():
        if imp.at_import_time:
            graph[imp.module].update(t for t in package_targets(imp) if t != imp.module)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found, key=lambda component: (-len(component), component))


def a_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One circle through the component's first module, to show how it closes."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for successor in sorted(graph[node] & members):
            if successor == start:
                return paths[node] + [start]
            if successor not in paths:
                paths[successor] = paths[node] + [successor]
                queue.append(successor)
    return component


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_borrowings() -> list[str]:
    """`from m import _name` (and `m._name` on an imported module m) across the package's modules, where _name is not
    a module itself: a helper private to m used elsewhere."""
    found = []
    for imp in imports():
        if imp.name is None or not imp.target.startswith(PACKAGE) or not _private(imp.name):
            continue
        if f"{imp.target}.{imp.name}" not in modules():
            found.append(f"{imp.module}:{imp.line} imports {imp.name} from {imp.target}")
    for module, path in modules().items():
        bound = {}  # local name -> package module it names
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(module, node)
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules():
                        bound[alias.asname or alias.name] = f"{target}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in modules():
                        bound[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and _private(node.attr)
                and f"{bound[node.value.id]}.{node.attr}" not in modules()
            ):
                found.append(f"{module}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    return sorted(set(found))


def private_module_uses() -> list[str]:
    """Imports of a private module (`_name`) from outside the package it belongs to: `_widgets/_layers.py` serves
    the modules of `_widgets`, not `_writer.py`."""
    found = []
    for imp in imports():
        for target in package_targets(imp):
            parts = target.split(".")
            for depth, part in enumerate(parts):
                owner = ".".join(parts[:depth])
                if _private(part) and not (imp.module == owner or imp.module.startswith(f"{owner}.")):
                    found.append(f"{imp.module}:{imp.line} imports {target}, private to {owner}")
    return sorted(set(found))


def test_the_package_is_found_and_parsed() -> None:
    # the checks below see every module and its imports: a walker that found nothing would pass them all
    assert len(modules()) > 50 and "napari_cdal.engine.method.sampler" in modules()
    graph = import_graph()
    assert "napari_cdal.engine.method.model" in graph["napari_cdal.engine.method.sampler"]
    assert sum(map(len, graph.values())) > 100


def test_no_import_circle() -> None:
    graph = import_graph()
    found = [" -> ".join(a_path(graph, component)) for component in circles(graph)]
    assert not found, "modules that import each other at import time:\n" + "\n".join(found)


def test_no_private_name_is_imported_from_another_module() -> None:
    found = private_borrowings()
    assert not found, "private helpers used outside their module (make them public, or move them):\n" + "\n".join(found)


def test_no_private_module_is_imported_from_outside_its_package() -> None:
    found = private_module_uses()
    assert not found, "private modules used outside their package:\n" + "\n".join(found)


def test_importing_the_package_changes_no_environment_variable() -> None:
    # importing a module is no place to set process-wide state: a run that needs a setting asks for it when it runs
    code = (
        "import importlib, os, pkgutil, napari_cdal; before = dict(os.environ); "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(napari_cdal.__path__, 'napari_cdal.')]; "
        "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)); "
        "print(changed); raise SystemExit(1 if changed else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, "importing napari_cdal set or changed: " + result.stdout + result.stderr


def test_no_module_is_over_400_lines() -> None:
    lengths = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    long = [f"{name}: {count} lines" for name, count in sorted(lengths.items()) if count > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)


def test_the_engine_names_no_gui_package_anywhere() -> None:
    # read, not run: an import inside a function counts too, which importing every module would not reach
    found = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for imp in imports()
        if imp.module.startswith(f"{PACKAGE}.engine") and imp.target.split(".")[0] in GUI
    ]
    assert not found, "\n".join(found)


def test_engine_never_imports_napari_or_qt() -> None:
    # run: importing every engine module (and the CLI, which runs on machines without a display) loads no GUI package,
    # whatever the package's other modules they import pull in
    code = (
        "import importlib, pkgutil, sys, napari_cdal.engine, napari_cdal.cli; "
        "[importlib.import_module(m.name) for m in "
        "pkgutil.walk_packages(napari_cdal.engine.__path__, 'napari_cdal.engine.')]; "
        f"gui = {GUI!r}; "
        "bad = [m for m in sys.modules if m.split('.')[0] in gui]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# The checks' own checks: each finds what it is for in a made-up module, so a pass above means something.


@pytest.fixture()
def made_up(monkeypatch, tmp_path):
    """Point the checks at a made-up package written by the test (name -> source)."""

    def write(sources: dict[str, str]) -> None:
        # a name that is the prefix of another is a package, its source its __init__
        packages = {PACKAGE} | {
            name.rsplit(".", depth)[0] for name in sources for depth in range(1, name.count(".") + 1)
        }
        for name in packages:
            folder = tmp_path.joinpath(*name.split("."))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "__init__.py").write_text(sources.get(name, ""))
        for name, source in sources.items():
            if name not in packages:
                tmp_path.joinpath(*name.split(".")).with_suffix(".py").write_text(source)
        monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
        modules.cache_clear()
        imports.cache_clear()

    yield write
    modules.cache_clear()
    imports.cache_clear()


def test_a_circle_is_found_but_not_through_a_function_or_type_checking(made_up) -> None:
    made_up(
        {
            "napari_cdal": "",
            "napari_cdal.a": "from napari_cdal import b\n",
            "napari_cdal.b": "from .c import thing\n",
            "napari_cdal.c": "import napari_cdal.a\nthing = 1\n",
            "napari_cdal.d": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from napari_cdal import e\n",
            "napari_cdal.e": "def f():\n    from napari_cdal import d\n",
            "napari_cdal.f": "from napari_cdal import g\n",
            "napari_cdal.g": "import napari_cdal.f\n",
            "napari_cdal.h": "from napari_cdal import i\n",  # h needs i, i needs the package, not h
            "napari_cdal.i": "import napari_cdal\n",
        }
    )
    graph = import_graph()
    assert circles(graph) == [["napari_cdal.a", "napari_cdal.b", "napari_cdal.c"], ["napari_cdal.f", "napari_cdal.g"]]
    assert a_path(graph, circles(graph)[0]) == ["napari_cdal.a", "napari_cdal.b", "napari_cdal.c", "napari_cdal.a"]


def test_a_borrowed_private_name_is_found_but_not_a_private_module(made_up) -> None:
    made_up(
        {
            "napari_cdal": "",
            "napari_cdal.a": "def _helper():\n    pass\n_CONST = 1\n",
            "napari_cdal._b": "",
            "napari_cdal.c": "from napari_cdal import _b\nfrom .a import _helper, __doc__\n",
            "napari_cdal.d": "from napari_cdal import a\nx = a._CONST\n",
        }
    )
    assert private_module_uses() == []
    assert private_borrowings() == [
        "napari_cdal.c:2 imports _helper from napari_cdal.a",
        "napari_cdal.d:2 uses napari_cdal.a._CONST",
    ]


def test_a_private_module_used_outside_its_package_is_found(made_up) -> None:
    made_up(
        {
            "napari_cdal": "",
            "napari_cdal._w": "from ._layers import TAG\n",
            "napari_cdal._w._layers": "TAG = 1\n",
            "napari_cdal._w.seg": "from napari_cdal._w import _layers\n",
            "napari_cdal.writer": "def f():\n    from napari_cdal._w._layers import TAG\n",
            "napari_cdal.cli": "from napari_cdal._w import seg\n",
        }
    )
    assert private_module_uses() == ["napari_cdal.writer:2 imports napari_cdal._w._layers, private to napari_cdal._w"]
