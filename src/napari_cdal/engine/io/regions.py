"""Corrected regions from a file: a mask image, a GeoJSON of polygons or a review CSV, as boxes (no torch).

The Fine-tune widget learns from the bounding box of each shape drawn round a correction; a file
gives the same: the bounding box of each connected non-zero part of a mask, of each polygon or
rectangle of a GeoJSON (QuPath's convention: a point (x, y) is a pixel's top-left corner), or of
each item of `segment --review`'s CSV, widened by REGION_MARGIN_UM: the loop of Review, correct
those items, fine-tune can be scripted.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_cdal.engine.defaults import DEFAULT_IMAGE_MPP, MIN_REGION_UM, REGION_MARGIN_UM
from napari_cdal.engine.io.annotations import read_geojson
from napari_cdal.engine.segment.review import REVIEW_BOX_COLUMNS
from napari_cdal.engine.segment.windows import Box, as_box

GEOJSON_SUFFIXES = (".geojson", ".json")

REVIEW_SUFFIX = ".csv"


def mask_boxes(mask: np.ndarray) -> list[Box]:
    """The bounding box (y0, y1, x0, x1), half-open, of each 8-connected non-zero part of a 2-D mask."""
    parts, count = ndi.label(np.asarray(mask) != 0, structure=np.ones((3, 3), bool))
    return [(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in ndi.find_objects(parts)[:count]]


def geojson_boxes(path: str | Path) -> list[Box]:
    """The bounding box of each Polygon or MultiPolygon feature's outline(s) in a GeoJSON file, in pixels."""
    boxes = []
    for _, polygons in read_geojson(path).nuclei:
        points = np.concatenate([rings[0] for rings in polygons if len(rings) and len(rings[0])])
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        boxes.append((math.floor(y0), math.ceil(y1), math.floor(x0), math.ceil(x1)))
    return boxes


def widen_box(box: Box, margin: int, least: int, shape: tuple[int, int]) -> Box:
    """`box` widened by `margin` pixels on each side, clipped to the image and grown to `least` pixels a side."""
    y0, y1, x0, x1 = box
    return (*_widened(y0 - margin, y1 + margin, shape[0], least), *_widened(x0 - margin, x1 + margin, shape[1], least))


def _widened(lo: int, hi: int, size: int, least: int) -> tuple[int, int]:
    """[lo, hi) clipped to [0, size) and grown to at least `least` pixels (inwards at an edge)."""
    lo, hi = max(0, lo), min(size, hi)
    grow = max(0, min(least, size) - (hi - lo))
    lo, hi = lo - grow // 2, hi + grow - grow // 2
    shift = max(0, -lo) - max(0, hi - size)
    return lo + shift, hi + shift


def review_boxes(path: str | Path, shape: tuple[int, int], image_mpp: float) -> list[Box]:
    """The box of each row of a review CSV, widened by REGION_MARGIN_UM and grown to MIN_REGION_UM a side."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REVIEW_BOX_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"regions {path} is a CSV without the box columns {', '.join(missing)}; give the "
                "review CSV that segment --review writes (its items' boxes are the regions)"
            )
        rows = [as_box(int(float(row[column])) for column in REVIEW_BOX_COLUMNS) for row in reader]
    margin, least = round(REGION_MARGIN_UM / image_mpp), math.ceil(MIN_REGION_UM / image_mpp)
    for row in rows:
        if (
            row[0] >= row[1]
            or row[2] >= row[3]
            or row[1] <= 0
            or row[3] <= 0
            or row[0] >= shape[0]
            or row[2] >= shape[1]
        ):
            raise ValueError(
                f"regions {path} has the box {row} (y0, y1, x0, x1), which is empty or outside the "
                f"{shape[0]} x {shape[1]} image: was the CSV written for another image?"
            )
    return [widen_box(row, margin, least, shape) for row in rows]


def read_regions(path: str | Path, shape: tuple[int, int], image_mpp: float = DEFAULT_IMAGE_MPP) -> list[Box]:
    """The corrected regions of an image of `shape` (height, width) from a mask image, a GeoJSON or a review CSV.

    ValueError (one line) when a mask's size differs from the image's, a review box lies outside it, or the
    file holds no region. `image_mpp` sizes a review item's margin.
    """
    from napari_cdal.engine.io.images import read_image

    path = Path(path)
    if path.suffix.lower() == REVIEW_SUFFIX:
        if not path.is_file():
            raise ValueError(f"regions {path} does not exist")
        try:
            boxes = review_boxes(path, shape, image_mpp)
        except (UnicodeDecodeError, csv.Error, ValueError) as exc:
            if str(exc).startswith(f"regions {path}"):
                raise
            raise ValueError(
                f"regions {path} is not a review CSV of segment --review ({type(exc).__name__}: {exc})"
            ) from exc
        what = "no item"
    elif path.suffix.lower() in GEOJSON_SUFFIXES:
        if not path.is_file():
            raise ValueError(f"regions {path} does not exist")
        try:
            boxes = geojson_boxes(path)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"regions {path} is not a GeoJSON of polygons ({type(exc).__name__}: {exc})") from exc
        what = "no Polygon or MultiPolygon feature"
    else:
        mask = read_image(path, labels=True)
        if mask.ndim == 3:
            mask = np.asarray(mask.any(axis=-1))
        if mask.shape[:2] != tuple(shape):
            raise ValueError(
                f"regions {path} is {mask.shape[0]} x {mask.shape[1]} px but its image is "
                f"{shape[0]} x {shape[1]}; the region mask must cover the image pixel for pixel"
            )
        boxes = mask_boxes(mask)
        what = "no non-zero pixel"
    if not boxes:
        raise ValueError(f"regions {path} holds {what}: mark what you corrected (non-zero pixels, or polygons)")
    return boxes
