"""cDAL's reverse process: the one sampler used by segment, evaluate, the widget and fine-tuning checks."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from napari_cdal.engine.config import UNCERTAINTY_MEASURES, ModelConfig
from napari_cdal.engine.device import autocast
from napari_cdal.engine.events import Progress, then_tick
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.method.runtime import Runtime
from napari_cdal.engine.method.schedule import randn_like
from napari_cdal.engine.method.symmetry import apply_views, member_views


@dataclass
class StepOutput:
    """One reverse step on a batch of B images: the mean x̂_0 over the K samples, the chain, and D's maps.

    `x0_mean` is (B, C, H, W); `attention` (B, H, W) is the map the model shows (its config's
    attention_display); `attention_maps` holds every kind that was asked for, by name. The chain
    as sampled, on the label scale [-1, 1] and averaged over the K samples like x̂_0: `x_from_mean`
    is the x_k the step started from (x_T, the drawn noise, at the first step), `x_to_mean` the x_s
    it drew (x_0 at the last step), both (B, C, H, W).
    """

    step: int
    x0_mean: torch.Tensor
    attention: torch.Tensor | None
    x_from_mean: torch.Tensor
    x_to_mean: torch.Tensor
    attention_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    pair: SampledPair | None = None


@dataclass
class SampledPair:
    """What D judges at one reverse step from noise level k to s, for every sample (B*K, C, H, W, cropped):
    the pair it is shown, x_s and x_k (at step index t = k - 1), and G's estimate x̂_0 that made x_s."""

    x_s: torch.Tensor
    x_k: torch.Tensor
    k: int
    s: int
    estimate: torch.Tensor


@dataclass
class SampleOutput:
    """End of the reverse process: mean probability per label channel and the uncertainty maps.

    `probability` is (B, C, H, W); `uncertainty` (B, H, W) is the model's chosen measure (its
    config's uncertainty_measure); `uncertainty_maps` holds every measure asked for (all of
    UNCERTAINTY_MEASURES unless reverse_process was given fewer). With one sample they are all zero.
    """

    probability: torch.Tensor
    uncertainty: torch.Tensor
    uncertainty_maps: dict[str, torch.Tensor] = field(default_factory=dict)


def foreground_of(probability: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """(..., C, H, W) label probabilities -> (..., H, W): the nucleus mask, or anything but background."""
    if config.is_multiclass:
        return 1.0 - probability[..., 0, :, :]
    return probability[..., 0, :, :]


def unit_foreground(labels: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """(..., C, H, W) on the label scale [-1, 1] -> (..., H, W) foreground on [0, 1], clamped: what the stacks show."""
    return foreground_of(((labels + 1.0) / 2.0).clamp(0.0, 1.0), config)


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of a Bernoulli(p), 0 at p in {0, 1} and 1 at p = 0.5."""
    q = 1.0 - p
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(q, q)) / math.log(2.0)


def uncertainty_maps(
    foreground: torch.Tensor, chain: torch.Tensor | None = None, measures: tuple[str, ...] = UNCERTAINTY_MEASURES
) -> dict[str, torch.Tensor]:
    """The uncertainty `measures` (default: every one of UNCERTAINTY_MEASURES) from the K samples' foregrounds.

    `foreground` is the last step's (K, ...); `chain` is every step's (T, K, ...), for the
    `chain_` measures, which treat the x̂_0 of all steps and samples as one ensemble. One sample
    has no spread: all maps are zero then, since nothing says how sure the model is. Only the
    measures asked for are computed (a tile's run needs one).
    """
    if foreground.shape[0] < 2:
        zero = torch.zeros_like(foreground[0])
        return {name: zero for name in measures}
    members = foreground if chain is None else chain.flatten(0, 1)
    total = functools.cache(lambda: _binary_entropy(foreground.mean(dim=0)))  # entropy and mutual information's
    makers: dict[str, Callable[[], torch.Tensor]] = {
        "std": lambda: foreground.std(dim=0, unbiased=False),
        "entropy": total,
        "mutual_information": lambda: (total() - _binary_entropy(foreground).mean(dim=0)).clamp_min(0.0),
        "chain_std": lambda: members.std(dim=0, unbiased=False),
        "chain_entropy": lambda: _binary_entropy(members.mean(dim=0)),
    }
    return {name: makers[name]() for name in measures}


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
    keep_pairs: bool = False,
    measures: tuple[str, ...] | None = None,
    augment: bool = False,
) -> Generator[Progress, None, None]:
    """Sample label maps for a batch of normalised images (B, C, H, W), yielding each reverse step.

    The image encoder runs once; the K samples of all B images go through G as one
    batch, each with a fresh latent z at every step. With self-conditioning each step also sees
    the previous step's x̂_0; with attention_in_sampling the next level is drawn from A ⊙ x̂_0, as
    in training. Yields Progress('step', i, steps, StepOutput) per step (with the chain's x_k and
    x_s, so x_T and every level visited can be shown), then Progress('done',
    steps, steps, SampleOutput), every map with the batch first; between them Progress('tick', i,
    steps) after every pass of G and D, where a consumer may close the generator (a run with a cancel
    token stops inside a pass too: events.stop_on_cancel). Ticks change no result.
    `attention_kinds` adds D's other maps (DISC_KINDS of its kind) to each step's output. `shared_latent`
    gives the K samples of an image the same z at each step, so that their spread comes from the
    noise alone (to measure how much of it z makes). `keep_pairs` puts each step's SampledPair in its
    StepOutput: D learns from exactly what sampling shows it. `measures` names the uncertainty maps to compute
    (default: every one; the model's own measure always). With `augment` sample k sees each image in view k
    (symmetry.VIEWS: flipped or turned) and its maps are turned back before anything leaves. G runs on the
    model's runtime (runtime.with_runtime), torch by default. Sizes are padded internally and cropped back.
    """
    config = model.config
    samples = config.default_samples if samples is None else samples
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    schedule = model.schedule
    steps = config.sampling_steps if sampling_steps is None else sampling_steps
    levels = schedule.sampling_levels(steps)
    device = next(model.generator.parameters()).device
    runtime = model.runtime or Runtime(model, "auto")
    in_autocast = functools.partial(autocast, device, runtime.torch_precision)  # around each pass of D
    padded, (height, width) = pad_to_multiple(image.to(device), config.size_multiple)
    batch = padded.shape[0]
    members = batch * samples
    views = member_views(members, samples, *padded.shape[-2:]) if augment else [0] * members
    one_per_member = any(views)  # each member sees its own view of its image
    if one_per_member:
        padded = apply_views(padded.repeat_interleave(samples, dim=0), views)
    with in_autocast():
        features = model.generator.encode_image(padded)
    if batch > 1 and not one_per_member:
        features = features.repeat_interleave(samples, dim=0)
    disc_image = None
    if config.disc_image:
        disc_image = padded.repeat_interleave(samples, dim=0) if batch > 1 and not one_per_member else padded
    kinds = tuple(dict.fromkeys(((config.attention_display,) if with_attention else ()) + tuple(attention_kinds)))
    label_shape = (members, config.label_channels, *padded.shape[-2:])
    x_k = randn_like(torch.empty(label_shape, device=device), rng)
    x0 = torch.zeros_like(x_k)

    def on_image(values: torch.Tensor) -> torch.Tensor:
        """(B*K, ...) in each member's view -> on the image's own grid, cropped back to the input size."""
        return apply_views(values, views, inverse=True)[..., :height, :width]

    def per_image(values: torch.Tensor) -> torch.Tensor:
        """(B*K, ...) -> (K, B, ...), on the image's grid and cropped back to the input size."""
        values = on_image(values)
        return values.reshape(batch, samples, *values.shape[1:]).transpose(0, 1)

    chain = []
    for i, (k, s) in enumerate(zip(levels[:-1], levels[1:], strict=True)):
        t = torch.full((members,), k - 1, device=device, dtype=torch.long)
        z = randn_like(torch.empty(batch if shared_latent else members, config.latent_dim, device=device), rng)
        if shared_latent:
            z = z.repeat_interleave(samples, dim=0)
        x0 = yield from then_tick(functools.partial(runtime.generator_pass, x_k, t, features, z, x0), i, steps)
        chain.append(foreground_of(per_image(((x0 + 1.0) / 2.0).clamp(0.0, 1.0)), config))
        x_s = schedule.jump_sample(x0, x_k, k, s, rng, config.sampling_noise)
        if config.attention_in_sampling and s > 0:
            gate = (
                yield from then_tick(
                    functools.partial(model.discriminator.attention, x_s, x_k, t, disc_image), i, steps, in_autocast
                )
            ).float()
            c1 = schedule.jump_coefficients(k, s, config.sampling_noise)[0]
            x_s = x_s - c1 * (1.0 - gate) * x0
        maps = {}
        for kind in kinds:
            found = (
                yield from then_tick(
                    functools.partial(model.discriminator.suspicion, kind, x_s, x_k, t, disc_image),
                    i,
                    steps,
                    in_autocast,
                )
            ).float()
            maps[kind] = per_image(found).mean(dim=0)[:, 0]
        attention = maps.get(config.attention_display) if with_attention else None
        pair = None
        if keep_pairs:
            pair = SampledPair(on_image(x_s), on_image(x_k), k, s, on_image(x0))
        yield Progress(
            "step",
            i,
            steps,
            StepOutput(
                i,
                per_image(x0).mean(dim=0),
                attention,
                x_from_mean=per_image(x_k).mean(dim=0),
                x_to_mean=per_image(x_s).mean(dim=0),
                attention_maps=maps,
                pair=pair,
            ),
        )
        x_k = x_s
    probs = per_image(((x0 + 1.0) / 2.0).clamp(0.0, 1.0))
    wanted = UNCERTAINTY_MEASURES if measures is None else tuple(dict.fromkeys((config.uncertainty_measure, *measures)))
    maps = uncertainty_maps(foreground_of(probs, config), torch.stack(chain), wanted)
    yield Progress("done", steps, steps, SampleOutput(probs.mean(dim=0), maps[config.uncertainty_measure], maps))
