"""Validation accuracy of a model at full resolution for T in {1, 2, 4} and K in {1, 3, 5}.

    python benchmarks/accuracy.py [--model PATH] [--data DIR] [--steps 1 2 4] [--samples 1 3 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import time

from _common import display_path, default_data_dir, machine, split, table, write_json

from napari_cdal.engine.data import load_folder
from napari_cdal.engine.evaluate import evaluate_tiles
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = load_model(args.model)
    tiles = load_folder(args.data, split()["validation"])
    rows = []
    for steps in args.steps:
        for samples in args.samples:
            started = time.perf_counter()
            summary = run_to_end(evaluate_tiles(model, tiles, steps=steps, samples=samples, seed=args.seed))
            row = {"T": steps, "K": samples, **summary["mean"], "s/tile": summary["seconds_per_image"],
                   "per_image": summary["per_image"]}
            rows.append(row)
            print(f"T={steps} K={samples}: dice {row['dice']:.3f} aji {row['aji']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    print(table(rows, ["T", "K", "dice", "iou", "aji", "pq", "s/tile"]))
    write_json(args.json, {"model": display_path(model.source), "validation_tiles": [t.name for t in tiles],
                           "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
