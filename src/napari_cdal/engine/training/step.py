"""One cDAL training step: targets, losses, and the updates of G (the generator network) and D."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.device import autocast
from napari_cdal.engine.method.networks import Generator as GeneratorNetwork
from napari_cdal.engine.method.pixel_disc import PixelDiscriminator, pixel_targets
from napari_cdal.engine.method.schedule import VPSchedule, randn_like
from napari_cdal.engine.segment.instances import core_and_border_distance
from napari_cdal.engine.training.state import TrainState, learning_rate


def encode_targets(instances: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Instance ids -> (C, H, W) float32 label maps on [-1, +1]: foreground, nucleus cores, then distance to the border.

    For a model of classes the ids are class values and the maps their one-hot (cDAL.md §5).
    """
    if config.is_multiclass:
        classes = np.arange(config.label_channels).reshape(-1, 1, 1)
        return np.where(instances[None] == classes, 1.0, -1.0).astype(np.float32)
    foreground = np.where(instances > 0, 1.0, -1.0).astype(np.float32)[None]
    if config.label_encoding == "foreground":
        return foreground
    core, distance = core_and_border_distance(instances)
    maps: list[np.ndarray] = [foreground, np.where(core, 1.0, -1.0).astype(np.float32)[None]]
    if config.label_encoding == "foreground_core_distance":
        maps.append(2.0 * distance[None] - 1.0)
    return np.concatenate(maps)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    w = weights.expand_as(values)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per label channel over the batch, averaged over channels."""
    w = weights.expand_as(prob)
    dims = (0, 2, 3)
    inter = (prob * target * w).sum(dims)
    denom = (prob * w).sum(dims) + (target * w).sum(dims)
    return (1.0 - (2.0 * inter + 1.0) / (denom + 1.0)).mean()


def cutmix_boxes(batch: int, size: Sequence[int], rng: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) masks, 1 inside one random box per sample (each side 25-75 %), inverted half the time.

    D learns to tell, place by place, which parts of a mixed real/fake mask are real: its score
    map then says where a mask is made up (Schönfeld et al. 2020, U-Net GAN's CutMix).
    """
    height, width = size
    draws = torch.rand(batch, 5, generator=rng)
    box = torch.zeros(batch, 1, height, width)
    for i, (fh, fw, fy, fx, flip) in enumerate(draws.tolist()):
        h, w = max(1, round((0.25 + 0.5 * fh) * height)), max(1, round((0.25 + 0.5 * fw) * width))
        y, x = round(fy * (height - h)), round(fx * (width - w))
        box[i, :, y : y + h, x : x + w] = 1.0
        if flip < 0.5:
            box[i] = 1.0 - box[i]
    return box


def own_chain_input(
    G: GeneratorNetwork,
    schedule: VPSchedule,
    x_next: torch.Tensor,
    t: torch.Tensor,
    features: torch.Tensor,
    rate: float,
    rng: torch.Generator,
) -> torch.Tensor:
    """G's input x_{t+1}, made for a share `rate` of the batch the way sampling makes it.

    At inference every step after the first starts from G's own first estimate, not from the true
    mask: x_T ~ N(0, I), x̂_0 = G(x_T) (no gradient), x_{t+1} ~ q(x_{t+1} | x_T, x̂_0). Training on
    such inputs teaches the later steps to correct the first one's mistakes (exposure bias);
    samples at the first step (t + 1 = T) keep their input, which is noise either way.
    """
    if rate <= 0:
        return x_next
    last = schedule.diffusion_steps
    use = (torch.rand(x_next.shape[0], generator=rng) < rate) & (t.cpu() + 1 < last)
    if not bool(use.any()):
        return x_next
    x_top = randn_like(x_next, rng)
    z_first = torch.randn(x_next.shape[0], G.config.latent_dim, generator=rng).to(x_next.device)
    with torch.no_grad():
        first = G(x_top, torch.full_like(t, last - 1), features.detach(), z_first).float()
    made = x_next.clone()
    use = use.to(x_next.device)
    for level in sorted({int(v) for v in (t[use] + 1).tolist()}):
        rows = use & (t + 1 == level)
        made[rows] = schedule.jump_sample(first[rows], x_top[rows], last, level, rng)
    return made


def self_condition_input(
    G: GeneratorNetwork,
    x_next: torch.Tensor,
    t: torch.Tensor,
    features: torch.Tensor,
    z: torch.Tensor,
    rate: float,
    rng: torch.Generator,
) -> torch.Tensor | None:
    """The previous-estimate input of a self-conditioned G (Chen et al. 2023, "Analog Bits").

    For a share `rate` of the batch it is G's own x̂_0 from a first pass without gradient, for
    the rest zeros, as at the first sampling step. None when the model does not self-condition.
    """
    if not G.config.self_condition:
        return None
    use = (torch.rand(x_next.shape[0], generator=rng) < rate).to(x_next.device)
    previous = torch.zeros_like(x_next)
    if bool(use.any()):
        with torch.no_grad():
            estimate = G(x_next, t, features.detach(), z, previous).float()
        previous = torch.where(use[:, None, None, None], estimate, previous)
    return previous


def _pixel_d_loss(
    D: PixelDiscriminator,
    real: torch.Tensor,
    fake: torch.Tensor,
    x_next: torch.Tensor,
    t: torch.Tensor,
    image: torch.Tensor | None,
    estimate: torch.Tensor,
    x0: torch.Tensor,
    weights: torch.Tensor,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pixel D's loss (GCT's flaw detector): real pairs real everywhere, a fake pair fake where G's estimate
    is wrong; only where the labels are truth (weights > 0). Returns it with D's mean scores of the pairs."""
    with autocast(device):
        logits_real = D.score_map(real, x_next, t, image).float()
        logits_fake = D.score_map(fake, x_next, t, image).float()
    known = weights.expand_as(logits_real)
    loss = F.binary_cross_entropy_with_logits(
        logits_real, torch.ones_like(logits_real), weight=known
    ) + F.binary_cross_entropy_with_logits(logits_fake, pixel_targets(estimate, x0), weight=known)
    return loss, logits_real.mean(dim=(1, 2, 3)), logits_fake.mean(dim=(1, 2, 3))


def train_step(
    state: TrainState, images: torch.Tensor, x0: torch.Tensor, weights: torch.Tensor, device: torch.device
) -> dict[str, float]:
    """One cDAL step: attention-modulated G update, then D update with lazy R1 (cDAL.md §4); returns the losses.

    A run stopped inside it by its cancel token (events.stop_on_cancel) may leave G updated and D
    not yet: a state left so is part-way through a step, to be dropped, not saved.
    """
    cfg, model = state.train_config, state.model
    G, D, schedule = model.generator, model.discriminator, model.schedule
    for opt, base in ((state.optim_g, cfg.lr_g), (state.optim_d, cfg.lr_d)):
        for group in opt.param_groups:
            group["lr"] = learning_rate(state.step, base, cfg)
    batch = x0.shape[0]
    rng = state.torch_rng
    t = torch.randint(0, schedule.diffusion_steps, (batch,), generator=rng).to(device)
    z = torch.randn(batch, model.config.latent_dim, generator=rng).to(device)

    disc_image = images if model.config.disc_image else None
    with torch.no_grad(), autocast(device):
        x_t, x_next = schedule.training_pair(x0, t, rng)
        attention = D.attention(x_t, x_next, t, disc_image).float() if cfg.attention_gate else 1.0
    x0_att = attention * x0
    _, x_next_att = schedule.training_pair(x0_att, t, rng)

    with autocast(device):
        features = G.encode_image(images)
        x_next_att = own_chain_input(G, schedule, x_next_att, t, features, cfg.own_chain_rate, rng)
        previous = self_condition_input(G, x_next_att, t, features, z, cfg.self_condition_rate, rng)
        x0_pred = G(x_next_att, t, features, z, previous).float()
    mse = _weighted_mean((x0_pred - x0).pow(2), weights)
    prob, target = (x0_pred + 1.0) / 2.0, (x0 + 1.0) / 2.0
    loss_g = cfg.mse_weight * mse
    losses = {"mse": mse.item()}
    if cfg.dice_weight > 0:
        dice = soft_dice_loss(prob, target, weights)
        loss_g = loss_g + cfg.dice_weight * dice
        losses["dice"] = dice.item()
    if cfg.bce_weight > 0:
        bce = _weighted_mean(F.binary_cross_entropy(prob.clamp(1e-5, 1 - 1e-5), target, reduction="none"), weights)
        loss_g = loss_g + cfg.bce_weight * bce
        losses["bce"] = bce.item()
    per_pixel = isinstance(D, PixelDiscriminator)  # disc_kind "pixel" (make_discriminator)
    if cfg.adversarial_weight > 0:
        fake = schedule.posterior_sample(x0_pred, x_next_att, t, rng)
        with autocast(device):
            if per_pixel:  # every pixel pushed to look right where D finds it wrong
                adv = _weighted_mean(F.softplus(-D.score_map(fake, x_next_att, t, disc_image).float()), weights)
            else:
                adv = F.softplus(-D(fake, x_next_att, t, disc_image).float()).mean()
        loss_g = loss_g + cfg.adversarial_weight * adv
        losses["adv_g"] = adv.item()
    state.optim_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.optim_g.step()

    real = schedule.posterior_sample(x0, x_next_att, t, rng)
    fake = schedule.posterior_sample(x0_pred.detach(), x_next_att, t, rng)
    # labels where weights are 0 (padding, outside fine-tune corrections) are not truth: D sees them alike
    real = torch.where(weights > 0, real, fake)
    lazy_r1 = cfg.r1_gamma > 0 and state.step % cfg.r1_interval == 0
    real.requires_grad_(lazy_r1)
    if isinstance(D, PixelDiscriminator):  # per_pixel
        loss_d, d_real, d_fake = _pixel_d_loss(
            D, real, fake, x_next_att, t, disc_image, x0_pred.detach(), x0, weights, device
        )
    else:
        with autocast(device):
            d_real = D(real, x_next_att, t, disc_image).float()
            d_fake = D(fake, x_next_att, t, disc_image).float()
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if cfg.d_cutmix_weight > 0:
        box = cutmix_boxes(real.shape[0], real.shape[-2:], rng).to(device)
        mixed = box * real.detach() + (1.0 - box) * fake
        with autocast(device):
            logits = D.score_map(mixed, x_next_att, t, disc_image).float()
        mixed_target = F.adaptive_avg_pool2d(box, (logits.shape[-2], logits.shape[-1]))
        if per_pixel:  # the fake part is fake only where G's estimate is wrong
            mixed_target = box + (1.0 - box) * pixel_targets(x0_pred.detach(), x0)
        cutmix = F.binary_cross_entropy_with_logits(logits, mixed_target)
        loss_d = loss_d + cfg.d_cutmix_weight * cutmix
        losses["d_cutmix"] = cutmix.item()
    if lazy_r1:
        (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
        r1 = grad.pow(2).flatten(1).sum(1).mean()
        loss_d = loss_d + cfg.r1_gamma / 2.0 * r1 * cfg.r1_interval
        losses["r1"] = r1.item()
    state.optim_d.zero_grad(set_to_none=True)
    loss_d.backward()
    state.optim_d.step()
    state.ema.update(G)
    losses["d_real_acc"] = (d_real > 0).float().mean().item()
    losses["d_fake_acc"] = (d_fake < 0).float().mean().item()
    losses["d"] = loss_d.item()
    losses["g"] = loss_g.item()
    return losses
