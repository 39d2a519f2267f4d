"""What a fine-tuned model may be called: the suggested name, a free variant of it, and why a name can't be used."""

from __future__ import annotations

from pathlib import Path

from napari_cdal.catalog import MODEL_SUFFIX


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


FINETUNED = "-ft-"
"""What joins a base model's name and the image's in a suggested name."""
IMAGE_CHARS = 20
"""At most this much of the image's name goes into a suggested name."""


def default_model_name(base: str, image: str) -> str:
    """`<base>-ft-<image>`: the base's name up to its own '-ft-' (no snowballing), the image's first 20 characters.

    Path separators, ':' and spaces become '_'; free_model_name adds -2, -3, ... when the name is taken.
    """
    root = (base or "model").split(FINETUNED)[0]
    parts = [root, (image or "image").strip()[:IMAGE_CHARS].rstrip("-_. ")]
    clean = [part.strip().replace("/", "_").replace("\\", "_").replace(":", "_").replace(" ", "_") for part in parts]
    return FINETUNED.join(clean).lstrip(".")


def free_model_name(name: str, folder: Path) -> str:
    """`name`, or `name-2`, `name-3`, ... : the first that names no model in `folder` yet."""
    candidate, number = name, 2
    while (folder / f"{candidate}{MODEL_SUFFIX}").exists():
        candidate, number = f"{name}-{number}", number + 1
    return candidate


def model_stem(path: str | Path | None) -> str:
    """A model file's name without the model suffix ('' for no file)."""
    return Path(path).name.removesuffix(MODEL_SUFFIX) if path else ""
