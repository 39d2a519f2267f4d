"""Label images: the one check of 2-D maps and of ids, the renumbering to 1..N, per-label areas, sums and means."""

from __future__ import annotations

import numpy as np


def check_2d(array: object, name: str, hint: str = "pass a single-channel 2-D tile (e.g. arr[..., 0])") -> np.ndarray:
    """`array` as an ndarray; a ValueError naming `name` unless it is a 2-D numeric (or bool) image."""
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) image, got shape {arr.shape}; {hint}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}; convert it with .astype()")
    return arr


def check_labels(labels: object, name: str = "labels", allow_binary: bool = False) -> np.ndarray:
    """`labels` as an array of integer ids (0 = background); a ValueError naming `name` and the fix otherwise.

    With allow_binary a bool mask passes too (fine-tuning splits it into nuclei itself).
    """
    arr = np.asarray(labels)
    if (arr.dtype == bool and not allow_binary) or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(
            f"{name} must be an integer label image (integer ids, 0 = background, one per nucleus), got dtype "
            f"{arr.dtype}; build one with skimage.measure.label(mask) or cast integral values with "
            ".astype(np.int32)"
        )
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and int(arr.min()) < 0:
        raise ValueError(
            f"{name} contains negative ids (min {int(arr.min())}); labels must be >= 0 with 0 = background"
        )
    return arr


def check_has_nuclei(labels: object, name: str, fix: str) -> np.ndarray:
    """Refuse labels that hold no nucleus (every pixel background): they teach nothing, and a model trained on them
    finds none. The one rule of train and fine-tune; `name` is what the labels are (plural), `fix` what to do."""
    arr = np.asarray(labels)
    if not arr.any():
        raise ValueError(f"{name} are empty (no nucleus in them); {fix}")
    return arr


def relabel_sequential(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map ids to 1..N in increasing order of the original ids (0 stays 0); return (intp map, N)."""
    flat = labels.ravel()
    if flat.size == 0:
        return np.zeros(labels.shape, dtype=np.intp), 0
    top = int(flat.max())
    if top <= max(1 << 20, 4 * flat.size):
        present = np.bincount(flat.astype(np.intp, copy=False), minlength=top + 1) > 0
        present[0] = False
        lut = np.cumsum(present, dtype=np.intp)
        lut[~present] = 0
        return lut[labels], int(lut[-1]) if top > 0 else 0
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
    n = int(ids.size - (ids[0] == 0))
    return inverse.reshape(labels.shape).astype(np.intp, copy=False), n


def relabel_sequential_uint(labels: np.ndarray) -> np.ndarray:
    """Renumber ids to 1..N keeping their order, as uint16 when N < 65535 else uint32 (for TIFFs).

    Any dimensionality is accepted; 0 stays background.
    """
    mapped, n = relabel_sequential(check_labels(labels))
    return mapped.astype(np.uint16 if n < 65535 else np.uint32)


def label_areas(labels: np.ndarray, n: int | None = None) -> np.ndarray:
    """Pixels of each id 0..n of `labels` (index = id, 0 the background; `n` defaults to the largest id)."""
    flat = np.asarray(labels).astype(np.int64, copy=False).ravel()
    return np.bincount(flat, minlength=(int(flat.max(initial=0)) if n is None else n) + 1)


def label_sums(labels: np.ndarray, values: np.ndarray, n: int | None = None) -> np.ndarray:
    """The float64 sum of `values` over each id 0..n of `labels` (index = id; `n` defaults to the largest id)."""
    flat = np.asarray(labels).astype(np.int64, copy=False).ravel()
    weights = np.asarray(values, dtype=np.float64).ravel()
    return np.bincount(flat, weights=weights, minlength=(int(flat.max(initial=0)) if n is None else n) + 1)


def nucleus_areas(labels: np.ndarray) -> np.ndarray:
    """Pixel area of each nucleus 1..N of `labels`, as float64."""
    return label_areas(labels)[1:].astype(np.float64)


def nucleus_means(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of `values` over each nucleus 1..N of `labels` (0 for an id with no pixel)."""
    n = int(np.asarray(labels).max(initial=0))
    if n == 0:
        return np.zeros(0)
    means: np.ndarray = label_sums(labels, values, n)[1:] / np.maximum(label_areas(labels, n)[1:], 1)
    return means
