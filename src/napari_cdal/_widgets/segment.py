"""The Segment dock widget: gathers settings, runs engine.segment_image in a napari thread_worker.

During a run only the `(running)` preview layers change; the result layers are written when the
run finishes, so Cancel (or an error) leaves them exactly as they were.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from psygnal import Signal

from napari_cdal._widgets._layers import (
    CONTOUR_WIDTH,
    DEFAULT_IMAGE_MPP,
    MASK,
    TAG,
    LivePreview,
    image_mpp,
    show_result,
)
from napari_cdal._widgets._run import WorkerRun

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

    from napari_cdal.engine.events import Progress
    from napari_cdal.engine.method.model import CdalModel
    from napari_cdal.engine.segment.image import SegmentationResult

OTHER_FILE = ""
DEFAULT_STEPS = 4
REVIEW_SCREEN_PX_PER_PIXEL = 3.0
"""Review zooms in at least this far: screen pixels per image pixel, so a nucleus fills the view."""

_LIVE_WIDGETS: weakref.WeakSet[SegmentWidget] = weakref.WeakSet()


@dataclass(frozen=True)
class SegmentSettings:
    """What one click on Segment runs with."""

    model_path: str
    device: str
    image_mpp: float
    steps: int
    samples: int
    seed: int
    threshold: float


@dataclass(frozen=True)
class RunFailure:
    """A run stopped by bad input (image, model file); `message` says why and what to do."""

    message: str


@functools.lru_cache(maxsize=2)
def _cached_model(path: str, mtime_ns: int, device: str) -> CdalModel:
    from napari_cdal.engine.method.model import load_model

    return load_model(path, device)


def load_model_cached(path: str | Path, device: str) -> CdalModel:
    """Load a model once per (file, modification time, device)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return _cached_model(str(path.resolve()), path.stat().st_mtime_ns, device)


def run_segmentation(
    image: np.ndarray, settings: SegmentSettings
) -> Generator[Progress, None, SegmentationResult | RunFailure]:
    """Worker body: load the model, yield the engine's step events, return the result (or why not)."""
    from napari_cdal.engine.checks import check_memory, segment_peak_bytes
    from napari_cdal.engine.device import resolve_device
    from napari_cdal.engine.io.checkpoint import CheckpointError
    from napari_cdal.engine.io.images import ImageError
    from napari_cdal.engine.segment.image import segment_image

    try:
        device = str(resolve_device(settings.device))
        model = load_model_cached(settings.model_path, device)
        height, width = image.shape[:2]
        check_memory(segment_peak_bytes(height, width, settings.image_mpp, model.config, settings.steps,
                                        settings.samples), f"the image ({height} x {width} px)")
        for event in segment_image(
            model,
            image,
            image_mpp=settings.image_mpp,
            steps=settings.steps,
            samples=settings.samples,
            seed=settings.seed,
            threshold=settings.threshold,
        ):
            if event.stage == "done":
                return event.payload
            yield event
    except (CheckpointError, ImageError, FileNotFoundError, ValueError) as exc:
        return RunFailure(str(exc))
    except MemoryError:
        return RunFailure("out of memory: crop the image into smaller tiles, or lower K (samples)")
    return RunFailure("the engine stopped without a result")


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


def device_choices() -> list[tuple[str, str]]:
    """auto (labelled with what it picks), cpu, and cuda (with the GPU's name) when there is one."""
    import torch

    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        return [(f"auto (CUDA: {gpu})", "auto"), ("cpu", "cpu"), (f"cuda: {gpu}", "cuda")]
    return [("auto (CPU)", "auto"), ("cpu", "cpu")]


def mpp_spin_box(tooltip: str) -> FloatSpinBox:
    """The µm/px field of both widgets: 0.25 (a 40x tile) until a layer's scale says otherwise."""
    from napari_cdal.engine.checks import MPP_RANGE

    low, high = MPP_RANGE
    return FloatSpinBox(label="µm/px", min=low, max=high, step=0.01, value=0.25, tooltip=tooltip)


def set_mpp_from_layer(spin: FloatSpinBox, layer: Image, status: Label) -> None:
    """Fill the µm/px field from a layer's scale; a scale outside what the field takes is said, not clamped."""
    from napari_cdal.engine.checks import MPP_RANGE

    value = image_mpp(layer)
    low, high = MPP_RANGE
    if low <= value <= high:
        spin.value = value
        return
    spin.value = DEFAULT_IMAGE_MPP
    status.value = (f"{layer.name}'s scale says {value:g} µm/px, outside {low:g}-{high:g}: "
                    f"check its scale, or set µm/px here (now {DEFAULT_IMAGE_MPP:g})")


def docked_segment_widget(viewer: napari.viewer.Viewer) -> SegmentWidget | None:
    """The Segment widget docked in `viewer` (the latest one when there are several), else None."""
    # napari hands each plugin widget its own proxy of the viewer: compare what the proxies wrap
    target = getattr(viewer, "__wrapped__", viewer)
    docked = [w for w in _LIVE_WIDGETS if getattr(w._viewer, "__wrapped__", w._viewer) is target]
    return max(docked, key=lambda widget: widget._created, default=None)


def model_steps(path: str) -> tuple[int, int, int] | None:
    """(steps the model was trained with, its default sampling steps, its default samples K); None when unreadable."""
    from napari_cdal.engine.io.checkpoint import read_metadata

    try:
        config = read_metadata(path)["model_config"]
        trained = int(config.get("num_steps", DEFAULT_STEPS))
        return trained, int(config.get("sampling_steps", 0)) or trained, int(config.get("default_samples", 1))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera: `viewer.scene.camera` from napari 0.9 on, `viewer.camera` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


class ReviewQueue:
    """The least certain nuclei of one result, in order, and where the review has got to.

    Nuclei are ranked by their mean uncertainty; with one sample (no uncertainty) by their mean
    attention instead. The ranking is taken from the mask's features when the result arrives, so
    the user's edits do not reshuffle it mid-review.
    """

    def __init__(self, mask: Any, image: Any) -> None:
        from napari_cdal.engine.segment.measurements import review_order

        features = {key: np.asarray(mask.features[key]) for key in mask.features.columns}
        self.key = (
            "mean_uncertainty"
            if not np.all(np.isnan(features["mean_uncertainty"]))
            else "mean_attention"
        )
        self._mask = mask
        self._features = features
        self._row = {int(i): r for r, i in enumerate(features["index"])}
        self._ranked = [] if np.all(np.isnan(features[self.key])) else list(review_order(features, self.key))
        self._scale = np.asarray(image.scale[-2:], float)
        self._translate = np.asarray(image.translate[-2:], float)
        self.ids: list[int] = []
        self.position = -1

    @property
    def size(self) -> int:
        return len(self.ids)

    def restart(self, count: int) -> None:
        """Review the `count` least certain nuclei from the first one again."""
        self.ids = [int(i) for i in self._ranked[:count]]
        self.position = -1

    def step(self, viewer: Any) -> str:
        """Centre the camera on the next nucleus, select it in the mask; the status line to show."""
        if not self.ids:
            return ""
        self.position = (self.position + 1) % len(self.ids)
        nucleus = self.ids[self.position]
        row = self._row[nucleus]
        centre = (
            self._translate
            + self._scale * np.array([self._features["centroid_y"][row], self._features["centroid_x"][row]])
        )
        camera = viewer_camera(viewer)
        camera.center = tuple(float(c) for c in centre)
        camera.zoom = max(camera.zoom, REVIEW_SCREEN_PX_PER_PIXEL / float(self._scale.min()))
        if self._mask in viewer.layers:
            self._mask.selected_label = nucleus
            viewer.layers.selection.active = self._mask
        what = "uncertainty" if self.key == "mean_uncertainty" else "attention"
        return (
            f"Review {self.position + 1} of {len(self.ids)}: nucleus {nucleus}, mean {what} "
            f"{self._features[self.key][row]:.2f}, {self._features['area_um2'][row]:.0f} µm²; "
            "it is selected in the mask, ready for the brush"
        )


class SegmentWidget(WorkerRun, Container):
    """Dock widget: image, model, device, T, K, seed, threshold, µm/px, and Segment / Cancel."""

    unchanged_note = "layers unchanged"

    run_finished = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._preview: LivePreview | None = None
        self._image_layer: Image | None = None
        self._settings: SegmentSettings | None = None
        self._clicked_at = 0.0
        self.last_result: SegmentationResult | None = None
        self.last_seconds: float | None = None
        self._created = time.monotonic_ns()
        _LIVE_WIDGETS.add(self)

        self.image = ComboBox(label="image", choices=lambda _: self._image_choices())
        self.model = ComboBox(label="model", choices=lambda _: self._model_choices())
        self.model_file = FileEdit(label="model file", mode="r", filter="*.safetensors")
        self.device = ComboBox(label="device", choices=device_choices())
        self.steps = SpinBox(
            label="steps T",
            min=1,
            max=DEFAULT_STEPS,
            value=DEFAULT_STEPS,
            tooltip="reverse diffusion steps (at most the model's T)",
        )
        self.samples = SpinBox(
            label="samples K",
            min=1,
            max=64,
            value=1,
            tooltip="latent samples averaged per pixel; their spread is the uncertainty (needs 2 or more)",
        )
        self.seed = SpinBox(
            label="seed", min=0, max=2**31 - 1, value=0, tooltip="the same seed repeats a run"
        )
        self.threshold = FloatSpinBox(
            label="threshold",
            min=0.01,
            max=0.99,
            step=0.05,
            value=0.5,
            tooltip="foreground probability above which a pixel is nucleus",
        )
        self.mpp = mpp_spin_box("the image's µm per pixel: from the layer's scale, else 0.25 (40x)")
        self.contours = CheckBox(text="show nuclei as contours", value=True)
        self.segment_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.review_count = SpinBox(
            label="review",
            min=1,
            max=1000,
            value=10,
            tooltip="how many of the least certain nuclei 'Review next' steps through",
        )
        self.review_button = PushButton(
            text="Review next least certain",
            enabled=False,
            tooltip="centre the view on the next nucleus the model doubts most, select it in the "
            "mask and make the mask the active layer, ready for the brush",
        )
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self._review: ReviewQueue | None = None
        self.extend(
            [
                self.image,
                self.model,
                self.model_file,
                self.device,
                self.steps,
                self.samples,
                self.seed,
                self.threshold,
                self.mpp,
                self.contours,
                self.segment_button,
                self.cancel_button,
                self.review_count,
                self.review_button,
                self.status,
            ]
        )

        self.image.changed.connect(self._on_image_changed)
        self.model.changed.connect(self._on_model_changed)
        self.model_file.changed.connect(self._on_model_changed)
        self.contours.changed.connect(self._on_contours_changed)
        self.segment_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.review_button.changed.connect(self.review_next)
        self.review_count.changed.connect(self._on_review_count_changed)
        self._follow_viewer(napari_viewer)
        self._on_image_changed(self.image.value)
        self._on_model_changed()

    def _image_choices(self) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Image) and TAG not in layer.metadata
        ]

    def _model_choices(self) -> list[tuple[str, str]]:
        from napari_cdal.models import list_models

        return [(entry.label, str(entry.path)) for entry in list_models()] + [
            ("other file…", OTHER_FILE)
        ]

    def selected_model_path(self) -> str | None:
        """The chosen model file, or None when 'other file…' is chosen and no file is given."""
        if self.model.value != OTHER_FILE:
            return self.model.value
        chosen = str(self.model_file.value)
        return chosen if chosen not in ("", ".") else None

    def refresh_models(self, select: str | Path | None = None) -> None:
        """Re-read the model folder, then select `select` (a file not in it via 'other file…')."""
        self.model.reset_choices()
        if select is None:
            return
        if str(select) in self.model.choices:
            self.model.value = str(select)
        else:
            self.model.value = OTHER_FILE
            self.model_file.value = Path(select)

    def _on_image_changed(self, layer: Image | None) -> None:
        if layer is not None:
            set_mpp_from_layer(self.mpp, layer, self.status)

    def _on_model_changed(self, *_: Any) -> None:
        from napari_cdal.models import bundled_model_file, model_dir

        self.model_file.visible = self.model.value == OTHER_FILE
        path = self.selected_model_path()
        steps = model_steps(path) if path else None
        if steps is not None:
            self.steps.max, self.steps.value, self.samples.value = steps
        if not bundled_model_file().is_file() and not self._worker:
            self.status.value = (
                "No bundled model in this installation: pick a model file, "
                f"or put .safetensors models in {model_dir()}"
            )

    def _on_contours_changed(self, show: bool) -> None:
        layer = self.image.value
        for candidate in self._viewer.layers:
            tag = candidate.metadata.get(TAG) or {}
            if layer is not None and tag.get("kind") == MASK and tag.get("image") == layer.name:
                candidate.contour = CONTOUR_WIDTH if show else 0

    def start(self, *_: Any) -> None:
        """Check the inputs and start segmenting in a worker thread (errors go to a notification)."""
        from napari.qt.threading import create_worker
        from napari.utils import progress
        from napari.utils.notifications import show_error

        from napari_cdal.engine.io.images import ImageError

        if self.running:
            return
        layer = self.image.value
        model_path = self.selected_model_path()
        if layer is None:
            show_error(
                "Segment: open an image first (File > Open, or File > Open Sample > napari-cdal)"
            )
            return
        if model_path is None:
            show_error(
                "Segment: no model chosen; pick 'other file…' and choose a .safetensors model file"
            )
            return
        if not Path(model_path).is_file():
            show_error(f"Segment: model file not found: {model_path}")
            return
        try:
            pixels = image_pixels(layer)
        except ImageError as exc:
            show_error(f"Segment: {exc}")
            return
        settings = SegmentSettings(
            model_path,
            self.device.value,
            float(self.mpp.value),
            int(self.steps.value),
            int(self.samples.value),
            int(self.seed.value),
            float(self.threshold.value),
        )
        self._clicked_at = time.perf_counter()
        self._outcome = ""
        self._image_layer = layer
        self._settings = settings
        self._preview = LivePreview(self._viewer, layer, pixels.shape[:2])
        self._progress = progress(total=0, desc=f"cDAL: segmenting {layer.name}")
        self._worker = create_worker(run_segmentation, pixels, settings, _start_thread=False)
        self._connect_worker()
        self.segment_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"Segmenting {layer.name}…"
        self._worker.start()

    def _on_step(self, event: Progress) -> None:
        with self._handling():
            if self._outcome or self._preview is None:
                return
            self._preview.update(event.payload)
            if self._progress.total != event.total:
                self._progress.total = event.total
            self._progress.update(event.index - self._progress.n)

    def _on_returned(self, result: SegmentationResult | RunFailure) -> None:
        from napari.utils.notifications import show_error

        with self._handling():
            self._preview.remove()
            if self._outcome == "cancelled":
                return
            if isinstance(result, RunFailure):
                self._outcome = "failed"
                self.status.value = "Failed: layers unchanged"
                show_error(f"Segment: {result.message}")
                return
            self._outcome = "done"
            layers = show_result(
                self._viewer,
                self._image_layer,
                result,
                CONTOUR_WIDTH if self.contours.value else 0,
                self._settings.image_mpp,
            )
            self._review = ReviewQueue(layers[MASK], self._image_layer)
            self._on_review_count_changed()
            self.last_result = result
            self.last_seconds = time.perf_counter() - self._clicked_at
            area_px = result.mean_area_px()
            area_um2 = area_px * self._settings.image_mpp**2
            self.status.value = (
                f"{result.n_nuclei} nuclei, mean area {area_um2:.1f} µm² ({area_px:.0f} px); "
                f"{self.last_seconds:.1f} s from click to mask"
            )

    def _on_review_count_changed(self, *_: Any) -> None:
        if self._review is not None:
            self._review.restart(int(self.review_count.value))
        self.review_button.enabled = self._review is not None and self._review.size > 0

    def review_next(self, *_: Any) -> None:
        """Go to the next of the N least certain nuclei of the last result (round and round)."""
        if self._review is None:
            return
        line = self._review.step(self._viewer)
        if line:
            self.status.value = line

    def _finish(self) -> None:
        self._finish_pending = False
        self._preview.remove()
        self._progress.close()
        outcome = self._outcome or "cancelled"
        if outcome == "cancelled":
            self.status.value = "Cancelled: layers unchanged"
        self._worker = self._preview = self._progress = self._image_layer = self._settings = None
        self.segment_button.enabled = True
        self.cancel_button.enabled = False
        self.run_finished.emit(outcome)

    def _abandon_run(self, *_: Any) -> None:
        """The dock was closed (mid-run: stop the worker, drop the preview); the widgets are gone."""
        _LIVE_WIDGETS.discard(self)
        if self._worker is None:
            return
        self._disconnect_worker()
        self._preview.remove()
        self._progress.close()
        self._worker = self._preview = self._progress = self._image_layer = self._settings = None
