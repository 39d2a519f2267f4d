"""Seconds per tile with the maps the Segment widget shows, one model against another, side by side in one run.

    python benchmarks/maps_speed.py --model NEW --against OLD [--repeats 5] [--json FILE]

Each repeat times both models in turn on the sample tile (1000 x 1000) at their defaults, with the
steps, estimates and attention stacks and the uncertainty (what a click on Segment computes), then
the same with Review's queue made from the result as the widget makes it. Medians, and the ratio
NEW / OLD; interleaving the two keeps a machine's drift out of the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import display_path, machine, table, write_json

from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.io.images import read_image
from napari_cdal.engine.method.model import load_model
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.review import review_items
from napari_cdal.sample_data import sample_tile_path


def timed_click(model, image, seed: int) -> tuple[float, float]:
    """Seconds of one Segment run with its maps, and of the same plus Review's queue."""
    started = time.perf_counter()
    result = run_to_end(segment_image(model, image, seed=seed, keep_steps=True, with_attention=True))
    segmented = time.perf_counter() - started
    review_items(result.labels, result.probability, result.uncertainty, 0.25, result.error_map)
    return segmented, time.perf_counter() - started


def main() -> None:
    """Time both models, interleaved, and print the medians and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the model to time (file or bundled name)")
    parser.add_argument("--against", required=True, help="the model it is compared with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = read_image(sample_tile_path())
    models = {"model": load_model(args.model), "against": load_model(args.against)}
    for model in models.values():  # a first run of each, untimed: allocations and caches
        timed_click(model, image, 0)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for seed in range(args.repeats):
        for name, model in models.items():
            times[name].append(timed_click(model, image, seed))
    rows = []
    for name, model in models.items():
        rows.append(
            {
                "model": f"{name}: {display_path(model.source)} ({model.config.disc_kind} D)",
                "maps s (median)": round(statistics.median(t[0] for t in times[name]), 3),
                "maps + review s (median)": round(statistics.median(t[1] for t in times[name]), 3),
            }
        )
    ratio = {key: round(rows[0][key] / rows[1][key], 3) for key in ("maps s (median)", "maps + review s (median)")}
    rows.append({"model": "ratio model / against", **ratio})
    print(table(rows, list(rows[0])))
    write_json(
        args.json,
        {
            "machine": machine(),
            "threads": args.threads,
            "repeats": args.repeats,
            "rows": rows,
            "all_seconds": {name: times[name] for name in models},
        },
    )


if __name__ == "__main__":
    main()
