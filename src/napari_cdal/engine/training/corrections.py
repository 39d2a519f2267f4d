"""Corrections checked and prepared for fine-tuning: 2-D pairs with regions, or the corrected slices of volumes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage import measure

from napari_cdal.engine.config import ModelConfig, TrainConfig
from napari_cdal.engine.data.tiles import Tile
from napari_cdal.engine.data.volumes import labels_to_slices, slice_stack, slice_tiles
from napari_cdal.engine.defaults import MARKER_SPACING_UM, MIN_REGION_UM
from napari_cdal.engine.events import Progress
from napari_cdal.engine.io.images import to_rgb_float
from napari_cdal.engine.labels import check_has_nuclei, check_labels
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.segment.instances import split_binary_mask
from napari_cdal.engine.segment.volume import check_volume, evaluate_slices
from napari_cdal.engine.segment.windows import Box
from napari_cdal.engine.training.holdout import (
    CONTEXT_UM,
    MIN_HOLDOUT_UM,
    HeldBack,
    evaluate_held_back,
    hold_back,
    in_context,
    nuclei_in,
)
from napari_cdal.engine.training.run import Evaluation, prepare_tiles


@dataclass
class FinetunePair:
    """One image with its corrected labels: instance ids or a binary mask of the same height and width.

    `regions` are the corrected boxes (y0, y1, x0, x1) in image pixels (half-open; clipped to the
    image); None means the whole image was checked. Only pixels inside them count in the losses.
    """

    image: np.ndarray
    labels: np.ndarray
    regions: list[Box] | None = None
    name: str = ""


@dataclass
class VolumeCorrection:
    """One volume (in its own axis order) with its corrected class labels of the same shape.

    `reference` is the model's result the corrections were painted on: the slices (along the
    model's slice_axis) where the labels differ from it are the corrected ones. Without it, every
    slice holding a label (a value > 0) counts as corrected.
    """

    image: np.ndarray
    labels: np.ndarray
    reference: np.ndarray | None = None
    name: str = ""


@dataclass
class PreparedPairs:
    """Checked corrections: tiles at model resolution with their training boxes, held-back crops or slices.

    `evaluation` scores a model on the held-back part (None when nothing was held back).
    """

    tiles: list[Tile]
    regions: list[list[Box]]
    holdout: list[Tile] | list[HeldBack]
    patch_size: int
    nuclei: int
    names: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)
    evaluation: Evaluation | None = None


def _checked_labels(labels: Any, shape: tuple[int, int], who: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{who}: labels must be a 2-D label image (H x W), got shape {arr.shape}")
    check_labels(arr, f"{who}: labels", allow_binary=True)
    if arr.shape != shape:
        raise ValueError(
            f"{who}: labels shape {arr.shape} differs from the image's {shape}; the corrected "
            "labels must cover the image pixel for pixel"
        )
    return check_has_nuclei(
        arr,
        f"{who}: labels",
        "paint the nuclei of the corrected region, or pick the Labels layer that holds the corrections",
    )


def _checked_regions(regions: list[Box] | None, shape: tuple[int, int], who: str) -> list[Box]:
    height, width = shape
    if regions is None:
        return [(0, height, 0, width)]
    if len(regions) == 0:
        raise ValueError(
            f"{who}: regions is an empty list; pass None for the whole image or at least one (y0, y1, x0, x1) box"
        )
    boxes = []
    for box in regions:
        if len(box) != 4:
            raise ValueError(f"{who}: region {tuple(box)!r} is not a (y0, y1, x0, x1) box")
        y0, y1, x0, x1 = (int(round(float(v))) for v in box)
        if y0 >= y1 or x0 >= x1:
            raise ValueError(f"{who}: region {tuple(box)!r} is empty; a box needs y0 < y1 and x0 < x1")
        clipped = (max(0, y0), min(height, y1), max(0, x0), min(width, x1))
        if clipped[0] >= clipped[1] or clipped[2] >= clipped[3]:
            raise ValueError(
                f"{who}: region {tuple(box)!r} lies outside the {height}x{width} image; boxes "
                f"are (y0, y1, x0, x1) in image pixels within 0..{height} and 0..{width}"
            )
        boxes.append(clipped)
    return boxes


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def prepare_pairs(
    pairs: Sequence[FinetunePair | VolumeCorrection], config: ModelConfig, image_mpp: float, settings: TrainConfig
) -> PreparedPairs:
    """Check every pair and bring it to the model's µm/px; raises ValueError naming the pair and the fix.

    Binary masks become instances by the distance-map watershed (with a note when it split touching
    nuclei); ids painted on several blobs become one instance per blob.
    """
    if not pairs:
        raise ValueError("pairs is empty; give at least one (image, corrected labels) pair")
    if config.model_side:
        raise ValueError(
            f"fine-tuning works on models that resample by µm/px; this one sees each image whole at "
            f"{config.model_side} px: train it again with napari-cdal train on the corrected masks"
        )
    if not (isinstance(image_mpp, (int, float)) and math.isfinite(image_mpp) and image_mpp > 0):
        raise ValueError(f"image_mpp must be a number > 0 (µm per pixel of the images), got {image_mpp!r}")
    factor = image_mpp / config.model_mpp
    min_region = max(1, math.ceil(MIN_REGION_UM / image_mpp))
    min_holdout = max(1, math.ceil(MIN_HOLDOUT_UM / image_mpp))
    context = math.ceil(CONTEXT_UM / image_mpp)
    tiles: list[Tile] = []
    regions: list[list[Box]] = []
    holdout: list[HeldBack] = []
    names: list[str] = []
    notes: list[str] = []
    nuclei = 0
    for index, pair in enumerate(pairs):
        who = f"pair {index}" + (f" ({pair.name})" if pair.name else "")
        if isinstance(pair, VolumeCorrection):
            raise ValueError(
                f"{who} is a volume, but this model segments 2-D images; fine-tune a model of "
                "classes (e.g. cdal_hippocampus) on volumes"
            )
        name = pair.name or f"pair-{index}"
        image = to_rgb_float(pair.image, 3, name=f"{who}: image")
        shape = image.shape[:2]
        labels = _checked_labels(pair.labels, shape, who)
        boxes = _checked_regions(pair.regions, shape, who)
        for box in boxes:
            if min(box[1] - box[0], box[3] - box[2]) < min_region:
                raise ValueError(
                    f"{who}: region {box} is {box[1] - box[0]}x{box[3] - box[2]} px, smaller than "
                    f"{MIN_REGION_UM:g} µm ({min_region} px at {image_mpp:g} µm/px) on a side; draw a larger box"
                )
        binary = np.unique(labels[labels > 0]).size <= 1
        if binary:
            instances, split = split_binary_mask(labels, max(1, round(MARKER_SPACING_UM / image_mpp)))
            if split:
                notes.append(
                    f"{who}: the mask is binary (one value for all nuclei), so {split} blob(s) of "
                    f"touching nuclei were split by a distance-map watershed into {int(instances.max())} "
                    "nuclei in all; paint each nucleus its own id to decide the split yourself"
                )
        else:
            instances = measure.label(labels, background=0, connectivity=1).astype(np.uint32)
        found = nuclei_in(instances, boxes)
        if found == 0:
            raise ValueError(
                f"{who}: the corrected regions {boxes} hold no nucleus; fine-tuning needs at least one "
                "painted nucleus in them (a region of background only can join a region with nuclei)"
            )
        train_boxes, held = hold_back(boxes, settings.holdout_fraction, min_holdout, instances)
        if held and any(nuclei_in(instances, group) for group in held) and nuclei_in(instances, train_boxes) > 0:
            holdout.extend(
                in_context(
                    f"{name} held-back" + (f" {k + 1}" if len(held) > 1 else ""),
                    image,
                    instances,
                    group,
                    context,
                    not binary,
                )
                for k, group in enumerate(held)
            )
        else:
            train_boxes = boxes
        nuclei += nuclei_in(instances, train_boxes)
        tile = Tile(name, np.rint(image).astype(np.uint8), instances > 0, instances, not binary)
        tiles.append(tile)
        regions.append(train_boxes)
        names.append(name)
    tiles = prepare_tiles(tiles, image_mpp, config)
    scaled = []
    for tile, boxes in zip(tiles, regions, strict=True):
        height, width = tile.instances.shape
        scaled.append(
            [
                (
                    max(0, math.floor(y0 * factor)),
                    min(height, max(1, math.ceil(y1 * factor))),
                    max(0, math.floor(x0 * factor)),
                    min(width, max(1, math.ceil(x1 * factor))),
                )
                for y0, y1, x0, x1 in boxes
            ]
        )
    multiple = config.size_multiple
    largest = max(max(tile.instances.shape) for tile in tiles)
    patch = min(_round_up(settings.patch_size, multiple), _round_up(largest, multiple))

    def evaluation(model: CdalModel, seed: int = 0) -> Generator[Progress, None, None]:
        return evaluate_held_back(model, holdout, image_mpp, seed)

    return PreparedPairs(tiles, scaled, holdout, patch, nuclei, names, notes, evaluation if holdout else None)


def corrected_slices(labels: np.ndarray, reference: np.ndarray | None, axis: int) -> list[int]:
    """The slices along `axis` holding corrections: where `labels` differ from `reference`, else any label."""
    changed = labels > 0 if reference is None else np.asarray(labels) != np.asarray(reference)
    return [int(i) for i in np.flatnonzero(changed.any(axis=tuple(a for a in range(3) if a != axis)))]


def _checked_class_labels(item: VolumeCorrection, shape: tuple[int, ...], classes: int, who: str) -> np.ndarray:
    labels = np.asarray(item.labels)
    if labels.shape != shape:
        raise ValueError(
            f"{who}: labels shape {labels.shape} differs from the volume's {shape}; the corrected "
            "labels must cover the volume voxel for voxel"
        )
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and (labels.min() < 0 or labels.max() >= classes)):
        raise ValueError(
            f"{who}: labels must be class values 0..{classes - 1} (the model's classes), got values "
            f"{labels.min()}..{labels.max()} of dtype {labels.dtype}"
        )
    if item.reference is not None and np.shape(item.reference) != shape:
        raise ValueError(f"{who}: the model's result has shape {np.shape(item.reference)}, not the volume's {shape}")
    return labels.astype(np.uint8)


def prepare_volumes(
    corrections: Sequence[FinetunePair | VolumeCorrection], config: ModelConfig, settings: TrainConfig
) -> PreparedPairs:
    """Check every corrected volume and cut its corrected slices into training tiles; ValueError naming the fix.

    The corrected slices (corrected_slices, along the model's slice_axis) become whole-slice
    training tiles with their neighbours as context; with holdout_fraction the last of them (at
    least one, leaving one) are held back to pick the best weights, scored by Dice per class.
    """
    if not corrections:
        raise ValueError("corrections is empty; give at least one (volume, corrected labels) pair")
    axis, classes = config.slice_axis, config.label_channels
    tiles, holdout, names, notes, held_items = [], [], [], [], []
    for index, item in enumerate(corrections):
        who = f"volume {index}" + (f" ({getattr(item, 'name', '')})" if getattr(item, "name", "") else "")
        if not isinstance(item, VolumeCorrection):
            raise ValueError(
                f"{who} is a 2-D image, but this model segments volumes; fine-tune an H&E model on it, "
                "or give a VolumeCorrection (volume, corrected class labels)"
            )
        name = item.name or f"volume-{index}"
        image = check_volume(item.image, f"{who}: image")
        labels = _checked_class_labels(item, image.shape, classes, who)
        chosen = corrected_slices(labels, item.reference, axis)
        rule = (
            "where the labels differ from the model's result"
            if item.reference is not None
            else "every slice holding a label, as no model result was given"
        )
        if not chosen:
            raise ValueError(
                f"{who}: no slice along axis {axis} holds a correction ({rule}); paint the "
                "corrections into the labels first"
            )
        held = int(round(len(chosen) * settings.holdout_fraction))
        held = held if 1 <= held < len(chosen) else 0
        train, back = chosen[: len(chosen) - held], chosen[len(chosen) - held :]
        images, label_slices = slice_stack(image, config), labels_to_slices(labels, config)  # once per volume
        tiles.extend(slice_tiles(name, images, label_slices, train))
        if back:
            holdout.extend(slice_tiles(name, images, label_slices, back))
            held_items.append((name, images[back], label_slices[back]))
        kept = f"; {held} held back to pick the best weights" if held else ""
        notes.append(
            f"{who}: {len(chosen)} corrected slice(s) along axis {axis} ({rule}): {', '.join(map(str, chosen))}{kept}"
        )
        names.append(name)
    multiple = config.size_multiple
    largest = max(max(tile.instances.shape) for tile in tiles)
    patch = min(_round_up(settings.patch_size, multiple), _round_up(largest, multiple))

    def evaluation(model: CdalModel, seed: int = 0) -> Generator[Progress, None, None]:
        return evaluate_slices(model, held_items, seed)

    regions = [[(0, tile.instances.shape[0], 0, tile.instances.shape[1])] for tile in tiles]
    return PreparedPairs(tiles, regions, holdout, patch, 0, names, notes, evaluation if held_items else None)
