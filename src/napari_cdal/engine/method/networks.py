"""cDAL's networks: the conditional U-Net generator network G and the time-conditioned discriminator (cDAL.md §3-4)."""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from napari_cdal.engine.config import ModelConfig


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of integer step indices, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / max(half - 1, 1))
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(emb, (0, dim - 2 * half))


def _groups(channels: int, wanted: int) -> int:
    groups = min(wanted, channels)
    while channels % groups:
        groups -= 1
    return groups


class TimeEmbedding(nn.Module):
    """Step index -> sinusoidal features -> two-layer MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim))


class LatentMapping(nn.Module):
    """z ~ N(0, I) -> z / rms(z) -> MLP of SiLU layers: the latent embedding of every block."""

    def __init__(self, latent_dim: int, width: int, layers: int) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        size = latent_dim
        for _ in range(layers):
            mods += [nn.Linear(size, width), nn.SiLU()]
            size = width
        self.mlp = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        return self.mlp(z)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without its own affine; scale and shift come from the latent embedding."""

    def __init__(self, channels: int, groups: int, latent_width: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels, groups), channels, affine=False)
        self.style = nn.Linear(latent_width, 2 * channels)
        nn.init.zeros_(self.style.weight)
        with torch.no_grad():
            self.style.bias.zero_()
            self.style.bias[:channels] = 1.0

    def forward(self, x: torch.Tensor, z_emb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(z_emb).chunk(2, dim=1)
        return torch.addcmul(beta[:, :, None, None], gamma[:, :, None, None], self.norm(x))


class ResBlock(nn.Module):
    """Residual block with adaptive GroupNorm (latent) and a per-channel time bias."""

    def __init__(self, cin: int, cout: int, time_dim: int, latent_width: int, groups: int) -> None:
        super().__init__()
        self.norm1 = AdaptiveGroupNorm(cin, groups, latent_width)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, cout)
        self.norm2 = AdaptiveGroupNorm(cout, groups, latent_width)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, z_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, z_emb)))
        h = h + self.time(t_emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h, z_emb)))
        return self.skip(x) + h


class PlainResBlock(nn.Module):
    """Residual block of the image encoder: no time, no latent."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(channels, groups), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels, groups), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ImageEncoder(nn.Module):
    """Full-resolution image features added to G's stem; independent of t and z."""

    def __init__(self, image_channels: int, width: int, blocks: int, groups: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(image_channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*[PlainResBlock(width, groups) for _ in range(blocks)])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(image))


class Generator(nn.Module):
    """Conditional U-Net: x̂_0 = G(x_{t+1}, t, image features, z), output through tanh."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        widths = [c.base_width * m for m in c.channel_mults]
        self.encoder = ImageEncoder(c.image_channels, c.base_width, c.encoder_blocks, c.norm_groups)
        self.time = TimeEmbedding(c.time_dim)
        self.latent = LatentMapping(c.latent_dim, c.latent_width, c.latent_layers)
        self.stem = nn.Conv2d(c.generator_input_channels, c.base_width, 3, padding=1)

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, c.time_dim, c.latent_width, c.norm_groups)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_widths = []
        cur = c.base_width
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(c.blocks_per_level):
                blocks.append(block(cur, width))
                cur = width
            self.down.append(blocks)
            skip_widths.append(cur)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
        self.middle = nn.ModuleList([block(cur, cur), block(cur, cur)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for i in range(c.blocks_per_level):
                blocks.append(block(cur + (skip_widths[level] if i == 0 else 0), widths[level]))
                cur = widths[level]
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(cur, c.norm_groups), cur)
        self.out = nn.Conv2d(cur, c.label_channels, 3, padding=1)
        # channels-last convolutions run about 1.4x faster on the CPU (benchmarks/speed.py)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack memory_format

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image features, computed once per image and reused for every step and sample."""
        return self.encoder(image)

    def forward(
        self,
        x_next: torch.Tensor,
        t: torch.Tensor,
        image_features: torch.Tensor,
        z: torch.Tensor,
        previous_x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict x̂_0 in [-1, 1] from the noisy label x_{t+1}; features broadcast over the batch.

        With self-conditioning, `previous_x0` is the last estimate of x̂_0 (zeros when there is none).
        """
        t_emb = self.time(t)
        z_emb = self.latent(z)
        if image_features.shape[0] != x_next.shape[0]:
            image_features = image_features.expand(x_next.shape[0], -1, -1, -1)
        if self.config.self_condition:
            previous_x0 = torch.zeros_like(x_next) if previous_x0 is None else previous_x0
            x_next = torch.cat([x_next, previous_x0], dim=1)
        h = self.stem(x_next) + image_features
        skips = []
        for level, blocks in enumerate(self.down):
            for blk in cast(nn.ModuleList, blocks):  # each level's blocks (built in __init__)
                h = blk(h, t_emb, z_emb)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        for blk in self.middle:
            h = blk(h, t_emb, z_emb)
        for i, blocks in enumerate(self.up):
            level = len(self.down) - 1 - i
            for j, blk in enumerate(cast(nn.ModuleList, blocks)):
                if j == 0:
                    h = torch.cat([h, skips[level]], dim=1)
                h = blk(h, t_emb, z_emb)
            if level > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                h = self.upsample[i](h)
        return torch.tanh(self.out(F.silu(self.out_norm(h))))


def pair_inputs(x_t: torch.Tensor, x_next: torch.Tensor, image: torch.Tensor | None, with_image: bool) -> torch.Tensor:
    """A discriminator's input: the pair (x_t, x_{t+1}) and, `with_image`, the image (broadcast over the batch)."""
    if not with_image:
        return torch.cat([x_t, x_next], dim=1)
    if image is None:
        raise ValueError("this discriminator judges a mask against its image; pass the image")
    if image.shape[0] != x_t.shape[0]:
        image = image.expand(x_t.shape[0], -1, -1, -1)
    return torch.cat([x_t, x_next, image.to(x_t.dtype)], dim=1)


class MinibatchStddev(nn.Module):
    """Appends the mean across-batch standard deviation as one extra feature channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 2:
            std = torch.zeros_like(x[:, :1])
        else:
            std = x.std(dim=0, unbiased=False).mean().expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, std], dim=1)


class Discriminator(nn.Module):
    """D(x_t, x_{t+1}, t[, image]) -> score; its middle features give cDAL's spatial attention map."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.config = config
        self.time = TimeEmbedding(c.time_dim)
        inputs = 2 * c.label_channels + (c.image_channels if c.disc_image else 0)
        self.stem = nn.Conv2d(inputs, c.disc_width, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.time_proj = nn.ModuleList()
        cur = c.disc_width
        for level in range(c.disc_levels):
            width = c.disc_width * min(2 ** (level + 1), 8)
            self.time_proj.append(nn.Linear(c.time_dim, cur))
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(cur, width, 3, padding=1),
                    nn.LeakyReLU(0.2),
                    nn.Conv2d(width, width, 3, stride=2, padding=1),
                    nn.LeakyReLU(0.2),
                )
            )
            cur = width
        self.stddev = MinibatchStddev()
        self.final = nn.Sequential(nn.Conv2d(cur + 1, cur, 3, padding=1), nn.LeakyReLU(0.2))
        self.head = nn.Linear(cur, 1)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # as G: 1.5x faster on the CPU

    def _inputs(self, x_t: torch.Tensor, x_next: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        return pair_inputs(x_t, x_next, image, self.config.disc_image)

    def features(
        self, x_t: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the convolutional trunk; return (last features, the attention tap)."""
        t_emb = self.time(t)
        h = F.leaky_relu(self.stem(self._inputs(x_t, x_next, image)), 0.2)
        tap = h
        for level, (blk, proj) in enumerate(zip(self.blocks, self.time_proj, strict=True)):
            h = blk(h + proj(t_emb)[:, :, None, None])
            if level + 1 == self.config.disc_attention_level:
                tap = h
        return h, tap

    def score_map(
        self, x_t: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """D's logit per place, (B, 1, h, w): its linear head before the spatial mean (their mean is D)."""
        h, _ = self.features(x_t, x_next, t, image)
        h = self.final(self.stddev(h))
        return F.conv2d(h, self.head.weight[:, :, None, None], self.head.bias)

    def forward(
        self, x_t: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.score_map(x_t, x_next, t, image).mean(dim=(1, 2, 3))

    def attention(
        self, x_t: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Spatial attention A: the tap's channel mean, upsampled bilinearly to the label size."""
        _, tap = self.features(x_t, x_next, t, image)
        att = tap.mean(dim=1, keepdim=True)
        att = F.interpolate(att, size=x_t.shape[-2:], mode="bilinear", align_corners=False)
        if self.config.attention_scaling == "minmax":
            lo = att.amin(dim=(2, 3), keepdim=True)
            hi = att.amax(dim=(2, 3), keepdim=True)
            att = (att - lo) / (hi - lo).clamp_min(1e-6)
        return att

    def suspicion(
        self, kind: str, x_t: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A map (B, 1, H, W) of where D finds the pair x_t, x_{t+1} made up, by `kind` (DISC_KINDS["trunk"]).

        channel_mean is cDAL's attention A; score_map is minus D's logit per place; score_gradient
        is the size of the gradient of D's loss softplus(-D) with respect to x_t, per pixel.
        """
        if kind == "channel_mean":
            return self.attention(x_t, x_next, t, image)
        if kind == "score_map":
            logits = self.score_map(x_t, x_next, t, image)
            return F.interpolate(-logits, size=x_t.shape[-2:], mode="bilinear", align_corners=False)
        if kind == "score_gradient":
            with torch.enable_grad():
                probe = x_t.detach().requires_grad_(True)
                loss = F.softplus(-self(probe, x_next.detach(), t, image)).sum()
                (grad,) = torch.autograd.grad(loss, probe)
            return grad.abs().sum(dim=1, keepdim=True)
        raise ValueError(f"unknown attention map {kind!r}")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
