"""Whole slides for `napari-cdal segment`: which images are slides, their µm/px and one block's memory, the Dask
cluster, and one slide's run into its resumable store and files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_cdal.cli import common
from napari_cdal.engine.slide.source import SLIDE_MIN_PIXELS, open_slide


def dask_client(args: argparse.Namespace) -> tuple[Any, Any]:
    """(client, the local cluster it runs on or None): --scheduler's cluster, or one of --workers processes."""
    if not args.scheduler and not args.workers:
        return None, None
    from distributed import Client, LocalCluster

    if args.scheduler:
        return Client(args.scheduler, timeout="20s"), None
    # one torch thread per worker process: more spin against each other when the processes fill the cores
    threads = str(args.threads or 1)
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
    )
    return Client(cluster), cluster


def is_slide(path: Path, size: tuple[int, int], forced: bool) -> bool:
    """Whether an image is segmented as a whole slide: asked for, a slide format, or SLIDE_MIN_PIXELS or more."""
    return forced or path.suffix.lower() in (".svs", ".ndpi") or size[0] * size[1] >= SLIDE_MIN_PIXELS


def slide_mpp(args: argparse.Namespace, path: Path) -> float:
    """The µm/px a slide is segmented at: --mpp when typed, else the slide's own (its header is read, nothing more)."""
    from napari_cdal.engine.checks import check_mpp

    with open_slide(path) as source:
        typed = "--mpp" in getattr(args, "typed_options", ())
        return args.mpp if typed or source.mpp is None else check_mpp(source.mpp, f"{path.name}'s µm/px")


def check_slide_block_memory(path: Path, mpp: float, model: Any, steps: int, samples: int) -> None:
    """One block with its halo must fit in memory (the slide's size does not matter: blocks are read one by one)."""
    import math

    from napari_cdal.engine.checks import check_memory, segment_peak_bytes
    from napari_cdal.engine.slide.stitch import BLOCK_PX, HALO_UM

    side = BLOCK_PX + 2 * math.ceil(HALO_UM / mpp)
    check_memory(
        segment_peak_bytes(side, side, mpp, model.config, steps, samples, False, False),
        f"{path}, one block of {side} x {side} px",
        "close other programs, or give fewer --samples",
    )


def segment_slide_file(
    args: argparse.Namespace,
    model: Any,
    path: Path,
    files: dict[str, Path],
    mpp: float,
    sampling_steps: int,
    samples: int,
    client: Any,
) -> str:
    """One slide through engine.slide: labels into <stem>_labels.zarr (resumable), then a tiled BigTIFF, the tissue
    mask and the nuclei's files; returns the line that says what was found."""
    from napari_cdal.engine.events import TICK
    from napari_cdal.engine.slide.stitch import SlideResult, labels_tiff, segment_slide, write_slide_detections
    from napari_cdal.engine.slide.store import remove_store
    from napari_cdal.engine.slide.tissue import save_tissue_png

    if args.overwrite and files["store"].exists():
        remove_store(files["store"])
    with open_slide(path) as source:
        bar = common.progress(0, path.name, "block")
        found: SlideResult | None = None
        detections = "geojson" in files or "measurements" in files
        for event in segment_slide(
            model,
            source,
            files["store"],
            mpp,
            sampling_steps=sampling_steps,
            samples=samples,
            seed=args.seed,
            threshold=args.threshold,
            detections=detections,
            client=client,
            tissue=args.tissue,
        ):
            if event.stage == "done":
                found = event.payload
            elif event.stage != TICK:
                common.advance(bar, event.index, event.total)
        bar.close()
    result = common.finished(found, f"segmenting {path.name}")
    labels_tiff(result.store, files["labels"])
    if result.tissue is not None:
        save_tissue_png(result.tissue, files["tissue"])
    if detections:
        write_slide_detections(result.store, files.get("geojson"), files.get("measurements"))
    tissue = (
        "every block segmented (--tissue all)"
        if result.tissue_mm2 is None
        else f"{result.skipped} of glass skipped; tissue {result.tissue_mm2:.3g} mm²"
    )
    return (
        f"{path.name}: {result.n_nuclei} nuclei in {result.blocks} blocks at {mpp:g} µm/px ({tissue} of "
        f"{result.slide_mm2:.3g} mm² slide), {result.seconds:.1f} s"
    )
