"""NIfTI volumes in and out: voxels, voxel spacing and the affine that places them, written atomically."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cdal.engine.checks import InputError, check_input_file
from napari_cdal.engine.io.checkpoint import atomic_write
from napari_cdal.engine.io.images import ImageError

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

VOLUME_SUFFIXES = (".nii.gz", ".nii")

LABEL_FOLDER_PREFIX = "labels"
"""A volume in a folder whose name starts with this (labels, labelsTr, labelsTs: the MSD layout) is labels."""

MAX_AFFINE_CONDITION = 1e12
"""An affine whose 3 x 3 part has a larger condition number is singular in practice (spacings of 1e-6 mm against 1 mm
are 1e6)."""

MAX_LABEL_VALUES = 16
"""An integer volume holding at most this many distinct values, all in 0..255, is taken as labels."""


@dataclass
class Volume:
    """A 3-D image as stored: voxels (in the file's axis order), spacing per axis (mm) and affine."""

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


def is_volume_path(path: str | Path) -> bool:
    """True for a .nii or .nii.gz file name."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """The file name without .nii/.nii.gz: hippocampus_001.nii.gz -> hippocampus_001."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def is_label_volume(path: str | Path, data: np.ndarray) -> bool:
    """True for class labels rather than an image: whole-number voxels, in a labels* folder or few values in 0..255.

    The rule: every voxel is a whole number (an integer dtype, or floats such as MSD's float32
    label files holding only whole numbers), and either the file's folder is named labels,
    labelsTr or labelsTs (any name starting with "labels"), or the volume holds at most
    MAX_LABEL_VALUES distinct values, all from 0 to 255. An MRI stored as integers has hundreds.
    """
    if data.dtype == bool or not np.issubdtype(data.dtype, np.number):
        return False
    if not np.issubdtype(data.dtype, np.integer) and not np.array_equal(data, np.rint(data)):
        return False
    if Path(path).parent.name.lower().startswith(LABEL_FOLDER_PREFIX):
        return True
    values = np.unique(data)
    return values.size <= MAX_LABEL_VALUES and (values.size == 0 or (values[0] >= 0 and values[-1] <= 255))


def as_label_values(data: np.ndarray) -> np.ndarray:
    """Whole-number voxels as integers for a Labels layer: uint8 when they fit in 0..255, else int64."""
    fits = data.size == 0 or (data.min() >= 0 and data.max() <= 255)
    return data.astype(np.uint8 if fits else np.int64)


def _load(path: Path) -> SpatialImage:
    import nibabel
    from nibabel.spatialimages import SpatialImage

    try:
        check_input_file(path, "volume file")
    except (FileNotFoundError, InputError) as exc:
        raise ImageError(str(exc)) from exc
    try:
        image = nibabel.load(str(path))
    except Exception as exc:  # nibabel raises many kinds for a damaged or foreign file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ImageError(f"{path} is not a readable NIfTI volume ({first})") from exc
    if not isinstance(image, SpatialImage):  # a file nibabel reads as something else than voxels in space
        raise ImageError(f"{path} is not a NIfTI volume (nibabel reads it as {type(image).__name__})")
    if len(image.shape) != 3 and not (len(image.shape) == 4 and image.shape[3] == 1):
        raise ImageError(f"{path} has shape {image.shape}; expected a 3-D volume")
    return image


def check_affine(affine: np.ndarray, name: str) -> None:
    """Refuse an affine that places no voxel in space (not finite, or its rotation and spacing part singular, e.g. all
    zero): the labels written with it could not be placed on the scan, and NIfTI cannot store it."""
    matrix = np.asarray(affine, dtype=np.float64)
    finite = np.isfinite(matrix).all()
    if finite and np.linalg.cond(matrix[:3, :3]) < MAX_AFFINE_CONDITION:
        return
    what = "holds values that are not finite" if not finite else "is singular (it maps the voxels onto a plane or less)"
    rows = "; ".join(" ".join(f"{v:g}" for v in row) for row in matrix[:3, :3])
    raise ImageError(
        f"{name} has a degenerate affine: its rotation and spacing part [{rows}] {what}, so nothing "
        "can be placed on the scan; set a valid orientation in its header first (e.g. nibabel: "
        "img.set_sform(np.diag([sx, sy, sz, 1]), code=1) with the voxel spacing) and save it again"
    )


def read_volume_header(
    path: str | Path, placed: bool = True
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape and voxel spacing from the header alone, to check a volume before any work: more voxels than the free
    memory holds are refused here, and with `placed` (outputs will be written with its affine) a degenerate affine."""
    image = _load(Path(path))
    if placed:
        check_affine(image.affine, str(path))
    _memory_refusal(Path(path), image)
    return _shape3(image.shape), _zooms3(image)


def _shape3(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A volume's first three sides (a 4-D file's last side is 1)."""
    return int(shape[0]), int(shape[1]), int(shape[2])


def _zooms3(image: SpatialImage) -> tuple[float, float, float]:
    """The voxel spacing along the first three axes, as the header gives it."""
    zooms = image.header.get_zooms()
    return float(zooms[0]), float(zooms[1]), float(zooms[2])


def _memory_refusal(path: Path, image: Any) -> None:
    """Refuse, before decoding, a volume whose voxels (as float32 or wider) do not fit in the free memory: a
    compressed file of a few kilobytes can declare gigabytes of voxels."""
    from napari_cdal.engine.checks import check_memory

    dtype = np.dtype(image.get_data_dtype())
    shape = tuple(int(n) for n in image.shape)
    check_memory(
        math.prod(shape) * max(dtype.itemsize, 4),
        f"{path} ({' x '.join(map(str, shape))} voxels of {dtype})",
        "it is too large to read here: crop it, or read it on a machine with more memory",
    )


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI volume; NaN voxels or a damaged file give one ImageError line, voxels beyond the free memory
    an InputError saying so (before anything is decoded)."""
    path = Path(path)
    image = _load(path)
    _memory_refusal(path, image)
    try:
        data = np.asarray(image.dataobj)
    except MemoryError as exc:
        raise ImageError(
            f"{path} declares {' x '.join(map(str, image.shape))} voxels, more than the free memory "
            "holds; crop it, or read it on a machine with more memory"
        ) from exc
    except Exception as exc:  # a truncated .gz shows itself only when the voxels are read
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ImageError(f"{path} is truncated or damaged and cannot be decoded ({first})") from exc
    data = data.reshape(data.shape[:3])
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise ImageError(f"{path} contains NaN or infinite voxels")
    return Volume(data, _zooms3(image), np.asarray(image.affine, dtype=np.float64))


def read_label_volume(path: str | Path, classes: int | None = None) -> Volume:
    """A label volume as uint8 class values; non-integer or out-of-range values are refused."""
    volume = read_volume(path)
    data = volume.data
    if not np.array_equal(data, np.rint(data)) or data.min() < 0:
        raise ImageError(f"label volume {path} holds values that are not class numbers 0, 1, 2, ...")
    top = int(data.max()) if data.size else 0
    if classes is not None and top >= classes:
        raise ImageError(
            f"label volume {path} holds class {top}, but the model knows {classes} classes (0..{classes - 1})"
        )
    volume.data = data.astype(np.uint8)
    return volume


def write_volume(path: str | Path, data: np.ndarray, affine: np.ndarray, replace: bool = True) -> None:
    """Save a volume as NIfTI (compressed for .nii.gz) with `affine`, atomically; a degenerate affine is refused."""
    import nibabel

    check_affine(affine, f"the volume for {path}")
    image = nibabel.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    image.header.set_data_dtype(np.asarray(data).dtype)
    compressed = str(path).lower().endswith(".gz")

    def write(tmp: str) -> None:
        # nibabel picks gzip from the name; the temporary name ends in .tmp, so compress by hand
        payload = image.to_bytes()
        if compressed:
            import gzip

            payload = gzip.compress(payload, compresslevel=6)
        with open(tmp, "wb") as handle:
            handle.write(payload)

    atomic_write(path, write, replace)
