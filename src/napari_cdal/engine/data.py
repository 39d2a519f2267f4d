"""Loading MoNuSeg-style tile folders and sampling augmented training patches.

A folder holds ``images/<id>.tif|.tiff|.png``, ``masks/<id>.png`` (binary, {0,1} or {0,255}),
optionally ``masks_instance/<id>.png`` (instance ids), ``annotations/<id>.xml`` (Aperio XML)
and ``manifest.csv`` (columns ``id`` and ``organ``).
"""

from __future__ import annotations

import csv
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
from scipy import ndimage
from skimage import measure, transform
from skimage.color import hed_from_rgb, rgb_from_hed
from skimage.draw import polygon

from .io import read_image, to_rgb_float

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")

Box = tuple[int, int, int, int]


@dataclass
class Tile:
    """One H&E tile with its ground truth: RGB image, binary foreground and instance ids."""

    name: str
    image: np.ndarray
    foreground: np.ndarray
    instances: np.ndarray
    has_instance_truth: bool
    organ: str | None = None


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def xml_to_instances(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise an Aperio XML (one Region per nucleus) into uint32 instance ids 1..N.

    Regions are filled in file order, so later ones win where they overlap; ids are then
    renumbered 1..N in file order, dropping regions left with no pixel.
    """
    path = Path(path)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"xml_to_instances: shape must be (height, width) >= 1, got {shape!r}")
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(
            f"annotation file {path} is not valid XML ({err}); re-export it from ImageScope "
            "or delete it so the instance mask or binary mask is used instead"
        ) from err
    if root.tag != "Annotations":
        raise ValueError(
            f"annotation file {path} has root element <{root.tag}>, expected <Annotations> "
            "(Aperio/ImageScope XML)"
        )
    labels = np.zeros(shape, dtype=np.uint32)
    n_regions = 0
    for region in root.iter("Region"):
        n_regions += 1
        rows, cols = [], []
        for vertex in region.iter("Vertex"):
            try:
                cols.append(float(vertex.attrib["X"]))
                rows.append(float(vertex.attrib["Y"]))
            except (KeyError, ValueError) as err:
                raise ValueError(
                    f"annotation file {path}: Region {region.get('Id', n_regions)!r} has a "
                    f"Vertex without numeric X and Y attributes ({vertex.attrib!r}); fix or "
                    "remove that vertex"
                ) from err
        if len(rows) < 3:
            continue
        rr, cc = polygon(np.asarray(rows), np.asarray(cols), shape)
        labels[rr, cc] = n_regions
    if n_regions == 0:
        return labels
    present = np.zeros(n_regions + 1, dtype=bool)
    present[labels.ravel()] = True
    present[0] = False
    lut = np.cumsum(present).astype(np.uint32)
    lut[0] = 0
    return lut[labels]


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
                    f"two images share the id {path.stem!r}: {found[path.stem]} and {path}; "
                    "keep only one of them"
                )
            found[path.stem] = path
    return sorted(found)


def _image_path(root: Path, name: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (suffix, suffix.upper()):
            path = root / "images" / f"{name}{candidate}"
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"no image for tile {name!r} in {root / 'images'} (looked for {name}.tif, .tiff, .png)"
    )


def _read_array(path: Path) -> np.ndarray:
    return read_image(path)


def _to_rgb_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """An image as H x W x 3 uint8 through the one normalisation path (io.to_rgb_float)."""
    return np.rint(to_rgb_float(arr, 3, name=f"image {path}")).astype(np.uint8)


def _read_binary(path: Path) -> np.ndarray:
    mask = _read_array(path)
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
            f"mask {path} holds values {values[:8].tolist()}; a binary mask must hold only "
            "{0,1} or {0,255}"
        )
    return mask > 0


def _read_instances(path: Path) -> np.ndarray:
    arr = _read_array(path)
    if arr.ndim != 2:
        raise ValueError(
            f"instance mask {path} has shape {arr.shape}; expected a single-channel HxW label PNG"
        )
    if arr.dtype.kind not in "ui" and arr.dtype != bool:
        raise ValueError(f"instance mask {path} has dtype {arr.dtype}; expected integer ids")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError(
            f"instance mask {path} holds negative ids; ids must be 0 (background) or > 0"
        )
    return arr.astype(np.uint32)


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


def load_tile(root: str | Path, name: str) -> Tile:
    """Load one tile; instances come from the instance PNG, else the XML, else connected components.

    The foreground is ``masks/<name>.png``; when that file is absent it is ``instances > 0``.
    """
    root = Path(root)
    image_path = _image_path(root, name)
    image = _to_rgb_uint8(_read_array(image_path), image_path)
    shape = image.shape[:2]

    mask_path = root / "masks" / f"{name}.png"
    foreground = None
    if mask_path.is_file():
        foreground = _read_binary(mask_path)
        _check_shape(foreground, mask_path, shape, image_path)

    inst_path = root / "masks_instance" / f"{name}.png"
    xml_path = root / "annotations" / f"{name}.xml"
    has_truth = True
    if inst_path.is_file():
        instances = _read_instances(inst_path)
        _check_shape(instances, inst_path, shape, image_path)
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


def load_folder(root: str | Path, names: list[str] | None = None) -> list[Tile]:
    """Load the named tiles (all of ``list_tiles(root)`` when ``names`` is None), in that order."""
    if names is None:
        names = list_tiles(root)
    return [load_tile(root, name) for name in names]


def resample_tile(tile: Tile, factor: float) -> Tile:
    """Rescale a tile by ``factor`` (0.5: 0.25 -> 0.5 um/px); image anti-aliased, ids nearest."""
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"resample_tile: factor must be a finite number > 0, got {factor!r}")
    h, w = tile.instances.shape
    out_shape = (int(round(h * factor)), int(round(w * factor)))
    if min(out_shape) < 1:
        raise ValueError(
            f"resample_tile: factor {factor} shrinks tile {tile.name!r} ({h}x{w}) to {out_shape}; "
            "use a larger factor"
        )
    if out_shape == (h, w):
        return replace(tile)
    anti_alias = factor < 1
    image = transform.resize(
        tile.image, out_shape + (3,), order=1, anti_aliasing=anti_alias, preserve_range=True
    )
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    instances = transform.resize(
        tile.instances, out_shape, order=0, anti_aliasing=False, preserve_range=True
    ).astype(tile.instances.dtype)
    if tile.has_instance_truth:
        foreground = instances > 0
    else:
        soft = transform.resize(
            tile.foreground.astype(np.float32), out_shape, order=1, anti_aliasing=anti_alias
        )
        foreground = soft >= 0.5
    return replace(tile, image=image, foreground=foreground, instances=instances)


# --------------------------------------------------------------------------------------------
# Colour augmentation (channels-first internals so the sampler avoids copies)
# --------------------------------------------------------------------------------------------

_LOG_ADJUST = np.float32(np.log(1e-6))
_HED_FROM_RGB_T = np.ascontiguousarray(hed_from_rgb.T, dtype=np.float32)
_RGB_FROM_HED_T = np.ascontiguousarray(rgb_from_hed.T, dtype=np.float32)


def _check_image(image: np.ndarray, who: str) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(
            f"{who}: image must be an HxWx3 array on the 0..255 scale, got shape {shape}"
        )


def _hed_jitter_cf(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """HED jitter on a (3, N) float32 array on 0..255; returns a new (3, N) float32 array."""
    alpha = rng.uniform(1 - strength, 1 + strength, 3).astype(np.float32)
    beta = rng.uniform(-strength, strength, 3).astype(np.float32)
    rgb = np.maximum(x * np.float32(1 / 255), np.float32(1e-6))
    stains = _HED_FROM_RGB_T @ (np.log(rgb) / _LOG_ADJUST)
    stains = stains * alpha[:, None] + beta[:, None]
    out = np.exp(_RGB_FROM_HED_T @ (stains * _LOG_ADJUST))
    np.clip(out, 0, 1, out=out)
    out *= np.float32(255)
    return out


def _rgb_hue_shift_cf(x: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the HSV hue of a (3, N) float32 array (0..255) by ``shift`` turns."""
    r, g, b = x[0], x[1], x[2]
    v = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    delta = v - mn
    safe = np.where(delta > 0, delta, np.float32(1))
    h6 = np.where(v == r, g - b, np.where(v == g, (b - r) + 2 * delta, (r - g) + 4 * delta))
    h6 /= safe
    h6 += np.float32(6 * shift)
    h6 -= np.float32(6) * np.floor(h6 * np.float32(1 / 6))
    out = np.empty_like(x)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = h6 + np.float32(n)
        k -= np.float32(6) * (k >= 6)
        ramp = np.minimum(k, np.float32(4) - k)
        np.clip(ramp, 0, 1, out=ramp)
        ramp *= delta
        np.subtract(v, ramp, out=out[c])
    return out


_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _colour_jitter_cf(
    x: np.ndarray,
    rng: np.random.Generator,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> np.ndarray:
    """Brightness, contrast, saturation then HSV hue jitter on a (3, N) float32 array (0..255)."""
    fb = np.float32(rng.uniform(1 - brightness, 1 + brightness))
    fc = np.float32(rng.uniform(1 - contrast, 1 + contrast))
    fs = np.float32(rng.uniform(1 - saturation, 1 + saturation))
    dh = float(rng.uniform(-hue, hue))
    x = x * fb
    np.clip(x, 0, 255, out=x)
    mean = np.float32((_GRAY @ x).mean())
    x = (x - mean) * fc + mean
    np.clip(x, 0, 255, out=x)
    gray = _GRAY @ x
    x = gray + (x - gray) * fs
    np.clip(x, 0, 255, out=x)
    if dh != 0.0:
        x = _rgb_hue_shift_cf(x, dh)
        np.clip(x, 0, 255, out=x)
    return x


def _check_range(name: str, value: float, upper: float) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value <= upper):
        raise ValueError(f"{name} must be a number in [0, {upper}], got {value!r}")


def hed_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.02) -> np.ndarray:
    """H&E stain augmentation: scale each HED channel by U(1-s, 1+s), shift by U(-s, s).

    scikit-image's rgb2hed/hed2rgb, minus rgb2hed's clamp of negative stains (which shifts up to
    ~10% of real H&E pixels by up to 100 levels), so strength 0 is the identity. HxWx3, 0..255.
    """
    _check_image(image, "hed_jitter")
    _check_range("hed_jitter: strength", strength, 1.0)
    h, w, _ = image.shape
    x = np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32).reshape(3, -1)
    out = _hed_jitter_cf(x, rng, strength)
    return np.ascontiguousarray(np.moveaxis(out.reshape(3, h, w), 0, -1))


def colour_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.03,
) -> np.ndarray:
    """Random brightness, contrast, saturation factors in U(1-x, 1+x) and an HSV hue shift.

    ``hue`` is a fraction of a full turn; input HxWx3 on 0..255, output float32 in [0, 255].
    """
    _check_image(image, "colour_jitter")
    for arg, value in (
        ("brightness", brightness),
        ("contrast", contrast),
        ("saturation", saturation),
    ):
        _check_range(f"colour_jitter: {arg}", value, 1.0)
    _check_range("colour_jitter: hue", hue, 0.5)
    h, w, _ = image.shape
    x = np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32).reshape(3, -1)
    out = _colour_jitter_cf(x, rng, brightness, contrast, saturation, hue)
    return np.ascontiguousarray(np.moveaxis(out.reshape(3, h, w), 0, -1))


# --------------------------------------------------------------------------------------------
# Patch sampling
# --------------------------------------------------------------------------------------------

# The 8 flips/90-degree rotations as 2x2 matrices acting on (row, col) offsets.
_DIHEDRAL = [
    np.array(m, dtype=np.float64)
    for m in (
        [[1, 0], [0, 1]],
        [[0, -1], [1, 0]],
        [[-1, 0], [0, -1]],
        [[0, 1], [-1, 0]],
        [[-1, 0], [0, 1]],
        [[1, 0], [0, -1]],
        [[0, 1], [1, 0]],
        [[0, -1], [-1, 0]],
    )
]

MAX_ROTATION_DEG = 22.0
SCALE_RANGE = (0.75, 1.25)


class PatchSampler:
    """Draw augmented (image, target, weight) patches from tiles already at model resolution.

    ``targets`` maps warped HxW uint32 instances to float32 (C, H, W) targets; ``regions[i]``
    restricts tile i to boxes (y0, y1, x0, x1) (half-open, pixels), and pixels outside get weight 0.
    ``hed_strength`` is passed to the HED jitter (0 switches it off).
    """

    def __init__(
        self,
        tiles: list[Tile],
        patch_size: int,
        targets: Callable[[np.ndarray], np.ndarray],
        rng: np.random.Generator,
        augment: bool = True,
        regions: list[list[Box]] | None = None,
        hed_strength: float = 0.02,
    ) -> None:
        if not tiles:
            raise ValueError("PatchSampler: tiles is empty; pass at least one Tile")
        if (
            isinstance(patch_size, bool)
            or not isinstance(patch_size, (int, np.integer))
            or patch_size < 1
        ):
            raise ValueError(
                f"PatchSampler: patch_size must be an integer >= 1, got {patch_size!r}"
            )
        if not callable(targets):
            raise ValueError(
                f"PatchSampler: targets must be a function instances -> (C,H,W), got {targets!r}"
            )
        if not isinstance(rng, np.random.Generator):
            raise ValueError(
                f"PatchSampler: rng must be a numpy Generator, got {type(rng).__name__}; "
                "use np.random.default_rng(seed)"
            )
        _check_range("PatchSampler: hed_strength", hed_strength, 1.0)
        self.patch_size = int(patch_size)
        self.targets = targets
        self.rng = rng
        self.augment = bool(augment)
        self.hed_strength = float(hed_strength)
        self._channels: list[tuple[np.ndarray, ...]] = []
        self._instances: list[np.ndarray] = []
        self._shapes: list[tuple[int, int]] = []
        for i, tile in enumerate(tiles):
            img = tile.image
            if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
                raise ValueError(
                    f"PatchSampler: tile {i} ({tile.name!r}) image has shape {img.shape} dtype "
                    f"{img.dtype}; expected HxWx3 uint8"
                )
            if tile.instances.shape != img.shape[:2]:
                raise ValueError(
                    f"PatchSampler: tile {i} ({tile.name!r}) instances shape "
                    f"{tile.instances.shape} differs from image shape {img.shape[:2]}"
                )
            self._channels.append(tuple(np.ascontiguousarray(img[..., c]) for c in range(3)))
            self._instances.append(np.ascontiguousarray(tile.instances, dtype=np.uint32))
            self._shapes.append(img.shape[:2])

        self._boxes: list[list[Box]] = []
        if regions is None:
            self._boxes = [[(0, h, 0, w)] for h, w in self._shapes]
        else:
            if len(regions) != len(tiles):
                raise ValueError(
                    f"PatchSampler: regions has {len(regions)} entries for {len(tiles)} tiles; "
                    "give one list of boxes per tile (an empty list to skip a tile)"
                )
            for i, boxes in enumerate(regions):
                h, w = self._shapes[i]
                checked = []
                for box in boxes:
                    if len(box) != 4:
                        raise ValueError(
                            f"PatchSampler: region {box!r} of tile {i} is not (y0, y1, x0, x1)"
                        )
                    y0, y1, x0, x1 = (int(v) for v in box)
                    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
                        raise ValueError(
                            f"PatchSampler: region {tuple(box)!r} of tile {i} ({tiles[i].name!r}, "
                            f"{h}x{w}) is empty or outside the tile; need 0 <= y0 < y1 <= {h} and "
                            f"0 <= x0 < x1 <= {w}"
                        )
                    checked.append((y0, y1, x0, x1))
                self._boxes.append(checked)
        self._entries = [(i, box) for i, boxes in enumerate(self._boxes) for box in boxes]
        if not self._entries:
            raise ValueError("PatchSampler: regions lists no box at all; give at least one box")
        areas = np.array(
            [(b[1] - b[0]) * (b[3] - b[2]) for _, b in self._entries], dtype=np.float64
        )
        self._probs = areas / areas.sum()
        half = (self.patch_size - 1) / 2.0
        self._grid = np.arange(self.patch_size, dtype=np.float64) - half

    def _draw_transform(self) -> np.ndarray:
        if not self.augment:
            return np.eye(2)
        dihedral = _DIHEDRAL[int(self.rng.integers(8))]
        theta = math.radians(self.rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
        scale = self.rng.uniform(*SCALE_RANGE)
        c, s = math.cos(theta), math.sin(theta)
        rot = np.array([[c, -s], [s, c]])
        return (rot @ dihedral) / scale

    def _draw_centre(self, lo: int, hi: int, extent: float) -> float:
        """Centre on one axis: a footprint of half-size ``extent`` fits in [lo, hi) or covers it."""
        if not self.augment:
            p = self.patch_size
            a, b = (lo, hi - p) if hi - lo >= p else (hi - p, lo)
            return int(self.rng.integers(a, b + 1)) + (p - 1) / 2.0
        a, b = lo - 0.5 + extent, hi - 0.5 - extent
        if a > b:
            a, b = b, a
        return float(self.rng.uniform(a, b))

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return images (B,3,P,P) float32 0..255, targets (B,C,P,P), weights (B,1,P,P) in {0,1}."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"PatchSampler.sample: batch must be an integer >= 1, got {batch!r}")
        p = self.patch_size
        images = np.empty((batch, 3, p, p), dtype=np.float32)
        weights = np.empty((batch, 1, p, p), dtype=np.float32)
        targets: np.ndarray | None = None
        inst = np.empty((p, p), dtype=np.uint32)
        g = self._grid
        for k in range(batch):
            i, box = self._entries[int(self.rng.choice(len(self._entries), p=self._probs))]
            a = self._draw_transform()
            ext_y = (p - 1) / 2.0 * (abs(a[0, 0]) + abs(a[0, 1]))
            ext_x = (p - 1) / 2.0 * (abs(a[1, 0]) + abs(a[1, 1]))
            cy = self._draw_centre(box[0], box[1], ext_y)
            cx = self._draw_centre(box[2], box[3], ext_x)
            coords = np.empty((2, p, p), dtype=np.float64)
            coords[0] = cy + a[0, 0] * g[:, None] + a[0, 1] * g[None, :]
            coords[1] = cx + a[1, 0] * g[:, None] + a[1, 1] * g[None, :]
            for c, channel in enumerate(self._channels[i]):
                ndimage.map_coordinates(
                    channel, coords, output=images[k, c], order=1, mode="reflect"
                )
            ndimage.map_coordinates(
                self._instances[i], coords, output=inst, order=0, mode="reflect"
            )

            rr = np.floor(coords[0] + 0.5)
            cc = np.floor(coords[1] + 0.5)
            inside = np.zeros((p, p), dtype=bool)
            for y0, y1, x0, x1 in self._boxes[i]:
                inside |= (rr >= y0) & (rr < y1) & (cc >= x0) & (cc < x1)
            weights[k, 0] = inside

            t = np.asarray(self.targets(inst.copy()))
            if t.ndim != 3 or t.shape[1:] != (p, p):
                raise ValueError(
                    f"PatchSampler: targets function returned shape {t.shape}; "
                    f"expected (C, {p}, {p})"
                )
            if targets is None:
                targets = np.empty((batch, t.shape[0], p, p), dtype=np.float32)
            elif t.shape[0] != targets.shape[1]:
                raise ValueError(
                    f"PatchSampler: targets function returned {t.shape[0]} channels, "
                    f"earlier {targets.shape[1]}; it must always return the same C"
                )
            targets[k] = t

            if self.augment:
                x = images[k].reshape(3, -1)
                if self.hed_strength > 0:
                    x = _hed_jitter_cf(x, self.rng, self.hed_strength)
                x = _colour_jitter_cf(x, self.rng, 0.2, 0.2, 0.2, 0.03)
                images[k] = x.reshape(3, p, p)
        return images, cast(np.ndarray, targets), weights
