"""Tile folders in the MoNuSeg layout: images, masks and instance truth read and checked."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from skimage import measure, transform

from napari_cdal.engine.io.annotations import xml_to_instances
from napari_cdal.engine.io.images import IMAGE_SUFFIXES, read_header, read_image, to_rgb_float
from napari_cdal.engine.labels import check_has_nuclei, check_labels


@dataclass
class Tile:
    """One tile with its ground truth: the image (H x W x C), binary foreground and instance ids.

    An H&E tile's image is RGB uint8; a grayscale one (a 1-channel model) is float32 on 0..255.
    """

    name: str
    image: np.ndarray
    foreground: np.ndarray
    instances: np.ndarray
    has_instance_truth: bool
    organ: str | None = None


def list_tiles(root: str | Path) -> list[str]:
    """Return the sorted ids of the images in ``root/images`` (.tif, .tiff or .png)."""
    folder = Path(root) / "images"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} does not exist; a tile folder needs images/<id>.tif "
            "(or .tiff/.png) next to masks/<id>.png"
        )
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in found:
                raise ValueError(
                    f"two images share the id {path.stem!r}: {found[path.stem]} and {path}; keep only one of them"
                )
            found[path.stem] = path
    return sorted(found)


def image_path(root: str | Path, name: str) -> Path:
    """The image file of tile `name` in `root/images` (any of IMAGE_SUFFIXES, either case)."""
    root = Path(root)
    for suffix in IMAGE_SUFFIXES:
        for candidate in (suffix, suffix.upper()):
            path = root / "images" / f"{name}{candidate}"
            if path.is_file():
                return path
    raise FileNotFoundError(f"no image for tile {name!r} in {root / 'images'} (looked for {name}.tif, .tiff, .png)")


def _tile_image(arr: np.ndarray, path: Path, channels: int) -> np.ndarray:
    """An image through the one normalisation path (io.to_rgb_float) at the model's channels; a bool image is 0/255.

    RGB stays uint8 as it always was; one channel stays float32, so 16-bit X-rays keep their
    precision for the per-image stretch that prepare_tiles and segment_image apply.
    """
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    image = to_rgb_float(arr, channels, name=f"image {path}")
    return np.rint(image).astype(np.uint8) if channels == 3 else image


def _read_binary(path: Path) -> np.ndarray:
    mask = read_image(path, labels=True)
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[-1])):
            raise ValueError(
                f"mask {path} has {mask.shape[-1]} different channels; save it as a single-"
                "channel PNG with values {{0,1}} or {{0,255}}"
            )
        mask = mask[..., 0]
    values = np.unique(mask)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        raise ValueError(
            f"mask {path} holds values {values[:8].tolist()}; a binary mask must hold only {{0,1}} or {{0,255}}"
        )
    return mask > 0


def _read_instances(path: Path) -> np.ndarray:
    arr = read_image(path, labels=True)
    if arr.ndim != 2:
        raise ValueError(f"instance mask {path} has shape {arr.shape}; expected a single-channel HxW label PNG")
    return check_labels(arr, f"instance mask {path}", allow_binary=True).astype(np.uint32)


def _read_organ(root: Path, name: str) -> str | None:
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        return None
    with manifest.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("id") == name:
                organ = (row.get("organ") or "").strip()
                return organ or None
    return None


def _check_shape(what: np.ndarray, path: Path, shape: tuple[int, ...], image: Path) -> None:
    if what.shape != shape:
        raise ValueError(
            f"{path} has shape {what.shape} but the image {image} is {shape}; masks must match "
            "their image pixel for pixel"
        )


def load_tile(root: str | Path, name: str, channels: int = 3) -> Tile:
    """Load one tile with the model's image channels; instances from the instance PNG, else the XML, else the mask.

    The foreground is ``masks/<name>.png``; when that file is absent it is ``instances > 0``.
    Images are converted as segment converts them (a grayscale one repeated for an RGB model).
    """
    root = Path(root)
    path = image_path(root, name)
    image = _tile_image(read_image(path), path, channels)
    shape = image.shape[:2]

    mask_path = root / "masks" / f"{name}.png"
    foreground = None
    if mask_path.is_file():
        foreground = _read_binary(mask_path)
        _check_shape(foreground, mask_path, shape, path)

    inst_path = root / "masks_instance" / f"{name}.png"
    xml_path = root / "annotations" / f"{name}.xml"
    has_truth = True
    if inst_path.is_file():
        instances = _read_instances(inst_path)
        _check_shape(instances, inst_path, shape, path)
    elif xml_path.is_file():
        instances = xml_to_instances(xml_path, shape)
    elif foreground is not None:
        instances = measure.label(foreground, connectivity=1).astype(np.uint32)
        has_truth = False
    else:
        raise FileNotFoundError(
            f"tile {name!r} has no ground truth: none of {mask_path}, {inst_path} or {xml_path} "
            "exists; add at least a binary mask"
        )
    if foreground is None:
        foreground = instances > 0
    return Tile(
        name=name,
        image=image,
        foreground=foreground,
        instances=instances,
        has_instance_truth=has_truth,
        organ=_read_organ(root, name),
    )


def load_folder(root: str | Path, names: list[str] | None = None, channels: int = 3) -> list[Tile]:
    """Load the named tiles (all of ``list_tiles(root)`` when ``names`` is None), in that order."""
    if names is None:
        names = list_tiles(root)
    return [load_tile(root, name, channels) for name in names]


def check_tiles_have_nuclei(root: str | Path, tiles: list[Tile]) -> None:
    """Refuse tiles whose ground truth holds no nucleus (the rule fine-tuning follows, engine.labels.check_has_nuclei):
    a run on them saves a model that finds nothing, without a word."""
    for tile in tiles:
        check_has_nuclei(
            tile.instances,
            f"the masks of tile {tile.name!r} in {Path(root)}",
            "check that they are the right files, or leave the tile out of the run with --split",
        )


def _is_colour(path: Path, shape: tuple[int, ...]) -> bool:
    """True when an image file (of header `shape`) holds colour: three or four channels that are not all the same."""
    if len(shape) != 3 or shape[-1] == 1:
        return False
    pixels = read_image(path)[..., :3]
    return not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]))


def check_image_channels(root: str | Path, names: list[str], channels: int) -> None:
    """Refuse training images a model cannot learn from: grayscale for an RGB (H&E) model, colour for a grayscale one.

    An RGB model's stain jitter and per-channel statistics need colour; a grayscale model would
    average a colour image away. Segment converts either way; training on the wrong kind is a
    mistake worth a line (the default preset is the H&E one). RGB files are read only for a
    1-channel model (to tell a colour image from a grayscale one saved as RGB).
    """
    root = Path(root)
    for name in names:
        path = image_path(root, name)
        shape = read_header(path).shape
        if channels == 3 and (len(shape) == 2 or shape[-1] == 1):
            raise ValueError(
                f"{path} is a grayscale image but the model is an RGB (H&E) model; train grayscale "
                "images with --config grayscale (or a JSON config with image_channels 1)"
            )
        if channels == 1 and _is_colour(path, shape):
            raise ValueError(
                f"{path} is a colour image but the model is a grayscale one; train colour (H&E) "
                "images with an RGB preset (e.g. --config medium), or save them as grayscale"
            )


def resample_tile(tile: Tile, factor: float) -> Tile:
    """Rescale a tile by ``factor`` (0.5: 0.25 -> 0.5 um/px); image anti-aliased, ids nearest."""
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"resample_tile: factor must be a finite number > 0, got {factor!r}")
    h, w = tile.instances.shape
    out_shape = (int(round(h * factor)), int(round(w * factor)))
    if min(out_shape) < 1:
        raise ValueError(
            f"resample_tile: factor {factor} shrinks tile {tile.name!r} ({h}x{w}) to {out_shape}; use a larger factor"
        )
    if out_shape == (h, w):
        return replace(tile)
    anti_alias = factor < 1
    image = transform.resize(
        tile.image, out_shape + tile.image.shape[2:], order=1, anti_aliasing=anti_alias, preserve_range=True
    )
    image = np.clip(np.rint(image) if tile.image.dtype == np.uint8 else image, 0, 255).astype(tile.image.dtype)
    instances = transform.resize(tile.instances, out_shape, order=0, anti_aliasing=False, preserve_range=True).astype(
        tile.instances.dtype
    )
    if tile.has_instance_truth:
        foreground = instances > 0
    else:
        soft = transform.resize(tile.foreground.astype(np.float32), out_shape, order=1, anti_aliasing=anti_alias)
        foreground = soft >= 0.5
    return replace(tile, image=image, foreground=foreground, instances=instances)
