"""What both dock widgets read: the image layers and their pixels, the model files and their configs, and which model
fits which layer (an H&E model a 2-D image, a model of classes a volume)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cdal.layer_metadata import TAG

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]
    from napari.layers import Image, Layer  # type: ignore[import-untyped]

    from napari_cdal.engine.config import ModelConfig


def image_choices(viewer: napari.viewer.Viewer) -> list[tuple[str, Any]]:
    """The viewer's image layers to choose from (not the ones this plugin made)."""
    from napari.layers import Image

    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image) and TAG not in layer.metadata]


def model_file_choices() -> list[tuple[str, str]]:
    """The models in the model folder (the bundled one first) as (label, file path)."""
    from napari_cdal.catalog import list_models

    return [(entry.label, str(entry.path)) for entry in list_models()]


def model_config(path: str) -> ModelConfig | None:
    """A model file's config, read from its header without loading its weights; None when unreadable."""
    from napari_cdal.engine.config import ModelConfig
    from napari_cdal.engine.io.checkpoint import read_metadata

    try:  # through ModelConfig, so files written under former key names read the same
        return ModelConfig.from_dict(read_metadata(path)["model_config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def image_pixels(layer: Image) -> np.ndarray:
    """The layer's pixels as one 2-D RGB or grayscale image; a clear ImageError otherwise."""
    from napari_cdal.engine.io.images import ImageError, to_rgb_float

    data = layer.data[0] if layer.multiscale else layer.data
    pixels = np.asarray(data)
    plane_ndim = 3 if layer.rgb else 2
    if pixels.ndim > plane_ndim:
        raise ImageError(
            f"layer {layer.name!r} is a stack of shape {pixels.shape}; the Segment widget "
            "takes one 2-D image: add a single plane as its own layer (e.g. layer.data[0])"
        )
    to_rgb_float(pixels, name=f"layer {layer.name!r}")
    return pixels


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
