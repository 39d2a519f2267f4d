"""Fine-tuning benchmark: does learning from corrections on part of an organ's tiles help on the rest?

Protocol (MoNuSeg, tiles the model never trained on): take the validation tiles of one organ
(benchmarks/monuseg_split.json 'validation' + the manifest's organ column; one or two per organ).
Fine-tune on the left half of each (the corrected region, with a gap at the cut so no nucleus is
seen on both sides), then score the right halves before and after: same slides and stain, unseen
nuclei, which is what a pathologist who corrected part of a slide cares about. The validation tiles
of the other organs are scored too, to see what the fine-tune forgot. Scores are engine.segment.evaluate's
(full resolution, Dice, AJI, PQ); the time is the fine-tune's wall clock on this machine.

    python benchmarks/finetune.py --model runs/medium.safetensors --organ breast --threads 1 --json ft.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import CUT_GAP_PX, crop_columns, display_path, validation_by_organ

from napari_cdal.engine.config import iterations_done
from napari_cdal.engine.data.tiles import Tile, load_folder
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.method.model import load_model
from napari_cdal.engine.segment.evaluate import evaluate_tiles
from napari_cdal.engine.training.corrections import FinetunePair
from napari_cdal.engine.training.finetune import finetune, finetune_config

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "monuseg" / "train"
DATA_MPP = 0.25

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-gate": dict(attention_gate=False),
    "plain": dict(lr_g=5e-4, lr_d=2e-4, ema_decay=0.0, holdout_fraction=0.0),
    "ema-small-lr": dict(lr_g=1e-4, lr_d=5e-5, ema_decay=0.95, holdout_fraction=0.0),
    "ema-long": dict(lr_g=1e-4, lr_d=5e-5, ema_decay=0.99, holdout_fraction=0.0),
    "held-back": dict(lr_g=1e-4, lr_d=5e-5, ema_decay=0.95, holdout_fraction=0.25, validate_every=25, patience=0),
    "held-back-long": dict(lr_g=1e-4, lr_d=5e-5, ema_decay=0.99, holdout_fraction=0.25, validate_every=25, patience=0),
}
"""Anti-forgetting guards compared: the train learning rate with raw weights, a small learning rate
with a short or longer EMA, and keeping the best weights on a held-back strip of the corrections;
and the defaults without cDAL's attention gate (no-gate), to see what the gate does."""


def organ_tiles(data: Path, split: Path, organ: str) -> tuple[list[str], list[str]]:
    """Validation tile names of `organ`, and those of every other organ."""
    grouped = validation_by_organ(data, split)
    if organ not in grouped:
        raise SystemExit(f"--organ {organ!r} has no validation tile in {split}; choose one of {sorted(grouped)}")
    return grouped[organ], [name for name in json.loads(split.read_text())["validation"] if name not in grouped[organ]]


def halves(tile: Tile) -> tuple[FinetunePair, Tile]:
    """The left half as a corrected region (minus the gap at the cut) and the right half as a scored crop."""
    height, width = tile.instances.shape
    cut = width // 2
    pair = FinetunePair(tile.image, tile.instances, [(0, height, 0, cut - CUT_GAP_PX)], f"{tile.name} left")
    return pair, crop_columns(tile, cut, width, "right")


def score(model: Any, tiles: list[Tile]) -> dict[str, Any]:
    return run_to_end(evaluate_tiles(model, tiles, image_mpp=DATA_MPP))


def fmt(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "      -       "
    return f"{after:.3f} ({after - before:+.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MoNuSeg folder (default: shared data)")
    parser.add_argument("--model", default=None, help="model to fine-tune (default: the bundled one)")
    parser.add_argument("--split", type=Path, default=HERE / "monuseg_split.json")
    parser.add_argument(
        "--organ", default="breast", help="organ whose validation tiles are corrected (default: breast)"
    )
    parser.add_argument("--variants", default="default", help=f"comma-separated, of {sorted(VARIANTS)}")
    parser.add_argument(
        "--iterations",
        "--steps",
        dest="iterations",
        type=int,
        default=None,
        help="fine-tune iterations (default: FINETUNE_SETTINGS')",
    )
    parser.add_argument("--seed", type=int, default=None, help="fine-tune seed (default: 0)")
    parser.add_argument("--no-others", action="store_true", help="skip scoring the other organs (forgetting)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {sorted(VARIANTS)}")

    model = load_model(args.model)
    target_names, other_names = organ_tiles(args.data, args.split, args.organ)
    pairs, targets = zip(*(halves(tile) for tile in load_folder(args.data, target_names)), strict=True)
    others = [] if args.no_others else load_folder(args.data, other_names)
    print(
        f"model {model.source} (trained {iterations_done(model.record) or '?'} iterations); organ {args.organ}: "
        f"fine-tune on the left halves of {len(pairs)} tile(s), score their right halves; "
        f"{len(others)} other-organ tiles for forgetting; torch threads {torch.get_num_threads()}",
        flush=True,
    )

    started = time.perf_counter()
    baseline = {"target": score(model, list(targets)), "others": score(model, others) if others else None}
    print(f"scored the starting model in {time.perf_counter() - started:.0f} s", flush=True)
    runs = []
    for name in args.variants.split(","):
        overrides = {key: getattr(args, key) for key in ("iterations", "seed") if getattr(args, key) is not None}
        settings = finetune_config(**VARIANTS[name], **overrides)
        started = time.perf_counter()
        result = run_to_end(finetune(model, list(pairs), settings, "cpu", DATA_MPP))
        seconds = time.perf_counter() - started
        after = {
            "target": score(result.model, list(targets)),
            "others": score(result.model, others) if others else None,
        }
        runs.append(
            {
                "variant": name,
                "settings": settings.to_dict(),
                "finetune_seconds": round(seconds, 1),
                "steps_run": result.record["iterations"],
                "best_step": result.best_step,
                "kept_start": result.kept_start,
                "validation": result.record["finetune"]["validation"],
                "history": result.record["finetune"]["history"],
                "scores": after,
            }
        )
        print(
            f"{name}: {result.record['iterations']} iterations in {seconds:.0f} s (best step {result.best_step})",
            flush=True,
        )

    lines = [
        f"{'variant':<16} {'s':>5}  {'target Dice':>15} {'target AJI':>15} {'target PQ':>15}"
        f"  {'others Dice':>15} {'others AJI':>15}"
    ]
    base_t, base_o = baseline["target"]["mean"], (baseline["others"] or {}).get("mean", {})
    lines.append(
        f"{'start':<16} {'':>5}  {fmt(base_t['dice'], base_t['dice']):>15} "
        f"{fmt(base_t['aji'], base_t['aji']):>15} "
        f"{fmt(base_t['pq'], base_t['pq']):>15}  {fmt(base_o.get('dice'), base_o.get('dice')):>15} "
        f"{fmt(base_o.get('aji'), base_o.get('aji')):>15}"
    )
    for run in runs:
        t, o = run["scores"]["target"]["mean"], (run["scores"]["others"] or {}).get("mean", {})
        lines.append(
            f"{run['variant']:<16} {run['finetune_seconds']:>5.0f}  {fmt(base_t['dice'], t['dice']):>15} "
            f"{fmt(base_t['aji'], t['aji']):>15} {fmt(base_t['pq'], t['pq']):>15}  "
            f"{fmt(base_o.get('dice'), o.get('dice')):>15} {fmt(base_o.get('aji'), o.get('aji')):>15}"
        )
    print("\n".join(lines))
    if args.json:
        report = {
            "model": display_path(model.source),
            "model_steps": iterations_done(model.record),
            "organ": args.organ,
            "finetune_tiles": list(target_names),
            "other_tiles": other_names,
            "cut_gap_px": CUT_GAP_PX,
            "torch_threads": torch.get_num_threads(),
            "baseline": baseline,
            "runs": runs,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
