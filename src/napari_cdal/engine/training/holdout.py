"""What fine-tuning holds back to check itself: a strip of the largest corrected region or whole regions, each
scored in its context, all held-back parts as one image."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from napari_cdal.engine.events import Progress, ticks_of
from napari_cdal.engine.labels import relabel_sequential
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import matched_nuclei, score_segmentation
from napari_cdal.engine.segment.windows import Box

MIN_HOLDOUT_UM = 16.0
"""Smallest side of a held-back strip (and of what stays for training), in µm: about two nuclei."""

MIN_HELD_REGIONS = 4
"""From this many corrected regions up, whole regions are held back (a share of them, spread over the
list); with fewer, a strip of the largest. Review's items make many small regions, none wide enough
for a strip."""

CONTEXT_UM = 32.0
"""Image round a held-back part that the model sees when it is scored, in µm; only the part is scored,
so the check judges the model as Segment runs it, with the tissue around."""


@dataclass
class HeldBack:
    """A held-back part of the corrections, scored in its context: the crop the model sees, the window scored.

    `scored` (the window's shape) marks the pixels inside the held-back regions: overlapping regions are held
    back together, and the window is their bounding box.
    """

    name: str
    image: np.ndarray
    instances: np.ndarray
    window: Box
    instance_truth: bool
    scored: np.ndarray


def nuclei_in(instances: np.ndarray, boxes: list[Box]) -> int:
    """How many nuclei of `instances` have pixels inside the boxes."""
    inside = np.zeros(instances.shape, dtype=bool)
    for y0, y1, x0, x1 in boxes:
        inside[y0:y1, x0:x1] = True
    ids = np.unique(instances[inside])
    return int(np.count_nonzero(ids))


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _hold_back_strip(boxes: list[Box], fraction: float, min_side: int) -> tuple[list[Box], list[list[Box]]]:
    """Cut the far end of the largest box (along its longer side) off for validation, when both parts fit.

    The strip is `fraction` of the side, but at least `min_side`: a small region gives up a larger
    share, so that it too is checked.
    """
    k = max(range(len(boxes)), key=lambda i: (boxes[i][1] - boxes[i][0]) * (boxes[i][3] - boxes[i][2]))
    y0, y1, x0, x1 = boxes[k]
    along_y = (y1 - y0) >= (x1 - x0)
    side = (y1 - y0) if along_y else (x1 - x0)
    held = max(int(round(side * fraction)), min_side)
    if side - held < min_side:
        return boxes, []
    if along_y:
        train, hold = (y0, y1 - held, x0, x1), (y1 - held, y1, x0, x1)
    else:
        train, hold = (y0, y1, x0, x1 - held), (y0, y1, x1 - held, x1)
    others = boxes[:k] + boxes[k + 1 :]
    if any(_overlaps(hold, other) for other in others):
        return boxes, []
    return others[:k] + [train] + others[k:], [[hold]]


def overlap_groups(boxes: list[Box]) -> list[list[int]]:
    """The boxes' indices grouped by overlap (chains of overlapping boxes form one group), in list order."""
    group = list(range(len(boxes)))

    def root(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if _overlaps(boxes[i], boxes[j]):
                group[root(j)] = root(i)
    grouped: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        grouped.setdefault(root(i), []).append(i)
    return sorted(grouped.values())


def _hold_back_regions(boxes: list[Box], fraction: float, instances: np.ndarray) -> tuple[list[Box], list[list[Box]]]:
    """Hold back whole regions, overlapping ones together: groups spread over the list until `fraction` of the
    regions (at least one group) is held, each group holding a nucleus, and at least one group left to train."""
    groups = overlap_groups(boxes)
    candidates = [g for g in groups if nuclei_in(instances, [boxes[i] for i in g])]
    if len(groups) < 2 or not candidates:
        return boxes, []
    wanted = max(1, int(round(len(boxes) * fraction)))
    held: list[list[int]] = []
    for count in range(1, min(len(candidates), len(groups) - 1) + 1):
        held = [candidates[int((m + 0.5) * len(candidates) / count)] for m in range(count)]
        if sum(map(len, held)) >= wanted:
            break
    taken = {i for g in held for i in g}
    return [b for i, b in enumerate(boxes) if i not in taken], [[boxes[i] for i in g] for g in held]


def hold_back(
    boxes: list[Box], fraction: float, min_side: int, instances: np.ndarray
) -> tuple[list[Box], list[list[Box]]]:
    """Split the corrected regions into those that train and the groups of them held back to check the result."""
    if fraction <= 0:
        return boxes, []
    if len(boxes) >= MIN_HELD_REGIONS:
        return _hold_back_regions(boxes, fraction, instances)
    return _hold_back_strip(boxes, fraction, min_side)


def in_context(
    name: str, image: np.ndarray, instances: np.ndarray, group: list[Box], context: int, instance_truth: bool
) -> HeldBack:
    """Held-back boxes (overlapping ones) with `context` pixels of image round their bounding box."""
    height, width = instances.shape
    y0, y1 = min(b[0] for b in group), max(b[1] for b in group)
    x0, x1 = min(b[2] for b in group), max(b[3] for b in group)
    cy0, cy1, cx0, cx1 = max(0, y0 - context), min(height, y1 + context), max(0, x0 - context), min(width, x1 + context)
    scored = np.zeros((y1 - y0, x1 - x0), bool)
    for by0, by1, bx0, bx1 in group:
        scored[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = True
    return HeldBack(
        name,
        np.rint(image[cy0:cy1, cx0:cx1]).astype(np.uint8),
        instances[cy0:cy1, cx0:cx1],
        (y0 - cy0, y1 - cy0, x0 - cx0, x1 - cx0),
        instance_truth,
        scored,
    )


def evaluate_held_back(
    model: CdalModel, parts: list[HeldBack], image_mpp: float, seed: int = 0
) -> Generator[Progress, None, None]:
    """Segment each held-back part in its context and score the windows together (as one image, so a small
    window weighs by its nuclei); yields Progress('image', i, n), ticks between, then 'done' with the summary
    (`mean` as evaluate_tiles', `nuclei` right and truth)."""
    predicted, truth = [], []
    for index, part in enumerate(parts):
        result = yield from ticks_of(
            segment_image(model, part.image, image_mpp=image_mpp, seed=seed, keep_steps=False, with_attention=False),
            index,
            len(parts),
        )
        y0, y1, x0, x1 = part.window
        predicted.append(np.where(part.scored, result.labels[y0:y1, x0:x1], 0))
        truth.append(np.where(part.scored, part.instances[y0:y1, x0:x1], 0))
        yield Progress("image", index + 1, len(parts), {"image": part.name})
    pred_canvas, true_canvas = side_by_side(predicted), side_by_side(truth)
    scores = score_segmentation(
        pred_canvas, true_canvas > 0, true_canvas if all(part.instance_truth for part in parts) else None
    )
    right, total = matched_nuclei(pred_canvas, true_canvas)
    yield Progress("done", len(parts), len(parts), {"mean": scores, "nuclei": {"right": right, "truth": total}})


def side_by_side(labels: list[np.ndarray]) -> np.ndarray:
    """Label images in one row, a background column between them, ids renumbered so none is shared."""
    height = max(part.shape[0] for part in labels)
    canvas = np.zeros((height, sum(part.shape[1] for part in labels) + len(labels) - 1), dtype=np.uint32)
    x, offset = 0, 0
    for part in labels:
        relabelled, count = relabel_sequential(part)
        canvas[: part.shape[0], x : x + part.shape[1]] = np.where(relabelled > 0, relabelled + offset, 0)
        offset += count
        x += part.shape[1] + 1
    return canvas
