"""A training run: its data, its state, and the hooks that turn the training loop into `train`."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cdal.catalog import state_path
from napari_cdal.engine.checks import check_patch_size
from napari_cdal.engine.config import ModelConfig, TrainConfig, iterations_done
from napari_cdal.engine.data.patches import PatchSampler, jitter_kind
from napari_cdal.engine.data.tiles import (
    Tile,
    check_image_channels,
    check_tiles_have_nuclei,
    list_tiles,
    load_folder,
    resample_tile,
)
from napari_cdal.engine.data.volumes import is_volume_folder, list_volumes, load_volume, training_slices
from napari_cdal.engine.defaults import DEFAULT_IMAGE_MPP
from napari_cdal.engine.events import TICK, Progress
from napari_cdal.engine.method.intensity import stretch_intensity
from napari_cdal.engine.method.model import CdalModel, save_model
from napari_cdal.engine.segment.evaluate import evaluate_tiles
from napari_cdal.engine.segment.volume import evaluate_volumes
from napari_cdal.engine.training.loop import training_loop
from napari_cdal.engine.training.state import TrainState
from napari_cdal.engine.training.step import encode_targets


def prepare_tiles(tiles: list[Tile], data_mpp: float, config: ModelConfig) -> list[Tile]:
    """Training tiles on the model's grid: each grayscale image stretched by its own percentiles, then resampled.

    The same stretch and grid as segment_image gives an image, applied once here for training
    (load_tile leaves the pixels as read); H&E tiles are only resampled from the data's µm/px.
    """
    prepared = []
    for tile in tiles:
        if config.intensity_percentiles:
            tile = replace(tile, image=stretch_intensity(tile.image, config))
        height, width = tile.image.shape[:2]
        factor = config.grid_factor(height, width, data_mpp)
        prepared.append(tile if abs(factor - 1.0) < 1e-9 else resample_tile(tile, factor))
    return prepared


def make_patch_source(
    tiles: list[Tile], state: TrainState, config: ModelConfig, regions: list | None = None
) -> Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Augmented patch batches drawn with the state's own RNG, so a resumed run repeats exactly."""
    cfg = state.train_config
    sampler = PatchSampler(
        tiles,
        cfg.patch_size,
        lambda inst: encode_targets(inst, config),
        state.np_rng,
        augment=cfg.augment,
        regions=regions,
        jitter=jitter_kind(config),
        flips=cfg.flips,
    )
    return sampler.sample


def validation_score(metrics: dict) -> float:
    """One number to pick the best checkpoint: the mean of Dice and AJI (Dice alone where no AJI).

    For classes, `dice` is already the mean over the classes but the background.
    """
    aji = metrics.get("aji")
    return metrics["dice"] if aji is None else 0.5 * (metrics["dice"] + aji)


Evaluation = Callable[..., Generator[Progress, None, None]]
"""Scores a model on held-back data (evaluation(model, seed=0)): Progress events, then 'done' with a summary
holding `mean` (and `nuclei`: right and truth, where counted)."""


def make_validation(
    tiles: list[Tile],
    data_mpp: float,
    out: str | Path | None = None,
    on_best: Callable[[TrainState], None] | None = None,
) -> Callable[[TrainState], Generator[Progress, None, None]]:
    """A validation hook: score the EMA model on full-resolution tiles, keep the best.

    The best is written to `out` (train) and/or handed to `on_best` (fine-tune keeps it in memory).
    """
    return validation_hook(
        lambda model, seed=0: evaluate_tiles(model, tiles, image_mpp=data_mpp, seed=seed), out, on_best
    )


def scored(evaluate: Evaluation, model: CdalModel, seed: int = 0) -> Generator[Progress, None, dict[str, Any]]:
    """Run an evaluation as 'validate' events (ticks pass through); return its metrics, with nuclei_* and `score`."""
    summary: dict[str, Any] | None = None
    for event in evaluate(model, seed=seed):
        if event.stage == "done":
            summary = event.payload
        elif event.stage == TICK:
            yield event
        else:
            yield Progress("validate", event.index, event.total, event.payload)
    if summary is None:
        raise ValueError("the evaluation ended without its summary (no 'done' event)")
    metrics = {k: v for k, v in summary["mean"].items() if v is not None}
    metrics.update({f"nuclei_{k}": v for k, v in summary.get("nuclei", {}).items()})
    metrics["score"] = validation_score(summary["mean"])
    return metrics


def validation_hook(
    evaluate: Evaluation, out: str | Path | None = None, on_best: Callable[[TrainState], None] | None = None
) -> Callable[[TrainState], Generator[Progress, None, None]]:
    """A validation hook around any evaluation: score the EMA model, record it, keep the best."""

    def on_validate(state: TrainState) -> Generator[Progress, None, None]:
        metrics = yield from scored(evaluate, state.exported_model())
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


@dataclass(frozen=True)
class RunData:
    """What a run trains and validates on: tile names of one folder and their µm per pixel."""

    train_names: list[str]
    validation_names: list[str]
    data_mpp: float


def run_data(
    data_dir: str | Path,
    split: dict[str, list[str]],
    record: dict[str, Any] | None = None,
    data_mpp: float | None = None,
) -> RunData:
    """The split's tiles, else (resuming) the ones the run recorded, else every tile; the same for µm/px.

    A resumed run goes on with its recorded data unless told otherwise, so that it repeats exactly.
    """
    record = record or {}
    every = list_volumes if is_volume_folder(data_dir) else list_tiles
    train = split.get("train") or record.get("train_tiles") or every(data_dir)
    validation = (split.get("validation") if split else record.get("validation_tiles")) or []
    mpp = record.get("data_mpp", DEFAULT_IMAGE_MPP) if data_mpp is None else data_mpp
    if not train:
        raise ValueError(f"no training images: {Path(data_dir) / 'images'} is empty")
    return RunData(list(train), list(validation), mpp)


def new_state(
    model: CdalModel,
    config: TrainConfig,
    data_dir: str | Path,
    data: RunData,
    device: torch.device,
    init_from: str | Path | None = None,
) -> TrainState:
    """A fresh run's state, its record saying what it trains on and where its weights came from."""
    state = TrainState.create(model, config)
    state.record.update(
        {
            "data": Path(data_dir).name,
            "train_tiles": data.train_names,
            "validation_tiles": data.validation_names,
            "data_mpp": data.data_mpp,
            "device": str(device),
            "best": None,
        }
    )
    if init_from is not None:
        state.record["initialised_from"] = {"model": str(init_from), "iterations": iterations_done(model.record)}
    return state


def train_run(
    state: TrainState, data_dir: str | Path, data: RunData, out: str | Path, device: torch.device
) -> Generator[Progress, None, None]:
    """Train to the state's iterations, saving the state every checkpoint and the best model at `out`.

    With validation tiles the model at `out` is the best by validation_score; without, the latest.
    The patch size, the images' channels and the masks (each must hold a nucleus) are checked here,
    before the generator starts, so bad data costs no work.
    """
    config = state.model.config
    check_patch_size(state.train_config.patch_size, config)
    tiles = None
    if not config.is_multiclass and not is_volume_folder(data_dir):
        check_image_channels(data_dir, data.train_names + data.validation_names, config.image_channels)
        channels = config.image_channels
        tiles = (
            load_folder(data_dir, data.train_names, channels),
            load_folder(data_dir, data.validation_names, channels) if data.validation_names else [],
        )
        check_tiles_have_nuclei(data_dir, tiles[0] + tiles[1])
    return _train(state, data_dir, data, Path(out), device, tiles)


def _train(
    state: TrainState,
    data_dir: str | Path,
    data: RunData,
    out: Path,
    device: torch.device,
    tiles: tuple[list[Tile], list[Tile]] | None,
) -> Generator[Progress, None, None]:
    """The run's generator; `tiles` are a tile folder's training and validation tiles, read and checked already."""
    config = state.model.config
    if config.is_multiclass:
        if not is_volume_folder(data_dir):
            raise ValueError(
                f"a model of classes trains on volumes: {Path(data_dir) / 'images'} holds no "
                ".nii.gz; for H&E tiles use a nucleus preset (e.g. --config medium)"
            )
        classes = config.label_channels
        volumes = [load_volume(data_dir, name, classes) for name in data.train_names]
        train_tiles = training_slices(volumes, config)
        held_volumes = [load_volume(data_dir, name, classes) for name in data.validation_names]
        on_validate = (
            validation_hook(lambda model, seed=0: evaluate_volumes(model, held_volumes, seed=seed), out)
            if held_volumes
            else None
        )
    else:
        if is_volume_folder(data_dir) or tiles is None:  # train_run read no tiles only from a volume folder
            raise ValueError(
                f"{Path(data_dir) / 'images'} holds volumes; train them with a model of classes "
                "(e.g. --config hippocampus)"
            )
        train_tiles = prepare_tiles(tiles[0], data.data_mpp, config)
        on_validate = make_validation(tiles[1], data.data_mpp, out) if tiles[1] else None
    sample_batch = make_patch_source(train_tiles, state, config)

    def on_checkpoint(current: TrainState) -> None:
        current.save(state_path(out))
        if on_validate is None:  # nothing held back to pick the best by: the latest is the model
            save_model(out, current.exported_model())

    yield from training_loop(state, sample_batch, device, on_checkpoint, on_validate)
