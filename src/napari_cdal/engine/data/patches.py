"""Training patches: random crops with flips, rotation, scale and stain or intensity jitter from tiles."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import numpy as np
from scipy import ndimage

from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.data.augment import check_range, colour_jitter_cf, hed_jitter_cf, intensity_jitter_cf
from napari_cdal.engine.data.tiles import Tile
from napari_cdal.engine.segment.windows import Box

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


def jitter_kind(config: ModelConfig) -> str:
    """Stain jitter for H&E (three channels on their own scale), intensity jitter for grayscale and slices."""
    plain_rgb = config.image_channels == 3 and not config.intensity_percentiles and not config.context_slices
    return "stain" if plain_rgb else "intensity"


class PatchSampler:
    """Draw augmented (image, target, weight) patches from tiles already at model resolution.

    ``targets`` maps warped HxW uint32 instances to float32 (C, H, W) targets; ``regions[i]``
    restricts tile i to boxes (y0, y1, x0, x1) (half-open, pixels), and pixels outside get weight 0.
    ``hed_strength`` is passed to the HED jitter (0 switches it off). ``jitter`` is "stain" for
    H&E (HED and colour jitter, 3 channels) or "intensity" for grayscale slices and their
    neighbours (one brightness, contrast and gamma change for all channels); ``flips`` adds the
    eight flips and quarter turns to the rotation.
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
        jitter: str = "stain",
        flips: bool = True,
    ) -> None:
        if not tiles:
            raise ValueError("PatchSampler: tiles is empty; pass at least one Tile")
        if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
            raise ValueError(f"PatchSampler: patch_size must be an integer >= 1, got {patch_size!r}")
        if not callable(targets):
            raise ValueError(f"PatchSampler: targets must be a function instances -> (C,H,W), got {targets!r}")
        if not isinstance(rng, np.random.Generator):
            raise ValueError(
                f"PatchSampler: rng must be a numpy Generator, got {type(rng).__name__}; "
                "use np.random.default_rng(seed)"
            )
        check_range("PatchSampler: hed_strength", hed_strength, 1.0)
        if jitter not in ("stain", "intensity"):
            raise ValueError(f"PatchSampler: jitter must be 'stain' or 'intensity', got {jitter!r}")
        self.jitter = jitter
        self.flips = bool(flips)
        self.patch_size = int(patch_size)
        self.targets = targets
        self.rng = rng
        self.augment = bool(augment)
        self.hed_strength = float(hed_strength)
        self._channels: list[tuple[np.ndarray, ...]] = []
        self._instances: list[np.ndarray] = []
        self._shapes: list[tuple[int, int]] = []
        channels = 3 if jitter == "stain" else tiles[0].image.shape[-1]
        for i, tile in enumerate(tiles):
            img = tile.image
            if img.ndim != 3 or img.shape[-1] != channels or img.dtype not in (np.uint8, np.float32):
                raise ValueError(
                    f"PatchSampler: tile {i} ({tile.name!r}) image has shape {img.shape} dtype "
                    f"{img.dtype}; expected HxWx{channels} uint8 or float32 on the 0..255 scale"
                )
            if tile.instances.shape != img.shape[:2]:
                raise ValueError(
                    f"PatchSampler: tile {i} ({tile.name!r}) instances shape "
                    f"{tile.instances.shape} differs from image shape {img.shape[:2]}"
                )
            self._channels.append(tuple(np.ascontiguousarray(img[..., c]) for c in range(channels)))
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
                        raise ValueError(f"PatchSampler: region {box!r} of tile {i} is not (y0, y1, x0, x1)")
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
        areas = np.array([(b[1] - b[0]) * (b[3] - b[2]) for _, b in self._entries], dtype=np.float64)
        self._probs = areas / areas.sum()
        half = (self.patch_size - 1) / 2.0
        self._grid = np.arange(self.patch_size, dtype=np.float64) - half
        self.channels = channels

    def _draw_transform(self) -> np.ndarray:
        if not self.augment:
            return np.eye(2)
        dihedral = _DIHEDRAL[int(self.rng.integers(8))] if self.flips else _DIHEDRAL[0]
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
        low, high = lo - 0.5 + extent, hi - 0.5 - extent
        if low > high:
            low, high = high, low
        return float(self.rng.uniform(low, high))

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return images (B,channels,P,P) float32 0..255, targets (B,C,P,P), weights (B,1,P,P) in {0,1}."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"PatchSampler.sample: batch must be an integer >= 1, got {batch!r}")
        p = self.patch_size
        images = np.empty((batch, self.channels, p, p), dtype=np.float32)
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
                ndimage.map_coordinates(channel, coords, output=images[k, c], order=1, mode="reflect")
            ndimage.map_coordinates(self._instances[i], coords, output=inst, order=0, mode="reflect")

            rr = np.floor(coords[0] + 0.5)
            cc = np.floor(coords[1] + 0.5)
            inside = np.zeros((p, p), dtype=bool)
            for y0, y1, x0, x1 in self._boxes[i]:
                inside |= (rr >= y0) & (rr < y1) & (cc >= x0) & (cc < x1)
            weights[k, 0] = inside

            t = np.asarray(self.targets(inst.copy()))
            if t.ndim != 3 or t.shape[1:] != (p, p):
                raise ValueError(f"PatchSampler: targets function returned shape {t.shape}; expected (C, {p}, {p})")
            if targets is None:
                targets = np.empty((batch, t.shape[0], p, p), dtype=np.float32)
            elif t.shape[0] != targets.shape[1]:
                raise ValueError(
                    f"PatchSampler: targets function returned {t.shape[0]} channels, "
                    f"earlier {targets.shape[1]}; it must always return the same C"
                )
            targets[k] = t

            if self.augment and self.jitter == "intensity":
                images[k] = intensity_jitter_cf(images[k].reshape(self.channels, -1), self.rng).reshape(images[k].shape)
            elif self.augment:
                x = images[k].reshape(3, -1)
                if self.hed_strength > 0:
                    x = hed_jitter_cf(x, self.rng, self.hed_strength)
                x = colour_jitter_cf(x, self.rng)
                images[k] = x.reshape(3, p, p)
        return images, cast(np.ndarray, targets), weights
