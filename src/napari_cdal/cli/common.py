"""What every command shares: one-line errors, option checks, progress bars, models and JSON files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

Result = TypeVar("Result")

EXIT_BAD_INPUT = 1


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class _ProgressLine:
    """Whether a progress bar has written to stderr: its line ends in a carriage return, not a newline."""

    written = False


def progress(total: int, desc: str, unit: str) -> Any:
    """A progress bar on stderr that leaves no trace when it closes. Open it before the work it counts (at 0, `total`
    0 while unknown) and move it with `advance`, so that it starts at 0 and its rate is that of the work."""
    from tqdm import tqdm

    _ProgressLine.written = True
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def advance(bar: Any, done: int, total: int | None = None) -> None:
    """Move `bar` to `done` events of `total` (given when it is known only now)."""
    if total is not None and bar.total != total:
        bar.total = total
    bar.update(done - bar.n)


def end_progress_line() -> None:
    """Close the progress bars still open, and end the last one's line where stderr is no terminal (a log file, a
    pipe), where closing a bar cannot wipe its text: what is printed next starts on a fresh line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    if _ProgressLine.written and not sys.stderr.isatty():
        sys.stderr.write("\n")
    _ProgressLine.written = False


def check_runtime(args: argparse.Namespace) -> None:
    """The options every computing command shares, checked before anything is loaded (--fast applied here)."""
    from napari_cdal.engine.checks import check_at_least, check_mpp, check_seed, check_threshold
    from napari_cdal.engine.defaults import MAX_PARALLEL

    apply_fast(args)

    check_at_least(getattr(args, "threads", None), 1, "--threads", MAX_PARALLEL)
    check_at_least(getattr(args, "workers", None), 1, "--workers", MAX_PARALLEL)
    check_seed(getattr(args, "seed", None))
    if getattr(args, "mpp", None) is not None:
        check_mpp(args.mpp)
    if getattr(args, "threshold", None) is not None:
        check_threshold(args.threshold)
    for dest, names in (
        ("sampling_steps", ("--sampling-steps", "--steps")),
        ("samples", ("--samples",)),
        ("review", ("--review",)),
        ("iterations", ("--iterations", "--steps")),
    ):
        check_at_least(getattr(args, dest, None), 1, typed(args, *names))


def typed(args: argparse.Namespace, *names: str) -> str:
    """Which of an option's names the user typed (a former name is an alias), so an error uses that one."""
    typed = getattr(args, "typed_options", ())
    return next((name for name in names if name in typed), names[0])


def setup_torch(args: argparse.Namespace) -> Any:
    """Apply --threads and resolve --device once, before any work."""
    import torch

    from napari_cdal.engine.device import resolve_device

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def load_model(path: str | None, device: Any) -> Any:
    """The model at `path` (the bundled one for None) on `device`."""
    from napari_cdal.engine.method.model import load_model

    return load_model(path, device)


def sampling_model(path: str | None, device: Any, args: argparse.Namespace) -> Any:
    """The model to sample with: loaded, on --runtime at --precision; a runtime asked for by name that falls back
    says why on stderr."""
    from napari_cdal.engine.method.runtime import with_runtime

    model = with_runtime(load_model(path, device), args.runtime, args.precision)
    runtime = model.runtime  # with_runtime always sets one
    if runtime is not None and runtime.note and args.runtime != "auto":
        print(f"note: {runtime.describe()}", file=sys.stderr)
    return model


def apply_fast(args: argparse.Namespace) -> None:
    """--fast: FAST_SETTINGS' steps and samples where the user gave none."""
    from napari_cdal.engine.defaults import FAST_SETTINGS

    if getattr(args, "fast", False):
        for dest, value in FAST_SETTINGS.items():
            if getattr(args, dest) is None:
                setattr(args, dest, value)


def model_for(spec: str | None, volumes: bool) -> str | None:
    """The model to load: the one asked for, else the bundled volume model for volumes, else the default (None)."""
    from napari_cdal.engine.defaults import DEFAULT_VOLUME_MODEL

    return DEFAULT_VOLUME_MODEL if spec is None and volumes else spec


def check_sampling_steps(model: Any, args: argparse.Namespace) -> int:
    """The reverse steps to sample: the model's default, or --sampling-steps within the model's diffusion steps T."""
    if args.sampling_steps is None:
        return model.config.sampling_steps
    if args.sampling_steps > model.config.diffusion_steps:
        raise CliError(
            f"{typed(args, '--sampling-steps', '--steps')} {args.sampling_steps} is more than this "
            f"model's {model.config.diffusion_steps} diffusion steps; give 1 to "
            f"{model.config.diffusion_steps}"
        )
    return args.sampling_steps


def read_json_object(path: str, what: str, expected: str = "a JSON object of settings") -> dict[str, Any]:
    """A JSON object from a file named by an option; a one-line CliError when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CliError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CliError(f"{what} {path} must be {expected}")
    return data


def read_split(path: str | None) -> dict[str, list[str]]:
    """The name lists of a --split file (none without one)."""
    if path is None:
        return {}
    split = read_json_object(
        path, "split file", 'a JSON object of name lists, e.g. {"train": [...], "validation": [...]}'
    )
    return {key: value for key, value in split.items() if isinstance(value, list)}


def finished(result: Result | None, what: str) -> Result:
    """The 'done' payload a run's events ended with; a RuntimeError naming `what` when they ended without one."""
    if result is None:
        raise RuntimeError(f"{what} ended without its result")
    return result
