"""Choose the generator's size by measurement: the same short training for each preset, then
parameters, seconds per 1000x1000 tile (T=4, K=1) and validation Dice/AJI.

    python benchmarks/configs.py [--presets small medium large] [--steps 500] [--out-dir DIR] [--json FILE]

Each preset is trained with `napari-cdal train` on the training split (same seed, same steps) and
its best checkpoint is scored on the validation split. Slow on two CPU cores: about
steps x (2..5) s per preset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import SPLIT_FILE, default_data_dir, machine, split, table, write_json

from napari_cdal.cli import main as cli_main
from napari_cdal.engine.config import iterations_done
from napari_cdal.engine.data.tiles import load_folder
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.method.model import load_model
from napari_cdal.engine.method.networks import count_parameters
from napari_cdal.engine.segment.evaluate import evaluate_tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["small", "medium", "large"])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--out-dir", default="runs/configs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    tiles = load_folder(args.data, split()["validation"])
    rows = []
    for preset in args.presets:
        out = Path(args.out_dir) / f"{preset}.safetensors"
        resume = ["--resume"] if out.with_name(f"{preset}.state.safetensors").exists() else ["--config", preset]
        code = cli_main(
            [
                "train",
                args.data,
                "--out",
                str(out),
                "--split",
                str(SPLIT_FILE),
                "--steps",
                str(args.steps),
                "--validate-every",
                str(args.steps),
                "--checkpoint-every",
                "100",
                *resume,
            ]
        )
        if code != 0:
            raise SystemExit(f"training {preset} failed")
        model = load_model(out)
        summary = run_to_end(evaluate_tiles(model, tiles))
        rows.append(
            {
                "preset": preset,
                "G params (M)": count_parameters(model.generator) / 1e6,
                "train s/step": model.record["wall_seconds"] / iterations_done(model.record),
                "s/tile": summary["seconds_per_image"],
                **summary["mean"],
            }
        )
        print(table(rows, ["preset", "G params (M)", "train s/step", "s/tile", "dice", "aji", "pq"]), flush=True)
    write_json(args.json, {"steps": args.steps, "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
