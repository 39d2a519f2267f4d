"""Where a slide holds tissue, decided on a low-resolution view, so that blocks of bare glass are never segmented.

As QuPath and TIAToolbox do: the slide is looked at about 8 µm per pixel (a 1.25x overview, read
from the pyramid level nearest to it, else from level 0 block by block), stained tissue is told
from glass by Otsu's threshold on the HSV saturation, clamped so that a slide of glass only or of
tissue only is not split in two, and specks smaller than a minimum area are dropped. A block is
segmented only where the mask, widened by a margin, touches its core, and only the part of it the
widened mask covers (with the halo) is read. A grey slide (one channel) has no stain colour to
tell tissue by: all of it counts as tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_cdal.engine.segment.windows import Box
from napari_cdal.engine.slide.source import SlideSource

TISSUE_MPP = 8.0
"""µm per pixel of the tissue mask: the 1.25x overview tissue detectors work at."""

SATURATION_RANGE = (0.04, 0.1)
"""Otsu's saturation level is kept within these: glass and white background lie below 0.04, pale eosin above 0.1,
so a slide of glass only finds no tissue and one of tissue only is not split between pink and purple."""

MIN_TISSUE_UM2 = 10_000.0
"""Smallest piece of tissue kept, in µm² (QuPath's default: 100 x 100 µm); smaller specks are dust."""

MIN_TISSUE_SHARE = 0.01
"""...but never more than this share of the slide, so a small image segmented as a slide keeps its tissue."""

TISSUE_MARGIN_UM = 16.0
"""The mask is widened by this much before blocks are chosen: a nucleus at the tissue's edge is not lost to the
mask's coarse pixels."""

OVERVIEW_WINDOW_PX = 2048
"""Side of the windows a level is read in when a mask is made from it (a few tens of MB each)."""


@dataclass
class TissueMask:
    """Tissue (True) on a coarse grid: mask pixel (i, j) covers slide pixels [i*factor, (i+1)*factor) in each axis."""

    mask: np.ndarray
    factor: float
    image_mpp: float

    def area_mm2(self) -> float:
        """The tissue's area in mm²."""
        return float(self.mask.sum()) * (self.factor * self.image_mpp) ** 2 / 1e6

    def widened(self) -> np.ndarray:
        """The mask widened by TISSUE_MARGIN_UM (at least one mask pixel)."""
        steps = max(1, math.ceil(TISSUE_MARGIN_UM / (self.factor * self.image_mpp)))
        return ndi.binary_dilation(self.mask, iterations=steps) if self.mask.any() else self.mask


def slide_area_mm2(height: int, width: int, image_mpp: float) -> float:
    """A slide's area in mm²."""
    return height * width * image_mpp**2 / 1e6


def tissue_part(widened: np.ndarray, factor: float, core: Box) -> Box | None:
    """The part of a block's core (y0, y1, x0, x1) that the widened mask touches, as a box; None when it is glass."""
    y0, y1, x0, x1 = core
    my0, mx0 = int(y0 // factor), int(x0 // factor)
    my1, mx1 = math.ceil(y1 / factor), math.ceil(x1 / factor)
    rows, cols = np.nonzero(widened[my0:my1, mx0:mx1])
    if rows.size == 0:
        return None
    return (
        max(y0, math.floor((my0 + rows.min()) * factor)),
        min(y1, math.ceil((my0 + rows.max() + 1) * factor)),
        max(x0, math.floor((mx0 + cols.min()) * factor)),
        min(x1, math.ceil((mx0 + cols.max() + 1) * factor)),
    )


def _window(level: Any, stride: int) -> tuple[int, int]:
    """Rows and columns a level is read in for the overview: about OVERVIEW_WINDOW_PX² pixels, whole multiples of
    `stride`; a level in strips is read whole strips at a time, full width, so each strip is decoded about once."""
    height, width = level.shape[:2]
    side = stride * max(1, OVERVIEW_WINDOW_PX // stride)
    chunks = getattr(level, "chunks", None)
    if chunks is None or chunks[1] < width:  # tiles, or pixels mapped from the file: any window reads only itself
        return side, side
    rows = max(chunks[0], OVERVIEW_WINDOW_PX**2 // width)
    return stride * -(-rows // stride), width


def _pooled(level: Any, stride: int) -> np.ndarray:
    """A level (lazy array, H x W or H x W x C) averaged over stride x stride pixels, read window by window."""
    height, width = level.shape[:2]
    rows, cols = -(-height // stride), -(-width // stride)
    channels = level.shape[2] if len(level.shape) == 3 else 1
    out = np.zeros((rows, cols, channels), np.float32)
    window_rows, window_cols = _window(level, stride)
    for y in range(0, height, window_rows):
        for x in range(0, width, window_cols):
            part = np.asarray(level[y : y + window_rows, x : x + window_cols]).reshape(
                min(window_rows, height - y), min(window_cols, width - x), channels
            )
            ph, pw = -(-part.shape[0] // stride), -(-part.shape[1] // stride)
            if part.shape[:2] != (ph * stride, pw * stride):  # the slide's last rows or columns: edge values repeated
                part = np.pad(
                    part, ((0, ph * stride - part.shape[0]), (0, pw * stride - part.shape[1]), (0, 0)), mode="edge"
                )
            out[y // stride : y // stride + ph, x // stride : x // stride + pw] = part.reshape(
                ph, stride, pw, stride, channels
            ).mean(axis=(1, 3), dtype=np.float32)
    return out


def overview(source: SlideSource, factor: float) -> tuple[np.ndarray, float]:
    """The slide at about 1/`factor` of its resolution and the factor it has: from the coarsest pyramid level not
    coarser than that, averaged further as needed."""
    levels = source.levels()
    downsamples = [source.width / level.shape[1] for level in levels]
    k = max(index for index, down in enumerate(downsamples) if down <= max(1.0, factor) * 1.01)
    stride = max(1, round(factor / downsamples[k]))
    return _pooled(levels[k], stride), downsamples[k] * stride


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of H x W x 3 (or more) pixels, 0 where a pixel is black."""
    brightest, darkest = rgb[..., :3].max(axis=-1), rgb[..., :3].min(axis=-1)
    return np.where(brightest > 0, (brightest - darkest) / np.maximum(brightest, 1e-6), 0.0).astype(np.float32)


def detect_tissue(source: SlideSource, image_mpp: float) -> TissueMask:
    """The tissue mask of a slide at about TISSUE_MPP µm per pixel (see the module's note for the rule)."""
    from skimage.filters import threshold_otsu

    pixels, factor = overview(source, TISSUE_MPP / image_mpp)
    if pixels.shape[-1] < 3:  # a grey slide: no stain colour to tell tissue by
        return TissueMask(np.ones(pixels.shape[:2], bool), factor, image_mpp)
    values = saturation(pixels)
    low, high = SATURATION_RANGE
    level = float(np.clip(threshold_otsu(values) if values.max() > values.min() else low, low, high))
    mask = ndi.binary_closing(values > level, iterations=1, border_value=0) | (values > level)
    parts, count = ndi.label(mask)
    pixel_um2 = (factor * image_mpp) ** 2
    smallest = min(MIN_TISSUE_UM2, MIN_TISSUE_SHARE * source.height * source.width * image_mpp**2)
    sizes = np.bincount(parts.ravel(), minlength=count + 1) * pixel_um2
    keep = sizes >= smallest
    keep[0] = False
    return TissueMask(keep[parts], factor, image_mpp)


def save_tissue_png(tissue: TissueMask, path: str | Path) -> Path:
    """Write the tissue mask as a small black-and-white PNG (white = tissue), atomically; its pixel size (about
    TISSUE_MPP) is in the PNG's resolution, as dots per inch."""
    from PIL import Image

    from napari_cdal.engine.io.checkpoint import atomic_write

    image = Image.fromarray(tissue.mask.astype(np.uint8) * 255)
    per_inch = 25_400.0 / (tissue.factor * tissue.image_mpp)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", dpi=(per_inch, per_inch)))
    return Path(path)
