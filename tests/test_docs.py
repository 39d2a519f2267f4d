"""The architecture picture is made by docs/flow_diagram.py and kept in step with the engine's modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("flow_diagram", ROOT / "docs" / "flow_diagram.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_picture_names_every_engine_module_and_is_up_to_date() -> None:
    script = _script()
    svg = script.draw()
    engine = ROOT / "src" / "napari_cdal" / "engine"
    for path in engine.rglob("*.py"):
        if path.stem != "__init__":
            assert f">{path.stem}</text>" in svg, f"{path.relative_to(engine)} is missing from the picture"
    assert script.OUT.read_text() == svg, "docs/images/flow.svg is stale: run python docs/flow_diagram.py"


def test_the_readme_lists_the_system_packages_make_installs() -> None:
    import re

    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("system-deps:") : makefile.index("$(BIN)/napari-cdal:")]
    packages = re.findall(r"\b(xvfb|lib[\w.-]+\d)\b", recipe.split("install -y -qq", 1)[1])
    readme = (ROOT / "README.md").read_text()
    assert len(packages) >= 10 and all(f" {package}" in readme for package in packages), packages
    assert "`make test` takes several minutes" in readme
