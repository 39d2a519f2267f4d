"""The napari plugin checks, offline: the manifest validates and the package keeps napari's best practices.

    python tools/napari_plugin_checks.py [--no-imports]

- napari.yaml validates with npe2 and, unless --no-imports, every python_name in it imports
  (`npe2 validate --imports`, in a fresh interpreter);
- no Qt binding (PyQt5, PyQt6, PySide2, PySide6) among the package's install dependencies: the user's
  environment brings its own (the testing extra may name one);
- no module of src/ imports a Qt binding directly: through qtpy, which picks the one installed.

The last two are the checks of napari-plugin-checks (github.com/tlambert03/napari-plugin-checks),
written here so that pre-commit runs them without fetching anything.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "napari.yaml"
BINDINGS = ("PyQt5", "PyQt6", "PySide2", "PySide6")


def manifest_problems(imports: bool = True) -> list[str]:
    """npe2's verdict on napari.yaml: nothing when it validates."""
    command = [sys.executable, "-m", "npe2", "validate", str(MANIFEST)] + (["--imports"] if imports else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    return [] if result.returncode == 0 else [f"napari.yaml does not validate:\n{result.stdout}{result.stderr}"]


def dependency_problems(pyproject: dict[str, Any]) -> list[str]:
    """Qt bindings among [project].dependencies."""
    found = []
    for requirement in pyproject.get("project", {}).get("dependencies", []):
        name = re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0]
        if name.lower() in {b.lower() for b in BINDINGS}:
            found.append(f"pyproject.toml: {requirement!r} among the dependencies: depend on qtpy, not on a binding")
    return found


def binding_imports(root: Path = ROOT / "src") -> list[str]:
    """Imports of a Qt binding anywhere in the package's modules."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] in BINDINGS:
                    where = path.relative_to(root.parent) if root.parent in path.parents else path
                    found.append(f"{where}:{node.lineno} imports {name}: import from qtpy instead")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-imports", action="store_true", help="validate the manifest without importing its code")
    args = parser.parse_args(argv)
    problems = (
        manifest_problems(imports=not args.no_imports)
        + dependency_problems(tomllib.loads((ROOT / "pyproject.toml").read_text()))
        + binding_imports()
    )
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print("napari plugin checks: the manifest validates, no Qt binding depended on or imported")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
