"""Image files' pixels: read as viewers show them, and the one path from any pixel type to RGB on 0..255 (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_cdal.engine.io.headers import (
    EXIF_ORIENTATIONS,
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    PIL_IMAGE_MODES,
    ImageError,
    ImageHeader,
    check_read_whole,
    parse_header,
    plane_size,
    quiet_tifffile,
    read_header,
    shape_text,
)

__all__ = [
    "BIT_DEPTHS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "ImageError",
    "ImageHeader",
    "check_pixels",
    "check_read_whole",
    "cmyk_to_rgb",
    "float_span",
    "integer_bit_depth",
    "orient",
    "plane_size",
    "read_header",
    "read_image",
    "reading_notes",
    "to_rgb_float",
]
"""The header's names stay importable from here (engine/io/headers.py holds them)."""

BIT_DEPTHS = (8, 10, 12, 14, 16, 24, 32)
"""Bit depths a camera or scanner stores in a wider integer type (12-bit data in uint16, say)."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels as viewers show them, by an EXIF/TIFF orientation tag (1 to 8; Pillow's exif_transpose)."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(turned[orientation](pixels)) if orientation in turned else pixels


def cmyk_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """H x W x 4 CMYK inks (unsigned integers) as H x W x 3 RGB of the same type, as Pillow converts them:
    each channel is (1 - ink) x (1 - black), with no colour profile."""
    top = float(np.iinfo(pixels.dtype).max)
    inks = pixels.astype(np.float64)
    rgb = (top - inks[..., :3]) * (top - inks[..., 3:4]) / top
    return np.rint(rgb).astype(pixels.dtype)


def _tiff_pixels(path: Path, header: ImageHeader) -> np.ndarray:
    import tifffile

    with quiet_tifffile(), tifffile.TiffFile(path) as tif:
        pixels = np.asarray(tif.asarray())
        page = tif.pages[0]
        if not isinstance(page, tifffile.TiffPage):  # read_header read this page: never a frame
            raise ImageError(f"{path}: its first page cannot be read")
        if header.stored == "palette":
            colormap = np.asarray(page.colormap)
            colours = colormap[:, pixels].transpose(1, 2, 0)  # an index beyond the palette: damaged
            return (colours if colormap.max() <= 255 else np.rint(colours / 257.0)).astype(np.uint8)
        if header.stored == "MINISWHITE":
            return ((1 << page.bitspersample) - 1 - pixels).astype(pixels.dtype)
        if header.stored == "CMYK":
            if pixels.ndim == 3 and pixels.shape[0] == 4 and pixels.shape[-1] != 4:
                pixels = np.moveaxis(pixels, 0, -1)
            return cmyk_to_rgb(pixels)
    return pixels


def _pil_pixels(path: Path, header: ImageHeader, labels: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as opened:
        im: Image.Image = opened
        target = "" if labels else PIL_IMAGE_MODES[im.mode]
        if target:
            im = im.convert("RGBA" if im.mode == "P" and "transparency" in im.info else target)
        pixels = np.asarray(im)
    return pixels.astype(pixels.dtype.newbyteorder("=")) if pixels.dtype.byteorder == ">" else pixels


def read_image(path: str | Path, labels: bool = False) -> np.ndarray:
    """Read a TIFF/PNG/JPEG file into an array, with a one-line error for missing, damaged or cut-off files.

    An image's colours are read as read_header says (a palette as its colours, CMYK as RGB, a
    MINISWHITE TIFF inverted) and its orientation tag is applied, so the pixels lie as viewers show
    them. `labels`: the file holds ids, read as stored (a palette's indices), oriented the same way.
    """
    path = Path(path)
    header = parse_header(path, verify=False, labels=labels)  # decoding finds a damaged PNG: no second walk of it
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            pixels = _tiff_pixels(path, header)
        else:
            pixels = _pil_pixels(path, header, labels)
        pixels = orient(pixels, header.orientation)
    except Exception as exc:  # a decoder error past a good header: the file is cut off or damaged
        raise ImageError(
            f"{path} is truncated or damaged: its header promises {shape_text(header.shape)} pixels "
            f"but they cannot be decoded ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if pixels.size == 0 or pixels.shape != header.shape:
        raise ImageError(
            f"{path} is truncated or damaged: its header promises {shape_text(header.shape)} pixels, "
            f"the file holds {shape_text(pixels.shape)}"
        )
    return pixels


def _bits_holding(top: int, usable: int) -> int:
    """The smallest of BIT_DEPTHS (at most `usable`) whose largest value is `top` or more."""
    for bits in BIT_DEPTHS:
        if bits >= usable or top <= (1 << bits) - 1:
            return min(bits, usable)
    return usable


def integer_bit_depth(image: np.ndarray) -> int:
    """The bit depth integer pixels really use: the smallest of BIT_DEPTHS (up to the dtype's) holding the maximum.

    12-bit camera data stored in uint16 reaches 4095, not 65535; scaling it by the dtype would
    leave the image nearly black.
    """
    usable = int(np.iinfo(image.dtype).max).bit_length()  # a signed type's sign bit holds no brightness
    return _bits_holding(int(image.max()) if image.size else 0, usable)


def float_span(values: np.ndarray) -> tuple[float, float]:
    """The values a float image's black and white stand for: 0..1 or 0..255 as usual, else the range it holds.

    Whole numbers from 0 to 65535 are integers stored as floats (a 16-bit scan saved as float32):
    they are read by their bit depth, as integers are. Other values are read by their own
    range (0 stays black when none is negative), never clipped: a float TIFF of 0..65535 clipped to
    0..255 is white, with no nuclei.
    """
    if values.size == 0:
        return 0.0, 255.0
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    if low >= 0.0 and high <= 255.0:
        return 0.0, 255.0
    if low >= 0.0:
        if high <= 65535.0 and np.array_equal(values, np.rint(values)):
            return 0.0, float((1 << _bits_holding(int(high), 16)) - 1)
        return 0.0, high
    return low, high if high > low else low + 1.0


def reading_notes(pixels: np.ndarray, channels: int, header: ImageHeader | None = None) -> list[str]:
    """What a user should know about how an image was read and what the model makes of it, one line each.

    From the header: an orientation tag applied (the labels are on the grid viewers show) and CMYK
    inks converted without a colour profile; from the pixels: float values read by their own
    range, and a grayscale image given to an H&E (colour) model (`channels` 3) or a colour image to a
    grayscale one (`channels` 1). Nothing here refuses: the image is segmented as read.
    """
    notes = []
    if header is not None and header.orientation != 1:
        stored = header.stored_shape
        notes.append(
            f"its orientation tag ({header.orientation}: {EXIF_ORIENTATIONS[header.orientation]}) was "
            f"applied: it is segmented upright as image viewers show it, so the labels and every other "
            f"output are on that grid, {header.shape[1]} x {header.shape[0]} px (width x height), not the "
            f"file's stored {stored[1]} x {stored[0]}"
        )
    if header is not None and header.stored in ("CMYK", "HSV", "YCbCr"):
        notes.append(
            f"its {header.stored} pixels were converted to RGB without a colour profile, so its colours are "
            "approximate; for exact colours save it as RGB"
        )
    arr = np.asarray(pixels)
    if np.issubdtype(arr.dtype, np.floating) and arr.size and np.isfinite(arr).all():
        low, high = float_span(arr)
        if (low, high) not in ((0.0, 1.0), (0.0, 255.0)):
            notes.append(
                f"it holds floating-point values from {float(arr.min()):g} to {float(arr.max()):g}, read with "
                f"{low:g} as black and {high:g} as white"
            )
    grey = (
        arr.ndim == 2
        or (arr.ndim == 3 and arr.shape[-1] == 1)
        or (
            arr.ndim == 3
            and arr.shape[-1] in (3, 4)
            and np.array_equal(arr[..., 0], arr[..., 1])
            and np.array_equal(arr[..., 0], arr[..., 2])
        )
    )
    if channels == 3 and grey:
        notes.append(
            "it is grayscale, but the model segments H&E colour images: without the stain's colours expect "
            "missed or false nuclei; for grayscale images train a grayscale model (train --config grayscale)"
        )
    elif channels == 1 and not grey:
        notes.append("it is in colour, but the model segments grayscale images: its colour channels are averaged")
    return notes


def check_pixels(image: np.ndarray, name: str = "image") -> np.ndarray:
    """The image as H x W x 1 or 3 (an opaque alpha dropped, channel-first moved last), or a one-line ImageError for
    what cannot be segmented: the checks of to_rgb_float, without its float copy (run them before saying anything)."""
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
    if np.issubdtype(arr.dtype, np.signedinteger) and int(arr.min()) < 0:
        raise ImageError(f"{name} has negative pixel values (min {int(arr.min())}); expected 0 or more")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ImageError(f"{name} contains NaN or infinite values")
    return arr


def to_rgb_float(image: np.ndarray, channels: int = 3, name: str = "image", bit_depth: int | None = None) -> np.ndarray:
    """Check an image (check_pixels) and return it as float32 H x W x channels on the 0..255 scale.

    Accepts H x W (grayscale), H x W x 1/3/4 (RGBA drops an opaque alpha) and channel-first
    3 x H x W; integer images are scaled by their bit depth (`bit_depth`, else the one their
    maximum shows: integer_bit_depth), float images by the span float_span finds (0..1 and 0..255
    as usual, else their own range: reading_notes says so).
    """
    arr = check_pixels(image, name)
    if np.issubdtype(arr.dtype, np.integer):
        bits = integer_bit_depth(arr) if bit_depth is None else bit_depth
        top = float((1 << bits) - 1)
        out = arr.astype(np.float32) * (255.0 / top) if top > 255 else arr.astype(np.float32)
        out = np.clip(out, 0.0, 255.0)
    else:
        out = arr.astype(np.float32)
        low, high = float_span(out)
        if (low, high) != (0.0, 255.0):
            out = (out - np.float32(low)) * np.float32(255.0 / (high - low))
        out = np.clip(out, 0.0, 255.0)
    if out.shape[-1] != channels:
        out = np.repeat(out, 3, axis=-1) if channels == 3 else out.mean(axis=-1, keepdims=True)
    return out
