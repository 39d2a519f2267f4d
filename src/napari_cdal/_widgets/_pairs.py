"""The Fine-tune widget's pairs: one row per (image, corrected labels, corrected regions), and them as engine pairs.

A row whose image is a volume becomes a VolumeCorrection: its corrected slices are found by the
engine, against the model's result when the Labels layer is the mask Segment made of that volume.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container

from napari_cdal._widgets._common import image_choices, image_pixels
from napari_cdal._widgets._layers import MASK, TAG, image_mpp, is_edited
from napari_cdal._widgets._volume import correction_of, is_volume_layer

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Shapes

    from napari_cdal.engine.training.corrections import FinetunePair, VolumeCorrection

WHOLE_IMAGE = None


def layer_boxes(regions: Shapes, image: Image) -> list[tuple[int, int, int, int]]:
    """Each shape's bounding box as (y0, y1, x0, x1) in `image`'s pixels (half-open)."""
    boxes = []
    for vertices in regions.data:
        corners = np.array(
            [
                image.world_to_data(regions.data_to_world(vertex))[-2:]
                for vertex in np.asarray(vertices)
            ]
        )
        low, high = corners.min(axis=0), corners.max(axis=0)
        y0, x0 = (math.floor(v + 0.5) for v in low)
        y1, x1 = (math.ceil(v + 0.5) for v in high)
        boxes.append((y0, y1, x0, x1))
    return boxes


class PairRow(Container):
    """One (image, corrected labels, corrected regions) choice."""

    def __init__(self, viewer: napari.viewer.Viewer, number: int) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.image = ComboBox(label=f"image {number}", choices=lambda _: image_choices(self._viewer))
        self.labels = ComboBox(
            label="corrected labels",
            choices=lambda _: self._labels_choices(),
            tooltip="the Labels layer holding your corrected nuclei (0 = background)",
        )
        self.regions = ComboBox(
            label="corrected regions",
            choices=lambda _: self._regions_choices(),
            tooltip="a Shapes layer of rectangles around what you checked: "
            "only they are learned from",
        )
        self.extend([self.image, self.labels, self.regions])
        self.image.changed.connect(self._on_image_changed)
        self._on_image_changed(self.image.value)

    def _labels_choices(self) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _regions_choices(self) -> list[tuple[str, Any]]:
        from napari.layers import Shapes

        shapes = [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Shapes)]
        return [("none: the whole image", WHOLE_IMAGE), *shapes]

    def _on_image_changed(self, layer: Image | None) -> None:
        mask = self.mask_of(layer)
        if mask is not None:
            self.labels.value = mask

    def mask_of(self, image: Image | None) -> Labels | None:
        """The image's mask from Segment (an edited one first, top-most first), else None."""
        if image is None:
            return None
        masks = [
            layer
            for layer in reversed(list(self._viewer.layers))
            if layer in self.labels.choices
            and (layer.metadata.get(TAG) or {}).get("image") == image.name
            and (layer.metadata.get(TAG) or {}).get("kind") == MASK
        ]
        edited = [layer for layer in masks if is_edited(layer)]
        named = [layer for layer in self.labels.choices if layer.name == f"{image.name} {MASK}"]
        candidates = edited + masks + named
        return candidates[0] if candidates else None


def engine_pairs(rows: list[PairRow]) -> list[FinetunePair] | list[VolumeCorrection]:
    """The rows as engine pairs (labels copied, regions in image pixels); ValueError if one is bad."""
    from napari_cdal.engine.io.images import ImageError
    from napari_cdal.engine.training.corrections import FinetunePair, VolumeCorrection

    pairs = []
    for number, row in enumerate(rows, start=1):
        image, labels, regions = row.image.value, row.labels.value, row.regions.value
        if image is None:
            raise ValueError(f"pair {number}: choose an image (open one first)")
        if labels is None:
            raise ValueError(
                f"pair {number}: choose the Labels layer with your corrections "
                "(segment the image first, then correct its mask with the brush)"
            )
        if is_volume_layer(image):
            if regions is not WHOLE_IMAGE:
                raise ValueError(f"pair {number}: {image.name!r} is a volume, whose corrected slices are found from "
                                 "the labels; choose 'none: the whole image' as corrected regions")
            pairs.append(VolumeCorrection(np.asarray(image.data), name=image.name, **correction_of(image, labels)))
            continue
        first = rows[0].image.value
        if not np.isclose(image_mpp(image), image_mpp(first)):
            raise ValueError(
                f"pair {number}: {image.name!r} has {image_mpp(image):g} µm/px but "
                f"{first.name!r} "
                f"{image_mpp(first):g}; fine-tune images of one pixel size at a time"
            )
        try:
            pixels = image_pixels(image)
        except ImageError as exc:
            raise ValueError(f"pair {number}: {exc}") from exc
        data = labels.data[0] if getattr(labels, "multiscale", False) else labels.data
        boxes = None
        if regions is not WHOLE_IMAGE:
            boxes = layer_boxes(regions, image)
            if not boxes:
                raise ValueError(
                    f"pair {number}: the Shapes layer {regions.name!r} has no rectangle; "
                    "draw one "
                    "around each corrected region, or choose 'none: the whole image'"
                )
        pairs.append(FinetunePair(pixels, np.array(data, copy=True), boxes, image.name))
    return pairs
