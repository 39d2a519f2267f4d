"""The model's pixel grid: standardising images for the networks and resampling between µm/px."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.io.images import ImageError


def normalise(images: torch.Tensor | np.ndarray, config: ModelConfig) -> torch.Tensor:
    """(B, C, H, W) images on the 0..255 scale -> per-channel standardised float32 tensor."""
    x = torch.as_tensor(images, dtype=torch.float32)
    mean = torch.tensor(config.image_mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(config.image_std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def stretch_intensity(values: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Grayscale intensities -> float32 0..255 by the config's per-image percentiles (H&E: unchanged).

    MRI has no fixed scale (one scanner's 100 is another's 3000), so each image or volume is
    stretched as a whole between its own low and high percentile, before `normalise`.
    """
    values = np.asarray(values, dtype=np.float32)
    if not config.intensity_percentiles:
        return values
    low, high = np.percentile(values, config.intensity_percentiles)
    span = float(high - low)
    if not np.isfinite(span) or span <= 0:
        return np.zeros_like(values)
    return np.clip((values - np.float32(low)) * np.float32(255.0 / span), 0.0, 255.0).astype(np.float32)


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
