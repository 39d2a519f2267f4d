"""A slide segmented block by block into a zarr store; each nucleus is kept once, by the block that owns its centroid.

Every block is read with a halo around it (wider than a nucleus), segmented with segment_image,
and only the nuclei whose centroid falls inside the block's own part (its core) are kept, whole,
halo pixels included; a nucleus cut by the halo's outer edge has its centroid outside the core
and is the neighbour's. Blocks are written in order, each nucleus only where no earlier one
lies, and a block counts as done once it is listed in the store: a re-run skips done blocks, so
an interrupted run goes on where it stopped. Memory holds one block and its halo, whatever the
slide's size.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_cdal.engine.defaults import DEFAULT_THRESHOLD
from napari_cdal.engine.events import TICK, Progress, run_to_end, ticks_of
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.tiling import Box
from napari_cdal.engine.slide.source import SlideSource

BLOCK_PX = 2048
"""Side of a block's core in slide pixels: about 0.5 GB of working memory with its halo."""

HALO_UM = 32.0
"""Margin read around each block, in µm: wider than any nucleus, so none is cut at a seam."""

CHUNK_PX = 1024
"""Side of a chunk of the labels store."""

DETECTIONS_FOLDER = "detections"
"""Where in the store each block keeps its nuclei's polygons and measurements."""

LEVELS_FOLDER = "levels"
"""Where in the store the downsampled levels of the labels live (levels/1 is half the size, levels/2 a quarter...)."""

PYRAMID_MIN_PX = 1024
"""Levels are halved until the last one is smaller than this on its longer side."""

TICK_WAIT_S = 0.25
"""How long a run on a cluster waits for a block before it yields a tick (a place for a Cancel to stop)."""


@dataclass
class SlideResult:
    """Where the labels are, how many nuclei they hold and how long the run took."""

    store: Path
    n_nuclei: int
    blocks: int
    seconds: float


def block_cores(height: int, width: int, block: int) -> list[Box]:
    """The blocks' own parts (y0, y1, x0, x1), row by row, covering the slide once."""
    return [(y, min(y + block, height), x, min(x + block, width))
            for y in range(0, height, block) for x in range(0, width, block)]


def pyramid_shapes(height: int, width: int, smallest: int = PYRAMID_MIN_PX) -> list[tuple[int, int]]:
    """The shapes of level 0 and of each level halved from it, until one is under `smallest` on its longer side."""
    shapes = [(height, width)]
    while max(shapes[-1]) >= smallest:
        factor = 2 ** len(shapes)
        shapes.append((-(-height // factor), -(-width // factor)))
    return shapes


def store_levels(store: str | Path, mode: str = "r") -> list[Any]:
    """The labels store's arrays, level 0 (full resolution) first, then each downsampled level."""
    import zarr

    store = Path(store)
    labels = zarr.open_array(store, mode=mode)
    levels = [zarr.open_array(store / LEVELS_FOLDER / str(k), mode=mode)
              for k in range(1, len(labels.attrs.get("levels", [None])))]
    return [labels, *levels]


def _open_store(store: Path, shape: tuple[int, int], settings: dict[str, Any], smallest: int) -> list[Any]:
    """The labels store's levels at `store`, created empty, or reopened when a run with the same settings left it."""
    import zarr

    if store.exists():
        labels = zarr.open_array(store, mode="r")
        if tuple(labels.shape) != shape or labels.attrs.get("settings") != settings:
            raise ValueError(f"{store} holds labels of another run (shape {tuple(labels.shape)}, settings "
                             f"{labels.attrs.get('settings')}); move it away or choose another --out")
        return store_levels(store, "r+")
    shapes = pyramid_shapes(*shape, smallest)
    levels = [zarr.create_array(store / LEVELS_FOLDER / str(k), shape=level, chunks=(CHUNK_PX, CHUNK_PX),
                                dtype="uint32", fill_value=0) for k, level in enumerate(shapes) if k]
    labels = zarr.create_array(store, shape=shape, chunks=(CHUNK_PX, CHUNK_PX), dtype="uint32", fill_value=0)
    labels.attrs.update(settings=settings, done=[], next_id=1, levels=[list(level) for level in shapes])
    return [labels, *levels]


def _update_levels(levels: list[Any], window: np.ndarray, region: Box) -> None:
    """Copy a written window of level 0 into each downsampled level (nearest: every 2^k-th pixel)."""
    ry0, ry1, rx0, rx1 = region
    for k, level in enumerate(levels[1:], start=1):
        factor = 2**k
        y0, x0 = -(-ry0 // factor), -(-rx0 // factor)
        y1, x1 = -(-ry1 // factor), -(-rx1 // factor)
        if y1 > y0 and x1 > x0:
            level[y0:y1, x0:x1] = window[y0 * factor - ry0::factor, x0 * factor - rx0::factor]


def _owned(local: np.ndarray, region: Box, core: Box) -> np.ndarray:
    """Per local id 1..N, whether its centroid (in slide pixels) lies in the core."""
    n = int(local.max(initial=0))
    if n == 0:
        return np.zeros(0, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroids = np.array(ndi.center_of_mass(np.ones(local.shape), local, np.arange(1, n + 1)))
    cy, cx = centroids[:, 0] + region[0], centroids[:, 1] + region[2]
    y0, y1, x0, x1 = core
    return np.nan_to_num((cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1), nan=0).astype(bool)


def _block_detections(store: Path, index: int) -> Path:
    return store / DETECTIONS_FOLDER / f"block_{index:06d}.json"


def _save_detections(store: Path, index: int, written: np.ndarray, pixels: np.ndarray, region: Box,
                     image_mpp: float, uncertainty: np.ndarray | None) -> None:
    """The polygons and measurements of the nuclei one block wrote, in slide coordinates, atomically."""
    from napari_cdal.engine.io.detections import labels_to_geojson, write_text
    from napari_cdal.engine.io.images import to_rgb_float
    from napari_cdal.engine.segment.measurements import nucleus_measurements

    table = nucleus_measurements(written, to_rgb_float(pixels, 3), image_mpp, uncertainty, (region[0], region[2]))
    features = labels_to_geojson(written, table, "detection", offset=(region[0], region[2]))["features"]
    rows = {name: [None if isinstance(v, float) and math.isnan(v) else v for v in np.asarray(column).tolist()]
            for name, column in table.items()}
    path = _block_detections(store, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"features": features, "rows": rows}))


def slide_detections(store: str | Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every block's detections, in block order: GeoJSON features and one table (the CSV's columns)."""
    files = sorted((Path(store) / DETECTIONS_FOLDER).glob("block_*.json"))
    features: list[dict[str, Any]] = []
    columns: dict[str, list[Any]] = {}
    for path in files:
        part = json.loads(path.read_text())
        features += part["features"]
        for name, values in part["rows"].items():
            columns.setdefault(name, []).extend(values)
    table = {name: np.array([np.nan if v is None else v for v in values],
                            dtype=np.int64 if name == "id" else np.float64) for name, values in columns.items()}
    return features, table


@dataclass
class BlockSegmentation:
    """What one block's segmentation hands back: its local labels, their ownership, its pixels and map."""

    index: int
    region: Box
    labels: np.ndarray
    owned: np.ndarray
    pixels: np.ndarray | None
    uncertainty: np.ndarray | None


@functools.lru_cache(maxsize=2)
def _worker_model(path: str) -> CdalModel:
    """A model loaded once per worker process (tasks carry the file's path, never the weights)."""
    from napari_cdal.engine.method.model import load_model

    return load_model(path)


def block_events(model: CdalModel, slide: SlideSource | str | Path, index: int, core: Box, halo: int,
                 image_mpp: float, sampling_steps: int | None, samples: int | None, seed: int, threshold: float,
                 keep_pixels: bool) -> Generator[Progress, None, None]:
    """Segment one block with its halo: segment_image's events, then 'done' with the BlockSegmentation.

    segment_slide passes the events on as ticks, so a Cancel stops inside a block, not after it.
    """
    from napari_cdal.engine.slide.source import open_slide

    source = open_slide(slide) if not isinstance(slide, SlideSource) else slide
    try:
        y0, y1, x0, x1 = core
        region = (max(0, y0 - halo), min(source.height, y1 + halo), max(0, x0 - halo), min(source.width, x1 + halo))
        pixels = source.read(*region)
    finally:
        if source is not slide:
            source.close()
    result = None
    for event in segment_image(model, pixels, image_mpp=image_mpp, sampling_steps=sampling_steps, samples=samples,
                               seed=seed + index, threshold=threshold, keep_steps=False, with_attention=False):
        if event.stage == "done":
            result = event.payload
        else:
            yield event
    yield Progress("done", 1, 1, BlockSegmentation(index, region, result.labels, _owned(result.labels, region, core),
                                                    pixels if keep_pixels else None, result.uncertainty))


def segment_block(model: CdalModel | str, slide: SlideSource | str | Path, index: int, core: Box, halo: int,
                  image_mpp: float, sampling_steps: int | None, samples: int | None, seed: int, threshold: float,
                  keep_pixels: bool) -> BlockSegmentation:
    """Segment one block with its halo (block_events run to the end); a Dask task when `model` and `slide` are paths."""
    if isinstance(model, str):
        model = _worker_model(model)
    return run_to_end(block_events(model, slide, index, core, halo, image_mpp, sampling_steps, samples, seed,
                                   threshold, keep_pixels))


def _awaited(future: Any, index: int, total: int) -> Generator[Progress, None, BlockSegmentation]:
    """Wait for a cluster's block, with a tick every TICK_WAIT_S so that a Cancel is seen meanwhile; its result."""
    from distributed import TimeoutError as WaitTimeout

    while True:
        try:
            return future.result(timeout=TICK_WAIT_S)
        except WaitTimeout:
            yield Progress(TICK, index, total)


def _commit(levels: list[Any], store: Path, block: BlockSegmentation, next_id: int, image_mpp: float,
            detections: bool) -> int:
    """Write a block's owned nuclei under global ids where no earlier nucleus lies (and into the downsampled
    levels); returns the next free id."""
    owned = block.owned
    lut = np.zeros(owned.size + 1, dtype=np.uint32)
    lut[1:][owned] = np.arange(next_id, next_id + int(owned.sum()), dtype=np.uint32)
    mapped = lut[block.labels]
    ry0, ry1, rx0, rx1 = block.region
    window = np.asarray(levels[0][ry0:ry1, rx0:rx1])
    free = (window == 0) & (mapped > 0)
    window[free] = mapped[free]
    levels[0][ry0:ry1, rx0:rx1] = window
    _update_levels(levels, window, block.region)
    if detections:
        _save_detections(store, block.index, np.where(free, mapped, 0), block.pixels, block.region, image_mpp,
                         block.uncertainty)
    return next_id + int(owned.sum())


def segment_slide(model: CdalModel, source: SlideSource, store: str | Path, image_mpp: float,
                  block: int = BLOCK_PX, halo_um: float = HALO_UM, sampling_steps: int | None = None,
                  samples: int | None = None, seed: int = 0, threshold: float = DEFAULT_THRESHOLD,
                  detections: bool = False, client: Any = None,
                  pyramid_min: int | None = None) -> Generator[Progress, None, None]:
    """Segment a slide into a zarr labels store; yields Progress('block', i, n, box) per block, then 'done'.

    Ids are global (1..N in block order). Block i is sampled with seed + i, so a run, or a resumed
    one, repeats exactly, here or on a Dask cluster. With a `client` (dask.distributed) every block
    not yet done is a task on the cluster (its workers load the model and read the slide from their
    paths); this process writes the results in block order, so a lost worker only means its tasks
    run again elsewhere and nothing is half-written. With `detections`, each block also saves its
    nuclei's polygons and measurements in the store (slide_detections gathers them) before it counts
    as done. The store also keeps the labels halved level by level down to `pyramid_min` pixels
    (default PYRAMID_MIN_PX), updated as each block is written, for a viewer and the TIFF's pyramid.
    """
    store = Path(store)
    settings = {"block": block, "halo_um": halo_um, "sampling_steps": sampling_steps, "samples": samples,
                "seed": seed, "threshold": threshold, "image_mpp": image_mpp, "model": Path(model.source).name,
                "detections": detections}
    started = time.perf_counter()
    levels = _open_store(store, (source.height, source.width), settings,
                         PYRAMID_MIN_PX if pyramid_min is None else pyramid_min)
    labels = levels[0]
    done = set(labels.attrs["done"])
    next_id = int(labels.attrs["next_id"])
    halo = math.ceil(halo_um / image_mpp)
    cores = block_cores(source.height, source.width, block)
    common = (halo, image_mpp, sampling_steps, samples, seed, threshold, detections)
    futures = {}
    if client is not None:
        futures = {index: client.submit(segment_block, str(model.source), str(source.path), index, core, *common,
                                        key=f"napari-cdal-block-{store.name}-{index}", pure=False)
                   for index, core in enumerate(cores) if index not in done}
    try:
        for index, core in enumerate(cores):
            if index not in done:
                result = yield from (_awaited(futures[index], index, len(cores)) if futures else
                                     ticks_of(block_events(model, source, index, core, *common), index, len(cores)))
                next_id = _commit(levels, store, result, next_id, image_mpp, detections)
                done.add(index)
                labels.attrs.update(done=sorted(done), next_id=next_id)
                futures.pop(index, None)
            yield Progress("block", index + 1, len(cores), core)
    finally:  # a cancelled run leaves no work queued on the cluster
        if futures:
            client.cancel(list(futures.values()))
    yield Progress("done", len(cores), len(cores),
                   SlideResult(store, next_id - 1, len(cores), time.perf_counter() - started))


def labels_tiff(store: str | Path, path: str | Path, tile: int = 512) -> Path:
    """Write the store's labels as a tiled, zlib-compressed, pyramidal BigTIFF (uint32 ids), tile by tile, atomically.

    Level 0 is the first page; the store's downsampled levels follow as its SubIFDs (how QuPath,
    OpenSlide-style readers and tifffile find a pyramid), each read from the store a tile at a time.
    The pixel size is written in the resolution tags when the run knew it.
    """
    import tifffile

    from napari_cdal.engine.io.checkpoint import atomic_write

    levels = store_levels(store)
    mpp = (levels[0].attrs.get("settings") or {}).get("image_mpp")

    def tiles(level: Any) -> Generator[np.ndarray, None, None]:
        height, width = level.shape
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                part = np.zeros((tile, tile), np.uint32)
                data = np.asarray(level[y:y + tile, x:x + tile])
                part[:data.shape[0], :data.shape[1]] = data
                yield part

    def write(tmp: str) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            for k, level in enumerate(levels):
                options: dict[str, Any] = {"subifds": len(levels) - 1} if k == 0 else {"subfiletype": 1}
                if mpp:
                    factor = 2**k
                    options.update(resolution=(1e4 / (mpp * factor), 1e4 / (mpp * factor)),
                                   resolutionunit="CENTIMETER")
                tif.write(tiles(level), shape=tuple(level.shape), dtype=np.uint32, tile=(tile, tile),
                          compression="zlib", photometric="minisblack", **options)

    atomic_write(path, write)
    return Path(path)
