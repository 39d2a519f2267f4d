"""Checkpoints: safetensors weights with the JSON metadata in the same file; loading never unpickles.

One file holds a model's tensors and, in the safetensors header, a JSON document with the model
config, the training record and the package version, so a checkpoint explains itself and can be
written atomically in one rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

METADATA_KEY = "napari_cdal"
FORMAT_NAME = "napari-cdal"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the reason."""


def atomic_write(path: str | Path, write: Any) -> None:
    """Call `write(tmp_path)` then rename onto `path`, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write tensors and metadata to one safetensors file, atomically."""
    from safetensors.torch import save_file

    from .. import __version__

    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "package_version": __version__}
    header.update(metadata)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata={METADATA_KEY: json.dumps(header)}))


def _header(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
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
    return {k[len(start):]: v for k, v in tensors.items() if k.startswith(start)}


def with_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A state dict's entries under `prefix.`."""
    return {f"{prefix}.{k}": v for k, v in state.items()}
