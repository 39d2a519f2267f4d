"""Seconds per tile beside the StarDist peer, measured side by side in one run: the ratio is what counts.

    python benchmarks/peer_speed.py --stardist-python VENV/bin/python --peer PEER_DIR
                                    [--tiles NAME ...] [--rounds 2] [--json FILE]

PEER_DIR holds the StarDist peer (its model/ and time_stardist.py; see its README for its own venv).
Each round times StarDist on the tiles (a subprocess, 2 threads, after a warm-up tile), then
napari-cdal on the same tiles in each setting (after a warm-up tile), alternating; each tile keeps
its best time over the rounds. Settings: the defaults (runtime and precision auto), the torch
runtime in float32 (the reference path), torch at the default precision (what the widget samples
with), and --fast. Machines drift from hour to hour, so only
the ratio measured in one run means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch
from _common import default_data_dir, machine, split, table, write_json
from speed import seconds_per_tile

from napari_cdal.engine.defaults import FAST_SETTINGS
from napari_cdal.engine.io.images import read_image
from napari_cdal.engine.method.model import load_model
from napari_cdal.engine.method.runtime import with_runtime

SETTINGS = {
    "defaults": {"runtime": "auto", "precision": "auto", "sampling_steps": None, "samples": None},
    "torch float32": {"runtime": "torch", "precision": "float32", "sampling_steps": None, "samples": None},
    "widget": {"runtime": "torch", "precision": "auto", "sampling_steps": None, "samples": None},
    "fast": {"runtime": "auto", "precision": "auto", **FAST_SETTINGS},
}


def time_stardist(python: str, peer: Path, tiles: list[Path], threads: int) -> dict[str, float]:
    """Seconds per tile of the StarDist peer (its own script and venv), keyed by file name."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
        subprocess.run(
            [python, str(peer / "time_stardist.py"), str(out), str(peer / "model"), *map(str, tiles)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return json.loads(out.read_text())


def time_cdal(models: dict, images: dict[str, object]) -> dict[str, dict[str, float]]:
    """Seconds per tile of the segment path in each setting (after one warm-up tile), keyed by setting then file."""
    times: dict[str, dict[str, float]] = {}
    for name, setting in SETTINGS.items():
        steps, samples = setting["sampling_steps"], setting["samples"]
        seconds_per_tile(models[name], next(iter(images.values())), steps, samples, 1)
        times[name] = {
            file: seconds_per_tile(models[name], pixels, steps, samples, 1) for file, pixels in images.items()
        }
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stardist-python", required=True, help="python of the venv StarDist runs in")
    parser.add_argument("--peer", required=True, help="the StarDist peer's folder (model/, time_stardist.py)")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--tiles", nargs="*", default=None, help="tile names (default: the validation split)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    names = args.tiles or split()["validation"]
    tiles = [Path(args.data) / "images" / f"{name}.tif" for name in names]
    images = {tile.name: read_image(tile) for tile in tiles}
    base = load_model(None)
    models = {name: with_runtime(base, setting["runtime"], setting["precision"]) for name, setting in SETTINGS.items()}
    best: dict[str, dict[str, float]] = {"stardist": {}, **{name: {} for name in SETTINGS}}
    for _ in range(args.rounds):
        rounds = {
            "stardist": time_stardist(args.stardist_python, Path(args.peer), tiles, args.threads),
            **time_cdal(models, images),
        }
        for name, per_tile in rounds.items():
            for file, seconds in per_tile.items():
                best[name][file] = min(seconds, best[name].get(file, float("inf")))
    rows = []
    for file in images:
        row = {"tile": file.removesuffix(".tif"), "stardist s": best["stardist"][file]}
        for name in SETTINGS:
            row[f"{name} s"] = best[name][file]
            row[f"{name} ratio"] = best[name][file] / best["stardist"][file]
        rows.append(row)
    medians = {
        "tile": "median",
        **{key: statistics.median(row[key] for row in rows) for key in rows[0] if key != "tile"},
    }
    columns = ["tile", "stardist s"] + [f"{name} {what}" for name in SETTINGS for what in ("s", "ratio")]
    print(
        f"{args.threads} threads, best of {args.rounds} rounds; runtimes: "
        + ", ".join(f"{name}: {models[name].runtime.describe()}" for name in SETTINGS)
    )
    print(table(rows + [medians], columns))
    write_json(
        args.json,
        {
            "machine": machine(),
            "threads": args.threads,
            "rounds": args.rounds,
            "runtimes": {name: models[name].runtime.describe() for name in SETTINGS},
            "rows": rows,
            "median": medians,
        },
    )


if __name__ == "__main__":
    main()
