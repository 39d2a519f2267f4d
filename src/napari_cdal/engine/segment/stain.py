"""Honest counts on empty glass: nuclei are stained, so masks on white, black or flat grey are dropped.

A diffusion model asked to find nuclei finds some everywhere, also on a blank tile (the bundled
model gives 25-64 on white, black or flat grey). Haematoxylin makes every real nucleus a saturated
blue-purple: on the 30 MoNuSeg training tiles no annotated nucleus has a mean saturation (after a
1 µm blur) below 0.118, nor a mean brightest channel below 60 of 255. A predicted nucleus below
0.05 (less than half the first) or 20 (a third of the second) is not on stained tissue.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_cdal.engine.labels import nucleus_means, relabel_sequential

MIN_NUCLEUS_SATURATION = 0.05
"""Mean HSV saturation a nucleus needs (lowest of any annotated MoNuSeg nucleus: 0.118)."""

MIN_NUCLEUS_BRIGHTNESS = 20.0
"""Mean brightest channel (0..255) a nucleus needs; below it is black (out of the scan, pen)."""

MIN_GREY_CONTRAST = 3.0
"""A grey image whose blurred grey levels vary less than this (standard deviation) shows nothing."""

BLUR_UM = 1.0
"""Blur before measuring, in µm, so that scanner noise does not count as stain."""


def stained_nuclei(labels: np.ndarray, rgb: np.ndarray, image_mpp: float) -> np.ndarray:
    """Per id 1..N of `labels`, whether that nucleus lies on stained tissue of `rgb` (H x W x 3, 0..255)."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(0, dtype=bool)
    sigma = max(BLUR_UM / image_mpp, 0.5)
    # channel by channel, and max / min of three planes: the same numbers as blurring and reducing the H x W x 3
    # array, at a third of the time on a slide's block (numpy reduces a last axis of 3 slowly)
    red, green, blue = (ndi.gaussian_filter(np.asarray(rgb[..., c], np.float32), sigma) for c in range(3))
    brightest = np.maximum(np.maximum(red, green), blue)
    keep = nucleus_means(labels, brightest) >= MIN_NUCLEUS_BRIGHTNESS
    grey = np.array_equal(rgb[..., 1], rgb[..., 0]) and np.array_equal(rgb[..., 2], rgb[..., 0])
    if grey:  # no colour to judge by: only a flat image is refused outright
        return keep & (float(red.std()) >= MIN_GREY_CONTRAST)
    saturation = (brightest - np.minimum(np.minimum(red, green), blue)) / np.maximum(brightest, 1.0)
    return keep & (nucleus_means(labels, saturation) >= MIN_NUCLEUS_SATURATION)


def keep_stained(labels: np.ndarray, rgb: np.ndarray, image_mpp: float) -> np.ndarray:
    """`labels` without the nuclei off stained tissue, renumbered 1..M in their old order."""
    keep = stained_nuclei(labels, rgb, image_mpp)
    if keep.all():
        return labels
    lut = np.zeros(keep.size + 1, dtype=bool)
    lut[1:] = keep
    return relabel_sequential(np.where(lut[labels], labels, 0))[0].astype(labels.dtype)
