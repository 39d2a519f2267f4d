"""Per-nucleus measurements of a segmentation: what the mask layer's features table shows."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def nucleus_features(
    labels: np.ndarray,
    image_mpp: float,
    uncertainty: np.ndarray | None = None,
    attention: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One row per nucleus id 1..N: id, centroid (px), area µm², mean uncertainty, mean attention.

    A map that was not computed (uncertainty with one sample) gives NaN in its column, so the
    table keeps one shape.
    """
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    ids = np.arange(1, n + 1)
    flat = labels.astype(np.int64).ravel()
    area_px = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    present = area_px > 0

    def mean_of(values: np.ndarray | None) -> np.ndarray:
        if values is None:
            return np.full(n, np.nan)
        sums = np.bincount(flat, weights=np.asarray(values, np.float64).ravel(), minlength=n + 1)[
            1:
        ]
        return np.where(present, sums / np.maximum(area_px, 1), np.nan)

    centroids = (
        np.array(ndi.center_of_mass(np.ones(labels.shape), labels, ids)) if n else np.zeros((0, 2))
    )
    return {
        "index": ids,
        "centroid_y": centroids[:, 0] if n else np.zeros(0),
        "centroid_x": centroids[:, 1] if n else np.zeros(0),
        "area_um2": area_px * image_mpp * image_mpp,
        "mean_uncertainty": mean_of(uncertainty),
        "mean_attention": mean_of(attention),
    }


def review_order(features: dict[str, np.ndarray], key: str = "mean_uncertainty") -> np.ndarray:
    """Nucleus ids from the most to the least doubtful by `key` (NaN last, ties by id)."""
    values = np.asarray(features[key], np.float64)
    ids = np.asarray(features["index"])
    order = np.lexsort((ids, np.where(np.isnan(values), np.inf, -values)))
    return ids[order]
