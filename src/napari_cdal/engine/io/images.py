"""Image files: their headers, their pixels, and the one path from any pixel type to RGB on 0..255 (no torch)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_cdal.engine.checks import InputError, check_input_file

MAX_PIXELS = 40_000 * 40_000
"""The most pixels an image read whole may have (about 5 GB as RGB); a slide, read block by block, has no cap."""


class ImageError(ValueError):
    """An input image that cannot be segmented as it is; the message says why and what to do."""


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


BIT_DEPTHS = (8, 10, 12, 14, 16, 24, 32)
"""Bit depths a camera or scanner stores in a wider integer type (12-bit data in uint16, say)."""


PIL_IMAGE_MODES = {
    "1": "L",
    "L": "",
    "I": "",
    "F": "",
    "I;16": "",
    "I;16B": "",
    "I;16L": "",
    "I;16N": "",
    "RGB": "",
    "RGBA": "",
    "P": "RGB",
    "PA": "RGBA",
    "LA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "HSV": "RGB",
}
"""Each Pillow mode an image is read in and the mode its pixels are converted to ("" as stored): a palette becomes
its colours, CMYK inks RGB, grey with alpha RGBA (an opaque alpha is dropped later), bilevel 0 and 255.
CIELab is not among them: Pillow's conversion of it is off by up to 24 levels."""

PIL_LABEL_MODES = ("1", "L", "P", "I", "F", "I;16", "I;16B", "I;16L", "I;16N", "RGB", "RGBA")
"""The Pillow modes a label image (a mask, ids) is read in, as stored: a palette image's ids are its indices."""

TIFF_IMAGE_PHOTOMETRICS = ("MINISBLACK", "RGB", "MINISWHITE", "PALETTE", "SEPARATED", "YCBCR")
"""The TIFF colour spaces an image is read in: grey (white is 0 for MINISWHITE, inverted on reading), RGB, a
palette (its colours), CMYK inks (SEPARATED, converted to RGB) and JPEG-compressed YCbCr (decoded as RGB)."""

TIFF_LABEL_PHOTOMETRICS = ("MINISBLACK", "MINISWHITE", "PALETTE", "RGB")
"""The TIFF colour spaces a label image is read in, as stored (a palette's indices are the ids)."""

EXIF_ORIENTATIONS = {
    2: "mirrored left to right",
    3: "turned 180°",
    4: "mirrored top to bottom",
    5: "mirrored along its diagonal",
    6: "turned 90° clockwise",
    7: "mirrored along its other diagonal",
    8: "turned 90° anticlockwise",
}
"""What an EXIF (or TIFF) orientation tag asks a viewer to do to the stored pixels before showing them."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself before its pixels are read.

    `shape` and `dtype` are those of the pixels read_image returns, after a colour conversion
    (`stored` names what the file holds when it is converted: "palette", "CMYK", "MINISWHITE";
    "" when read as stored) and after the file's orientation tag (`orientation`, 1 to 8) is applied.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    stored: str = ""
    orientation: int = 1
    stored_shape: tuple[int, ...] = ()
    """The shape as the file stores the pixels, before orientation (for the note on the grid the labels use)."""


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
    try:
        check_input_file(path, "image file")
    except InputError as exc:
        raise ImageError(str(exc)) from exc
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(f"{path} is not a supported image file; give one of {', '.join(IMAGE_SUFFIXES)}")


def read_header(path: str | Path, labels: bool = False) -> ImageHeader:
    """An image file's shape and dtype from its header alone, so its size is known before reading it.

    A cut-off file is named here, before any work: a TIFF's strips must fit in the file, a PNG's
    chunks are walked (without decoding). A colour space this tool does not read is refused here
    too. `labels`: the file holds ids (a mask), read as stored (a palette's indices).
    """
    return _parse_header(Path(path), verify=True, labels=labels)


def _oriented(shape: tuple[int, ...], orientation: int) -> tuple[int, ...]:
    """A stored shape as shown: rows and columns swap for the orientations that turn the image by 90°."""
    return (shape[1], shape[0], *shape[2:]) if orientation in (5, 6, 7, 8) and len(shape) >= 2 else shape


def _orientation(value: object) -> int:
    """An orientation tag's value as 1 to 8; anything else (absent, damaged) as 1, the stored grid."""
    return value if isinstance(value, int) and value in EXIF_ORIENTATIONS else 1


def _refuse_colour(path: Path, space: str, labels: bool) -> ImageError:
    if labels:
        return ImageError(
            f"{path} stores its pixels as {space}, which is no label image (ids as grey values, palette "
            "indices or RGB); save the ids as a grayscale PNG or TIFF"
        )
    return ImageError(
        f"{path} stores its pixels as {space}, which this tool does not read (it reads grey, RGB, "
        "palette, CMYK, 16-bit and float images); save it as RGB or grayscale, e.g. as PNG"
    )


def _tiff_header(path: Path, labels: bool) -> ImageHeader:
    import tifffile

    with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
        series = tif.series[0] if tif.series else None
        if series is None or not series.shape or 0 in series.shape:
            raise ImageError(f"{path} is truncated or damaged: its header describes no image")
        ends = [
            offset + count
            for page in series.pages
            if page is not None
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True)
        ]
        size = path.stat().st_size
        if ends and max(ends) > size:
            raise ImageError(
                f"{path} is truncated: its header promises {_shape(tuple(series.shape))} "
                f"pixels in {max(ends)} bytes, the file has {size}"
            )
        shape, dtype = tuple(series.shape), np.dtype(series.dtype)
        page = tif.pages[0]
        if tuple(page.shape) != shape:  # a stack of pages: refused as a stack later, whatever its colours
            return ImageHeader(shape, dtype, stored_shape=shape)
        photometric = tifffile.PHOTOMETRIC(page.photometric).name
        tag = page.tags.get(274)
        orientation = _orientation(tag.value if tag is not None else 1)
        readable = TIFF_LABEL_PHOTOMETRICS if labels else TIFF_IMAGE_PHOTOMETRICS
        jpeg = page.compression in (6, 7)
        if photometric not in readable or (photometric == "YCBCR" and not jpeg):
            space = f"TIFF {photometric}" + (" without JPEG compression" if photometric == "YCBCR" else "")
            raise _refuse_colour(path, space, labels)
        stored = ""
        if not labels and photometric == "PALETTE":
            if page.colormap is None:
                raise ImageError(f"{path} is truncated or damaged: a palette TIFF without its palette")
            stored, shape, dtype = "palette", (*shape, 3), np.dtype(np.uint8)
        elif not labels and photometric == "MINISWHITE":
            if not np.issubdtype(dtype, np.unsignedinteger):
                raise _refuse_colour(path, f"TIFF MINISWHITE of {dtype}", labels)
            stored = "MINISWHITE"
        elif not labels and photometric == "SEPARATED":
            if (
                page.samplesperpixel != 4
                or not np.issubdtype(dtype, np.unsignedinteger)
                or getattr(page, "inkset", 1) not in (1, None)
            ):
                raise _refuse_colour(path, f"TIFF SEPARATED ink with {page.samplesperpixel} samples of {dtype}", labels)
            height, width = (shape[1], shape[2]) if shape[0] == 4 and len(shape) == 3 and shape[-1] != 4 else shape[:2]
            stored, shape = "CMYK", (height, width, 3)
        return ImageHeader(_oriented(shape, orientation), dtype, stored, orientation, shape)


def _pil_header(path: Path, labels: bool) -> ImageHeader:
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        mode = im.mode
        transparent = "transparency" in im.info
        orientation = _orientation(im.getexif().get(0x0112, 1))
    readable = PIL_LABEL_MODES if labels else tuple(PIL_IMAGE_MODES)
    if mode not in readable:
        raise _refuse_colour(path, f"Pillow mode {mode}", labels)
    target = "" if labels else PIL_IMAGE_MODES[mode]
    if target == "RGB" and mode == "P" and transparent:
        target = "RGBA"
    out = target or mode
    bands = Image.getmodebands(out)
    dtype = np.dtype(
        np.uint16
        if out.startswith("I;16")
        else np.int32
        if out == "I"
        else np.float32
        if out == "F"
        else bool
        if out == "1"
        else np.uint8
    )
    stored = (
        {"P": "palette", "PA": "palette", "CMYK": "CMYK", "YCbCr": "YCbCr", "HSV": "HSV"}.get(mode, "")
        if target
        else ""
    )
    shape = (height, width) if bands == 1 else (height, width, bands)
    return ImageHeader(_oriented(shape, orientation), dtype, stored, orientation, shape)


def _parse_header(path: Path, verify: bool, labels: bool = False) -> ImageHeader:
    """The header; with `verify` a PNG/JPEG is also walked for damage (read_image's decoding finds it anyway)."""
    _check_file(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _tiff_header(path, labels)
        header = _pil_header(path, labels)
    except ImageError:
        raise
    except Exception as exc:  # any parser error means "not an image we can read"
        if type(exc).__name__ == "DecompressionBombError":  # Pillow's refusal of a huge PNG/JPEG, before reading it
            raise ImageError(
                f"{path} declares more pixels than a PNG or JPEG is read with ({_first_line(exc)}); "
                "save it as a tiled TIFF, which is segmented block by block as a slide"
            ) from exc
        raise ImageError(f"cannot read {path} as an image ({type(exc).__name__}: {_first_line(exc)})") from exc
    if verify:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.verify()  # walks the file's chunks without decoding: a cut-off PNG fails here
        except Exception as exc:
            raise ImageError(f"{path} is truncated or damaged ({type(exc).__name__}: {_first_line(exc)})") from exc
    return header


def plane_size(header: ImageHeader, name: str = "image") -> tuple[int, int]:
    """Height and width of the one 2-D plane an image file must hold (H x W, H x W x C or C x H x W)."""
    shape = header.shape
    if len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (1, 3, 4):
        shape = (*shape[1:], shape[0])
    if len(shape) == 3 and shape[-1] not in (1, 3, 4):
        raise ImageError(f"{name} has shape {shape}: {shape[-1]} channels; expected 1 (grayscale) or 3 (RGB)")
    if len(shape) not in (2, 3):
        raise ImageError(
            f"{name} has shape {shape}; expected a 2-D image (H x W, or H x W x 3 for RGB). "
            "For a stack, segment one plane at a time"
        )
    height, width = shape[:2]
    if height == 0 or width == 0:
        raise ImageError(f"{name} is empty (shape {header.shape})")
    return int(height), int(width)


def check_read_whole(height: int, width: int, name: str = "image") -> None:
    """Refuse an image too large to hold in memory at once (MAX_PIXELS); slides are read block by block instead."""
    if height * width > MAX_PIXELS:
        raise ImageError(
            f"{name} has {height}x{width} pixels, more than this tool reads at once; crop it, or "
            "save it as a tiled TIFF, which is segmented block by block as a slide"
        )


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

    with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
        pixels = np.asarray(tif.asarray())
        page = tif.pages[0]
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

    with Image.open(path) as im:
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
    header = _parse_header(path, verify=False, labels=labels)  # decoding finds a damaged PNG: no second walk of it
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            pixels = _tiff_pixels(path, header)
        else:
            pixels = _pil_pixels(path, header, labels)
        pixels = orient(pixels, header.orientation)
    except Exception as exc:  # a decoder error past a good header: the file is cut off or damaged
        raise ImageError(
            f"{path} is truncated or damaged: its header promises {_shape(header.shape)} pixels "
            f"but they cannot be decoded ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if pixels.size == 0 or pixels.shape != header.shape:
        raise ImageError(
            f"{path} is truncated or damaged: its header promises {_shape(header.shape)} pixels, "
            f"the file holds {_shape(pixels.shape)}"
        )
    return pixels


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(n) for n in shape) or "no"


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
