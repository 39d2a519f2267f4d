"""Volumes of classes: segmented slice by slice (slices and samples batched), scored per class."""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_cdal.engine.data.volumes import LabelledVolume, slice_stack, slices_to_volume
from napari_cdal.engine.device import make_rng
from napari_cdal.engine.events import TICK, Progress, ticks_of
from napari_cdal.engine.method.intensity import normalise
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.method.sampler import SampleOutput, StepOutput, reverse_process, unit_foreground

SLICES_PER_BATCH = 16
"""Slices sampled together (times K samples): large enough to keep both cores busy on small slices."""


@dataclass
class VolumeResult:
    """A segmented volume in its own axis order, with the maps a user can inspect.

    `labels` (Z, Y, X) uint8 class values; `probability` (C, Z, Y, X); `uncertainty` (Z, Y, X) or
    None with one sample; `steps` (x̂0) and `attention` (S, Z, Y, X), one volume per sampling step,
    and `chain` (S + 1, Z, Y, X), the chain as sampled from x_T to x_0, or None when not kept. Steps
    and chain are the foreground (anything but background) averaged over the K samples, on [0, 1].
    """

    labels: np.ndarray
    probability: np.ndarray
    uncertainty: np.ndarray | None
    steps: np.ndarray | None
    attention: np.ndarray | None
    seconds: float
    chain: np.ndarray | None = None


def check_volume(volume: np.ndarray, name: str = "volume") -> np.ndarray:
    """A 3-D numeric volume as float32, or a one-line ValueError naming what is wrong."""
    array = np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"{name} has shape {array.shape}; a model of classes segments 3-D volumes (Z x Y x X)")
    if min(array.shape) < 1:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} has dtype {array.dtype}; expected numbers")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def segment_volume(
    model: CdalModel,
    volume: np.ndarray,
    sampling_steps: int | None = None,
    samples: int | None = None,
    seed: int | None = 0,
    keep_steps: bool = True,
    with_attention: bool = True,
    slices_per_batch: int = SLICES_PER_BATCH,
) -> Generator[Progress, None, None]:
    """Segment a volume slice by slice; yields Progress('step', slices done, n) per batch and step, then 'done'.

    The slices go through the sampler `slices_per_batch` at a time with their K samples in one
    batch; each step's event carries the number of slices finished so far, the last step of a
    batch counting them; between them come ticks, Progress('tick', slices done, n), places to stop.
    The final payload is a VolumeResult in the volume's own axis order. Closing the generator
    between events cancels the run.
    """
    start = time.perf_counter()
    config = model.config
    if not config.is_multiclass:
        raise ValueError(
            f"{model.source or 'this model'} segments 2-D images, not volumes; "
            "use a model of classes (e.g. cdal_hippocampus)"
        )
    volume = check_volume(volume)
    stack = slice_stack(volume, config)
    maps = yield from _sample_slices(
        model, stack, sampling_steps, samples, seed, keep_steps, with_attention, slices_per_batch
    )
    probability, uncertainty, steps, attention, chain = maps
    probability_volume = slices_to_volume(probability.transpose(1, 0, 2, 3), config).astype(np.float32)
    labels = np.argmax(probability_volume, axis=0).astype(np.uint8)
    result = VolumeResult(
        labels,
        probability_volume,
        None if uncertainty is None else slices_to_volume(uncertainty, config),
        None if steps is None else slices_to_volume(steps, config),
        None if attention is None else slices_to_volume(attention, config),
        time.perf_counter() - start,
        None if chain is None else slices_to_volume(chain, config),
    )
    yield Progress("done", stack.shape[0], stack.shape[0], result)


SliceMaps = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]
"""Maps of N slices: probability (N, C, H, W), uncertainty (N, H, W) or None, steps and attention (S, N, H, W),
the chain (S + 1, N, H, W)."""


def _sample_slices(
    model: CdalModel,
    stack: np.ndarray,
    sampling_steps: int | None,
    samples: int | None,
    seed: int | None,
    keep_steps: bool,
    with_attention: bool,
    slices_per_batch: int,
) -> Generator[Progress, None, SliceMaps]:
    """Sample (N, C, H, W) slices on the 0..255 scale in batches; yields 'step' and 'tick' events, returns SliceMaps."""
    config = model.config
    count = stack.shape[0]
    n_steps = config.sampling_steps if sampling_steps is None else sampling_steps
    samples = config.default_samples if samples is None else samples
    device = next(model.generator.parameters()).device
    rng = make_rng(seed)
    probability, uncertainty, steps, attention, chain = [], [], [], [], []
    for first in range(0, count, slices_per_batch):
        last = min(count, first + slices_per_batch)
        images = normalise(torch.from_numpy(stack[first:last]), config).to(device)
        batch_steps, batch_attention, batch_chain = [], [], []
        for event in reverse_process(model, images, n_steps, samples, rng, with_attention and keep_steps):
            if event.stage == TICK:
                yield Progress(TICK, first, count)
                continue
            if event.stage == "done":
                out: SampleOutput = event.payload
                probability.append(out.probability.cpu().numpy())
                uncertainty.append(out.uncertainty.cpu().numpy())
                continue
            step: StepOutput = event.payload
            if keep_steps:
                batch_steps.append(unit_foreground(step.x0_mean, config).cpu().numpy())
                if step.step == 0:
                    batch_chain.append(unit_foreground(step.x_from_mean, config).cpu().numpy())
                batch_chain.append(unit_foreground(step.x_to_mean, config).cpu().numpy())
                if step.attention is not None:
                    batch_attention.append(step.attention.cpu().numpy())
            done = last if step.step == n_steps - 1 else first
            yield Progress("step", done, count, step.step)
        if keep_steps:
            steps.append(np.stack(batch_steps))
            chain.append(np.stack(batch_chain))
            if batch_attention:
                attention.append(np.stack(batch_attention))
    return (
        np.concatenate(probability),
        np.concatenate(uncertainty) if samples > 1 else None,
        np.concatenate(steps, axis=1) if steps else None,
        np.concatenate(attention, axis=1) if attention else None,
        np.concatenate(chain, axis=1) if chain else None,
    )


def evaluate_slices(
    model: CdalModel,
    items: list[tuple[str, np.ndarray, np.ndarray]],
    seed: int | None = 0,
) -> Generator[Progress, None, None]:
    """Segment prepared slices and score each class; yields Progress('image', i, n, row), then 'done' with the summary.

    Each item is (name, slices (N, C, H, W) as slice_stack makes them, class labels (N, H, W)):
    what a fine-tune's held-back slices are validated by. Ticks come in between, places to stop.
    """
    names = model.config.class_names
    rows = []
    for index, (name, stack, labels) in enumerate(items):
        start = time.perf_counter()
        probability, *_ = yield from ticks_of(
            _sample_slices(model, stack, None, None, seed, False, False, SLICES_PER_BATCH), index, len(items)
        )
        predicted = np.argmax(probability, axis=1).astype(np.uint8)
        rows.append({"image": name, **class_scores(predicted, labels, names), "seconds": time.perf_counter() - start})
        yield Progress("image", index + 1, len(items), rows[-1])
    yield Progress("done", len(items), len(items), summarise_volumes(rows, names))


def class_voxels(labels: np.ndarray, class_names: tuple[str, ...]) -> str:
    """Voxels per class but the background, in words: 'anterior 1,204 voxels, posterior 998 voxels'."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=len(class_names))
    return ", ".join(f"{name} {int(counts[value]):,} voxels" for value, name in enumerate(class_names) if value)


def class_scores(predicted: np.ndarray, truth: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    """Dice and IoU of each class but the background: `dice_<name>`, `iou_<name>` (1 when both are empty)."""
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction {predicted.shape} and truth {truth.shape} differ in shape")
    scores = {}
    for value, name in enumerate(class_names[1:], start=1):
        pred, true = predicted == value, truth == value
        inter, total = np.count_nonzero(pred & true), np.count_nonzero(pred) + np.count_nonzero(true)
        scores[f"dice_{name}"] = 1.0 if total == 0 else 2.0 * inter / total
        scores[f"iou_{name}"] = 1.0 if total == 0 else inter / (total - inter)
    return scores


def summarise_volumes(rows: list[dict[str, Any]], class_names: tuple[str, ...]) -> dict[str, Any]:
    """Per-volume rows, the means per class and over the classes (`dice`, `iou`), seconds per volume."""
    keys = [f"{kind}_{name}" for kind in ("dice", "iou") for name in class_names[1:]]
    mean = {key: float(np.mean([row[key] for row in rows])) for key in keys}
    for kind in ("dice", "iou"):
        mean[kind] = float(np.mean([mean[f"{kind}_{name}"] for name in class_names[1:]]))
    seconds = float(np.mean([row["seconds"] for row in rows])) if rows else None
    return {"per_image": rows, "mean": mean, "seconds_per_image": seconds}


def evaluate_volumes(
    model: CdalModel,
    volumes: list[LabelledVolume],
    sampling_steps: int | None = None,
    samples: int | None = None,
    seed: int = 0,
) -> Generator[Progress, None, None]:
    """Segment each volume and score each class; yields Progress('image', i, n, row), then 'done' with the summary.

    Ticks come in between, places to stop.
    """
    names = model.config.class_names
    rows = []
    for index, volume in enumerate(volumes):
        result = yield from ticks_of(
            segment_volume(model, volume.image, sampling_steps, samples, seed, keep_steps=False, with_attention=False),
            index,
            len(volumes),
        )
        row = {"image": volume.name, **class_scores(result.labels, volume.labels, names), "seconds": result.seconds}
        rows.append(row)
        yield Progress("image", index + 1, len(volumes), row)
    yield Progress("done", len(volumes), len(volumes), summarise_volumes(rows, names))
