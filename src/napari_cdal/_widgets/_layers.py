"""The result layers every Segment run shares: kinds, names, styles, grids, edit detection and in-place updates.

Every layer the plugin makes carries ``metadata["napari_cdal"] = {"image": <image layer name>,
"kind": <kind>, "model": <model name>}`` and is named ``<kind> · <image> · <model>`` (layer_name), so the
results of two models sit side by side; a mask also carries the fingerprint of the data it was given, so a mask
the user has painted on since is recognised and never overwritten. Adding layers never changes the
user's selected layer or tool (keep_selection). The stacks share a step axis that counts the steps
done, so napari's slider position and the coordinate in its status bar agree: the steps stack (the
chain as sampled) lies at 0..S, its x_T before any step, and the estimates (x̂0) and attention
stacks, made by the steps, at 1..S. What one job adds lives with its run (the live preview of a region in
_preview.py, a region's result in _segment_run.py, a volume's in _volume_run.py, a slide's in _slide_run.py).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cdal.layer_metadata import TAG, tag_of

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]
    import pandas as pd  # type: ignore[import-untyped]
    from napari.layers import Image, Labels, Layer  # type: ignore[import-untyped]

MASK, STEPS, ESTIMATES, ATTENTION, UNCERTAINTY = "mask", "steps", "estimates", "attention", "uncertainty"
SLIDE_LABELS = "slide labels"
RESULT = "result"
"""The mask tag's key for the model's own labels of a volume, against which Fine-tune finds the corrected slices."""
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
(uncertainty, the one yellow of the plugin), the hues opposite H&E's pink eosin and purple haematoxylin, bright where
those are dark."""

STYLES: dict[str, dict[str, Any]] = {
    STEPS: {"opacity": 0.8, "visible": False},
    ESTIMATES: {"opacity": 0.8, "visible": False},
    ATTENTION: {"visible": False},
    UNCERTAINTY: {"visible": False},
}
"""How each result map is shown besides its overlay colormap (map_style): hidden until the user shows it."""


def overlay_colormap(kind: str) -> Any:
    """The map's colormap: transparent at 0, OVERLAY_COLOURS[kind] at 1, so the image stays in view where it is low."""
    from napari.utils.colormaps import Colormap  # type: ignore[import-untyped]

    rgb = OVERLAY_COLOURS[kind]
    return Colormap(colors=[[*rgb, 0.0], [*rgb, 1.0]], controls=[0.0, 1.0], name=f"napari-cdal {kind}")


def map_style(kind: str, **overrides: Any) -> dict[str, Any]:
    """Layer keywords of a map of `kind`: a translucent overlay in its colormap, STYLES[kind], then `overrides`."""
    return {"colormap": overlay_colormap(kind), "blending": "translucent", **STYLES[kind], **overrides}


LABEL_HUES = (85, 145, 115, 175, 95, 155, 125, 185, 105, 165, 135, 195)
"""Hues (degrees) of the mask's labels, in the order ids take them (neighbouring ids far apart): lime, green and
cyan, none of H&E's blue, purple, pink or brown, and no yellow (the uncertainty's colour alone)."""


def mask_colormap() -> Any:
    """The labels' colormap: bright limes, greens and cyans, full and paler, that stay visible on H&E; 0 clear."""
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


def kind_title(kind: str, attention_map: str | None = None) -> str:
    """A layer's kind as its name says it: the attention says which of the discriminator's maps it shows (the model's
    `attention_display`: 'attention: error probability', 'attention: channel mean'); any other kind, its own word."""
    if kind == ATTENTION and attention_map:
        return f"{ATTENTION}: {attention_map.replace('_', ' ')}"
    return kind


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
    try:
        with _inserted_layers_not_activated(layers):
            yield
    finally:
        kept = {layer for layer in chosen if layer in layers}
        if set(selection) != kept or selection.active is not active:
            selection.clear()
            selection.update(kept)
            if active in kept:
                selection.active = active
        if mode is not None and active in layers and active.mode != mode:
            active.mode = mode


@contextlib.contextmanager
def _inserted_layers_not_activated(layers: Any) -> Iterator[None]:
    """Inside, napari does not make each inserted layer the active one: the plugin's one use of napari's private API.

    napari's layer list activates every layer inserted (`SelectableEventedList._activate_on_insert`, private;
    napari up to 0.9 offers no public switch): the user's active layer and tool change, and napari rebuilds the layer
    controls for each one, which holds the GUI thread. Restoring the selection afterwards (keep_selection does) puts
    the layer and tool back but not the rebuilds, nor the selection events a user's plugin or script would see.
    Where napari has no such switch, nothing is changed and the selection is only restored.
    """
    activates = getattr(layers, "_activate_on_insert", None)
    if activates is None:
        yield
        return
    layers._activate_on_insert = False
    try:
        yield
    finally:
        layers._activate_on_insert = activates


def fingerprint(data: Any) -> str:
    """A hash of an array's shape, dtype and bytes."""
    array = np.ascontiguousarray(np.asarray(data))
    digest = hashlib.blake2b(f"{array.shape}{array.dtype.str}".encode(), digest_size=16)
    digest.update(array.data)
    return digest.hexdigest()


def is_edited(layer: Labels) -> bool:
    """True when a plugin-made mask's data no longer matches what the plugin wrote into it."""
    return bool(tag_of(layer.metadata).get("fingerprint") != fingerprint(layer.data))


def normalise_planes(stack: np.ndarray) -> np.ndarray:
    """Scale each plane of a (T, H, W) stack to [0, 1] on its own (flat planes become 0)."""
    stack = np.asarray(stack, dtype=np.float32)
    low = stack.min(axis=(-2, -1), keepdims=True)
    span = stack.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 0, (stack - low) / np.where(span > 0, span, 1), 0).astype(np.float32)


@dataclass(frozen=True)
class Grid:
    """Where an image layer's pixels sit: scale, translate, units and labels of its last axes (two; three for a
    volume)."""

    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[Any, ...] | None
    axis_labels: tuple[str, ...] | None

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
        tag = tag_of(layer.metadata)
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
    title: str | None = None,
) -> Image:
    """Add the result image layer of (image, kind[, model]), or update the one there in place.

    With no such layer, `spare` (the run's preview layer of this kind, on the same grid) becomes it:
    renamed, tagged and styled, so nothing is added, and nothing removed (napari runs a full garbage
    collection for each layer removed, a fifth of a second with torch loaded). A new layer's name says the kind
    as `title` does (kind_title), the kind itself without one.
    """
    layer = find_result_layer(viewer, image_name, kind, model)
    name = layer_name(image_name, title or kind, model)
    tag = {"image": image_name, "kind": kind, **({} if model is None else {"model": model})}
    if layer is None:
        if spare is None:
            return viewer.add_image(
                data, name=name, contrast_limits=contrast_limits, metadata={TAG: tag}, **grid, **map_style(kind)
            )
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
    if layer is None and spare is not None:
        layer = spare
        layer.name, layer.visible = name, True
    if layer is None:
        layer = viewer.add_labels(labels, name=name, metadata={TAG: tag}, colormap=mask_colormap(), **grid)
    else:
        layer.data = labels
        set_changed(layer, grid)
    if features is not None:
        layer.features = features
    if layer.contour != contour:
        layer.contour = contour
    layer.metadata[TAG] = dict(tag, fingerprint=fingerprint(layer.data))
    return layer


def put_map_layers(
    viewer: napari.Viewer,
    image_name: str,
    grid: Grid,
    chain: np.ndarray | None,
    estimates: np.ndarray | None,
    attention: np.ndarray | None,
    uncertainty: np.ndarray | None,
    model: str,
    spares: dict[str, Layer] | None = None,
    attention_map: str | None = None,
) -> dict[str, Layer]:
    """The steps (the chain x_T..x_0), estimates (x̂0 per step) and attention stacks and the uncertainty map of a run.

    The chain and the estimates are the engine's `chain` and `steps`, on [0, 1]; the attention is
    already scaled per plane, and its layer's name says which map it is (`attention_map`, the model's
    attention_display). Shared by tiles and volumes; `spares` are preview layers by kind that
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
                kind_title(kind, attention_map),
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
