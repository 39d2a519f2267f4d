"""napari readers: annotations (Aperio XML, GeoJSON) as Labels, and slides as multiscale Images.

Annotations: the tile's size comes from an image with the same stem beside the file (or in a
sibling ``images/`` folder, the MoNuSeg layout), else from the polygons' extent. Labels are on the
tile's pixel grid (scale 1); an XML's MicronsPerPixel is kept in the layer's metadata.

Slides (.svs, .ndpi, pyramidal or large tiled TIFF and OME-TIFF): every pyramid level as a lazy
array through engine/slide/source.py (the slide reader the CLI uses), at the slide's µm/px as the
layer's scale; napari reads only the tiles it shows. Other TIFFs are left to napari's own reader.

Volumes (.nii, .nii.gz) through engine/io/volumes.py (the reader the CLI uses): the voxels in the
file's axis order, the voxel spacing as the layer's scale, and the file's affine and path in the
layer's metadata (``affine``, ``source``) for the NIfTI writer. A label volume (whole-number voxels
in a ``labels*`` folder, or at most 16 distinct values in 0..255: `is_label_volume`) opens as Labels.
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
    from napari_cdal.engine.io.images import check_read_whole, plane_size, read_header

    path = Path(path)
    annotation = read_annotation(path)
    image = tile_image_beside(path)
    shape = plane_size(read_header(image), str(image)) if image is not None else annotation.extent()
    if shape is None:
        raise ValueError(f"{path} has no polygons and no image beside it to take the tile's size from")
    check_read_whole(*shape, f"the labels of {path}")  # rasterised whole, in memory
    metadata: dict[str, Any] = {"source": str(path), "tile_image": str(image) if image else None}
    if path.suffix.lower() == ".xml":
        metadata["microns_per_pixel"] = annotation.microns_per_pixel
    return rasterise(annotation, shape), {"name": f"{path.stem} annotations", "metadata": metadata}, "labels"


def read_annotations(path: str | list[str]) -> list[LayerData]:
    """napari's reader function: one Labels layer per file."""
    paths = [path] if isinstance(path, str) else list(path)
    return [read_annotation_file(p) for p in paths]


def napari_get_slide_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return `read_slides` for .svs, .ndpi and pyramidal or large tiled TIFFs, else None (napari reads the rest)."""
    from napari_cdal.engine.slide.source import is_slide_file

    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(is_slide_file(p) for p in paths):
        return None
    return read_slides


def read_slide(path: str | Path) -> LayerData:
    """One slide as multiscale Image layer data: its levels (lazy), scale = its µm/px when the file says."""
    from napari_cdal.engine.slide.source import open_slide

    source = open_slide(path)  # stays open while the layer reads from it
    levels = source.levels()
    meta: dict[str, Any] = {"name": Path(path).stem, "rgb": levels[0].ndim == 3, "multiscale": len(levels) > 1}
    if source.mpp is not None:
        meta.update(scale=(source.mpp, source.mpp), units=("µm", "µm"))
    return levels if len(levels) > 1 else levels[0], meta, "image"


def read_slides(path: str | list[str]) -> list[LayerData]:
    """napari's reader function: one multiscale Image layer per slide."""
    paths = [path] if isinstance(path, str) else list(path)
    return [read_slide(p) for p in paths]


def napari_get_volume_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return `read_volumes` for .nii and .nii.gz files, else None."""
    from napari_cdal.engine.io.volumes import is_volume_path

    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(is_volume_path(p) and Path(p).is_file() for p in paths):
        return None
    return read_volumes


def read_volume_file(path: str | Path) -> LayerData:
    """One NIfTI volume as Image (or Labels) layer data: scale = voxel spacing, affine and path in the metadata."""
    from napari_cdal.engine.io.volumes import as_label_values, is_label_volume, read_volume, volume_stem

    volume = read_volume(path)
    labels = is_label_volume(path, volume.data)
    meta: dict[str, Any] = {
        "name": volume_stem(path),
        "scale": volume.spacing,
        "metadata": {"affine": volume.affine, "source": str(path)},
    }
    return (as_label_values(volume.data), meta, "labels") if labels else (volume.data, meta, "image")


def read_volumes(path: str | list[str]) -> list[LayerData]:
    """napari's reader function: one Image or Labels layer per volume."""
    paths = [path] if isinstance(path, str) else list(path)
    return [read_volume_file(p) for p in paths]
