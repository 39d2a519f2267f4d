"""cDAL's reverse process: the one sampler used by segment, evaluate, the widget and fine-tuning checks."""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from napari_cdal.engine.config import UNCERTAINTY_MEASURES
from napari_cdal.engine.device import autocast
from napari_cdal.engine.events import Progress
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.method.schedule import randn_like


@dataclass
class StepOutput:
    """One reverse step on one image: the mean x̂_0 over the K samples and D's maps of the step.

    `attention` is the map the model shows (its config's attention_display); `attention_maps`
    holds every kind that was asked for, by name.
    """

    step: int
    x0_mean: torch.Tensor
    attention: torch.Tensor | None
    attention_maps: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class SampleOutput:
    """End of the reverse process: mean probability per label channel and the uncertainty maps.

    `uncertainty` is the model's chosen measure (its config's uncertainty_measure); every measure
    of UNCERTAINTY_MEASURES is in `uncertainty_maps`. With one sample they are all zero.
    """

    probability: torch.Tensor
    uncertainty: torch.Tensor
    uncertainty_maps: dict[str, torch.Tensor] = field(default_factory=dict)


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of a Bernoulli(p), 0 at p in {0, 1} and 1 at p = 0.5."""
    q = 1.0 - p
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(q, q)) / math.log(2.0)


def uncertainty_maps(foreground: torch.Tensor, chain: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every uncertainty measure (UNCERTAINTY_MEASURES) from the K samples' foreground probabilities.

    `foreground` is the last step's (K, H, W); `chain` is every step's (T, K, H, W), for the
    `chain_` measures, which treat the x̂_0 of all steps and samples as one ensemble. One sample
    has no spread: all maps are zero then, since nothing says how sure the model is.
    """
    if foreground.shape[0] < 2:
        zero = torch.zeros_like(foreground[0])
        return {name: zero for name in UNCERTAINTY_MEASURES}
    members = foreground if chain is None else chain.flatten(0, 1)
    total = _binary_entropy(foreground.mean(dim=0))
    return {
        "std": foreground.std(dim=0, unbiased=False),
        "entropy": total,
        "mutual_information": (total - _binary_entropy(foreground).mean(dim=0)).clamp_min(0.0),
        "chain_std": members.std(dim=0, unbiased=False),
        "chain_entropy": _binary_entropy(members.mean(dim=0)),
    }


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
    sampling_steps: int | None = None,
    samples: int | None = None,
    rng: torch.Generator | None = None,
    with_attention: bool = True,
    attention_kinds: tuple[str, ...] = (),
    shared_latent: bool = False,
) -> Generator[Progress, None, None]:
    """Sample label maps for one normalised image (1, C, H, W), yielding each reverse step.

    The image encoder runs once; the K samples go through the generator as one batch, each with
    a fresh latent z at every step. With self-conditioning each step also sees the previous
    step's x̂_0; with attention_in_sampling the next level is drawn from A ⊙ x̂_0, as in training.
    Yields Progress('step', i, steps, StepOutput) per step, then Progress('done', steps, steps,
    SampleOutput). `attention_kinds` adds D's other maps (ATTENTION_MAPS) to each step's output.
    `shared_latent` gives all K samples the same z at each step, so that their spread comes from
    the noise alone (to measure how much of it z makes). Sizes are padded internally and
    cropped back.
    """
    config = model.config
    samples = config.default_samples if samples is None else samples
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    schedule = model.schedule
    steps = config.sampling_steps if sampling_steps is None else sampling_steps
    levels = schedule.sampling_levels(steps)
    device = next(model.generator.parameters()).device
    padded, (height, width) = pad_to_multiple(image.to(device), config.size_multiple)
    with autocast(device):
        features = model.generator.encode_image(padded)
    disc_image = padded if config.disc_image else None
    kinds = tuple(dict.fromkeys(((config.attention_display,) if with_attention else ()) + tuple(attention_kinds)))
    label_shape = (samples, config.label_channels, *padded.shape[-2:])
    x_k = randn_like(torch.empty(label_shape, device=device), rng)
    x0 = torch.zeros_like(x_k)
    chain = []
    for i, (k, s) in enumerate(zip(levels[:-1], levels[1:], strict=True)):
        t = torch.full((samples,), k - 1, device=device, dtype=torch.long)
        z = randn_like(torch.empty(1 if shared_latent else samples, config.latent_dim, device=device), rng)
        z = z.expand(samples, -1)
        with autocast(device):
            x0 = model.generator(x_k, t, features, z, x0).float()
        chain.append(((x0[:, 0, :height, :width] + 1.0) / 2.0).clamp(0.0, 1.0))
        x_s = schedule.jump_sample(x0, x_k, k, s, rng, config.sampling_noise)
        if config.attention_in_sampling and s > 0:
            with autocast(device):
                gate = model.discriminator.attention(x_s, x_k, t, disc_image).float()
            c1 = schedule.jump_coefficients(k, s, config.sampling_noise)[0]
            x_s = x_s - c1 * (1.0 - gate) * x0
        maps = {}
        for kind in kinds:
            with autocast(device):
                found = model.discriminator.suspicion(kind, x_s, x_k, t, disc_image).float()
            maps[kind] = found.mean(dim=0)[0, :height, :width]
        attention = maps.get(config.attention_display) if with_attention else None
        yield Progress("step", i, steps, StepOutput(i, x0.mean(dim=0)[:, :height, :width], attention, maps))
        x_k = x_s
    probs = ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)[:, :, :height, :width]
    measures = uncertainty_maps(probs[:, 0], torch.stack(chain))
    yield Progress("done", steps, steps,
                   SampleOutput(probs.mean(dim=0), measures[config.uncertainty_measure], measures))
