"""Scoring a model on tiles with ground truth: per-image Dice, IoU, AJI, PQ at full resolution."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from napari_cdal.engine.data.tiles import Tile
from napari_cdal.engine.defaults import AUGMENT_SAMPLES, DEFAULT_IMAGE_MPP, DEFAULT_THRESHOLD
from napari_cdal.engine.events import Progress, ticks_of
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import matched_nuclei, score_segmentation

METRICS = ("dice", "iou", "aji", "pq")


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The contract's JSON: per-image rows, means (None where no image has that metric), seconds per image."""
    mean: dict[str, float | None] = {}
    for key in METRICS:
        values = [row[key] for row in rows if row.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    seconds = [row["seconds"] for row in rows]
    return {"per_image": rows, "mean": mean, "seconds_per_image": float(np.mean(seconds)) if seconds else None}


def evaluate_tiles(
    model: CdalModel,
    tiles: list[Tile],
    image_mpp: float = DEFAULT_IMAGE_MPP,
    sampling_steps: int | None = None,
    samples: int | None = None,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    count_nuclei: bool = False,
    augment: bool = AUGMENT_SAMPLES,
) -> Generator[Progress, None, None]:
    """Segment each tile and score it; yields Progress('image', i, n, row), then 'done' with the summary.

    Ticks come in between, Progress('tick', tiles done, n): places to stop.

    With `count_nuclei` the summary also holds "nuclei": {"right", "truth"}, summed over the tiles
    (true nuclei matched at IoU > 0.5, and all true nuclei: matched_nuclei).
    """
    rows, right, truth = [], 0, 0
    for index, tile in enumerate(tiles):
        result = yield from ticks_of(
            segment_image(
                model,
                tile.image,
                image_mpp=image_mpp,
                sampling_steps=sampling_steps,
                samples=samples,
                seed=seed,
                threshold=threshold,
                keep_steps=False,
                with_attention=False,
                augment=augment,
            ),
            index,
            len(tiles),
        )
        truth_instances = tile.instances if tile.has_instance_truth else None
        scores = score_segmentation(result.labels, tile.foreground, truth_instances)
        if count_nuclei:
            found, total = matched_nuclei(result.labels, tile.instances)
            right, truth = right + found, truth + total
        row = {"image": tile.name, **scores, "nuclei": result.n_nuclei, "seconds": result.seconds}
        rows.append(row)
        yield Progress("image", index + 1, len(tiles), row)
    summary = summarise(rows)
    if count_nuclei:
        summary["nuclei"] = {"right": right, "truth": truth}
    yield Progress("done", len(tiles), len(tiles), summary)
