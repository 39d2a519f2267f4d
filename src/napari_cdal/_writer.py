"""napari writers for Labels: an instance TIFF, and GeoJSON polygons that QuPath imports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

NUCLEUS_PROPERTIES = {"objectType": "annotation", "classification": {"name": "Nucleus"}}


def write_labels_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a Labels layer as an instance TIFF: ids renumbered 1..N, uint16 or uint32, atomically."""
    import tifffile

    from napari_cdal.engine.io.checkpoint import atomic_write
    from napari_cdal.engine.labels import check_labels, relabel_sequential_uint

    labels = relabel_sequential_uint(check_labels(data, f"cannot write {path}: the layer"))
    atomic_write(
        path,
        lambda tmp: tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack"),
    )
    return [str(path)]


def _rings(mask: np.ndarray, row0: int, col0: int) -> list[list[list[float]]]:
    """Closed outer rings [[x, y], ...] of the 4-connected parts of a padded crop, holes filled.

    Coordinates follow QuPath's convention: pixel (row r, column c) covers x in [c, c + 1] and
    y in [r, r + 1] of the layer's grid; `row0`/`col0` place the padded crop in the image.
    """
    from scipy import ndimage
    from skimage.measure import find_contours

    parts, n_parts = ndimage.label(mask, structure=ndimage.generate_binary_structure(2, 1))
    rings = []
    for part in range(1, n_parts + 1):
        filled = ndimage.binary_fill_holes(parts == part)
        contours = find_contours(filled.astype(np.float32), 0.5)
        outer = max(contours, key=len)
        ring = [[float(c + col0 + 0.5), float(r + row0 + 0.5)] for r, c in outer]
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        rings.append(ring)
    return rings


def labels_to_geojson(labels: np.ndarray) -> dict[str, Any]:
    """A GeoJSON FeatureCollection with one Polygon (MultiPolygon if split) per nonzero id."""
    from scipy import ndimage

    from napari_cdal.engine.labels import check_labels

    labels = check_labels(labels, "labels_to_geojson")
    if labels.ndim != 2:
        raise ValueError(
            f"GeoJSON polygons need a 2-D Labels layer, got shape {labels.shape}; "
            "write one plane at a time"
        )
    ids = np.unique(labels)
    ids = ids[ids != 0]
    sequential = np.searchsorted(ids, labels) + 1
    sequential[labels == 0] = 0
    features = []
    for index, box in enumerate(ndimage.find_objects(sequential)):
        if box is None:
            continue
        padded = np.pad(sequential[box] == index + 1, 1)
        rings = _rings(padded, box[0].start - 1, box[1].start - 1)
        if len(rings) == 1:
            geometry = {"type": "Polygon", "coordinates": rings}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": [[ring] for ring in rings]}
        properties = dict(NUCLEUS_PROPERTIES, id=int(ids[index]))
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def write_labels_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a 2-D Labels layer as GeoJSON polygons in pixels of the layer's grid, atomically."""
    from napari_cdal.engine.io.checkpoint import atomic_write
    from napari_cdal.engine.labels import check_labels

    text = json.dumps(labels_to_geojson(check_labels(data, f"cannot write {path}: the layer")))
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return [str(path)]
