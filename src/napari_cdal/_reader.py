"""napari reader: MoNuSeg / Aperio ImageScope XML and GeoJSON polygons as Labels on the tile's grid.

The tile's size comes from an image with the same stem beside the file (or in a sibling
``images/`` folder, the MoNuSeg layout), else from the polygons' extent. Labels are on the tile's
pixel grid (scale 1); an XML's MicronsPerPixel is kept in the layer's metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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


def tile_image_beside(path: Path) -> Path | None:
    """The image with the same stem next to `path`, or in ../images (MoNuSeg layout), if any."""
    from napari_cdal.engine.io.images import IMAGE_SUFFIXES

    for folder in (path.parent, path.parent.parent / "images"):
        for suffix in IMAGE_SUFFIXES:
            for candidate in (
                folder / f"{path.stem}{suffix}",
                folder / f"{path.stem}{suffix.upper()}",
            ):
                if candidate.is_file():
                    return candidate
    return None


def read_annotation_file(path: str | Path) -> LayerData:
    """One annotation file as Labels layer data (instance ids on the tile's pixel grid)."""
    from napari_cdal.engine.io.annotations import rasterise, read_annotation
    from napari_cdal.engine.io.images import plane_size, read_header

    path = Path(path)
    annotation = read_annotation(path)
    image = tile_image_beside(path)
    shape = plane_size(read_header(image), str(image)) if image is not None else annotation.extent()
    if shape is None:
        raise ValueError(f"{path} has no polygons and no image beside it to take the tile's size from")
    metadata: dict[str, Any] = {"source": str(path), "tile_image": str(image) if image else None}
    if path.suffix.lower() == ".xml":
        metadata["microns_per_pixel"] = annotation.microns_per_pixel
    return rasterise(annotation, shape), {"name": f"{path.stem} annotations", "metadata": metadata}, "labels"


def read_annotations(path: str | list[str]) -> list[LayerData]:
    """napari's reader function: one Labels layer per file."""
    paths = [path] if isinstance(path, str) else list(path)
    return [read_annotation_file(p) for p in paths]
