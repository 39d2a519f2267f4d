"""What a new organ costs: leave-one-organ-out training beside training on every organ, at the same budget.

    python benchmarks/organs.py --runs DIR [--organs breast kidney] [--iterations 500] [--threads 2]
                                [--data DIR] [--json FILE]

For each organ left out, a model is trained from scratch with `napari-cdal train` (preset medium,
the recipe's defaults) on the training split without that organ's tiles; one more is trained on
the whole training split, the same number of iterations with the same seed. Runs live in --runs
(outside the repository) and are resumed where a previous call stopped (`--resume`). Then each
left-out organ's validation tiles, which no arm saw, are scored by both its arm and the all-organ
arm (T = 2, K = 2), and by its own arm on the organ's training tiles too, which it also never saw.
The difference is what meeting an organ for the first time costs at this budget.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import SPLIT_FILE, default_data_dir, machine, organs_of, table, write_json

from napari_cdal.catalog import state_path
from napari_cdal.engine.config import iterations_done
from napari_cdal.engine.data.tiles import load_folder
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.io.checkpoint import read_metadata
from napari_cdal.engine.method.model import load_model
from napari_cdal.engine.method.runtime import with_runtime
from napari_cdal.engine.segment.evaluate import evaluate_tiles

ALL = "all organs"
SAMPLING = {"sampling_steps": 2, "samples": 2}


def arm_split(split: dict[str, list[str]], organs: dict[str, str], left_out: str | None) -> dict[str, list[str]]:
    """The split without `left_out`'s tiles (in training and in the run's own validation)."""
    return {part: [name for name in split[part] if organs[name] != left_out] for part in ("train", "validation")}


def finished(model: Path, iterations: int) -> bool:
    """True when `model` exists and its run reached `iterations`."""
    if not model.exists():
        return False
    record = read_metadata(model).get("record", {})
    return (iterations_done(record) or 0) >= iterations


def train_arm(name: str, split: dict[str, list[str]], args: argparse.Namespace) -> Path:
    """Train (or resume) one arm with the CLI; returns its model file."""
    folder = Path(args.runs)
    folder.mkdir(parents=True, exist_ok=True)
    slug = name.replace(" ", "_")
    split_file = folder / f"{slug}.split.json"
    split_file.write_text(json.dumps(split, indent=1))
    model = folder / f"{slug}.safetensors"
    if finished(model, args.iterations):
        return model
    state = state_path(model)
    command = [
        shutil.which("napari-cdal") or str(Path(sys.executable).with_name("napari-cdal")),
        "train",
        str(args.data),
        "--out",
        str(model),
        "--config",
        "medium",
        "--split",
        str(split_file),
        "--iterations",
        str(args.iterations),
        "--validate-every",
        str(args.iterations),
        "--checkpoint-every",
        "50",
        "--threads",
        str(args.threads),
        "--seed",
        "0",
    ]
    if state.exists():  # the run goes on as it was started: its model config and split are in the state
        command = [*command[:5], "--resume", "--threads", str(args.threads)]
    print(f"training {name}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True)
    return model


def scores(model_file: Path, data: Path, names: list[str]) -> dict[str, float]:
    """Mean Dice, AJI and PQ of a model on the named tiles."""
    model = with_runtime(load_model(str(model_file)), "auto", "auto")
    summary = run_to_end(evaluate_tiles(model, load_folder(data, names), **SAMPLING))
    return {key: summary["mean"][key] for key in ("dice", "aji", "pq")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="folder for the arms' models and states (outside the repo)")
    parser.add_argument("--organs", nargs="+", default=["breast", "kidney"])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.data = Path(args.data)

    split = json.loads(Path(SPLIT_FILE).read_text())
    organs = organs_of(args.data)
    unknown = sorted(set(args.organs) - set(organs.values()))
    if unknown:
        parser.error(f"no tile of organ {', '.join(unknown)}; the data has {', '.join(sorted(set(organs.values())))}")
    models = {ALL: train_arm(ALL, arm_split(split, organs, None), args)}
    for organ in args.organs:
        models[organ] = train_arm(f"without {organ}", arm_split(split, organs, organ), args)
    rows = []
    for organ in args.organs:
        unseen = [name for name in split["validation"] if organs[name] == organ]
        also_unseen = [name for name in split["train"] if organs[name] == organ]
        with_it, without = scores(models[ALL], args.data, unseen), scores(models[organ], args.data, unseen)
        rows.append(
            {
                "organ": organ,
                "tiles": len(unseen),
                **{f"{k} with": v for k, v in with_it.items()},
                **{f"{k} without": v for k, v in without.items()},
                "AJI cost": with_it["aji"] - without["aji"],
                **{
                    f"{k} without, its training tiles": v
                    for k, v in scores(models[organ], args.data, also_unseen).items()
                },
            }
        )
        print(table(rows[-1:], list(rows[-1])), flush=True)
    print(
        table(
            rows,
            [
                "organ",
                "tiles",
                "dice with",
                "dice without",
                "aji with",
                "aji without",
                "AJI cost",
                "pq with",
                "pq without",
                "aji without, its training tiles",
            ],
        )
    )
    write_json(
        args.json,
        {
            "iterations": args.iterations,
            "sampling": SAMPLING,
            "machine": machine(),
            "rows": rows,
            "mean AJI cost": float(np.mean([row["AJI cost"] for row in rows])),
        },
    )


if __name__ == "__main__":
    main()
