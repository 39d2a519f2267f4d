"""Train the tiny cDAL model the tests use and store it in tests/data (no downloads).

    python tools/build_tiny_model.py [--out tests/data/tiny_blobs.safetensors]

The tests load the stored checkpoint instead of training it (150 steps took minutes on a busy
machine). Its record keeps every step's losses, so tests/test_tiny_model.py can re-run the first
steps and tell whether this script still makes the stored model; when the training code or the
networks change, that test or the strict load of the checkpoint fails: then run this script again.
One torch thread and fixed seeds, so the numbers repeat.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
import torch
from skimage.draw import disk

from napari_cdal.engine.config import PRESETS, ModelConfig, TrainConfig, iterations_done
from napari_cdal.engine.data.patches import PatchSampler
from napari_cdal.engine.data.tiles import Tile
from napari_cdal.engine.events import Progress
from napari_cdal.engine.io.checkpoint import CheckpointError
from napari_cdal.engine.method.model import CdalModel, load_model, save_model
from napari_cdal.engine.training.loop import training_loop
from napari_cdal.engine.training.state import TrainState
from napari_cdal.engine.training.step import encode_targets

TINY = ModelConfig(**PRESETS["tiny"])
STEPS = 150
SEED = 0
TRAIN_TILE_SEEDS = (1, 2)
SCRIPT = "tools/build_tiny_model.py"
STORED = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny_blobs.safetensors"
REBUILD = f"rebuild it with `python {SCRIPT}`"


def tiny_train_config(steps: int = STEPS, seed: int = SEED) -> TrainConfig:
    """The training settings of the stored tiny model (tests may vary `steps` and `seed`)."""
    return TrainConfig(
        iterations=steps,
        batch_size=4,
        patch_size=64,
        warmup_steps=10,
        lr_g=2e-3,
        lr_d=1e-3,
        ema_decay=0.9,
        checkpoint_every=10_000,
        validate_every=10_000,
        seed=seed,
    )


def blob_tile(seed: int, size: int = 128, count: int = 25, name: str = "blobs") -> Tile:
    """A synthetic 'H&E' tile: purple discs (nuclei) on pink noise, with exact instance truth."""
    rng = np.random.default_rng(seed)
    instances = np.zeros((size, size), np.uint32)
    for k in range(1, count + 1):
        r, c = rng.integers(6, size - 6, 2)
        rr, cc = disk((r, c), int(rng.integers(3, 6)), shape=instances.shape)
        instances[rr, cc] = k
    image = np.empty((size, size, 3), np.float32)
    image[:] = (225, 180, 210)
    image[instances > 0] = (90, 50, 130)
    image += rng.normal(0, 12, image.shape)
    return Tile(name, np.clip(image, 0, 255).astype(np.uint8), instances > 0, instances, True, None)


def start_tiny(steps: int = STEPS, seed: int = SEED) -> tuple[TrainState, Generator[Progress, None, None]]:
    """A fresh training state of the tiny config and the loop that trains it on the blob tiles."""
    cfg = tiny_train_config(steps, seed)
    state = TrainState.create(CdalModel.initialise(TINY, seed), cfg)
    sampler = PatchSampler(
        [blob_tile(s) for s in TRAIN_TILE_SEEDS], cfg.patch_size, lambda inst: encode_targets(inst, TINY), state.np_rng
    )
    return state, training_loop(state, sampler.sample, torch.device("cpu"))


def train_tiny(
    steps: int = STEPS, seed: int = SEED, step_losses: list[dict[str, float]] | None = None
) -> tuple[CdalModel, TrainState]:
    """Train the tiny config on the blob tiles; `step_losses` gets each step's losses."""
    state, events = start_tiny(steps, seed)
    for event in events:
        if event.stage == "train" and step_losses is not None:
            step_losses.append(dict(event.payload))
    return state.exported_model(), state


def first_step_losses(count: int) -> list[dict[str, float]]:
    """The losses of the first `count` steps of the stored model's run (its settings, cut short)."""
    _, events = start_tiny()
    losses: list[dict[str, float]] = []
    for event in events:
        if event.stage == "train":
            losses.append(dict(event.payload))
        if len(losses) == count:
            break
    events.close()
    return losses


def load_tiny(path: Path = STORED) -> CdalModel:
    """The stored tiny model, loaded strictly; a file that no longer fits says to rebuild it."""
    try:
        model = load_model(path)
    except (CheckpointError, OSError) as exc:
        raise CheckpointError(f"{exc}; {REBUILD}") from exc
    if model.config != TINY:
        raise CheckpointError(f"{path} holds another config than the 'tiny' preset; {REBUILD}")
    return model


def build(out: Path = STORED) -> CdalModel:
    """Train the tiny model on one torch thread and write it, every step's losses in its record."""
    torch.set_num_threads(1)
    step_losses: list[dict[str, float]] = []
    model, _ = train_tiny(step_losses=step_losses)
    model.record["step_losses"] = step_losses
    model.record["built_by"] = {
        "script": SCRIPT,
        "torch": torch.__version__,
        "torch_threads": 1,
        "train_tile_seeds": list(TRAIN_TILE_SEEDS),
    }
    save_model(out, model)
    return model


def main() -> None:
    """Build the stored tiny model from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=STORED, help="where to write the checkpoint")
    args = parser.parse_args()
    started = time.perf_counter()
    model = build(args.out)
    last = model.record["history"][-1]
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) after "
        f"{iterations_done(model.record)} iterations in {time.perf_counter() - started:.1f} s; "
        f"last step mse {last['mse']:.4f}, dice {last['dice']:.4f}"
    )


if __name__ == "__main__":
    main()
