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

import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_cdal.engine.defaults import DEFAULT_THRESHOLD, DEFAULT_TISSUE, TISSUE_CHOICES
from napari_cdal.engine.events import TICK, Progress, ticks_of
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.segment.windows import Box
from napari_cdal.engine.slide.block_detections import check_detections, save_block_detections, write_slide_detections
from napari_cdal.engine.slide.blocks import (
    BLOCK_PX,
    HALO_UM,
    BlockSegmentation,
    BlockSettings,
    block_events,
    plan_blocks,
    segment_block,
)
from napari_cdal.engine.slide.export import labels_tiff
from napari_cdal.engine.slide.source import SlideSource
from napari_cdal.engine.slide.store import (
    PYRAMID_MIN_PX,
    check_store,
    level_box,
    level_roots,
    open_store,
    pyramid_shapes,
    store_tissue,
)
from napari_cdal.engine.slide.tissue import TissueMask, slide_area_mm2

__all__ = [
    "BLOCK_PX",
    "HALO_UM",
    "ClusterError",
    "SlideResult",
    "block_events",
    "labels_tiff",
    "plan_blocks",
    "segment_block",
    "segment_slide",
    "write_slide_detections",
]
"""segment_slide and what it needs, with the names scripts and the widget import from here (labels_tiff,
write_slide_detections, the blocks' sizes and functions, which now live in blocks.py, block_detections.py
and export.py)."""

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
        if block.pixels is None:  # a run with detections keeps every block's pixels (BlockSettings.keep_pixels)
            raise ValueError(f"block {block.index} came back without its pixels, which its detections are measured on")
        save_block_detections(
            store, block.index, np.where(free, mapped, 0), block.pixels, block.region, image_mpp, block.uncertainty
        )
    return next_id + int(owned.sum())


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
        check_detections(store, sorted(done))
    next_id = int(labels.attrs["next_id"])
    block_settings = BlockSettings(image_mpp, sampling_steps, samples, seed, threshold, detections)
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
                block_settings,
                runtime=runtime,
                pure=False,
            )
            for index in sorted(to_run)
        }
    try:
        for index, part in enumerate(planned):
            if index in to_run and part.region is not None:  # to_run holds blocks with a region only
                result = yield from (
                    _gathered(client, futures[index], index, len(planned))
                    if futures
                    else ticks_of(
                        block_events(model, source, index, part.core, part.region, block_settings),
                        index,
                        len(planned),
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
