"""One writer at a time: a lock file beside an output names the run writing it, and a second run refuses.

The lock is `.<output name>.lock` in the output's folder, made with O_EXCL (only one process can
make it) and holding its writer's host and pid. It is removed when the run ends, however it ends
short of being killed; a lock whose writer is gone (its pid dead on this host) is stale and the
next run takes it over. A lock of another host, whose pid cannot be asked after, is refused with
the file to delete once that run is known to have ended.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from napari_cdal.engine.io.checkpoint import OutputError
from napari_cdal.engine.io.owner import HOST, owner_gone, owner_mark, read_owner

LOCK_SUFFIX = ".lock"

UNWRITTEN_LOCK_SECONDS = 1.0
"""A lock file naming no writer (empty: its writer was killed between making it and writing its pid, microseconds
apart; or not a lock of ours) counts as stale after this long, well within LOCK_ATTEMPTS' wait."""

LOCK_ATTEMPTS = 50
"""How often a lock is tried while another process takes over a stale one or is writing its own (50 ms apart)."""


class LockError(ValueError):
    """An output another run is writing; the message is one line naming it, the run and what to do."""


def lock_path(target: str | Path) -> Path:
    """Where the lock of an output lies: `.<name>.lock` beside it (hidden, never a model or an image)."""
    target = Path(target)
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def _owner(lock: Path) -> tuple[str, int] | None:
    """The (host, pid) a lock file names, or None while it is empty or unreadable."""
    return read_owner(_text(lock))


def _age(lock: Path) -> float:
    try:
        return time.time() - lock.stat().st_mtime
    except OSError:
        return 0.0


def _take_over(lock: Path, stale: str) -> None:
    """Remove a stale lock whose text is `stale`, so that only one of several processes doing the same succeeds."""
    aside = lock.with_name(f"{lock.name}.{owner_mark()}.stale")
    try:
        os.rename(lock, aside)  # atomic: of two processes taking it over, one moves it
    except FileNotFoundError:
        return
    try:
        if aside.read_text() != stale:  # a live lock made meanwhile was moved: put it back
            with contextlib.suppress(OSError):
                os.link(aside, lock)
    finally:
        aside.unlink(missing_ok=True)


@dataclass(frozen=True)
class HeldLock:
    """A lock this process holds, and the folders it made for it (removed with it when the run left them empty)."""

    path: Path
    made: tuple[Path, ...] = ()


def _make_folders(folder: Path) -> tuple[Path, ...]:
    """Make `folder` and its missing parents; the ones made, deepest first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
    return tuple(missing)


def acquire(target: str | Path, option: str = "--out") -> HeldLock:
    """Take the lock of the output `target` for this process, or raise LockError naming the run that holds it.

    `option` names where the output was given (for the message).
    """
    target = Path(target)
    lock = lock_path(target)
    mine = f"{owner_mark()}\n"
    try:
        made = _make_folders(lock.parent)
    except OSError as exc:
        raise OutputError(lock, exc.strerror or str(exc)) from exc
    for _ in range(LOCK_ATTEMPTS):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(lock)
            if owner is None:
                if _age(lock) > UNWRITTEN_LOCK_SECONDS:
                    _take_over(lock, _text(lock))
                else:
                    time.sleep(0.05)
                continue
            host, pid = owner
            if owner_gone(host, pid) is True:
                _take_over(lock, _text(lock))
                continue
            where = "this machine" if host == HOST else host
            since = time.strftime("%H:%M", time.localtime(time.time() - _age(lock)))
            _remove_empty(made)
            raise LockError(
                f"{option} {target} is being written by another napari-cdal run (pid {pid} on {where}, "
                f"since {since}); nothing was written: wait for that run to end or choose another "
                f"{option} (if no such run is going on, delete {lock})"
            ) from None
        except OSError as exc:
            _remove_empty(made)
            raise OutputError(lock, exc.strerror or str(exc)) from exc
        with os.fdopen(fd, "w") as handle:
            handle.write(mine)
        return HeldLock(lock, made)
    _remove_empty(made)
    raise LockError(f"{option} {target} could not be locked: its lock {lock} keeps changing hands; try again")


def _text(lock: Path) -> str:
    try:
        return lock.read_text()
    except OSError:
        return ""


def _remove_empty(folders: tuple[Path, ...]) -> None:
    """Remove the folders a lock made, deepest first, where the run left nothing in them."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def release(lock: HeldLock) -> None:
    """Remove a lock this process holds (one taken over meanwhile by another run is left to it), and the folders
    made for it that stayed empty."""
    if _text(lock.path) == f"{owner_mark()}\n":
        lock.path.unlink(missing_ok=True)
    _remove_empty(lock.made)


@contextlib.contextmanager
def output_lock(targets: list[Path] | Path, option: str = "--out") -> Iterator[list[HeldLock]]:
    """Hold the locks of every output in `targets` while the block runs; released however it ends.

    All are taken before the block runs, or none: a LockError for one releases those already held.
    """
    targets = [targets] if isinstance(targets, (str, Path)) else list(targets)
    held: list[HeldLock] = []
    try:
        for target in targets:
            held.append(acquire(target, option))
        yield held
    finally:
        for lock in reversed(held):
            release(lock)
