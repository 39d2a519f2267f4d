"""What the plugin's widgets and writers agree on about a napari layer: the tag of its layers and its µm per pixel.

Every layer the Segment widget makes carries ``metadata[TAG]``, a dict with the image it was made of, its kind, the
model and, for a mask made of a part of an image, that part's ``origin`` (row, column); the writers read the origin
back to place GeoJSON and CSV coordinates in the image's pixels, and every layer's µm per pixel comes from its scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_cdal.engine.defaults import DEFAULT_IMAGE_MPP

TAG = "napari_cdal"
"""The key of the metadata entry that marks a layer as one the plugin made (found by it, never by name)."""


def tag_of(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The plugin's tag in a layer's metadata ({} for a layer the plugin did not make)."""
    return dict((metadata or {}).get(TAG) or {})


def tagged_origin(metadata: Mapping[str, Any] | None) -> tuple[int, int]:
    """Where a layer's pixels start in its image's full-resolution pixels (row, column): (0, 0) unless tagged."""
    origin = tag_of(metadata).get("origin") or (0, 0)
    return int(origin[0]), int(origin[1])


def mpp_from_scale(scale: Any, units: Any = None) -> float:
    """µm per pixel from a layer's scale and units (as a layer or a writer's attributes give them), else 0.25.

    A scale of (1, 1) means "not set"; a scale without a length unit is taken as µm.
    """
    scale_y, scale_x = (float(s) for s in list(scale)[-2:])
    if np.isclose(scale_y, 1.0) and np.isclose(scale_x, 1.0):
        return DEFAULT_IMAGE_MPP
    value = float(np.sqrt(scale_y * scale_x))
    if units:
        import pint

        try:
            return float((value * units[-1]).to("micrometer").magnitude)
        except pint.DimensionalityError:
            return value
    return value


def image_mpp(layer: Any) -> float:
    """µm per pixel from a layer's scale (converted from its length unit), else 0.25 (a 40x tile)."""
    return mpp_from_scale(layer.scale, getattr(layer, "units", None))
