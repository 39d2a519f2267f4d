"""Test-time augmentation inside the K samples: accuracy and the uncertainty's error AUROC, with and without.

    python benchmarks/augment.py [--model PATH] [--data DIR] [--samples 2 4] [--parts train validation]
                                 [--json FILE]

Each tile is segmented at the model's default T with K samples, once plainly and once with each
sample seeing the tile in its own view (symmetry.VIEWS: the identity, flips, turns), seeded alike.
Per setting: mean Dice, AJI, PQ, and how well the uncertainty ranks wrong nuclei (best IoU < 0.5)
and clear errors (best IoU < 0.3, border disagreements left out): the per-nucleus AUROC of its mean
over each predicted nucleus, pooled over the tiles. The choice is read on the training tiles and
checked on validation.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from _common import default_data_dir, display_path, machine, split, table, write_json

from napari_cdal.engine.data.tiles import Tile, load_folder
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.labels import nucleus_means
from napari_cdal.engine.method.model import CdalModel, load_model
from napari_cdal.engine.method.runtime import with_runtime
from napari_cdal.engine.segment import reliability as rel
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import score_segmentation


def measure(model: CdalModel, tiles: list[Tile], samples: int, augment: bool, seed: int) -> dict[str, Any]:
    """Mean scores and pooled per-nucleus error AUROCs of the uncertainty over `tiles` in one setting."""
    scores, uncertainty, best = [], [], []
    started = time.perf_counter()
    for tile in tiles:
        result = run_to_end(
            segment_image(
                model, tile.image, samples=samples, seed=seed, keep_steps=False, with_attention=False, augment=augment
            )
        )
        scores.append(score_segmentation(result.labels, tile.foreground, tile.instances))
        uncertainty.append(nucleus_means(result.labels, result.uncertainty))
        best.append(rel.best_match_iou(result.labels, tile.instances))
    uncertainty, best = np.concatenate(uncertainty), np.concatenate(best)
    return {
        **{key: float(np.mean([row[key] for row in scores])) for key in ("dice", "aji", "pq")},
        "AUROC wrong": rel.auroc(uncertainty, best < rel.MATCH_IOU),
        "AUROC clear": rel.clear_error_auroc(uncertainty, best),
        "s/tile": (time.perf_counter() - started) / len(tiles),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--samples", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--parts", nargs="+", default=["train", "validation"], choices=["train", "validation"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = with_runtime(load_model(args.model), "auto", "auto")
    names = split()
    rows = []
    for part in args.parts:
        tiles = load_folder(args.data, names[part])
        for samples in args.samples:
            for augment in (False, True):
                rows.append(
                    {
                        "tiles": part,
                        "K": samples,
                        "views": "augmented" if augment else "plain",
                        **measure(model, tiles, samples, augment, args.seed),
                    }
                )
                print(table(rows[-1:], list(rows[-1])), flush=True)
    print(table(rows, ["tiles", "K", "views", "dice", "aji", "pq", "AUROC wrong", "AUROC clear", "s/tile"]))
    write_json(
        args.json,
        {"model": display_path(model.source), "runtime": model.runtime.describe(), "machine": machine(), "rows": rows},
    )


if __name__ == "__main__":
    main()
