"""Whole slides through `napari-cdal segment`: mm²/min of tissue and of slide, peak memory, blocks skipped.

    python benchmarks/slides.py [--cases real-size mosaic] [--mosaic-side 20000] [--settings defaults fast]
                                [--island-side 4000] [--json benchmarks/results/slides.json]

Cases, each written into a temporary folder and segmented in a fresh process (so its peak
resident memory is its own), with --slide --geojson at each setting (the defaults, and --fast):
- real-size: a 100,000 x 80,000 px pyramidal JPEG BigTIFF at 0.25 µm/px, glass but for three
  square islands of real H&E (the bundled sample tile, repeated), as tools/synthetic_slide.py
  writes it;
- mosaic: a tiled BigTIFF of --mosaic-side px, all tissue (the sample tile repeated).
Beside them, the tile path: the sample tile segmented in memory at each setting, in mm² per
minute, so that the slide path's cost per mm² of tissue reads as a ratio to it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile
import torch
from _common import machine, table, write_json
from speed import seconds_per_tile

from napari_cdal.engine.defaults import FAST_SETTINGS
from napari_cdal.engine.io.images import read_image
from napari_cdal.engine.method.model import load_model
from napari_cdal.engine.method.runtime import with_runtime
from napari_cdal.sample_data import SAMPLE_MPP, sample_tile_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from synthetic_slide import write_sparse_slide  # noqa: E402

SETTINGS = {"defaults": [], "fast": ["--fast"]}
SUMMARY = re.compile(
    r"(?P<nuclei>\d+) nuclei in (?P<blocks>\d+) blocks .*?\((?:(?P<skipped>\d+) of glass skipped; )?"
    r"tissue (?P<tissue>[\d.]+) mm² of (?P<slide>[\d.]+) mm² slide\)"
)


def sample_repeated(side: int) -> np.ndarray:
    """A side x side RGB image made of copies of the sample tile: real H&E everywhere."""
    tile = read_image(sample_tile_path())[..., :3]
    reps = -(-side // tile.shape[0])
    return np.ascontiguousarray(np.tile(tile, (reps, reps, 1))[:side, :side])


def write_mosaic(path: Path, side: int) -> Path:
    """A side x side tiled BigTIFF of the repeated sample tile, with its µm/px in the tags."""
    per_cm = 10_000.0 / SAMPLE_MPP
    tifffile.imwrite(
        path,
        sample_repeated(side),
        tile=(512, 512),
        compression="jpeg",
        bigtiff=True,
        photometric="rgb",
        resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER",
    )
    return path


def write_real_size(path: Path, island_side: int) -> Path:
    """The real-size slide: three islands of the repeated sample tile on glass."""
    island = sample_repeated(island_side)
    places = [(20_000, 40_000), (50_000, 70_000), (30_000, 15_000)]
    return write_sparse_slide(path, [(top, left, island) for top, left in places], mpp=SAMPLE_MPP)


def peak_run(command: list[str], log: Path) -> tuple[float, float, str]:
    """(seconds, peak resident GiB of the process and its children, stdout) of one command."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, text=True)
        watched = psutil.Process(process.pid)
        peak = 0
        while process.poll() is None:
            try:
                rss = watched.memory_info().rss + sum(c.memory_info().rss for c in watched.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    text = log.read_text()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {text}")
    return seconds, peak / 2**30, text.strip()


def tile_rates(threads: int, repeats: int = 3) -> dict[str, float]:
    """mm² per minute of the tile path (the sample tile in memory, median of `repeats`) at each setting."""
    torch.set_num_threads(threads)
    image = read_image(sample_tile_path())
    model = with_runtime(load_model(None))
    area = image.shape[0] * image.shape[1] * (SAMPLE_MPP / 1000.0) ** 2
    rates = {}
    for name, flags in SETTINGS.items():
        steps, samples = (FAST_SETTINGS["sampling_steps"], FAST_SETTINGS["samples"]) if flags else (None, None)
        seconds_per_tile(model, image, steps, samples, 1)  # warm-up
        rates[name] = area / (seconds_per_tile(model, image, steps, samples, repeats) / 60.0)
    return rates


def main() -> None:
    """Write each case, segment it at each setting, print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["real-size", "mosaic"], choices=["real-size", "mosaic"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--mosaic-side", type=int, default=20_000)
    parser.add_argument("--island-side", type=int, default=4000, help="side of each real-size island, px")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    tile = tile_rates(args.threads)
    print("tile path, mm²/min: " + ", ".join(f"{name} {rate:.2f}" for name, rate in tile.items()), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for case in args.cases:
            started = time.perf_counter()
            slide = (
                write_real_size(folder / "real_size.tif", args.island_side)
                if case == "real-size"
                else write_mosaic(folder / f"mosaic_{args.mosaic_side}.tif", args.mosaic_side)
            )
            print(
                f"{case}: written in {time.perf_counter() - started:.0f} s, {slide.stat().st_size / 1e6:.1f} MB",
                flush=True,
            )
            for name in args.settings:
                command = [
                    sys.executable,
                    "-c",
                    "import sys; from napari_cdal.cli import main; sys.exit(main())",
                    "segment",
                    str(slide),
                    "--slide",
                    "--geojson",
                    "--out",
                    str(folder / f"out_{case}_{name}"),
                    "--threads",
                    str(args.threads),
                    *SETTINGS[name],
                ]
                seconds, peak, out = peak_run(command, folder / "log.txt")
                found = SUMMARY.search(out)
                if found is None:
                    raise SystemExit(f"no summary in the output of {' '.join(command)}: {out}")
                tissue, area = float(found["tissue"]), float(found["slide"])
                rows.append(
                    {
                        "case": case,
                        "setting": name,
                        "seconds": seconds,
                        "peak RSS GiB": peak,
                        "blocks": int(found["blocks"]),
                        "skipped": int(found["skipped"] or 0),
                        "nuclei": int(found["nuclei"]),
                        "tissue mm²": tissue,
                        "slide mm²": area,
                        "tissue mm²/min": tissue / (seconds / 60.0),
                        "slide mm²/min": area / (seconds / 60.0),
                        "slide / tile time per mm²": tile[name] / (tissue / (seconds / 60.0)),
                    }
                )
                print(rows[-1], flush=True)
    print(
        table(
            rows,
            [
                "case",
                "setting",
                "seconds",
                "peak RSS GiB",
                "blocks",
                "skipped",
                "nuclei",
                "tissue mm²",
                "tissue mm²/min",
                "slide mm²/min",
                "slide / tile time per mm²",
            ],
        )
    )
    write_json(
        args.json,
        {
            "machine": machine(),
            "threads": args.threads,
            "tile_mm2_per_min": tile,
            "island_side": args.island_side,
            "mosaic_side": args.mosaic_side,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
