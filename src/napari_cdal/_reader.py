"""napari readers: annotations (Aperio XML, GeoJSON) as Labels, and slides as multiscale Images.

Annotations: the tile's size comes from an image with the same stem beside the file (or in a
sibling ``images/`` folder, the MoNuSeg layout), else from the polygons' extent. Labels are on the
tile's pixel grid (scale 1); an XML's MicronsPerPixel is kept in the layer's metadata.

Images (.svs, .ndpi, .tif, .tiff, .png, .jpg, .jpeg): a slide (.svs, .ndpi, pyramidal or large tiled
TIFF and OME-TIFF) as every pyramid level, a lazy array through engine/slide/source.py (the slide
reader the CLI uses), at the slide's µm/px as the layer's scale, so napari reads only the tiles it
shows; any other image (a plain tile) exactly as napari's own reader reads it. So choosing
napari-cdal for an image never refuses it.

Volumes (.nii, .nii.gz) through engine/io/volumes.py (the reader the CLI uses): the voxels in the
file's axis order, the voxel spacing as the layer's scale in the file's units (mm), the axes named
x, y, z as the file's affine orients them, and the file's affine and path in the layer's metadata
(``affine``, ``source``) for the NIfTI writer. A label volume (whole-number voxels
in a ``labels*`` folder, or at most 16 distinct values in 0..255: `is_label_volume`) opens as Labels.

napari's own reader claims all of these files too (and fails on NIfTI), so napari would ask which
reader to use, and `viewer.open(path)` would refuse to choose. When the plugin is first used (napari
activates it: a widget, a sample, a reader) it makes itself napari's preferred reader for the
patterns it claims (`prefer_napari_cdal_readers`), as napari's "Remember this choice" would; a
preference the user has set for a pattern is kept, and any can be changed in Preferences > Plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

LayerData = tuple[Any, dict[str, Any], str]
"""A layer as napari's readers give it: its data (an array napari can read, or a list of them for a multiscale
layer), its keywords and its type."""

PLUGIN = "napari-cdal"
NAPARI_BUILTINS = "napari"
"""The manifest name of napari's own reader plugin, which reads the plain images."""
IMAGE_PATTERNS = ("*.svs", "*.ndpi", "*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg")
VOLUME_PATTERNS = ("*.nii", "*.nii.gz")
PREFERRED_PATTERNS = (*IMAGE_PATTERNS, *VOLUME_PATTERNS)
"""The file patterns napari-cdal reads and napari's own reader claims too: napari-cdal is made the preferred reader
for them (napari.yaml's readers list the same patterns)."""


def prefer_napari_cdal_readers() -> list[str]:
    """Make napari-cdal napari's preferred reader for PREFERRED_PATTERNS where the user has chosen none.

    Returns the patterns it set. The choice is napari's reader preference (`plugins.extension2reader`),
    saved with napari's settings and shown in Preferences > Plugins, as napari's "Remember this choice" saves it.
    """
    from napari.settings import get_settings  # type: ignore[import-untyped]

    plugins = get_settings().plugins
    chosen = dict(plugins.extension2reader)
    missing = [pattern for pattern in PREFERRED_PATTERNS if pattern not in chosen]
    if missing:
        plugins.extension2reader = {**chosen, **dict.fromkeys(missing, PLUGIN)}
    return missing


def on_activate(_context: Any = None) -> None:
    """npe2 calls this when napari first uses the plugin: become the preferred reader of the files it reads."""
    prefer_napari_cdal_readers()


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


def _is_image_file(path: str | Path) -> bool:
    from napari_cdal.engine.io.images import IMAGE_SUFFIXES
    from napari_cdal.engine.slide.source import SLIDE_SUFFIXES

    path = Path(path)
    return path.suffix.lower() in (*IMAGE_SUFFIXES, *SLIDE_SUFFIXES) and path.is_file()


def napari_get_image_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return `read_images` for slides and plain images (.svs, .ndpi, .tif, .tiff, .png, .jpg, .jpeg), else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_is_image_file(p) for p in paths):
        return None
    return read_images


def read_slide(path: str | Path) -> LayerData:
    """One slide as multiscale Image layer data: its levels (lazy), scale = its µm/px when the file says."""
    from napari_cdal.engine.slide.source import open_slide

    source = open_slide(path)  # stays open while the layer reads from it
    levels = source.levels()
    meta: dict[str, Any] = {"name": Path(path).stem, "rgb": levels[0].ndim == 3, "multiscale": len(levels) > 1}
    if source.mpp is not None:
        meta.update(scale=(source.mpp, source.mpp), units=("µm", "µm"))
    return levels if len(levels) > 1 else levels[0], meta, "image"


def read_plain_image(path: str | Path) -> list[LayerData]:
    """An image that is not a slide (a tile), as napari's own reader reads it."""
    from npe2 import read

    layers = read([str(path)], stack=False, plugin_name=NAPARI_BUILTINS)
    # napari's reader may leave out the keywords and the layer type: (data,), (data, kwargs) or all three
    return [
        (layer[0], dict(layer[1]) if len(layer) > 1 else {}, str(layer[2]) if len(layer) > 2 else "image")
        for layer in layers
    ]


def read_images(path: str | list[str]) -> list[LayerData]:
    """napari's reader function: a multiscale Image layer per slide, napari's own layers for any other image."""
    from napari_cdal.engine.slide.source import is_slide_file

    paths = [path] if isinstance(path, str) else list(path)
    return [data for p in paths for data in ([read_slide(p)] if is_slide_file(p) else read_plain_image(p))]


def napari_get_volume_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return `read_volumes` for .nii and .nii.gz files, else None."""
    from napari_cdal.engine.io.volumes import is_volume_path

    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(is_volume_path(p) and Path(p).is_file() for p in paths):
        return None
    return read_volumes


NIFTI_UNITS = {"mm": "mm", "micron": "µm", "meter": "m"}
"""NIfTI's spatial units as napari (pint) writes them; a file that says none is in mm, NIfTI's usual unit."""
WORLD_AXES = {"R": "x", "L": "x", "A": "y", "P": "y", "S": "z", "I": "z"}
"""The world axis each of nibabel's orientation codes runs along (RAS+: x to the right, y forward, z up)."""


def volume_axes(path: str | Path, affine: np.ndarray) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The axis labels (x, y, z: where the file's affine points each array axis) and the length units of a NIfTI.

    napari names a layer's axes -3, -2, -1 without them, and counts in pixels without units.
    """
    import nibabel

    axis_codes = cast(Callable[[np.ndarray], tuple[str, ...]], nibabel.aff2axcodes)  # nibabel is untyped
    codes = axis_codes(affine)
    labels = tuple(WORLD_AXES.get(code, str(axis)) for axis, code in enumerate(codes))
    if len(set(labels)) < len(labels):  # an oblique affine can point two axes mostly the same way
        labels = ("i", "j", "k")
    header = nibabel.load(str(path)).header
    if isinstance(header, nibabel.Nifti1Header):  # NIfTI-2's header too
        unit = cast(Callable[[], tuple[str, str]], header.get_xyzt_units)()[0]
    else:
        unit = "mm"
    return labels, (NIFTI_UNITS.get(unit, "mm"),) * 3


def read_volume_file(path: str | Path) -> LayerData:
    """One NIfTI volume as Image (or Labels) layer data: scale = voxel spacing in the file's units, axes named x, y, z
    as its affine orients them, affine and path in the metadata."""
    from napari_cdal.engine.io.volumes import as_label_values, is_label_volume, read_volume, volume_stem

    volume = read_volume(path)
    labels = is_label_volume(path, volume.data)
    axis_labels, units = volume_axes(path, volume.affine)
    meta: dict[str, Any] = {
        "name": volume_stem(path),
        "scale": volume.spacing,
        "units": units,
        "axis_labels": axis_labels,
        "metadata": {"affine": volume.affine, "source": str(path)},
    }
    return (as_label_values(volume.data), meta, "labels") if labels else (volume.data, meta, "image")


def read_volumes(path: str | list[str]) -> list[LayerData]:
    """napari's reader function: one Image or Labels layer per volume."""
    paths = [path] if isinstance(path, str) else list(path)
    return [read_volume_file(p) for p in paths]
