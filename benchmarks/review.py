"""Does Review reach what a pathologist would fix? Its queue and the error maps, measured against the truth.

    python benchmarks/review.py [--split benchmarks/monuseg_split.json] [--subset validation]
                                [--cache DIR] [--error-maps DIR] [--json FILE] [--picture FILE] [--fit]

Each tile of the subset is segmented once with the bundled model at its defaults (every
uncertainty measure and attention map asked for) and cached as .npz in --cache, outside the
repository. Then, against the tile's true nuclei:
- per-pixel and per-nucleus error AUROC of each map (uncertainty measures, attention kinds, an
  error map when one is given), beside the outline-nearness and small-size baselines, for all
  wrong nuclei (best IoU < 0.5) and for clear errors only (best IoU < 0.3; nuclei of 0.3-0.5 and
  their pixels, border disagreements, left out);
- the review queue (engine/segment/review.py) against today's (nuclei by mean uncertainty), by
  size and by chance (seeded): precision of its first 10 and 25 items, the share of missed true
  nuclei of >= 15 µm² it reaches at all and within its first 25, the share of specks (< 10 µm²)
  in its first 10 and 25;
- with --picture, the first 10 items on one tile over the true outlines.
An item is an error when: a nucleus or merge item's nucleus has best IoU < 0.5 with every true
nucleus, or holds two or more true nuclei each with >= 50 % of its area inside it (a merge); a miss
item's region overlaps a true nucleus that no prediction matches (IoU >= 0.5) by >= 25 % of the
region or of that nucleus. A missed true nucleus is reached when its centroid lies in an item's box.
--fit (on the training split only) fits the review's logistic weights, compares the miss levels
and the speck weights (and, with --error-maps, the error map's weight) and prints the figures that
chose REVIEW_SETTINGS.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import SPLIT_FILE, default_data_dir, display_path, machine, table, write_json

from napari_cdal.engine.config import DISC_KINDS, UNCERTAINTY_MEASURES
from napari_cdal.engine.data.tiles import Tile, load_tile
from napari_cdal.engine.defaults import DEFAULT_IMAGE_MPP
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.labels import nucleus_areas, nucleus_means
from napari_cdal.engine.method.model import CdalModel, load_model
from napari_cdal.engine.segment import reliability as rel
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.review import (
    MISS_FEATURES,
    NUCLEUS_FEATURES,
    REVIEW_SETTINGS,
    UNCERTAINTY_FEATURES,
    Candidates,
    ReviewSettings,
    rank_candidates,
    review_candidates,
    score_candidates,
)

MPP = DEFAULT_IMAGE_MPP
"""MoNuSeg tiles are 40x: 0.25 µm/px, the default."""
CLEAR_IOU = 0.3
"""A clear error: best IoU under this (0.3-0.5 is left out: mostly border disagreements)."""
MERGE_INSIDE = 0.5
"""A merge holds two or more true nuclei with at least this share of each inside it."""
MISS_HIT = 0.25
"""A miss item hits an unmatched true nucleus overlapping this share of the region or of the nucleus."""
REACH_UM2 = 15.0
"""Missed true nuclei from this area up count for the reach."""
SPECK_UM2 = REVIEW_SETTINGS.speck_um2
FIRST = (10, 25)
PIXEL_STRIDE = 3
"""Every 3rd pixel in y and x enters the pooled pixel AUROC (errors are spatially smooth)."""
SPECK_WEIGHTS = (1.0, 0.5, 0.2, 0.1)
"""The speck weights --fit compares."""
ERROR_MAP_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""With --error-maps, the error map's weights in the score --fit compares."""
CANDIDATE_LEVELS = ((0.5, 0.2), (0.6, 0.2), (0.7, 0.2), (0.5, 0.1), (0.5, 0.3))
"""(doubtful uncertainty, miss foreground) levels --fit compares."""
PICTURE_TILE = "TCGA-AR-A1AK-01Z-00-DX1"
"""A validation breast tile."""


def segmented(model: CdalModel, tile: Tile, cache: Path, seed: int) -> dict[str, np.ndarray]:
    """The model's labels and maps of one tile at its defaults, from the cache or computed and cached."""
    path = cache / f"{tile.name}_{Path(model.source).stem}_{model.config.disc_kind}_seed{seed}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return dict(stored)
    result = run_to_end(
        segment_image(
            model,
            tile.image,
            seed=seed,
            keep_steps=False,
            with_attention=False,
            attention_kinds=DISC_KINDS[model.config.disc_kind],
            uncertainty_kinds=UNCERTAINTY_MEASURES,
        )
    )
    maps = {
        "labels": result.labels,
        "probability": result.probability,
        "seconds": np.float64(result.seconds),
        "uncertainty_measure": np.array(model.config.uncertainty_measure),
    }
    maps.update({f"unc_{k}": v for k, v in result.uncertainty_maps.items()})
    maps.update({f"att_{k}": v for k, v in result.final_attention_maps.items()})
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **maps)
    tmp.replace(path)
    return maps


def error_map(tile: Tile, maps: dict[str, np.ndarray], folder: Path | None) -> np.ndarray | None:
    """The hook for a per-pixel error map in [0, 1] (the new discriminator's belief a pixel is wrong).

    It reads <folder>/<tile>.npy when --error-maps is given, else takes the model's own pixel D's
    map (att_error_probability) where it has one; None otherwise.
    """
    if folder is None:
        return maps.get("att_error_probability")
    path = folder / f"{tile.name}.npy"
    if not path.is_file():
        raise SystemExit(f"--error-maps {folder} has no {path.name}")
    values = np.load(path).astype(np.float32)
    if values.shape != maps["labels"].shape:
        raise SystemExit(f"{path} is {values.shape}, the tile {maps['labels'].shape}")
    return values


@dataclass
class Truth:
    """One tile's predicted nuclei against the true ones."""

    best_iou: np.ndarray
    """Per predicted id 1..N (index 0 unused)."""
    merge: np.ndarray
    """Per predicted id: holds two or more true nuclei, each >= MERGE_INSIDE inside."""
    true_best: np.ndarray
    """Per true id 1..M (index 0 unused): the best IoU of any prediction."""
    true_area_um2: np.ndarray
    true_centres: np.ndarray
    instances: np.ndarray


def compare(labels: np.ndarray, instances: np.ndarray, mpp: float) -> Truth:
    """Best IoUs both ways and merges of one tile."""
    table = rel.overlaps(labels, instances)
    n, m = len(table.pred_area) - 1, len(table.true_area) - 1
    best, true_best = np.zeros(n + 1), np.zeros(m + 1)
    np.maximum.at(best, table.pred, table.iou)
    np.maximum.at(true_best, table.true, table.iou)
    held = np.bincount(table.pred[table.pixels / table.true_area[table.true] >= MERGE_INSIDE], minlength=n + 1)
    from scipy import ndimage as ndi

    with np.errstate(invalid="ignore", divide="ignore"):
        centres = np.array(ndi.center_of_mass(np.ones(instances.shape), instances, np.arange(m + 1))).reshape(-1, 2)
    return Truth(best, held >= 2, true_best, table.true_area * mpp * mpp, centres, instances)


def candidate_errors(candidates: Candidates, truth: Truth) -> np.ndarray:
    """Whether each candidate is an error (see the module's docstring)."""
    errors = np.zeros(len(candidates), bool)
    nuclei = candidates.kind != "miss"
    ids = candidates.id[nuclei]
    errors[nuclei] = (truth.best_iou[ids] < rel.MATCH_IOU) | truth.merge[ids]
    regions, instances = candidates.regions.ravel(), truth.instances.astype(np.int64).ravel()
    unmatched = truth.true_best < rel.MATCH_IOU
    unmatched[0] = False
    inside = (regions > 0) & unmatched[instances]
    count = int(regions.max(initial=0))
    if count:
        m = len(truth.true_best)
        pairs, overlap = np.unique(regions[inside] * m + instances[inside], return_counts=True)
        r, q = pairs // m, pairs % m
        region_px = np.bincount(regions, minlength=count + 1)
        true_px = np.bincount(instances, minlength=m)
        hit = (overlap >= MISS_HIT * region_px[r]) | (overlap >= MISS_HIT * true_px[q])
        region_hit = np.zeros(count + 1, bool)
        region_hit[r[hit]] = True
        errors[~nuclei] = region_hit[1:]
    return errors


def missed_nuclei(truth: Truth) -> np.ndarray:
    """True ids no prediction matches, of at least REACH_UM2."""
    ids = np.arange(len(truth.true_best))
    keep = (truth.true_best < rel.MATCH_IOU) & (truth.true_area_um2 >= REACH_UM2) & (ids > 0)
    return ids[keep]


def reached(boxes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each centre: whether it lies in any of the boxes (y0, y1, x0, x1)."""
    if len(boxes) == 0 or len(centres) == 0:
        return np.zeros(len(centres), bool)
    y, x = centres[:, None, 0], centres[:, None, 1]
    return np.any(
        (boxes[None, :, 0] <= y) & (y < boxes[None, :, 1]) & (boxes[None, :, 2] <= x) & (x < boxes[None, :, 3]), axis=1
    )


@dataclass
class TileCase:
    """What the queue measures need of one tile."""

    name: str
    candidates: Candidates
    errors: np.ndarray
    truth: Truth
    maps: dict[str, np.ndarray]
    uncertainty: np.ndarray | None
    error_map: np.ndarray | None


def orders(case: TileCase, settings: ReviewSettings, seed: int) -> dict[str, np.ndarray]:
    """Row orders of the candidates: the review, today's, by size both ways, by chance."""
    c = case.candidates
    nuclei = np.flatnonzero(c.kind != "miss")
    uncertainty = c.features["uncertainty"][nuclei]
    today = nuclei[np.lexsort((c.id[nuclei], np.where(np.isnan(uncertainty), np.inf, -uncertainty)))]
    rng = np.random.default_rng([seed, sum(map(ord, case.name))])
    return {
        "review": rank_candidates(c, score_candidates(c, settings), settings),
        "today (nuclei by uncertainty)": today,
        "by size, smallest first": np.argsort(c.area_um2, kind="stable"),
        "by size, largest first": np.argsort(-c.area_um2, kind="stable"),
        "by chance": rng.permutation(len(c)),
    }


def queue_measures(cases: list[TileCase], order_of: dict[str, list[np.ndarray]]) -> list[dict[str, Any]]:
    """Precision at 10 and 25, reach, specks' share and kinds, per ranking, pooled over the tiles."""
    rows = []
    for name, tile_orders in order_of.items():
        row: dict[str, Any] = {"ranking": name}
        for k in FIRST:
            firsts = [order[:k] for order in tile_orders]
            row[f"precision@{k}"] = float(
                np.mean(np.concatenate([case.errors[first] for case, first in zip(cases, firsts, strict=True)]))
            )
            row[f"non-speck errors@{k}"] = float(
                np.mean(
                    np.concatenate(
                        [
                            case.errors[first] & (case.candidates.area_um2[first] >= SPECK_UM2)
                            for case, first in zip(cases, firsts, strict=True)
                        ]
                    )
                )
            )
            row[f"specks@{k}"] = float(
                np.mean(
                    np.concatenate(
                        [case.candidates.area_um2[first] < SPECK_UM2 for case, first in zip(cases, firsts, strict=True)]
                    )
                )
            )
        missed = reach_all = reach_25 = 0
        kinds: dict[str, list[int]] = {}
        for case, order in zip(cases, tile_orders, strict=True):
            centres = case.truth.true_centres[missed_nuclei(case.truth)]
            missed += len(centres)
            reach_all += int(reached(case.candidates.box[order], centres).sum())
            reach_25 += int(reached(case.candidates.box[order[:25]], centres).sum())
            for kind, error in zip(case.candidates.kind[order[:25]], case.errors[order[:25]], strict=True):
                counts = kinds.setdefault(kind, [0, 0])
                counts[0] += 1
                counts[1] += int(error)
        row["reach (all items)"] = reach_all / max(missed, 1)
        row["reach@25"] = reach_25 / max(missed, 1)
        row["items"] = int(np.mean([len(order) for order in tile_orders]))
        row["kinds@25 (errors)"] = ", ".join(
            f"{kind} {kinds.get(kind, [0, 0])[0]} ({kinds.get(kind, [0, 0])[1]})"
            for kind in ("nucleus", "merge", "miss")
        )
        rows.append(row)
    return rows


def clear_pixels(labels: np.ndarray, truth: Truth) -> np.ndarray:
    """Wrong pixels of clear errors (a predicted or true nucleus with best IoU < CLEAR_IOU), True there."""
    in_clear_pred = (truth.best_iou < CLEAR_IOU)[labels.astype(np.int64)] & (labels > 0)
    instances = truth.instances.astype(np.int64)
    in_clear_true = (truth.true_best < CLEAR_IOU)[instances] & (instances > 0)
    return in_clear_pred | in_clear_true


def map_aurocs(cases: list[TileCase]) -> list[dict[str, Any]]:
    """Per-pixel and per-nucleus error AUROC of each map and baseline, for all errors and clear ones."""
    pixel: dict[str, list[np.ndarray]] = {}
    nucleus: dict[str, list[np.ndarray]] = {}
    wrong_px, clear_px, keep_px, best = [], [], [], []
    sub = (slice(None, None, PIXEL_STRIDE),) * 2
    for case in cases:
        labels = case.maps["labels"]
        wrong = rel.pixel_errors(labels, case.truth.instances > 0)
        clear = clear_pixels(labels, case.truth)
        wrong_px.append(wrong[sub].ravel())
        clear_px.append((wrong & clear)[sub].ravel())
        keep_px.append((~wrong | clear)[sub].ravel())
        best.append(case.truth.best_iou[1:])
        maps = {key: value for key, value in case.maps.items() if key.startswith(("unc_", "att_"))}
        if case.error_map is not None:
            maps["error_map"] = case.error_map
        maps["outline nearness (baseline)"] = rel.outline_nearness(labels)
        for key, values in maps.items():
            pixel.setdefault(key, []).append(values[sub].ravel())
            nucleus.setdefault(key, []).append(nucleus_means(labels, values))
        nucleus.setdefault("small size (baseline)", []).append(-nucleus_areas(labels))
        nuclei = case.candidates.kind != "miss"
        score = np.zeros(int(labels.max()))
        score[case.candidates.id[nuclei] - 1] = score_candidates(case.candidates)[nuclei]
        nucleus.setdefault("review score", []).append(score)
    wrong_px, clear_px, keep_px = (np.concatenate(v) for v in (wrong_px, clear_px, keep_px))
    best = np.concatenate(best)
    settled = (best < CLEAR_IOU) | (best >= rel.MATCH_IOU)
    rows = []
    for key in dict.fromkeys([*pixel, *nucleus]):
        row: dict[str, Any] = {"map": key.replace("unc_", "uncertainty: ").replace("att_", "attention: ")}
        if key in pixel:
            values = np.concatenate(pixel[key])
            row["pixel all"] = rel.auroc(values, wrong_px)
            row["pixel clear"] = rel.auroc(values[keep_px], clear_px[keep_px])
        values = np.concatenate(nucleus[key])
        row["nucleus all"] = rel.auroc(values, best < rel.MATCH_IOU)
        row["nucleus clear"] = rel.auroc(values[settled], best[settled] < CLEAR_IOU)
        rows.append(row)
    return rows


def fit_logistic(features: np.ndarray, target: np.ndarray, ridge: float = 1e-2) -> np.ndarray:
    """Logistic regression weights (intercept first) by Newton's method with a small ridge."""
    x = np.column_stack([np.ones(len(features)), np.nan_to_num(features)])
    w = np.zeros(x.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -60, 60)))
        gradient = x.T @ (p - target) + ridge * np.r_[0.0, w[1:]]
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.diag(np.r_[0.0, np.ones(len(w) - 1)])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def fit_settings(cases: list[TileCase], settings: ReviewSettings) -> ReviewSettings:
    """The logistic weights of nuclei and misses, with and without uncertainty, fitted on `cases`' non-specks.

    Specks are left out of the fit: their score is multiplied down anyway, and they would pull the
    weights towards telling specks apart instead of the items that reach the first places.
    """
    weights: dict[str, tuple[float, ...]] = {}
    for is_miss, names, key in ((False, NUCLEUS_FEATURES, "nucleus"), (True, MISS_FEATURES, "miss")):
        rows = [
            ((case.candidates.kind == "miss") == is_miss) & (case.candidates.area_um2 >= settings.speck_um2)
            for case in cases
        ]
        columns = {
            name: np.concatenate([case.candidates.features[name][kept] for case, kept in zip(cases, rows, strict=True)])
            for name in names
        }
        target = np.concatenate([case.errors[kept] for case, kept in zip(cases, rows, strict=True)]).astype(float)
        full = fit_logistic(np.column_stack([columns[name] for name in names]), target)
        kept_names = [name for name in names if name not in UNCERTAINTY_FEATURES]
        reduced = iter(fit_logistic(np.column_stack([columns[name] for name in kept_names]), target))
        without = [next(reduced)] + [0.0 if name in UNCERTAINTY_FEATURES else next(reduced) for name in names]
        weights[f"{key}_weights"] = tuple(round(float(v), 3) for v in full)
        weights[f"{key}_weights_no_uncertainty"] = tuple(round(float(v), 3) for v in without)
        print(
            f"{key}: {int(target.sum())} errors of {len(target)} non-speck candidates; weights (intercept, "
            f"{', '.join(names)}) = {weights[f'{key}_weights']}; without uncertainty "
            f"{weights[f'{key}_weights_no_uncertainty']}"
        )
    return replace(settings, **weights)


def prepare(
    model: CdalModel,
    names: list[str],
    data: Path,
    cache: Path,
    seed: int,
    settings: ReviewSettings,
    error_maps: Path | None,
) -> list[TileCase]:
    """Segment (or read from the cache) and compare each tile with instance truth."""
    cases = []
    for name in names:
        tile = load_tile(data, name)
        if not tile.has_instance_truth:
            print(f"{name}: no instance truth, left out")
            continue
        started = time.perf_counter()
        maps = segmented(model, tile, cache, seed)
        extra = error_map(tile, maps, error_maps)
        uncertainty = maps.get(f"unc_{model.config.uncertainty_measure}")
        candidates = review_candidates(maps["labels"], maps["probability"], uncertainty, MPP, extra, settings)
        truth = compare(maps["labels"], tile.instances, MPP)
        cases.append(TileCase(name, candidates, candidate_errors(candidates, truth), truth, maps, uncertainty, extra))
        print(
            f"{name}: {int(maps['labels'].max())} nuclei, {len(candidates)} candidates, "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
    return cases


def with_settings(case: TileCase, settings: ReviewSettings) -> TileCase:
    """The case's candidates again under other candidate levels."""
    candidates = review_candidates(
        case.maps["labels"], case.maps["probability"], case.uncertainty, MPP, case.error_map, settings
    )
    return replace(case, candidates=candidates, errors=candidate_errors(candidates, case.truth))


def evidence(cases: list[TileCase], settings: ReviewSettings) -> dict[str, Any]:
    """How often specks are wrong, and how often each merge rule's nuclei hold two true nuclei."""
    nuclei = [case.candidates.kind != "miss" for case in cases]

    def pooled(key: str) -> np.ndarray:
        return np.concatenate([case.candidates.features[key][rows] for case, rows in zip(cases, nuclei, strict=True)])

    area = np.concatenate([case.candidates.area_um2[rows] for case, rows in zip(cases, nuclei, strict=True)])
    ids = [case.candidates.id[rows] for case, rows in zip(cases, nuclei, strict=True)]
    merge = np.concatenate([case.truth.merge[i] for case, i in zip(cases, ids, strict=True)])
    wrong = np.concatenate([case.truth.best_iou[i] < rel.MATCH_IOU for case, i in zip(cases, ids, strict=True)])
    speck = area < settings.speck_um2
    rules = {
        "all nuclei": np.ones(len(area), bool),
        f"two or more core blobs at {settings.core_level}": pooled("core_blobs") >= 2,
        f"solidity < {settings.merge_solidity} and > {settings.merge_min_um2:g} µm²": (
            pooled("solidity") < settings.merge_solidity
        )
        & (area > settings.merge_min_um2),
    }
    found = {
        "specks": int(speck.sum()),
        "specks wrong": float(wrong[speck].mean()) if speck.any() else None,
        "merge rules": {
            name: {"nuclei": int(flag.sum()), "merges": float(merge[flag].mean()) if flag.any() else None}
            for name, flag in rules.items()
        },
    }
    print(
        f"predicted nuclei under {settings.speck_um2:g} µm²: {found['specks']}, of which "
        f"{found['specks wrong']:.0%} wrong"
    )
    for name, rule in found["merge rules"].items():
        print(f"{name}: {rule['nuclei']} nuclei, {rule['merges']:.0%} of them hold two true nuclei or more")
    return found


def choose(cases: list[TileCase], seed: int) -> dict[str, Any]:
    """--fit: the miss levels and the speck weight compared, each with its own fitted weights."""
    rows, fitted_by = [], {}
    found = evidence(cases, REVIEW_SETTINGS)
    for uncertainty_level, foreground_level in CANDIDATE_LEVELS:
        trial = replace(REVIEW_SETTINGS, doubtful_uncertainty=uncertainty_level, miss_foreground=foreground_level)
        trial_cases = [with_settings(case, trial) for case in cases]
        print(f"doubtful uncertainty {uncertainty_level}, miss foreground {foreground_level}:")
        fitted = fit_settings(trial_cases, trial)
        fitted_by[(uncertainty_level, foreground_level)] = fitted
        for weight in SPECK_WEIGHTS:
            trial = replace(fitted, speck_weight=weight)
            name = f"unc {uncertainty_level} fg {foreground_level} speck x{weight}"
            rows += queue_measures(trial_cases, {name: [orders(case, trial, seed)["review"] for case in trial_cases]})
        print(table(rows[-len(SPECK_WEIGHTS) :], list(rows[0])), flush=True)
    print(table(rows, list(rows[0])))
    chosen = fitted_by[(REVIEW_SETTINGS.doubtful_uncertainty, REVIEW_SETTINGS.miss_foreground)]
    if all(case.error_map is not None for case in cases):
        for weight in ERROR_MAP_WEIGHTS:
            trial = replace(chosen, error_map_weight=weight)
            name = f"error map weight {weight}"
            rows += queue_measures(cases, {name: [orders(case, trial, seed)["review"] for case in cases]})
        print(table(rows[-len(ERROR_MAP_WEIGHTS) :], list(rows[0])), flush=True)
    weights = {
        key: getattr(chosen, key)
        for key in ("nucleus_weights", "nucleus_weights_no_uncertainty", "miss_weights", "miss_weights_no_uncertainty")
    }
    print("fitted at the chosen levels:", weights)
    return {"evidence": found, "fitted": weights, "compared": rows}


CROP = 200
"""Side (screen px) of each item's close-up in the picture."""


def picture(case: TileCase, image: np.ndarray, path: Path, settings: ReviewSettings, count: int = 10) -> None:
    """The first `count` items, close up: true outlines green, predicted white, the item's own in its kind's colour."""
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    from napari_cdal._widgets._review import KIND_COLOURS

    labels, candidates = case.maps["labels"], case.candidates
    canvas = np.asarray(image, np.uint8)[..., :3].copy()
    canvas[find_boundaries(labels, mode="inner")] = (255, 255, 255)
    canvas[find_boundaries(case.truth.instances, mode="inner")] = (0, 200, 0)
    scores = score_candidates(candidates, settings)
    order = rank_candidates(candidates, scores, settings)[:count]
    columns, caption = 5, 20
    rows = -(-len(order) // columns)
    sheet = Image.new("RGB", (columns * CROP, rows * (CROP + caption) + caption), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for index, row in enumerate(order):
        kind = str(candidates.kind[row])
        own = (
            labels == candidates.id[row]
            if kind != "miss"
            else candidates.regions == 1 + int(np.sum(candidates.kind[:row] == "miss"))
        )
        y0, y1, x0, x1 = (int(v) for v in candidates.box[row])
        half = max(40, (max(y1 - y0, x1 - x0) * 3) // 4 + 12)
        crop = np.pad(canvas, ((half, half), (half, half), (0, 0)), constant_values=255)
        crop[half:-half, half:-half][find_boundaries(own, mode="inner")] = tuple(
            round(255 * c) for c in KIND_COLOURS[kind]
        )
        cy, cx = int(candidates.y[row]) + half, int(candidates.x[row]) + half
        window = Image.fromarray(crop[cy - half : cy + half, cx - half : cx + half]).resize((CROP, CROP), Image.NEAREST)
        at = ((index % columns) * CROP, (index // columns) * (CROP + caption))
        sheet.paste(window, at)
        verdict = "error" if case.errors[row] else "right"
        draw.text(
            (at[0] + 4, at[1] + CROP + 3),
            f"{index + 1}. {kind}, {candidates.area_um2[row]:.0f} um2, {scores[row]:.2f}: {verdict}",
            fill=(0, 0, 0),
            font_size=12,
        )
    draw.text(
        (4, rows * (CROP + caption) + 3),
        f"{case.name}: the first {len(order)} review items (yellow nucleus, "
        "magenta merge, cyan miss); green: true outlines, white: predicted",
        fill=(0, 0, 0),
        font_size=12,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    print(f"wrote {path}")


def main() -> None:
    """Measure (or with --fit, choose) the review queue on one subset of the split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default=str(SPLIT_FILE), help="JSON with train and validation tile lists")
    parser.add_argument("--subset", default="validation", choices=("train", "validation"))
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--cache", required=True, help="folder for the segmented tiles (.npz), outside the repo")
    parser.add_argument("--error-maps", default=None, help="folder of <tile>.npy error maps in [0, 1] to score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fit", action="store_true", help="fit and compare the settings (training split only)")
    parser.add_argument("--picture", default=None, help="PNG of the first 10 items on --picture-tile")
    parser.add_argument("--picture-tile", default=PICTURE_TILE)
    parser.add_argument("--json", default=None)
    parser.add_argument("--model", default=None, help="model file or bundled name (default: the bundled H&E model)")
    args = parser.parse_args()
    if args.fit and args.subset != "train":
        raise SystemExit("--fit chooses settings: only on --subset train, never on validation")
    torch.set_num_threads(args.threads)
    names = json.loads(Path(args.split).read_text())[args.subset]
    model = load_model(args.model)
    error_maps = Path(args.error_maps) if args.error_maps else None
    cases = prepare(model, names, Path(args.data), Path(args.cache), args.seed, REVIEW_SETTINGS, error_maps)
    payload: dict[str, Any] = {
        "subset": args.subset,
        "tiles": [case.name for case in cases],
        "model": Path(model.source).stem,
        "seed": args.seed,
        "machine": machine(),
        "settings": {k: v for k, v in vars(REVIEW_SETTINGS).items()},
    }
    if args.fit:
        payload["fit"] = choose(cases, args.seed)
    aurocs = map_aurocs(cases)
    print(
        f"\nerror AUROC on the {args.subset} split ({len(cases)} tiles): all = best IoU < 0.5, "
        f"clear = best IoU < {CLEAR_IOU} (0.3-0.5 left out)"
    )
    print(table(aurocs, ["map", "pixel all", "pixel clear", "nucleus all", "nucleus clear"]))
    all_orders = [orders(case, REVIEW_SETTINGS, args.seed) for case in cases]
    queue = queue_measures(cases, {name: [o[name] for o in all_orders] for name in all_orders[0]})
    print(
        f"\nreview queue on the {args.subset} split: errors among the first items, missed true nuclei "
        f">= {REACH_UM2:g} µm² reached, specks (< {SPECK_UM2:g} µm²) among the first items"
    )
    print(table(queue, list(queue[0])))
    payload.update(aurocs=aurocs, queue=queue, missed_true_nuclei=int(sum(len(missed_nuclei(c.truth)) for c in cases)))
    if args.picture:
        case = next((c for c in cases if c.name == args.picture_tile), None)
        if case is None:
            raise SystemExit(f"--picture-tile {args.picture_tile} is not in the {args.subset} split")
        picture(case, load_tile(args.data, case.name).image, Path(args.picture), REVIEW_SETTINGS)
        payload["picture"] = {"tile": case.name, "file": display_path(args.picture)}
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
