"""A slide read on demand: pyramidal or tiled TIFF, OME-TIFF, SVS and NDPI through tifffile's zarr view (no torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_cdal.engine.io.images import ImageError

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf")

SLIDE_MIN_PIXELS = 4096 * 4096
"""From this size on (or for .svs/.ndpi), an image is a slide: read and segmented block by block."""


@dataclass
class SlideSource:
    """Level 0 of a slide: its size, its µm per pixel when the file says, and regions read as asked."""

    path: Path
    height: int
    width: int
    mpp: float | None
    _array: Any
    _file: Any = None
    _series: Any = None

    def close(self) -> None:
        """Release the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SlideSource:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def levels(self) -> list[Any]:
        """Every level of the slide's pyramid as a lazy array, level 0 first (just level 0 without a pyramid)."""
        import zarr

        count = len(self._series.levels) if self._series is not None else 1
        return [self._array, *(zarr.open(self._series.aszarr(level=k), mode="r") for k in range(1, count))]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The pixels of rows y0..y1 and columns x0..x1 (clipped to the slide), read only from the tiles they touch."""
        y0, x0 = max(0, y0), max(0, x0)
        y1, x1 = min(self.height, y1), min(self.width, x1)
        return np.asarray(self._array[y0:y1, x0:x1])


def _mpp_from_tags(page: Any) -> float | None:
    """µm per pixel from Aperio's ImageDescription, OME's PhysicalSizeX, or the resolution tags."""
    description = str(getattr(page, "description", "") or "")
    found = re.search(r"MPP\s*=\s*([0-9.]+)", description)
    if found:
        return float(found.group(1))
    found = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', description)
    if found:
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', description)
        if unit is None or unit.group(1) in ("µm", "um", "micron"):
            return float(found.group(1))
    tag = page.tags.get("XResolution")
    unit = page.tags.get("ResolutionUnit")
    if tag is None or unit is None:
        return None
    numerator, denominator = tag.value
    per_unit = numerator / denominator if denominator else 0.0
    microns = {2: 25_400.0, 3: 10_000.0}.get(int(unit.value))
    if not per_unit or microns is None:
        return None
    mpp = microns / per_unit
    return mpp if 0.01 < mpp < 100 else None


def open_slide(path: str | Path) -> SlideSource:
    """Open level 0 of a slide lazily; nothing but the header is read until `read` is called."""
    import tifffile
    import zarr

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"slide file not found: {path}")
    if path.suffix.lower() not in SLIDE_SUFFIXES:
        raise ImageError(f"{path} is not a slide this tool reads; give one of {', '.join(SLIDE_SUFFIXES)}")
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        array = zarr.open(series.aszarr(level=0), mode="r")
        mpp = _mpp_from_tags(series.pages[0])
    except Exception as exc:  # any parser error means "not a slide we can read"
        raise ImageError(f"cannot read {path} as a slide ({type(exc).__name__}: {exc})") from exc
    if axes not in ("YX", "YXS", "YXC"):
        tif.close()
        raise ImageError(f"{path} has axes {axes} (shape {shape}); a slide must be one 2-D RGB or grey plane")
    return SlideSource(path, int(shape[0]), int(shape[1]), mpp, array, tif, series)


def is_slide_file(path: str | Path) -> bool:
    """True for .svs and .ndpi, and a TIFF that is pyramidal or tiled with SLIDE_MIN_PIXELS or more (header only)."""
    import tifffile

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".svs", ".ndpi"):
        return path.is_file()
    if suffix not in SLIDE_SUFFIXES or not path.is_file():
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = series.pages[0]
            large = page.is_tiled and int(page.imagelength) * int(page.imagewidth) >= SLIDE_MIN_PIXELS
            return len(series.levels) > 1 or large
    except Exception:  # not a TIFF tifffile can parse: let another reader say why
        return False
