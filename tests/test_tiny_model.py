"""The stored tiny model (tests/data) is what tools/build_tiny_model.py still makes.

Its segmentation quality is checked in test_training.py::test_tiny_model_learns_blobs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from napari_cdal.engine.config import TrainConfig, iterations_done
from napari_cdal.engine.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_cdal.engine.method.model import CdalModel, save_model

from tools.build_tiny_model import (
    REBUILD,
    SCRIPT,
    SEED,
    STEPS,
    STORED,
    TINY,
    TRAIN_TILE_SEEDS,
    first_step_losses,
    load_tiny,
    tiny_train_config,
)

CHECKED_STEPS = 10
RTOL = 1e-3


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread, as the script trains with, for the test's duration."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_stored_record_has_the_scripts_settings(trained_tiny) -> None:
    model, run = trained_tiny
    record = run.record
    assert model.config == TINY, f"the stored model's config is not the tiny preset; {REBUILD}"
    assert TrainConfig.from_dict(record["train_config"]) == tiny_train_config(), (
        f"the stored model was trained with other settings; {REBUILD}"
    )
    assert record["train_config"]["seed"] == SEED
    assert run.step == iterations_done(record) == STEPS
    assert record["built_by"]["script"] == SCRIPT
    assert record["built_by"]["train_tile_seeds"] == list(TRAIN_TILE_SEEDS)
    assert len(record["step_losses"]) == STEPS
    assert [entry["step"] for entry in record["history"]] == [1, 50, 100, 150]


def test_script_repeats_the_stored_first_steps(trained_tiny, one_thread) -> None:
    stored = trained_tiny[1].record["step_losses"][:CHECKED_STEPS]
    again = first_step_losses(CHECKED_STEPS)
    for step, (now, then) in enumerate(zip(again, stored, strict=True), start=1):
        assert now.keys() == then.keys(), f"step {step} logs other losses than stored; {REBUILD}"
        for name in then:
            assert np.isclose(now[name], then[name], rtol=RTOL, atol=1e-6), (
                f"step {step} {name}: {now[name]:.6g} now, {then[name]:.6g} stored: the training "
                f"code or the networks changed; {REBUILD}"
            )
    first = trained_tiny[1].record["history"][0]
    assert all(np.isclose(again[0][k], first[k], rtol=RTOL, atol=1e-5) for k in first if k != "step"), (
        f"step 1 differs from the stored history; {REBUILD}"
    )


def test_a_checkpoint_that_no_longer_fits_says_to_rebuild(tmp_path) -> None:
    tensors, meta = load_checkpoint(STORED)
    missing = tmp_path / "missing.safetensors"
    save_checkpoint(missing, {k: v for k, v in tensors.items() if k != next(iter(tensors))}, meta)
    with pytest.raises(CheckpointError, match="python tools/build_tiny_model.py"):
        load_tiny(missing)
    other = tmp_path / "other.safetensors"
    save_model(other, CdalModel.initialise(dataclasses.replace(TINY, base_width=4)))
    with pytest.raises(CheckpointError, match="python tools/build_tiny_model.py"):
        load_tiny(other)
