"""A real-size slide that stays small on disk: a pyramidal tiled JPEG BigTIFF of glass holding a few islands.

Shared by tests/test_slide_large.py and benchmarks/slides.py. Only tiles that touch an island are
encoded; every other tile is left empty (offset and byte count 0, read as black), as a scanner
leaves what it did not scan, so a 100,000 x 80,000 px slide is a few megabytes and quick to write.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

GLASS = 240
"""Grey level of empty glass in every channel."""


def write_sparse_slide(
    path: Path,
    islands: list[tuple[int, int, np.ndarray]],
    height: int = 80_000,
    width: int = 100_000,
    mpp: float = 0.25,
    tile: int = 512,
    levels: int = 8,
) -> Path:
    """Write `islands` ((top, left, RGB uint8 image) in level-0 px) on glass as a `height` x `width` slide at `mpp`.

    Levels are halved `levels - 1` times, stored as SubIFDs. tifffile takes the tiles' type from
    the first, so that one is always written (glass).
    """

    def tiles(level: int) -> Iterator[np.ndarray | None]:
        factor = 2**level
        level_height, level_width = -(-height // factor), -(-width // factor)
        placed = [(top // factor, left // factor, image[::factor, ::factor]) for top, left, image in islands]
        for ty in range(0, level_height, tile):
            for tx in range(0, level_width, tile):
                hits = [
                    (y, x, im)
                    for y, x, im in placed
                    if y < ty + tile and y + im.shape[0] > ty and x < tx + tile and x + im.shape[1] > tx
                ]
                if not hits and (ty, tx) != (0, 0):
                    yield None
                    continue
                out = np.full((tile, tile, 3), GLASS, np.uint8)
                for y, x, im in hits:
                    y0, x0 = max(y, ty), max(x, tx)
                    y1, x1 = min(y + im.shape[0], ty + tile), min(x + im.shape[1], tx + tile)
                    out[y0 - ty : y1 - ty, x0 - tx : x1 - tx] = im[y0 - y : y1 - y, x0 - x : x1 - x]
                yield out

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k in range(levels):
            options = {"subifds": levels - 1} if k == 0 else {"subfiletype": 1}
            tif.write(
                tiles(k),
                shape=(-(-height // 2**k), -(-width // 2**k), 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                resolution=(1e4 / (mpp * 2**k),) * 2,
                resolutionunit="CENTIMETER",
                **options,
            )
    return path
