"""What a config may hold: the names each choice takes, the range of each number, and the checks naming the key."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_cdal.engine.config import ModelConfig, TrainConfig

SEED_RANGE = (0, 2**64 - 1)
"""The seeds a run takes: what torch's and numpy's generators accept (64 bits, not negative)."""

MAX_COUNT = 2**31 - 1
"""The largest count an option or setting may give (iterations, batch size, review items...): a C int."""

ATTENTION_MAPS = ("channel_mean", "score_map", "score_gradient", "error_probability")
"""What the attention layer can show: cDAL's channel mean of D's middle block; D's score per place
(its linear head applied before the spatial mean; minus the logit per pixel for the pixel D); the
size of the gradient of D's realism loss with respect to the mask (where D would change the mask);
the pixel D's belief that the mask is wrong at each pixel."""

DISC_KINDS = {
    "trunk": ("channel_mean", "score_map", "score_gradient"),
    "pixel": ("error_probability", "score_map"),
}
"""The discriminator's layouts and the attention maps each can give: cDAL's convolutional trunk with
one score per pair (`networks.Discriminator`), or an encoder-decoder with a real/fake logit per pixel
that also sees the image, trained to find where the mask is wrong (`pixel_disc.PixelDiscriminator`)."""

UNCERTAINTY_MEASURES = ("std", "entropy", "mutual_information", "chain_std", "chain_entropy")
"""Per-pixel uncertainty from the K samples: the spread of their foreground probabilities, the
binary entropy of their mean (total predictive uncertainty), or that entropy less the samples'
mean entropy (their disagreement); the chain_ measures take the x̂_0 of every step of the chain
and every sample as one ensemble."""

LABEL_ENCODINGS = {
    "foreground": ("foreground",),
    "foreground_core": ("foreground", "core"),
    "foreground_core_distance": ("foreground", "core", "distance"),
    "classes": (),
}
"""What the label channels of G (the generator network) mean: a nucleus mask (and its cores, the watershed's
markers, and each pixel's distance to its nucleus's border over the largest, where to split), or one-hot classes
(`class_names`, background first) whose argmax is the label."""


MAX_LEVELS = 8
"""The most U-Net or discriminator levels a model may have (each halves the image; 8 halve it 256 times)."""

MAX_CHANNEL_MULT = 32
"""The largest width multiplier of a U-Net level."""

MAX_DEFAULT_SAMPLES = 256
"""The most samples (K) a model may ask for by default; the bundled models ask for 2 to 8."""

MAX_BETA = 1000.0
"""The largest noise rate beta of the schedule (VP-SDE papers use 0.1 to 20)."""

MAX_MODEL_MPP = 10_000.0
"""The coarsest µm per pixel of a model's grid (the volume models' 1000 stands for "the volume's own voxels")."""

MAX_CLASSES = 256
"""The most classes a model of classes may name (its labels are written as uint8)."""

MODEL_INTEGER_BOUNDS: dict[str, tuple[int, int]] = {
    "image_channels": (1, 64),
    "base_width": (1, 512),
    "blocks_per_level": (1, 16),
    "encoder_blocks": (0, 16),
    "time_dim": (2, 4096),
    "latent_dim": (1, 4096),
    "latent_width": (1, 4096),
    "latent_layers": (1, 32),
    "norm_groups": (1, 512),
    "disc_width": (1, 512),
    "disc_levels": (1, MAX_LEVELS),
    "disc_attention_level": (1, MAX_LEVELS),
    "diffusion_steps": (1, 1000),
    "context_slices": (0, 16),
    "slice_axis": (0, 2),
    "model_side": (0, 16_384),
}
"""Each integer setting of a model and the range it must lie in, checked whenever a config is made (a model file's
too), so a file cannot claim 10^9 diffusion steps or widths no memory holds: T of 1000 is DDPM's, cDAL's is 4."""


def check_integer(config: Any, name: str, least: int, most: int = MAX_COUNT) -> None:
    """Raise a ValueError naming the key unless the field is an integer from `least` to `most`."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{type(config).__name__}.{name} must be an integer >= {least}, got {value!r}")
    if value > most:
        raise ValueError(f"{type(config).__name__}.{name} must be an integer from {least} to {most}, got {value!r}")


def check_number(
    config: Any, name: str, low: float, high: float | None, low_open: bool = False, high_open: bool = False
) -> None:
    """Raise a ValueError naming the key unless the field is a finite number in the given range."""
    value = getattr(config, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        upper = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        span = f"{'(' if low_open else '['}{low:g}, {upper}"
        raise ValueError(f"{type(config).__name__}.{name} must be a number in {span}, got {value!r}")


def check_model_config(config: ModelConfig) -> None:
    """Raise a ValueError naming the key and its range unless every ModelConfig setting is one it may take."""
    for name, (low, high) in MODEL_INTEGER_BOUNDS.items():
        check_integer(config, name, low, high)
    check_integer(config, "default_samples", 1, MAX_DEFAULT_SAMPLES)
    if not (isinstance(config.channel_mults, tuple) and 1 <= len(config.channel_mults) <= MAX_LEVELS):
        raise ValueError(
            f"ModelConfig.channel_mults must be 1 to {MAX_LEVELS} integers (one per U-Net level), "
            f"got {config.channel_mults!r}"
        )
    for mult in config.channel_mults:
        if isinstance(mult, bool) or not isinstance(mult, int) or not 1 <= mult <= MAX_CHANNEL_MULT:
            raise ValueError(
                f"ModelConfig.channel_mults must hold integers from 1 to {MAX_CHANNEL_MULT}, "
                f"got {config.channel_mults!r}"
            )
    for name in ("beta_min", "beta_max"):
        check_number(config, name, 0.0, MAX_BETA, low_open=True)
    if not config.beta_min < config.beta_max:
        raise ValueError(f"ModelConfig.beta_min must be below beta_max, got {config.beta_min} and {config.beta_max}")
    check_number(config, "model_mpp", 0.0, MAX_MODEL_MPP, low_open=True)
    for name in ("image_mean", "image_std"):
        values = getattr(config, name)
        if not all(
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and (name == "image_mean" or v > 0)
            for v in values
        ):
            raise ValueError(
                f"ModelConfig.{name} must hold finite numbers{' above 0' * (name == 'image_std')}, got {values!r}"
            )
    if len(config.class_names) > MAX_CLASSES or not all(isinstance(n, str) for n in config.class_names):
        raise ValueError(f"ModelConfig.class_names must be at most {MAX_CLASSES} names, got {config.class_names!r}")
    if config.label_encoding == "classes" and len(config.class_names) < 2:
        raise ValueError("label_encoding 'classes' needs class_names, at least two, background first")
    if config.label_encoding != "classes" and config.class_names:
        raise ValueError("class_names belong to label_encoding 'classes'")
    if config.intensity_percentiles and not (
        len(config.intensity_percentiles) == 2
        and 0.0 <= config.intensity_percentiles[0] < config.intensity_percentiles[1] <= 100.0
    ):
        raise ValueError(
            f"intensity_percentiles must be two numbers 0 <= low < high <= 100, got {config.intensity_percentiles!r}"
        )
    if config.context_slices and config.image_channels != 1 + 2 * config.context_slices:
        raise ValueError(
            f"context_slices {config.context_slices} needs image_channels "
            f"{1 + 2 * config.context_slices} (the slice and its neighbours), got {config.image_channels}"
        )
    if config.label_encoding not in LABEL_ENCODINGS:
        raise ValueError(f"label_encoding must be one of {sorted(LABEL_ENCODINGS)}, got {config.label_encoding!r}")
    if len(config.image_mean) != config.image_channels or len(config.image_std) != config.image_channels:
        raise ValueError(
            f"image_mean and image_std need one value per image channel (image_channels "
            f"{config.image_channels}), got {len(config.image_mean)} and {len(config.image_std)}"
        )
    if not 1 <= config.disc_attention_level <= config.disc_levels:
        raise ValueError("disc_attention_level must lie in 1..disc_levels")
    if (
        isinstance(config.default_sampling_steps, bool)
        or not isinstance(config.default_sampling_steps, int)
        or not 0 <= config.default_sampling_steps <= config.diffusion_steps
    ):
        raise ValueError(
            f"default_sampling_steps must lie in 0..diffusion_steps ({config.diffusion_steps}), "
            f"got {config.default_sampling_steps}"
        )
    if config.attention_scaling not in ("none", "minmax"):
        raise ValueError(f"attention_scaling must be 'none' or 'minmax', got {config.attention_scaling!r}")
    if config.disc_kind not in DISC_KINDS:
        raise ValueError(f"disc_kind must be one of {sorted(DISC_KINDS)}, got {config.disc_kind!r}")
    if config.attention_display not in DISC_KINDS[config.disc_kind]:
        raise ValueError(
            f"attention_display must be one of {DISC_KINDS[config.disc_kind]} for the "
            f"{config.disc_kind} discriminator, got {config.attention_display!r}"
        )
    if config.disc_kind == "pixel" and not config.disc_image:
        raise ValueError("the pixel discriminator judges a mask against its image: it needs disc_image true")
    if config.uncertainty_measure not in UNCERTAINTY_MEASURES:
        raise ValueError(
            f"uncertainty_measure must be one of {UNCERTAINTY_MEASURES}, got {config.uncertainty_measure!r}"
        )
    if not 0.0 <= config.sampling_noise <= 1.0:
        raise ValueError(f"sampling_noise must lie in [0, 1], got {config.sampling_noise}")


def check_train_config(config: TrainConfig) -> None:
    """Raise a ValueError naming the key and its range unless every TrainConfig setting is one it may take."""
    for name in ("iterations", "batch_size", "patch_size", "checkpoint_every", "validate_every", "r1_interval"):
        check_integer(config, name, 1)
    for name in ("warmup_steps", "patience"):
        check_integer(config, name, 0)
    check_integer(config, "seed", SEED_RANGE[0], SEED_RANGE[1])
    for name in ("lr_g", "lr_d", "lr_min"):
        check_number(config, name, 0.0, None, low_open=True)
    for name in ("mse_weight", "adversarial_weight", "dice_weight", "bce_weight", "r1_gamma", "d_cutmix_weight"):
        check_number(config, name, 0.0, None)
    for name in ("self_condition_rate", "own_chain_rate"):
        check_number(config, name, 0.0, 1.0)
    check_number(config, "ema_decay", 0.0, 1.0, high_open=True)
    check_number(config, "holdout_fraction", 0.0, 0.5)
    check_number(config, "replay_share", 0.0, 1.0, high_open=True)
    if len(config.adam_betas) != 2 or not all(
        isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in config.adam_betas
    ):
        raise ValueError(f"TrainConfig.adam_betas must be two numbers in [0, 1), got {config.adam_betas!r}")
