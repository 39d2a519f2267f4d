"""The correction loop, measured: a simulated pathologist corrects Review's first N items, fine-tunes, and we score.

    python benchmarks/loop.py [--organs breast,colon] [--modes review,random,whole] [--counts 10,25,50]
                              [--iterations N] [--lr LR] [--margin-um M] [--threads 1] [--json FILE]

Protocol, on the validation split (benchmarks/monuseg_split.json), organ by organ:
- the corrected tissue is the organ's first validation tile; where the organ has one tile, its left
  half (a gap of CUT_GAP_PX at the cut), and the unseen tissue is the right half; else the unseen
  tissue is the organ's other validation tiles;
- the tile is segmented with the model at its defaults, as the Segment widget does, and Review
  ranks its items (engine/segment/review.py); the items whose box lies in the corrected tissue count;
- mode `review` takes the first N items, `random` N items drawn at random (seeded) from the same
  queue, `whole` corrects the whole corrected tissue;
- each item is corrected from the truth: inside its box (the item's box and every true nucleus
  under it, widened by --margin-um) the labels become the true nuclei, so a wrong nucleus is
  replaced by the true ones under it, a miss is added and a merge split; outside, the labels stay
  the model's, and only the boxes are learned from (FinetunePair regions), as with the widget's
  rectangles;
- the fine-tune runs at the widget's defaults (FINETUNE_SETTINGS) unless told otherwise;
- scored before and after: the unseen tissue of the organ, and the other organs' validation tiles
  (what the model forgets); AJI, Dice, PQ and nuclei right (IoU > 0.5), with one seed throughout,
  so before and after are paired; plus the fine-tune's seconds, its held-back check and whether
  Segment would switch to it (FinetuneResult.improved).

Runs already in --json are kept and skipped, so an interrupted benchmark goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    CUT_GAP_PX,
    SPLIT_FILE,
    crop_columns,
    default_data_dir,
    display_path,
    machine,
    table,
    validation_by_organ,
)

from napari_cdal.engine.data.tiles import Tile, load_folder
from napari_cdal.engine.defaults import DEFAULT_IMAGE_MPP, FINETUNE_D_LR_RATIO, FINETUNE_SETTINGS, MIN_REGION_UM
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.io.regions import widen_box
from napari_cdal.engine.method.model import CdalModel, load_model
from napari_cdal.engine.segment.evaluate import evaluate_tiles
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.review import ReviewItem, review_items
from napari_cdal.engine.segment.windows import Box
from napari_cdal.engine.training.corrections import FinetunePair
from napari_cdal.engine.training.finetune import finetune, finetune_config
from napari_cdal.engine.training.replay import REPLAY_PATCH_PX, REPLAY_PATCHES, make_replay_set

MPP = DEFAULT_IMAGE_MPP
"""MoNuSeg tiles are 40x: 0.25 µm/px."""
MODES = ("review", "random", "whole")
METRICS = ("aji", "dice", "pq")


def corrected_and_unseen(tiles: list[Tile]) -> tuple[Tile, list[Tile]]:
    """The tissue the pathologist corrects and the organ's unseen tissue that scores the fine-tune."""
    if len(tiles) > 1:
        return tiles[0], tiles[1:]
    width = tiles[0].instances.shape[1]
    cut = width // 2
    return crop_columns(tiles[0], 0, cut - CUT_GAP_PX, "left"), [crop_columns(tiles[0], cut, width, "right")]


def review_queue(model: CdalModel, tile: Tile, seed: int) -> tuple[np.ndarray, list[ReviewItem], float]:
    """The model's labels of the tile at its defaults and Review's whole queue, as the widget makes them."""
    result = run_to_end(segment_image(model, tile.image, image_mpp=MPP, seed=seed, keep_steps=False))
    items = review_items(result.labels, result.probability, result.uncertainty, MPP, result.error_map)
    return result.labels, items, result.seconds


def item_box(item: ReviewItem, truth: np.ndarray, margin_px: int) -> Box:
    """The box a pathologist corrects for one item: the item's box and every true nucleus under it, widened."""
    y0, y1, x0, x1 = item.box
    under = np.unique(truth[y0:y1, x0:x1])
    under = under[under > 0]
    if under.size:
        ys, xs = np.nonzero(np.isin(truth, under))
        y0, y1, x0, x1 = min(y0, ys.min()), max(y1, ys.max() + 1), min(x0, xs.min()), max(x1, xs.max() + 1)
    return widen_box((y0, y1, x0, x1), margin_px, math.ceil(MIN_REGION_UM / MPP), truth.shape)


def corrected_labels(predicted: np.ndarray, truth: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """The model's labels with the truth painted inside each box (true ids shifted past the predicted ones)."""
    labels = predicted.astype(np.uint32).copy()
    offset = np.uint32(int(predicted.max()))
    for y0, y1, x0, x1 in boxes:
        true = truth[y0:y1, x0:x1].astype(np.uint32)
        labels[y0:y1, x0:x1] = np.where(true > 0, true + offset, 0)
    return labels


def covered_pixels(shape: tuple[int, ...], boxes: list[Box]) -> int:
    """How many pixels the boxes cover together (overlaps counted once)."""
    covered = np.zeros(shape, bool)
    for y0, y1, x0, x1 in boxes:
        covered[y0:y1, x0:x1] = True
    return int(covered.sum())


def score(model: CdalModel, tiles: list[Tile], seeds: list[int]) -> dict[str, Any]:
    """Mean AJI, Dice, PQ over the tiles and nuclei right (IoU > 0.5) summed, each averaged over the scoring seeds
    (one tile's AJI moves by up to about 0.015 from one seed to another)."""
    runs = [run_to_end(evaluate_tiles(model, tiles, image_mpp=MPP, seed=seed, count_nuclei=True)) for seed in seeds]
    return {
        **{key: float(np.mean([r["mean"][key] for r in runs])) for key in METRICS},
        "right": float(np.mean([r["nuclei"]["right"] for r in runs])),
        "truth": runs[0]["nuclei"]["truth"],
        "per_tile": {
            row["image"]: {key: float(np.mean([r["per_image"][i][key] for r in runs])) for key in METRICS}
            for i, row in enumerate(runs[0]["per_image"])
        },
    }


def gains(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """after - before, per metric and for nuclei right, and each tile's AJI change (where both have tiles)."""
    change: dict[str, Any] = {
        **{key: after[key] - before[key] for key in METRICS},
        "right": after["right"] - before["right"],
    }
    if "per_tile" in before and "per_tile" in after:
        change["aji_per_tile"] = {
            name: after["per_tile"][name]["aji"] - row["aji"]
            for name, row in before["per_tile"].items()
            if name in after["per_tile"]
        }
    return change


def run_key(organ: str, mode: str, count: int | None, settings: dict[str, Any], draw: int) -> str:
    """A run's identity in the JSON, so a re-run skips what is done."""
    return json.dumps(
        {"organ": organ, "mode": mode, "count": count, "settings": settings, "draw": draw}, sort_keys=True
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="MoNuSeg folder")
    parser.add_argument("--split", type=Path, default=SPLIT_FILE)
    parser.add_argument("--model", default=None, help="model to fine-tune (default: the bundled H&E model)")
    parser.add_argument("--organs", default="breast", help="comma-separated validation organs (default: breast)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    parser.add_argument("--counts", default="10,25,50", help="corrected items per run (review and random)")
    parser.add_argument("--draws", type=int, default=1, help="random draws per count (seeds 0..draws-1)")
    parser.add_argument(
        "--margin-um",
        type=float,
        default=None,
        help="margin round each corrected item, in µm (default: REGION_MARGIN_UM)",
    )
    parser.add_argument("--iterations", type=int, default=None, help="fine-tune iterations (default: the widget's)")
    parser.add_argument("--lr", type=float, default=None, help="generator learning rate (default: the widget's)")
    parser.add_argument(
        "--train-config", default=None, help="JSON of other FINETUNE_SETTINGS keys to change, e.g. '{\"replay\": 0.25}'"
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="give the model a replay set from the training split first (as tools/bundle_model.py "
        "--replay-data does), when it carries none",
    )
    parser.add_argument("--seed", type=int, default=0, help="segmentation and scoring seed")
    parser.add_argument(
        "--score-seeds",
        type=int,
        default=1,
        help="score with this many seeds from --seed on and average (less noise per organ)",
    )
    parser.add_argument("--no-others", action="store_true", help="skip scoring the other organs (forgetting)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="results file; runs already in it are skipped")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_cdal.engine.defaults import REGION_MARGIN_UM

    margin_um = REGION_MARGIN_UM if args.margin_um is None else args.margin_um
    changes: dict[str, Any] = json.loads(args.train_config) if args.train_config else {}
    if args.iterations is not None:
        changes["iterations"] = args.iterations
    if args.lr is not None:
        changes.update(lr_g=args.lr, lr_d=args.lr * FINETUNE_D_LR_RATIO)
    settings = finetune_config(**changes)
    tag = {
        **changes,
        "margin_um": margin_um,
        **({"replay_set": True} if args.replay else {}),
        **({"score_seeds": args.score_seeds} if args.score_seeds > 1 else {}),
    }
    counts = [int(c) for c in args.counts.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in modes if m not in MODES]:
        raise SystemExit(f"--modes: unknown {unknown}; known: {MODES}")

    model = load_model(args.model)
    if args.replay and model.replay is None:
        names = json.loads(args.split.read_text())["train"]
        model = replace(
            model,
            replay=make_replay_set(
                load_folder(args.data, names),
                MPP,
                model.config,
                REPLAY_PATCHES,
                REPLAY_PATCH_PX,
                np.random.default_rng(0),
            ),
        )
    grouped = validation_by_organ(args.data, args.split)
    organs = [o for o in args.organs.split(",") if o]
    if unknown := [o for o in organs if o not in grouped]:
        raise SystemExit(f"--organs: {unknown} have no validation tile; choose of {sorted(grouped)}")
    seeds = list(range(args.seed, args.seed + args.score_seeds))
    report: dict[str, Any] = {"runs": [], "baselines": {}}
    if args.json and args.json.is_file():
        report = json.loads(args.json.read_text())
    done = {run["key"] for run in report["runs"]}
    report.update(
        model=display_path(model.source),
        machine=machine(),
        cut_gap_px=CUT_GAP_PX,
        finetune_defaults=FINETUNE_SETTINGS,
        seed=args.seed,
    )

    def save() -> None:
        if args.json:
            tmp = args.json.with_name(f".{args.json.name}.tmp")
            tmp.write_text(json.dumps(report, indent=2))
            tmp.replace(args.json)

    for organ in organs:
        tiles = load_folder(args.data, grouped[organ])
        corrected, unseen = corrected_and_unseen(tiles)
        others = (
            [] if args.no_others else load_folder(args.data, [n for o, ns in grouped.items() if o != organ for n in ns])
        )
        base_key = organ if len(seeds) == 1 else f"{organ} seeds {seeds[0]}..{seeds[-1]}"
        baseline = report["baselines"].get(base_key)
        if baseline is None or (others and "per_tile" not in (baseline.get("others") or {})):
            started = time.perf_counter()
            baseline = {
                "corrected": corrected.name,
                "unseen": [t.name for t in unseen],
                "target": score(model, unseen, seeds),
                "others": score(model, others, seeds) if others else None,
                "seconds": round(time.perf_counter() - started, 1),
            }
            report["baselines"][base_key] = baseline
            save()
        predicted, queue, seconds = review_queue(model, corrected, args.seed)
        margin_px = max(0, round(margin_um / MPP))
        print(
            f"{organ}: correcting {corrected.name} ({len(queue)} review items, segmented in {seconds:.1f} s); "
            f"unseen {baseline['unseen']}; start AJI {baseline['target']['aji']:.3f}",
            flush=True,
        )
        plans: list[tuple[str, int | None, int]] = []
        for mode in modes:
            if mode == "whole":
                plans.append((mode, None, 0))
            for count in counts if mode != "whole" else []:
                for draw in range(args.draws if mode == "random" else 1):
                    plans.append((mode, count, draw))
        for mode, count, draw in plans:
            key = run_key(organ, mode, count, tag, draw)
            if key in done:
                continue
            if mode == "whole":
                items, boxes, labels = [], None, corrected.instances
            else:
                rng = np.random.default_rng(draw)
                chosen = (
                    queue[:count]
                    if mode == "review"
                    else [queue[i] for i in sorted(rng.choice(len(queue), size=min(count, len(queue)), replace=False))]
                )
                items = chosen
                boxes = [item_box(item, corrected.instances, margin_px) for item in chosen]
                labels = corrected_labels(predicted, corrected.instances, boxes)
            pair = FinetunePair(corrected.image, labels, boxes, corrected.name)
            started = time.perf_counter()
            result = run_to_end(finetune(model, [pair], settings, "cpu", MPP))
            ft_seconds = time.perf_counter() - started
            after_target = score(result.model, unseen, seeds)
            after_others = score(result.model, others, seeds) if others else None
            area = corrected.instances.size if boxes is None else covered_pixels(predicted.shape, boxes)
            run = {
                "key": key,
                "organ": organ,
                "mode": mode,
                "count": count,
                "draw": draw,
                "settings": tag,
                "kinds": {k: sum(1 for i in items if i.kind == k) for k in ("nucleus", "merge", "miss")},
                "corrected_mm2": round(area * MPP * MPP / 1e6, 5),
                "finetune_seconds": round(ft_seconds, 1),
                "iterations": result.record["iterations"],
                "best_step": result.best_step,
                "improved": result.improved,
                "held_back": {
                    "before": result.before,
                    "after": result.after,
                    "noise": result.record["finetune"].get("noise"),
                },
                "target": after_target,
                "target_gain": gains(baseline["target"], after_target),
                "others": after_others,
                "others_gain": gains(baseline["others"], after_others) if after_others else None,
            }
            report["runs"].append(run)
            save()
            gain = run["target_gain"]
            print(
                f"  {mode:<6} N={count or '-':<3} draw {draw}: {ft_seconds:.0f} s, best step {result.best_step}, "
                f"switch {result.improved}; unseen AJI {gain['aji']:+.4f} Dice {gain['dice']:+.4f} "
                f"right {gain['right']:+g}; others AJI "
                f"{(run['others_gain'] or {}).get('aji', float('nan')):+.4f}",
                flush=True,
            )

    rows = []
    for run in report["runs"]:
        t, o = run["target_gain"], run["others_gain"] or {}
        worst = min(o.get("aji_per_tile", {}).items(), key=lambda item: item[1], default=(None, None))
        rows.append(
            {
                "organ": run["organ"],
                "mode": run["mode"],
                "N": run["count"] or "all",
                "draw": run["draw"],
                "settings": json.dumps(run["settings"]),
                "s": run["finetune_seconds"],
                "switch": run["improved"],
                "AJI+": t["aji"],
                "Dice+": t["dice"],
                "PQ+": t["pq"],
                "right+": t["right"],
                "AJI+/item": t["aji"] / run["count"] if run["count"] else None,
                "others AJI+": o.get("aji"),
                "worst other AJI+": worst[1],
            }
        )
    print(
        table(
            rows,
            [
                "organ",
                "mode",
                "N",
                "draw",
                "settings",
                "s",
                "switch",
                "AJI+",
                "Dice+",
                "PQ+",
                "right+",
                "AJI+/item",
                "others AJI+",
                "worst other AJI+",
            ],
        )
    )
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
