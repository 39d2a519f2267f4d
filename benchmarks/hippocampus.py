"""Hippocampus validation Dice and IoU per class for each number of sampling steps and K, and seconds per volume.

    python benchmarks/hippocampus.py --model RUN.safetensors [--data DIR] [--steps 1 2 4] [--samples 1 2 4]
                                     [--threads 2] [--json FILE]

The volumes are the validation list of benchmarks/hippocampus_split.json (never the held-out
test volumes). Each setting segments every volume slice by slice through `evaluate_volumes`,
the same path as `napari-cdal evaluate`; seconds per volume are the median over the volumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from _common import ROOT, display_path, machine, table, write_json

from napari_cdal.engine.data.volumes import load_volume
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.method.model import load_model
from napari_cdal.engine.segment.volume import evaluate_volumes

SPLIT_FILE = ROOT / "benchmarks" / "hippocampus_split.json"


def default_data_dir() -> Path:
    """The hippocampus training folder: $NAPARI_CDAL_HIPPOCAMPUS, else the project's shared data beside the repo."""
    env = os.environ.get("NAPARI_CDAL_HIPPOCAMPUS")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "hippocampus" / "train"


def main() -> None:
    """Score every setting on the validation volumes; print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cdal_hippocampus", help="checkpoint or bundled name")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    names = json.loads(SPLIT_FILE.read_text())["validation"]
    volumes = [load_volume(args.data, name, model.config.label_channels) for name in names]
    rows = []
    for steps in args.steps:
        if steps > model.config.diffusion_steps:
            continue
        for samples in args.samples:
            started = time.perf_counter()
            summary = run_to_end(
                evaluate_volumes(model, volumes, sampling_steps=steps, samples=samples, seed=args.seed)
            )
            seconds = statistics.median(row["seconds"] for row in summary["per_image"])
            rows.append(
                {
                    "steps": steps,
                    "K": samples,
                    **summary["mean"],
                    "s/volume": seconds,
                    "per_image": summary["per_image"],
                }
            )
            print(
                f"steps={steps} K={samples}: dice {summary['mean']['dice']:.4f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    names_of = model.config.class_names[1:]
    columns = ["steps", "K"] + [f"dice_{n}" for n in names_of] + [f"iou_{n}" for n in names_of] + ["dice", "s/volume"]
    print(table(rows, columns))
    write_json(
        args.json,
        {"model": display_path(model.source), "validation_volumes": names, "machine": machine(), "rows": rows},
    )


if __name__ == "__main__":
    main()
