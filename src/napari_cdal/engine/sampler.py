"""cDAL's reverse process: the one sampler used by segment, evaluate, the widget and fine-tuning checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

import torch
import torch.nn.functional as F

from .device import autocast
from .events import Progress
from .model import CdalModel
from .schedule import randn_like


@dataclass
class StepOutput:
    """One reverse step on one image: the mean x̂_0 over the K samples and D's attention map."""

    step: int
    level: int
    x0_mean: torch.Tensor
    attention: torch.Tensor | None


@dataclass
class SampleOutput:
    """End of the reverse process: mean probability per label channel and the spread across samples."""

    probability: torch.Tensor
    uncertainty: torch.Tensor


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the bottom and right to multiples of `multiple`; returns the original size."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, (height, width)


@torch.no_grad()
def reverse_process(
    model: CdalModel,
    image: torch.Tensor,
    steps: int | None = None,
    samples: int = 1,
    rng: torch.Generator | None = None,
    with_attention: bool = True,
) -> Generator[Progress, None, None]:
    """Sample label maps for one normalised image (1, C, H, W), yielding each reverse step.

    The image encoder runs once; the K samples go through the generator as one batch, each with
    a fresh latent z at every step. Yields Progress('step', i, steps, StepOutput) per step, then
    Progress('done', steps, steps, SampleOutput). Sizes are padded internally and cropped back.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    config = model.config
    schedule = model.schedule
    steps = config.default_steps if steps is None else steps
    levels = schedule.sampling_levels(steps)
    device = next(model.generator.parameters()).device
    padded, (height, width) = pad_to_multiple(image.to(device), config.size_multiple)
    with autocast(device):
        features = model.generator.encode_image(padded)
    label_shape = (samples, config.label_channels, *padded.shape[-2:])
    x_k = randn_like(torch.empty(label_shape, device=device), rng)
    x0 = x_k
    for i, (k, s) in enumerate(zip(levels[:-1], levels[1:])):
        t = torch.full((samples,), k - 1, device=device, dtype=torch.long)
        z = randn_like(torch.empty(samples, config.latent_dim, device=device), rng)
        with autocast(device):
            x0 = model.generator(x_k, t, features, z).float()
        x_s = schedule.jump_sample(x0, x_k, k, s, rng)
        attention = None
        if with_attention:
            with autocast(device):
                att = model.discriminator.attention(x_s, x_k, t).float()
            attention = att.mean(dim=0)[0, :height, :width]
        yield Progress("step", i, steps, StepOutput(i, k, x0.mean(dim=0)[:, :height, :width], attention))
        x_k = x_s
    probs = ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)[:, :, :height, :width]
    uncertainty = probs[:, 0].std(dim=0, unbiased=False)
    yield Progress("done", steps, steps, SampleOutput(probs.mean(dim=0), uncertainty))
