"""The Fine-tune widget's pairs: one row per (image, corrected labels, corrected regions), and them as engine pairs.

The corrected regions follow the Shapes layers: the selected one, else the one there is (the top-most
of several); learning from the whole image is an explicit choice, with a warning in the row.

A row whose image is a volume becomes a VolumeCorrection: its corrected slices are found by the
engine, against the model's result when the Labels layer is the mask Segment made of that volume.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label
from magicgui.widgets.bases import Widget

from napari_cdal._widgets._inputs import image_choices, image_pixels, is_volume_layer
from napari_cdal._widgets._layers import MASK, RESULT, is_edited
from napari_cdal.layer_metadata import image_mpp, tag_of

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]
    from napari.layers import Image, Labels, Shapes  # type: ignore[import-untyped]

    from napari_cdal.engine.training.corrections import FinetunePair, VolumeCorrection

WHOLE_IMAGE = "whole image"
NO_REGIONS = "no regions"
WHOLE_IMAGE_LABEL = "whole image (every nucleus counts as checked)"
WHOLE_IMAGE_WARNING = (
    "⚠ the whole mask is learned as truth, the nuclei you did not check too: "
    "draw rectangles around what you corrected instead"
)
NO_REGIONS_FIX = (
    "draw a rectangle around what you corrected in a Shapes layer (it is chosen here), or choose "
    f"'{WHOLE_IMAGE_LABEL}' if you checked every nucleus of the mask"
)


def _real(layer: Any) -> Any:
    """The layer behind napari's plugin proxy (the layer itself when it is none)."""
    return getattr(layer, "__wrapped__", layer)


def layer_boxes(regions: Shapes, image: Image) -> list[tuple[int, int, int, int]]:
    """Each shape's bounding box as (y0, y1, x0, x1) in `image`'s pixels (half-open)."""
    boxes = []
    for vertices in regions.data:
        corners = np.array([image.world_to_data(regions.data_to_world(vertex))[-2:] for vertex in np.asarray(vertices)])
        low, high = corners.min(axis=0), corners.max(axis=0)
        y0, x0 = (math.floor(v + 0.5) for v in low)
        y1, x1 = (math.ceil(v + 0.5) for v in high)
        boxes.append((y0, y1, x0, x1))
    return boxes


class PairRow(Container[Widget]):
    """One (image, corrected labels, corrected regions) choice."""

    def __init__(self, viewer: napari.viewer.Viewer, number: int) -> None:
        super().__init__(labels=True)
        self.margins = (0, 0, 0, 0)
        self._viewer = viewer
        self.image = ComboBox(
            label=f"image {number}",
            choices=lambda _: image_choices(self._viewer),
            tooltip="the image whose mask you corrected",
        )
        self.corrected_labels = ComboBox(
            label="corrected labels",
            choices=lambda _: self._labels_choices(),
            tooltip="the Labels layer holding your corrected nuclei (0 = background)",
        )
        self.regions = ComboBox(
            label="corrected regions",
            choices=lambda _: self._regions_choices(),
            tooltip="a Shapes layer of rectangles around what you checked: only they are learned from, and a "
            "part of them is held back to check the new model. Follows the selected Shapes layer",
        )
        self.warning = Label(value=WHOLE_IMAGE_WARNING, visible=False)
        self.warning.native.setWordWrap(True)
        self.extend([self.image, self.corrected_labels, self.regions, self.warning])
        self.image.changed.connect(self._on_image_changed)
        self.regions.changed.connect(self._on_regions_changed)
        viewer.layers.events.inserted.connect(self.follow_shapes)
        viewer.layers.events.removed.connect(self.follow_shapes)
        viewer.layers.selection.events.active.connect(self.follow_shapes)
        self._on_image_changed(self.image.value)
        self.follow_shapes()

    def follow_shapes(self, *_: Any) -> None:
        """Choose the selected Shapes layer, else the chosen one, else the top-most; a chosen whole image stays."""
        from napari.layers import Shapes

        self.regions.reset_choices()
        if self.regions.value == WHOLE_IMAGE:
            return
        shapes = [layer for layer in self._viewer.layers if isinstance(layer, Shapes)]
        active = self._viewer.layers.selection.active
        chosen = next((layer for layer in shapes if _real(layer) is _real(active)), None)
        if chosen is None:
            chosen = self.regions.value if self.regions.value in shapes else (shapes[-1] if shapes else NO_REGIONS)
        if self.regions.value is not chosen:
            self.regions.value = chosen

    @property
    def learns_whole_image(self) -> bool:
        """True when the whole 2-D image is chosen as corrected (the warned choice)."""
        image = self.image.value
        return self.regions.value == WHOLE_IMAGE and image is not None and not is_volume_layer(image)

    def _on_regions_changed(self, *_: Any) -> None:
        self.warning.visible = self.learns_whole_image

    def _labels_choices(self) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _regions_choices(self) -> list[tuple[str, Any]]:
        from napari.layers import Shapes

        shapes = [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Shapes)]
        placeholder = [] if shapes else [("draw rectangles in a Shapes layer…", NO_REGIONS)]
        return [*placeholder, *shapes, (WHOLE_IMAGE_LABEL, WHOLE_IMAGE)]

    def _on_image_changed(self, layer: Image | None) -> None:
        mask = self.mask_of(layer)
        if mask is not None:
            self.corrected_labels.value = mask

    def mask_of(self, image: Image | None) -> Labels | None:
        """The image's mask from Segment (an edited one first, top-most first), else None."""
        if image is None:
            return None
        masks = [
            layer
            for layer in reversed(list(self._viewer.layers))
            if layer in self.corrected_labels.choices
            and tag_of(layer.metadata).get("image") == image.name
            and tag_of(layer.metadata).get("kind") == MASK
        ]
        edited = [layer for layer in masks if is_edited(layer)]
        choices = [layer for layer in self.corrected_labels.choices if layer is not None]
        named = [layer for layer in choices if layer.name == f"{image.name} {MASK}"]
        candidates = edited + masks + named
        return candidates[0] if candidates else None


def correction_of(image: Image, labels: Labels) -> dict[str, Any]:
    """What the engine needs of a corrected volume: labels (copied) and the model's result when the mask keeps it."""
    tag = tag_of(labels.metadata)
    reference = tag.get(RESULT) if tag.get("image") == image.name else None
    return {"labels": np.array(labels.data, copy=True), "reference": reference}


def engine_pairs(rows: list[PairRow]) -> list[FinetunePair] | list[VolumeCorrection]:
    """The rows as engine pairs (labels copied, regions in image pixels); ValueError if one is bad."""
    from napari_cdal.engine.io.images import ImageError
    from napari_cdal.engine.training.corrections import FinetunePair, VolumeCorrection

    volumes: list[VolumeCorrection] = []
    tiles: list[FinetunePair] = []
    for number, row in enumerate(rows, start=1):
        image, labels, regions = row.image.value, row.corrected_labels.value, row.regions.value
        if image is None:
            raise ValueError(f"pair {number}: choose an image (open one first)")
        if labels is None:
            raise ValueError(
                f"pair {number}: choose the Labels layer with your corrections "
                "(segment the image first, then correct its mask with the brush)"
            )
        if is_volume_layer(image):
            if regions not in (WHOLE_IMAGE, NO_REGIONS):
                raise ValueError(
                    f"pair {number}: {image.name!r} is a volume, whose corrected slices are found from "
                    f"the labels; choose '{WHOLE_IMAGE_LABEL}' as corrected regions"
                )
            volumes.append(VolumeCorrection(np.asarray(image.data), name=image.name, **correction_of(image, labels)))
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
        if regions == NO_REGIONS:
            raise ValueError(f"pair {number}: {NO_REGIONS_FIX}")
        boxes = None
        if regions != WHOLE_IMAGE:
            boxes = layer_boxes(regions, image)
            if not boxes:
                raise ValueError(
                    f"pair {number}: the Shapes layer {regions.name!r} has no rectangle; "
                    "draw one "
                    f"around each corrected region, or choose '{WHOLE_IMAGE_LABEL}'"
                )
        tiles.append(FinetunePair(pixels, np.array(data, copy=True), boxes, image.name))
    if volumes and tiles:  # a model segments one or the other (the widget checks each image against the model first)
        raise ValueError("the pairs mix volumes and 2-D images: fine-tune a model on one kind at a time")
    return volumes or tiles
