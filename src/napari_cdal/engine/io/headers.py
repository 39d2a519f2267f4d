"""Image file headers: what a TIFF, PNG or JPEG declares (shape, type, colours, orientation), read before its pixels."""

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


def shape_text(shape: tuple[int, ...]) -> str:
    """A shape as error messages write it: "512 x 512 x 3" ("no" for an empty one)."""
    return " x ".join(str(n) for n in shape) or "no"


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
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
    return parse_header(Path(path), verify=True, labels=labels)


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

    with quiet_tifffile(), tifffile.TiffFile(path) as tif:
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
                f"{path} is truncated: its header promises {shape_text(tuple(series.shape))} "
                f"pixels in {max(ends)} bytes, the file has {size}"
            )
        shape, dtype = tuple(series.shape), np.dtype(series.dtype)
        page = tif.pages[0]
        if not isinstance(page, tifffile.TiffPage):  # tifffile reads the first page whole, never as a frame
            raise ImageError(f"{path}: its first page cannot be read")
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


def parse_header(path: Path, verify: bool, labels: bool = False) -> ImageHeader:
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
