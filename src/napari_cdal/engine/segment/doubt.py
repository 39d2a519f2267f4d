"""The uncertainty as doubt, not borders: what the uncertainty layer paints, per nucleus and beyond the soft edges.

Per pixel, the spread over samples is highest on every nucleus's soft border, so the raw map reads as
an edge map and hides the nuclei the model really doubts. Painted per nucleus (each nucleus filled
with its own mean), a doubtful nucleus stands out as a bright blob; outside the nuclei, the spread is
kept only beyond a ring around each outline, where it marks places the model half-saw (candidate
misses) rather than the width of an edge.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_cdal.engine.labels import nucleus_means

BORDER_RING_UM = 1.5
"""Outside the nuclei, the spread within this distance of a predicted outline is a soft edge and left out."""


def nucleus_mean_map(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each nucleus of `labels` filled with the mean of `values` over it; 0 outside the nuclei."""
    means = np.concatenate([[0.0], nucleus_means(labels, values)]).astype(np.float32)
    return means[np.asarray(labels).astype(np.int64)]


def doubt_map(labels: np.ndarray, uncertainty: np.ndarray, image_mpp: float) -> np.ndarray:
    """The uncertainty layer: nuclei painted with their mean spread, and the spread beyond their soft borders."""
    labels = np.asarray(labels)
    uncertainty = np.asarray(uncertainty, dtype=np.float32)
    inside = labels > 0
    ring_px = BORDER_RING_UM / image_mpp
    beyond = ndi.distance_transform_edt(~inside) > ring_px if inside.any() else np.ones(labels.shape, bool)
    return np.where(inside, nucleus_mean_map(labels, uncertainty), np.where(beyond, uncertainty, 0.0)).astype(
        np.float32
    )
