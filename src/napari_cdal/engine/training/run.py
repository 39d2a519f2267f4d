"""The hooks that turn the training loop into `train`: tiles at model resolution, patches, validation."""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np

from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.data.patches import PatchSampler
from napari_cdal.engine.data.tiles import Tile, resample_tile
from napari_cdal.engine.events import Progress
from napari_cdal.engine.method.model import save_model
from napari_cdal.engine.segment.evaluate import evaluate_tiles
from napari_cdal.engine.training.state import TrainState
from napari_cdal.engine.training.step import encode_targets


def prepare_tiles(tiles: list[Tile], data_mpp: float, config: ModelConfig) -> list[Tile]:
    """Resample training tiles once from the data's µm/px to the model's."""
    factor = data_mpp / config.model_mpp
    return [tile if abs(factor - 1.0) < 1e-9 else resample_tile(tile, factor) for tile in tiles]


def make_patch_source(tiles: list[Tile], state: TrainState, config: ModelConfig,
                      regions: list | None = None) -> Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Augmented patch batches drawn with the state's own RNG, so a resumed run repeats exactly."""
    sampler = PatchSampler(tiles, state.train_config.patch_size, lambda inst: encode_targets(inst, config),
                           state.np_rng, augment=state.train_config.augment, regions=regions)
    return sampler.sample


def validation_score(metrics: dict) -> float:
    """One number to pick the best checkpoint: the mean of Dice and AJI (Dice alone where no AJI)."""
    aji = metrics.get("aji")
    return metrics["dice"] if aji is None else 0.5 * (metrics["dice"] + aji)


def make_validation(tiles: list[Tile], data_mpp: float, out: str | Path | None = None,
                    on_best: Callable[[TrainState], None] | None = None
                    ) -> Callable[[TrainState], Generator[Progress, None, None]]:
    """A validation hook: score the EMA model on full-resolution tiles, keep the best.

    The best is written to `out` (train) and/or handed to `on_best` (fine-tune keeps it in memory).
    """

    def on_validate(state: TrainState) -> Generator[Progress, None, None]:
        model = state.exported_model()
        summary = None
        for event in evaluate_tiles(model, tiles, image_mpp=data_mpp):
            if event.stage == "done":
                summary = event.payload
            else:
                yield Progress("validate", event.index, event.total, event.payload)
        metrics = {k: v for k, v in summary["mean"].items() if v is not None}
        metrics["score"] = validation_score(summary["mean"])
        state.record["validation"].append({"step": state.step, **metrics})
        best = state.record.get("best")
        if best is None or metrics["score"] > best["score"]:
            state.record["best"] = {"step": state.step, **metrics}
            if out is not None:
                save_model(out, state.exported_model())
            if on_best is not None:
                on_best(state)
        yield Progress("validate_done", state.step, state.train_config.iterations, metrics)

    return on_validate
