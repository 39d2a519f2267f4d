"""napari writers for Labels: an instance TIFF, GeoJSON polygons that QuPath imports, and a per-nucleus CSV.

GeoJSON and CSV keep the layer's ids (so they match each other) and give coordinates in the pixels
of the image the labels were made on: a mask the Segment widget made of a part of an image (a
field of view, a rectangle) carries that part's origin in its metadata, and is placed there.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def write_labels_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a Labels layer as an instance TIFF: ids renumbered 1..N, uint16 or uint32, atomically."""
    import tifffile

    from napari_cdal.engine.io.checkpoint import atomic_write
    from napari_cdal.engine.labels import check_labels, relabel_sequential_uint

    labels = relabel_sequential_uint(check_labels(_full_resolution(data, attributes),
                                                  f"cannot write {path}: the layer"))
    atomic_write(
        path,
        lambda tmp: tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack"),
    )
    return [str(path)]


def _full_resolution(data: Any, attributes: dict[str, Any]) -> np.ndarray:
    """The layer's labels at full resolution (level 0 of a multiscale layer)."""
    return np.asarray(data[0] if attributes.get("multiscale") else data)


def _origin(attributes: dict[str, Any]) -> tuple[int, int]:
    """Where the labels start in their image's pixels (row, column): (0, 0) unless the Segment widget says."""
    from napari_cdal._widgets._layers import TAG

    origin = ((attributes.get("metadata") or {}).get(TAG) or {}).get("origin") or (0, 0)
    return int(origin[0]), int(origin[1])


def write_labels_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a 2-D Labels layer as GeoJSON polygons in pixels of its image's grid, atomically."""
    from napari_cdal.engine.io.detections import geojson_text, write_text
    from napari_cdal.engine.labels import check_labels

    labels = check_labels(_full_resolution(data, attributes), f"cannot write {path}: the layer")
    text = geojson_text(labels, object_type="annotation", offset=_origin(attributes))
    return [str(write_text(path, text))]


def write_labels_csv(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a 2-D Labels layer as a CSV of per-nucleus measurements (one row per id, sizes in µm), atomically.

    µm/px comes from the layer's scale (0.25 when unset); the mean uncertainty from the mask's
    features when the Segment widget made it. Haematoxylin density needs the image and is left empty.
    """
    from napari_cdal._widgets._layers import mpp_from_scale
    from napari_cdal.engine.io.detections import csv_text, write_text
    from napari_cdal.engine.labels import check_labels
    from napari_cdal.engine.segment.measurements import nucleus_measurements

    labels = check_labels(_full_resolution(data, attributes), f"cannot write {path}: the layer")
    if labels.ndim != 2:
        raise ValueError(f"cannot write {path}: a CSV of nuclei needs a 2-D label image, got shape {labels.shape}")
    mpp = mpp_from_scale(attributes.get("scale") or (1.0, 1.0), attributes.get("units"))
    table = nucleus_measurements(labels, None, mpp, origin=_origin(attributes))
    features = attributes.get("features")
    if features is not None and {"index", "mean_uncertainty"} <= set(getattr(features, "columns", ())):
        known = dict(zip(np.asarray(features["index"]).tolist(), np.asarray(features["mean_uncertainty"], float),
                         strict=True))
        table["mean_uncertainty"] = np.array([known.get(int(i), np.nan) for i in table["id"]])
    return [str(write_text(path, csv_text(table)))]
