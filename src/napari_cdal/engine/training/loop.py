"""The training loop shared by train and fine-tune: steps, hooks for checkpoints and validation."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

import numpy as np
import torch

from napari_cdal.engine.events import Progress
from napari_cdal.engine.method.intensity import normalise
from napari_cdal.engine.training.state import TrainState
from napari_cdal.engine.training.step import train_step

BatchSource = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""Draws a batch: (images, targets, weights) as numpy arrays for a batch size."""


def training_loop(
    state: TrainState,
    sample_batch: BatchSource,
    device: torch.device,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    on_validate: Callable[[TrainState], Generator[Progress, None, None]] | None = None,
) -> Generator[Progress, None, None]:
    """Run steps until train_config.iterations, yielding Progress('train', step, total, losses).

    Hooks: `on_checkpoint` every checkpoint_every steps and at the end; `on_validate` (itself a
    generator of events) every validate_every steps and at the end. Closing the generator at a
    'train' event stops between steps; a run with a cancel token (events.stop_on_cancel) stops
    inside one too, and that step is half-done, so its state is to be dropped (fine-tuning drops it
    all); the caller decides.
    """
    cfg = state.train_config
    config = state.model.config
    state.model.generator.train()
    state.model.discriminator.train()
    while state.step < cfg.iterations:
        started = time.perf_counter()
        images, targets, weights = sample_batch(cfg.batch_size)
        losses = train_step(
            state,
            normalise(torch.from_numpy(images), config).to(device),
            torch.from_numpy(targets).to(device),
            torch.from_numpy(weights).to(device),
            device,
        )
        state.step += 1
        state.record["wall_seconds"] = state.record.get("wall_seconds", 0.0) + time.perf_counter() - started
        if state.step == 1 or state.step % 50 == 0 or state.step == cfg.iterations:
            state.record["history"].append({"step": state.step, **{k: round(v, 5) for k, v in losses.items()}})
        yield Progress("train", state.step, cfg.iterations, losses)
        last = state.step == cfg.iterations
        if on_validate is not None and (state.step % cfg.validate_every == 0 or last):
            yield from on_validate(state)
        if on_checkpoint is not None and (state.step % cfg.checkpoint_every == 0 or last):
            on_checkpoint(state)
    state.model.generator.eval()
    state.model.discriminator.eval()
    yield Progress("done", state.step, cfg.iterations, state)
