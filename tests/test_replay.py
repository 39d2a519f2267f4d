"""Replay: the model's own training patches travel in its file and share each fine-tune batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import blob_tile

from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_cdal.engine.method.model import load_model, save_model
from napari_cdal.engine.training.corrections import FinetunePair
from napari_cdal.engine.training.finetune import finetune, finetune_config
from napari_cdal.engine.training.replay import make_replay_set, replay_tiles, with_replay


@pytest.fixture()
def source(tiny_model_file):
    return load_model(tiny_model_file)


def test_a_replay_set_holds_nuclei_and_repeats_with_its_seed(source) -> None:
    tiles = [blob_tile(seed) for seed in (1, 2)]
    first = make_replay_set(tiles, 0.5, source.config, 6, 48, np.random.default_rng(3))
    again = make_replay_set(tiles, 0.5, source.config, 6, 48, np.random.default_rng(3))
    assert first.images.shape == (6, 48, 48, 3) and first.images.dtype == np.uint8
    assert first.instances.shape == (6, 48, 48) and first.instances.dtype == np.int32
    assert all(patch.any() for patch in first.instances), "each patch is centred on a nucleus"
    assert np.array_equal(first.images, again.images) and np.array_equal(first.instances, again.instances)
    with pytest.raises(ValueError, match="no training tile is 4096 px"):
        make_replay_set(tiles, 0.5, source.config, 1, 4096, np.random.default_rng(0))


def test_the_replay_set_travels_in_the_model_file_and_through_a_fine_tune(source, tmp_path) -> None:
    replay = make_replay_set([blob_tile(1)], 0.5, source.config, 4, 64, np.random.default_rng(0))
    path = tmp_path / "with_replay.safetensors"
    save_model(path, dataclasses.replace(source, replay=replay))
    loaded = load_model(path)
    assert np.array_equal(loaded.replay.images, replay.images)
    assert np.array_equal(loaded.replay.instances, replay.instances)
    assert load_model(path).generator.state_dict().keys() == source.generator.state_dict().keys()
    tile = blob_tile(12)
    settings = finetune_config(iterations=2, patch_size=64, batch_size=4, replay_share=0.25, holdout_fraction=0.0)
    result = run_to_end(finetune(loaded, [FinetunePair(tile.image, tile.instances)], settings, "cpu", 0.5))
    assert result.record["finetune"]["replayed_per_batch"] == 1
    assert np.array_equal(result.model.replay.images, replay.images), "a fine-tuned model passes its replay set on"
    without = run_to_end(finetune(source, [FinetunePair(tile.image, tile.instances)], settings, "cpu", 0.5))
    assert without.record["finetune"]["replayed_per_batch"] == 0, "a model without a replay set replays nothing"


def test_a_batch_shares_corrections_and_replay_as_told() -> None:
    def source_of(value: float):
        def sample(batch: int):
            return (
                np.full((batch, 3, 8, 8), value, np.float32),
                np.full((batch, 2, 8, 8), value, np.float32),
                np.full((batch, 1, 8, 8), value, np.float32),
            )

        return sample

    for share, batch, count in ((0.25, 4, 1), (0.5, 4, 2), (0.01, 4, 1), (0.9, 4, 3), (0.5, 1, 0)):
        sample, replayed = with_replay(source_of(1.0), source_of(2.0), share, batch)
        images, targets, weights = sample(batch)
        assert replayed == count and images.shape[0] == targets.shape[0] == weights.shape[0] == batch
        assert (images[:, 0, 0, 0] == 2.0).sum() == count, "replay patches come last, as many as the share says"


def test_replay_tiles_have_instance_truth() -> None:
    images = np.zeros((2, 16, 16, 3), np.uint8)
    instances = np.zeros((2, 16, 16), np.int32)
    instances[1, 4:8, 4:8] = 5
    from napari_cdal.engine.method.model import ReplaySet

    tiles = replay_tiles(ReplaySet(images, instances))
    assert [t.has_instance_truth for t in tiles] == [True, True] and tiles[1].foreground.sum() == 16


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("replay.instances"), "holds \\['images'\\], not images and instances"),
        (lambda t: t.update({"replay.images": t["replay.images"].float()}), "not uint8 images and int32 instances"),
        (lambda t: t.update({"replay.instances": t["replay.instances"][:, :8]}), "expected \\(N, P, P, 3\\)"),
        (lambda t: t.update({"replay.instances": -t["replay.instances"] - 1}), "negative instance ids"),
    ],
)
def test_a_model_file_cannot_lie_about_its_replay_set(source, tmp_path, change, message) -> None:
    replay = make_replay_set([blob_tile(1)], 0.5, source.config, 2, 32, np.random.default_rng(0))
    path = tmp_path / "model.safetensors"
    save_model(path, dataclasses.replace(source, replay=replay))
    tensors, meta = load_checkpoint(path)
    change(tensors)
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(bad, {k: v.contiguous() for k, v in tensors.items()}, meta)
    with pytest.raises(CheckpointError, match=message):
        load_model(bad)
