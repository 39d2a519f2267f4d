"""Reading and checking images, and the one normalisation path shared by train, fine-tune and segment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig

MAX_PIXELS = 40_000 * 40_000


class ImageError(ValueError):
    """An input image that cannot be segmented as it is; the message says why and what to do."""


def read_image(path: str | Path) -> np.ndarray:
    """Read a TIFF/PNG/JPEG file into an array, with a one-line error for missing or unreadable files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    except Exception as exc:  # any decoder error means "not an image we can read"
        raise ImageError(f"cannot read {path} as an image ({type(exc).__name__}: {exc})") from exc


def to_rgb_float(image: np.ndarray, channels: int = 3, name: str = "image") -> np.ndarray:
    """Check an image and return it as float32 H x W x channels on the 0..255 scale.

    Accepts H x W (grayscale), H x W x 1/3/4 (RGBA drops an opaque alpha) and channel-first
    3 x H x W; integer images are scaled by their dtype's range, float images in [0, 1] by 255.
    """
    arr = np.asarray(image)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageError(f"{name} has dtype {arr.dtype}; expected an integer or float image")
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ImageError(
            f"{name} has shape {arr.shape}; expected a 2-D image (H x W, or H x W x 3 for RGB). "
            "For a stack, segment one plane at a time"
        )
    if arr.shape[-1] == 4:
        alpha = arr[..., 3]
        if alpha.min() != alpha.max():
            raise ImageError(f"{name} is RGBA with a varying alpha channel; flatten it to RGB first")
        arr = arr[..., :3]
    if arr.shape[-1] not in (1, 3):
        raise ImageError(f"{name} has {arr.shape[-1]} channels; expected 1 (grayscale) or 3 (RGB)")
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ImageError(f"{name} is empty (shape {arr.shape})")
    if height * width > MAX_PIXELS:
        raise ImageError(f"{name} has {height}x{width} pixels, more than this tool handles at once; crop it")
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        scale = 255.0 / float(info.max) if info.max > 255 else 1.0
        out = arr.astype(np.float32) * scale
    else:
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise ImageError(f"{name} contains NaN or infinite values")
        if out.max() <= 1.0:
            out = out * 255.0
        out = np.clip(out, 0.0, 255.0)
    if out.shape[-1] != channels:
        out = np.repeat(out, 3, axis=-1) if channels == 3 else out.mean(axis=-1, keepdims=True)
    return out


def normalise(images: torch.Tensor | np.ndarray, config: ModelConfig) -> torch.Tensor:
    """(B, C, H, W) images on the 0..255 scale -> per-channel standardised float32 tensor."""
    x = torch.as_tensor(images, dtype=torch.float32)
    mean = torch.tensor(config.image_mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(config.image_std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


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
