"""A pyramidal slide on a Dask cluster started by hand against its tiles segmented one by one.

    dask scheduler --port 8786 &
    dask worker tcp://127.0.0.1:8786 --nworkers 2 --nthreads 1 &
    python benchmarks/cluster_check.py --scheduler tcp://127.0.0.1:8786 [--size 4000] [--json FILE]

The slide is a pyramidal JPEG BigTIFF mosaic of the bundled sample tile, each copy flipped or
turned differently, at 0.25 µm/px, and its truth is the same mosaic of the tile's MoNuSeg
annotation. `napari-cdal segment --scheduler` segments it as blocks on the cluster; then each
1000 x 1000 tile of the mosaic is segmented alone with `napari-cdal segment` and the tiles' labels
are put side by side. Both are scored against the truth (AJI, Dice), and against each other.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from _common import ROOT, machine, write_json

from napari_cdal.engine.io.images import read_image
from napari_cdal.engine.labels import relabel_sequential_uint
from napari_cdal.engine.segment.metrics import aggregated_jaccard_index, dice
from napari_cdal.sample_data import SAMPLE_MPP, sample_tile_path

TILE = 1000
TRUTH = ROOT / "tests" / "data" / "TCGA-B0-5698-01Z-00-DX1_instances.png"


def arrange(tile: np.ndarray, size: int) -> np.ndarray:
    """A size x size mosaic of a tile, each copy turned and flipped by its place (ids kept apart for labels)."""
    reps = -(-size // TILE)
    rows, offset = [], 0
    for i in range(reps):
        row = []
        for j in range(reps):
            turned = np.rot90(tile[:TILE, :TILE], (i + j) % 4)
            turned = turned[:, ::-1] if (i * reps + j) % 2 else turned
            if turned.ndim == 2:  # labels: each copy's nuclei get their own ids
                turned = np.where(turned > 0, turned.astype(np.uint32) + offset, 0)
                offset += int(tile.max())
            row.append(turned)
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def mosaic(path: Path, size: int) -> np.ndarray:
    """Write a size x size pyramidal JPEG BigTIFF of the sample tile in eight orientations; return its pixels."""
    image = arrange(read_image(sample_tile_path()), size)
    per_cm = 10_000.0 / SAMPLE_MPP
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        levels = [image[:: 2**k, :: 2**k] for k in range(4) if size // 2**k >= 256]
        tif.write(
            levels[0],
            tile=(512, 512),
            compression="jpeg",
            photometric="rgb",
            subifds=len(levels) - 1,
            resolution=(per_cm, per_cm),
            resolutionunit="CENTIMETER",
        )
        for level in levels[1:]:
            tif.write(
                np.ascontiguousarray(level), tile=(256, 256), compression="jpeg", photometric="rgb", subfiletype=1
            )
    return tifffile.imread(path)


def cli(*args: str) -> float:
    """Run napari-cdal in a fresh process; return its wall time."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import sys; from napari_cdal.cli import main; sys.exit(main())", *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    """Segment the slide on the cluster and its tiles alone; print the comparison and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", required=True, help="address of a running Dask scheduler")
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        slide = root / "slide.tif"
        pixels = mosaic(slide, args.size)
        slide_seconds = cli(
            "segment",
            str(slide),
            "--out",
            str(root / "cluster"),
            "--scheduler",
            args.scheduler,
            "--threads",
            str(args.threads),
        )
        on_cluster = tifffile.imread(root / "cluster" / "slide_labels.tif")
        tiles = root / "tiles"
        tiles.mkdir()
        names = []
        for y in range(0, args.size, TILE):
            for x in range(0, args.size, TILE):
                names.append((y, x, tiles / f"tile_{y}_{x}.tif"))
                tifffile.imwrite(names[-1][2], pixels[y : y + TILE, x : x + TILE])
        tile_seconds = cli(
            "segment", *[str(p) for _, _, p in names], "--out", str(root / "alone"), "--threads", str(args.threads)
        )
        side_by_side = np.zeros(on_cluster.shape, np.uint32)
        offset = 0
        for y, x, path in names:
            labels = tifffile.imread(root / "alone" / f"{path.stem}_labels.tif").astype(np.uint32)
            side_by_side[y : y + labels.shape[0], x : x + labels.shape[1]] = np.where(labels > 0, labels + offset, 0)
            offset += int(labels.max())
        side_by_side = relabel_sequential_uint(side_by_side)
        aji = aggregated_jaccard_index(on_cluster, side_by_side)
        interior = np.ones(on_cluster.shape, bool)
        for edge in range(TILE, args.size, TILE):
            interior[edge - 40 : edge + 40, :] = False
            interior[:, edge - 40 : edge + 40] = False
        aji_inside = aggregated_jaccard_index(np.where(interior, on_cluster, 0), np.where(interior, side_by_side, 0))
    truth = relabel_sequential_uint(arrange(read_image(TRUTH), args.size))
    row = {
        "size": args.size,
        "nuclei_truth": int(truth.max()),
        "nuclei_cluster": int(on_cluster.max()),
        "nuclei_tiles": int(side_by_side.max()),
        "aji_cluster_vs_truth": round(float(aggregated_jaccard_index(on_cluster, truth)), 4),
        "aji_tiles_vs_truth": round(float(aggregated_jaccard_index(side_by_side, truth)), 4),
        "dice_cluster_vs_truth": round(float(dice(on_cluster > 0, truth > 0)), 4),
        "dice_tiles_vs_truth": round(float(dice(side_by_side > 0, truth > 0)), 4),
        "aji_cluster_vs_tiles": round(float(aji), 4),
        "aji_cluster_vs_tiles_away_from_borders": round(float(aji_inside), 4),
        "seconds_cluster": round(slide_seconds, 1),
        "seconds_tiles": round(tile_seconds, 1),
    }
    print("| | nuclei | AJI vs truth | Dice vs truth |")
    print("| --- | --- | --- | --- |")
    print(f"| truth (mosaic of the annotation) | {row['nuclei_truth']} | | |")
    print(
        f"| slide on the cluster | {row['nuclei_cluster']} | {row['aji_cluster_vs_truth']} "
        f"| {row['dice_cluster_vs_truth']} |"
    )
    print(f"| tiles one by one | {row['nuclei_tiles']} | {row['aji_tiles_vs_truth']} | {row['dice_tiles_vs_truth']} |")
    print(
        f"cluster against tiles: AJI {row['aji_cluster_vs_tiles']} "
        f"({row['aji_cluster_vs_tiles_away_from_borders']} 40 px away from the tiles' borders)"
    )
    write_json(
        args.json, {"machine": machine(), "scheduler": "dask scheduler + dask worker, started by hand", "rows": [row]}
    )


if __name__ == "__main__":
    main()
