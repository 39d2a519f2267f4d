"""Instance labels from probability maps: one id per nucleus, and the core targets used in training.

A nucleus *core* is the set of its pixels whose Euclidean distance to the nucleus border is at
least ``CORE_FRACTION`` times the largest such distance inside that nucleus. Cores of touching
nuclei never touch (they are separated by both nuclei's border pixels), so connected components of
a predicted core map are good watershed markers for splitting touching nuclei.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries, watershed

from napari_cdal.engine.labels import check_2d, check_labels, label_areas, label_sums, relabel_sequential

__all__ = [
    "CORE_FRACTION",
    "border_distance",
    "core_and_border_distance",
    "core_targets",
    "drop_unsure_small",
    "instances_from_probability",
]

CORE_FRACTION = 0.5
"""Fraction of a nucleus's largest border distance that a pixel needs to belong to its core."""

_SMOOTH_SIGMA = 1.0
_CROSS = ndi.generate_binary_structure(2, 1)
_SQUARE = ndi.generate_binary_structure(2, 2)


def _check_probability(array: object, name: str) -> np.ndarray:
    """Return ``array`` as a 2-D float map, raising ValueError unless its values lie in [0, 1]."""
    arr = check_2d(array, name)
    if arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if not (lo >= 0.0 and hi <= 1.0):
            raise ValueError(
                f"{name} must hold probabilities in [0, 1], got values in [{lo}, {hi}]; "
                "apply a sigmoid (or softmax) to the model output first and remove NaNs"
            )
    return arr


def _border_distances(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of a label image: its distance to its nucleus's border, and that nucleus's largest such distance."""
    compact, n = relabel_sequential(labels)
    if n == 0:
        return np.zeros(labels.shape), np.zeros(labels.shape)
    interior = (compact > 0) & ~find_boundaries(compact, connectivity=1, mode="inner")
    distance = ndi.distance_transform_edt(interior)
    largest = np.zeros(n + 1, dtype=np.float64)
    largest[1:] = ndi.maximum(distance, labels=compact, index=np.arange(1, n + 1))
    return distance, largest[compact]


def core_and_border_distance(instance_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The core mask and the relative distance to the border of a label image, from one distance transform.

    Core = pixels whose distance to their nucleus border is >= CORE_FRACTION x that nucleus's largest
    one (the second training target channel); the relative distance is that distance over the largest,
    0 outside, [0, 1] inside (the third, label encoding "foreground_core_distance"): it peaks once per
    nucleus and falls to 0 at every border, also where two nuclei touch, so it marks where to split.
    Nuclei too thin to have an interior (1-2 px) are core, and at 1, throughout.
    """
    labels = check_2d(instance_labels, "instance_labels")
    check_labels(labels, "instance_labels")
    distance, largest = _border_distances(labels)
    inside = labels > 0
    relative = np.divide(distance, largest, out=np.ones_like(distance), where=largest > 0)
    return inside & (distance >= CORE_FRACTION * largest), np.where(inside, relative, 0.0).astype(np.float32)


def border_distance(instance_labels: np.ndarray) -> np.ndarray:
    """Per pixel, its distance to its nucleus's border over that nucleus's largest one (core_and_border_distance)."""
    return core_and_border_distance(instance_labels)[1]


def core_targets(instance_labels: np.ndarray) -> np.ndarray:
    """Bool core mask of an instance label image, the watershed's markers to learn (core_and_border_distance)."""
    return core_and_border_distance(instance_labels)[0]


def _fill_small_holes(mask: np.ndarray, max_hole_area: int) -> np.ndarray:
    """Fill background regions of at most ``max_hole_area`` px that do not touch the image edge."""
    if max_hole_area <= 0:
        return mask
    holes, n = ndi.label(~mask, structure=_CROSS)
    if n == 0:
        return mask
    area = label_areas(holes, n)
    edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    fill = area <= max_hole_area
    fill[0] = False
    fill[edge] = False
    return mask | fill[holes]


def _drop_small(labels: np.ndarray, n: int, min_area: int) -> np.ndarray:
    """Zero every object of ``labels`` (ids 1..n) smaller than ``min_area`` pixels."""
    area = label_areas(labels, n)
    keep = area >= min_area
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def _distance_markers(smooth: np.ndarray, mask: np.ndarray, min_distance: int) -> np.ndarray:
    """Markers at maxima of the smoothed distance map within a disc of radius ``min_distance``."""
    yy, xx = np.mgrid[-min_distance : min_distance + 1, -min_distance : min_distance + 1]
    footprint = yy * yy + xx * xx <= min_distance * min_distance
    peaks = (smooth == ndi.maximum_filter(smooth, footprint=footprint)) & mask
    markers, _ = ndi.label(peaks, structure=_SQUARE)
    return markers


def _flood(landscape: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Watershed from ``markers`` inside ``mask``; unreached mask components get their own ids."""
    regions = watershed(landscape, markers, mask=mask, connectivity=1)
    rest, n_rest = ndi.label(mask & (regions == 0), structure=_CROSS)
    if n_rest:
        offset = int(regions.max())
        regions = np.where(rest > 0, rest + offset, regions)
    return regions


def instances_from_probability(
    foreground: np.ndarray,
    core: np.ndarray | None = None,
    threshold: float = 0.5,
    min_area: int = 8,
    *,
    min_distance: int = 4,
    max_hole_area: int = 16,
    min_core_area: int = 0,
    core_threshold: float | None = None,
    centre: np.ndarray | None = None,
) -> np.ndarray:
    """Turn nucleus (and optional core) probability maps into a uint32 label image, ids 1..N.

    Markers are core components above ``core_threshold`` (default: ``threshold``) of at least
    ``min_core_area`` px (or distance-map maxima at least ``min_distance`` px apart); a watershed
    splits touching nuclei. Mask components under ``min_area`` px are dropped as noise, smaller
    watershed fragments are merged into a neighbour, so no other mask pixel is lost. The flood
    climbs down ``centre`` (a map on [0, 1] that peaks inside nuclei: the core probability or a
    predicted distance to the border) where given, with the smoothed distance to the thresholded
    mask's border breaking its ties; else down that distance alone.
    """
    fg = _check_probability(foreground, "foreground")
    if core is not None:
        core_map = _check_probability(core, "core")
        if core_map.shape != fg.shape:
            raise ValueError(
                f"core must have the shape of foreground {fg.shape}, got {core_map.shape}; "
                "pass the two channels predicted for the same tile"
            )
    if centre is not None and _check_probability(centre, "centre").shape != fg.shape:
        raise ValueError(f"centre must have the shape of foreground {fg.shape}, got {np.shape(centre)}")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}; use e.g. 0.5")
    if int(min_area) != min_area or min_area < 0:
        raise ValueError(f"min_area must be an integer >= 0 (pixels), got {min_area}; use e.g. 8")
    if int(min_distance) != min_distance or min_distance < 1:
        raise ValueError(
            f"min_distance must be an integer >= 1 (pixels), got {min_distance}; "
            "use about the smallest nucleus radius, e.g. 4"
        )
    if int(min_core_area) != min_core_area or min_core_area < 0:
        raise ValueError(f"min_core_area must be an integer >= 0 (pixels), got {min_core_area}")
    core_threshold = threshold if core_threshold is None else core_threshold
    if not 0.0 < float(core_threshold) < 1.0:
        raise ValueError(f"core_threshold must lie strictly between 0 and 1, got {core_threshold}")
    if int(max_hole_area) != max_hole_area or max_hole_area < 0:
        raise ValueError(f"max_hole_area must be an integer >= 0 (pixels), got {max_hole_area}; use e.g. 16")

    mask = _fill_small_holes(fg > threshold, int(max_hole_area))
    components, n_components = ndi.label(mask, structure=_CROSS)
    if n_components == 0:
        return np.zeros(fg.shape, dtype=np.uint32)
    mask = _drop_small(components, n_components, int(min_area)) > 0
    if not mask.any():
        return np.zeros(fg.shape, dtype=np.uint32)

    smooth = ndi.gaussian_filter(ndi.distance_transform_edt(mask), sigma=_SMOOTH_SIGMA)
    if core is not None:
        markers, n_markers = ndi.label((core_map > core_threshold) & mask, structure=_SQUARE)
        if min_core_area > 1 and n_markers:
            markers, _ = relabel_sequential(_drop_small(markers, n_markers, int(min_core_area)))
    else:
        markers = _distance_markers(smooth, mask, int(min_distance))
    landscape = -smooth
    if centre is not None:  # the centre map decides; the distance to the mask's border only breaks its ties
        landscape = landscape - ndi.gaussian_filter(np.asarray(centre, np.float64), _SMOOTH_SIGMA) * (smooth.max() + 1)
    regions = _flood(landscape, markers, mask)

    area = label_areas(regions)
    small = area < min_area
    small[0] = False
    n_markers = int(markers.max())
    if small[1 : n_markers + 1].any():
        markers = np.where(small[markers], 0, markers)
        regions = _flood(landscape, markers, mask)

    relabelled, _ = relabel_sequential(regions)
    return relabelled.astype(np.uint32)


def drop_unsure_small(labels: np.ndarray, foreground: np.ndarray, small_area: int, floor: float) -> np.ndarray:
    """`labels` without the nuclei under `small_area` px whose mean foreground probability is under `floor`, renumbered.

    Specks are where the model is least right: a small nucleus must be a confident one.
    """
    n = int(labels.max(initial=0))
    if n == 0 or small_area <= 0:
        return labels
    area = label_areas(labels, n)
    sums = label_sums(labels, foreground, n)
    drop = (area < small_area) & (sums < floor * area)
    drop[0] = False
    if not drop.any():
        return labels
    return relabel_sequential(np.where(drop[labels], 0, labels))[0].astype(labels.dtype)


def split_binary_mask(mask: np.ndarray, min_distance: int) -> tuple[np.ndarray, int]:
    """Instances of a binary nucleus mask, touching nuclei split by the distance-map watershed.

    Returns the uint32 labels and how many connected blobs were split into several nuclei. Every
    mask pixel keeps a label (no size limit, no hole filling): the mask is someone's drawing.
    """
    foreground = np.asarray(mask) > 0
    labels = instances_from_probability(
        foreground.astype(np.float32), None, 0.5, 1, min_distance=min_distance, max_hole_area=0
    )
    blobs, n_blobs = ndi.label(foreground, structure=_CROSS)
    if n_blobs == 0:
        return labels, 0
    pieces = np.unique(np.stack([blobs.ravel(), labels.ravel().astype(np.int64)]), axis=1)
    per_blob = np.bincount(pieces[0][pieces[0] > 0], minlength=n_blobs + 1)
    return labels, int(np.count_nonzero(per_blob > 1))
