"""A training run's state: both networks, their optimisers, the EMA, the RNGs; saved for --resume."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cdal.engine.config import TrainConfig
from napari_cdal.engine.io.checkpoint import load_checkpoint, split_prefix, with_prefix
from napari_cdal.engine.method.model import CdalModel, model_from_checkpoint, save_model
from napari_cdal.engine.method.networks import Generator as GeneratorNetwork


class EMA:
    """Exponential moving average of G's weights (the generator network); the EMA copy is what gets shipped."""

    def __init__(self, module: GeneratorNetwork, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, source: torch.nn.Module) -> None:
        """Move the average towards `source`: ema = decay * ema + (1 - decay) * source."""
        for ema_p, p in zip(self.module.parameters(), source.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), source.buffers(), strict=True):
            ema_b.copy_(b)


def learning_rate(step: int, base: float, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay from `base` to cfg.lr_min over cfg.iterations."""
    if step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.iterations - cfg.warmup_steps))
    return cfg.lr_min + 0.5 * (base - cfg.lr_min) * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainState:
    """Everything a run needs to go on bit for bit: networks, EMA, optimisers, step, RNGs, record."""

    model: CdalModel
    ema: EMA
    optim_g: torch.optim.Optimizer
    optim_d: torch.optim.Optimizer
    train_config: TrainConfig
    np_rng: np.random.Generator
    torch_rng: torch.Generator
    step: int = 0
    record: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, model: CdalModel, cfg: TrainConfig) -> TrainState:
        """Fresh optimisers (Adam, cDAL.md §5) and seeded RNGs around a model."""
        optim_g = torch.optim.Adam(model.generator.parameters(), lr=cfg.lr_g, betas=cfg.adam_betas)
        optim_d = torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr_d, betas=cfg.adam_betas)
        torch_rng = torch.Generator().manual_seed(cfg.seed)
        record = {"history": [], "validation": [], "wall_seconds": 0.0}
        return cls(
            model,
            EMA(model.generator, cfg.ema_decay),
            optim_g,
            optim_d,
            cfg,
            np.random.default_rng(cfg.seed),
            torch_rng,
            0,
            record,
        )

    def exported_model(self) -> CdalModel:
        """The model to ship: G's EMA weights, current discriminator, the training record."""
        record = dict(self.model.record)
        record.update(self.record)
        record.pop("steps", None)  # a former name of "iterations", in a record this run started from
        record["iterations"] = self.step
        record["train_config"] = self.train_config.to_dict()
        return CdalModel(
            self.model.config,
            copy.deepcopy(self.ema.module).eval(),
            copy.deepcopy(self.model.discriminator).eval(),
            record,
            replay=self.model.replay,
        )

    def save(self, path: str | Path) -> None:
        """Write the whole training state (for --resume) as one checkpoint."""
        extra = with_prefix(self.ema.module.state_dict(), "ema")
        extra.update(_optimizer_tensors(self.optim_g, "optim_g"))
        extra.update(_optimizer_tensors(self.optim_d, "optim_d"))
        extra["rng.torch"] = self.torch_rng.get_state()
        meta = {
            "kind": "training_state",
            "train_config": self.train_config.to_dict(),
            "step": self.step,
            "training_record": self.record,
            "optim_g_groups": _optimizer_groups(self.optim_g),
            "optim_d_groups": _optimizer_groups(self.optim_d),
            "rng_numpy": self.np_rng.bit_generator.state,
        }
        save_model(path, self.model, extra, meta)

    @classmethod
    def load(cls, path: str | Path, device: torch.device, train_config: TrainConfig | None = None) -> TrainState:
        """Rebuild a training state written by `save`; `train_config` may extend the step count."""
        tensors, meta = load_checkpoint(path)
        if meta.get("kind") != "training_state":
            raise ValueError(f"{path} is a model, not a training state; it cannot be resumed")
        model = model_from_checkpoint(tensors, meta, str(path)).to(device)
        model.generator.train()
        model.discriminator.train()
        cfg = train_config or TrainConfig.from_dict(meta["train_config"])
        state = cls.create(model, cfg)
        state.ema.module.load_state_dict(split_prefix(tensors, "ema"))
        state.ema.module.to(device)
        _load_optimizer(state.optim_g, tensors, "optim_g", meta["optim_g_groups"])
        _load_optimizer(state.optim_d, tensors, "optim_d", meta["optim_d_groups"])
        state.torch_rng.set_state(tensors["rng.torch"])
        state.np_rng.bit_generator.state = meta["rng_numpy"]
        state.step = int(meta["step"])
        state.record = meta["training_record"]
        return state


def _optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for index, values in opt.state_dict()["state"].items():
        for name, value in values.items():
            out[f"{prefix}.{index}.{name}"] = torch.as_tensor(value)
    return out


def _optimizer_groups(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    groups = opt.state_dict()["param_groups"]
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in groups]


def _load_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str, groups: list[dict[str, Any]]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in split_prefix(tensors, prefix).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for group in groups:
        group["betas"] = tuple(group["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})
