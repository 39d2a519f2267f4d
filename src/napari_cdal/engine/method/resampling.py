"""The model's pixel grid: an image's size on it (by µm/px or by its longer side) and resampling onto it and back."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.io.images import ImageError


def resample(array: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a (B, C, H, W) tensor; area averaging when shrinking, bilinear when enlarging."""
    if tuple(array.shape[-2:]) == tuple(size):
        return array
    shrinking = size[0] < array.shape[-2] and size[1] < array.shape[-1]
    if mode == "bilinear" and shrinking:
        return F.interpolate(array, size=size, mode="area")
    return F.interpolate(array, size=size, mode=mode, align_corners=False if mode == "bilinear" else None)


def model_size(height: int, width: int, image_mpp: float, model_mpp: float) -> tuple[int, int]:
    """Size of an image once resampled from its µm/px to the model's."""
    if image_mpp <= 0:
        raise ImageError(f"µm/px must be positive, got {image_mpp}")
    factor = image_mpp / model_mpp
    return max(1, round(height * factor)), max(1, round(width * factor))


def model_grid(height: int, width: int, image_mpp: float, config: ModelConfig) -> tuple[int, int]:
    """Size of an image on the model's grid (ModelConfig.grid_factor): what the networks see of it."""
    if not config.model_side:
        return model_size(height, width, image_mpp, config.model_mpp)
    factor = config.grid_factor(height, width, image_mpp)
    return max(1, round(height * factor)), max(1, round(width * factor))
