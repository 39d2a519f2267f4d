"""The `napari-cdal` command: segment, evaluate, train, finetune, info, view; thin wrappers over the engine."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_cdal.catalog import state_path
from napari_cdal.cli.common import EXIT_BAD_INPUT, CliError, end_progress_line
from napari_cdal.cli.info import open_viewer
from napari_cdal.cli.parser import build_parser

__all__ = ["CliError", "build_parser", "main", "open_viewer", "state_path"]


OUT_OF_MEMORY_HINTS = {
    "segment": "use --slide (block by block), give fewer --samples or leave out --save-steps/--save-attention, ",
    "evaluate": "give fewer --samples, ",
    "train": "give a smaller --batch-size or --patch-size, ",
    "finetune": "fine-tune on smaller images or fewer of them, ",
}
"""What frees memory, per command, when a run runs out of it."""


OUT_OF_MEMORY_WORDS = ("out of memory", "not enough memory")
"""What torch's allocators say when memory runs out (CUDA: "out of memory"; the CPU's: "not enough memory")."""


def _one_line(exc: BaseException) -> str:
    """An error's message on one line (a library's multi-line text joined)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _run_command(args: argparse.Namespace) -> int:
    """Run the command; whatever stops it first ends the progress bar's line: its message gets a line of its own."""
    try:
        return args.func(args)
    except BaseException:
        end_progress_line()
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and turn known errors into one line on stderr and exit status 1."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.typed_options = [token.split("=", 1)[0] for token in argv if token.startswith("--")]
    try:
        return _run_command(args)
    except (CliError, FileNotFoundError, ValueError) as exc:  # every engine error is a ValueError subclass
        print(f"napari-cdal {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a read or write the checks could not foresee (a disk filling up meanwhile)
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"napari-cdal {args.command}: error: {where}{exc.strerror or exc}; files already written are complete",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except MemoryError:
        print(
            f"napari-cdal {args.command}: error: out of memory; {OUT_OF_MEMORY_HINTS.get(args.command, '')}"
            "or close other programs",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except RuntimeError as exc:  # torch's allocators (CPU and CUDA) raise this, not MemoryError
        if not any(words in str(exc).lower() for words in OUT_OF_MEMORY_WORDS):
            raise
        print(
            f"napari-cdal {args.command}: error: out of memory ({_one_line(exc)[:120]}); "
            f"{OUT_OF_MEMORY_HINTS.get(args.command, '')}or use --device cpu",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"napari-cdal {args.command}: interrupted; files already written are complete", file=sys.stderr)
        return 130
