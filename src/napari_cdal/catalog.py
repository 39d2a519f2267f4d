"""Where models live: the bundled one and the user's model folder (no Qt, no napari)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

MODEL_DIR_ENV = "NAPARI_CDAL_MODEL_DIR"
CACHE_DIR_ENV = "NAPARI_CDAL_CACHE_DIR"
MODEL_SUFFIX = ".safetensors"
TRAINING_STATE_SUFFIX = ".state.safetensors"
BUNDLED_LABEL = " (bundled)"
"""What a bundled model's name carries in model lists."""
BUNDLED_MODEL_NAME = "cdal_monuseg.safetensors"
"""The file of the default bundled model (H&E nuclei) in the package's weights folder."""


def state_path(model: str | Path) -> Path:
    """Where a training run keeps its resumable state: beside the model file, <stem>.state.safetensors."""
    model = Path(model)
    return model.with_name(model.stem + TRAINING_STATE_SUFFIX)


@dataclass(frozen=True)
class ModelEntry:
    """One model a user can pick: its display name, its file and whether it ships with the package."""

    name: str
    path: Path
    bundled: bool

    @property
    def label(self) -> str:
        """What a dropdown and `info --list` show (--model takes it too)."""
        return f"{self.name}{BUNDLED_LABEL}" if self.bundled else self.name


def _user_data_dir() -> Path:
    try:
        from platformdirs import user_data_path

        return user_data_path("napari-cdal", appauthor=False)
    except ImportError:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "napari-cdal"


def model_dir() -> Path:
    """The user's model folder: $NAPARI_CDAL_MODEL_DIR, else <per-user data dir>/napari-cdal/models.

    The folder is not created here; whoever writes a model there creates it.
    """
    configured = os.environ.get(MODEL_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return _user_data_dir() / "models"


def model_dir_problem() -> str | None:
    """Why the user's model folder cannot hold models (it is a file, a link that loops or points nowhere), or None.

    A folder that does not exist yet is no problem: whoever saves the first model makes it.
    """
    folder = model_dir()
    where = f"{MODEL_DIR_ENV} ({folder})" if os.environ.get(MODEL_DIR_ENV, "").strip() else f"the model folder {folder}"
    try:
        folder.stat()
    except OSError as exc:
        if folder.is_symlink():
            return f"{where} is a symbolic link that loops or points nowhere: your models are not found there"
        if isinstance(exc, FileNotFoundError):
            return None
        return f"{where} cannot be read ({exc.strerror or exc}): your models are not found there"
    if not folder.is_dir():
        return f"{where} is a file, not a folder: your models are not found or saved there; point it at a folder"
    return None


def cache_dir() -> Path:
    """Where derived files live (a model converted for a faster runtime): $NAPARI_CDAL_CACHE_DIR, else the per-user
    cache folder. Anything in it can be deleted; it is made again when needed."""
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    try:
        from platformdirs import user_cache_path

        return user_cache_path("napari-cdal", appauthor=False)
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "napari-cdal"


def bundled_model_path() -> Path:
    """The default model shipped inside the package (H&E nuclei); it may be absent in a development checkout."""
    return Path(str(resources.files("napari_cdal") / "weights" / BUNDLED_MODEL_NAME))


def bundled_model_file() -> Path:
    """Where the package's own model file is, as the model lists look it up (tests point it elsewhere)."""
    return bundled_model_path()


def _is_model_file(path: Path) -> bool:
    name = path.name
    return (
        path.is_file()
        and not name.startswith(".")
        and name.endswith(MODEL_SUFFIX)
        and not name.endswith(TRAINING_STATE_SUFFIX)
    )


def bundled_models() -> dict[str, Path]:
    """Every model shipped inside the package (the weights folder of the default one), by name, sorted."""
    folder = bundled_model_file().parent
    if not folder.is_dir():
        return {}
    return {path.name[: -len(MODEL_SUFFIX)]: path for path in sorted(folder.iterdir()) if _is_model_file(path)}


def list_models(folder: str | Path | None = None) -> list[ModelEntry]:
    """The bundled models (the default first), then the *.safetensors models in `folder`, newest first.

    `folder` defaults to `model_dir()`; resumable training states (*.state.safetensors) and hidden
    files are skipped, and what a killed save left there is removed (checkpoint.remove_stale_temps).
    """
    from napari_cdal.engine.io.checkpoint import remove_stale_temps

    entries: list[ModelEntry] = []
    bundled = bundled_model_file()
    if bundled.is_file():
        entries.append(ModelEntry(bundled.stem, bundled, True))
    # the other bundled models (e.g. cdal_hippocampus) beside the default
    entries.extend(ModelEntry(name, path, True) for name, path in bundled_models().items() if path != bundled)
    root = Path(folder) if folder is not None else model_dir()
    if root.is_dir():
        remove_stale_temps(root)
        found = [path for path in root.iterdir() if _is_model_file(path)]
        found.sort(key=lambda path: (path.stat().st_mtime, path.name), reverse=True)
        entries.extend(ModelEntry(path.name[: -len(MODEL_SUFFIX)], path, False) for path in found)
    return entries
