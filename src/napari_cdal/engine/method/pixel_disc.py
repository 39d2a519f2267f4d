"""cDAL's discriminator as an error detector: an encoder-decoder that says, pixel by pixel, whether a mask is real.

The trunk discriminator of cDAL.md §3 ends in one score per pair; its finest map is coarser than a
nucleus. This one (`disc_kind = "pixel"`) keeps the U-Net GAN layout (Schönfeld et al., CVPR 2020):
an encoder, a decoder with skips back to the label's resolution, and a real/fake logit per pixel.
It sees the image beside the pair (x_t, x_{t+1}) and is trained as GCT's flaw detector (Ke et al.,
ECCV 2020): a fake pair's pixel is fake where G's estimate disagrees with the truth and
real elsewhere (`pixel_targets`), so its map is the belief that each pixel of the mask is wrong.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.method.networks import TimeEmbedding, pair_inputs

SLOPE = 0.2


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class PixelDiscriminator(nn.Module):
    """D(x_t, x_{t+1}, t, image) -> one real/fake logit per pixel; its mean over pixels is D's score."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        widths = [c.disc_width * min(2**level, 4) for level in range(c.disc_levels + 1)]
        self.time = TimeEmbedding(c.time_dim)
        self.stem = _conv(2 * c.label_channels + c.image_channels, widths[0])
        self.time_proj = nn.ModuleList([nn.Linear(c.time_dim, w) for w in widths[:-1]])
        self.down = nn.ModuleList(
            nn.Sequential(_conv(cin, cout, 2), nn.LeakyReLU(SLOPE), _conv(cout, cout), nn.LeakyReLU(SLOPE))
            for cin, cout in zip(widths[:-1], widths[1:], strict=True)
        )
        self.up = nn.ModuleList(
            nn.Sequential(_conv(deep + skip, skip), nn.LeakyReLU(SLOPE))
            for deep, skip in zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True)
        )
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # as G: faster convolutions

    def score_map(
        self, x_t: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The logit per pixel, (B, 1, H, W): positive where the pair looks real there, negative where made up."""
        t_emb = self.time(t)
        h = F.leaky_relu(self.stem(pair_inputs(x_t, x_next, image, with_image=True)), SLOPE)
        skips = []
        for block, proj in zip(self.down, self.time_proj, strict=True):
            h = h + proj(t_emb)[:, :, None, None]
            skips.append(h)
            h = block(h)
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        return self.head(h)

    def forward(
        self, x_t: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """D's score per pair, (B,): the mean of its logits (the GAN losses take this, as for the trunk D)."""
        return self.score_map(x_t, x_next, t, image).mean(dim=(1, 2, 3))

    def attention(
        self, x_t: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """cDAL's gate A in [0, 1] per pixel: D's belief that the mask is right there (sigmoid of the logit).

        A ⊙ x_0 keeps the label's signal where D trusts it and takes it away where D finds it wrong,
        so G has to find those places from the image.
        """
        return torch.sigmoid(self.score_map(x_t, x_next, t, image))

    def suspicion(
        self, kind: str, x_t: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A map (B, 1, H, W) of where D finds the mask wrong: `error_probability` (1 - sigmoid of its logit)
        or `score_map` (minus the logit)."""
        logits = self.score_map(x_t, x_next, t, image)
        if kind == "error_probability":
            return torch.sigmoid(-logits)
        if kind == "score_map":
            return -logits
        raise ValueError(f"the pixel discriminator has no attention map {kind!r}; it has error_probability, score_map")


def pixel_targets(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The per-pixel target of a fake pair: 0 (fake) where the thresholded estimate and the truth disagree, else 1.

    Both are label maps on the {-1, +1} scale (B, C, H, W); the foreground channel decides (the mask
    a user sees), so the target is (B, 1, H, W): one minus the XOR of `estimate > 0` and `truth > 0`.
    """
    wrong = (estimate[:, :1] > 0) ^ (truth[:, :1] > 0)
    return (~wrong).to(estimate.dtype)
