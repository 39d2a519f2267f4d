"""Stain augmentation of H&E patches (HED and colour jitter) and intensity jitter of grayscale ones, channels first."""

from __future__ import annotations

import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

_LOG_ADJUST = np.float32(np.log(1e-6))


_HED_FROM_RGB_T = np.ascontiguousarray(hed_from_rgb.T, dtype=np.float32)


_RGB_FROM_HED_T = np.ascontiguousarray(rgb_from_hed.T, dtype=np.float32)


def _check_image(image: np.ndarray, who: str) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"{who}: image must be an HxWx3 array on the 0..255 scale, got shape {shape}")


def hed_jitter_cf(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """HED jitter on a (3, N) float32 array on 0..255; returns a new (3, N) float32 array."""
    alpha = rng.uniform(1 - strength, 1 + strength, 3).astype(np.float32)
    beta = rng.uniform(-strength, strength, 3).astype(np.float32)
    rgb = np.maximum(x * np.float32(1 / 255), np.float32(1e-6))
    stains = _HED_FROM_RGB_T @ (np.log(rgb) / _LOG_ADJUST)
    stains = stains * alpha[:, None] + beta[:, None]
    out = np.exp(_RGB_FROM_HED_T @ (stains * _LOG_ADJUST))
    np.clip(out, 0, 1, out=out)
    out *= np.float32(255)
    return out


def _rgb_hue_shift_cf(x: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the HSV hue of a (3, N) float32 array (0..255) by ``shift`` turns."""
    r, g, b = x[0], x[1], x[2]
    v = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    delta = v - mn
    safe = np.where(delta > 0, delta, np.float32(1))
    h6 = np.where(v == r, g - b, np.where(v == g, (b - r) + 2 * delta, (r - g) + 4 * delta))
    h6 /= safe
    h6 += np.float32(6 * shift)
    h6 -= np.float32(6) * np.floor(h6 * np.float32(1 / 6))
    out = np.empty_like(x)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = h6 + np.float32(n)
        k -= np.float32(6) * (k >= 6)
        ramp = np.minimum(k, np.float32(4) - k)
        np.clip(ramp, 0, 1, out=ramp)
        ramp *= delta
        np.subtract(v, ramp, out=out[c])
    return out


_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def colour_jitter_cf(
    x: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.03,
) -> np.ndarray:
    """Brightness, contrast, saturation then HSV hue jitter on a (3, N) float32 array (0..255)."""
    fb = np.float32(rng.uniform(1 - brightness, 1 + brightness))
    fc = np.float32(rng.uniform(1 - contrast, 1 + contrast))
    fs = np.float32(rng.uniform(1 - saturation, 1 + saturation))
    dh = float(rng.uniform(-hue, hue))
    x = x * fb
    np.clip(x, 0, 255, out=x)
    mean = np.float32((_GRAY @ x).mean())
    x = (x - mean) * fc + mean
    np.clip(x, 0, 255, out=x)
    gray = _GRAY @ x
    x = gray + (x - gray) * fs
    np.clip(x, 0, 255, out=x)
    if dh != 0.0:
        x = _rgb_hue_shift_cf(x, dh)
        np.clip(x, 0, 255, out=x)
    return x


def check_range(name: str, value: float, upper: float) -> None:
    """Raise a ValueError naming `name` unless `value` is a number in [0, upper] (a jitter's strength)."""
    if not (isinstance(value, (int, float)) and 0 <= value <= upper):
        raise ValueError(f"{name} must be a number in [0, {upper}], got {value!r}")


def hed_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.02) -> np.ndarray:
    """H&E stain augmentation: scale each HED channel by U(1-s, 1+s), shift by U(-s, s).

    scikit-image's rgb2hed/hed2rgb, minus rgb2hed's clamp of negative stains (which shifts up to
    ~10% of real H&E pixels by up to 100 levels), so strength 0 is the identity. HxWx3, 0..255.
    """
    _check_image(image, "hed_jitter")
    check_range("hed_jitter: strength", strength, 1.0)
    h, w, _ = image.shape
    x = np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32).reshape(3, -1)
    out = hed_jitter_cf(x, rng, strength)
    return np.ascontiguousarray(np.moveaxis(out.reshape(3, h, w), 0, -1))


def colour_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.03,
) -> np.ndarray:
    """Random brightness, contrast, saturation factors in U(1-x, 1+x) and an HSV hue shift.

    ``hue`` is a fraction of a full turn; input HxWx3 on 0..255, output float32 in [0, 255].
    """
    _check_image(image, "colour_jitter")
    for arg, value in (
        ("brightness", brightness),
        ("contrast", contrast),
        ("saturation", saturation),
    ):
        check_range(f"colour_jitter: {arg}", value, 1.0)
    check_range("colour_jitter: hue", hue, 0.5)
    h, w, _ = image.shape
    x = np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32).reshape(3, -1)
    out = colour_jitter_cf(x, rng, brightness, contrast, saturation, hue)
    return np.ascontiguousarray(np.moveaxis(out.reshape(3, h, w), 0, -1))


def intensity_jitter_cf(
    x: np.ndarray, rng: np.random.Generator, brightness: float = 0.15, contrast: float = 0.15, gamma: float = 0.2
) -> np.ndarray:
    """One brightness, contrast and gamma change for every channel of a (C, N) float32 array on 0..255.

    MRI and X-ray intensities have no stain to vary; scanners differ in gain, contrast and the
    curve between signal and grey level, so those are what the patches vary.
    """
    fb = np.float32(rng.uniform(1 - brightness, 1 + brightness))
    fc = np.float32(rng.uniform(1 - contrast, 1 + contrast))
    exponent = np.float32(np.exp(rng.uniform(-gamma, gamma)))
    mean = np.float32(x.mean())
    out = np.clip((x - mean) * fc + mean * fb, 0.0, 255.0)
    return np.float32(255.0) * (out / np.float32(255.0)) ** exponent


def degrade_cf(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a scanner or a lab does to a slide, on one (C, H, W) float32 image on 0..255: each of blur,
    noise, gamma and contrast with probability one half.

    The error discriminator learns from G's mistakes on such patches, which it did not fit.
    """
    from scipy import ndimage

    out = np.asarray(image, dtype=np.float32).copy()
    if rng.random() < 0.5:
        sigma = rng.uniform(0.3, 1.5)
        out = ndimage.gaussian_filter(out, (0, sigma, sigma))
    if rng.random() < 0.5:
        out = out + rng.normal(0.0, rng.uniform(2.0, 10.0), out.shape).astype(np.float32)
    if rng.random() < 0.5:
        out = np.float32(255.0) * (np.clip(out, 0.0, 255.0) / np.float32(255.0)) ** np.float32(rng.uniform(0.7, 1.4))
    if rng.random() < 0.5:
        mean = np.float32(out.mean())
        out = (out - mean) * np.float32(rng.uniform(0.6, 1.3)) + mean
    return np.clip(out, 0.0, 255.0).astype(np.float32)
