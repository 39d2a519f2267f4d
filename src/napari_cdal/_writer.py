"""napari writers for Labels: an instance TIFF, and GeoJSON polygons that QuPath imports."""

from __future__ import annotations

from typing import Any


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


def write_labels_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a 2-D Labels layer as GeoJSON polygons in pixels of the layer's grid, atomically."""
    from napari_cdal.engine.io.detections import geojson_text, write_text
    from napari_cdal.engine.labels import check_labels

    text = geojson_text(check_labels(data, f"cannot write {path}: the layer"), object_type="annotation")
    return [str(write_text(path, text))]
