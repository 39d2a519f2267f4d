"""Who is writing a file: `<host>~<pid>` as temporary names, staging folders and lock files carry it, read back,
and whether that writer still runs (a pid means something only on its own host)."""

from __future__ import annotations

import os
import re
import socket

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
"""This machine's name as written files carry it: a pid means something only on its own host."""

OWNER_PATTERN = r"(?P<host>[A-Za-z0-9-]+)~(?P<pid>\d+)"
"""The `<host>~<pid>` part of a name, as a regular expression with the groups host and pid."""


def owner_mark(pid: int | None = None) -> str:
    """`<host>~<pid>` of this process (or of `pid` on this host)."""
    return f"{HOST}~{os.getpid() if pid is None else pid}"


def read_owner(text: str) -> tuple[str, int] | None:
    """The (host, pid) that `<host>~<pid>` names, or None when `text` names no pid (empty: still being written)."""
    host, _, pid = text.strip().rpartition("~")
    return (host, int(pid)) if host and pid.isascii() and pid.isdigit() else None


def writer_alive(pid: int) -> bool | None:
    """Whether a process with this pid runs here; None where that cannot be asked safely (Windows)."""
    if os.name == "nt":  # os.kill there terminates the process instead of probing it
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def owner_gone(host: str, pid: int) -> bool | None:
    """True when the writer was a process of this host that no longer runs, False while it runs, None when that
    cannot be told (another host's, or where pids cannot be asked)."""
    if host != HOST:
        return None
    alive = writer_alive(pid)
    return None if alive is None else not alive
