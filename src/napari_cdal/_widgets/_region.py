"""What Segment runs on: a region of an image layer (the whole image, the field of view, a rectangle), in pixels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cdal._widgets._inputs import image_pixels
from napari_cdal._widgets._review import viewer_camera

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]
    from napari.layers import Image, Shapes  # type: ignore[import-untyped]

    from napari_cdal._widgets._segment_run import SegmentSettings
    from napari_cdal.engine.config import ModelConfig
    from napari_cdal.engine.segment.windows import Box

WHOLE_IMAGE = "whole image"
FIELD_OF_VIEW = "field of view"
REGION_FIX = "zoom in, or draw a rectangle in a Shapes layer and choose it as the region, or use Whole slide"
"""How to get under the memory limit when a region is too large."""


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


def region_box(viewer: napari.viewer.Viewer, layer: Image, region: Any) -> Box:
    """The chosen region of `layer` in full-resolution pixels (y0, y1, x0, x1); InputError when it is empty."""
    from napari_cdal.engine.checks import InputError

    if region == WHOLE_IMAGE:
        height, width = level0_shape(layer)
        return 0, height, 0, width
    if region == FIELD_OF_VIEW:
        box = view_box(viewer, layer)
        where = "the field of view"
    else:
        rectangle = rectangle_box(region, layer)
        if rectangle is None:
            raise InputError(f"{region.name} holds no rectangle: draw one with its rectangle tool")
        box, where = rectangle, f"the rectangle in {region.name}"
    if box[1] <= box[0] or box[3] <= box[2]:
        raise InputError(f"{where} shows none of {layer.name}: pan or zoom to the image")
    return box


def check_region(layer: Image, box: Box, settings: SegmentSettings, region: Any, config: ModelConfig | None) -> None:
    """Refuse a stack, or a region whose segmentation would not fit in memory, before any work (InputError)."""
    from napari_cdal.engine.checks import InputError, check_memory, segment_peak_bytes

    data = layer.data[0] if layer.multiscale else layer.data
    if len(data.shape) > (3 if layer.rgb else 2):
        raise InputError(
            f"layer {layer.name!r} is a stack of shape {tuple(data.shape)}; the Segment widget "
            "takes one 2-D image: add a single plane as its own layer (e.g. layer.data[0])"
        )
    if config is not None:
        height, width = box[1] - box[0], box[3] - box[2]
        where = {WHOLE_IMAGE: "the image", FIELD_OF_VIEW: "the field of view"}.get(region, "the rectangle")
        check_memory(
            segment_peak_bytes(height, width, settings.image_mpp, config, settings.sampling_steps, settings.samples),
            f"{where} ({height} x {width} px)",
            REGION_FIX,
        )


def region_to_segment(
    viewer: napari.viewer.Viewer, layer: Image, region: Any, settings: SegmentSettings, config: ModelConfig | None
) -> tuple[Any, Box | None]:
    """What Segment reads of `region`: (the pixels, None) for the whole of a plain image, else (the layer's lazy
    full-resolution data, the region's box), read in the worker; ImageError or InputError when it cannot be run."""
    if region == WHOLE_IMAGE and not layer.multiscale:
        return image_pixels(layer), None
    box = region_box(viewer, layer, region)
    check_region(layer, box, settings, region, config)
    return (layer.data[0] if layer.multiscale else layer.data), box
