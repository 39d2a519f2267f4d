"""Train the pixel discriminator on frozen G's own sampled estimates, so its map finds the mask's errors.

On its training tiles G (the generator network) errs less, and differently, than on tissue it has not seen. So D
is shown G's estimates on training patches made unlike what G fitted (half of them degraded as a
scanner or a lab degrades a slide: blur, noise, gamma, contrast, strong stain jitter), sampled
exactly as segmenting samples them (`reverse_process` with keep_pairs). A fake pair's pixel is fake
where G's estimate is wrong (`pixel_targets`, GCT's flaw detector); a real pair (the truth, drawn
as the step would have drawn it) is real everywhere; CutMix pastes real into fake (U-Net GAN).
G is left as it was, so the masks, Dice and AJI do not change.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.data.augment import degrade_cf
from napari_cdal.engine.data.patches import PatchSampler
from napari_cdal.engine.data.tiles import Tile
from napari_cdal.engine.events import TICK, Progress
from napari_cdal.engine.method.intensity import normalise
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.method.pixel_disc import PixelDiscriminator, pixel_targets
from napari_cdal.engine.method.sampler import reverse_process
from napari_cdal.engine.method.schedule import VPSchedule
from napari_cdal.engine.training.step import cutmix_boxes, encode_targets

OUTLINE_PX = 2
"""The band round each true outline (model pixels, 1 µm) whose errors weigh border_weight."""

MAX_ERROR_WEIGHT = 20.0
"""The most a wrong pixel weighs against a right one when errors are balanced (a nearly right patch)."""

ERROR_DISC_CHANGES: dict[str, Any] = {
    "disc_kind": "pixel",
    "disc_image": True,
    "attention_display": "error_probability",
}
"""The config keys a model's discriminator takes when it becomes the error-finding pixel D."""


@dataclass(frozen=True)
class ErrorDiscSettings:
    """How the pixel D is trained: the pool of G's estimates it learns from, then its own iterations."""

    iterations: int = 1500
    pool_batches: int = 60
    pool_batch_size: int = 6
    patch_size: int = 256
    crop_size: int = 128
    batch_size: int = 8
    lr: float = 1e-3
    degraded_share: float = 0.5
    hed_strength: float = 0.05
    border_weight: float = 0.1
    """Weight of the pixels within OUTLINE_PX of a true outline: most disagreements there are the annotators'
    convention, and a D that learns them paints rings round every nucleus instead of the nuclei it doubts."""
    balance_errors: bool = True
    """Weigh the few wrong pixels of a fake pair up to as much as its right ones (at most MAX_ERROR_WEIGHT each)."""
    seed: int = 0


@dataclass
class PairPool:
    """G's sampled pairs on training patches, kept in float16: per patch the image, the truth and every step."""

    images: torch.Tensor
    truths: torch.Tensor
    steps: list[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]]
    """Per reverse step: its noise levels k and s, then x_s, x_k and G's estimate, each (N, K, C, P, P)."""


def error_disc_config(config: ModelConfig) -> ModelConfig:
    """The config of a model whose discriminator is the pixel D, its G unchanged."""
    return dataclasses.replace(config, **ERROR_DISC_CHANGES)


def sample_pool(
    model: CdalModel, tiles: list[Tile], settings: ErrorDiscSettings
) -> Generator[Progress, None, PairPool]:
    """Segment augmented training patches with the frozen G as sampling does; yields ('pool', i, n) per batch."""
    config = model.config
    rng = np.random.default_rng(settings.seed)
    torch_rng = torch.Generator().manual_seed(settings.seed)
    sampler = PatchSampler(
        tiles,
        settings.patch_size,
        lambda inst: encode_targets(inst, config),
        rng,
        augment=True,
        hed_strength=settings.hed_strength,
    )
    images, truths, steps = [], [], []
    device = next(model.generator.parameters()).device
    for batch in range(settings.pool_batches):
        pixels, targets, _ = sampler.sample(settings.pool_batch_size)
        degraded = rng.random(len(pixels)) < settings.degraded_share
        for i in np.flatnonzero(degraded):
            pixels[i] = degrade_cf(pixels[i], rng)
        pairs = []
        for event in reverse_process(
            model, normalise(pixels, config).to(device), rng=torch_rng, with_attention=False, keep_pairs=True
        ):
            if event.stage == "step":
                pairs.append(event.payload.pair)
            yield Progress(TICK, batch, settings.pool_batches)
        images.append(torch.from_numpy(pixels).to(torch.uint8))
        truths.append(torch.from_numpy(targets).to(torch.int8))
        steps.append([(p.k, p.s, *(grouped(v, len(pixels)) for v in (p.x_s, p.x_k, p.estimate))) for p in pairs])
        yield Progress("pool", batch + 1, settings.pool_batches)
    joined = [
        (*per_step[0][:2], *(torch.cat([step[j] for step in per_step]) for j in (2, 3, 4)))
        for per_step in zip(*steps, strict=True)
    ]
    return PairPool(torch.cat(images), torch.cat(truths), joined)


def grouped(values: torch.Tensor, patches: int) -> torch.Tensor:
    """(patches * K, ...) sampler output -> (patches, K, ...) float16 on the CPU, for the pool."""
    return values.cpu().half().reshape(patches, -1, *values.shape[1:])


def _outline(truth: torch.Tensor) -> torch.Tensor:
    """1 on pixels within OUTLINE_PX of a true outline, else 0 (B, 1, H, W)."""
    foreground = (truth[:, :1] > 0).float()
    size = 2 * OUTLINE_PX + 1
    return F.max_pool2d(foreground, size, 1, OUTLINE_PX) + F.max_pool2d(-foreground, size, 1, OUTLINE_PX)


def loss_weights(target: torch.Tensor, truth: torch.Tensor, settings: ErrorDiscSettings) -> torch.Tensor:
    """Per-pixel weights of D's loss on a fake pair: true outlines by border_weight, wrong pixels balanced."""
    weight = 1.0 + (settings.border_weight - 1.0) * _outline(truth)
    if settings.balance_errors:
        wrong = 1.0 - target
        ratio = (target.sum() / wrong.sum().clamp_min(1.0)).clamp(1.0, MAX_ERROR_WEIGHT)
        weight = weight * (1.0 + (ratio - 1.0) * wrong)
    return weight


def _draw_batch(
    pool: PairPool,
    config: ModelConfig,
    settings: ErrorDiscSettings,
    schedule: VPSchedule,
    rng: np.random.Generator,
    torch_rng: torch.Generator,
) -> tuple[torch.Tensor, ...]:
    """A batch of crops: the image, the truth, the fake pair's x_s and x_k, its estimate, the real x_s, t."""
    n, samples = pool.steps[0][2].shape[:2]
    crop, size = settings.crop_size, pool.images.shape[-1]
    rows = []
    for _ in range(settings.batch_size):
        patch, sample, step = int(rng.integers(n)), int(rng.integers(samples)), int(rng.integers(len(pool.steps)))
        y, x = (int(v) for v in rng.integers(0, size - crop + 1, 2))
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        k, s, x_s, x_k, estimate = pool.steps[step]

        def view(values: torch.Tensor, turns: int = turns, flip: bool = flip, y: int = y, x: int = x) -> torch.Tensor:
            values = torch.rot90(values[..., y : y + crop, x : x + crop].float(), turns, (-2, -1))
            return values.flip(-1) if flip else values

        truth, fake_next = view(pool.truths[patch]), view(x_k[patch, sample])
        # the truth as this step would have drawn it from the same x_k: q(x_s | x_k, x_0), itself at s = 0
        real = schedule.jump_sample(truth[None], fake_next[None], k, s, torch_rng, config.sampling_noise)[0]
        rows.append(
            (
                view(pool.images[patch]),
                truth,
                view(x_s[patch, sample]),
                fake_next,
                view(estimate[patch, sample]),
                real,
                torch.tensor(k - 1),
            )
        )
    image, *rest = (torch.stack(column) for column in zip(*rows, strict=True))
    return (normalise(image, config), *rest)


def train_error_discriminator(
    model: CdalModel, tiles: list[Tile], settings: ErrorDiscSettings | None = None
) -> Generator[Progress, None, None]:
    """Train a pixel D for `model`'s frozen G on `tiles` (on the model's grid).

    Yields ('pool', i, n) while G segments the pool, ('train', i, n, losses) per iteration, ticks in
    between, then ('done', n, n, model) with a new CdalModel: the same G, the pixel D, and
    the config's attention display its error probability.
    """
    settings = settings or ErrorDiscSettings()
    started = time.perf_counter()
    model.eval()
    pool = yield from sample_pool(model, tiles, settings)
    config = error_disc_config(model.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        disc = PixelDiscriminator(config)
    device = next(model.generator.parameters()).device
    disc.to(device).train()
    optimiser = torch.optim.Adam(disc.parameters(), lr=settings.lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(settings.seed + 1)
    torch_rng = torch.Generator().manual_seed(settings.seed + 1)
    schedule = model.schedule
    for iteration in range(settings.iterations):
        for group in optimiser.param_groups:
            group["lr"] = settings.lr * 0.5 * (1.0 + math.cos(math.pi * iteration / settings.iterations))
        image, truth, fake, x_next, estimate, real, t = (
            v.to(device) for v in _draw_batch(pool, config, settings, schedule, rng, torch_rng)
        )
        target = pixel_targets(estimate, truth)
        weight = loss_weights(target, truth, settings)
        box = cutmix_boxes(len(t), truth.shape[-2:], torch_rng).to(device)
        mixed = box * real + (1.0 - box) * fake
        loss_fake = F.binary_cross_entropy_with_logits(disc.score_map(fake, x_next, t, image), target, weight=weight)
        logits_real = disc.score_map(real, x_next, t, image)
        loss_real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
        loss_mix = F.binary_cross_entropy_with_logits(
            disc.score_map(mixed, x_next, t, image), box + (1.0 - box) * target, weight=weight
        )
        loss = loss_fake + 0.5 * (loss_real + loss_mix)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        yield Progress(
            "train",
            iteration + 1,
            settings.iterations,
            {"fake": loss_fake.item(), "real": loss_real.item(), "cutmix": loss_mix.item()},
        )
    disc.eval()
    trained = CdalModel(config, model.generator, disc, dict(model.record), model.source, model.replay)
    trained.record["error_discriminator"] = {
        **dataclasses.asdict(settings),
        "patches": int(pool.images.shape[0]),
        "tiles": [tile.name for tile in tiles],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    yield Progress("done", settings.iterations, settings.iterations, trained)
