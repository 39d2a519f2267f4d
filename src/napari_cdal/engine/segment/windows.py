"""Overlapping windows of at most WINDOW_PX with smooth (raised-cosine) blending, so any image size can be segmented.

A window is one network pass's part of an image; a tile is an image of a data set (MoNuSeg's 1000 x 1000 px).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

WINDOW_PX = 512
"""Largest side of one network pass, in model pixels; a larger image is cut into windows (window_boxes)."""

Box = tuple[int, int, int, int]
"""A half-open pixel rectangle (y0, y1, x0, x1): windows, corrected regions, held-back strips, slide blocks."""


def as_box(values: Iterable[float]) -> Box:
    """Four numbers (an array's row, a CSV's columns) as a Box of integers; a ValueError unless there are four."""
    y0, y1, x0, x1 = (int(v) for v in values)
    return (y0, y1, x0, x1)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _spans(length: int, window: int, overlap: int, multiple: int) -> tuple[list[int], int]:
    """Starts and size of the fewest spans of at most `window` px covering `length` with neighbours overlapping by at
    least `overlap` px, all of one size (a multiple of `multiple` where it fits), spread evenly."""
    if length <= window:
        return [0], length
    count = -(-(length - overlap) // (window - overlap))
    size = -(-(length + (count - 1) * overlap) // count)
    size = min(window, length, -(-size // multiple) * multiple)
    return [i * (length - size) // (count - 1) for i in range(count)], size


def window_boxes(height: int, width: int, window: int, overlap: int, multiple: int = 1) -> list[Box]:
    """Boxes (y0, y1, x0, x1) covering the image: the fewest per axis of at most window x window px, all of one size.

    Neighbours overlap by at least ``overlap`` pixels, spread evenly, so no window is mostly a copy of
    its neighbour (a fixed stride with the last box shifted back computed up to 1.5x the pixels).
    The size is rounded up to a multiple of ``multiple`` where that still fits (the network's, so
    that no window is padded), and is the full extent where the image is smaller than a window.
    Row-major order.
    """
    height = _check_int("window_boxes: height", height, 1)
    width = _check_int("window_boxes: width", width, 1)
    window = _check_int("window_boxes: window", window, 1)
    overlap = _check_int("window_boxes: overlap", overlap, 0)
    multiple = _check_int("window_boxes: multiple", multiple, 1)
    if overlap >= window:
        raise ValueError(f"window_boxes: overlap ({overlap}) must be smaller than window ({window}); lower the overlap")
    ys, window_h = _spans(height, window, overlap, multiple)
    xs, window_w = _spans(width, window, overlap, multiple)
    return [(y0, y0 + window_h, x0, x0 + window_w) for y0 in ys for x0 in xs]


def _ramp_1d(length: int, ramp: int) -> np.ndarray:
    """1 in the middle, raised cosine down to a small positive value over ``ramp`` px per end."""
    pos = np.arange(length, dtype=np.float64)
    dist = np.minimum(pos, length - 1 - pos)
    if ramp <= 0:
        return np.ones(length, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(np.pi * (np.minimum(dist, ramp - 1) + 0.5) / ramp)
    w[dist >= ramp] = 1.0
    return w


def blend_window(height: int, width: int, overlap: int) -> np.ndarray:
    """Float32 weights > 0: 1 in the centre, raised-cosine ramp over ``overlap // 2`` px per edge.

    The corner weight is about ``(pi / (4 * ramp))**4``, never 0, so image borders covered by one
    window only are reproduced exactly. Sides shorter than ``2 * ramp`` peak below 1.
    """
    height = _check_int("blend_window: height", height, 1)
    width = _check_int("blend_window: width", width, 1)
    overlap = _check_int("blend_window: overlap", overlap, 0)
    ramp = overlap // 2
    return np.outer(_ramp_1d(height, ramp), _ramp_1d(width, ramp)).astype(np.float32)


class WindowBlender:
    """Accumulate per-window predictions (C, h, w) into a (C, H, W) weighted mean with blend windows.

    Sums are kept in float64 so a constant field comes back exactly (memory: 8 * (C + 1) * H * W B).
    """

    def __init__(self, channels: int, height: int, width: int, overlap: int) -> None:
        self.channels = _check_int("WindowBlender: channels", channels, 1)
        self.height = _check_int("WindowBlender: height", height, 1)
        self.width = _check_int("WindowBlender: width", width, 1)
        self.overlap = _check_int("WindowBlender: overlap", overlap, 0)
        self._sum = np.zeros((self.channels, self.height, self.width), dtype=np.float64)
        self._weight = np.zeros((self.height, self.width), dtype=np.float64)
        self._windows: dict[tuple[int, int], np.ndarray] = {}

    def _window(self, h: int, w: int) -> np.ndarray:
        key = (h, w)
        if key not in self._windows:
            self._windows[key] = blend_window(h, w, self.overlap).astype(np.float64)
        return self._windows[key]

    def add(self, box: Box, values: np.ndarray) -> None:
        """Add the prediction ``values`` (C, y1-y0, x1-x0) of window ``box`` = (y0, y1, x0, x1)."""
        if len(box) != 4:
            raise ValueError(f"WindowBlender.add: box must be (y0, y1, x0, x1), got {box!r}")
        y0, y1, x0, x1 = (int(v) for v in box)
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise ValueError(
                f"WindowBlender.add: box {tuple(box)!r} is empty or outside the {self.height}x"
                f"{self.width} image; use boxes from window_boxes({self.height}, {self.width}, ...)"
            )
        values = np.asarray(values)
        expected = (self.channels, y1 - y0, x1 - x0)
        if values.shape != expected:
            raise ValueError(
                f"WindowBlender.add: values for box {tuple(box)!r} have shape {values.shape}, "
                f"expected {expected} (channels, box height, box width)"
            )
        win = self._window(y1 - y0, x1 - x0)
        self._sum[:, y0:y1, x0:x1] += values * win
        self._weight[y0:y1, x0:x1] += win

    def result(self) -> np.ndarray:
        """Final (C, H, W) float32 weighted mean; raises if some pixel was never covered."""
        if not np.all(self._weight > 0):
            missing = int(np.count_nonzero(self._weight <= 0))
            raise ValueError(
                f"WindowBlender.result: {missing} pixels were covered by no window; add every box of "
                f"window_boxes({self.height}, {self.width}, ...)"
            )
        return (self._sum / self._weight).astype(np.float32)
