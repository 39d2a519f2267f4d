"""A slide's labels store written out as a tiled, pyramidal BigTIFF, chunk by chunk, glass left empty."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_cdal.engine.slide.store import box_chunks, chunk_file, level_roots, store_levels


def labels_tiff(store: str | Path, path: str | Path, tile: int = 512) -> Path:
    """Write the store's labels as a tiled, zlib-compressed, pyramidal BigTIFF (uint32 ids), tile by tile, atomically.

    Level 0 is the first page; the store's downsampled levels follow as its SubIFDs (how QuPath,
    OpenSlide-style readers and tifffile find a pyramid), each read from the store a tile at a time.
    Tiles whose chunks were never written (glass skipped) are left empty (offset and byte count 0,
    read as zeros, as GDAL's sparse TIFFs), so a slide of mostly glass is written in seconds.
    The pixel size is written in the resolution tags when the run knew it.
    """
    import tifffile

    from napari_cdal.engine.io.checkpoint import atomic_write

    levels = store_levels(store)
    mpp = (levels[0].attrs.get("settings") or {}).get("image_mpp")

    def tiles(level: Any, root: Path) -> Generator[np.ndarray | None, None, None]:
        height, width = level.shape
        written = {
            coords
            for coords in box_chunks((0, height, 0, width), level.chunks)
            if chunk_file(root, level, coords).is_file()
        }
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                box = (y, min(y + tile, height), x, min(x + tile, width))
                if (y, x) != (0, 0) and written.isdisjoint(box_chunks(box, level.chunks)):
                    yield None  # never written (glass): an empty tile, read as 0 (tifffile needs the first one)
                    continue
                part = np.zeros((tile, tile), np.uint32)
                data = np.asarray(level[y : y + tile, x : x + tile])
                part[: data.shape[0], : data.shape[1]] = data
                yield part

    def write(tmp: str) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            for k, (level, root) in enumerate(zip(levels, level_roots(store, len(levels)), strict=True)):
                options: dict[str, Any] = {"subifds": len(levels) - 1} if k == 0 else {"subfiletype": 1}
                if mpp:
                    factor = 2**k
                    options.update(resolution=(1e4 / (mpp * factor), 1e4 / (mpp * factor)), resolutionunit="CENTIMETER")
                tif.write(
                    tiles(level, root),
                    shape=tuple(level.shape),
                    dtype=np.uint32,
                    tile=(tile, tile),
                    compression="zlib",
                    photometric="minisblack",
                    **options,
                )

    atomic_write(path, write)
    return Path(path)
