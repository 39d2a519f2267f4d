"""A Segment run's live preview: the chain (steps), x̂0 (estimates) and attention stacks filling in as steps arrive.

The preview layers are the result layers to be (borrowed from an earlier run, or added and kept as the result),
so a run adds and removes as few layers as it can (see LivePreview).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cdal._widgets._layers import (
    ATTENTION,
    ESTIMATES,
    MASK,
    STACK_START,
    STEPS,
    UNCERTAINTY,
    Grid,
    find_result_layer,
    keep_selection,
    kind_title,
    map_style,
    mask_colormap,
    normalise_planes,
    preview_name,
    set_changed,
)
from napari_cdal.layer_metadata import TAG

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]
    from napari.layers import Image, Layer  # type: ignore[import-untyped]

    from napari_cdal.engine.segment.image import StepUpdate


def stack_planes(kind: str, n_steps: int) -> int:
    """Planes of a stack of this kind for a run of `n_steps` sampling steps: the chain has x_T besides."""
    return n_steps + 1 if kind == STEPS else n_steps


SHOWN_IN_PREVIEW = (STEPS, ATTENTION)
"""The stacks a run shows as they fill in (the chain and the attention), each once its first plane has come; x̂0
fills in hidden, one toggle away."""


class LivePreview:
    """A run's layers while it goes: the chain (steps), x̂0 (estimates) and attention stacks filling in
    as steps arrive, each in a `(running)` layer, and hidden `(running)` places for a new mask and uncertainty.

    A run adds and removes as few layers as it can, and adds them one per turn of the event loop (the
    steps stack with the click; a plane that comes before its stack waits for it), since each added
    layer holds the GUI thread (a Labels layer a fifth of a second on 2 cores) and each removed one
    costs a full garbage collection in napari (a fifth of a second with torch loaded). A result
    layer of the same image, model and kind from an earlier run is borrowed for the stacks'
    previews and given back as it was when the run is cancelled or fails; a mask or
    uncertainty layer that is there already is simply updated at the end. Where there is none, a
    new `(running)` layer is added at the start, and becomes the result layer when the run finishes
    (show_result's `spares`). `end()` gives back or takes away whatever did not become a result.

    The image stays in view: every preview is a translucent overlay (map_style), hidden until it has a
    plane to show (a new or borrowed layer is never an empty, opaque one over the image).
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        image: Image,
        size: tuple[int, int],
        model: str,
        origin: tuple[int, int] = (0, 0),
        n_steps: int = 1,
        uncertainty: bool = False,
        attention_map: str | None = None,
    ) -> None:
        """A preview of `image`'s part of `size` at `origin`, of `n_steps` steps (with an uncertainty with two samples
        or more); `attention_map`, the model's attention_display, names the attention layer (kind_title)."""
        from qtpy.QtCore import QTimer

        self._viewer = viewer
        self._image_name = image.name
        self._model = model
        self._attention_map = attention_map
        self._planes = Grid.of(image).shifted(origin)
        self._size = size
        self._removed = False
        self._borrowed: dict[str, dict[str, Any]] = {}
        """kind -> the borrowed result layer's data, name, visibility and grid before the run."""
        self.layers: dict[str, Layer] = {}
        self._waiting = [
            (STEPS, n_steps),
            (ESTIMATES, n_steps),
            (ATTENTION, n_steps),
            *([(UNCERTAINTY, 0)] if uncertainty else []),
            (MASK, 0),
        ]  # in the order show_result puts them
        self._early: dict[str, list[tuple[int, tuple[int, int, int, int], np.ndarray]]] = {}
        """kind -> planes (index in the stack, box, plane) that came before their stack was added."""
        self._unshown: set[str] = set()
        """Kinds of SHOWN_IN_PREVIEW whose layer waits, hidden, for its first plane."""
        self._add_waiting()  # the steps stack now, so every step finds it; the others one turn each
        self._timer = QTimer()
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._add_waiting)
        self._timer.start()

    @property
    def started(self) -> bool:
        """True once the preview has made every layer it makes at the start (the last one a turn after the click)."""
        return not self._waiting

    def _add_waiting(self) -> None:
        """Make the next waiting layer (one per turn of the event loop, so none freezes the canvas long)."""
        if self._removed or not self._waiting:
            self._timer.stop()
            return
        kind, n_steps = self._waiting.pop(0)
        if kind in STACK_START:
            layer = self._layer(kind, n_steps)
            early = self._early.pop(kind, [])
            for index, (y0, y1, x0, x1), plane in early:
                layer.data[index, y0:y1, x0:x1] = plane
            if early:
                self._show(kind)
                layer.refresh()
        elif kind not in self.layers and find_result_layer(self._viewer, self._image_name, kind, self._model) is None:
            self._add_place(kind)

    def _preview_name(self, kind: str) -> str:
        return preview_name(self._image_name, kind_title(kind, self._attention_map), self._model)

    def _preview_tag(self, kind: str) -> dict[str, Any]:
        return {TAG: {"image": self._image_name, "kind": f"{kind} preview", "model": self._model}}

    def _add_place(self, kind: str) -> None:
        """A hidden, empty `(running)` layer where the run's new mask or uncertainty will go."""
        with keep_selection(self._viewer):
            if kind == MASK:
                layer = self._viewer.add_labels(
                    np.zeros(self._size, np.uint32),
                    name=self._preview_name(kind),
                    metadata=self._preview_tag(kind),
                    visible=False,
                    colormap=mask_colormap(),
                    **self._planes.plane(),
                )
            else:
                layer = self._viewer.add_image(
                    np.zeros(self._size, np.float32),
                    name=self._preview_name(kind),
                    metadata=self._preview_tag(kind),
                    contrast_limits=(0.0, 1.0),
                    **self._planes.plane(),
                    **map_style(kind),
                )
        self.layers[kind] = layer

    def _borrow(self, kind: str, n_steps: int) -> Image | None:
        """The earlier result layer of this kind, emptied for the preview and renamed `(running)`; None if none.

        It is hidden until its first plane comes, then shown, but for the estimates, which keep the visibility the
        user gave them.
        """
        layer = find_result_layer(self._viewer, self._image_name, kind, self._model)
        if layer is None:
            return None
        grid = self._planes.stack(STACK_START[kind])
        self._borrowed[kind] = {
            "data": layer.data,
            "name": layer.name,
            "visible": layer.visible,
            **{key: getattr(layer, key) for key in grid},
        }
        layer.data = np.zeros((stack_planes(kind, n_steps), *self._size), np.float32)
        set_changed(layer, grid)
        layer.name = self._preview_name(kind)
        if kind in SHOWN_IN_PREVIEW:
            layer.visible = False
            self._unshown.add(kind)
        return layer

    def _add(self, kind: str, n_steps: int) -> Image:
        """A new `(running)` stack of this kind, hidden until its first plane comes."""
        if kind in SHOWN_IN_PREVIEW:
            self._unshown.add(kind)
        with keep_selection(self._viewer):
            return self._viewer.add_image(
                np.zeros((stack_planes(kind, n_steps), *self._size), np.float32),
                contrast_limits=(0.0, 1.0),
                name=self._preview_name(kind),
                metadata=self._preview_tag(kind),
                **self._planes.stack(STACK_START[kind]),
                **map_style(kind),
            )

    def _show(self, kind: str) -> None:
        """Show a stack of SHOWN_IN_PREVIEW that has a plane now (once)."""
        if kind in self._unshown:
            self._unshown.discard(kind)
            self.layers[kind].visible = True

    def _layer(self, kind: str, n_steps: int) -> Image:
        if kind not in self.layers:
            self.layers[kind] = self._borrow(kind, n_steps) or self._add(kind, n_steps)
        layer = self.layers[kind]
        planes = stack_planes(kind, n_steps)
        if layer.data.shape[0] != planes:
            layer.data = np.zeros((planes, *self._size), np.float32)
        return layer

    def spares(self) -> dict[str, Layer]:
        """The `(running)` layers this run added (not borrowed) that are still in the viewer, by kind."""
        return {
            kind: layer
            for kind, layer in self.layers.items()
            if kind not in self._borrowed and layer in self._viewer.layers
        }

    def update(self, step: StepUpdate) -> None:
        """Write one tile's step into the preview (x_T too at the first step) and move the step slider there."""
        if self._removed:
            return
        y0, y1, x0, x1 = step.box
        planes = [
            (STEPS, 0, step.chain_start),
            (STEPS, step.step + 1, step.chain),
            (ESTIMATES, step.step, step.foreground),
        ]
        if step.attention is not None:
            planes.append((ATTENTION, step.step, normalise_planes(step.attention[None])[0]))
        written: dict[str, Layer] = {}
        for kind, index, plane in planes:
            if plane is None:  # x_T comes with the first step only
                continue
            if kind not in self.layers:  # its stack is still waiting to be added: it takes the plane then
                self._early.setdefault(kind, []).append((index, step.box, plane))
                continue
            layer = written[kind] = self._layer(kind, step.n_steps)
            layer.data[index, y0:y1, x0:x1] = plane
            self._show(kind)
        dims, axis = self._viewer.dims, self._viewer.dims.ndim - 3
        if dims.point[axis] != step.step + 1:  # the step axis counts steps done; moving the slider redraws the stacks
            dims.set_point(axis, step.step + 1)
            return
        for layer in written.values():  # the same step (the next tile): redraw in place
            layer.refresh()

    def end(self, results: Iterable[Layer] = ()) -> None:
        """The run is over: layers in `results` stay (a borrowed one gets its name and visibility back),
        other borrowed layers get back all they had, other added ones are removed. Safe to call twice."""
        self._removed = True
        self._timer.stop()
        kept = list(results)
        gone = []
        for kind, layer in self.layers.items():
            if layer not in self._viewer.layers:
                continue
            result = any(layer is other for other in kept)
            before = self._borrowed.get(kind)
            if before is None:
                if not result:
                    gone.append(layer)
                continue
            restored = ("name", "visible") if result else tuple(before)
            for key in restored:
                setattr(layer, key, before[key])
        if gone:
            layers = getattr(self._viewer.layers, "__wrapped__", self._viewer.layers)
            batched = getattr(layers, "batched_update", contextlib.nullcontext)  # one redraw and collection for all
            with keep_selection(self._viewer), batched():
                for layer in gone:
                    layers.remove(layer)
        self.layers.clear()
        self._borrowed.clear()
