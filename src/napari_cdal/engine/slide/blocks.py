"""One block of a slide: its core and the region read round it, its segmentation, and the nuclei it owns (those
whose centroid lies in its core), on this process or as a task on a Dask cluster."""

from __future__ import annotations

import functools
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_cdal.engine.events import Progress, run_to_end
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.segment.image import SegmentationResult, segment_image
from napari_cdal.engine.segment.windows import Box
from napari_cdal.engine.slide.source import SlideSource
from napari_cdal.engine.slide.tissue import TissueMask, tissue_part

BLOCK_PX = 2048
"""Side of a block's core in slide pixels: about 0.5 GB of working memory with its halo."""

HALO_UM = 16.0
"""Margin read around each block, in µm: wider than any nucleus, so none is cut at a seam. On the validation tiles
laid side by side (benchmarks/slide_blocks.py), 16 µm scored as 32 µm did (Dice 0.795 / AJI 0.581 against 0.794 /
0.576 with 2048-px blocks) and reads 13 % fewer pixels than 32 µm's 27 % more than the block."""


def block_cores(height: int, width: int, block: int) -> list[Box]:
    """The blocks' own parts (y0, y1, x0, x1), row by row, covering the slide once."""
    return [
        (y, min(y + block, height), x, min(x + block, width))
        for y in range(0, height, block)
        for x in range(0, width, block)
    ]


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
        part = core if tissue is None or widened is None else tissue_part(widened, tissue.factor, core)
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


def owned_nuclei(local: np.ndarray, region: Box, core: Box) -> np.ndarray:
    """Per local id 1..N, whether its centroid (in slide pixels) lies in the core."""
    n = int(local.max(initial=0))
    if n == 0:
        return np.zeros(0, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroids = np.array(ndi.center_of_mass(np.ones(local.shape), local, np.arange(1, n + 1)))
    cy, cx = centroids[:, 0] + region[0], centroids[:, 1] + region[2]
    y0, y1, x0, x1 = core
    return np.nan_to_num((cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1), nan=0).astype(bool)


@dataclass(frozen=True)
class BlockSettings:
    """How every block of a run is segmented; block i is sampled with seed + i, so a run repeats exactly."""

    image_mpp: float
    sampling_steps: int | None
    samples: int | None
    seed: int
    threshold: float
    keep_pixels: bool
    """Hand the block's pixels back with its labels (its detections are measured on them)."""


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
    model: CdalModel, slide: SlideSource | str | Path, index: int, core: Box, region: Box, settings: BlockSettings
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
    result: SegmentationResult | None = None
    for event in segment_image(
        model,
        pixels,
        image_mpp=settings.image_mpp,
        sampling_steps=settings.sampling_steps,
        samples=settings.samples,
        seed=settings.seed + index,
        threshold=settings.threshold,
        keep_steps=False,
        with_attention=False,
    ):
        if event.stage == "done":
            result = event.payload
        else:
            yield event
    if result is None:
        raise ValueError(f"block {index}: segment_image ended without its result")
    yield Progress(
        "done",
        1,
        1,
        BlockSegmentation(
            index,
            region,
            result.labels,
            owned_nuclei(result.labels, region, core),
            pixels if settings.keep_pixels else None,
            result.uncertainty,
        ),
    )


def segment_block(
    model: CdalModel | str,
    slide: SlideSource | str | Path,
    index: int,
    core: Box,
    region: Box,
    settings: BlockSettings,
    runtime: tuple[str, str] | None = None,
) -> BlockSegmentation:
    """Segment one block (block_events run to the end); a Dask task when `model` and `slide` are paths, the model
    then loaded on `runtime` (its name and precision)."""
    if isinstance(model, str):
        model = _worker_model(model, runtime)
    return run_to_end(block_events(model, slide, index, core, region, settings))
