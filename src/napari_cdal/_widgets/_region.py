"""Which part of an image layer the Segment widget segments: all of it, the field of view, or a drawn rectangle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cdal._widgets._review import viewer_camera

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Shapes

    from napari_cdal.engine.segment.tiling import Box

WHOLE_IMAGE = "whole image"
FIELD_OF_VIEW = "field of view"


def region_choices(viewer: napari.viewer.Viewer) -> list[tuple[str, Any]]:
    """The whole image, the field of view, and each Shapes layer (its selected, else last, rectangle)."""
    from napari.layers import Shapes

    shapes = [(f"rectangle in {layer.name}", layer) for layer in viewer.layers if isinstance(layer, Shapes)]
    return [(WHOLE_IMAGE, WHOLE_IMAGE), (FIELD_OF_VIEW, FIELD_OF_VIEW), *shapes]


def level0_shape(layer: Image) -> tuple[int, int]:
    """Height and width of the layer's full-resolution plane, read from its header only."""
    data = layer.data[0] if layer.multiscale else layer.data
    shape = tuple(data.shape[:-1] if layer.rgb else data.shape)
    return int(shape[-2]), int(shape[-1])


def _clip(layer: Image, corners: np.ndarray) -> Box:
    """Data-coordinate corners (2 x 2, y and x) as a pixel box of level 0, widened to whole pixels and clipped."""
    height, width = level0_shape(layer)
    low, high = corners.min(axis=0), corners.max(axis=0)
    y0, x0 = (int(np.clip(np.floor(v), 0, n)) for v, n in zip(low, (height, width), strict=True))
    y1, x1 = (int(np.clip(np.ceil(v), 0, n)) for v, n in zip(high, (height, width), strict=True))
    return y0, y1, x0, x1


def _to_data(layer: Image, world: np.ndarray) -> np.ndarray:
    """World points (n x 2, the displayed y and x) in the layer's level-0 pixel coordinates."""
    return np.array([np.asarray(layer.world_to_data(point))[-2:] for point in world])


def view_box(viewer: napari.viewer.Viewer, layer: Image) -> Box:
    """The part of the image the canvas shows, in full-resolution pixels (y0, y1, x0, x1), clipped to the image."""
    camera = viewer_camera(viewer)
    centre = np.asarray(camera.center[-2:], float)
    half = np.asarray(viewer.canvas.size, float) / (2 * camera.zoom)
    return _clip(layer, _to_data(layer, np.array([centre - half, centre + half])))


def rectangle_box(shapes: Shapes, layer: Image) -> Box | None:
    """The selected rectangle of a Shapes layer (else its last one) in the image's full-resolution pixels."""
    rectangles = [index for index, kind in enumerate(shapes.shape_type) if kind == "rectangle"]
    if not rectangles:
        return None
    chosen = [index for index in rectangles if index in shapes.selected_data] or rectangles[-1:]
    vertices = np.asarray(shapes.data[chosen[-1]], float)
    world = np.array([np.asarray(shapes.data_to_world(vertex))[-2:] for vertex in vertices])
    return _clip(layer, _to_data(layer, world))
