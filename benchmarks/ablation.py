"""Equal-budget ablation of cDAL's own parts: does the chain refine, does z matter, do the
attention and the uncertainty point at the mask's mistakes?

    python benchmarks/ablation.py [--arms control self_condition ...] [--steps 300] [--samples 4]
                                  [--init-from MODEL] [--out-dir DIR] [--json FILE] [--threads 2]

Every arm starts from the same model (default: the bundled one) and trains the same number of
steps with the same seed, split and schedule, with one change at a time (or the named
combination). Each arm is trained with `napari-cdal train --init-from` (resumable: a re-run goes
on where it stopped and skips finished arms), then scored on the validation split at full
resolution:
- Dice/AJI at T = 1, 2, 4 with K samples, and the Dice of x̂_0 at every step of the chain;
- at T = 2 also with deterministic jumps (DDIM) and with the attention used in sampling;
- the share of the across-sample variance that comes from z (K samples with their own z vs one
  shared z, on a 256 crop per tile);
- D's real/fake accuracy over the arm's last 100 training steps;
- pixel and per-nucleus error AUROC of each uncertainty measure and attention map, next to the
  outline-nearness and small-nucleus baselines.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import SPLIT_FILE, default_data_dir, display_path, machine, split, table, write_json

from napari_cdal.cli import main as cli_main
from napari_cdal.engine.config import DISC_KINDS, UNCERTAINTY_MEASURES, iterations_done
from napari_cdal.engine.data.tiles import Tile, load_folder
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.io.images import to_rgb_float
from napari_cdal.engine.labels import nucleus_areas, nucleus_means
from napari_cdal.engine.method.intensity import normalise
from napari_cdal.engine.method.model import CdalModel, bundled_model_path, load_model
from napari_cdal.engine.method.resampling import model_size, resample
from napari_cdal.engine.method.sampler import reverse_process
from napari_cdal.engine.segment import reliability as rel
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import dice, score_segmentation

# One change at a time against `control`, then the combination. Model-config keys change the
# networks or the sampler (weights carried over, new inputs start at zero); train keys the recipe.
ARMS: dict[str, dict[str, dict[str, Any]]] = {
    "control": {"model": {}, "train": {}},
    "self_condition": {"model": {"self_condition": True}, "train": {}},
    "disc_image": {"model": {"disc_image": True}, "train": {}},
    "adversarial_0.3": {"model": {}, "train": {"adversarial_weight": 0.3}},
    "patch_disc": {"model": {"disc_image": True}, "train": {"d_cutmix_weight": 1.0}},
    "own_chain": {"model": {}, "train": {"own_chain_rate": 0.5}},
    "combined": {
        "model": {"self_condition": True, "disc_image": True},
        "train": {"adversarial_weight": 0.3},
    },
}

# The same short schedule for every arm: warm-up, cosine to lr_min, and an EMA short enough to
# leave the starting weights behind within the budget.
ARM_RECIPE = {"lr_g": 2e-4, "lr_d": 1e-4, "warmup_steps": 20, "ema_decay": 0.99}

SHORT = {
    "std": "std",
    "entropy": "ent",
    "mutual_information": "MI",
    "chain_std": "chain std",
    "chain_entropy": "chain ent",
    "channel_mean": "mean",
    "score_map": "score",
    "score_gradient": "grad",
}
PIXEL_STRIDE = 3  # every 3rd pixel in y and x enters the pooled pixel AUROC (errors are spatially smooth)
Z_CROP = 256


def train_arm(name: str, steps: int, init_from: Path, out_dir: Path, data: str, threads: int) -> Path:
    """Train (or go on training) one arm; returns its best model's path."""
    arm = ARMS[name]
    out = out_dir / f"{name}.safetensors"
    state = out.with_name(f"{name}.state.safetensors")
    if out.exists() and (iterations_done(load_model(out).record) or 0) >= steps and not state.exists():
        return out
    if out.exists() and not state.exists():  # a shorter arm of an earlier call: this script's own file
        print(f"{out.name}: trained fewer than {steps} iterations; training it again from the start")
        out.unlink()
    if state.exists():
        args = ["--resume"]
    else:
        model_json = out_dir / f"{name}.model.json"
        model_json.write_text(json.dumps(arm["model"]))
        args = ["--init-from", str(init_from), "--config", str(model_json)]
    train_json = out_dir / f"{name}.train.json"
    train_json.write_text(json.dumps({**ARM_RECIPE, **arm["train"]}))
    code = cli_main(
        [
            "train",
            data,
            "--out",
            str(out),
            "--split",
            str(SPLIT_FILE),
            "--steps",
            str(steps),
            "--validate-every",
            str(steps),
            "--checkpoint-every",
            "50",
            "--threads",
            str(threads),
            "--train-config",
            str(train_json),
            *args,
        ]
    )
    if code != 0:
        raise SystemExit(f"training arm {name} failed")
    state.unlink(missing_ok=True)
    return out


def discriminator_accuracy(model: CdalModel) -> dict[str, float | None]:
    """D's accuracy on real and on fake pairs, averaged over the last 100 training steps' records."""
    history = [h for h in model.record.get("history", []) if "d_real_acc" in h]
    last = [h for h in history if h["step"] > history[-1]["step"] - 100] if history else []

    def mean(key: str) -> float | None:
        return float(np.mean([h[key] for h in last])) if last else None

    return {"d_real_acc": mean("d_real_acc"), "d_fake_acc": mean("d_fake_acc")}


def latent_share(model: CdalModel, tiles: list[Tile], steps: int, samples: int, seed: int) -> float | None:
    """1 - (spread with one shared z) / (spread with a z per sample), on a central crop per tile."""
    spread = {False: [], True: []}
    for tile in tiles:
        rgb = to_rgb_float(tile.image, model.config.image_channels)
        mh, mw = model_size(*rgb.shape[:2], 0.25, model.config.model_mpp)
        pixels = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        image = normalise(resample(pixels, (mh, mw)), model.config)
        y0, x0 = (mh - Z_CROP) // 2, (mw - Z_CROP) // 2
        crop = image[:, :, y0 : y0 + Z_CROP, x0 : x0 + Z_CROP]
        for shared in (False, True):
            rng = torch.Generator().manual_seed(seed)
            out = run_to_end(
                reverse_process(model, crop, steps, samples, rng, with_attention=False, shared_latent=shared)
            )
            spread[shared].append(float(out.uncertainty_maps["std"].pow(2).mean()))
    total = float(np.mean(spread[False]))
    return None if total <= 0 else 1.0 - float(np.mean(spread[True])) / total


def score_setting(model: CdalModel, tiles: list[Tile], steps: int, samples: int, seed: int) -> dict[str, Any]:
    """Accuracy, per-step Dice and error AUROCs of one sampler setting over the validation tiles."""
    scores, step_dice, counts = [], [], []
    pixel: dict[str, list[np.ndarray]] = {"errors": []}
    nucleus: dict[str, list[np.ndarray]] = {"wrong": []}
    started = time.perf_counter()
    for tile in tiles:
        result = run_to_end(
            segment_image(
                model,
                tile.image,
                sampling_steps=steps,
                samples=samples,
                seed=seed,
                keep_steps=True,
                with_attention=False,
                attention_kinds=DISC_KINDS["trunk"],
                uncertainty_kinds=UNCERTAINTY_MEASURES,
            )
        )
        labels = result.labels
        scores.append(score_segmentation(labels, tile.foreground, tile.instances))
        step_dice.append([dice(plane > 0.5, tile.foreground) for plane in result.steps])
        counts.append((int(labels.max()), int(tile.instances.max())))
        maps = {f"unc_{k}": v for k, v in result.uncertainty_maps.items()}
        maps.update({f"att_{k}": v for k, v in result.final_attention_maps.items()})
        maps["base_outline"] = rel.outline_nearness(labels)
        sub = (slice(None, None, PIXEL_STRIDE),) * 2
        pixel["errors"].append(rel.pixel_errors(labels, tile.foreground)[sub].ravel())
        nucleus["wrong"].append(rel.wrong_nuclei(labels, tile.instances))
        for key, values in maps.items():
            pixel.setdefault(key, []).append(values[sub].ravel())
            nucleus.setdefault(key, []).append(nucleus_means(labels, values))
        nucleus.setdefault("base_small", []).append(-nucleus_areas(labels))
    errors, wrong = np.concatenate(pixel.pop("errors")), np.concatenate(nucleus.pop("wrong"))
    row: dict[str, Any] = {"T": steps, "K": samples}
    for key in ("dice", "iou", "aji", "pq"):
        row[key] = float(np.mean([s[key] for s in scores]))
    row["step_dice"] = [float(v) for v in np.mean(step_dice, axis=0)]
    row["chain_refines"] = bool(all(b >= a - 1e-4 for a, b in zip(row["step_dice"], row["step_dice"][1:], strict=True)))
    row["count_ratio"] = float(np.mean([p / max(t, 1) for p, t in counts]))
    row["pixel_auroc"] = {k: rel.auroc(np.concatenate(v), errors) for k, v in pixel.items()}
    row["nucleus_auroc"] = {k: rel.auroc(np.concatenate(v), wrong) for k, v in nucleus.items()}
    row["s/tile"] = (time.perf_counter() - started) / len(tiles)
    return row


def analyse(model: CdalModel, tiles: list[Tile], samples: int, seed: int, variants: bool) -> list[dict[str, Any]]:
    """Every sampler setting of the ablation for one trained model (`variants`: also the T = 2 sampler variants)."""
    rows = []
    for steps in (1, 2, 4):
        rows.append({"sampler": "default", **score_setting(model, tiles, steps, samples, seed)})
    if not variants:
        return rows
    for label, change in (
        ("deterministic", {"sampling_noise": 0.0}),
        ("attention_in_sampling", {"attention_in_sampling": True}),
    ):
        variant = CdalModel(
            replace(model.config, **change),
            model.generator,
            model.discriminator,
            model.record,
            model.source,
        )
        rows.append({"sampler": label, **score_setting(variant, tiles, 2, samples, seed)})
    return rows


def flat_row(arm: str, row: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The printed columns of one result row."""
    out = {
        "arm": arm,
        "sampler": row["sampler"],
        "T": row["T"],
        "dice": row["dice"],
        "aji": row["aji"],
        "steps dice": " ".join(f"{v:.3f}" for v in row["step_dice"]),
        "n/true": row["count_ratio"],
        **extra,
    }
    for name in UNCERTAINTY_MEASURES:
        if f"unc_{name}" in row["pixel_auroc"]:
            out[f"U {SHORT[name]} px/nuc"] = _pair(row, f"unc_{name}")
    for name in DISC_KINDS["trunk"]:
        out[f"A {SHORT[name]} px/nuc"] = _pair(row, f"att_{name}")
    out["outline px/nuc"] = _pair(row, "base_outline")
    out["small nuc"] = row["nucleus_auroc"]["base_small"]
    return out


def _pair(row: dict[str, Any], key: str) -> str:
    px, nuc = row["pixel_auroc"].get(key), row["nucleus_auroc"].get(key)
    return f"{px if px is not None else float('nan'):.2f}/{nuc if nuc is not None else float('nan'):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--steps", type=int, default=300, help="training steps per arm")
    parser.add_argument("--samples", type=int, default=4, help="K for scoring")
    parser.add_argument("--init-from", default=str(bundled_model_path()))
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--out-dir", default=str(Path(tempfile.gettempdir()) / "napari-cdal-ablation"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score-only", action="store_true", help="score the arms' models, train nothing")
    parser.add_argument(
        "--sampler-variants",
        nargs="*",
        default=None,
        help="arms also scored with deterministic jumps and attention in sampling (default: all)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="score only this model (e.g. the bundled one at its defaults), under --label",
    )
    parser.add_argument("--label", default="model")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.model:
        args.arms, args.score_only = [args.label], True

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tiles = load_folder(args.data, split()["validation"])
    results = json.loads(Path(args.json).read_text()).get("arms", {}) if args.json and Path(args.json).exists() else {}
    for arm in args.arms:
        if arm in results and results[arm].get("steps") == args.steps:
            continue
        if arm not in ARMS and not args.model:
            raise SystemExit(f"unknown arm {arm!r}; known: {sorted(ARMS)}")
        if args.model:
            path = Path(args.model)
        elif args.score_only:
            path = out_dir / f"{arm}.safetensors"
        else:
            path = train_arm(arm, args.steps, Path(args.init_from), out_dir, args.data, args.threads)
        model = load_model(path)
        variants = args.sampler_variants is None or arm in args.sampler_variants
        rows = analyse(model, tiles, args.samples, args.seed, variants)
        results[arm] = {
            "steps": args.steps,
            "changes": ARMS.get(arm, {"model": display_path(path)}),
            "recipe": ARM_RECIPE,
            "latent_share": latent_share(model, tiles, 2, args.samples, args.seed),
            **discriminator_accuracy(model),
            "rows": rows,
            "train_seconds": model.record.get("wall_seconds"),
        }
        printed = [
            flat_row(
                name,
                row,
                {
                    "z share": res["latent_share"],
                    "D real": res["d_real_acc"],
                    "D fake": res["d_fake_acc"],
                },
            )
            for name, res in results.items()
            for row in res["rows"]
        ]
        print(table(printed, list(dict.fromkeys(key for row in printed for key in row))), flush=True)
        write_json(
            args.json,
            {
                "init_from": display_path(args.init_from),
                "validation_tiles": [t.name for t in tiles],
                "samples": args.samples,
                "machine": machine(),
                "arms": results,
            },
        )


if __name__ == "__main__":
    main()
