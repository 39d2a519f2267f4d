"""A slide segmented block by block into a zarr store; each nucleus is kept once, by the block that owns its centroid.

Every block is read with a halo around it (wider than a nucleus), segmented with segment_image,
and only the nuclei whose centroid falls inside the block's own part (its core) are kept, whole,
halo pixels included; a nucleus cut by the halo's outer edge has its centroid outside the core
and is the neighbour's. Blocks are written in order, each nucleus only where no earlier one
lies, and a block counts as done once it is listed in the store: a re-run skips done blocks, so
an interrupted run goes on where it stopped. Memory holds one block and its halo, whatever the
slide's size. Blocks without tissue (tissue.py) are skipped, and a block at the tissue's edge
reads only the part of it near tissue.

A block commits its labels (level 0, then the downsampled levels), then its detections, and only
then is marked done, with the next free id. A run stopped anywhere in between does the block
again: ids at or above the stored next id can only be that unfinished commit's, so they are
cleared from the window before it is written again, and the labels and detections come out as
if the run had never stopped. On resume, store.check_store first verifies the done blocks' chunks.
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

from napari_cdal.engine.defaults import DEFAULT_THRESHOLD, DEFAULT_TISSUE, TISSUE_CHOICES
from napari_cdal.engine.events import TICK, Progress, run_to_end, ticks_of
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.tiling import Box
from napari_cdal.engine.slide.source import SlideSource
from napari_cdal.engine.slide.store import (
    StoreError,
    box_chunks,
    check_store,
    chunk_file,
    level_box,
    level_roots,
    open_store,
    open_store_array,
    restart_fix,
    store_levels,
    store_tissue,
)
from napari_cdal.engine.slide.tissue import TissueMask, slide_area_mm2, tissue_part

BLOCK_PX = 2048
"""Side of a block's core in slide pixels: about 0.5 GB of working memory with its halo."""

HALO_UM = 16.0
"""Margin read around each block, in µm: wider than any nucleus, so none is cut at a seam. On the validation tiles
laid side by side (benchmarks/slide_blocks.py), 16 µm scored as 32 µm did (Dice 0.795 / AJI 0.581 against 0.794 /
0.576 with 2048-px blocks) and reads 13 % fewer pixels than 32 µm's 27 % more than the block."""

DETECTIONS_FOLDER = "detections"
"""Where in the store each block keeps its nuclei's polygons and measurements."""

PYRAMID_MIN_PX = 1024
"""Levels are halved until the last one is smaller than this on its longer side."""

TICK_WAIT_S = 0.25
"""How long a run on a cluster waits for a block before it yields a tick (a place for a Cancel to stop)."""


@dataclass
class SlideResult:
    """Where the labels are, how many nuclei they hold, how many blocks were glass, the areas and the run's time."""

    store: Path
    n_nuclei: int
    blocks: int
    seconds: float
    skipped: int = 0
    slide_mm2: float = 0.0
    tissue: TissueMask | None = None
    """The tissue mask, or None when every block was segmented (tissue 'all')."""

    @property
    def tissue_mm2(self) -> float | None:
        """The tissue's area in mm² (None when no tissue was detected: tissue 'all')."""
        return None if self.tissue is None else self.tissue.area_mm2()


def block_cores(height: int, width: int, block: int) -> list[Box]:
    """The blocks' own parts (y0, y1, x0, x1), row by row, covering the slide once."""
    return [
        (y, min(y + block, height), x, min(x + block, width))
        for y in range(0, height, block)
        for x in range(0, width, block)
    ]


def pyramid_shapes(height: int, width: int, smallest: int = PYRAMID_MIN_PX) -> list[tuple[int, int]]:
    """The shapes of level 0 and of each level halved from it, until one is under `smallest` on its longer side."""
    shapes = [(height, width)]
    while max(shapes[-1]) >= smallest:
        factor = 2 ** len(shapes)
        shapes.append((-(-height // factor), -(-width // factor)))
    return shapes


@dataclass(frozen=True)
class PlannedBlock:
    """One block: its core (whose nuclei it owns) and the region read around it, None when it is glass (skipped)."""

    core: Box
    region: Box | None


def plan_blocks(height: int, width: int, block: int, halo: int, tissue: TissueMask | None) -> list[PlannedBlock]:
    """Every block of the slide with what it reads: the part of its core near tissue (all of it without a mask),
    widened by the halo; glass blocks read nothing."""
    widened = None if tissue is None else tissue.widened()
    planned = []
    for core in block_cores(height, width, block):
        part = core if widened is None else tissue_part(widened, tissue.factor, core)
        region = (
            None
            if part is None
            else (
                max(0, part[0] - halo),
                min(height, part[1] + halo),
                max(0, part[2] - halo),
                min(width, part[3] + halo),
            )
        )
        planned.append(PlannedBlock(core, region))
    return planned


def _write_labels(levels: list[Any], window: np.ndarray, region: Box) -> None:
    """Write a window of level 0, then copy it into each downsampled level."""
    ry0, ry1, rx0, rx1 = region
    levels[0][ry0:ry1, rx0:rx1] = window
    _update_levels(levels, window, region)


def _update_levels(levels: list[Any], window: np.ndarray, region: Box) -> None:
    """Copy a written window of level 0 into each downsampled level (nearest: every 2^k-th pixel)."""
    for k, level in enumerate(levels[1:], start=1):
        factor = 2**k
        y0, y1, x0, x1 = level_box(region, k)
        if y1 > y0 and x1 > x0:
            level[y0:y1, x0:x1] = window[y0 * factor - region[0] :: factor, x0 * factor - region[2] :: factor]


def _mark_done(labels: Any, done: set[int], next_id: int) -> None:
    """The block's commit is complete: list it as done, with the next free id, in one write of the store's header."""
    labels.attrs.update(done=sorted(done), next_id=next_id)


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


def _save_detections(
    store: Path,
    index: int,
    written: np.ndarray,
    pixels: np.ndarray,
    region: Box,
    image_mpp: float,
    uncertainty: np.ndarray | None,
) -> None:
    """The polygons and measurements of the nuclei one block wrote, in slide coordinates, atomically."""
    from napari_cdal.engine.io.detections import labels_to_geojson, write_text
    from napari_cdal.engine.io.images import to_rgb_float
    from napari_cdal.engine.segment.measurements import nucleus_measurements

    table = nucleus_measurements(written, to_rgb_float(pixels, 3), image_mpp, uncertainty, (region[0], region[2]))
    features = labels_to_geojson(written, table, "detection", offset=(region[0], region[2]))["features"]
    rows = {
        name: [None if isinstance(v, float) and math.isnan(v) else v for v in np.asarray(column).tolist()]
        for name, column in table.items()
    }
    path = _block_detections(store, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"features": features, "rows": rows}))


def _done_detections(store: Path) -> Generator[dict[str, Any], None, None]:
    """Each done block's saved detections ('features', 'rows'), in block order, one block in memory at a time."""
    for index in open_store_array(store, store).attrs["done"]:
        path = _block_detections(store, index)
        try:
            found = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(
                f"{store} is damaged: the detections of block {index}, {path.relative_to(store)}, cannot "
                f"be read ({type(exc).__name__}); {restart_fix(Path(store))}"
            ) from exc
        yield found


def _rows_table(rows: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """A block's saved rows as the CSV's columns: ids as integers, measurements as floats (None is NaN)."""
    return {
        name: np.array([np.nan if v is None else v for v in values], dtype=np.int64 if name == "id" else np.float64)
        for name, values in rows.items()
    }


def write_slide_detections(store: str | Path, geojson: Path | None = None, table: Path | None = None) -> None:
    """Every done block's detections, in block order, into a GeoJSON FeatureCollection and/or a CSV table, written
    block by block: a slide of a million nuclei never holds them all."""
    from napari_cdal.engine.io.detections import write_csv_tables, write_feature_collection

    store = Path(store)
    if geojson is not None:
        write_feature_collection(geojson, (part["features"] for part in _done_detections(store)))
    if table is not None:
        write_csv_tables(table, (_rows_table(part["rows"]) for part in _done_detections(store)))


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
def _worker_model(path: str, runtime: tuple[str, str] | None) -> CdalModel:
    """A model loaded once per worker process, on the runtime the run chose (name, precision; None: the reference);
    tasks carry the file's path, never the weights."""
    from napari_cdal.engine.method.model import load_model
    from napari_cdal.engine.method.runtime import with_runtime

    model = load_model(path)
    return model if runtime is None else with_runtime(model, *runtime)


def block_events(
    model: CdalModel,
    slide: SlideSource | str | Path,
    index: int,
    core: Box,
    region: Box,
    image_mpp: float,
    sampling_steps: int | None,
    samples: int | None,
    seed: int,
    threshold: float,
    keep_pixels: bool,
) -> Generator[Progress, None, None]:
    """Segment one block's region (its core, or the core's part near tissue, with the halo): segment_image's events,
    then 'done' with the BlockSegmentation, whose nuclei are owned by `core`.

    segment_slide passes the events on as ticks, so a Cancel stops inside a block, not after it.
    """
    from napari_cdal.engine.slide.source import open_slide

    source = open_slide(slide) if not isinstance(slide, SlideSource) else slide
    try:
        pixels = source.read(*region)
    finally:
        if source is not slide:
            source.close()
    result = None
    for event in segment_image(
        model,
        pixels,
        image_mpp=image_mpp,
        sampling_steps=sampling_steps,
        samples=samples,
        seed=seed + index,
        threshold=threshold,
        keep_steps=False,
        with_attention=False,
    ):
        if event.stage == "done":
            result = event.payload
        else:
            yield event
    yield Progress(
        "done",
        1,
        1,
        BlockSegmentation(
            index,
            region,
            result.labels,
            _owned(result.labels, region, core),
            pixels if keep_pixels else None,
            result.uncertainty,
        ),
    )


def segment_block(
    model: CdalModel | str,
    slide: SlideSource | str | Path,
    index: int,
    core: Box,
    region: Box,
    image_mpp: float,
    sampling_steps: int | None,
    samples: int | None,
    seed: int,
    threshold: float,
    keep_pixels: bool,
    runtime: tuple[str, str] | None = None,
) -> BlockSegmentation:
    """Segment one block (block_events run to the end); a Dask task when `model` and `slide` are paths, the model
    then loaded on `runtime` (its name and precision)."""
    if isinstance(model, str):
        model = _worker_model(model, runtime)
    return run_to_end(
        block_events(
            model, slide, index, core, region, image_mpp, sampling_steps, samples, seed, threshold, keep_pixels
        )
    )


class ClusterError(ValueError):
    """A block the cluster could not finish (its workers kept dying, or the cluster cancelled it); the blocks done so
    far are kept, so running the command again goes on from there."""


def _gathered(client: Any, future: Any, index: int, total: int) -> Generator[Progress, None, BlockSegmentation]:
    """Wait for a block's task on the cluster, with a tick every TICK_WAIT_S (a place for a Cancel), then gather it.

    Only the wait has a timeout, never the gather: a gather cut short by a timeout (what polling
    `future.result(timeout=...)` does) can leave distributed's client unable to gather again, which
    ended runs on a loaded machine in "Couldn't gather keys" and an UnboundLocalError. A worker that
    dies with the task, or with its result, is the scheduler's to handle: it runs the task again
    elsewhere, and the future is pending meanwhile.
    """
    from distributed import KilledWorker, wait
    from distributed import TimeoutError as WaitTimeout

    while not future.done():
        try:
            with client.as_current():  # wait() runs on the current client's loop: this one's
                wait([future], timeout=TICK_WAIT_S)
        except WaitTimeout:
            yield Progress(TICK, index, total)
    if future.cancelled():
        raise ClusterError(
            f"block {index} was cancelled by the cluster (its scheduler restarted or was lost); "
            "the blocks done are kept: run the command again to go on"
        )
    try:
        return future.result()
    except KilledWorker as exc:
        raise ClusterError(
            f"block {index} was lost with every worker that ran it (distributed gives up after a "
            "few); a worker that runs out of memory dies so: give each worker more; the blocks done are "
            "kept: run the command again to go on"
        ) from exc


def _commit(
    levels: list[Any], store: Path, block: BlockSegmentation, next_id: int, image_mpp: float, detections: bool
) -> int:
    """Write a block's owned nuclei under global ids where no earlier nucleus lies (and into the downsampled
    levels), then its detections; returns the next free id. The caller marks the block done after this."""
    owned = block.owned
    lut = np.zeros(owned.size + 1, dtype=np.uint32)
    lut[1:][owned] = np.arange(next_id, next_id + int(owned.sum()), dtype=np.uint32)
    mapped = lut[block.labels]
    ry0, ry1, rx0, rx1 = block.region
    window = np.asarray(levels[0][ry0:ry1, rx0:rx1])
    window[window >= next_id] = 0  # left by this block's own commit in a run stopped before it was marked done
    free = (window == 0) & (mapped > 0)
    window[free] = mapped[free]
    _write_labels(levels, window, block.region)
    if detections:
        _save_detections(
            store, block.index, np.where(free, mapped, 0), block.pixels, block.region, image_mpp, block.uncertainty
        )
    return next_id + int(owned.sum())


def _check_detections(store: Path, done: list[int]) -> None:
    """Each done block's detections file is present and holds JSON (they are gathered at the end of the run)."""
    for index in done:
        path = _block_detections(store, index)
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{store} is damaged: block {index} is done but its detections "
                f"{path.relative_to(store)} are {'missing' if not path.exists() else 'unreadable'} "
                f"({type(exc).__name__}); {restart_fix(store)}"
            ) from exc


def segment_slide(
    model: CdalModel,
    source: SlideSource,
    store: str | Path,
    image_mpp: float,
    block: int = BLOCK_PX,
    halo_um: float = HALO_UM,
    sampling_steps: int | None = None,
    samples: int | None = None,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    detections: bool = False,
    client: Any = None,
    pyramid_min: int | None = None,
    tissue: str = DEFAULT_TISSUE,
) -> Generator[Progress, None, None]:
    """Segment a slide into a zarr labels store; yields Progress('block', i, n, box) per block, then 'done'.

    Ids are global (1..N in block order). Block i is sampled with seed + i, so a run, or a resumed
    one, repeats exactly, here or on a Dask cluster. With `tissue` 'auto' the slide's tissue is
    found first on a low-resolution view (tissue.detect_tissue, kept in the store) and blocks of
    glass are skipped; 'all' segments every block. With a `client` (dask.distributed) every block
    not yet done is a task on the cluster (its workers load the model and read the slide from their
    paths); this process writes the results in block order, so a lost worker only means its tasks
    run again elsewhere and nothing is half-written. With `detections`, each block also saves its
    nuclei's polygons and measurements in the store (write_slide_detections writes them out) before it counts
    as done. The store also keeps the labels halved level by level down to `pyramid_min` pixels
    (default PYRAMID_MIN_PX), updated as each block is written, for a viewer and the TIFF's pyramid.
    A store left by an earlier run is checked before any block runs (store.check_store).
    """
    if tissue not in TISSUE_CHOICES:
        raise ValueError(f"tissue {tissue!r} is not one of {', '.join(TISSUE_CHOICES)}")
    store = Path(store)
    settings = {
        "block": block,
        "halo_um": halo_um,
        "sampling_steps": sampling_steps,
        "samples": samples,
        "seed": seed,
        "threshold": threshold,
        "image_mpp": image_mpp,
        "model": Path(model.source).name,
        "detections": detections,
        "tissue": tissue,
    }
    started = time.perf_counter()
    shapes = pyramid_shapes(source.height, source.width, PYRAMID_MIN_PX if pyramid_min is None else pyramid_min)
    levels = open_store(store, shapes, settings)
    labels = levels[0]
    mask = store_tissue(store, labels, source, image_mpp) if tissue == "auto" else None
    halo = math.ceil(halo_um / image_mpp)
    planned = plan_blocks(source.height, source.width, block, halo, mask)
    done = set(labels.attrs["done"])
    check_store(
        store, levels, level_roots(store, len(levels)), shapes, {index: planned[index].region for index in done}
    )
    if detections:
        _check_detections(store, sorted(done))
    next_id = int(labels.attrs["next_id"])
    common = (image_mpp, sampling_steps, samples, seed, threshold, detections)
    to_run = {index for index, part in enumerate(planned) if part.region is not None and index not in done}
    futures = {}
    if client is not None:  # every block at once; keys of their own (pure=False), never an earlier run's
        runtime = (model.runtime.name, model.runtime.precision) if model.runtime else None
        futures = {
            index: client.submit(
                segment_block,
                str(model.source),
                str(source.path),
                index,
                planned[index].core,
                planned[index].region,
                *common,
                runtime=runtime,
                pure=False,
            )
            for index in sorted(to_run)
        }
    try:
        for index, part in enumerate(planned):
            if index in to_run:
                result = yield from (
                    _gathered(client, futures[index], index, len(planned))
                    if futures
                    else ticks_of(
                        block_events(model, source, index, part.core, part.region, *common), index, len(planned)
                    )
                )
                next_id = _commit(levels, store, result, next_id, image_mpp, detections)
                done.add(index)
                _mark_done(labels, done, next_id)
                futures.pop(index, None)
            yield Progress("block", index + 1, len(planned), part.core)
    finally:  # a cancelled run leaves no work queued on the cluster
        if futures:
            client.cancel(list(futures.values()))
    skipped = sum(part.region is None for part in planned)
    yield Progress(
        "done",
        len(planned),
        len(planned),
        SlideResult(
            store,
            next_id - 1,
            len(planned),
            time.perf_counter() - started,
            skipped,
            slide_area_mm2(source.height, source.width, image_mpp),
            mask,
        ),
    )


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
