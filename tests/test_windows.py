"""Tests for napari_cdal.engine.segment.windows: box layout, blend weights and seamless blending."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_cdal.engine.segment.windows import WindowBlender, blend_window, window_boxes

CASES = [
    (100, 100, 32, 8),
    (64, 64, 64, 16),
    (65, 63, 64, 16),
    (300, 17, 128, 32),
    (10, 10, 32, 8),
    (1, 200, 16, 0),
    (257, 511, 256, 255),
]


@pytest.mark.parametrize("height,width,window,overlap", CASES)
def test_boxes_cover_every_pixel_with_right_sizes(height: int, width: int, window: int, overlap: int) -> None:
    boxes = window_boxes(height, width, window, overlap)
    cover = np.zeros((height, width), dtype=int)
    sizes = {(y1 - y0, x1 - x0) for y0, y1, x0, x1 in boxes}
    assert len(sizes) == 1, "every window has one size"
    ((window_h, window_w),) = sizes
    assert window_h <= min(window, height) and window_w <= min(window, width)
    for y0, y1, x0, x1 in boxes:
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    assert len(set(boxes)) == len(boxes)
    for starts, length, size in (
        (sorted({b[0] for b in boxes}), height, window_h),
        (sorted({b[2] for b in boxes}), width, window_w),
    ):
        fewest = 1 if length <= window else -(-(length - overlap) // (window - overlap))
        assert len(starts) == fewest
        assert starts[0] == 0 and starts[-1] + size == length
        gaps = np.diff(starts)
        assert all(size - gap >= overlap for gap in gaps)  # neighbours overlap by at least `overlap`
        assert np.ptp(gaps) <= 1 if len(gaps) else True  # spread evenly


def test_even_windows_compute_fewer_pixels_than_a_fixed_stride() -> None:
    boxes = window_boxes(1152, 1152, 512, 64, multiple=16)
    assert len(boxes) == 9 and {(y1 - y0, x1 - x0) for y0, y1, x0, x1 in boxes} == {(432, 432)}
    assert 9 * 432 * 432 < 0.72 * 9 * 512 * 512


def test_boxes_exact_layout() -> None:
    assert window_boxes(10, 4, 4, 1) == [(0, 4, 0, 4), (3, 7, 0, 4), (6, 10, 0, 4)]
    assert window_boxes(5, 6, 8, 2) == [(0, 5, 0, 6)]
    assert window_boxes(12, 12, 6, 2) == [
        (0, 6, 0, 6),
        (0, 6, 3, 9),
        (0, 6, 6, 12),
        (3, 9, 0, 6),
        (3, 9, 3, 9),
        (3, 9, 6, 12),
        (6, 12, 0, 6),
        (6, 12, 3, 9),
        (6, 12, 6, 12),
    ]
    assert window_boxes(40, 20, 32, 8, multiple=8) == [(0, 24, 0, 20), (16, 40, 0, 20)]


@pytest.mark.parametrize(
    "args,word",
    [
        ((10, 10, 8, 8), "overlap"),
        ((10, 10, 8, 9), "overlap"),
        ((10, 10, 8, -1), "overlap"),
        ((0, 10, 8, 2), "height"),
        ((10, 10, 0, 0), "window"),
        ((10, 10.5, 8, 2), "width"),
    ],
)
def test_boxes_reject_bad_arguments(args: tuple, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        window_boxes(*args)


def test_blend_window_shape_and_profile() -> None:
    win = blend_window(64, 48, 32)
    assert win.shape == (64, 48) and win.dtype == np.float32
    assert win.min() > 0 and win.max() == 1
    ramp = 16
    np.testing.assert_array_equal(win[ramp:-ramp, ramp:-ramp], 1)
    np.testing.assert_allclose(win, win[::-1], atol=1e-7)
    np.testing.assert_allclose(win, win[:, ::-1], atol=1e-7)
    edge = win[:ramp, 24].astype(np.float64)
    assert np.all(np.diff(edge) > 0)
    assert edge[0] < 0.01
    expected = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
    np.testing.assert_allclose(edge, expected, rtol=1e-5)
    # Separable: corners are products of the edge profiles.
    np.testing.assert_allclose(win[0, 0], edge[0] ** 2, rtol=1e-5)


def test_blend_window_no_overlap_and_tiny_sizes() -> None:
    np.testing.assert_array_equal(blend_window(5, 7, 0), np.ones((5, 7), np.float32))
    np.testing.assert_array_equal(blend_window(5, 7, 1), np.ones((5, 7), np.float32))
    small = blend_window(3, 1, 40)
    assert small.shape == (3, 1) and small.min() > 0


def _run(field: np.ndarray, window: int, overlap: int, model=lambda x: x) -> np.ndarray:
    c, h, w = field.shape
    blender = WindowBlender(c, h, w, overlap)
    for y0, y1, x0, x1 in window_boxes(h, w, window, overlap):
        blender.add((y0, y1, x0, x1), model(field[:, y0:y1, x0:x1]))
    return blender.result()


def test_constant_field_is_reproduced_exactly() -> None:
    values = np.array([0.3, -1.7, 123.456], dtype=np.float32)
    field = np.broadcast_to(values[:, None, None], (3, 70, 90)).copy()
    out = _run(field, 32, 12)
    assert out.dtype == np.float32 and out.shape == (3, 70, 90)
    np.testing.assert_array_equal(out, field)


@pytest.mark.parametrize("height,width,window,overlap", [(200, 173, 64, 16), (50, 300, 128, 64), (20, 30, 64, 8)])
def test_identity_model_reproduces_smooth_field(height: int, width: int, window: int, overlap: int) -> None:
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.normal(size=(2, height, width)), (0, 4, 4)).astype(np.float32)
    out = _run(field, window, overlap)
    np.testing.assert_allclose(out, field, atol=1e-6, rtol=0)


def test_differing_predictions_blend_without_seam() -> None:
    height, width, window, overlap = 32, 96, 64, 32
    boxes = window_boxes(height, width, window, overlap)
    assert boxes == [(0, 32, 0, 64), (0, 32, 32, 96)]
    blender = WindowBlender(1, height, width, overlap)
    blender.add(boxes[0], np.zeros((1, 32, 64), np.float32))
    blender.add(boxes[1], np.ones((1, 32, 64), np.float32))
    out = blender.result()[0]
    assert np.all(out >= 0) and np.all(out <= 1)
    np.testing.assert_array_equal(out[:, :32], 0)  # only the first window
    np.testing.assert_array_equal(out[:, 64:], 1)  # only the second window
    row = out[16].astype(np.float64)
    steps = np.diff(row)
    assert np.all(steps >= -1e-7)  # monotone
    assert steps.max() < 0.15  # no seam: a hard cut would jump by 1
    assert 0.05 < row[40] < 0.95 and 0.05 < row[56] < 0.95
    np.testing.assert_allclose(out, out[:1].repeat(32, axis=0), atol=1e-6)


def test_result_needs_full_coverage() -> None:
    field = np.arange(2 * 40 * 50, dtype=np.float32).reshape(2, 40, 50)
    boxes = window_boxes(40, 50, 32, 8)
    blender = WindowBlender(2, 40, 50, 8)
    y0, y1, x0, x1 = boxes[0]
    blender.add(boxes[0], field[:, y0:y1, x0:x1])
    with pytest.raises(ValueError, match="covered by no window"):
        blender.result()
    for y0, y1, x0, x1 in boxes[1:]:
        blender.add((y0, y1, x0, x1), field[:, y0:y1, x0:x1])
    np.testing.assert_allclose(blender.result(), field, rtol=1e-6)


def test_blender_rejects_bad_input() -> None:
    blender = WindowBlender(2, 40, 50, 8)
    with pytest.raises(ValueError, match="shape"):
        blender.add((0, 32, 0, 32), np.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="outside"):
        blender.add((10, 42, 0, 32), np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="channels"):
        WindowBlender(0, 40, 50, 8)
