"""What a fine-tuned model may be called: the suggested name, a free variant of it, and why a name can't be used."""

from __future__ import annotations

import time
from pathlib import Path

from napari_cdal.models import MODEL_SUFFIX


def model_name_problem(name: str, folder: Path) -> str | None:
    """Why `name` can't name a new model in `folder` (None when it can)."""
    if not name:
        return "give the new model a name"
    if any(sep in name for sep in ("/", "\\", ":")) or name.startswith("."):
        return f"the name {name!r} must be a plain file name: no '/', '\\', ':' and no leading '.'"
    path = folder / f"{name}{MODEL_SUFFIX}"
    if path.exists():
        return f"a model named {name!r} already exists in {folder}; choose another name"
    return None


def default_model_name(base: str, image: str, now: time.struct_time | None = None) -> str:
    """`<base>-ft-<image>-YYYYMMDD-HHMM`, with path separators and spaces in the parts made '_'."""
    stamp = time.strftime("%Y%m%d-%H%M", now or time.localtime())
    parts = [base or "model", "ft", image or "image", stamp]
    clean = [
        part.strip().replace("/", "_").replace("\\", "_").replace(":", "_").replace(" ", "_")
        for part in parts
    ]
    return "-".join(clean).lstrip(".")


def free_model_name(name: str, folder: Path) -> str:
    """`name`, or `name-2`, `name-3`, ... : the first that names no model in `folder` yet."""
    candidate, number = name, 2
    while (folder / f"{candidate}{MODEL_SUFFIX}").exists():
        candidate, number = f"{name}-{number}", number + 1
    return candidate


def model_stem(path: str | Path | None) -> str:
    """A model file's name without the model suffix ('' for no file)."""
    return Path(path).name.removesuffix(MODEL_SUFFIX) if path else ""
