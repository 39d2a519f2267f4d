"""napari reader: MoNuSeg / Aperio ImageScope XML and GeoJSON polygons as Labels on the tile's grid.

The tile's size comes from an image with the same stem beside the file (or in a sibling
``images/`` folder, the MoNuSeg layout), else from the polygons' extent. Labels are on the tile's
pixel grid (scale 1); an XML's MicronsPerPixel is kept in the layer's metadata.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
LayerData = tuple[np.ndarray, dict[str, Any], str]


def _looks_like_aperio(path: Path) -> bool:
    with path.open("rb") as handle:
        return b"<Annotations" in handle.read(4096)


def _is_readable(path: Path) -> bool:
    suffix = path.suffix.lower()
    if not path.is_file():
        return False
    return suffix == ".geojson" or (suffix == ".xml" and _looks_like_aperio(path))


def napari_get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return `read_annotations` for Aperio XML and GeoJSON files, else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_is_readable(Path(p)) for p in paths):
        return None
    return read_annotations


def _image_shape(path: Path) -> tuple[int, int]:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
        return shape[axes.index("Y")], shape[axes.index("X")]
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    return height, width


def tile_image_beside(path: Path) -> Path | None:
    """The image with the same stem next to `path`, or in ../images (MoNuSeg layout), if any."""
    for folder in (path.parent, path.parent.parent / "images"):
        for suffix in IMAGE_SUFFIXES:
            for candidate in (
                folder / f"{path.stem}{suffix}",
                folder / f"{path.stem}{suffix.upper()}",
            ):
                if candidate.is_file():
                    return candidate
    return None


def _xml_vertices(path: Path) -> tuple[list[float], list[float], float | None]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"annotation file {path} is not valid XML ({err})") from err
    xs = [float(v.attrib["X"]) for v in root.iter("Vertex") if "X" in v.attrib]
    ys = [float(v.attrib["Y"]) for v in root.iter("Vertex") if "Y" in v.attrib]
    mpp = root.attrib.get("MicronsPerPixel")
    return xs, ys, float(mpp) if mpp else None


def _geojson_polygons(document: dict[str, Any], path: Path) -> list[tuple[int | None, list[Any]]]:
    """(id or None, [[exterior, hole, ...], ...]) for every Polygon or MultiPolygon feature."""
    if document.get("type") == "FeatureCollection":
        features = document.get("features", [])
    elif document.get("type") == "Feature":
        features = [document]
    else:
        raise ValueError(f"{path} is not a GeoJSON Feature or FeatureCollection")
    found = []
    for feature in features:
        geometry = feature.get("geometry") or {}
        ident = (feature.get("properties") or {}).get("id")
        ident = ident if isinstance(ident, int) and ident > 0 else None
        if geometry.get("type") == "Polygon":
            found.append((ident, [geometry["coordinates"]]))
        elif geometry.get("type") == "MultiPolygon":
            found.append((ident, geometry["coordinates"]))
    return found


def geojson_to_labels(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise GeoJSON polygons ([x, y] in pixels, QuPath's convention) into uint32 instance ids.

    A feature's integer ``properties.id`` is kept; features without one get the next free ids.
    """
    from skimage.draw import polygon

    path = Path(path)
    features = _geojson_polygons(json.loads(path.read_text()), path)
    labels = np.zeros(shape, dtype=np.uint32)
    next_id = max([ident for ident, _ in features if ident is not None], default=0) + 1
    for ident, polygons in features:
        if ident is None:
            ident, next_id = next_id, next_id + 1
        for rings in polygons:
            for ring_index, ring in enumerate(rings):
                xy = np.asarray(ring, dtype=np.float64)
                # pixel (r, c) covers [c, c + 1] x [r, r + 1]: its centre is at (c + 0.5, r + 0.5)
                rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
                if ring_index == 0:
                    labels[rr, cc] = ident
                else:
                    hole = labels[rr, cc] == ident
                    labels[rr[hole], cc[hole]] = 0
    return labels


def _extent(path: Path) -> tuple[int, int]:
    if path.suffix.lower() == ".xml":
        xs, ys, _ = _xml_vertices(path)
    else:
        features = _geojson_polygons(json.loads(path.read_text()), path)
        points = [
            p for _, polygons in features for rings in polygons for ring in rings for p in ring
        ]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
    if not xs:
        raise ValueError(
            f"{path} has no polygons and no image beside it to take the tile's size from"
        )
    return max(1, math.ceil(max(ys)) + 1), max(1, math.ceil(max(xs)) + 1)


def read_annotation_file(path: str | Path) -> LayerData:
    """One annotation file as Labels layer data (instance ids on the tile's pixel grid)."""
    from napari_cdal.engine.io.annotations import xml_to_instances

    path = Path(path)
    image = tile_image_beside(path)
    shape = _image_shape(image) if image is not None else _extent(path)
    metadata: dict[str, Any] = {"source": str(path), "tile_image": str(image) if image else None}
    if path.suffix.lower() == ".xml":
        labels = xml_to_instances(path, shape)
        metadata["microns_per_pixel"] = _xml_vertices(path)[2]
    else:
        labels = geojson_to_labels(path, shape)
    return labels, {"name": f"{path.stem} annotations", "metadata": metadata}, "labels"


def read_annotations(path: str | list[str]) -> list[LayerData]:
    """napari's reader function: one Labels layer per file."""
    paths = [path] if isinstance(path, str) else list(path)
    return [read_annotation_file(p) for p in paths]
