"""The resumable labels store: its levels on disk, made or reopened, checked before a run resumes, started afresh.

A block's commit writes its window of level 0 and of each downsampled level, with empty chunks
written too (zeros), so every chunk a done block touched exists. A chunk deleted or damaged by
hand would otherwise read as zeros (a silent hole) or end a run in a decompression traceback;
checked here, it is one line naming the block and how to start the store afresh.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cdal.engine.segment.windows import Box
from napari_cdal.engine.slide.source import SlideSource
from napari_cdal.engine.slide.tissue import TissueMask, detect_tissue

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

CHUNK_PX = 1024
"""Side of a chunk of the labels store."""

LEVELS_FOLDER = "levels"
"""Where in the store the downsampled levels of the labels live (levels/1 is half the size, levels/2 a quarter...)."""

TISSUE_ARRAY = "tissue"
"""Where in the store the tissue mask lies (1 = tissue), so that a resumed run skips the same blocks."""

WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}
"""How the store's arrays are written: a chunk of zeros is stored too, so a missing chunk is always damage."""


PYRAMID_MIN_PX = 1024
"""Levels are halved until the last one is smaller than this on its longer side."""


def pyramid_shapes(height: int, width: int, smallest: int = PYRAMID_MIN_PX) -> list[tuple[int, int]]:
    """The shapes of level 0 and of each level halved from it, until one is under `smallest` on its longer side."""
    shapes = [(height, width)]
    while max(shapes[-1]) >= smallest:
        factor = 2 ** len(shapes)
        shapes.append((-(-height // factor), -(-width // factor)))
    return shapes


class StoreError(ValueError):
    """A labels store that cannot be resumed as it is; the message names the block and the fix."""


def level_roots(store: str | Path, count: int) -> list[Path]:
    """Where each of the store's `count` levels lies on disk: level 0 at the store, level k under LEVELS_FOLDER."""
    return [Path(store), *(Path(store) / LEVELS_FOLDER / str(k) for k in range(1, count))]


def restart_fix(store: Path) -> str:
    """What to do with a damaged store: start it afresh."""
    return (
        f"start it afresh with `napari-cdal segment ... --overwrite` (or delete {Path(store).name}); the blocks "
        "done so far are then segmented again"
    )


def open_store_array(store: str | Path, root: str | Path, mode: str = "r") -> Any:
    """One array of the labels store (a level, the tissue mask); damaged metadata is a StoreError naming the store,
    the file and the fix, not the JSON parser's words."""
    import zarr

    try:
        return zarr.open_array(root, mode=mode)
    except Exception as exc:  # zarr raises the JSON parser's and its own errors for damaged metadata
        where = (Path(root) / "zarr.json").relative_to(store)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise StoreError(
            f"{store} is damaged: its {where} cannot be read ({type(exc).__name__}: {first}); "
            f"{restart_fix(Path(store))}"
        ) from exc


def store_levels(store: str | Path, mode: str = "r") -> list[Any]:
    """The labels store's arrays, level 0 (full resolution) first, then each downsampled level."""
    labels = open_store_array(store, store, mode)
    roots = level_roots(store, len(labels.attrs.get("levels", [None])))
    levels = [labels, *(open_store_array(store, root, mode) for root in roots[1:])]
    return levels if mode == "r" else [level.with_config(WRITE_CONFIG) for level in levels]


def open_store(store: Path, shapes: list[tuple[int, int]], settings: dict[str, Any]) -> list[Any]:
    """The labels store's levels (of `shapes`, level 0 first) at `store`, created empty, or reopened when a run with
    the same settings left it."""
    import zarr

    if store.exists():
        if not is_labels_store(store):
            raise StoreError(
                f"{store} is in the way of a labels store and is not one; move it away or choose another --out"
            )
        labels = open_store_array(store, store)
        if tuple(labels.shape) != tuple(shapes[0]) or labels.attrs.get("settings") != settings:
            raise ValueError(
                f"{store} holds labels of another run (shape {tuple(labels.shape)}, settings "
                f"{labels.attrs.get('settings')}); move it away, choose another --out, or pass "
                "--overwrite to start it afresh"
            )
        return store_levels(store, "r+")
    levels = [
        zarr.create_array(
            root, shape=level, chunks=(CHUNK_PX, CHUNK_PX), dtype="uint32", fill_value=0, config=WRITE_CONFIG
        )
        for root, level in zip(level_roots(store, len(shapes)), shapes, strict=True)
    ]
    levels[0].attrs.update(settings=settings, done=[], next_id=1, levels=[list(level) for level in shapes])
    return levels


def store_tissue(store: Path, labels: Any, source: SlideSource, image_mpp: float) -> TissueMask:
    """The tissue mask the store keeps; detected on the slide and kept in the store the first time."""
    import zarr

    factor = labels.attrs.get("tissue_factor")
    if factor is not None:
        return TissueMask(np.asarray(open_store_array(store, store / TISSUE_ARRAY)[:]) > 0, factor, image_mpp)
    tissue = detect_tissue(source, image_mpp)
    saved = zarr.create_array(
        store / TISSUE_ARRAY,
        shape=tissue.mask.shape,
        chunks=tissue.mask.shape,
        dtype="uint8",
        fill_value=0,
        overwrite=True,
    )
    saved[:] = tissue.mask.astype(np.uint8)
    labels.attrs.update(tissue_factor=tissue.factor)
    return tissue


def level_box(region: Box, level: int) -> Box:
    """A box of level 0 on downsampled level `level` (every 2^level-th pixel, the first one at or after its start)."""
    factor = 2**level
    y0, y1, x0, x1 = region
    return -(-y0 // factor), -(-y1 // factor), -(-x0 // factor), -(-x1 // factor)


def box_chunks(box: Box, chunks: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """The chunk coordinates (row, column) a box touches."""
    y0, y1, x0, x1 = box
    if y1 <= y0 or x1 <= x0:
        return
    for cy in range(y0 // chunks[0], (y1 - 1) // chunks[0] + 1):
        for cx in range(x0 // chunks[1], (x1 - 1) // chunks[1] + 1):
            yield cy, cx


def chunk_file(root: Path, array: Any, coords: tuple[int, int]) -> Path:
    """Where a chunk of a store array rooted at `root` lies on disk."""
    return root / array.metadata.encode_chunk_key(coords)


def check_store(
    store: Path, levels: list[Any], roots: list[Path], shapes: list[tuple[int, int]], regions: dict[int, Box]
) -> None:
    """Refuse a store whose levels have the wrong shape or whose done blocks (index: region) miss or garble a chunk."""
    fix = restart_fix(store)
    if len(levels) != len(shapes):
        raise StoreError(f"{store} is damaged: it has {len(levels)} levels where {len(shapes)} belong; {fix}")
    for k, (level, shape) in enumerate(zip(levels, shapes, strict=True)):
        if tuple(level.shape) != tuple(shape):
            raise StoreError(f"{store} is damaged: level {k} has shape {tuple(level.shape)}, not {tuple(shape)}; {fix}")
    seen: set[tuple[int, int, int]] = set()
    for index in sorted(regions):
        for k, (level, root) in enumerate(zip(levels, roots, strict=True)):
            for coords in box_chunks(level_box(regions[index], k), level.chunks):
                if (k, *coords) in seen:
                    continue
                seen.add((k, *coords))
                problem = _chunk_problem(level, root, coords)
                if problem:
                    y0, y1, x0, x1 = regions[index]
                    raise StoreError(
                        f"{store} is damaged: block {index} (rows {y0}-{y1}, columns {x0}-{x1}) is "
                        f"done but its chunk {chunk_file(root, level, coords).relative_to(store)} is "
                        f"{problem}; {fix}"
                    )


def _chunk_problem(level: Any, root: Path, coords: tuple[int, int]) -> str:
    """'' for a chunk that is present and decodes, else what is wrong with it."""
    if not chunk_file(root, level, coords).is_file():
        return "missing"
    (rows, cols), (cy, cx) = level.chunks, coords
    try:
        level[cy * rows : (cy + 1) * rows, cx * cols : (cx + 1) * cols]
    except Exception as exc:  # any decoder's error: the bytes are not a chunk
        return f"unreadable ({type(exc).__name__})"
    return ""


def is_labels_store(path: Path) -> bool:
    """Whether `path` is a labels store a slide run of this tool made (a zarr array with its run's settings)."""
    import zarr

    if not (path / "zarr.json").is_file():
        return False
    try:
        attrs = zarr.open_array(path, mode="r").attrs
    except Exception:  # unreadable metadata: ours only when the folders a store of ours has are there
        return any((path / folder).is_dir() for folder in (LEVELS_FOLDER, TISSUE_ARRAY))
    return "settings" in attrs and "done" in attrs


def remove_store(path: Path) -> None:
    """Delete a labels store (`--overwrite`: start afresh); anything else at that place is refused, never deleted."""
    if not is_labels_store(path):
        raise StoreError(f"{path} is not a labels store of a slide run; move it away or choose another --out")
    shutil.rmtree(path)
