"""Shared fixtures: synthetic blob tiles and a tiny cDAL model trained on them (no downloads)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.draw import disk

from napari_cdal.engine.config import PRESETS, ModelConfig, TrainConfig
from napari_cdal.engine.data import PatchSampler, Tile
from napari_cdal.engine.model import CdalModel, save_model
from napari_cdal.engine.training import TrainState, encode_targets, training_loop

TINY = ModelConfig(**PRESETS["tiny"])


def pytest_configure(config) -> None:
    """NAPARI_CDAL_TEST_THREADS caps torch's threads: on a 2-core machine that also trains in the
    background, two threads per process spin against each other and run many times slower."""
    threads = os.environ.get("NAPARI_CDAL_TEST_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def blob_tile(seed: int, size: int = 128, count: int = 25, name: str = "blobs") -> Tile:
    """A synthetic 'H&E' tile: purple discs (nuclei) on pink noise, with exact instance truth."""
    rng = np.random.default_rng(seed)
    instances = np.zeros((size, size), np.uint32)
    for k in range(1, count + 1):
        r, c = rng.integers(6, size - 6, 2)
        rr, cc = disk((r, c), int(rng.integers(3, 6)), shape=instances.shape)
        instances[rr, cc] = k
    image = np.empty((size, size, 3), np.float32)
    image[:] = (225, 180, 210)
    image[instances > 0] = (90, 50, 130)
    image += rng.normal(0, 12, image.shape)
    return Tile(name, np.clip(image, 0, 255).astype(np.uint8), instances > 0, instances, True, None)


def train_tiny(steps: int = 150, seed: int = 0) -> tuple[CdalModel, TrainState]:
    """Train the tiny config on blob tiles at model resolution; about 15 s on one CPU core."""
    cfg = TrainConfig(steps=steps, batch_size=4, patch_size=64, warmup_steps=10, lr_g=2e-3, lr_d=1e-3,
                      ema_decay=0.9, checkpoint_every=10_000, validate_every=10_000, seed=seed)
    state = TrainState.create(CdalModel.initialise(TINY, seed), cfg)
    sampler = PatchSampler([blob_tile(1), blob_tile(2)], 64, lambda inst: encode_targets(inst, TINY),
                           state.np_rng)
    for _ in training_loop(state, sampler.sample, torch.device("cpu")):
        pass
    return state.exported_model(), state


@pytest.fixture(scope="session")
def trained_tiny() -> tuple[CdalModel, TrainState]:
    return train_tiny()


@pytest.fixture(scope="session")
def tiny_model_file(trained_tiny, tmp_path_factory) -> Path:
    """The trained tiny model as a checkpoint file (the CLI and widgets load files)."""
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_model(path, trained_tiny[0])
    return path


@pytest.fixture()
def blob_folder(tmp_path) -> Path:
    """A MoNuSeg-layout folder of two blob tiles at 0.5 µm/px (what the tiny model was trained at)."""
    import tifffile

    for sub in ("images", "masks", "masks_instance"):
        (tmp_path / sub).mkdir()
    for seed, name in ((5, "blob-a"), (6, "blob-b")):
        tile = blob_tile(seed)
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", tile.image)
        Image.fromarray(tile.foreground.astype(np.uint8)).save(tmp_path / "masks" / f"{name}.png")
        Image.fromarray(tile.instances.astype(np.uint16)).save(tmp_path / "masks_instance" / f"{name}.png")
    return tmp_path


def pause_after_first_event(monkeypatch: pytest.MonkeyPatch, module: ModuleType,
                            name: str) -> threading.Event:
    """Make the engine generator `module.name` wait after its first event until the event is set.

    The widgets look the engine function up at run time, so a run started now is surely mid-way
    when the test acts (cancel, close the dock) and goes on once the event is set.
    """
    resume = threading.Event()
    real = getattr(module, name)

    def paused(*args, **kwargs):
        for index, event in enumerate(real(*args, **kwargs)):
            yield event
            if index == 0:
                resume.wait(30)

    monkeypatch.setattr(module, name, paused)
    return resume
