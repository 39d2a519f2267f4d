"""Review of a Segment result: step the camera through the places likeliest wrong, each marked, ready for the brush.

The queue is engine.segment.review's: predicted nuclei, likely merges and likely missed nuclei on
one score scale. Each item is marked on the canvas in a Points layer `review · <image> · <model>`
(a square per item, coloured by kind, the current one drawn thicker); a nucleus or merge is
selected in the mask for the brush, a miss gets a new free id so the brush paints a new nucleus.
Each item visited adds its box, widened by REGION_MARGIN_UM, as a rectangle to the Shapes layer
`checked regions · <image>`: the corrected regions Fine-tune learns from, as `finetune --regions`
reads a review CSV (delete a rectangle to leave that place out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cdal._widgets._layers import Grid, find_result_layer, keep_selection, layer_name, set_changed
from napari_cdal.engine.defaults import MIN_REGION_UM, REGION_MARGIN_UM
from napari_cdal.engine.io.regions import widen_box
from napari_cdal.layer_metadata import TAG, image_mpp, tag_of

if TYPE_CHECKING:
    from napari_cdal.engine.segment.review import ReviewItem

REVIEW_SCREEN_PX_PER_PIXEL = 3.0
"""Review zooms in at least this far: screen pixels per image pixel, so a nucleus fills the view."""

REVIEW = "review"
"""The kind (and name suffix) of the layer marking the review's items."""

KIND_COLOURS = {"nucleus": (1.0, 0.5, 0.0), "merge": (1.0, 0.25, 1.0), "miss": (0.0, 0.9, 1.0)}
"""How each kind of item is marked: orange nuclei, magenta merges, cyan misses (RGB, 0..1); yellow is the
uncertainty's alone, so a mark is never read as doubt."""

MARK_MARGIN = 1.3
"""A mark's square is this many times the item's longer side."""

MARK_WIDTH, CURRENT_WIDTH = 0.06, 0.16
"""Border widths (relative to the square) of the marks and of the current item's."""

MARK_ALPHA = 0.6
"""Opacity of the marks' borders but the current item's (drawn at full opacity)."""

CHECKED = "checked regions"
"""The kind (and name suffix) of the Shapes layer of the places Review visited: Fine-tune's corrected regions."""

CHECKED_COLOUR = (0.2, 1.0, 0.4, 1.0)
"""Green rectangles: places looked at and corrected."""

KIND_WORDS = {"nucleus": "doubtful nucleus", "merge": "likely merge", "miss": "likely missed nucleus"}


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera: `viewer.scene.camera` from napari 0.9 on, `viewer.camera` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


class ReviewQueue:
    """The review items of one result, in order, and where the review has got to.

    The ranking is taken when the result arrives (engine.segment.review, in the worker), so the
    user's edits do not reshuffle it mid-review.
    """

    def __init__(self, viewer: Any, mask: Any, items: list[ReviewItem]) -> None:
        self._viewer = viewer
        self._mask = mask
        self._all = list(items)
        tag = tag_of(mask.metadata)
        self._image_name, self._model = str(tag.get("image", mask.name)), tag.get("model")
        self._scale = np.asarray(mask.scale[-2:], float)
        self._translate = np.asarray(mask.translate[-2:], float)
        self.items: list[ReviewItem] = []
        self.position = -1
        self._checked: set[int] = set()
        """Ranks of the items whose box is in the checked regions layer already."""

    @property
    def size(self) -> int:
        """How many items the review steps through."""
        return len(self.items)

    @property
    def current(self) -> ReviewItem | None:
        """The item the review is at (None before the first step)."""
        return self.items[self.position] if 0 <= self.position < len(self.items) else None

    def restart(self, count: int) -> None:
        """Review the first `count` items from the first one again (an existing marks layer follows)."""
        self.items = self._all[:count]
        self.position = -1
        layer = self.marks_layer()
        if layer is not None:
            self._mark(layer)

    def marks_layer(self) -> Any:
        """The layer marking this result's items, if there is one."""
        return find_result_layer(self._viewer, self._image_name, REVIEW, self._model)

    def step(self, viewer: Any) -> str:
        """Centre the camera on the next item, mark it, ready the mask's brush; the status line to show."""
        if not self.items:
            return ""
        self.position = (self.position + 1) % len(self.items)
        item = self.items[self.position]
        camera = viewer_camera(viewer)
        camera.center = tuple(float(c) for c in self._translate + self._scale * np.array([item.y, item.x]))
        camera.zoom = max(camera.zoom, REVIEW_SCREEN_PX_PER_PIXEL / float(self._scale.min()))
        self._show_marks()
        self._add_checked_region(item)
        head = (
            f"Review {self.position + 1} of {len(self.items)}: {KIND_WORDS[item.kind]}"
            f"{'' if item.kind == 'miss' else f' {item.id}'}, score {item.score:.2f}, {item.area_um2:.0f} µm²"
        )
        if self._mask not in viewer.layers:
            return f"{head} (its mask layer is gone)"
        if item.kind == "miss":
            free = int(np.max(self._mask.data, initial=0)) + 1
            self._mask.selected_label = free
            tail = f"the brush paints it as new nucleus {free}"
        else:
            self._mask.selected_label = item.id
            tail = (
                "it is selected in the mask: split it with the brush and a new id"
                if item.kind == "merge"
                else "it is selected in the mask, ready for the brush"
            )
        viewer.layers.selection.active = self._mask
        return f"{head}; {tail}"

    def checked_layer(self) -> Any:
        """The Shapes layer of the places this image's review visited, if there is one."""
        return find_result_layer(self._viewer, self._image_name, CHECKED)

    def _add_checked_region(self, item: ReviewItem) -> None:
        """Add the item's box, widened, to the checked regions (once per item; a deleted layer starts afresh)."""
        layer = self.checked_layer()
        if layer is None:
            self._checked = set()
        if item.rank in self._checked:
            return
        self._checked.add(item.rank)
        mpp = image_mpp(self._mask)
        height, width = (int(n) for n in self._mask.data.shape[-2:])
        shape = (height, width)
        y0, y1, x0, x1 = widen_box(item.box, round(REGION_MARGIN_UM / mpp), int(np.ceil(MIN_REGION_UM / mpp)), shape)
        rectangle = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) - 0.5  # pixel edges, not centres
        if layer is None:
            tag = {"image": self._image_name, "kind": CHECKED}
            with keep_selection(self._viewer):
                self._viewer.add_shapes(
                    [rectangle],
                    shape_type="rectangle",
                    name=layer_name(self._image_name, CHECKED),
                    metadata={TAG: tag},
                    edge_color=[CHECKED_COLOUR],
                    face_color="transparent",
                    edge_width=2.0 * float(self._scale.min()),
                    **Grid.of(self._mask).plane(),
                )
            return
        layer.add_rectangles([rectangle], edge_color=[CHECKED_COLOUR], face_color="transparent")

    def _points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(centres, sizes, border colours, border widths) of the marks, the current item highlighted."""
        centres = np.array([[item.y, item.x] for item in self.items], float).reshape(-1, 2)
        sizes = np.array(
            [MARK_MARGIN * max(item.box[1] - item.box[0], item.box[3] - item.box[2], 4) for item in self.items], float
        )
        colours = np.array([(*KIND_COLOURS[item.kind], MARK_ALPHA) for item in self.items], float).reshape(-1, 4)
        widths = np.full(len(self.items), MARK_WIDTH)
        if self.current is not None:
            colours[self.position, 3] = 1.0
            widths[self.position] = CURRENT_WIDTH
        return centres, sizes, colours, widths

    def _show_marks(self) -> None:
        """Mark the items in this result's review layer, adding it (without taking the selection) if missing."""
        layer = self.marks_layer()
        if layer is None:
            centres, sizes, colours, widths = self._points()
            name = layer_name(self._image_name, REVIEW, self._model)
            tag = {"image": self._image_name, "kind": REVIEW, **({} if self._model is None else {"model": self._model})}
            with keep_selection(self._viewer):
                self._viewer.add_points(
                    centres,
                    name=name,
                    metadata={TAG: tag},
                    ndim=2,
                    symbol="square",
                    size=sizes,
                    face_color="transparent",
                    border_color=colours,
                    border_width=widths,
                    border_width_is_relative=True,
                    **Grid.of(self._mask).plane(),
                )
            return
        self._mark(layer)

    def _mark(self, layer: Any) -> None:
        """Put this queue's marks into an existing layer (on the mask's grid)."""
        centres, sizes, colours, widths = self._points()
        set_changed(layer, Grid.of(self._mask).plane())
        layer.data = centres
        if len(centres):
            layer.size = sizes
            layer.border_color = colours
            layer.border_width = widths
