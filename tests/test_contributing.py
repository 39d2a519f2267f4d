"""CONTRIBUTING.md stays true: the files it names exist, it explains every pytest marker, and what it says
`make lint` runs is what the Makefile runs."""

import re
from pathlib import Path

from tools.mypy_gate import tomllib

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "CONTRIBUTING.md").read_text()


def test_every_path_the_guide_names_exists() -> None:
    # a path in backticks, from the root or from src/napari_cdal (`engine/...`); `tests/test_widget_*.py` is a pattern;
    # ./.venv is the reader's own
    spans = set(re.findall(r"`([.\w/*-]+)`", GUIDE)) - {"./.venv"}
    named = {span for span in spans if "/" in span or re.search(r"\.(py|md|json|toml|yaml|safetensors|svg)$", span)}
    assert {".pre-commit-config.yaml", "src/napari_cdal/engine/", "tools/mypy_baseline.json"} <= named
    bases = (ROOT, ROOT / "src" / "napari_cdal")
    missing = [path for path in sorted(named) if not any(list(base.glob(path)) for base in bases)]
    assert not missing, f"CONTRIBUTING.md names files that are gone: {missing}"


def test_every_pytest_marker_is_explained() -> None:
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    for marker in (line.split(":")[0] for line in markers):
        assert f"| `{marker}` |" in GUIDE, marker
    assert "NAPARI_CDAL_TEST_THREADS" in GUIDE


def test_the_lint_commands_are_the_makefiles() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    commands = [line.strip().removeprefix("$(BIN)/") for line in recipe.splitlines()[1:]]
    assert len(commands) == 4
    for command in commands:
        assert command in GUIDE, command
