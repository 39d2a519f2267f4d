"""The Segment widget's layers: names, grids, edit detection, in-place updates and the live preview.

Every layer the plugin makes carries ``metadata["napari_cdal"] = {"image": <image layer name>,
"kind": <kind>, "model": <model name>}`` and is named ``<kind> · <image> · <model>`` (layer_name), so the
results of two models sit side by side; a mask also carries the fingerprint of the data it was given, so a mask
the user has painted on since is recognised and never overwritten. Adding layers never changes the
user's selected layer or tool (keep_selection). The stacks share a step axis that counts the steps
done, so napari's slider position and the coordinate in its status bar agree: the steps stack (the
chain as sampled) lies at 0..S, its x_T before any step, and the estimates (x̂0) and attention
stacks, made by the steps, at 1..S.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cdal.engine.defaults import DEFAULT_IMAGE_MPP

if TYPE_CHECKING:
    import napari
    import pandas as pd
    from napari.layers import Image, Labels, Layer

    from napari_cdal.engine.segment.image import SegmentationResult, StepUpdate
    from napari_cdal.engine.segment.review import ReviewItem

TAG = "napari_cdal"
MASK, STEPS, ESTIMATES, ATTENTION, UNCERTAINTY = "mask", "steps", "estimates", "attention", "uncertainty"
SLIDE_LABELS = "slide labels"
PREVIEW_SUFFIX = "(running)"
STEP_AXIS = "step"
CONTOUR_WIDTH = 2

STACK_START = {STEPS: 0.0, ESTIMATES: 1.0, ATTENTION: 1.0}
"""Where each stack's first plane lies on the step axis (steps done): the chain's x_T comes before any step."""

OVERLAY_COLOURS: dict[str, tuple[float, float, float]] = {
    STEPS: (0.3, 1.0, 0.3),
    ESTIMATES: (0.3, 1.0, 0.3),
    ATTENTION: (0.0, 1.0, 0.75),
    UNCERTAINTY: (1.0, 0.95, 0.0),
}
"""Each map's colour at its top (1), fading to transparent at 0: green (the nucleus maps), aqua (attention) and yellow
(uncertainty), the hues opposite H&E's pink eosin and purple haematoxylin, bright where those are dark."""

STYLES: dict[str, dict[str, Any]] = {
    STEPS: {"opacity": 0.8, "visible": False},
    ESTIMATES: {"opacity": 0.8, "visible": False},
    ATTENTION: {"visible": False},
    UNCERTAINTY: {"visible": False},
}
"""How each result map is shown besides its overlay colormap (map_style): hidden until the user shows it."""


def overlay_colormap(kind: str) -> Any:
    """The map's colormap: transparent at 0, OVERLAY_COLOURS[kind] at 1, so the image stays in view where it is low."""
    from napari.utils.colormaps import Colormap

    rgb = OVERLAY_COLOURS[kind]
    return Colormap(colors=[[*rgb, 0.0], [*rgb, 1.0]], controls=[0.0, 1.0], name=f"napari-cdal {kind}")


def map_style(kind: str, **overrides: Any) -> dict[str, Any]:
    """Layer keywords of a map of `kind`: a translucent overlay in its colormap, STYLES[kind], then `overrides`."""
    return {"colormap": overlay_colormap(kind), "blending": "translucent", **STYLES[kind], **overrides}


LABEL_HUES = (60, 150, 90, 185, 40, 120, 75, 170, 50, 135, 105, 160)
"""Hues (degrees) of the mask's labels, in the order ids take them (neighbouring ids far apart): yellow, green and
cyan, none of H&E's blue, purple, pink or brown."""


def mask_colormap() -> Any:
    """The labels' colormap: bright yellows, greens and cyans, full and paler, that stay visible on H&E; 0 clear."""
    import colorsys

    from napari.utils.colormaps import CyclicLabelColormap

    colours = [(0.0, 0.0, 0.0, 0.0)]  # the background
    for saturation in (1.0, 0.6):
        colours += [(*colorsys.hsv_to_rgb(hue / 360, saturation, 1.0), 1.0) for hue in LABEL_HUES]
    return CyclicLabelColormap(colors=np.array(colours, np.float32), name="napari-cdal nuclei")


def layer_name(image_name: str, kind: str, model: str | None = None) -> str:
    """`<kind> · <image> · <model>` (`<kind> · <image>` without a model): 'mask · TCGA-B0-5698 · cdal_monuseg'.

    napari's layer list cuts a long name in its middle, so the kind goes first and the model last, where they stay
    in view and the layers of two models can be told apart; the list's tooltip shows the whole name.
    """
    return " · ".join(part for part in (kind, image_name, model) if part)


def preview_name(image_name: str, kind: str, model: str | None = None) -> str:
    """A run's layer of `kind` while the run goes: `<kind> (running) · <image> · <model>`."""
    return layer_name(image_name, f"{kind} {PREVIEW_SUFFIX}", model)


@contextlib.contextmanager
def keep_selection(viewer: napari.Viewer) -> Iterator[None]:
    """Add or remove layers inside without changing the user's selected layers, active layer or its tool."""
    # napari hands plugins a proxy of the viewer, whose layers are new wrappers at each access: use the real list
    layers = getattr(viewer.layers, "__wrapped__", viewer.layers)
    selection = layers.selection
    active, chosen = selection.active, set(selection)
    mode = getattr(active, "mode", None)
    # napari makes each inserted layer the active one (and rebuilds its controls): not while this runs
    activates = getattr(layers, "_activate_on_insert", None)
    if activates is not None:
        layers._activate_on_insert = False
    try:
        yield
    finally:
        if activates is not None:
            layers._activate_on_insert = activates
        kept = {layer for layer in chosen if layer in layers}
        if set(selection) != kept or selection.active is not active:
            selection.clear()
            selection.update(kept)
            if active in kept:
                selection.active = active
        if mode is not None and active in layers and active.mode != mode:
            active.mode = mode


def fingerprint(data: Any) -> str:
    """A hash of an array's shape, dtype and bytes."""
    array = np.ascontiguousarray(np.asarray(data))
    digest = hashlib.blake2b(f"{array.shape}{array.dtype.str}".encode(), digest_size=16)
    digest.update(array.data)
    return digest.hexdigest()


def is_edited(layer: Labels) -> bool:
    """True when a plugin-made mask's data no longer matches what the plugin wrote into it."""
    return layer.metadata.get(TAG, {}).get("fingerprint") != fingerprint(layer.data)


def normalise_planes(stack: np.ndarray) -> np.ndarray:
    """Scale each plane of a (T, H, W) stack to [0, 1] on its own (flat planes become 0)."""
    stack = np.asarray(stack, dtype=np.float32)
    low = stack.min(axis=(-2, -1), keepdims=True)
    span = stack.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 0, (stack - low) / np.where(span > 0, span, 1), 0).astype(np.float32)


def image_mpp(layer: Layer) -> float:
    """µm per pixel from a layer's scale (converted from its length unit), else 0.25 (a 40x tile)."""
    return mpp_from_scale(layer.scale, getattr(layer, "units", None))


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


@dataclass(frozen=True)
class Grid:
    """Where an image layer's pixels sit: scale, translate, units and labels of its last two axes."""

    scale: tuple[float, float]
    translate: tuple[float, float]
    units: tuple[Any, Any] | None
    axis_labels: tuple[str, str] | None

    @classmethod
    def of(cls, layer: Layer, axes: int = 2) -> Grid:
        """The grid of `layer`'s last `axes` axes (3 for a volume)."""
        units = getattr(layer, "units", None)
        labels = getattr(layer, "axis_labels", None)
        return cls(
            tuple(layer.scale[-axes:]),
            tuple(layer.translate[-axes:]),
            tuple(units[-axes:]) if units else None,
            tuple(labels[-axes:]) if labels else None,
        )

    def shifted(self, origin: tuple[int, int]) -> Grid:
        """The grid of a part of the image starting at pixel `origin` (row, column)."""
        translate = tuple(float(t + s * o) for t, s, o in zip(self.translate, self.scale, origin, strict=True))
        return Grid(self.scale, translate, self.units, self.axis_labels)

    def plane(self) -> dict[str, Any]:
        """Layer keywords for an H x W layer on this grid."""
        grid: dict[str, Any] = {"scale": self.scale, "translate": self.translate}
        if self.units is not None:
            grid["units"] = self.units
        if self.axis_labels is not None:
            grid["axis_labels"] = self.axis_labels
        return grid

    def stack(self, start: float = 1.0) -> dict[str, Any]:
        """Layer keywords for a stack of planes on this grid (the step axis has scale 1 and starts at `start`)."""
        grid: dict[str, Any] = {"scale": (1.0, *self.scale), "translate": (start, *self.translate)}
        if self.units is not None:
            grid["units"] = ("pixel", *self.units)
        if self.axis_labels is not None:
            grid["axis_labels"] = (STEP_AXIS, *self.axis_labels)
        return grid


def _same(current: Any, value: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(current, float), np.asarray(value, float)))
    except (TypeError, ValueError):  # units, axis labels
        return [str(item) for item in current] == [str(item) for item in value]


def set_changed(layer: Layer, values: dict[str, Any]) -> None:
    """Set the layer properties (scale, translate, units, …) that differ: napari re-slices on each set, equal or not."""
    for key, value in values.items():
        if not _same(getattr(layer, key), value):
            setattr(layer, key, value)


def find_result_layer(viewer: napari.Viewer, image_name: str, kind: str, model: str | None = None) -> Layer | None:
    """The top-most layer this plugin made for (image, kind[, model]); masks the user has edited don't count."""
    for layer in reversed(list(viewer.layers)):
        tag = layer.metadata.get(TAG) or {}
        if tag.get("image") == image_name and tag.get("kind") == kind and tag.get("model") == model:
            if kind == MASK and is_edited(layer):
                continue
            return layer
    return None


def put_image_layer(
    viewer: napari.Viewer,
    image_name: str,
    kind: str,
    data: np.ndarray,
    grid: dict[str, Any],
    contrast_limits: tuple[float, float],
    model: str | None = None,
    spare: Image | None = None,
) -> Image:
    """Add the result image layer of (image, kind[, model]), or update the one there in place.

    With no such layer, `spare` (the run's preview layer of this kind, on the same grid) becomes it:
    renamed, tagged and styled, so nothing is added, and nothing removed (napari runs a full garbage
    collection for each layer removed, a fifth of a second with torch loaded).
    """
    layer = find_result_layer(viewer, image_name, kind, model)
    name = layer_name(image_name, kind, model)
    tag = {"image": image_name, "kind": kind, **({} if model is None else {"model": model})}
    if layer is None and spare is None:
        return viewer.add_image(
            data, name=name, contrast_limits=contrast_limits, metadata={TAG: tag}, **grid, **map_style(kind)
        )
    if layer is None:
        layer = spare
        layer.name = name
        layer.metadata = {TAG: tag}
        for key, value in map_style(kind).items():
            setattr(layer, key, value)
    layer.data = data
    set_changed(layer, {**grid, "contrast_limits": contrast_limits})
    return layer


def put_mask_layer(
    viewer: napari.Viewer,
    image_name: str,
    labels: np.ndarray,
    grid: dict[str, Any],
    contour: int,
    features: pd.DataFrame | dict[str, np.ndarray] | None = None,
    origin: tuple[int, int] = (0, 0),
    model: str | None = None,
    extra: dict[str, Any] | None = None,
    spare: Labels | None = None,
) -> Labels:
    """Add the mask of (image[, model]) with its tag (and `extra` in it), or update an unedited one in place.

    With no such mask, `spare` (the run's hidden `(running)` mask place, on the same grid) becomes it.
    """
    layer = find_result_layer(viewer, image_name, MASK, model)
    tag = {
        "image": image_name,
        "kind": MASK,
        "origin": [int(origin[0]), int(origin[1])],
        **({} if model is None else {"model": model}),
        **(extra or {}),
    }
    name = layer_name(image_name, MASK, model)
    if layer is None and spare is None:
        layer = viewer.add_labels(labels, name=name, metadata={TAG: tag}, colormap=mask_colormap(), **grid)
    else:
        if layer is None:
            layer = spare
            layer.name, layer.visible = name, True
        layer.data = labels
        set_changed(layer, grid)
    if features is not None:
        layer.features = features
    if layer.contour != contour:
        layer.contour = contour
    layer.metadata[TAG] = dict(tag, fingerprint=fingerprint(layer.data))
    return layer


@dataclass(frozen=True)
class ShownResult:
    """A segmentation made ready for its layers off the GUI thread: the result, the mask's table, the planes."""

    result: SegmentationResult
    features: pd.DataFrame
    """The mask's per-nucleus table, a DataFrame already (napari would import pandas and convert on the GUI thread)."""
    attention: np.ndarray | None
    """The attention stack scaled per plane to [0, 1] (normalise_planes), as its layer shows it."""
    review: list[ReviewItem] = field(default_factory=list)
    """The result's review queue, best first (engine.segment.review)."""
    doubt: np.ndarray | None = None
    """The uncertainty as its layer shows it (engine.segment.doubt: nuclei painted, soft borders left out)."""
    notes: list[str] = field(default_factory=list)
    """How the image was read and what the model made of it (io.images.reading_notes), shown as notifications."""


def prepare_result(result: SegmentationResult, mpp: float, notes: list[str] | None = None) -> ShownResult:
    """A result's per-nucleus table, scaled attention, review queue and doubt map (in the worker: the canvas
    does not freeze; the CLI and slides, which show none of them, never make them)."""
    import pandas as pd

    from napari_cdal.engine.segment.doubt import doubt_map
    from napari_cdal.engine.segment.review import review_items

    attention = None if result.attention is None else normalise_planes(result.attention)
    review = review_items(result.labels, result.probability, result.uncertainty, mpp, result.error_map)
    doubt = None if result.uncertainty is None else doubt_map(result.labels, result.uncertainty, mpp)
    return ShownResult(result, pd.DataFrame(result_features(result, mpp)), attention, review, doubt, list(notes or []))


def show_result(
    viewer: napari.Viewer,
    image: Image,
    shown: ShownResult,
    contour: int,
    model: str,
    origin: tuple[int, int] = (0, 0),
    spares: dict[str, Image] | None = None,
) -> dict[str, Layer]:
    """Put a result into the layers named after `image` and `model` (updated in place where possible).

    `origin` is where the segmented part starts in the image's full-resolution pixels (row, column):
    the layers are translated there, and the mask's metadata keeps it for the writers. `spares` are
    the run's preview layers by kind, taken over where no result layer of their kind exists. The
    user's selected layer and tool stay as they were.
    """
    result = shown.result
    grid = Grid.of(image).shifted(origin)
    with keep_selection(viewer):
        layers = put_map_layers(
            viewer, image.name, grid, result.chain, result.steps, shown.attention, shown.doubt, model, spares
        )
        labels = np.ascontiguousarray(result.labels, dtype=np.uint32)
        layers[MASK] = put_mask_layer(
            viewer,
            image.name,
            labels,
            grid.plane(),
            contour,
            shown.features,
            origin,
            model,
            spare=(spares or {}).get(MASK),
        )
    return layers


def put_map_layers(
    viewer: napari.Viewer,
    image_name: str,
    grid: Grid,
    chain: np.ndarray | None,
    estimates: np.ndarray | None,
    attention: np.ndarray | None,
    uncertainty: np.ndarray | None,
    model: str,
    spares: dict[str, Image] | None = None,
) -> dict[str, Layer]:
    """The steps (the chain x_T..x_0), estimates (x̂0 per step) and attention stacks and the uncertainty map of a run.

    The chain and the estimates are the engine's `chain` and `steps`, on [0, 1]; the attention is
    already scaled per plane. Shared by tiles and volumes; `spares` are preview layers by kind that
    may become the stacks (see put_image_layer). With no uncertainty (one sample) an older
    uncertainty layer of the same image and model is removed, since it would not belong to the new mask.
    """
    spares = spares or {}
    layers: dict[str, Layer] = {}
    for kind, stack in ((STEPS, chain), (ESTIMATES, estimates), (ATTENTION, attention)):
        if stack is not None:
            layers[kind] = put_image_layer(
                viewer,
                image_name,
                kind,
                np.asarray(stack, np.float32),
                grid.stack(STACK_START[kind]),
                (0.0, 1.0),
                model,
                spares.get(kind),
            )
    if uncertainty is not None:
        uncertainty = np.asarray(uncertainty, np.float32)
        top = max(float(uncertainty.max()), 1e-6)
        layers[UNCERTAINTY] = put_image_layer(
            viewer, image_name, UNCERTAINTY, uncertainty, grid.plane(), (0.0, top), model, spares.get(UNCERTAINTY)
        )
    else:
        stale = find_result_layer(viewer, image_name, UNCERTAINTY, model)
        if stale is not None:
            viewer.layers.remove(stale)
    return layers


def result_features(result: SegmentationResult, mpp: float) -> dict[str, np.ndarray]:
    """The mask layer's per-nucleus table: id, centroid, area µm², mean uncertainty and attention.

    Attention is the last step's map, scaled to [0, 1] as the layer shows it.
    """
    from napari_cdal.engine.segment.measurements import nucleus_features

    attention = None if result.attention is None else normalise_planes(result.attention[-1:])[0]
    return nucleus_features(result.labels, mpp, result.uncertainty, attention)


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
    ) -> None:
        from qtpy.QtCore import QTimer

        self._viewer = viewer
        self._image_name = image.name
        self._model = model
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
        return preview_name(self._image_name, kind, self._model)

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


def show_slide_labels(viewer: napari.Viewer, image: Image, levels: list[Any], store: str) -> Labels:
    """The labels store of a whole-slide run as a multiscale Labels layer over `image` (one per store, reused)."""
    for layer in viewer.layers:
        tag = layer.metadata.get(TAG) or {}
        if tag.get("kind") == SLIDE_LABELS and tag.get("store") == store:
            layer.refresh()
            return layer
    with keep_selection(viewer):
        return viewer.add_labels(
            levels if len(levels) > 1 else levels[0],
            multiscale=len(levels) > 1,
            colormap=mask_colormap(),
            name=layer_name(image.name, SLIDE_LABELS),
            metadata={TAG: {"image": image.name, "kind": SLIDE_LABELS, "store": store}},
            **Grid.of(image).plane(),
        )
