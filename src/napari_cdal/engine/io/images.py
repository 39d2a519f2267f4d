"""Image files: their headers, their pixels, and the one path from any pixel type to RGB on 0..255 (no torch)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_PIXELS = 40_000 * 40_000
"""The most pixels an image read whole may have (about 5 GB as RGB); a slide, read block by block, has no cap."""


class ImageError(ValueError):
    """An input image that cannot be segmented as it is; the message says why and what to do."""


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


BIT_DEPTHS = (8, 10, 12, 14, 16, 24, 32)
"""Bit depths a camera or scanner stores in a wider integer type (12-bit data in uint16, say)."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself before its pixels are read."""

    shape: tuple[int, ...]
    dtype: np.dtype


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs a warning per damaged tag; our one-line error says it all."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(f"{path} is not a supported image file; give one of {', '.join(IMAGE_SUFFIXES)}")


def read_header(path: str | Path) -> ImageHeader:
    """An image file's shape and dtype from its header alone, so its size is known before reading it.

    A cut-off file is named here, before any work: a TIFF's strips must fit in the file, a PNG's
    chunks are walked (without decoding).
    """
    return _parse_header(Path(path), verify=True)


def _parse_header(path: Path, verify: bool) -> ImageHeader:
    """The header; with `verify` a PNG/JPEG is also walked for damage (read_image's decoding finds it anyway)."""
    _check_file(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
                series = tif.series[0] if tif.series else None
                if series is None or not series.shape or 0 in series.shape:
                    raise ImageError(f"{path} is truncated or damaged: its header describes no image")
                ends = [offset + count for page in series.pages if page is not None
                        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True)]
                size = path.stat().st_size
                if ends and max(ends) > size:
                    raise ImageError(f"{path} is truncated: its header promises {_shape(tuple(series.shape))} "
                                     f"pixels in {max(ends)} bytes, the file has {size}")
                return ImageHeader(tuple(series.shape), np.dtype(series.dtype))
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
            bands = len(im.getbands())
            mode = im.mode
    except ImageError:
        raise
    except Exception as exc:  # any parser error means "not an image we can read"
        raise ImageError(f"cannot read {path} as an image ({type(exc).__name__}: {_first_line(exc)})") from exc
    if verify:
        try:
            with Image.open(path) as im:
                im.verify()  # walks the file's chunks without decoding: a cut-off PNG fails here
        except Exception as exc:
            raise ImageError(f"{path} is truncated or damaged ({type(exc).__name__}: {_first_line(exc)})") from exc
    dtype = np.dtype(np.uint16 if mode.startswith("I;16") else np.int32 if mode == "I"
                     else np.float32 if mode == "F" else bool if mode == "1" else np.uint8)
    return ImageHeader((height, width) if bands == 1 else (height, width, bands), dtype)


def plane_size(header: ImageHeader, name: str = "image") -> tuple[int, int]:
    """Height and width of the one 2-D plane an image file must hold (H x W, H x W x C or C x H x W)."""
    shape = header.shape
    if len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (1, 3, 4):
        shape = (*shape[1:], shape[0])
    if len(shape) == 3 and shape[-1] not in (1, 3, 4):
        raise ImageError(f"{name} has shape {shape}: {shape[-1]} channels; expected 1 (grayscale) or 3 (RGB)")
    if len(shape) not in (2, 3):
        raise ImageError(f"{name} has shape {shape}; expected a 2-D image (H x W, or H x W x 3 for RGB). "
                         "For a stack, segment one plane at a time")
    height, width = shape[:2]
    if height == 0 or width == 0:
        raise ImageError(f"{name} is empty (shape {header.shape})")
    return int(height), int(width)


def check_read_whole(height: int, width: int, name: str = "image") -> None:
    """Refuse an image too large to hold in memory at once (MAX_PIXELS); slides are read block by block instead."""
    if height * width > MAX_PIXELS:
        raise ImageError(f"{name} has {height}x{width} pixels, more than this tool reads at once; crop it, or "
                         "save it as a tiled TIFF, which is segmented block by block as a slide")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def read_image(path: str | Path) -> np.ndarray:
    """Read a TIFF/PNG/JPEG file into an array, with a one-line error for missing, damaged or cut-off files."""
    path = Path(path)
    header = _parse_header(path, verify=False)  # decoding below finds a damaged PNG: no second walk of it
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with _quiet_tifffile():
                pixels = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                pixels = np.asarray(im)
    except Exception as exc:  # a decoder error past a good header: the file is cut off or damaged
        raise ImageError(f"{path} is truncated or damaged: its header promises {_shape(header.shape)} pixels "
                         f"but they cannot be decoded ({type(exc).__name__}: {_first_line(exc)})") from exc
    if pixels.size == 0 or pixels.shape != header.shape:
        raise ImageError(f"{path} is truncated or damaged: its header promises {_shape(header.shape)} pixels, "
                         f"the file holds {_shape(pixels.shape)}")
    return pixels


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(n) for n in shape) or "no"


def integer_bit_depth(image: np.ndarray) -> int:
    """The bit depth integer pixels really use: the smallest of BIT_DEPTHS (up to the dtype's) holding the maximum.

    12-bit camera data stored in uint16 reaches 4095, not 65535; scaling it by the dtype would
    leave the image nearly black.
    """
    usable = int(np.iinfo(image.dtype).max).bit_length()  # a signed type's sign bit holds no brightness
    top = int(image.max()) if image.size else 0
    for bits in BIT_DEPTHS:
        if bits >= usable or top <= (1 << bits) - 1:
            return min(bits, usable)
    return usable


def to_rgb_float(image: np.ndarray, channels: int = 3, name: str = "image",
                 bit_depth: int | None = None) -> np.ndarray:
    """Check an image and return it as float32 H x W x channels on the 0..255 scale.

    Accepts H x W (grayscale), H x W x 1/3/4 (RGBA drops an opaque alpha) and channel-first
    3 x H x W; integer images are scaled by their bit depth (`bit_depth`, else the one their
    maximum shows: integer_bit_depth), float images in [0, 1] by 255.
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
    check_read_whole(height, width, name)
    if np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.signedinteger) and int(arr.min()) < 0:
            raise ImageError(f"{name} has negative pixel values (min {int(arr.min())}); expected 0 or more")
        bits = integer_bit_depth(arr) if bit_depth is None else bit_depth
        top = float((1 << bits) - 1)
        out = arr.astype(np.float32) * (255.0 / top) if top > 255 else arr.astype(np.float32)
        out = np.clip(out, 0.0, 255.0)
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
