"""The Segment widget on a volume: which model fits which layer, and a VolumeResult as layers named after the model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cdal._widgets._layers import (
    MASK,
    TAG,
    Grid,
    keep_selection,
    normalise_planes,
    put_map_layers,
    put_mask_layer,
)

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Layer

    from napari_cdal.engine.config import ModelConfig
    from napari_cdal.engine.segment.volume import VolumeResult

RESULT = "result"
"""The mask tag's key for the model's own labels, against which corrected slices are found."""


def is_volume_layer(layer: Layer) -> bool:
    """True for a 3-D grayscale image (a volume, or a stack of planes), which only a model of classes segments."""
    return not getattr(layer, "rgb", False) and not getattr(layer, "multiscale", False) and layer.ndim == 3


def model_fit_problem(layer: Image, config: ModelConfig | None, model_name: str) -> str | None:
    """Why `model_name` cannot segment `layer` (a volume model on a 2-D image or the reverse), else None."""
    if config is None:
        return None
    shape = tuple(layer.data.shape)
    if config.is_multiclass and not is_volume_layer(layer):
        return (
            f"{model_name} segments 3-D volumes, and layer {layer.name!r} has shape {shape}: open a .nii or "
            ".nii.gz volume, or choose an H&E model"
        )
    if not config.is_multiclass and is_volume_layer(layer):
        return (
            f"layer {layer.name!r} is a stack or volume of shape {shape}, but {model_name} segments 2-D "
            "images: choose a model of classes (e.g. cdal_hippocampus) for a volume, or add a single plane "
            "as its own layer (e.g. layer.data[0])"
        )
    return None


def show_volume_result(
    viewer: napari.Viewer, image: Image, result: VolumeResult, model: str, contour: int
) -> dict[str, Layer]:
    """A VolumeResult as `mask|steps|estimates|attention|uncertainty · <image> · <model>` layers on the volume's grid.

    The mask is a uint8 Labels layer of classes; it keeps the model's labels (to find the corrected
    slices later) and the volume's affine (for the NIfTI writer). Steps (the chain x_T..x_0),
    estimates (x̂0) and attention are (step, z, y, x) stacks; uncertainty (z, y, x) comes with two
    or more samples.
    """
    with keep_selection(viewer):
        return _put_volume_layers(viewer, image, result, model, contour)


def _put_volume_layers(
    viewer: napari.Viewer, image: Image, result: VolumeResult, model: str, contour: int
) -> dict[str, Layer]:
    grid = Grid.of(image, axes=3)
    attention = None if result.attention is None else normalise_planes(result.attention)
    layers = put_map_layers(viewer, image.name, grid, result.chain, result.steps, attention, result.uncertainty, model)
    labels = np.ascontiguousarray(result.labels, dtype=np.uint8)
    mask = put_mask_layer(viewer, image.name, labels, grid.plane(), contour, model=model, extra={RESULT: labels.copy()})
    affine = image.metadata.get("affine")
    if affine is not None:
        mask.metadata["affine"] = np.asarray(affine)
    layers[MASK] = mask
    return layers


def correction_of(image: Image, labels: Any) -> dict[str, Any]:
    """What the engine needs of a corrected volume: labels (copied) and the model's result when the mask keeps it."""
    tag = labels.metadata.get(TAG) or {}
    reference = tag.get(RESULT) if tag.get("image") == image.name else None
    return {"labels": np.array(labels.data, copy=True), "reference": reference}
