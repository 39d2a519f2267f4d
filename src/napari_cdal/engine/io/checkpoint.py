"""Checkpoints: safetensors weights with the JSON metadata in the same file; loading never unpickles.

One file holds a model's tensors and, in the safetensors header, a JSON document with the model
config, the training record and the package version, so a checkpoint explains itself and can be
written atomically in one rename.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_cdal.engine.checks import InputError, check_input_file
from napari_cdal.engine.io.owner import OWNER_PATTERN, owner_gone, owner_mark

if TYPE_CHECKING:
    import torch

METADATA_KEY = "napari_cdal"
FORMAT_NAME = "napari-cdal"
FORMAT_VERSION = 2
"""2: config keys renamed (diffusion_steps, default_sampling_steps, iterations); version 1 files still load."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the reason."""


class OutputError(ValueError):
    """A file could not be written (disk full, no permission, ...); nothing was left half-written."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot write {path} ({reason}); nothing was written there")
        self.path = Path(path)
        self.reason = reason


TEMP_SUFFIX = ".tmp"
STALE_TEMP_SECONDS = 3600.0
"""A temporary file whose writer cannot be told alive or dead counts as left over after this long."""

_TEMP_NAME = re.compile(rf"^\.(?P<target>.+)\.{OWNER_PATTERN}\.[A-Za-z0-9_]+\.tmp$")
_CLEANED: set[tuple[str, str | None]] = set()


def temp_prefix(path: Path, pid: int | None = None) -> str:
    """Temporary files of `path` are hidden, end in .tmp (never *.safetensors) and carry the writer's host and pid."""
    return f".{path.name}.{owner_mark(pid)}."


def remove_stale_temps(folder: str | Path, target: str | None = None) -> list[Path]:
    """Delete the temporary files killed writers left in `folder` (of `target` only, if given).

    Only names atomic_write makes count, `.<target>.<host>~<pid>.<random>.tmp`; one is stale when
    it was written here and no process has that pid, or, when written on another host or where
    that cannot be asked, once older than STALE_TEMP_SECONDS. Returns the files removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        candidates = [
            (p, m)
            for p in folder.iterdir()
            if (m := _TEMP_NAME.match(p.name)) and (target is None or m.group("target") == target)
        ]
    except OSError:
        return removed
    now = time.time()
    for candidate, match in candidates:
        try:
            age = now - candidate.stat().st_mtime
        except OSError:
            continue
        gone = owner_gone(match.group("host"), int(match.group("pid")))
        stale = age > STALE_TEMP_SECONDS if gone is None else gone
        if stale:
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _publish(tmp: str, path: Path, replace: bool) -> None:
    """Move the finished temporary file to `path`; with replace=False never over an existing file."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if `path` exists, with no window between check and write
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise FileExistsError(errno.EEXIST, "it already exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write(path: str | Path, write: Any, replace: bool = True) -> None:
    """Call `write(tmp_path)` then rename onto `path`, so readers never see a half-written file.

    With replace=False an existing `path` is never replaced (FileExistsError). An OSError (disk
    full, no permission, a file where the folder should be) becomes one
    OutputError naming the path; the temporary file is removed, and so are those a killed earlier
    writer left behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if (str(path.parent), path.name) not in _CLEANED:  # once per target and process, not per write
            remove_stale_temps(path.parent, path.name)
            _CLEANED.add((str(path.parent), path.name))
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(path, exc.strerror or str(exc)) from exc
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        _publish(tmp, path, replace)
    except FileExistsError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(path, exc.strerror or str(exc)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_safetensors(flat: dict[str, torch.Tensor], tmp: str, header: dict[str, Any]) -> None:
    """safetensors' writer, its errors (a full disk among them) raised as OSError like any other write."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(flat, tmp, metadata={METADATA_KEY: json.dumps(header)})
    except SafetensorError as exc:
        text = str(exc)
        code = errno.ENOSPC if "StorageFull" in text or "No space left" in text else errno.EIO
        raise OSError(code, os.strerror(code) if code == errno.ENOSPC else text) from exc


def save_checkpoint(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any], replace: bool = True
) -> None:
    """Write tensors and metadata to one safetensors file, atomically (replace=False: never over a file)."""
    from napari_cdal import __version__

    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "package_version": __version__}
    header.update(metadata)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: _save_safetensors(flat, tmp, header), replace)


def _header(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        check_input_file(path, "model file")
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint not found: {path}") from exc
    except InputError as exc:
        raise CheckpointError(str(exc)) from exc
    try:
        with safe_open(str(path), framework="np") as handle:  # the header only: no torch needed
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not a napari-cdal checkpoint (no metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} has corrupt napari-cdal metadata ({exc})") from exc
    if meta.get("format") != FORMAT_NAME or meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format {meta.get('format')!r} v{meta.get('format_version')}; "
            f"this napari-cdal reads {FORMAT_NAME!r} up to v{FORMAT_VERSION}"
        )
    return meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without reading its tensors."""
    return _header(Path(path))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint; a corrupt or foreign file raises CheckpointError."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = _header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({exc})") from exc
    return tensors, meta


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix.`, with the prefix removed (a module's state dict)."""
    start = prefix + "."
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}


def with_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A state dict's entries under `prefix.`."""
    return {f"{prefix}.{k}": v for k, v in state.items()}
