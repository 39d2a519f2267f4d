"""A slide read on demand: pyramidal or tiled TIFF, OME-TIFF, SVS and NDPI through tifffile's zarr view (no torch).

A region is read from the strips or tiles it touches, each decoded whole. Tiles are small; a strip
is the slide's whole width, and some exporters write the whole image in one (deflate) strip, which
every block would then decode whole: such a file is refused from its header (check_read_by_region),
with the fix. Uncompressed pixels that lie in one piece are mapped from the file instead, so any
region of them is read directly, however the file cuts them into strips.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_cdal.engine.io.images import ImageError

SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf")

SLIDE_MIN_PIXELS = 4096 * 4096
"""From this size on (or for .svs/.ndpi), an image is a slide: read and segmented block by block."""

MAX_CHUNK_BYTES = 256 * 2**20
"""The most one strip or tile of a slide may hold, decoded. A block decodes every strip or tile it touches whole, so
a larger one (a 36,000² image in one deflate strip: 3.6 GiB) would cost each block that much memory and time, over
and over; a block's own segmentation takes about 0.5 GB."""

RESAVE_HINT = (
    "re-save it as a tiled pyramidal TIFF, e.g. with `vips tiffsave {name} {stem}_tiled.tif --tile "
    "--pyramid --compression jpeg` or QuPath's export"
)
"""How to make any image a slide this tool reads region by region."""


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
        count = len(self._series.levels) if self._series is not None else 1
        return [self._array, *(_level_array(self.path, self._series, k) for k in range(1, count))]

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


def largest_chunk_bytes(page: Any) -> int:
    """What a page's largest strip or tile holds decoded, in bytes: a strip is the page's whole width, and an image
    in one strip is the whole image."""
    return math.prod(page.chunks) * page.dtype.itemsize


def _level_array(path: Path, series: Any, level: int) -> Any:
    """A level of the slide as a lazy array: the file's bytes mapped when its pixels lie uncompressed in one piece,
    else tifffile's zarr view, which decodes the strips or tiles a read touches (strips one at a time: each is as
    wide as the level)."""
    import tifffile
    import zarr

    part = series.levels[level]
    if part.dataoffset is not None:
        return tifffile.memmap(path, series=0, level=level, mode="r")
    strips = not part.keyframe.is_tiled
    return zarr.open(series.aszarr(level=level, maxworkers=1 if strips else None), mode="r")


def check_read_by_region(path: Path, series: Any) -> None:
    """Refuse a slide whose level 0 a block cannot read by region: compressed strips or tiles over MAX_CHUNK_BYTES."""
    from napari_cdal.engine.checks import byte_size

    level = series.levels[0]
    page = level.keyframe
    size = largest_chunk_bytes(page)
    if level.dataoffset is not None or size <= MAX_CHUNK_BYTES:
        return
    pieces = (
        "one compressed strip of"
        if len(page.dataoffsets) == 1
        else f"compressed {'tiles' if page.is_tiled else 'strips'} of up to"
    )
    raise ImageError(
        f"{path} holds its {page.imagelength} x {page.imagewidth} pixels in {pieces} {byte_size(size)} "
        f"decoded, too large to decode whole for every block (the most is {byte_size(MAX_CHUNK_BYTES)}); "
        + RESAVE_HINT.format(name=path.name, stem=path.stem)
    )


def open_slide(path: str | Path) -> SlideSource:
    """Open level 0 of a slide lazily; nothing but the header is read until `read` is called."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"slide file not found: {path}")
    if path.suffix.lower() not in SLIDE_SUFFIXES:
        raise ImageError(
            f"{path} cannot be read region by region as a slide ({', '.join(SLIDE_SUFFIXES)} can); "
            + RESAVE_HINT.format(name=path.name, stem=path.stem)
        )
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        mpp = _mpp_from_tags(series.pages[0])
    except Exception as exc:  # any parser error means "not a slide we can read"
        raise ImageError(f"cannot read {path} as a slide ({type(exc).__name__}: {exc})") from exc
    try:
        if axes not in ("YX", "YXS", "YXC"):
            raise ImageError(f"{path} has axes {axes} (shape {shape}); a slide must be one 2-D RGB or grey plane")
        check_read_by_region(path, series)
        array = _level_array(path, series, 0)
    except ImageError:
        tif.close()
        raise
    except Exception as exc:  # the pixels' layout is one tifffile cannot map or view
        tif.close()
        raise ImageError(f"cannot read {path} as a slide ({type(exc).__name__}: {exc})") from exc
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
            if not isinstance(page, tifffile.TiffPage):  # no first page to judge by: not a slide
                return False
            large = page.is_tiled and int(page.imagelength) * int(page.imagewidth) >= SLIDE_MIN_PIXELS
            return len(series.levels) > 1 or large
    except Exception:  # not a TIFF tifffile can parse: let another reader say why
        return False
