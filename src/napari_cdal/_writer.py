"""napari writers for Labels: an instance TIFF, GeoJSON polygons that QuPath imports, a per-nucleus CSV, NIfTI.

GeoJSON and CSV keep the layer's ids (so they match each other) and give coordinates in the pixels
of the image the labels were made on: a mask the Segment widget made of a part of an image (a
field of view, a rectangle) carries that part's origin in its metadata, and is placed there.
A 3-D Labels layer is saved as a NIfTI volume with the affine of the volume it came from
(``metadata["affine"]``, set by the volume reader and by Segment), else the layer's scale and translate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_cdal.layer_metadata import mpp_from_scale, tagged_origin


def write_labels_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a Labels layer as an instance TIFF: ids renumbered 1..N, uint16 or uint32, atomically."""
    import tifffile

    from napari_cdal.engine.io.checkpoint import atomic_write
    from napari_cdal.engine.labels import check_labels, relabel_sequential_uint

    labels = relabel_sequential_uint(
        check_labels(_full_resolution(data, attributes), f"cannot write {path}: the layer")
    )
    atomic_write(
        path,
        lambda tmp: tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack"),
    )
    return [str(path)]


def _full_resolution(data: Any, attributes: dict[str, Any]) -> np.ndarray:
    """The layer's labels at full resolution (level 0 of a multiscale layer)."""
    return np.asarray(data[0] if attributes.get("multiscale") else data)


def write_labels_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a 2-D Labels layer as GeoJSON polygons in pixels of its image's grid, atomically."""
    from napari_cdal.engine.io.detections import geojson_text, write_text
    from napari_cdal.engine.labels import check_labels

    labels = check_labels(_full_resolution(data, attributes), f"cannot write {path}: the layer")
    text = geojson_text(labels, object_type="annotation", offset=tagged_origin(attributes.get("metadata")))
    return [str(write_text(path, text))]


def write_labels_csv(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a 2-D Labels layer as a CSV of per-nucleus measurements (one row per id, sizes in µm), atomically.

    µm/px comes from the layer's scale (0.25 when unset); the mean uncertainty from the mask's
    features when the Segment widget made it. Haematoxylin density needs the image and is left empty.
    """
    from napari_cdal.engine.io.detections import csv_text, write_text
    from napari_cdal.engine.labels import check_labels
    from napari_cdal.engine.segment.measurements import nucleus_measurements

    labels = check_labels(_full_resolution(data, attributes), f"cannot write {path}: the layer")
    if labels.ndim != 2:
        raise ValueError(f"cannot write {path}: a CSV of nuclei needs a 2-D label image, got shape {labels.shape}")
    mpp = mpp_from_scale(attributes.get("scale") or (1.0, 1.0), attributes.get("units"))
    table = nucleus_measurements(labels, None, mpp, origin=tagged_origin(attributes.get("metadata")))
    features = attributes.get("features")
    if features is not None and {"index", "mean_uncertainty"} <= set(getattr(features, "columns", ())):
        known = dict(
            zip(np.asarray(features["index"]).tolist(), np.asarray(features["mean_uncertainty"], float), strict=True)
        )
        table["mean_uncertainty"] = np.array([known.get(int(i), np.nan) for i in table["id"]])
    return [str(write_text(path, csv_text(table)))]


def layer_affine(attributes: dict[str, Any], ndim: int = 3) -> np.ndarray:
    """The 4 x 4 affine of a layer: its metadata's `affine` when it has one, else diag(scale) with translate."""
    affine = (attributes.get("metadata") or {}).get("affine")
    if affine is not None and np.shape(affine) == (4, 4):
        return np.asarray(affine, dtype=np.float64)
    scale = list(attributes.get("scale") or [1.0] * ndim)[-3:]
    translate = list(attributes.get("translate") or [0.0] * ndim)[-3:]
    matrix = np.diag([*(float(s) for s in scale), 1.0])
    matrix[:3, 3] = [float(t) for t in translate]
    return matrix


def write_labels_nifti(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a 3-D Labels layer as a NIfTI volume (.nii.gz compressed) with its source affine, atomically.

    Class values are kept (uint8 when they fit, else uint16 or uint32); napari hands over only the
    path the user chose (and confirmed when it existed), and that is the one file written.
    """
    from napari_cdal.engine.io.volumes import write_volume

    labels = _full_resolution(data, attributes)
    if labels.ndim != 3:
        raise ValueError(
            f"cannot write {path}: a NIfTI label volume needs a 3-D Labels layer, got shape "
            f"{labels.shape}; save a 2-D layer as an instance TIFF"
        )
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ValueError(f"cannot write {path}: the layer holds values that are not labels 0, 1, 2, ...")
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32
    write_volume(path, labels.astype(dtype), layer_affine(attributes))
    return [str(path)]
