"""Model and training configuration: plain dataclasses saved as JSON inside every checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from napari_cdal.engine.config_rules import (
    ATTENTION_MAPS,
    DISC_KINDS,
    LABEL_ENCODINGS,
    UNCERTAINTY_MEASURES,
    check_model_config,
    check_train_config,
)

__all__ = [
    "ATTENTION_MAPS",
    "DISC_KINDS",
    "FINETUNE_CHANGES",
    "FINETUNE_CONFIG",
    "FINETUNE_D_LR_RATIO",
    "FORMER_NAMES",
    "HE_MEAN",
    "HE_STD",
    "LABEL_ENCODINGS",
    "PRESETS",
    "RECORD_FORMER_NAMES",
    "TRAIN_DEFAULTS",
    "UNCERTAINTY_MEASURES",
    "ModelConfig",
    "current_record",
    "iterations_done",
    "TrainConfig",
]

# Per-channel statistics of MoNuSeg H&E on the 0..255 scale (cDAL.md §5).
HE_MEAN = (142.07, 98.48, 132.96)
HE_STD = (65.78, 57.05, 57.78)


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
        check_model_config(self)

    @property
    def label_channels(self) -> int:
        """Number of label maps G (the generator network) denoises (one per class)."""
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
        """Label channels, doubled when G also sees its previous x̂_0 (self-conditioning)."""
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
        check_train_config(self)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values, as stored in every checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Settings from JSON; former key names are accepted, unknown keys named."""
        return _from_dict(cls, data)


FINETUNE_D_LR_RATIO = 0.5
"""The discriminator's learning rate as a share of G's (the generator network's) when fine-tuning."""

TRAIN_DEFAULTS = TrainConfig()
"""Training from scratch (`napari-cdal train`): the defaults the command line's help quotes."""

FINETUNE_CONFIG = TrainConfig(
    iterations=150,
    batch_size=4,
    patch_size=128,
    lr_g=1e-4,
    lr_d=1e-4 * FINETUNE_D_LR_RATIO,
    lr_min=1e-6,
    warmup_steps=10,
    ema_decay=0.99,
    holdout_fraction=0.25,
    validate_every=50,
    patience=2,
)
"""Fine-tuning's settings (`finetune_config` changes them): how it differs from training from scratch, chosen by AJI
gained per minute with benchmarks/loop.py (25 Review items on a breast tile, scored on another; the model card's
sweep) on a 2-core CPU: 2e-4 or 300 iterations gained less, nothing held back (the last weights) lost AJI. Replay
(replay_share) stays 0: measured, it did not lower forgetting."""

FINETUNE_CHANGES = (
    "iterations",
    "batch_size",
    "patch_size",
    "lr_g",
    "lr_d",
    "lr_min",
    "warmup_steps",
    "ema_decay",
    "holdout_fraction",
    "validate_every",
    "patience",
)
"""The settings fine-tuning sets for itself (the rest are TrainConfig's defaults): defaults.FINETUNE_SETTINGS's keys."""


FORMER_NAMES = {
    "ModelConfig": {"num_steps": "diffusion_steps", "sampling_steps": "default_sampling_steps"},
    "TrainConfig": {"steps": "iterations"},
}
"""Keys of configs written by earlier versions, and what they are called now: "steps" meant three
things (training iterations, sampling steps, the model's T) and now each has its own name."""


RECORD_FORMER_NAMES = {"steps": "iterations"}
"""Keys of training records written by earlier versions, and what they are called now: a record's "steps"
counted the iterations done."""


def current_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A training record under today's key names, in it and in the records it holds (where a model came from):
    one written by an earlier version reads like a new one. The record given is not changed."""
    renamed: dict[str, Any] = {}
    for key, value in record.items():
        new = RECORD_FORMER_NAMES.get(key, key)
        if new != key and new in record:
            continue  # both names: today's wins
        renamed[new] = current_record(value) if isinstance(value, Mapping) else value
    return renamed


def iterations_done(record: Mapping[str, Any]) -> int | None:
    """How many training iterations a record says were done (None: it does not say), whichever version wrote it."""
    value = current_record(record).get("iterations")
    return None if value is None else int(value)


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
