"""tools/mypy_gate.py: per-module counts only go down, strict modules have none, --update never raises a count.

These run the gate's logic on made-up mypy output (mypy itself runs in `make test`)."""

import json
from pathlib import Path

import pytest

from tools import mypy_gate
from tools.mypy_gate import STRICT_FLAGS, compare, lowered_baseline, module_files, parse_errors, strict_modules

ROOT = Path(__file__).resolve().parents[1]
FILES = ["src/pkg/__init__.py", "src/pkg/a.py", "src/pkg/sub/__init__.py", "src/pkg/sub/b.py"]

OUTPUT = """\
src/pkg/a.py:3: error: Incompatible return value type (got "int", expected "str")  [return-value]
src/pkg/a.py:9:5: error: Item "None" of "X | None" has no attribute "y"  [union-attr]
src/pkg/a.py:9: note: a note is no error
src/pkg/sub/b.py:1: error: Name "z" is not defined  [name-defined]
Found 3 errors in 2 files (checked 4 source files)
"""


def test_errors_are_counted_per_file_and_notes_are_not() -> None:
    assert parse_errors(OUTPUT) == {"src/pkg/a.py": 2, "src/pkg/sub/b.py": 1}
    assert parse_errors("Success: no issues found in 4 source files\n") == {}


def test_a_count_at_or_below_its_baseline_passes_and_a_fall_is_reported() -> None:
    verdict = compare({"src/pkg/a.py": 2, "src/pkg/sub/b.py": 1}, {"src/pkg/a.py": 2, "src/pkg/sub/b.py": 3}, [], FILES)
    assert verdict.passed
    assert verdict.lowered == {"src/pkg/sub/b.py": (3, 1)}


def test_a_rise_fails_and_so_do_errors_in_a_module_missing_from_the_baseline() -> None:
    verdict = compare({"src/pkg/a.py": 3, "src/pkg/sub/b.py": 1}, {"src/pkg/a.py": 2}, [], FILES)
    assert not verdict.passed
    assert verdict.failures == [
        "src/pkg/a.py: 3 mypy errors, 2 in the baseline",
        "src/pkg/sub/b.py: 1 mypy errors, a module not in the baseline",
    ]


def test_a_strict_module_fails_on_any_error_even_under_its_baseline() -> None:
    verdict = compare({"src/pkg/sub/b.py": 1}, {"src/pkg/sub/b.py": 5}, ["pkg.sub.*"], FILES)
    assert verdict.failures == ["src/pkg/sub/b.py: 1 mypy errors in a strict module (it must have none)"]
    assert compare({}, {}, ["pkg.gone"], FILES).failures == [
        "strict module pkg.gone names no file under src/ (renamed? fix pyproject.toml)"
    ]


def test_module_patterns_name_files_as_mypy_does() -> None:
    assert module_files("pkg", FILES) == ["src/pkg/__init__.py"]
    assert module_files("pkg.sub", FILES) == ["src/pkg/sub/__init__.py"]
    assert module_files("pkg.sub.*", FILES) == ["src/pkg/sub/__init__.py", "src/pkg/sub/b.py"]
    assert module_files("pkg.s*", FILES) == []


def test_update_only_lowers_and_drops_the_modules_at_zero() -> None:
    baseline = {"src/pkg/a.py": 2, "src/pkg/sub/b.py": 3, "src/pkg/gone.py": 4}
    assert lowered_baseline({"src/pkg/a.py": 2, "src/pkg/sub/b.py": 1}, baseline) == {
        "src/pkg/a.py": 2,
        "src/pkg/sub/b.py": 1,
    }


def test_update_refuses_when_a_count_rose(tmp_path, capsys) -> None:
    baseline = tmp_path / "baseline.json"
    mypy_gate.write_baseline({"src/pkg/a.py": 1}, baseline)
    before = baseline.read_text()
    output = tmp_path / "mypy.txt"
    output.write_text(OUTPUT)
    assert mypy_gate.main(["--update", "--mypy-output", str(output), "--baseline", str(baseline)]) == 1
    assert baseline.read_text() == before
    assert "src/pkg/a.py: 2 mypy errors, 1 in the baseline" in capsys.readouterr().err


def test_update_writes_the_lower_counts(tmp_path) -> None:
    baseline = tmp_path / "baseline.json"
    mypy_gate.write_baseline({"src/pkg/a.py": 5, "src/pkg/sub/b.py": 1}, baseline)
    output = tmp_path / "mypy.txt"
    output.write_text(OUTPUT)
    assert mypy_gate.main(["--update", "--mypy-output", str(output), "--baseline", str(baseline)]) == 0
    written = json.loads(baseline.read_text())
    assert written["files"] == {"src/pkg/a.py": 2, "src/pkg/sub/b.py": 1} and written["total"] == 3


def test_the_strict_block_must_carry_every_strict_flag() -> None:
    flags = {**STRICT_FLAGS, "module": ["pkg.a"]}
    assert strict_modules({"tool": {"mypy": {"overrides": [flags]}}}) == (["pkg.a"], [])
    _, problems = strict_modules({"tool": {"mypy": {"overrides": [{**flags, "warn_return_any": False}]}}})
    assert problems == ["the strict block in pyproject.toml must set warn_return_any = true"]
    _, problems = strict_modules({"tool": {"mypy": {"overrides": [{**flags, "strict": True}]}}})
    assert problems and "every module" in problems[0]


def test_the_projects_configuration_is_consistent() -> None:
    # pyproject's strict block is well formed and names files; the committed baseline lists files that exist
    pyproject = mypy_gate.tomllib.loads((ROOT / "pyproject.toml").read_text())
    strict, problems = strict_modules(pyproject)
    assert problems == [] and strict
    files = mypy_gate.source_files()
    assert all(module_files(pattern, files) for pattern in strict), "every strict module names a file"
    baseline = mypy_gate.read_baseline()
    assert sum(baseline.values()) == json.loads(mypy_gate.BASELINE.read_text())["total"]
    assert set(baseline) <= set(files), "a module in the baseline was moved: carry its entry to the new path"


@pytest.mark.parametrize("flag", sorted(STRICT_FLAGS))
def test_every_strict_flag_is_one_mypy_knows(flag) -> None:
    from mypy.options import PER_MODULE_OPTIONS

    assert flag in PER_MODULE_OPTIONS
