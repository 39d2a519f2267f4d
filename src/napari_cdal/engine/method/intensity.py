"""Intensities for the networks: the per-image stretch of grayscale scans and the per-channel standardising."""

from __future__ import annotations

import numpy as np
import torch

from napari_cdal.engine.config import ModelConfig


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
