"""Segmentation scores for nuclei: foreground Dice/IoU and instance-level AJI and PQ.

Instance scores are computed from one sparse overlap table between ground-truth and predicted ids,
so they cost a few array passes whatever the number of nuclei. Label images may use any integer
dtype with 0 = background; ids need not be consecutive.
"""

from __future__ import annotations

import numpy as np

from napari_cdal.engine.labels import check_2d, check_labels, relabel_sequential_uint

__all__ = [
    "aggregated_jaccard_index",
    "dice",
    "iou",
    "panoptic_quality",
    "score_segmentation",
]


def _check_pair(pred: object, truth: object, pred_name: str, truth_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return both inputs as 2-D numeric ndarrays of one shape, raising ValueError otherwise."""
    arrays = []
    for array, name in ((pred, pred_name), (truth, truth_name)):
        arrays.append(check_2d(array, name, "score one 2-D tile at a time (e.g. arr.squeeze() or arr[..., 0])"))
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(
            f"{pred_name} and {truth_name} must have the same shape, got {arrays[0].shape} and "
            f"{arrays[1].shape}; crop or resize the prediction to the ground-truth tile"
        )
    return arrays[0], arrays[1]


def _overlaps(pred_labels: np.ndarray, truth_labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sparse overlap table of two label images.

    Returns (truth_area, pred_area, pair_truth, pair_pred, pair_inter, pair_iou): areas indexed by
    compact id 1..N (index 0 unused) and one row per overlapping (truth, pred) pair.
    """
    pred, truth = _check_pair(pred_labels, truth_labels, "pred_labels", "truth_labels")
    check_labels(pred, "pred_labels")
    check_labels(truth, "truth_labels")
    t_ids = relabel_sequential_uint(truth).ravel()
    p_ids = relabel_sequential_uint(pred).ravel()
    n_t = int(t_ids.max()) if t_ids.size else 0
    n_p = int(p_ids.max()) if p_ids.size else 0
    t_area = np.bincount(t_ids, minlength=n_t + 1)
    p_area = np.bincount(p_ids, minlength=n_p + 1)
    both = (t_ids > 0) & (p_ids > 0)
    keys = t_ids[both].astype(np.int64) * (n_p + 1) + p_ids[both]
    if (n_t + 1) * (n_p + 1) <= max(1 << 22, 4 * t_ids.size):
        counts = np.bincount(keys, minlength=(n_t + 1) * (n_p + 1))
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(keys, return_counts=True)
    pair_t, pair_p = np.divmod(keys, n_p + 1)
    union = t_area[pair_t] + p_area[pair_p] - inter
    return t_area, p_area, pair_t, pair_p, inter, inter / union


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground Dice of (pred > 0) vs (truth > 0); 1.0 when both are empty."""
    p, t = _check_pair(pred, truth, "pred", "truth")
    p, t = p > 0, t > 0
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & t)) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU (Jaccard) of (pred > 0) vs (truth > 0); 1.0 when both are empty."""
    p, t = _check_pair(pred, truth, "pred", "truth")
    p, t = p > 0, t > 0
    union = int(np.count_nonzero(p | t))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & t)) / union


def aggregated_jaccard_index(pred_labels: np.ndarray, truth_labels: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017, IEEE TMI), the classic definition.

    Each true nucleus takes its max-IoU overlapping prediction (which may serve several); unused
    predictions add their area to the union. 1.0 when both images are empty.
    """
    t_area, p_area, pair_t, pair_p, inter, pair_iou = _overlaps(pred_labels, truth_labels)
    n_t, n_p = t_area.size - 1, p_area.size - 1
    if n_t == 0:
        return 1.0 if n_p == 0 else 0.0
    order = np.lexsort((pair_p, -pair_iou, pair_t))
    sorted_t = pair_t[order]
    first = np.ones(sorted_t.size, dtype=bool)
    first[1:] = sorted_t[1:] != sorted_t[:-1]
    best = order[first]
    matched_p, matched_inter = pair_p[best], inter[best]

    used = np.zeros(n_p + 1, dtype=bool)
    used[matched_p] = True
    numerator = int(matched_inter.sum())
    denominator = int(t_area[1:].sum()) + int(p_area[matched_p].sum()) - numerator + int(p_area[1:][~used[1:]].sum())
    return numerator / denominator


def panoptic_quality(pred_labels: np.ndarray, truth_labels: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Panoptic quality (Kirillov et al. 2019) as keys ``pq``, ``dq``, ``sq``; 1.0 if both empty.

    A match is a (truth, pred) pair with IoU > iou_threshold; thresholds >= 0.5 make matches unique.
    """
    threshold = float(iou_threshold)
    if not 0.5 <= threshold < 1.0:
        raise ValueError(
            f"iou_threshold must lie in [0.5, 1), got {iou_threshold}; below 0.5 matches are not "
            "unique without an assignment step, so use 0.5 (the standard value)"
        )
    t_area, p_area, _, _, _, pair_iou = _overlaps(pred_labels, truth_labels)
    n_t, n_p = t_area.size - 1, p_area.size - 1
    if n_t == 0 and n_p == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    matched = pair_iou[pair_iou > threshold]
    tp = int(matched.size)
    fp, fn = n_p - tp, n_t - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(matched.sum()) / tp if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq}


def matched_nuclei(pred_labels: np.ndarray, truth_labels: np.ndarray, iou_threshold: float = 0.5) -> tuple[int, int]:
    """(true nuclei found by one predicted nucleus at IoU > iou_threshold, true nuclei): "31 of 40 nuclei right"."""
    if not 0.5 <= float(iou_threshold) < 1.0:
        raise ValueError(f"iou_threshold must lie in [0.5, 1) so that matches are unique, got {iou_threshold}")
    t_area, _, _, _, _, pair_iou = _overlaps(pred_labels, truth_labels)
    return int(np.count_nonzero(pair_iou > iou_threshold)), int(t_area.size - 1)


def score_segmentation(
    pred_labels: np.ndarray, truth_binary: np.ndarray, truth_labels: np.ndarray | None
) -> dict[str, float | None]:
    """Scores of one tile: ``dice`` and ``iou`` on the foreground, ``aji`` and ``pq`` on instances.

    ``aji`` and ``pq`` are None when no ground-truth instance labels are available.
    """
    _check_pair(pred_labels, truth_binary, "pred_labels", "truth_binary")
    scores: dict[str, float | None] = {
        "dice": dice(pred_labels, truth_binary),
        "iou": iou(pred_labels, truth_binary),
        "aji": None,
        "pq": None,
    }
    if truth_labels is not None:
        scores["aji"] = aggregated_jaccard_index(pred_labels, truth_labels)
        scores["pq"] = panoptic_quality(pred_labels, truth_labels)["pq"]
    return scores
