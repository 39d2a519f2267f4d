"""Tests for engine.io.images, method.intensity and method.resampling: image checks, 0..255, normalising, µm/px."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_cdal.engine.config import PRESETS, ModelConfig
from napari_cdal.engine.io.images import ImageError, read_image, to_rgb_float
from napari_cdal.engine.method.intensity import normalise
from napari_cdal.engine.method.resampling import model_size

TINY = ModelConfig(**PRESETS["tiny"])


def _ramp(height=6, width=7, channels=None, dtype=np.uint8):
    size = height * width * (channels or 1)
    values = (np.arange(size) * 5) % 256
    shape = (height, width) if channels is None else (height, width, channels)
    return values.reshape(shape).astype(dtype)


# --- to_rgb_float: accepted layouts -------------------------------------------------------------


def test_grayscale_is_replicated_to_three_channels():
    gray = _ramp()
    out = to_rgb_float(gray)
    assert out.shape == (6, 7, 3)
    assert out.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray.astype(np.float32))


def test_grayscale_with_one_channel_axis():
    gray = _ramp(channels=1)
    out = to_rgb_float(gray)
    assert out.shape == (6, 7, 3)
    np.testing.assert_array_equal(out[..., 2], gray[..., 0].astype(np.float32))


def test_rgb_uint8_is_kept():
    rgb = _ramp(channels=3)
    out = to_rgb_float(rgb)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, rgb.astype(np.float32))


def test_rgba_with_opaque_alpha_drops_alpha():
    rgb = _ramp(channels=3)
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 255, np.uint8)], axis=-1)
    out = to_rgb_float(rgba)
    assert out.shape == (6, 7, 3)
    np.testing.assert_array_equal(out, rgb.astype(np.float32))


def test_channel_first_is_moved_last():
    rgb = _ramp(height=5, width=9, channels=3)
    out = to_rgb_float(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    assert out.shape == (5, 9, 3)
    np.testing.assert_array_equal(out, rgb.astype(np.float32))


def test_uint16_is_scaled_to_0_255():
    image = np.array([[0, 257, 257 * 100], [257 * 200, 65535, 0]], np.uint16)
    out = to_rgb_float(image)
    np.testing.assert_allclose(out[..., 0], [[0, 1, 100], [200, 255, 0]], rtol=1e-6, atol=1e-4)
    assert out.max() <= 255.0


def test_float_in_unit_range_is_scaled_by_255():
    image = np.array([[0.0, 0.5], [0.25, 1.0]], np.float32)
    out = to_rgb_float(image)
    np.testing.assert_allclose(out[..., 1], [[0.0, 127.5], [63.75, 255.0]], rtol=1e-6)


def test_float_in_0_255_is_kept():
    image = np.array([[0.0, 10.5], [128.0, 255.0]], np.float64)
    out = to_rgb_float(image)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], image, rtol=1e-6)


def test_one_output_channel_averages_rgb():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30, 60, 90
    out = to_rgb_float(rgb, channels=1)
    assert out.shape == (2, 2, 1)
    np.testing.assert_allclose(out, 60.0)


# --- to_rgb_float: rejected inputs --------------------------------------------------------------


@pytest.mark.parametrize(
    "image, words",
    [
        (np.ones((4, 4), bool), "dtype"),
        (np.zeros((2, 3, 8, 8), np.uint8), "shape"),
        (np.zeros((0, 0), np.uint8), "empty"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.array([[0.1, np.nan], [0.2, 0.3]], np.float32), "NaN"),
        (np.array([[0.1, np.inf], [0.2, 0.3]], np.float32), "infinite"),
        (np.zeros((8, 8, 2), np.uint8), "2 channels"),
        (np.zeros((8, 8, 5), np.uint8), "5 channels"),
        (np.array([["a", "b"]]), "dtype"),
    ],
    ids=["bool", "4d", "empty", "empty-rows", "nan", "inf", "two-channels", "five-channels", "strings"],
)
def test_bad_images_raise_image_error(image, words):
    with pytest.raises(ImageError, match=words) as info:
        to_rgb_float(image, name="my-image")
    assert "my-image" in str(info.value)
    assert "\n" not in str(info.value)


def test_rgba_with_varying_alpha_is_rejected():
    rgba = np.full((4, 4, 4), 200, np.uint8)
    rgba[0, 0, 3] = 10
    with pytest.raises(ImageError, match="alpha"):
        to_rgb_float(rgba)


def test_image_error_is_a_value_error():
    # the CLI and widgets catch ValueError; ImageError must stay one
    assert issubclass(ImageError, ValueError)


# --- normalise ----------------------------------------------------------------------------------


def test_normalise_matches_closed_form():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 3, 5, 4)).astype(np.float32)
    out = normalise(images, TINY)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (2, 3, 5, 4)
    mean = np.asarray(TINY.image_mean, np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(TINY.image_std, np.float64).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out.numpy(), (images - mean) / std, rtol=1e-5, atol=1e-5)


def test_normalise_of_the_mean_is_zero_and_accepts_tensors():
    pixel = torch.tensor(TINY.image_mean, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = normalise(pixel, TINY)
    np.testing.assert_allclose(out.numpy(), 0.0, atol=1e-5)
    one_std = pixel + torch.tensor(TINY.image_std).view(1, 3, 1, 1)
    np.testing.assert_allclose(normalise(one_std, TINY).numpy(), 1.0, atol=1e-5)


# --- model_size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        ((100, 200, 0.25, 0.5), (50, 100)),
        ((100, 200, 0.5, 0.5), (100, 200)),
        ((100, 60, 1.0, 0.5), (200, 120)),
        ((101, 33, 0.25, 0.5), (50, 16)),  # round half to even: 50.5 -> 50, 16.5 -> 16
        ((3, 3, 0.1, 0.5), (1, 1)),  # never below one pixel
    ],
)
def test_model_size(args, expected):
    assert model_size(*args) == expected


@pytest.mark.parametrize("mpp", [0.0, -0.25])
def test_model_size_rejects_non_positive_mpp(mpp):
    with pytest.raises(ImageError, match="positive"):
        model_size(10, 10, mpp, 0.5)


# --- read_image ---------------------------------------------------------------------------------


def test_read_image_missing_file(tmp_path):
    missing = tmp_path / "nope.tif"
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_image(missing)


def test_read_image_non_image_file(tmp_path):
    fake = tmp_path / "x.tif"
    fake.write_text("this is not a TIFF")
    with pytest.raises(ImageError, match="x.tif") as info:
        read_image(fake)
    assert "\n" not in str(info.value)
    fake_png = tmp_path / "y.png"
    fake_png.write_text("nor a PNG")
    with pytest.raises(ImageError, match="y.png"):
        read_image(fake_png)


def test_read_image_folder(tmp_path):
    folder = tmp_path / "dir.tif"
    folder.mkdir()
    with pytest.raises(ImageError, match="folder"):
        read_image(folder)


def test_read_image_round_trips_tiff_and_png(tmp_path):
    rgb = _ramp(height=8, width=10, channels=3)
    tifffile.imwrite(tmp_path / "a.tif", rgb)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    for name in ("a.tif", "a.png"):
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, rgb)
