"""A loaded cDAL model: config, G (the generator network, EMA weights), D, schedule and record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from napari_cdal.catalog import (
    BUNDLED_LABEL,
    MODEL_SUFFIX,
    bundled_model_path,
    list_models,
    model_dir_problem,
)
from napari_cdal.engine.config import ModelConfig, iterations_done
from napari_cdal.engine.io.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    split_prefix,
    with_prefix,
)
from napari_cdal.engine.method.networks import Discriminator, Generator
from napari_cdal.engine.method.pixel_disc import PixelDiscriminator
from napari_cdal.engine.method.schedule import VPSchedule

if TYPE_CHECKING:
    from napari_cdal.engine.method.runtime import Runtime

REPLAY_PREFIX = "replay"
"""The checkpoint's tensors of a replay set: replay.images and replay.instances."""

MAX_REPLAY_PATCHES = 256
"""The most replay patches a model file may carry (a replay set is a few dozen)."""


@dataclass(frozen=True)
class ReplaySet:
    """A few patches of the model's own training data at its µm/px, with their true nuclei.

    Fine-tuning mixes them into its batches (TrainConfig.replay_share), so that learning a user's
    corrections costs less of what the model knew on other tissue. They travel inside the model
    file, so a fine-tuned model passes them on.
    """

    images: np.ndarray
    """(N, P, P, C) uint8."""
    instances: np.ndarray
    """(N, P, P) int32 instance ids, 0 = background."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """The set as checkpoint tensors under REPLAY_PREFIX."""
        return {
            f"{REPLAY_PREFIX}.images": torch.from_numpy(np.ascontiguousarray(self.images, np.uint8)),
            f"{REPLAY_PREFIX}.instances": torch.from_numpy(np.ascontiguousarray(self.instances, np.int32)),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], config: ModelConfig, source: str) -> ReplaySet | None:
        """The checkpoint's replay set (None without one); CheckpointError when it is not what it claims."""
        found = split_prefix(tensors, REPLAY_PREFIX)
        if not found:
            return None
        if set(found) != {"images", "instances"}:
            raise CheckpointError(f"{source}: its replay set holds {sorted(found)}, not images and instances")
        images, instances = found["images"], found["instances"]
        problem = None
        if images.dtype != torch.uint8 or instances.dtype != torch.int32:
            problem = f"is {images.dtype} and {instances.dtype}, not uint8 images and int32 instances"
        elif (
            images.ndim != 4
            or images.shape[-1] != config.image_channels
            or tuple(instances.shape) != tuple(images.shape[:3])
            or images.shape[1] != images.shape[2]
        ):
            problem = (
                f"has images {tuple(images.shape)} and instances {tuple(instances.shape)}; expected "
                f"(N, P, P, {config.image_channels}) and (N, P, P)"
            )
        elif not 0 < images.shape[0] <= MAX_REPLAY_PATCHES:
            problem = f"holds {images.shape[0]} patches, not 1..{MAX_REPLAY_PATCHES}"
        elif bool((instances < 0).any()):
            problem = "has negative instance ids"
        if problem:
            raise CheckpointError(f"{source}: its replay set {problem}")
        return cls(images.numpy(), instances.numpy())


@dataclass
class CdalModel:
    """Everything inference needs, built from a checkpoint rather than unpickled."""

    config: ModelConfig
    generator: Generator
    discriminator: Discriminator | PixelDiscriminator
    record: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    replay: ReplaySet | None = None
    """Patches of its training data that fine-tuning replays (None: the model carries none)."""
    runtime: Runtime | None = field(default=None, repr=False, compare=False)
    """How sampling runs G (runtime.with_runtime); None is torch at the device's default precision."""

    @property
    def schedule(self) -> VPSchedule:
        """The noise schedule the model was trained with."""
        return VPSchedule(self.config.diffusion_steps, self.config.beta_min, self.config.beta_max)

    @classmethod
    def initialise(cls, config: ModelConfig, seed: int = 0) -> CdalModel:
        """A model with fresh random weights that depend on `seed` alone.

        torch's layers draw their initial weights from the global random generator and take no other;
        fork_rng gives them one seeded here and puts the caller's global state back afterwards.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config, Generator(config), make_discriminator(config))

    def to(self, device: torch.device | str) -> CdalModel:
        """Move both networks to `device`; returns the model."""
        self.generator.to(device)
        self.discriminator.to(device)
        return self

    def eval(self) -> CdalModel:
        """Both networks in inference mode; returns the model."""
        self.generator.eval()
        self.discriminator.eval()
        return self


def make_discriminator(config: ModelConfig) -> Discriminator | PixelDiscriminator:
    """The discriminator of the config's `disc_kind`: cDAL's trunk or the per-pixel encoder-decoder."""
    return PixelDiscriminator(config) if config.disc_kind == "pixel" else Discriminator(config)


def _grown_inputs(before: torch.Tensor, after: torch.Tensor, old_labels: int, new_labels: int) -> torch.Tensor | None:
    """A convolution's weights with more input channels: old channels kept in place, new ones at zero.

    Where the label channels grew (old_labels -> new_labels), each block of label channels at the
    front (x_t, x_{t+1}, a previous estimate) gains its new channels at its end, and the inputs
    after the blocks (the image) move back; otherwise the new inputs are appended. None when the
    shapes do not fit either way.
    """
    if before.ndim != 4 or before.shape[0] != after.shape[0] or before.shape[2:] != after.shape[2:]:
        return None
    old_in, new_in = before.shape[1], after.shape[1]
    if old_in >= new_in:
        return None
    grown = torch.zeros_like(after)
    gained = new_labels - old_labels
    blocks = (new_in - old_in) // gained if gained > 0 and (new_in - old_in) % gained == 0 else 0
    if blocks == 0 or blocks * old_labels > old_in:
        grown[:, :old_in] = before
        return grown
    for block in range(blocks):
        grown[:, block * new_labels : block * new_labels + old_labels] = before[
            :, block * old_labels : (block + 1) * old_labels
        ]
    grown[:, blocks * new_labels :] = before[:, blocks * old_labels :]
    return grown


def _grown_outputs(before: torch.Tensor, after: torch.Tensor, gained: int) -> torch.Tensor | None:
    """An output layer with `gained` more label channels: old ones kept, each new one a copy of the last old one."""
    if gained <= 0 or before.shape[0] + gained != after.shape[0] or before.shape[1:] != after.shape[1:]:
        return None
    return torch.cat([before, before[-1:].expand(gained, *before.shape[1:])]).clone()


def with_new_config(source: CdalModel, config: ModelConfig, seed: int = 0) -> CdalModel:
    """A model of `config` that starts from `source`'s weights wherever they still fit.

    Tensors of the same shape are copied. A convolution that gained input channels (a
    self-conditioning or image input added, or label channels) keeps its old weights for the old
    channels and starts the new ones at zero, so the old outputs are first computed exactly as
    before. G's output gaining label channels (a distance channel beside foreground and core)
    starts each new one as a copy of the last old one. Anything else keeps its fresh, seeded
    initialisation.
    """
    target = CdalModel.initialise(config, seed)
    old_labels, new_labels = source.config.label_channels, config.label_channels
    for name in ("generator", "discriminator"):
        old = getattr(source, name).state_dict()
        new = getattr(target, name).state_dict()
        for key, value in new.items():
            before = old.get(key)
            if before is None:
                continue
            if before.shape == value.shape:
                new[key] = before.clone()
                continue
            grown = _grown_inputs(before, value, old_labels, new_labels)
            if grown is None and name == "generator":
                grown = _grown_outputs(before, value, new_labels - old_labels)
            if grown is not None:
                new[key] = grown
        getattr(target, name).load_state_dict(new)
    target.record = {"adapted_from": {"model": source.source, "iterations": iterations_done(source.record)}}
    return target


def resolve_model_path(spec: str | Path | None) -> Path:
    """A model given by file or by a name `napari-cdal info --list` shows; None is the default bundled model.

    A file that exists wins over a name, so a user's own file is never shadowed; a bundled name
    (cdal_hippocampus) wins over a model of that name in the user's model folder. A bare name found
    nowhere is a CheckpointError listing the names there are.
    """
    if spec is None:
        return bundled_model_path()
    path = Path(spec)
    if path.exists() or path.is_symlink() or str(path) != path.name:
        return path  # a file, or a path with folders: the loader names what is wrong with it
    name = path.name.removesuffix(BUNDLED_LABEL).removesuffix(MODEL_SUFFIX)
    entries = list_models()
    found = next((entry.path for entry in entries if entry.name == name), None)
    if found is not None:
        return found
    problem = model_dir_problem()
    raise CheckpointError(
        f"{spec} is neither a model file nor the name of a model; the names are "
        f"{', '.join(entry.name for entry in entries)} (napari-cdal info --list)" + (f"; {problem}" if problem else "")
    )


def is_bundled(path: str | Path) -> bool:
    """True when `path` is a file of the package's weights folder, which nothing may replace."""
    try:
        return Path(path).resolve().parent == bundled_model_path().resolve().parent
    except OSError:
        return False


def save_model(
    path: str | Path,
    model: CdalModel,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    extra_metadata: dict[str, Any] | None = None,
    replace: bool = True,
) -> None:
    """Write a model (and optionally training state) as one checkpoint, atomically (replace=False: only a new file)."""
    tensors = with_prefix(model.generator.state_dict(), "generator")
    tensors.update(with_prefix(model.discriminator.state_dict(), "discriminator"))
    if model.replay is not None:
        tensors.update(model.replay.tensors())
    tensors.update(extra_tensors or {})
    metadata = {"kind": "model", "model_config": model.config.to_dict(), "record": model.record}
    metadata.update(extra_metadata or {})
    save_checkpoint(path, tensors, metadata, replace)


def _check_weights(tensors: dict[str, torch.Tensor], config: ModelConfig, source: str) -> None:
    """Refuse weights that are not what the config builds: every tensor floating point, the names and shapes of
    the networks the config describes (built on torch's meta device, so nothing is allocated for a false claim)."""
    try:
        with torch.device("meta"):
            networks = {"generator": Generator(config), "discriminator": make_discriminator(config)}
    except (ValueError, ArithmeticError, RuntimeError) as exc:  # a config within its bounds that builds no network
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{source} has no usable model config ({type(exc).__name__}: {first})") from exc
    for name, module in networks.items():
        stored = split_prefix(tensors, name)
        wanted = module.state_dict()
        for key, value in stored.items():
            if not value.is_floating_point():
                raise CheckpointError(
                    f"{source}: {name} weight {key} holds {str(value.dtype).replace('torch.', '')} "
                    "values, but every weight is floating point; the file was altered or is not a "
                    "napari-cdal model: use the file as it was written"
                )
        missing = sorted(set(wanted) - set(stored))
        extra = sorted(set(stored) - set(wanted))
        wrong = next(
            (key for key in wanted if key in stored and tuple(stored[key].shape) != tuple(wanted[key].shape)), None
        )
        if missing:
            problem = f"{missing[0]} is missing"
        elif extra:
            problem = f"{extra[0]} is not in the networks it describes"
        elif wrong is not None:
            problem = (
                f"{wrong} has shape {tuple(stored[wrong].shape)} where its config builds {tuple(wanted[wrong].shape)}"
            )
        else:
            continue
        raise CheckpointError(f"{source}: {name} weights do not match its config ({problem})")


def model_from_checkpoint(tensors: dict[str, torch.Tensor], meta: dict[str, Any], source: str) -> CdalModel:
    """Rebuild the networks from the metadata's config and load their weights strictly.

    The config is checked against its bounds (ModelConfig) and the weights against the config
    before any network is built, so a file that claims more than it holds costs no memory.
    """
    try:
        config = ModelConfig.from_dict(meta["model_config"])
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{source} has no usable model config ({type(exc).__name__}: {first})") from exc
    _check_weights(tensors, config, source)
    model = CdalModel(
        config,
        Generator(config),
        make_discriminator(config),
        meta.get("record", {}),
        source,
        ReplaySet.from_tensors(tensors, config, source),
    )
    for name, module in (("generator", model.generator), ("discriminator", model.discriminator)):
        state = {k: v.float() for k, v in split_prefix(tensors, name).items()}
        module.load_state_dict(state, strict=True)
        broken = next((key for key, value in state.items() if not torch.isfinite(value).all()), None)
        if broken is not None:
            raise CheckpointError(
                f"{source} holds NaN or infinite {name} weights ({broken}), so it cannot "
                "segment; the training that wrote it diverged: use an earlier checkpoint"
            )
    return model.eval()


def load_model(path: str | Path | None = None, device: torch.device | str = "cpu") -> CdalModel:
    """Load a checkpoint (a file, a bundled model's name, or the default bundled model for None) onto `device`."""
    path = resolve_model_path(path)
    tensors, meta = load_checkpoint(path)
    return model_from_checkpoint(tensors, meta, str(path)).to(device)
