"""The user's model folder and the list of models the widgets offer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from napari_cdal import catalog as models
from napari_cdal.catalog import ModelEntry, list_models, model_dir


def _touch(path: Path, mtime: float) -> Path:
    path.write_bytes(b"not read by list_models")
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture()
def no_bundled(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(models, "bundled_model_file", lambda: tmp_path / "absent" / "cdal_monuseg.safetensors")


def test_model_dir_comes_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("NAPARI_CDAL_MODEL_DIR", str(tmp_path / "mine"))
    assert model_dir() == tmp_path / "mine"


def test_model_dir_defaults_to_a_per_user_data_folder(monkeypatch) -> None:
    monkeypatch.delenv("NAPARI_CDAL_MODEL_DIR", raising=False)
    folder = model_dir()
    assert folder.name == "models" and folder.parent.name == "napari-cdal"


def test_model_dir_without_platformdirs_uses_xdg_data_home(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("NAPARI_CDAL_MODEL_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "platformdirs", None)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert model_dir() == tmp_path / "napari-cdal" / "models"


def test_models_are_listed_newest_first_without_training_states(no_bundled, tmp_path) -> None:
    _touch(tmp_path / "old.safetensors", 1_000_000)
    _touch(tmp_path / "new.safetensors", 2_000_000)
    _touch(tmp_path / "run.state.safetensors", 3_000_000)
    _touch(tmp_path / "notes.txt", 3_000_000)
    (tmp_path / "folder.safetensors").mkdir()
    entries = list_models(tmp_path)
    assert [e.name for e in entries] == ["new", "old"]
    assert entries[0] == ModelEntry("new", tmp_path / "new.safetensors", False)
    assert entries[0].label == "new"


def test_the_bundled_model_comes_first_when_present(monkeypatch, tmp_path) -> None:
    (tmp_path / "weights").mkdir()
    bundled = _touch(tmp_path / "weights" / "cdal_monuseg.safetensors", 1)
    monkeypatch.setattr(models, "bundled_model_file", lambda: bundled)
    folder = tmp_path / "user"
    folder.mkdir()
    _touch(folder / "finetuned.safetensors", 2_000_000)
    entries = list_models(folder)
    assert [(e.name, e.bundled) for e in entries] == [("cdal_monuseg", True), ("finetuned", False)]
    assert entries[0].label == "cdal_monuseg (bundled)"


def test_a_missing_folder_and_no_bundled_model_give_an_empty_list(no_bundled, tmp_path) -> None:
    assert list_models(tmp_path / "nowhere") == []


def test_the_default_folder_is_the_environment_one(no_bundled, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("NAPARI_CDAL_MODEL_DIR", str(tmp_path))
    _touch(tmp_path / "mine.safetensors", 1_000_000)
    assert [e.name for e in list_models()] == ["mine"]
