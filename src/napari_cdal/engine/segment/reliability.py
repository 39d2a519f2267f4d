"""Does a map point at the mask's mistakes? Error AUROC per pixel and per nucleus, with baselines.

A pixel is wrong when the predicted foreground and the true one disagree. A predicted nucleus is
wrong when no true nucleus overlaps it with IoU >= 0.5. A map scores a mistake well when it is
higher on wrong pixels (or on the mean over wrong nuclei) than on right ones: its AUROC.
Two trivial baselines say what a map has to beat: nearness to the predicted outline (most pixel
errors lie on borders) and smallness (small fragments are often wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.stats import rankdata
from skimage.segmentation import find_boundaries

MATCH_IOU = 0.5
CLEAR_ERROR_IOU = 0.3


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for boolean `positive` (ties count half).

    None when one class is empty.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pixel_errors(labels: np.ndarray, truth_foreground: np.ndarray) -> np.ndarray:
    """Where the predicted foreground disagrees with the true one."""
    return (np.asarray(labels) > 0) ^ (np.asarray(truth_foreground) > 0)


def outline_nearness(labels: np.ndarray) -> np.ndarray:
    """Baseline score: minus the distance (px) to the predicted nuclei's outlines."""
    outline = find_boundaries(np.asarray(labels), mode="thick")
    if not outline.any():
        return np.zeros(outline.shape, dtype=np.float32)
    return -ndi.distance_transform_edt(~outline).astype(np.float32)


@dataclass(frozen=True)
class Overlaps:
    """Every (predicted, true) pair of nuclei that share pixels: ids, shared pixels, IoU; and the areas by id."""

    pred: np.ndarray
    true: np.ndarray
    pixels: np.ndarray
    iou: np.ndarray
    pred_area: np.ndarray
    """Pixels of each predicted id 0..N (0: background)."""
    true_area: np.ndarray
    """Pixels of each true id 0..M."""


def overlaps(labels: np.ndarray, truth_instances: np.ndarray) -> Overlaps:
    """The overlap table of predicted `labels` and `truth_instances`, both ids 1.. on one grid."""
    pred = np.asarray(labels).astype(np.int64).ravel()
    true = np.asarray(truth_instances).astype(np.int64).ravel()
    n_pred, n_true = int(pred.max(initial=0)), int(true.max(initial=0))
    pred_area = np.bincount(pred, minlength=n_pred + 1)
    true_area = np.bincount(true, minlength=n_true + 1)
    both = (pred > 0) & (true > 0)
    pairs, pixels = np.unique(pred[both] * (n_true + 1) + true[both], return_counts=True)
    p, q = pairs // (n_true + 1), pairs % (n_true + 1)
    return Overlaps(p, q, pixels, pixels / (pred_area[p] + true_area[q] - pixels), pred_area, true_area)


def best_match_iou(labels: np.ndarray, truth_instances: np.ndarray) -> np.ndarray:
    """For ids 1..N of `labels`: the best IoU of each with any true nucleus (0 where none overlaps)."""
    table = overlaps(labels, truth_instances)
    best = np.zeros(len(table.pred_area))
    np.maximum.at(best, table.pred, table.iou)
    return best[1:]


def wrong_nuclei(labels: np.ndarray, truth_instances: np.ndarray) -> np.ndarray:
    """For ids 1..N of `labels`: True where no true nucleus overlaps it with IoU >= MATCH_IOU."""
    return best_match_iou(labels, truth_instances) < MATCH_IOU


def clear_error_auroc(scores: np.ndarray, best_iou: np.ndarray) -> float | None:
    """Per-nucleus error AUROC on clear errors: best IoU < CLEAR_ERROR_IOU against matched nuclei (>= MATCH_IOU).

    Nuclei in between are border disagreements (the annotators' convention, close to
    unpredictable) and are left out of this figure.
    """
    scores, best_iou = np.asarray(scores), np.asarray(best_iou)
    kept = (best_iou < CLEAR_ERROR_IOU) | (best_iou >= MATCH_IOU)
    return auroc(scores[kept], best_iou[kept] < CLEAR_ERROR_IOU)
