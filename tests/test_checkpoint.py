"""Tests for checkpoints: safetensors round trip, atomic writes, one-line errors, no unpickling."""

from __future__ import annotations

import json
import os
import pickle
import stat

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import napari_cdal
from napari_cdal.engine.config import PRESETS, ModelConfig, current_record, iterations_done
from napari_cdal.engine.io.checkpoint import (
    FORMAT_VERSION,
    METADATA_KEY,
    CheckpointError,
    atomic_write,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from napari_cdal.engine.method.model import CdalModel, bundled_model_path, load_model, save_model

TINY = ModelConfig(**PRESETS["tiny"])


@pytest.fixture()
def model_file(tmp_path):
    """An untrained tiny model (seeded weights) saved as a checkpoint."""
    model = CdalModel.initialise(TINY, seed=3)
    model.record = {"steps": 7, "data": "blobs"}
    path = tmp_path / "model.safetensors"
    save_model(path, model)
    return path, model


def _tensors():
    return {
        "a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7,
        "a.count": torch.tensor([1, 2, 3], dtype=torch.int64),
        "b": torch.ones(2, 2, 2, dtype=torch.float16),
    }


def _assert_one_line_naming(exc_info, path):
    message = str(exc_info.value)
    assert str(path) in message
    assert "\n" not in message


# --- round trip ---------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "ck.safetensors"  # the folder is created
    meta = {"kind": "test", "numbers": [1, 2.5], "nested": {"x": None, "name": "µm"}}
    save_checkpoint(path, _tensors(), meta)
    tensors, loaded = load_checkpoint(path)
    assert sorted(tensors) == sorted(_tensors())
    for key, value in _tensors().items():
        assert tensors[key].dtype == value.dtype
        assert torch.equal(tensors[key], value)
    for key, value in meta.items():
        assert loaded[key] == value
    assert loaded["package_version"] == napari_cdal.__version__
    assert loaded["format"] == "napari-cdal"
    assert loaded["format_version"] == FORMAT_VERSION == 2
    assert read_metadata(path) == loaded


def test_saved_file_is_readable_by_others(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, _tensors(), {})
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IRGRP and mode & stat.S_IROTH


def test_saved_file_is_plain_safetensors(tmp_path):
    # any safetensors reader can open it, and the metadata sits under one JSON key
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, _tensors(), {"kind": "test"})
    assert torch.equal(load_file(str(path))["a.weight"], _tensors()["a.weight"])
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()[METADATA_KEY])["kind"] == "test"


def test_model_round_trip(model_file):
    path, model = model_file
    loaded = load_model(path)
    assert loaded.config == TINY
    assert loaded.record == {"steps": 7, "data": "blobs"}
    assert loaded.source == str(path)
    assert not loaded.generator.training and not loaded.discriminator.training
    for name in ("generator", "discriminator"):
        want = getattr(model, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert sorted(got) == sorted(want)
        for key in want:
            assert torch.equal(got[key], want[key]), key


def test_save_does_not_alias_the_caller_tensors(tmp_path):
    tensors = {"w": torch.zeros(3)}
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, tensors, {})
    tensors["w"] += 1
    assert torch.equal(load_checkpoint(path)[0]["w"], torch.zeros(3))


# --- atomic writes ------------------------------------------------------------------------------


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, _tensors(), {"kind": "first"})
    before = path.read_bytes()

    def failing(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"]


def test_failed_save_checkpoint_keeps_the_previous_file(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, _tensors(), {"kind": "first"})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_checkpoint(path, _tensors(), {"unserialisable": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"]


def test_interrupted_write_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.txt"

    def interrupted(tmp):
        with open(tmp, "w") as handle:
            handle.write("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_content(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    atomic_write(path, lambda tmp: open(tmp, "w").write("new"))
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


# --- bad checkpoints ----------------------------------------------------------------------------


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(CheckpointError, match="not found") as info:
        load_model(path)
    _assert_one_line_naming(info, path)


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    _assert_one_line_naming(info, path)


def test_empty_checkpoint(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    _assert_one_line_naming(info, path)


def test_truncated_checkpoint(model_file, tmp_path):
    source, _ = model_file
    data = source.read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    _assert_one_line_naming(info, path)


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a napari-cdal checkpoint") as info:
        load_model(path)
    _assert_one_line_naming(info, path)


def test_foreign_format_in_our_metadata_key(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={METADATA_KEY: json.dumps({"format": "other"})})
    with pytest.raises(CheckpointError, match="format") as info:
        load_model(path)
    _assert_one_line_naming(info, path)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.safetensors"
    meta = {"format": "napari-cdal", "format_version": 99}
    save_file({"w": torch.zeros(2)}, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(CheckpointError, match="v99") as info:
        read_metadata(path)
    _assert_one_line_naming(info, path)


def test_corrupt_metadata_json(tmp_path):
    path = tmp_path / "badjson.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={METADATA_KEY: "{not json"})
    with pytest.raises(CheckpointError, match="metadata") as info:
        load_model(path)
    _assert_one_line_naming(info, path)


def _rewrite_config(source, target, **changes):
    """Copy a model checkpoint with edited model_config (the weights stay as they were)."""
    tensors = load_file(str(source))
    with safe_open(str(source), framework="pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
    meta["model_config"].update(changes)
    save_file(tensors, str(target), metadata={METADATA_KEY: json.dumps(meta)})


def test_config_that_does_not_match_the_weights(model_file, tmp_path):
    source, _ = model_file
    path = tmp_path / "mismatch.safetensors"
    _rewrite_config(source, path, base_width=16)
    with pytest.raises(CheckpointError, match="do not match") as info:
        load_model(path)
    _assert_one_line_naming(info, path)


def test_config_with_an_unknown_key(model_file, tmp_path):
    source, _ = model_file
    path = tmp_path / "unknown.safetensors"
    _rewrite_config(source, path, colour="blue")
    with pytest.raises(CheckpointError, match="config") as info:
        load_model(path)
    _assert_one_line_naming(info, path)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("base_width", [0, -1, "wide", 6])
def test_config_that_cannot_build_networks(model_file, tmp_path, base_width):
    # widths the networks cannot be built with (or that do not fit the weights) are checkpoint errors too
    source, _ = model_file
    path = tmp_path / "unbuildable.safetensors"
    _rewrite_config(source, path, base_width=base_width)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    _assert_one_line_naming(info, path)


def test_missing_weights(model_file, tmp_path):
    source, _ = model_file
    tensors = load_file(str(source))
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    del tensors[sorted(k for k in tensors if k.startswith("generator."))[0]]
    path = tmp_path / "missing.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="generator") as info:
        load_model(path)
    _assert_one_line_naming(info, path)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


# --- no pickle ----------------------------------------------------------------------------------


def test_loading_never_unpickles(model_file, monkeypatch):
    path, model = model_file

    def forbidden(*args, **kwargs):
        raise AssertionError("loading a checkpoint must not unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = load_model(path)
    key = next(iter(model.generator.state_dict()))
    assert torch.equal(loaded.generator.state_dict()[key], model.generator.state_dict()[key])


# --- bundled model ------------------------------------------------------------------------------


def test_bundled_model_loads():
    path = bundled_model_path()
    if not path.exists():
        pytest.skip(f"no bundled model shipped ({path.name})")
    model = load_model(None)
    assert model.source == str(path)
    assert model.config == ModelConfig.from_dict(read_metadata(path)["model_config"])
    assert not model.generator.training


def test_a_record_written_before_reads_under_todays_names() -> None:
    old = {"steps": 150, "finetuned_from": {"model": "a.safetensors", "steps": 4000}, "validation": [{"step": 50}]}
    assert current_record(old) == {
        "iterations": 150,
        "finetuned_from": {"model": "a.safetensors", "iterations": 4000},
        "validation": [{"step": 50}],
    }
    assert old["steps"] == 150 and "iterations" not in old  # the record given is left as it was
    assert iterations_done(old) == iterations_done({"iterations": 150}) == 150
    assert iterations_done({"data": "blobs"}) is None
    assert current_record({"steps": 1, "iterations": 2}) == {"iterations": 2}
