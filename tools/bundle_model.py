"""Copy a trained model into the package as the bundled default, with its chosen sampling defaults.

    python tools/bundle_model.py RUN_MODEL.safetensors --default-sampling-steps 2 [--default-samples 2]
        [--uncertainty chain_entropy] [--attention channel_mean] [--sampling-noise 1.0]
        [--replay-data MONUSEG_TRAIN --replay-split benchmarks/monuseg_split.json]

The training record goes along unchanged, plus a `bundled` entry saying where the weights came
from and why the defaults were chosen, so `napari-cdal info` tells the whole story. Only settings
of the sampler change; the weights are copied as they are. With --replay-data the model also carries
a replay set (engine/training/replay.py): REPLAY_PATCHES patches of the split's training tiles,
centred on true nuclei, that fine-tuning mixes in so that it forgets less.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from napari_cdal.engine.config import ATTENTION_MAPS, UNCERTAINTY_MEASURES, iterations_done
from napari_cdal.engine.data.tiles import load_folder
from napari_cdal.engine.defaults import DEFAULT_IMAGE_MPP
from napari_cdal.engine.method.model import bundled_model_path, load_model, save_model, with_new_config
from napari_cdal.engine.training.replay import REPLAY_PATCH_PX, REPLAY_PATCHES, make_replay_set

MAX_BYTES = 25 * 1024 * 1024


def without_machine_paths(value: Any) -> Any:
    """The record with every absolute path cut to its file name: the package names no machine's folders."""
    if isinstance(value, dict):
        return {key: without_machine_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_machine_paths(item) for item in value]
    if isinstance(value, str) and Path(value).is_absolute():
        return Path(value).name
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the run's best model (what `napari-cdal train --out` wrote)")
    parser.add_argument(
        "--default-sampling-steps",
        "--default-steps",
        dest="default_sampling_steps",
        type=int,
        required=True,
        help="reverse steps the bundled model samples with unless told otherwise",
    )
    parser.add_argument("--default-samples", type=int, default=None, help="samples K (default: the model's)")
    parser.add_argument(
        "--uncertainty",
        default=None,
        choices=UNCERTAINTY_MEASURES,
        help="what the uncertainty layer shows (default: the model's)",
    )
    parser.add_argument(
        "--attention",
        default=None,
        choices=ATTENTION_MAPS,
        help="what the attention layer shows (default: the model's)",
    )
    parser.add_argument(
        "--sampling-noise",
        type=float,
        default=None,
        help="DDIM eta of the jumps: 1 = cDAL's posterior, 0 = deterministic (default: the model's)",
    )
    parser.add_argument(
        "--replay-data",
        default=None,
        help="MoNuSeg-layout folder of the model's training tiles: carry a replay set cut from them",
    )
    parser.add_argument(
        "--replay-split",
        default=None,
        help="JSON whose 'train' list names the tiles to cut it from (default: every tile)",
    )
    parser.add_argument("--replay-mpp", type=float, default=DEFAULT_IMAGE_MPP, help="the tiles' µm per pixel")
    parser.add_argument(
        "--discriminator-from",
        default=None,
        help="take the discriminator (the attention layer's map) from this model instead, its inputs grown to the "
        "model's label channels as with_new_config grows them (a D trained for the generator before a fine-tune)",
    )
    parser.add_argument("--reason", default="benchmarks/accuracy.py and benchmarks/ablation.py; see docs/model_card.md")
    parser.add_argument("--out", default=str(bundled_model_path()))
    args = parser.parse_args()

    model = load_model(args.model)
    if args.discriminator_from:
        source = load_model(args.discriminator_from)
        model.discriminator = with_new_config(source, model.config).discriminator
        model.record["discriminator_from"] = {
            "model": Path(args.discriminator_from).name,
            "iterations": iterations_done(source.record),
            "error_discriminator": source.record.get("error_discriminator"),
        }
    weight_bytes = sum(
        t.numel() * t.element_size()
        for module in (model.generator, model.discriminator)
        for t in module.state_dict().values()
    )
    if weight_bytes > MAX_BYTES:
        raise SystemExit(
            f"{args.model} holds {weight_bytes / 2**20:.1f} MB of weights, over the 25 MB "
            "the package allows; nothing was written"
        )
    changes = {
        "default_sampling_steps": args.default_sampling_steps,
        "default_samples": args.default_samples,
        "uncertainty_measure": args.uncertainty,
        "attention_display": args.attention,
        "sampling_noise": args.sampling_noise,
    }
    changes = {key: value for key, value in changes.items() if value is not None}
    try:
        model.config = dataclasses.replace(model.config, **changes)
    except ValueError as exc:
        raise SystemExit(f"{exc}; nothing was written") from exc
    if "bundled" in model.record:  # re-bundled: keep what the earlier defaults were and why
        model.record.setdefault("bundled_before", []).append(model.record["bundled"])
    model.record["bundled"] = {
        "from_step": iterations_done(model.record),
        "default_sampling_steps": args.default_sampling_steps,
        "sampler_defaults": changes,
        "defaults_chosen_by": args.reason,
    }
    if args.replay_data:
        names = json.loads(Path(args.replay_split).read_text())["train"] if args.replay_split else None
        tiles = load_folder(args.replay_data, names)
        model.replay = make_replay_set(
            tiles, args.replay_mpp, model.config, REPLAY_PATCHES, REPLAY_PATCH_PX, np.random.default_rng(0)
        )
        model.record["replay_set"] = {
            "patches": REPLAY_PATCHES,
            "patch_px": REPLAY_PATCH_PX,
            "seed": 0,
            "from_tiles": [tile.name for tile in tiles],
        }
    model.record = without_machine_paths(model.record)
    save_model(args.out, model)
    size = Path(args.out).stat().st_size
    print(
        f"bundled iteration {iterations_done(model.record)} as {args.out} ({size / 2**20:.1f} MB), "
        + ", ".join(f"{key} = {value}" for key, value in changes.items())
    )


if __name__ == "__main__":
    main()
