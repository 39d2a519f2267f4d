"""The slide path's block size and halo against accuracy at the seams and time per mm², beside the tile path.

    python benchmarks/slide_blocks.py [--configs 2048:32 4096:16 ...] [--block-test 1024]
                                      [--overlaps 64 32 16] [--json FILE]

The 7 validation tiles are laid side by side into one 1000 x 7000 slide (a tiled TIFF at
0.25 µm/px) with their true nuclei. Each configuration BLOCK:HALO_UM segments it through
engine.slide.segment_slide (every block, no tissue detection) with the bundled model at its
defaults on the CLI's runtime; each tile's window of the stitched labels is scored against its
truth (Dice, AJI, mean over the tiles). The tile path segments each tile whole. `--block-test`
adds a run with small blocks, so that seams cut through every tile: what a narrower halo costs
shows there. Seconds are wall time of the whole segment_slide (its store included). `--overlaps`
first segments each validation tile cut into 256-px tiles (model pixels), so that a seam crosses
each, at each tile overlap: what the overlap costs at the seams.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from _common import default_data_dir, machine, split, table, write_json

from napari_cdal.engine.data.tiles import load_folder
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.method.model import load_model
from napari_cdal.engine.method.runtime import with_runtime
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import score_segmentation
from napari_cdal.engine.slide.source import open_slide
from napari_cdal.engine.slide.stitch import segment_slide
from napari_cdal.engine.slide.store import store_levels

MPP = 0.25


def scores(labels: np.ndarray, truths: list[np.ndarray]) -> dict[str, float]:
    """Mean Dice and AJI of each tile's window of side-by-side labels against its truth."""
    rows, x = [], 0
    for truth in truths:
        window = labels[:, x : x + truth.shape[1]]
        rows.append(score_segmentation(window, truth > 0, truth))
        x += truth.shape[1]
    return {key: statistics.mean(row[key] for row in rows) for key in ("dice", "aji")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", nargs="+", default=["2048:32", "2048:16", "4096:32", "4096:16"], help="BLOCK:HALO_UM pairs"
    )
    parser.add_argument("--block-test", type=int, default=512, help="also run this block size at each halo (0: no)")
    parser.add_argument(
        "--overlaps",
        type=int,
        nargs="*",
        default=[],
        help="tile overlaps (model px) to score with 256-px tiles before the slide runs",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tiles = load_folder(default_data_dir(), split()["validation"])
    height = min(tile.image.shape[0] for tile in tiles)
    truths = [tile.instances[:height] for tile in tiles]
    model = with_runtime(load_model(None))
    seams = []
    for overlap in args.overlaps:
        cut = [
            run_to_end(
                segment_image(
                    model,
                    tile.image[:height],
                    image_mpp=MPP,
                    keep_steps=False,
                    with_attention=False,
                    window_px=256,
                    overlap=overlap,
                )
            ).labels
            for tile in tiles
        ]
        seams.append({"tile_px": 256, "overlap_px": overlap, **scores(np.hstack(cut), truths)})
        print(seams[-1], flush=True)
    rows = []
    started = time.perf_counter()
    tile_labels = [
        run_to_end(
            segment_image(model, tile.image[:height], image_mpp=MPP, keep_steps=False, with_attention=False)
        ).labels
        for tile in tiles
    ]
    area = sum(truth.size for truth in truths) * (MPP / 1000.0) ** 2
    seconds = time.perf_counter() - started
    rows.append(
        {
            "path": "tile",
            "block": None,
            "halo_um": None,
            "seconds": seconds,
            "mm2_per_min": area / (seconds / 60.0),
            **scores(np.hstack(tile_labels), truths),
        }
    )
    print(rows[-1], flush=True)
    configs = [tuple(map(float, c.split(":"))) for c in args.configs]
    if args.block_test:
        configs += [(args.block_test, halo) for halo in sorted({halo for _, halo in configs})]
    with tempfile.TemporaryDirectory() as folder:
        slide = Path(folder) / "validation_row.tif"
        tifffile.imwrite(
            slide,
            np.hstack([tile.image[:height] for tile in tiles]),
            tile=(512, 512),
            photometric="rgb",
            resolution=(1e4 / MPP,) * 2,
            resolutionunit="CENTIMETER",
        )
        for index, (block, halo) in enumerate(configs):
            store = Path(folder) / f"run_{index}.zarr"
            started = time.perf_counter()
            with open_slide(slide) as source:
                run_to_end(segment_slide(model, source, store, MPP, block=int(block), halo_um=halo, tissue="all"))
            seconds = time.perf_counter() - started
            labels = np.asarray(store_levels(store)[0][:])
            rows.append(
                {
                    "path": "slide",
                    "block": int(block),
                    "halo_um": halo,
                    "seconds": seconds,
                    "mm2_per_min": area / (seconds / 60.0),
                    **scores(labels, truths),
                }
            )
            print(rows[-1], flush=True)
    if seams:
        print(table(seams, ["tile_px", "overlap_px", "dice", "aji"]))
    print(table(rows, ["path", "block", "halo_um", "seconds", "mm2_per_min", "dice", "aji"]))
    write_json(
        args.json,
        {
            "machine": machine(),
            "threads": args.threads,
            "area_mm2": area,
            "runtime": model.runtime.describe(),
            "seams": seams,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
