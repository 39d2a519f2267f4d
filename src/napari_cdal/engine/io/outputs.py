"""A set of output files that is replaced whole: written into a hidden folder beside them, then moved in together.

`segment` writes an image's labels, maps, GeoJSON and CSV, which share one numbering of nuclei.
Replaced one file at a time, a run killed half-way left labels of the new run beside a GeoJSON of
the old one, with ids that disagree. Now the set is written into `.<key>.<host>~<pid>.set/` in the
output folder; a run killed there leaves the old set as it was (the next run removes the folder).
When every file is written the folder is renamed `.<key>.set` (one atomic rename: from now on the
new set is complete) and its files are moved in, with SIGINT, SIGTERM and SIGHUP held back while
they move; a run killed even so (SIGKILL) leaves the complete set in `.<key>.set`, which the next
run on that output moves in before anything else (`recover_output_set`): the old set or the new
one, never a mix. Files of the old set the new one does not write (a GeoJSON, say, when the new
run was not asked for one) are removed with it, since their ids would no longer match.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from napari_cdal.engine.io.checkpoint import OutputError
from napari_cdal.engine.io.owner import OWNER_PATTERN, owner_gone, owner_mark

SET_SUFFIX = ".set"
REMOVED_LIST = ".removed.json"
"""In a committed set's folder: the names of the old set's files that go when the new set comes in."""

_STAGING_NAME = re.compile(rf"^\.(?P<key>.+)\.{OWNER_PATTERN}\.set$")
HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def staging_folder(key: Path, pid: int | None = None) -> Path:
    """Where this process writes the set of `key` (its main file, e.g. <stem>_labels.tif)."""
    return key.with_name(f".{key.name}.{owner_mark(pid)}{SET_SUFFIX}")


def committed_folder(key: Path) -> Path:
    """Where a complete set of `key` waits to be moved in."""
    return key.with_name(f".{key.name}{SET_SUFFIX}")


def _move_in(folder: Path) -> list[Path]:
    """Move a committed set's files beside its folder, remove the old files it lists, then the folder; the files."""
    removed = []
    listed = folder / REMOVED_LIST
    if listed.is_file():
        removed = [folder.parent / name for name in json.loads(listed.read_text())]
    moved = []
    for file in sorted(folder.iterdir()):
        if file.name != REMOVED_LIST:
            os.replace(file, folder.parent / file.name)
            moved.append(folder.parent / file.name)
    for file in removed:
        file.unlink(missing_ok=True)
    shutil.rmtree(folder)
    return moved


def recover_output_set(key: Path) -> list[Path]:
    """Finish a set a killed run had committed (move it in), and remove sets killed runs left unfinished.

    Call it holding the output's lock (io.lock), before looking at which outputs exist. Returns the
    files moved in.
    """
    key = Path(key)
    moved = []
    with contextlib.suppress(FileNotFoundError):
        if committed_folder(key).is_dir():
            moved = _move_in(committed_folder(key))
    try:
        entries = list(key.parent.iterdir())
    except OSError:
        return moved
    for entry in entries:
        match = _STAGING_NAME.match(entry.name)
        if match and match.group("key") == key.name and entry.is_dir():
            if owner_gone(match.group("host"), int(match.group("pid"))) is True:
                shutil.rmtree(entry, ignore_errors=True)
    return moved


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP wait while the block runs (main thread, POSIX); delivered after it."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def output_set(files: dict[str, Path], key: Path, replaced: Iterable[Path] = ()) -> Iterator[dict[str, Path]]:
    """Write a set of files (kind: final path, all in one folder) as one: yields where each is to be written.

    When the block ends normally the set is moved in whole (existing files replaced, `replaced`
    files of the old set removed); when it raises, nothing of it is left and the old set is as it
    was. A write error names the final file, not the hidden one.
    """
    key = Path(key)
    staging = staging_folder(key)
    try:
        staging.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        shutil.rmtree(staging)
        staging.mkdir()
    except OSError as exc:
        raise OutputError(key, exc.strerror or str(exc)) from exc
    finals = {staging / path.name: path for path in files.values()}
    try:
        yield {kind: staging / path.name for kind, path in files.items()}
        stale = sorted(path.name for path in replaced if path.exists() and path not in files.values())
        if stale:
            (staging / REMOVED_LIST).write_text(json.dumps(stale))
        with _signals_held():
            os.rename(staging, committed_folder(key))
            _move_in(committed_folder(key))
    except OutputError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(finals.get(exc.path, exc.path), exc.reason) from exc
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(finals.get(Path(exc.filename or ""), key), exc.strerror or str(exc)) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
