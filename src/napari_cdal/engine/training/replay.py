"""Replay against forgetting: a few of the model's own training patches, carried in its file, mixed into fine-tuning."""

from __future__ import annotations

import numpy as np

from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.data.tiles import Tile
from napari_cdal.engine.method.model import ReplaySet
from napari_cdal.engine.training.loop import BatchSource
from napari_cdal.engine.training.run import prepare_tiles

REPLAY_PATCHES = 32
"""Patches a bundled model carries for replay (tools/bundle_model.py --replay-data)."""

REPLAY_PATCH_PX = 160
"""Their side at the model's µm/px: room round a 128-px fine-tune patch for its rotations and scaling."""


def make_replay_set(
    tiles: list[Tile], data_mpp: float, config: ModelConfig, count: int, patch: int, rng: np.random.Generator
) -> ReplaySet:
    """`count` patches of `patch` px at the model's µm/px, centred on true nuclei drawn at random over the tiles.

    The tiles are the model's training tiles (never validation); each patch holds its nuclei's ids.
    """
    if count < 1 or patch < 1:
        raise ValueError(f"a replay set needs count >= 1 and patch >= 1, got {count} and {patch}")
    scaled = [tile for tile in prepare_tiles(tiles, data_mpp, config) if min(tile.instances.shape) >= patch]
    if not scaled:
        raise ValueError(f"no training tile is {patch} px or more on a side at the model's {config.model_mpp} µm/px")
    images, instances = [], []
    for _ in range(count):
        tile = scaled[int(rng.integers(len(scaled)))]
        height, width = tile.instances.shape
        ys, xs = np.nonzero(tile.instances)
        pick = int(rng.integers(len(ys))) if len(ys) else None
        cy = int(ys[pick]) if pick is not None else int(rng.integers(height))
        cx = int(xs[pick]) if pick is not None else int(rng.integers(width))
        y0, x0 = min(max(0, cy - patch // 2), height - patch), min(max(0, cx - patch // 2), width - patch)
        images.append(np.asarray(tile.image[y0 : y0 + patch, x0 : x0 + patch], np.uint8))
        instances.append(np.asarray(tile.instances[y0 : y0 + patch, x0 : x0 + patch], np.int32))
    return ReplaySet(np.stack(images), np.stack(instances))


def replay_tiles(replay: ReplaySet) -> list[Tile]:
    """A model's replay patches as training tiles (already at its µm/px, with instance truth)."""
    return [
        Tile(f"replay {index}", image, instances > 0, instances.astype(np.uint32), True)
        for index, (image, instances) in enumerate(zip(replay.images, replay.instances, strict=True))
    ]


def with_replay(
    corrections: BatchSource, replay: BatchSource, share: float, batch_size: int
) -> tuple[BatchSource, int]:
    """Batches holding round(share x batch) replay patches (at least one, leaving one correction); and that count."""
    count = min(batch_size - 1, max(1, round(share * batch_size))) if batch_size > 1 else 0
    if count == 0:
        return corrections, 0

    def sample(batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ours, theirs = corrections(batch - count), replay(count)
        return tuple(np.concatenate(pair) for pair in zip(ours, theirs, strict=True))  # type: ignore[return-value]

    return sample, count
