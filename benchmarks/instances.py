"""The instance step's settings chosen on the training tiles, then checked on validation.

    python benchmarks/instances.py [--model PATH] [--steps T] [--samples K] [--json FILE]

The model's probability maps are computed once per tile; then the instance step (threshold,
watershed from predicted cores) runs for each setting of the smallest nucleus, the smallest
core that may seed a nucleus and the core threshold. The setting with the best mean AJI on the
*training* split is compared with today's on the validation split, together with the ratio of
predicted to true nuclei (over-splitting and small false positives push it above 1).
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from _common import default_data_dir, display_path, machine, split, table, write_json

from napari_cdal.engine import defaults
from napari_cdal.engine.data.tiles import Tile, load_folder
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.method.model import load_model
from napari_cdal.engine.segment import image as seg
from napari_cdal.engine.segment.metrics import score_segmentation

GRID = {
    "min_nucleus_um2": [3.0, 8.0],
    "min_core_um2": [0.0, 1.5, 3.0],
    "core_threshold": [0.5, 0.6],
}


def probabilities(model, tiles: list[Tile], steps: int | None, samples: int | None) -> list[np.ndarray]:
    return [
        run_to_end(
            seg.segment_image(
                model, t.image, sampling_steps=steps, samples=samples, keep_steps=False, with_attention=False
            )
        ).probability
        for t in tiles
    ]


def score(tiles: list[Tile], maps: list[np.ndarray], setting: dict[str, float]) -> dict[str, float]:
    rows = []
    for tile, probability in zip(tiles, maps, strict=True):
        labels = seg.probability_to_labels(probability, 0.25, **setting)
        rows.append(
            {
                **score_segmentation(labels, tile.foreground, tile.instances),
                "n/true": labels.max() / max(1, tile.instances.max()),
            }
        )
    return {key: float(np.mean([r[key] for r in rows])) for key in ("dice", "aji", "pq", "n/true")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = load_model(args.model)
    names = split()
    train, validation = (
        load_folder(args.data, names["train"]),
        load_folder(args.data, names["validation"]),
    )
    train_maps = probabilities(model, train, args.steps, args.samples)
    current = {
        "min_nucleus_um2": defaults.MIN_NUCLEUS_AREA_UM2,
        "min_core_um2": defaults.MIN_CORE_AREA_UM2,
        "core_threshold": defaults.CORE_THRESHOLD,
    }
    rows = []
    for values in itertools.product(*GRID.values()):
        setting = dict(zip(GRID, values, strict=True))
        rows.append({**setting, **score(train, train_maps, setting), "current": setting == current})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    best = max(rows, key=lambda r: r["aji"])
    chosen = {key: best[key] for key in GRID}
    print("training split:")
    print(table(rows, [*GRID, "dice", "aji", "pq", "n/true", "current"]))
    val_maps = probabilities(model, validation, args.steps, args.samples)
    checked = [
        {"setting": name, **s, **score(validation, val_maps, s)}
        for name, s in (("current", current), ("best on train", chosen))
    ]
    print("validation split:")
    print(table(checked, ["setting", *GRID, "dice", "aji", "pq", "n/true"]))
    write_json(
        args.json,
        {
            "model": display_path(model.source),
            "steps": args.steps,
            "samples": args.samples,
            "machine": machine(),
            "train": rows,
            "validation": checked,
            "chosen": chosen,
        },
    )


if __name__ == "__main__":
    main()
