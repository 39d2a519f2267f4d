"""Corrected regions from a file: a mask image (non-zero = corrected) or a GeoJSON of polygons, as boxes (no torch).

The Fine-tune widget learns from the bounding box of each shape drawn round a correction; a file
gives the same: the bounding box of each connected non-zero part of a mask, or of each polygon or
rectangle of a GeoJSON (QuPath's convention: a point (x, y) is a pixel's top-left corner).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_cdal.engine.io.annotations import read_geojson
from napari_cdal.engine.segment.tiling import Box

GEOJSON_SUFFIXES = (".geojson", ".json")


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


def read_regions(path: str | Path, shape: tuple[int, int]) -> list[Box]:
    """The corrected regions of an image of `shape` (height, width) from a mask image or a GeoJSON file.

    ValueError (one line) when a mask's size differs from the image's, or when the file holds no region.
    """
    from napari_cdal.engine.io.images import read_image

    path = Path(path)
    if path.suffix.lower() in GEOJSON_SUFFIXES:
        if not path.is_file():
            raise ValueError(f"regions {path} does not exist")
        try:
            boxes = geojson_boxes(path)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"regions {path} is not a GeoJSON of polygons ({type(exc).__name__}: {exc})") from exc
        what = "no Polygon or MultiPolygon feature"
    else:
        mask = read_image(path)
        if mask.ndim == 3:
            mask = mask.any(axis=-1)
        if mask.shape[:2] != tuple(shape):
            raise ValueError(f"regions {path} is {mask.shape[0]} x {mask.shape[1]} px but its image is "
                             f"{shape[0]} x {shape[1]}; the region mask must cover the image pixel for pixel")
        boxes = mask_boxes(mask)
        what = "no non-zero pixel"
    if not boxes:
        raise ValueError(f"regions {path} holds {what}: mark what you corrected (non-zero pixels, or polygons)")
    return boxes
