"""Model and training configuration: plain dataclasses saved as JSON inside every checkpoint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from napari_cdal.engine.defaults import MAX_COUNT, SEED_RANGE

# Per-channel statistics of MoNuSeg H&E on the 0..255 scale (cDAL.md §5).
HE_MEAN = (142.07, 98.48, 132.96)
HE_STD = (65.78, 57.05, 57.78)

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
"""What the generator's label channels mean: a nucleus mask (and its cores, the watershed's markers, and
each pixel's distance to its nucleus's border over the largest, where to split), or one-hot classes
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


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the networks and to prepare an image for them."""

    image_channels: int = 3
    label_encoding: str = "foreground_core"
    base_width: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    blocks_per_level: int = 1
    encoder_blocks: int = 2
    time_dim: int = 128
    latent_dim: int = 100
    latent_width: int = 256
    latent_layers: int = 4
    norm_groups: int = 8
    disc_width: int = 16
    disc_levels: int = 4
    disc_attention_level: int = 3
    disc_kind: str = "trunk"
    """The discriminator's layout (DISC_KINDS): "trunk" (cDAL's, one score) or "pixel" (a logit per pixel)."""
    diffusion_steps: int = 4
    default_sampling_steps: int = 0
    beta_min: float = 0.1
    beta_max: float = 20.0
    model_mpp: float = 0.5
    image_mean: tuple[float, ...] = HE_MEAN
    image_std: tuple[float, ...] = HE_STD
    attention_scaling: str = "minmax"
    self_condition: bool = False
    disc_image: bool = False
    attention_in_sampling: bool = False
    sampling_noise: float = 1.0
    attention_display: str = "channel_mean"
    uncertainty_measure: str = "std"
    default_samples: int = 1
    class_names: tuple[str, ...] = ()
    """With label_encoding "classes": one name per label value, background (0) first."""
    intensity_percentiles: tuple[float, ...] = ()
    """Grayscale images: the per-image (per-volume) percentiles stretched to 0..255 before the
    mean/std standardisation; empty keeps the 0..255 scale of H&E."""
    context_slices: int = 0
    """Volumes: neighbouring slices on each side given as extra input channels (2.5D)."""
    slice_axis: int = 0
    """Volumes: the axis a volume is cut along into the 2-D slices the networks see."""
    model_side: int = 0
    """2-D images seen whole (chest X-rays): each is resized so its longer side has this many pixels
    for the networks and the maps resized back (model_mpp then plays no part); 0 resamples by µm/px."""

    def __post_init__(self) -> None:
        for name, (low, high) in MODEL_INTEGER_BOUNDS.items():
            _check_integer(self, name, low, high)
        _check_integer(self, "default_samples", 1, MAX_DEFAULT_SAMPLES)
        if not (isinstance(self.channel_mults, tuple) and 1 <= len(self.channel_mults) <= MAX_LEVELS):
            raise ValueError(
                f"ModelConfig.channel_mults must be 1 to {MAX_LEVELS} integers (one per U-Net level), "
                f"got {self.channel_mults!r}"
            )
        for mult in self.channel_mults:
            if isinstance(mult, bool) or not isinstance(mult, int) or not 1 <= mult <= MAX_CHANNEL_MULT:
                raise ValueError(
                    f"ModelConfig.channel_mults must hold integers from 1 to {MAX_CHANNEL_MULT}, "
                    f"got {self.channel_mults!r}"
                )
        for name in ("beta_min", "beta_max"):
            _check_number(self, name, 0.0, MAX_BETA, low_open=True)
        if not self.beta_min < self.beta_max:
            raise ValueError(f"ModelConfig.beta_min must be below beta_max, got {self.beta_min} and {self.beta_max}")
        _check_number(self, "model_mpp", 0.0, MAX_MODEL_MPP, low_open=True)
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
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
        if len(self.class_names) > MAX_CLASSES or not all(isinstance(n, str) for n in self.class_names):
            raise ValueError(f"ModelConfig.class_names must be at most {MAX_CLASSES} names, got {self.class_names!r}")
        if self.label_encoding == "classes" and len(self.class_names) < 2:
            raise ValueError("label_encoding 'classes' needs class_names, at least two, background first")
        if self.label_encoding != "classes" and self.class_names:
            raise ValueError("class_names belong to label_encoding 'classes'")
        if self.intensity_percentiles and not (
            len(self.intensity_percentiles) == 2
            and 0.0 <= self.intensity_percentiles[0] < self.intensity_percentiles[1] <= 100.0
        ):
            raise ValueError(
                f"intensity_percentiles must be two numbers 0 <= low < high <= 100, got {self.intensity_percentiles!r}"
            )
        if self.context_slices and self.image_channels != 1 + 2 * self.context_slices:
            raise ValueError(
                f"context_slices {self.context_slices} needs image_channels "
                f"{1 + 2 * self.context_slices} (the slice and its neighbours), got {self.image_channels}"
            )
        if self.label_encoding not in LABEL_ENCODINGS:
            raise ValueError(f"label_encoding must be one of {sorted(LABEL_ENCODINGS)}, got {self.label_encoding!r}")
        if len(self.image_mean) != self.image_channels or len(self.image_std) != self.image_channels:
            raise ValueError(
                f"image_mean and image_std need one value per image channel (image_channels "
                f"{self.image_channels}), got {len(self.image_mean)} and {len(self.image_std)}"
            )
        if not 1 <= self.disc_attention_level <= self.disc_levels:
            raise ValueError("disc_attention_level must lie in 1..disc_levels")
        if (
            isinstance(self.default_sampling_steps, bool)
            or not isinstance(self.default_sampling_steps, int)
            or not 0 <= self.default_sampling_steps <= self.diffusion_steps
        ):
            raise ValueError(
                f"default_sampling_steps must lie in 0..diffusion_steps ({self.diffusion_steps}), "
                f"got {self.default_sampling_steps}"
            )
        if self.attention_scaling not in ("none", "minmax"):
            raise ValueError(f"attention_scaling must be 'none' or 'minmax', got {self.attention_scaling!r}")
        if self.disc_kind not in DISC_KINDS:
            raise ValueError(f"disc_kind must be one of {sorted(DISC_KINDS)}, got {self.disc_kind!r}")
        if self.attention_display not in DISC_KINDS[self.disc_kind]:
            raise ValueError(
                f"attention_display must be one of {DISC_KINDS[self.disc_kind]} for the "
                f"{self.disc_kind} discriminator, got {self.attention_display!r}"
            )
        if self.disc_kind == "pixel" and not self.disc_image:
            raise ValueError("the pixel discriminator judges a mask against its image: it needs disc_image true")
        if self.uncertainty_measure not in UNCERTAINTY_MEASURES:
            raise ValueError(
                f"uncertainty_measure must be one of {UNCERTAINTY_MEASURES}, got {self.uncertainty_measure!r}"
            )
        if not 0.0 <= self.sampling_noise <= 1.0:
            raise ValueError(f"sampling_noise must lie in [0, 1], got {self.sampling_noise}")

    @property
    def label_channels(self) -> int:
        """Number of label maps the generator denoises (one per class)."""
        if self.label_encoding == "classes":
            return len(self.class_names)
        return len(LABEL_ENCODINGS[self.label_encoding])

    @property
    def is_multiclass(self) -> bool:
        """True when the labels are classes (argmax of one-hot maps) rather than nuclei."""
        return self.label_encoding == "classes"

    @property
    def sampling_steps(self) -> int:
        """Reverse steps sampled when none are asked for: the measured best (default_sampling_steps), else all T."""
        return self.default_sampling_steps or self.diffusion_steps

    @property
    def generator_input_channels(self) -> int:
        """Label channels, doubled when the generator also sees its previous x̂_0 (self-conditioning)."""
        return self.label_channels * (2 if self.self_condition else 1)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (one halving per U-Net level)."""
        return 2 ** max(len(self.channel_mults) - 1, self.disc_levels)

    def grid_factor(self, height: int, width: int, image_mpp: float) -> float:
        """How much an image is scaled onto the model's grid: its longer side to model_side, else by µm/px."""
        return self.model_side / max(height, width) if self.model_side else image_mpp / self.model_mpp

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values, as stored in every checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Settings from JSON; former key names are accepted, unknown keys named."""
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by training from scratch and fine-tuning."""

    iterations: int = 4000
    batch_size: int = 4
    patch_size: int = 256
    lr_g: float = 5e-4
    lr_d: float = 2e-4
    lr_min: float = 1e-5
    warmup_steps: int = 100
    adam_betas: tuple[float, float] = (0.5, 0.9)
    mse_weight: float = 1.0
    adversarial_weight: float = 0.05
    dice_weight: float = 0.5
    bce_weight: float = 0.5
    r1_gamma: float = 1.0
    r1_interval: int = 10
    ema_decay: float = 0.998
    augment: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    validate_every: int = 500
    self_condition_rate: float = 0.5
    d_cutmix_weight: float = 0.0
    own_chain_rate: float = 0.0
    flips: bool = True
    """Augment with the eight flips and quarter turns (off where orientation tells classes apart)."""
    holdout_fraction: float = 0.0
    """Fine-tuning: share of the corrections held back to pick the best weights and check them (0: none): whole
    regions when there are many, else a strip of the largest."""
    patience: int = 0
    """Fine-tuning: validations without a better score before the run stops (0: never)."""
    replay_share: float = 0.0
    """Fine-tuning: share of each batch drawn from the model's replay set (its own training patches), so that
    it forgets less elsewhere (0, or a model without a replay set: none)."""
    attention_gate: bool = True
    """cDAL's gate in G's step: x_{t+1} drawn from A ⊙ x_0, A from D (False: from x_0 itself, to measure the gate)."""

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "patch_size", "checkpoint_every", "validate_every", "r1_interval"):
            _check_integer(self, name, 1)
        for name in ("warmup_steps", "patience"):
            _check_integer(self, name, 0)
        _check_integer(self, "seed", SEED_RANGE[0], SEED_RANGE[1])
        for name in ("lr_g", "lr_d", "lr_min"):
            _check_number(self, name, 0.0, None, low_open=True)
        for name in ("mse_weight", "adversarial_weight", "dice_weight", "bce_weight", "r1_gamma", "d_cutmix_weight"):
            _check_number(self, name, 0.0, None)
        for name in ("self_condition_rate", "own_chain_rate"):
            _check_number(self, name, 0.0, 1.0)
        _check_number(self, "ema_decay", 0.0, 1.0, high_open=True)
        _check_number(self, "holdout_fraction", 0.0, 0.5)
        _check_number(self, "replay_share", 0.0, 1.0, high_open=True)
        if len(self.adam_betas) != 2 or not all(
            isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.adam_betas
        ):
            raise ValueError(f"TrainConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values, as stored in every checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Settings from JSON; former key names are accepted, unknown keys named."""
        return _from_dict(cls, data)


def _check_integer(config: Any, name: str, least: int, most: int = MAX_COUNT) -> None:
    """Raise a ValueError naming the key unless the field is an integer from `least` to `most`."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{type(config).__name__}.{name} must be an integer >= {least}, got {value!r}")
    if value > most:
        raise ValueError(f"{type(config).__name__}.{name} must be an integer from {least} to {most}, got {value!r}")


def _check_number(
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


FORMER_NAMES = {
    "ModelConfig": {"num_steps": "diffusion_steps", "sampling_steps": "default_sampling_steps"},
    "TrainConfig": {"steps": "iterations"},
}
"""Keys of configs written by earlier versions, and what they are called now: "steps" meant three
things (training iterations, sampling steps, the model's T) and now each has its own name."""


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a config dataclass from JSON (former key names accepted), naming unknown keys instead of failing."""
    renamed = FORMER_NAMES.get(cls.__name__, {})
    both = sorted(old for old, new in renamed.items() if old in data and new in data)
    if both:
        raise ValueError(
            f"{cls.__name__} keys {both} are former names of {[renamed[k] for k in both]}; give one of each"
        )
    data = {renamed.get(key, key): value for key, value in data.items()}
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(names)}")
    values = {}
    for key, value in data.items():
        default = names[key].default
        values[key] = tuple(value) if isinstance(default, tuple) else value
    return cls(**values)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        base_width=8,
        channel_mults=(1, 2),
        encoder_blocks=1,
        time_dim=32,
        latent_width=32,
        latent_layers=2,
        norm_groups=4,
        disc_width=8,
        disc_levels=2,
        disc_attention_level=1,
    ),
    "small": dict(base_width=16, channel_mults=(1, 2, 2, 4)),
    "medium": dict(base_width=16, channel_mults=(1, 2, 4, 8)),
    "large": dict(base_width=32, channel_mults=(1, 2, 2, 4)),
    "hippocampus": dict(
        image_channels=3,
        context_slices=1,
        slice_axis=0,
        label_encoding="classes",
        class_names=("background", "anterior", "posterior"),
        intensity_percentiles=(0.5, 99.5),
        image_mean=(133.5,) * 3,
        image_std=(64.7,) * 3,
        base_width=16,
        channel_mults=(1, 2, 4),
        disc_levels=3,
        disc_attention_level=2,
        model_mpp=1000.0,
        uncertainty_measure="chain_entropy",
    ),
    "grayscale": dict(
        image_channels=1,
        label_encoding="foreground",
        diffusion_steps=2,
        intensity_percentiles=(0.5, 99.5),
        image_mean=(127.5,),
        image_std=(73.6,),
        model_side=256,
        base_width=16,
        channel_mults=(1, 2, 2, 4),
        default_samples=8,
    ),
}
"""Model sizes for H&E nuclei (small to large); the MSD hippocampus MRI model: 2.5D slices (one
neighbour each side) cut along the first axis, which keeps the head-to-tail axis in the plane,
and one-hot background / anterior / posterior, its image statistics those of the shared training
volumes after their per-volume 0.5-99.5 % stretch; and grayscale 2-D images with a binary mask
(chest X-rays, cDAL's T = 2): each image stretched between its own 0.5 and 99.5 % percentiles
(standardised as a uniform spread over 0..255 would be) and seen whole at 256 pixels on its longer
side, as the paper's 256 x 256."""
