"""Type-check src/ with mypy and hold every module to its count of errors in tools/mypy_baseline.json.

    python tools/mypy_gate.py              # the check `make test` runs
    python tools/mypy_gate.py --update     # lower the baseline to today's counts (never raises one)
    python tools/mypy_gate.py --regenerate # write today's counts whatever they are (a new mypy, a merge)

mypy runs with the configuration in pyproject.toml ([tool.mypy]). The check fails when

- a module has more errors than its baseline count (a module missing from the baseline has 0),
- a strict module (the [[tool.mypy.overrides]] block that turns on mypy's --strict flags) has
  any error, or names no file under src/, or that block lacks one of the strict flags,
- mypy itself fails (a syntax error, a bad configuration).

When counts have fallen it passes and says so: run it with --update and commit the lower baseline,
so that they cannot rise again. The aim is a baseline of zero; then every module can be strict.
--regenerate is for the rare case where the counts change for a reason other than the code (a new
mypy release, a renamed module); its diff is reviewed like any other.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tools" / "mypy_baseline.json"
PYPROJECT = ROOT / "pyproject.toml"
SOURCES = ROOT / "src"

STRICT_FLAGS: dict[str, bool] = {
    "disallow_any_generics": True,
    "disallow_subclassing_any": True,
    "disallow_untyped_calls": True,
    "disallow_untyped_defs": True,
    "disallow_incomplete_defs": True,
    "check_untyped_defs": True,
    "disallow_untyped_decorators": True,
    "warn_unused_ignores": True,
    "warn_return_any": True,
    "implicit_reexport": False,
    "strict_equality": True,
    "extra_checks": True,
}
"""mypy's --strict, flag by flag: `strict = true` in an override turns them on for every module, not the listed ones
(mypy 2.4), and warn_redundant_casts, global only, is set in [tool.mypy]."""

ERROR_LINE = re.compile(r"^(?P<path>[^:\n]+\.pyi?):\d+(?::\d+)?: error: ")


@dataclass
class Verdict:
    """What the comparison found: `failures` fail the gate, `lowered` are modules whose counts fell."""

    failures: list[str] = field(default_factory=list)
    lowered: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures


def parse_errors(output: str) -> Counter[str]:
    """mypy's error lines, counted per file (posix path relative to the repository)."""
    counts: Counter[str] = Counter()
    for line in output.splitlines():
        match = ERROR_LINE.match(line)
        if match:
            counts[Path(match["path"]).as_posix()] += 1
    return counts


def strict_modules(pyproject: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The strict modules of pyproject's [tool.mypy] and the problems with their block (a strict flag off or missing).

    The strict block is the override that sets disallow_untyped_defs."""
    overrides = pyproject.get("tool", {}).get("mypy", {}).get("overrides", [])
    blocks = [block for block in overrides if block.get("disallow_untyped_defs")]
    if len(blocks) != 1:
        return [], [f"pyproject.toml needs one [[tool.mypy.overrides]] block of strict modules, found {len(blocks)}"]
    block = blocks[0]
    problems = [
        f"the strict block in pyproject.toml must set {flag} = {str(value).lower()}"
        for flag, value in STRICT_FLAGS.items()
        if block.get(flag) is not value
    ]
    if "strict" in block:
        problems.append("`strict` in an override turns --strict on for every module: list the flags instead")
    modules = block.get("module", [])
    return ([modules] if isinstance(modules, str) else list(modules)), problems


def module_files(pattern: str, files: Iterable[str]) -> list[str]:
    """The files of `files` (paths under src/) that the mypy module pattern names: `a.b` or `a.b.*` (a.b and below)."""
    found = []
    for path in files:
        parts = Path(path).with_suffix("").parts[1:]  # drop "src"
        if parts and parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name == pattern.removesuffix(".*") or (pattern.endswith(".*") and name.startswith(pattern[:-1])):
            found.append(path)
    return found


def compare(
    counts: Mapping[str, int],
    baseline: Mapping[str, int],
    strict: Iterable[str],
    source_files: Iterable[str],
) -> Verdict:
    """Hold `counts` (errors per file) to `baseline`, and the strict modules to zero."""
    verdict = Verdict()
    source_files = sorted(source_files)
    for path, count in sorted(counts.items()):
        allowed = baseline.get(path, 0)
        if count > allowed:
            was = f"{allowed} in the baseline" if path in baseline else "a module not in the baseline"
            verdict.failures.append(f"{path}: {count} mypy errors, {was}")
    for path, allowed in sorted(baseline.items()):
        if counts.get(path, 0) < allowed:
            verdict.lowered[path] = (allowed, counts.get(path, 0))
    for pattern in strict:
        files = module_files(pattern, source_files)
        if not files:
            verdict.failures.append(f"strict module {pattern} names no file under src/ (renamed? fix pyproject.toml)")
        for path in files:
            if counts.get(path, 0):
                verdict.failures.append(f"{path}: {counts[path]} mypy errors in a strict module (it must have none)")
    return verdict


def lowered_baseline(counts: Mapping[str, int], baseline: Mapping[str, int]) -> dict[str, int]:
    """The baseline after --update: each module's count where it fell, modules at zero or gone dropped."""
    return {path: min(allowed, counts.get(path, 0)) for path, allowed in sorted(baseline.items()) if counts.get(path)}


def read_baseline(path: Path = BASELINE) -> dict[str, int]:
    """Errors per file as committed; none when the file does not exist yet."""
    if not path.exists():
        return {}
    return {str(k): int(v) for k, v in json.loads(path.read_text())["files"].items()}


def write_baseline(counts: Mapping[str, int], path: Path = BASELINE) -> None:
    """Write the counts (modules with errors only), with the mypy version and the total, sorted for stable diffs."""
    from mypy.version import __version__ as mypy_version

    files = {k: int(v) for k, v in sorted(counts.items()) if v}
    content = {
        "about": "mypy errors per module that tools/mypy_gate.py allows; they only go down (CONTRIBUTING.md)",
        "mypy": mypy_version,
        "total": sum(files.values()),
        "files": files,
    }
    path.write_text(json.dumps(content, indent=2) + "\n")


def run_mypy() -> tuple[int, str]:
    """Run mypy on src/ with pyproject's configuration from the repository root; its exit code and output."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(PYPROJECT), "--no-pretty", "--no-color-output"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return result.returncode, result.stdout + result.stderr


def source_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in SOURCES.rglob("*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--update", action="store_true", help="lower the baseline where counts fell (never raise it)")
    mode.add_argument(
        "--regenerate", action="store_true", help="write today's counts as the baseline, whatever they are"
    )
    parser.add_argument("--mypy-output", type=Path, help="read mypy's output from this file instead of running it")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.mypy_output is not None:
        output = args.mypy_output.read_text()
        counts = parse_errors(output)
        code = 1 if counts else 0
    else:
        code, output = run_mypy()
        counts = parse_errors(output)
    if code not in (0, 1) or (code == 1 and not counts):
        print(output, end="")
        print(f"mypy_gate: mypy failed (exit code {code}) before it counted any error", file=sys.stderr)
        return 2
    if args.regenerate:
        write_baseline(counts, args.baseline)
        print(f"mypy_gate: wrote {args.baseline.name}: {sum(counts.values())} errors in {len(counts)} files")
        return 0

    baseline = read_baseline(args.baseline)
    strict, problems = strict_modules(tomllib.loads(PYPROJECT.read_text()))
    verdict = compare(counts, baseline, strict, source_files())
    verdict.failures[:0] = problems
    total, allowed = sum(counts.values()), sum(baseline.values())
    if not verdict.passed:
        risen = {failure.split(":")[0] for failure in verdict.failures}
        print("\n".join(line for line in output.splitlines() if ERROR_LINE.match(line) and line.split(":")[0] in risen))
        print(f"\nmypy_gate: FAILED ({total} errors, baseline {allowed})", file=sys.stderr)
        for failure in verdict.failures:
            print(f"  {failure}", file=sys.stderr)
        print(
            "Fix the new errors (the mypy lines above); a module moved or renamed carries its entry in", file=sys.stderr
        )
        print("tools/mypy_baseline.json to its new path in the same commit.", file=sys.stderr)
        return 1
    if args.update:
        if verdict.lowered:
            write_baseline(lowered_baseline(counts, baseline), args.baseline)
            print(f"mypy_gate: lowered {args.baseline.name} from {allowed} to {total} errors; commit it")
        else:
            print(f"mypy_gate: nothing to lower ({total} errors)")
        return 0
    print(f"mypy_gate: passed, {total} mypy errors in {len(counts)} files (baseline {allowed})")
    made_with = json.loads(args.baseline.read_text()).get("mypy") if args.baseline.exists() else None
    from mypy.version import __version__ as mypy_version

    if made_with and made_with != mypy_version:
        print(f"  (the baseline was counted by mypy {made_with}, this is mypy {mypy_version})")
    if verdict.lowered:
        for path, (before, now) in verdict.lowered.items():
            print(f"  {path}: {before} -> {now}")
        print("The counts fell: lock them in: `python tools/mypy_gate.py --update`, commit tools/mypy_baseline.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
