"""Volume folders (images/*.nii.gz beside labels/*.nii.gz) and the 2-D slices the networks see."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.data.tiles import Tile
from napari_cdal.engine.io.volumes import VOLUME_SUFFIXES, read_label_volume, read_volume, volume_stem
from napari_cdal.engine.method.intensity import stretch_intensity


@dataclass
class LabelledVolume:
    """One volume with its class labels (same shape), as read from a volume folder."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


def is_volume_folder(root: str | Path) -> bool:
    """True when `root/images` holds NIfTI volumes (a volume data set rather than H&E tiles)."""
    folder = Path(root) / "images"
    return folder.is_dir() and any(p.name.lower().endswith(VOLUME_SUFFIXES) for p in folder.iterdir())


def _files(folder: Path) -> dict[str, Path]:
    return {volume_stem(p): p for p in sorted(folder.iterdir()) if p.name.lower().endswith(VOLUME_SUFFIXES)}


def list_volumes(root: str | Path) -> list[str]:
    """Sorted ids of the volumes in `root/images`; each must have its label volume in `root/labels`."""
    root = Path(root)
    images = _files(root / "images")
    if not images:
        raise FileNotFoundError(f"{root / 'images'} holds no .nii or .nii.gz volume")
    labels = _files(root / "labels") if (root / "labels").is_dir() else {}
    missing = sorted(set(images) - set(labels))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} volumes have no label volume in {root / 'labels'} "
            f"(first: {missing[0]}); a volume folder needs labels/<id>.nii.gz for each image"
        )
    return sorted(images)


def volume_path(root: str | Path, name: str) -> Path:
    """The image volume `name` of a volume folder (images/<name>.nii.gz or .nii)."""
    return _files(Path(root) / "images")[name]


def load_volume(root: str | Path, name: str, classes: int | None = None) -> LabelledVolume:
    """Read one image volume and its labels, checked to have the same shape."""
    root = Path(root)
    image_path = _files(root / "images")[name]
    label_path = _files(root / "labels")[name]
    image = read_volume(image_path)
    labels = read_label_volume(label_path, classes)
    if labels.data.shape != image.data.shape:
        raise ValueError(
            f"{label_path} has shape {labels.data.shape} but {image_path} is {image.data.shape}; "
            "labels must match their volume voxel for voxel"
        )
    return LabelledVolume(name, image.data.astype(np.float32), labels.data, image.affine)


def slice_stack(volume: np.ndarray, config: ModelConfig) -> np.ndarray:
    """A volume -> (N, C, H, W) float32 slices along the config's axis on the 0..255 scale.

    The volume is stretched by its own percentiles first (one normalisation for training and
    segmenting); with context_slices each slice carries its neighbours as channels, the edge
    slices repeating themselves.
    """
    stretched = np.moveaxis(stretch_intensity(volume, config), config.slice_axis, 0)
    count, context = stretched.shape[0], config.context_slices
    order = [np.clip(np.arange(count) + offset, 0, count - 1) for offset in range(-context, context + 1)]
    return np.ascontiguousarray(np.stack([stretched[index] for index in order], axis=1))


def labels_to_slices(labels: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Label volume -> (N, H, W) slices along the config's axis, matching slice_stack."""
    return np.ascontiguousarray(np.moveaxis(labels, config.slice_axis, 0))


def slices_to_volume(slices: np.ndarray, config: ModelConfig) -> np.ndarray:
    """(..., N, H, W) per-slice maps back to (..., Z, Y, X), the volume's axis order (the slice axis in its place)."""
    lead = slices.ndim - 3
    return np.ascontiguousarray(np.moveaxis(slices, lead, lead + config.slice_axis))


def slice_tiles(name: str, images: np.ndarray, labels: np.ndarray, indices: list[int] | None = None) -> list[Tile]:
    """The slices `indices` (all when None) of a volume's slice_stack and labels_to_slices as training tiles.

    Tiles are named <name>[<index>]; each image is H x W x C float32 (the slice and its neighbours,
    stretched over the whole volume), its ids the class values.
    """
    tiles = []
    for index in range(images.shape[0]) if indices is None else indices:
        classes = labels[index].astype(np.uint32)
        tiles.append(
            Tile(
                f"{name}[{index}]",
                np.ascontiguousarray(images[index].transpose(1, 2, 0)),
                classes > 0,
                classes,
                has_instance_truth=False,
            )
        )
    return tiles


def volume_tiles(volume: LabelledVolume, config: ModelConfig, indices: list[int] | None = None) -> list[Tile]:
    """The slices `indices` (all when None) of one volume as training tiles, named <volume>[<index>]."""
    return slice_tiles(volume.name, slice_stack(volume.image, config), labels_to_slices(volume.labels, config), indices)


def training_slices(volumes: list[LabelledVolume], config: ModelConfig) -> list[Tile]:
    """Every slice of every volume as a training tile (H x W x C float32 image, class values as ids)."""
    return [tile for volume in volumes for tile in volume_tiles(volume, config)]
