"""Seconds per 1000x1000 tile for T in {1, 2, 4} and K in {1, 3, 5}, and per model preset.

    python benchmarks/speed.py [--model PATH] [--repeats 3] [--presets] [--json FILE]

`--presets` also times the untrained generator presets (parameters, seconds per tile at T=4, K=1,
seconds per training step of 4 x 256 x 256), the figures the model size was chosen from.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _common import display_path, machine, table, write_json

from napari_cdal.engine.config import PRESETS, ModelConfig, TrainConfig
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.io.images import read_image
from napari_cdal.engine.method.model import CdalModel, load_model
from napari_cdal.engine.method.networks import count_parameters
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.training.state import TrainState
from napari_cdal.engine.training.step import train_step
from napari_cdal.sample_data import sample_tile_path


def seconds_per_tile(
    model: CdalModel, image: np.ndarray, steps: int, samples: int, repeats: int, maps: bool = False
) -> float:
    """Median wall time of the whole segment path (resampling, sampling, instances) on one tile.

    `maps`: also the step and attention stacks the Segment widget shows (the CLI makes them only
    when asked to save them).
    """
    times = []
    for seed in range(repeats):
        started = time.perf_counter()
        run_to_end(
            segment_image(
                model, image, sampling_steps=steps, samples=samples, seed=seed, keep_steps=maps, with_attention=maps
            )
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def seconds_per_train_step(config: ModelConfig, repeats: int) -> float:
    state = TrainState.create(CdalModel.initialise(config), TrainConfig())
    images = torch.randn(4, 3, 256, 256)
    x0 = torch.sign(torch.randn(4, config.label_channels, 256, 256))
    weights = torch.ones(4, 1, 256, 256)
    train_step(state, images, x0, weights, torch.device("cpu"))
    started = time.perf_counter()
    for _ in range(repeats):
        state.step += 1
        train_step(state, images, x0, weights, torch.device("cpu"))
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presets", action="store_true", help="also time the model presets")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    image = read_image(sample_tile_path())
    model = load_model(args.model)
    rows = [
        {
            "T": t,
            "K": k,
            "s/tile": seconds_per_tile(model, image, t, k, args.repeats),
            "s/tile with maps": seconds_per_tile(model, image, t, k, args.repeats, maps=True),
        }
        for t in args.steps
        for k in args.samples
    ]
    print(
        f"model {display_path(model.source)} on a {image.shape[1]}x{image.shape[0]} tile, "
        f"{torch.get_num_threads()} threads"
    )
    print(table(rows, ["T", "K", "s/tile", "s/tile with maps"]))
    presets = []
    if args.presets:
        for name in ("small", "medium", "large"):
            config = ModelConfig(**PRESETS[name])
            untrained = CdalModel.initialise(config).eval()
            presets.append(
                {
                    "preset": name,
                    "base_width": config.base_width,
                    "channel_mults": str(config.channel_mults),
                    "G params (M)": count_parameters(untrained.generator) / 1e6,
                    "s/tile T4K1": seconds_per_tile(untrained, image, 4, 1, args.repeats),
                    "s/train step": seconds_per_train_step(config, args.repeats),
                }
            )
        print(table(presets, ["preset", "base_width", "channel_mults", "G params (M)", "s/tile T4K1", "s/train step"]))
    write_json(args.json, {"model": display_path(model.source), "machine": machine(), "rows": rows, "presets": presets})


if __name__ == "__main__":
    main()
