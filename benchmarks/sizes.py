"""Precision of predicted nuclei by size, and the size-and-confidence rule it led to.

    python benchmarks/sizes.py [--model PATH] [--data DIR] [--cache DIR] [--json FILE]

The model's maps (probability, uncertainty) are computed once per tile at the defaults (cached in
--cache when given). Each predicted nucleus of the instance step without a confidence rule is
matched to the truth: a nucleus is *right* when its best IoU with a true nucleus is above 0.5, a
*clear error* when it is under 0.3. The table gives, per size bin of predicted nuclei, the count,
precision and share of clear errors, on the training and the validation tiles. Then the rules, on
both: a smallest nucleus (µm²) alone, and size-and-confidence rules (a nucleus under a size is kept
only if its mean foreground probability reaches a floor). The model has fitted its training tiles,
small nuclei included, so they favour keeping everything; a rule is taken only where neither split
loses AJI. Last, the engine's rule (defaults.SMALL_NUCLEUS_UM2, SMALL_NUCLEUS_FLOOR) against none.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from _common import default_data_dir, display_path, machine, split, table, write_json

from napari_cdal.engine import defaults
from napari_cdal.engine.data.tiles import Tile, load_folder
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.io.images import to_rgb_float
from napari_cdal.engine.labels import nucleus_areas, nucleus_means
from napari_cdal.engine.method.model import CdalModel, load_model
from napari_cdal.engine.method.runtime import with_runtime
from napari_cdal.engine.segment import image as seg
from napari_cdal.engine.segment import reliability as rel
from napari_cdal.engine.segment.metrics import score_segmentation
from napari_cdal.engine.segment.stain import keep_stained

MPP = 0.25
BINS_UM2 = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, float("inf"))
MIN_SIZES_UM2 = (3.0, 5.0, 8.0, 10.0, 12.0, 15.0)
CONFIDENCE_SIZES_UM2 = (10.0, 15.0, 20.0)
CONFIDENCE_FLOORS = (0.6, 0.7, 0.8)


def tile_maps(model: CdalModel, tile: Tile, cache: Path | None) -> dict[str, np.ndarray]:
    """The tile's probability (C, H, W) and uncertainty (H, W) at the defaults, from the cache when there."""
    path = None if cache is None else cache / f"{tile.name}.npz"
    if path is not None and path.exists():
        with np.load(path) as stored:
            return dict(stored)
    result = run_to_end(seg.segment_image(model, tile.image, keep_steps=False, with_attention=False))
    maps = {"probability": result.probability, "uncertainty": result.uncertainty}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **maps)
    return maps


def labels_by_rule(tile: Tile, maps: dict[str, np.ndarray], rule: dict[str, float]) -> np.ndarray:
    """The instance step (probability_to_labels) under `rule`, then the stain check, as segment_image runs them."""
    labels = seg.probability_to_labels(maps["probability"], MPP, **rule)
    return keep_stained(labels, to_rgb_float(tile.image, 3), MPP)


def nucleus_rows(tile: Tile, labels: np.ndarray, maps: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Per predicted nucleus: area (µm²), best IoU with a true nucleus, mean foreground probability and uncertainty."""
    area = nucleus_areas(labels) * MPP * MPP
    best = rel.best_match_iou(labels, tile.instances)
    probability = nucleus_means(labels, maps["probability"][0])
    uncertainty = (
        nucleus_means(labels, maps["uncertainty"]) if maps.get("uncertainty") is not None else np.zeros(area.size)
    )
    return [
        {"area": float(a), "iou": float(i), "probability": float(p), "uncertainty": float(u)}
        for a, i, p, u in zip(area, best, probability, uncertainty, strict=True)
    ]


def size_table(rows: list[dict[str, float]]) -> list[dict[str, object]]:
    """Count, precision (IoU > 0.5) and clear errors (IoU < 0.3) per size bin of predicted nuclei."""
    out = []
    for lo, hi in itertools.pairwise(BINS_UM2):
        chosen = [r for r in rows if lo <= r["area"] < hi]
        right = sum(r["iou"] > 0.5 for r in chosen)
        clear = sum(r["iou"] < 0.3 for r in chosen)
        out.append(
            {
                "µm²": f"{lo:g}-{hi:g}",
                "nuclei": len(chosen),
                "precision": right / len(chosen) if chosen else None,
                "clear errors": clear / len(chosen) if chosen else None,
                "mean p": float(np.mean([r["probability"] for r in chosen])) if chosen else None,
            }
        )
    return out


def score(tiles: list[Tile], maps: list[dict[str, np.ndarray]], rule: dict[str, float]) -> dict[str, float]:
    """Mean Dice, AJI, PQ and predicted-per-true nuclei over `tiles` under `rule`."""
    rows = []
    for tile, tile_maps_ in zip(tiles, maps, strict=True):
        labels = labels_by_rule(tile, tile_maps_, rule)
        rows.append(
            {
                **score_segmentation(labels, tile.foreground, tile.instances),
                "n/true": int(np.unique(labels).size - 1) / max(1, int(np.unique(tile.instances).size - 1)),
            }
        )
    return {key: float(np.mean([r[key] for r in rows])) for key in ("dice", "aji", "pq", "n/true")}


def rules() -> list[dict[str, float]]:
    """Every rule tried: smallest nuclei alone (no confidence rule), then size-and-confidence rules."""
    found = [{"min_nucleus_um2": size, "small_nucleus_um2": 0.0} for size in MIN_SIZES_UM2]
    found += [
        {"min_nucleus_um2": defaults.MIN_NUCLEUS_AREA_UM2, "small_nucleus_um2": size, "small_nucleus_floor": floor}
        for size, floor in itertools.product(CONFIDENCE_SIZES_UM2, CONFIDENCE_FLOORS)
    ]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--cache", default=None, help="folder for the maps per tile, reused by a later run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = with_runtime(load_model(args.model), "auto", "auto")
    cache = None if args.cache is None else Path(args.cache)
    names = split()
    sets = {part: load_folder(args.data, names[part]) for part in ("train", "validation")}
    maps = {part: [tile_maps(model, tile, cache) for tile in tiles] for part, tiles in sets.items()}
    before = {"min_nucleus_um2": defaults.MIN_NUCLEUS_AREA_UM2, "small_nucleus_um2": 0.0}
    by_size = {}
    for part, tiles in sets.items():
        nuclei = [
            row
            for tile, m in zip(tiles, maps[part], strict=True)
            for row in nucleus_rows(tile, labels_by_rule(tile, m, before), m)
        ]
        by_size[part] = size_table(nuclei)
        print(f"{part} tiles, predicted nuclei by size (the instance step without a confidence rule):")
        print(table(by_size[part], ["µm²", "nuclei", "precision", "clear errors", "mean p"]))
    columns = ["min_nucleus_um2", "small_nucleus_um2", "small_nucleus_floor", "dice", "aji", "pq", "n/true"]
    tried = {part: [{**rule, **score(sets[part], maps[part], rule)} for rule in rules()] for part in sets}
    for part, rows in tried.items():
        print(f"rules on the {part} tiles:")
        print(table(rows, columns))
    chosen = {
        "min_nucleus_um2": defaults.MIN_NUCLEUS_AREA_UM2,
        "small_nucleus_um2": defaults.SMALL_NUCLEUS_UM2,
        "small_nucleus_floor": defaults.SMALL_NUCLEUS_FLOOR,
    }
    checked = [
        {"rule": name, **rule, **score(sets[part], maps[part], rule)}
        for part in sets
        for name, rule in ((f"{part}: before", before), (f"{part}: the engine's", chosen))
    ]
    print("the engine's rule against none:")
    print(table(checked, ["rule", *columns]))
    write_json(
        args.json,
        {
            "model": display_path(model.source),
            "machine": machine(),
            "by_size": by_size,
            "rules": tried,
            "engine": checked,
        },
    )


if __name__ == "__main__":
    main()
