"""Whole-slide segmentation: peak memory and time for mosaics of growing size, through `napari-cdal segment`.

    python benchmarks/slides.py --sizes 4000 8000 [--json benchmarks/results/slides.json]

Each size is a tiled BigTIFF mosaic of the bundled sample tile at 0.25 µm/px, segmented with
`--slide` (and, with --in-memory, without) in a fresh process, so that its peak resident memory is
its own, at the bundled model's defaults. Throughput is in mm² of tissue per minute here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile
from _common import machine, write_json

from napari_cdal.engine.io.images import read_image
from napari_cdal.sample_data import SAMPLE_MPP, sample_tile_path


def mosaic(path: Path, size: int) -> None:
    """A size x size tiled BigTIFF made of copies of the sample tile, with its µm/px in the tags."""
    tile = read_image(sample_tile_path())
    reps = -(-size // tile.shape[0])
    image = np.tile(tile, (reps, reps, 1))[:size, :size]
    per_cm = 10_000.0 / SAMPLE_MPP
    tifffile.imwrite(path, image, tile=(512, 512), compression="zlib", bigtiff=True,
                     resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")


def peak_run(command: list[str]) -> tuple[float, float, str]:
    """(seconds, peak resident GiB of the process and its children, stdout) of one command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            rss = watched.memory_info().rss + sum(c.memory_info().rss for c in watched.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    out = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {out}")
    return time.perf_counter() - started, peak / 2**30, out.strip()


def main() -> None:
    """Time and measure each size; print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 8000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--in-memory", action="store_true",
                        help="also run each size through the in-memory path, for comparison")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            slide = Path(folder) / f"mosaic_{size}.tif"
            mosaic(slide, size)
            for path in ["slide", "in memory"] if args.in_memory else ["slide"]:
                command = [sys.executable, "-c", "import sys; from napari_cdal.cli import main; sys.exit(main())",
                           "segment", str(slide), "--out", str(Path(folder) / f"out_{size}_{path[:2]}"),
                           "--threads", str(args.threads)] + (["--slide"] if path == "slide" else [])
                seconds, peak, out = peak_run(command)
                area_mm2 = (size * SAMPLE_MPP / 1000.0) ** 2
                rows.append({"size": size, "path": path, "seconds": round(seconds, 1), "peak_rss_gib": round(peak, 2),
                             "mm2": round(area_mm2, 2), "mm2_per_min": round(area_mm2 / (seconds / 60.0), 2),
                             "output": out.split(" -> ")[0]})
                print(rows[-1], flush=True)
    print("| side (px) | path | mm² | seconds | peak RSS (GiB) | mm²/min |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['size']} | {row['path']} | {row['mm2']} | {row['seconds']} | {row['peak_rss_gib']} "
              f"| {row['mm2_per_min']} |")
    slides = [row for row in rows if row["path"] == "slide"]
    if len(slides) > 1:
        print(f"slide path, peak memory of the largest over the smallest: "
              f"{slides[-1]['peak_rss_gib'] / slides[0]['peak_rss_gib']:.2f}x")
    write_json(args.json, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
