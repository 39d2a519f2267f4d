"""Validation accuracy of a model at full resolution for T in {1, 2, 4} and K in {1, 3, 5}.

    python benchmarks/accuracy.py [--model PATH] [--data DIR] [--steps 1 2 4] [--samples 1 3 5]
                                  [--thresholds 0.4 0.5 0.6 0.7] [--json FILE]

Then, at the model's default T and K = 1, the foreground threshold is swept, per tile, to show
whether 0.5 is a fair default or the tiles disagree (they annotate nuclei borders differently).
"""

from __future__ import annotations

import argparse
import time

from _common import default_data_dir, display_path, machine, split, table, write_json

from napari_cdal.engine.data.tiles import Tile, load_folder
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.method.model import CdalModel, load_model
from napari_cdal.engine.segment.evaluate import evaluate_tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument(
        "--thresholds",
        type=float,
        nargs="*",
        default=[0.4, 0.5, 0.6, 0.7],
        help="foreground thresholds swept at the default T, K = 1 (none: skip)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = load_model(args.model)
    tiles = load_folder(args.data, split()["validation"])
    rows = []
    for steps in args.steps:
        for samples in args.samples:
            started = time.perf_counter()
            summary = run_to_end(evaluate_tiles(model, tiles, sampling_steps=steps, samples=samples, seed=args.seed))
            row = {
                "T": steps,
                "K": samples,
                **summary["mean"],
                "s/tile": summary["seconds_per_image"],
                "per_image": summary["per_image"],
            }
            rows.append(row)
            print(
                f"T={steps} K={samples}: dice {row['dice']:.3f} aji {row['aji']:.3f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    print(table(rows, ["T", "K", "dice", "iou", "aji", "pq", "s/tile"]))
    sweep = threshold_sweep(model, tiles, args.thresholds, args.seed) if args.thresholds else []
    write_json(
        args.json,
        {
            "model": display_path(model.source),
            "validation_tiles": [t.name for t in tiles],
            "machine": machine(),
            "rows": rows,
            "threshold_sweep": sweep,
        },
    )


def threshold_sweep(model: CdalModel, tiles: list[Tile], thresholds: list[float], seed: int) -> list[dict]:
    """Dice and AJI per tile for each foreground threshold, at the model's default T and K = 1."""
    sweep = []
    for threshold in thresholds:
        summary = run_to_end(evaluate_tiles(model, tiles, samples=1, seed=seed, threshold=threshold))
        sweep.append({"threshold": threshold, **summary["mean"], "per_image": summary["per_image"]})
    names = [t.name for t in tiles]
    columns = ["tile"] + [f"{key} @{row['threshold']:g}" for row in sweep for key in ("dice", "aji")]
    per_tile = [
        {
            "tile": name[:12],
            **{
                f"{key} @{row['threshold']:g}": image[key]
                for row in sweep
                for key in ("dice", "aji")
                for image in row["per_image"]
                if image["image"] == name
            },
        }
        for name in names
    ]
    mean = {"tile": "mean", **{f"{key} @{row['threshold']:g}": row[key] for row in sweep for key in ("dice", "aji")}}
    print(f"threshold sweep at T={model.config.sampling_steps}, K=1:")
    print(table(per_tile + [mean], columns))
    return sweep


if __name__ == "__main__":
    main()
