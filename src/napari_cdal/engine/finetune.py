"""Fine-tuning: learn from a pathologist's corrected masks on a few tiles without touching the source.

The same loop as `train` (training.training_loop) with other hooks and settings: patches come only
from the corrected regions (pixels outside them weigh 0), the learning rate is small, the shipped
weights are an EMA, and a held-back strip of the corrections (a quarter of the largest region, when
large enough) picks the best weights, the starting ones included, so the result is never worse than
the start on that strip. benchmarks/finetune.py measured these guards against plain fine-tuning.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator

import numpy as np
import torch
from skimage import measure

from .checkpoint import OutputError
from .config import ModelConfig, TrainConfig
from .data import Box, Tile
from .events import Progress
from .instances import split_binary_mask
from .io import to_rgb_float
from .model import CdalModel, is_bundled, save_model
from .segment import MARKER_SPACING_UM
from .trainer import make_patch_source, make_validation, prepare_tiles
from .training import TrainState, training_loop

MIN_REGION_UM = 8.0
"""Smallest side of a corrected region, in µm (about one nucleus)."""

MIN_HOLDOUT_UM = 32.0
"""Smallest side of a held-back strip (and of what stays for training), in µm."""

SOURCE_LOSS_SETTINGS = ("adam_betas", "mse_weight", "adversarial_weight", "dice_weight", "bce_weight",
                        "r1_gamma", "r1_interval")
"""Settings taken over from the source model's training, so fine-tuning optimises the same losses."""

SOURCE_SUMMARY_KEYS = ("data", "steps", "wall_seconds", "best", "finetuned_from")


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


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings; the defaults were chosen with benchmarks/finetune.py on a 2-core CPU."""

    steps: int = 150
    batch_size: int = 4
    patch_size: int = 128
    lr_g: float = 1e-4
    lr_d: float = 5e-5
    lr_min: float = 1e-6
    warmup_steps: int = 10
    ema_decay: float = 0.99
    holdout_fraction: float = 0.25
    validate_every: int = 50
    patience: int = 2
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "patch_size", "warmup_steps", "validate_every", "patience", "seed"):
            value = getattr(self, name)
            least = 0 if name in ("warmup_steps", "patience", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"FinetuneConfig.{name} must be an integer >= {least}, got {value!r}")
        for name in ("lr_g", "lr_d", "lr_min"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"FinetuneConfig.{name} must be a number > 0, got {value!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"FinetuneConfig.ema_decay must lie in [0, 1), got {self.ema_decay!r} "
                             "(0 ships the raw weights)")
        if not 0.0 <= self.holdout_fraction <= 0.5:
            raise ValueError(f"FinetuneConfig.holdout_fraction must lie in [0, 0.5], got "
                             f"{self.holdout_fraction!r} (0 switches the held-back strip off)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FinetuneResult:
    """The new model (EMA weights, with its record) and how the run ended."""

    model: CdalModel
    record: dict[str, Any]
    stopped_early: bool
    best_step: int | None
    kept_start: bool


@dataclass
class PreparedPairs:
    """Checked corrections: tiles at model resolution with their training boxes, held-back crops."""

    tiles: list[Tile]
    regions: list[list[Box]]
    holdout: list[Tile]
    patch_size: int
    nuclei: int
    names: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)


class FinetuneSaveError(ValueError):
    """The fine-tuned model was not written; the message says why and what to do, nothing is left behind."""


# --------------------------------------------------------------------------------------------
# Checking the corrections
# --------------------------------------------------------------------------------------------


def _checked_labels(labels: Any, shape: tuple[int, int], who: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{who}: labels must be a 2-D label image (H x W), got shape {arr.shape}")
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{who}: labels has dtype {arr.dtype}; give integer ids (0 = background) or a "
                         "binary mask, e.g. labels.astype(np.int32)")
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and int(arr.min()) < 0:
        raise ValueError(f"{who}: labels holds negative ids (min {int(arr.min())}); ids must be 0 or > 0")
    if arr.shape != shape:
        raise ValueError(f"{who}: labels shape {arr.shape} differs from the image's {shape}; the corrected "
                         "labels must cover the image pixel for pixel")
    if not arr.any():
        raise ValueError(f"{who}: labels are empty (no nucleus painted); paint the nuclei of the corrected "
                         "region, or pick the Labels layer that holds the corrections")
    return arr


def _checked_regions(regions: list[Box] | None, shape: tuple[int, int], who: str) -> list[Box]:
    height, width = shape
    if regions is None:
        return [(0, height, 0, width)]
    if len(regions) == 0:
        raise ValueError(f"{who}: regions is an empty list; pass None for the whole image or at least "
                         "one (y0, y1, x0, x1) box")
    boxes = []
    for box in regions:
        if len(box) != 4:
            raise ValueError(f"{who}: region {tuple(box)!r} is not a (y0, y1, x0, x1) box")
        y0, y1, x0, x1 = (int(round(float(v))) for v in box)
        if y0 >= y1 or x0 >= x1:
            raise ValueError(f"{who}: region {tuple(box)!r} is empty; a box needs y0 < y1 and x0 < x1")
        clipped = (max(0, y0), min(height, y1), max(0, x0), min(width, x1))
        if clipped[0] >= clipped[1] or clipped[2] >= clipped[3]:
            raise ValueError(f"{who}: region {tuple(box)!r} lies outside the {height}x{width} image; boxes "
                             f"are (y0, y1, x0, x1) in image pixels within 0..{height} and 0..{width}")
        boxes.append(clipped)
    return boxes


def _nuclei_in(instances: np.ndarray, boxes: list[Box]) -> int:
    inside = np.zeros(instances.shape, dtype=bool)
    for y0, y1, x0, x1 in boxes:
        inside[y0:y1, x0:x1] = True
    ids = np.unique(instances[inside])
    return int(np.count_nonzero(ids))


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _split_holdout(boxes: list[Box], fraction: float, min_side: int) -> tuple[list[Box], Box | None]:
    """Cut the far end of the largest box (along its longer side) off for validation, when both halves fit."""
    if fraction <= 0:
        return boxes, None
    k = max(range(len(boxes)), key=lambda i: (boxes[i][1] - boxes[i][0]) * (boxes[i][3] - boxes[i][2]))
    y0, y1, x0, x1 = boxes[k]
    along_y = (y1 - y0) >= (x1 - x0)
    side = (y1 - y0) if along_y else (x1 - x0)
    held = int(round(side * fraction))
    if held < min_side or side - held < min_side:
        return boxes, None
    if along_y:
        train, hold = (y0, y1 - held, x0, x1), (y1 - held, y1, x0, x1)
    else:
        train, hold = (y0, y1, x0, x1 - held), (y0, y1, x1 - held, x1)
    others = boxes[:k] + boxes[k + 1:]
    if any(_overlaps(hold, other) for other in others):
        return boxes, None
    return others[:k] + [train] + others[k:], hold


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def prepare_pairs(pairs: list[FinetunePair], config: ModelConfig, image_mpp: float,
                  settings: FinetuneConfig) -> PreparedPairs:
    """Check every pair and bring it to the model's µm/px; raises ValueError naming the pair and the fix.

    Binary masks become instances by the distance-map watershed (with a note when it split touching
    nuclei); ids painted on several blobs become one instance per blob.
    """
    if not pairs:
        raise ValueError("pairs is empty; give at least one (image, corrected labels) pair")
    if not (isinstance(image_mpp, (int, float)) and math.isfinite(image_mpp) and image_mpp > 0):
        raise ValueError(f"image_mpp must be a number > 0 (µm per pixel of the images), got {image_mpp!r}")
    factor = image_mpp / config.model_mpp
    min_region = max(1, math.ceil(MIN_REGION_UM / image_mpp))
    min_holdout = max(1, math.ceil(MIN_HOLDOUT_UM / image_mpp))
    tiles, regions, holdout, names = [], [], [], []
    notes: list[str] = []
    nuclei = 0
    for index, pair in enumerate(pairs):
        who = f"pair {index}" + (f" ({pair.name})" if pair.name else "")
        name = pair.name or f"pair-{index}"
        image = to_rgb_float(pair.image, 3, name=f"{who}: image")
        shape = image.shape[:2]
        labels = _checked_labels(pair.labels, shape, who)
        boxes = _checked_regions(pair.regions, shape, who)
        for box in boxes:
            if min(box[1] - box[0], box[3] - box[2]) < min_region:
                raise ValueError(
                    f"{who}: region {box} is {box[1] - box[0]}x{box[3] - box[2]} px, smaller than "
                    f"{MIN_REGION_UM:g} µm ({min_region} px at {image_mpp:g} µm/px) on a side; draw a larger box")
        binary = np.unique(labels[labels > 0]).size <= 1
        if binary:
            instances, split = split_binary_mask(labels, max(1, round(MARKER_SPACING_UM / image_mpp)))
            if split:
                notes.append(f"{who}: the mask is binary (one value for all nuclei), so {split} blob(s) of "
                             f"touching nuclei were split by a distance-map watershed into {int(instances.max())} "
                             "nuclei in all; paint each nucleus its own id to decide the split yourself")
        else:
            instances = measure.label(labels, background=0, connectivity=1).astype(np.uint32)
        found = _nuclei_in(instances, boxes)
        if found == 0:
            raise ValueError(
                f"{who}: the corrected regions {boxes} hold no nucleus; fine-tuning needs at least one "
                "painted nucleus in them (a region of background only can join a region with nuclei)")
        train_boxes, hold = _split_holdout(boxes, settings.holdout_fraction, min_holdout)
        if hold is not None and _nuclei_in(instances, [hold]) > 0 and _nuclei_in(instances, train_boxes) > 0:
            y0, y1, x0, x1 = hold
            crop = instances[y0:y1, x0:x1]
            holdout.append(Tile(f"{name} held-back", np.rint(image[y0:y1, x0:x1]).astype(np.uint8),
                                crop > 0, crop, not binary))
        else:
            train_boxes = boxes
        nuclei += _nuclei_in(instances, train_boxes)
        tile = Tile(name, np.rint(image).astype(np.uint8), instances > 0, instances, not binary)
        tiles.append(tile)
        regions.append(train_boxes)
        names.append(name)
    tiles = prepare_tiles(tiles, image_mpp, config)
    scaled = []
    for tile, boxes in zip(tiles, regions):
        height, width = tile.instances.shape
        scaled.append([(max(0, math.floor(y0 * factor)), min(height, max(1, math.ceil(y1 * factor))),
                        max(0, math.floor(x0 * factor)), min(width, max(1, math.ceil(x1 * factor))))
                       for y0, y1, x0, x1 in boxes])
    multiple = config.size_multiple
    largest = max(max(b[1] - b[0], b[3] - b[2]) for boxes in scaled for b in boxes)
    patch = min(_round_up(settings.patch_size, multiple), _round_up(largest, multiple))
    return PreparedPairs(tiles, scaled, holdout, patch, nuclei, names, notes)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def finetune_train_config(source: CdalModel, settings: FinetuneConfig, patch_size: int) -> TrainConfig:
    """The loop's TrainConfig: the source's loss settings, the fine-tune's optimisation settings."""
    base = source.record.get("train_config") or {}
    values = {key: base[key] for key in SOURCE_LOSS_SETTINGS if key in base}
    values.update(steps=settings.steps, batch_size=settings.batch_size, patch_size=patch_size,
                  lr_g=settings.lr_g, lr_d=settings.lr_d, lr_min=min(settings.lr_min, settings.lr_g, settings.lr_d),
                  warmup_steps=min(settings.warmup_steps, settings.steps), ema_decay=settings.ema_decay,
                  augment=settings.augment, seed=settings.seed, checkpoint_every=settings.steps + 1,
                  validate_every=settings.validate_every)
    return TrainConfig.from_dict(values)


def source_summary(model: CdalModel) -> dict[str, Any]:
    """Where a fine-tuned model came from: the source file's name and its record's headline."""
    summary: dict[str, Any] = {"model": Path(model.source).name if model.source else "(in memory)"}
    summary.update({key: model.record[key] for key in SOURCE_SUMMARY_KEYS if key in model.record})
    return summary


def _patience_spent(validation: list[dict[str, Any]], best_step: int, patience: int) -> bool:
    return patience > 0 and sum(1 for row in validation if row["step"] > best_step) >= patience


def finetune(model: CdalModel, pairs: list[FinetunePair], config: FinetuneConfig | None = None,
             device: torch.device | str = "cpu", image_mpp: float = 0.25) -> Generator[Progress, None, None]:
    """Fine-tune a copy of `model` on corrected pairs; yields events, the last one 'done' with a FinetuneResult.

    Events: 'note' (text) first for each thing the user should know (a binary mask split), then
    'train' (step, steps, losses) every step; with a held-back strip also 'validate' (one
    per strip) and 'validate_done' (step, steps, scores), the first at step 0. `model` is never
    modified and nothing is written: closing the generator cancels the run and leaves no trace.
    Bad pairs raise ValueError at the first event (call prepare_pairs to check them up front).
    """
    settings = config or FinetuneConfig()
    device = torch.device(device)
    started = time.perf_counter()
    prepared = prepare_pairs(pairs, model.config, image_mpp, settings)
    for index, note in enumerate(prepared.notes):
        yield Progress("note", index + 1, len(prepared.notes), note)
    working = CdalModel(model.config, copy.deepcopy(model.generator), copy.deepcopy(model.discriminator),
                        {}, model.source).to(device)
    train_config = finetune_train_config(model, settings, prepared.patch_size)
    state = TrainState.create(working, train_config)
    sample_batch = make_patch_source(prepared.tiles, state, model.config, prepared.regions)

    best: dict[str, Any] = {}

    def keep_best(current: TrainState) -> None:
        best.update(step=current.step, model=current.exported_model())

    on_validate = make_validation(prepared.holdout, image_mpp, on_best=keep_best) if prepared.holdout else None
    if on_validate is not None:
        yield from on_validate(state)  # step 0: the starting weights are a candidate too
    stopped_early = False
    loop = training_loop(state, sample_batch, device, None, on_validate)
    try:
        for event in loop:
            if event.stage == "done":
                break
            yield event
            if event.stage == "validate_done" and _patience_spent(
                    state.record["validation"], best["step"], settings.patience):
                stopped_early = state.step < train_config.steps
                break
    finally:
        loop.close()

    final = best["model"] if best else state.exported_model()
    best_step = best.get("step")
    record = {
        "finetuned_from": source_summary(model),
        "data": f"fine-tune corrections ({len(prepared.names)} image{'s' if len(prepared.names) != 1 else ''})",
        "steps": state.step,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "train_config": train_config.to_dict(),
        "finetune": {
            "images": prepared.names,
            "pairs": len(prepared.names),
            "nuclei": prepared.nuclei,
            "image_mpp": image_mpp,
            "patch_size": prepared.patch_size,
            "settings": settings.to_dict(),
            "held_back": [tile.name for tile in prepared.holdout],
            "validation": state.record["validation"],
            "best_step": best_step,
            "stopped_early": stopped_early,
            "kept_start": best_step == 0,
            "history": state.record["history"],
            "notes": prepared.notes,
        },
    }
    final = CdalModel(final.config, final.generator, final.discriminator, record, "").eval()
    result = FinetuneResult(final, record, stopped_early, best_step, best_step == 0)
    yield Progress("done", state.step, train_config.steps, result)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def suggest_new_name(path: str | Path) -> Path:
    """A free file name beside `path`: <stem>-2<suffix>, -3, ... (an existing -N goes on counting)."""
    path = Path(path)
    suffix = "".join(path.suffixes) or ".safetensors"
    stem = path.name[: len(path.name) - len("".join(path.suffixes))] if path.suffixes else path.name
    match = re.fullmatch(r"(.*)-(\d+)", stem)
    base, number = (match.group(1), int(match.group(2)) + 1) if match else (stem, 2)
    while (candidate := path.with_name(f"{base}-{number}{suffix}")).exists():
        number += 1
    return candidate


def save_finetuned(model: CdalModel, path: str | Path) -> Path:
    """Write a fine-tuned model atomically at a new `path`; never replaces a file or the bundled model."""
    path = Path(path)
    if is_bundled(path):
        raise FinetuneSaveError(f"path {path} is the bundled model, which is never replaced; save the "
                                "fine-tuned model under a new name, e.g. cdal_finetuned.safetensors")
    if path.exists():
        raise FinetuneSaveError(f"path {path} already exists and a fine-tuned model never replaces a file; "
                                f"choose a new name, e.g. {suggest_new_name(path)}")
    try:
        save_model(path, model, replace=False)
    except FileExistsError as exc:
        raise FinetuneSaveError(f"path {path} appeared while saving and is kept; choose a new name, e.g. "
                                f"{suggest_new_name(path)}") from exc
    except OutputError as exc:
        reason = exc.reason
        raise FinetuneSaveError(f"could not write the fine-tuned model to {path} ({reason}); nothing was "
                                "written and the source model is unchanged: free some disk space or "
                                "choose another folder") from exc
    return path
