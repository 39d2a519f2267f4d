"""Per-nucleus measurements of a segmentation: what the mask layer's features table shows."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_cdal.engine.labels import label_areas, label_sums


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
    area_px = label_areas(flat, n)[1:].astype(np.float64)
    present = area_px > 0

    def mean_of(values: np.ndarray | None) -> np.ndarray:
        if values is None:
            return np.full(n, np.nan)
        sums = label_sums(flat, values, n)[1:]
        return np.where(present, sums / np.maximum(area_px, 1), np.nan)

    with np.errstate(invalid="ignore", divide="ignore"):  # ids with no pixel get NaN, not a warning
        centroids = np.array(ndi.center_of_mass(np.ones(labels.shape), labels, ids)) if n else np.zeros((0, 2))
    return {
        "index": ids,
        "centroid_y": centroids[:, 0] if n else np.zeros(0),
        "centroid_x": centroids[:, 1] if n else np.zeros(0),
        "area_um2": area_px * image_mpp * image_mpp,
        "mean_uncertainty": mean_of(uncertainty),
        "mean_attention": mean_of(attention),
    }


def nucleus_measurements(
    labels: np.ndarray,
    image: np.ndarray | None,
    image_mpp: float,
    uncertainty: np.ndarray | None = None,
    origin: tuple[int, int] = (0, 0),
) -> dict[str, np.ndarray]:
    """The table QuPath and a spreadsheet get: one row per nucleus id, in µm where a size is meant.

    Columns: id, centroid (px and µm), area µm², perimeter µm, eccentricity, solidity, mean
    haematoxylin optical density (colour deconvolution of the RGB image, Ruifrok & Johnston) and
    mean uncertainty (NaN where none was computed, or without an image). `image` is H x W x 3 on
    0..255. `origin` (row, column) places a crop in the whole image: centroids are given there.
    """
    from skimage.color import rgb2hed
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2 or (image is not None and np.asarray(image).shape[:2] != labels.shape):
        raise ValueError(f"labels {labels.shape} and image {np.asarray(image).shape} must cover the same 2-D grid")
    base = nucleus_features(labels, image_mpp, uncertainty)
    present = base["area_um2"] > 0  # ids below the largest that label no pixel have no row
    ids = base["index"][present]
    shape = regionprops_table(labels.astype(np.int64), properties=("label", "perimeter", "eccentricity", "solidity"))
    order = np.searchsorted(shape["label"], ids)
    area_px = base["area_um2"][present] / (image_mpp * image_mpp)
    if image is None:
        haematoxylin_od = np.full(len(ids), np.nan)
    else:
        inside = labels.ravel() > 0  # deconvolved per pixel: only the nuclei's pixels are needed
        rgb = np.asarray(image).reshape(-1, np.asarray(image).shape[-1])[inside]
        haematoxylin = rgb2hed(np.clip(np.asarray(rgb, np.float64) / 255.0, 0.0, 1.0))[..., 0]
        od_sum = np.bincount(labels.ravel()[inside].astype(np.int64), weights=haematoxylin, minlength=len(present) + 1)
        haematoxylin_od = od_sum[1:][present] / area_px
    centroid_y = base["centroid_y"][present] + origin[0]
    centroid_x = base["centroid_x"][present] + origin[1]
    return {
        "id": ids,
        "centroid_x_px": centroid_x,
        "centroid_y_px": centroid_y,
        "centroid_x_um": centroid_x * image_mpp,
        "centroid_y_um": centroid_y * image_mpp,
        "area_um2": base["area_um2"][present],
        "perimeter_um": shape["perimeter"][order] * image_mpp,
        "eccentricity": shape["eccentricity"][order],
        "solidity": shape["solidity"][order],
        "mean_hematoxylin_od": haematoxylin_od,
        "mean_uncertainty": base["mean_uncertainty"][present],
    }
