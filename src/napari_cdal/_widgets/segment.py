"""The Segment dock widget: gathers settings, runs engine.segment_image (a whole slide, a volume) in a thread_worker.

Segment takes the whole image, the field of view or a drawn rectangle (on a slide, the field of
view, at full resolution). During a run the steps (the chain), estimates (x̂0) and attention fill
in live in `(running)` layers (an earlier run's layers of the same model, borrowed, or new ones); the mask
and uncertainty are written when the run finishes, and Cancel (or an error) gives every layer back
exactly as it was.
Whole slide runs engine.slide's segment_slide into a zarr store beside the chosen folder and
shows its labels as the blocks finish; a cancelled or interrupted store is resumed by the next run.
A 3-D image with a model of classes goes through engine.segment.volume slice by slice (_volume.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    PushButton,
    SpinBox,
)
from psygnal import Signal

from napari_cdal._widgets._common import (
    cancel_button,
    device_combo,
    forget_segment_widget,
    image_choices,
    image_pixels,
    model_file_choices,
    mpp_spin_box,
    progress_bar,
    register_segment_widget,
    set_mpp_from_layer,
    status_label,
    tab_with_sibling,
)
from napari_cdal._widgets._jobs import (
    RunFailure,
    SegmentSettings,
    run_segmentation,
    run_volume_segmentation,
)
from napari_cdal._widgets._layers import (
    CONTOUR_WIDTH,
    MASK,
    TAG,
    LivePreview,
    show_result,
)
from napari_cdal._widgets._names import model_stem
from napari_cdal._widgets._region import (
    FIELD_OF_VIEW,
    WHOLE_IMAGE,
    check_region,
    model_config,
    region_box,
    region_choices,
)
from napari_cdal._widgets._review import ReviewQueue
from napari_cdal._widgets._run import WorkerRun
from napari_cdal._widgets._slide import SlideRun
from napari_cdal._widgets._volume import is_volume_layer, model_fit_problem, show_volume_result
from napari_cdal.engine.defaults import DEFAULT_TISSUE
from napari_cdal.engine.events import TICK

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

    from napari_cdal.engine.events import Progress
    from napari_cdal.engine.segment.image import SegmentationResult
    from napari_cdal.engine.slide.stitch import SlideResult

OTHER_FILE = ""
DEFAULT_STEPS = 4
SEGMENT_TIP = "segment the chosen region of the image with the model; the result layers appear when it is done"


def model_steps(path: str) -> tuple[int, int, int] | None:
    """(steps the model was trained with, its default sampling steps, its default samples K); None when unreadable."""
    config = model_config(path)
    return None if config is None else (config.diffusion_steps, config.sampling_steps, config.default_samples)


class SegmentWidget(SlideRun, WorkerRun, Container):
    """Dock widget: image, model, device, T, K, seed, threshold, µm/px, and Segment / Cancel."""

    unchanged_note = "layers unchanged"
    cancelled_note = "Cancelled: layers unchanged"

    run_finished = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._preview: LivePreview | None = None
        self._image_layer: Image | None = None
        self._settings: SegmentSettings | None = None
        self._clicked_at = 0.0
        self._origin: tuple[int, int] = (0, 0)
        self._slide: dict[str, Any] | None = None
        self._slide_layer: Any = None
        self._last_kind = ""
        self.last_slide: SlideResult | None = None
        self.last_result: SegmentationResult | None = None
        self.last_seconds: float | None = None
        register_segment_widget(self)
        tab_with_sibling(self)

        self.image = ComboBox(
            label="image",
            choices=lambda _: image_choices(self._viewer),
            tooltip="the image layer to segment (an H&E tile or slide, or a 3-D volume)",
        )
        self.region = ComboBox(
            label="region",
            choices=lambda _: region_choices(self._viewer),
            tooltip="what Segment segments, at full resolution: the whole image, what the canvas shows, or "
            "a rectangle drawn in a Shapes layer (the selected one, else the last)",
        )
        self.model = ComboBox(
            label="model",
            choices=lambda _: self._model_choices(),
            tooltip="the trained model that draws the nuclei: the bundled one, your fine-tuned "
            "ones (in the model folder), or 'other file…'; result layers are named after it",
        )
        self.model_file = FileEdit(
            label="model file",
            mode="r",
            filter="*.safetensors",
            tooltip="a .safetensors model file (with 'other file…' as the model)",
        )
        self.device = device_combo()
        self.sampling_steps = SpinBox(
            label="sampling steps",
            min=1,
            max=DEFAULT_STEPS,
            value=DEFAULT_STEPS,
            tooltip="in how many denoising steps the mask forms, 1 up to the model's diffusion steps T; "
            "fewer is faster, more can be sharper. The step slider counts the steps done: the 'steps' layer "
            "shows the chain as sampled, from the noise x_T (0) to the mask x_0 (the last): the foreground "
            "channel, averaged over the samples and mapped from -1..1 to 0..1; 'estimates' shows x̂0, the model's "
            "guess of the finished mask, made at each step (1 on)",
        )
        self.samples = SpinBox(
            label="samples (for uncertainty)",
            min=1,
            max=64,
            value=1,
            tooltip="how many times the mask is drawn and averaged; with 2 or more, where the draws disagree "
            "becomes the 'uncertainty' layer. Each sample costs about one more run's time",
        )
        self.seed = SpinBox(
            label="seed",
            min=0,
            max=2**31 - 1,
            value=0,
            tooltip="the starting noise: the same seed repeats a run exactly",
        )
        self.threshold = FloatSpinBox(
            label="threshold",
            min=0.01,
            max=0.99,
            step=0.05,
            value=0.5,
            tooltip="how sure the model must be (0..1) to call a pixel nucleus; lower finds more and larger nuclei",
        )
        self.mpp = mpp_spin_box("the image's µm per pixel: from the layer's scale, else 0.25 (40x)")
        self.contours = CheckBox(
            text="show nuclei as contours",
            value=True,
            tooltip="draw each nucleus as an outline (on) or filled (off); painting works the same either way",
        )
        self.segment_button = PushButton(text="Segment", tooltip=SEGMENT_TIP)
        self.slide_output = FileEdit(
            label="slide output",
            mode="d",
            tooltip="folder for Whole slide's <slide>_labels.zarr (resumable) and <slide>_labels.tif; "
            "empty: the slide's own folder",
        )
        self.tissue_only = CheckBox(
            text="tissue only",
            value=DEFAULT_TISSUE == "auto",
            tooltip="Whole slide segments only the blocks with tissue, found on a low-resolution view (glass is "
            "skipped; the mask is written as <slide>_tissue.png); off: every block, glass too",
        )
        self.slide_button = PushButton(
            text="Whole slide",
            tooltip="segment the slide file behind the image block by block in the background, "
            "showing the labels as they fill in; a second run resumes an unfinished one",
        )
        self.cancel_button = cancel_button(
            "segmenting",
            "stop Segment or Whole slide within about a second; the "
            "result layers stay as they were (a whole slide keeps its finished blocks, "
            "the block it was on is left out)",
        )
        self._run_button = self.segment_button
        self.review_count = SpinBox(
            label="review",
            min=1,
            max=1000,
            value=10,
            tooltip="how many of the likely errors 'Review next' steps through, most likely first",
        )
        self.review_button = PushButton(
            text="Review next likely error",
            enabled=False,
            tooltip="centre the view on the next place the mask is most likely wrong: a doubtful nucleus, two "
            "nuclei drawn as one (merge) or a nucleus the mask missed, marked in the 'review · <image> · <model>' "
            "layer; the mask becomes the active layer with the nucleus (or, for a miss, a new id) ready for the brush",
        )
        self.progress_bar = progress_bar()
        self.status = status_label()
        self._review: ReviewQueue | None = None
        self.extend(
            [
                self.image,
                self.region,
                self.model,
                self.model_file,
                self.device,
                self.sampling_steps,
                self.samples,
                self.seed,
                self.threshold,
                self.mpp,
                self.contours,
                self.segment_button,
                self.slide_output,
                self.tissue_only,
                self.slide_button,
                self.cancel_button,
                self.review_count,
                self.review_button,
                self.progress_bar,
                self.status,
            ]
        )

        self._model_defaults: tuple[int, int] | None = None
        self.image.changed.connect(self._on_image_changed)
        self.model.changed.connect(self._on_model_changed)
        self.model_file.changed.connect(self._on_model_changed)
        self.contours.changed.connect(self._on_contours_changed)
        self.segment_button.changed.connect(self.start)
        self.slide_button.changed.connect(self.start_slide)
        self.cancel_button.changed.connect(self.cancel)
        self.review_button.changed.connect(self.review_next)
        self.review_count.changed.connect(self._on_review_count_changed)
        self._follow_viewer(napari_viewer)
        self._on_image_changed(self.image.value)
        self._on_model_changed()

    def _model_choices(self) -> list[tuple[str, str]]:
        return [*model_file_choices(), ("other file…", OTHER_FILE)]

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

    def _start_buttons(self) -> list[Any]:
        return [self.segment_button, self.slide_button]

    def _on_image_changed(self, layer: Image | None) -> None:
        self._show_fields_for(layer)
        if layer is not None:
            set_mpp_from_layer(self.mpp, layer, self.status)
            if self.region.value in (WHOLE_IMAGE, FIELD_OF_VIEW, None):  # a chosen rectangle stays chosen
                self.region.value = FIELD_OF_VIEW if layer.multiscale else WHOLE_IMAGE
            self._pick_model_for(layer)

    def _show_fields_for(self, layer: Image | None) -> None:
        """Show only the fields that apply to the layer: no region, µm/px, contours or Review for a volume (an MRI);
        Whole slide and its output folder only for a multiscale layer (a slide)."""
        volume = layer is not None and is_volume_layer(layer)
        slide = layer is not None and bool(layer.multiscale)
        for field in (self.region, self.mpp, self.contours, self.review_count, self.review_button):
            field.visible = not volume
        for field in (self.slide_output, self.tissue_only, self.slide_button):
            field.visible = slide

    def _pick_model_for(self, layer: Image) -> None:
        """A volume takes the bundled volume model, and a 2-D image the bundled H&E model, when the chosen model cannot
        segment it (as `napari-cdal segment` takes the volume model for a volume); a model that fits stays."""
        from napari_cdal.engine.defaults import DEFAULT_VOLUME_MODEL
        from napari_cdal.engine.method.model import resolve_model_path

        path = self.selected_model_path()
        config = model_config(path) if path else None
        volume = is_volume_layer(layer)
        if config is None or config.is_multiclass == volume:
            return
        wanted = str(resolve_model_path(DEFAULT_VOLUME_MODEL if volume else None))
        if wanted not in self.model.choices:
            return
        self.model.value = wanted
        kind = "a volume" if volume else "a 2-D image"
        self.status.value = (
            f"{model_stem(wanted)} chosen: {layer.name} is {kind}, which {model_stem(path)} does not segment"
        )

    def _on_model_changed(self, *_: Any) -> None:
        from napari_cdal.models import bundled_model_file, model_dir

        self.model_file.visible = self.model.value == OTHER_FILE
        path = self.selected_model_path()
        steps = model_steps(path) if path else None
        if steps is not None:
            self._fit_sampling_fields(*steps, model_stem(path))
        if not bundled_model_file().is_file() and not self._worker:
            self.status.value = (
                f"No bundled model in this installation: pick a model file, or put .safetensors models in {model_dir()}"
            )

    def _fit_sampling_fields(self, diffusion_steps: int, default_steps: int, default_samples: int, name: str) -> None:
        """Take the model's defaults while the fields hold the last model's; keep the user's values, clamped to T."""
        wanted, untouched = (
            self.sampling_steps.value,
            self._model_defaults in (None, (self.sampling_steps.value, self.samples.value)),
        )
        self._model_defaults = (default_steps, default_samples)
        self.sampling_steps.max = diffusion_steps
        if untouched:
            self.sampling_steps.value, self.samples.value = default_steps, default_samples
        elif wanted > diffusion_steps:
            self.sampling_steps.value = diffusion_steps
            self.status.value = (
                f"sampling steps lowered from {wanted} to {diffusion_steps}: {name} has "
                f"{diffusion_steps} diffusion steps"
            )

    def _on_contours_changed(self, show: bool) -> None:
        layer = self.image.value
        for candidate in self._viewer.layers:
            tag = candidate.metadata.get(TAG) or {}
            if layer is not None and tag.get("kind") == MASK and tag.get("image") == layer.name:
                candidate.contour = CONTOUR_WIDTH if show else 0

    def _checked_inputs(self, what: str) -> tuple[Image, str] | None:
        """The image layer and model file to run with; None (with a notification) when one is missing."""
        from napari.utils.notifications import show_error

        layer = self.image.value
        model_path = self.selected_model_path()
        if layer is None:
            show_error(f"{what}: open an image first (File > Open, or File > Open Sample > napari-cdal)")
            return None
        if model_path is None:
            show_error(f"{what}: no model chosen; pick 'other file…' and choose a .safetensors model file")
            return None
        if not Path(model_path).is_file():
            show_error(f"{what}: model file not found: {model_path}")
            return None
        return layer, model_path

    def _settings_now(self, model_path: str) -> SegmentSettings:
        return SegmentSettings(
            model_path,
            self.device.value,
            float(self.mpp.value),
            int(self.sampling_steps.value),
            int(self.samples.value),
            int(self.seed.value),
            float(self.threshold.value),
        )

    def start(self, *_: Any) -> None:
        """Check the inputs and start segmenting the chosen region in a worker thread (errors go to a notification)."""
        from napari.utils.notifications import show_error

        from napari_cdal.engine.checks import InputError
        from napari_cdal.engine.io.images import ImageError

        if self.running:
            return
        checked = self._checked_inputs("Segment")
        if checked is None:
            return
        layer, model_path = checked
        settings = self._settings_now(model_path)
        problem = model_fit_problem(layer, model_config(model_path), Path(model_path).stem)
        if problem:
            show_error(f"Segment: {problem}")
            return
        if is_volume_layer(layer):
            self._start_volume(layer, settings)
            return
        try:
            if self.region.value == WHOLE_IMAGE and not layer.multiscale:
                image, box = image_pixels(layer), None
                size = image.shape[:2]
            else:  # read in the worker, only the part asked for
                box = region_box(self._viewer, layer, self.region.value)
                check_region(layer, box, settings, self.region.value, model_config(model_path))
                image = layer.data[0] if layer.multiscale else layer.data
                size = (box[1] - box[0], box[3] - box[2])
        except (ImageError, InputError) as exc:
            show_error(f"Segment: {exc}")
            return
        self._clicked_at = time.perf_counter()
        self._image_layer = layer
        self._settings = settings
        self._origin = (0, 0) if box is None else (box[0], box[2])
        self._last_kind = "segment"
        self._preview = LivePreview(
            self._viewer,
            layer,
            size,
            model_stem(model_path),
            self._origin,
            settings.sampling_steps,
            settings.samples > 1,
        )
        self._launch(run_segmentation, image, settings, box, status=f"Segmenting {layer.name}…", total=0)

    def _start_volume(self, layer: Image, settings: SegmentSettings) -> None:
        """Segment the whole volume slice by slice in a worker (the region does not apply)."""
        self._clicked_at = time.perf_counter()
        self._image_layer, self._settings, self._origin, self._last_kind = layer, settings, (0, 0), "volume"
        self._launch(
            run_volume_segmentation, layer.data, settings, status=f"Segmenting the volume {layer.name}…", total=0
        )

    def _on_step(self, event: Progress) -> None:
        with self._handling():
            if self._outcome or event.stage == TICK:  # a tick only let the worker see a Cancel
                return
            if self._slide is not None:
                self._on_slide_step(event)
                return
            if self._last_kind == "volume" and self._progress is not None:
                self.status.value = f"Segmenting {self._image_layer.name}: {event.index} of {event.total} slices"
            elif self._preview is None:
                return
            else:
                self._preview.update(event.payload)
            self._advance(event)

    def _on_returned(self, result: SegmentationResult | SlideResult | RunFailure) -> None:
        from napari.utils.notifications import show_error, show_info

        with self._handling():
            if self._slide is not None:
                self._on_slide_returned(result)
                return
            if self._outcome == "cancelled":
                return
            if isinstance(result, RunFailure):
                self._outcome = "failed"
                self.status.value = "Failed: layers unchanged"
                show_error(f"Segment: {result.message}")
                return
            self._outcome = "done"
            if self._last_kind == "volume":
                self._show_volume(result)
                return
            spares = self._preview.spares() if self._preview is not None else {}
            layers = show_result(
                self._viewer,
                self._image_layer,
                result,
                CONTOUR_WIDTH if self.contours.value else 0,
                model_stem(self._settings.model_path),
                self._origin,
                spares,
            )
            if self._preview is not None:
                self._preview.end(results=layers.values())
            self._review = ReviewQueue(self._viewer, layers[MASK], result.review)
            for note in result.notes:  # the CLI's notes: an image read by its own range, grayscale to H&E...
                show_info(f"Segment: {self._image_layer.name}: {note}")
            result = result.result
            self._on_review_count_changed()
            self.last_result = result
            self.last_seconds = time.perf_counter() - self._clicked_at
            area_px = result.mean_area_px()
            area_um2 = area_px * self._settings.image_mpp**2
            self.status.value = (
                f"{result.n_nuclei} nuclei, mean area {area_um2:.1f} µm² ({area_px:.0f} px); "
                f"{self.last_seconds:.1f} s from click to mask"
            )

    def _show_volume(self, result: Any) -> None:
        """A volume's result as layers named after the model, and its voxels per class in the status line."""
        model = model_stem(self._settings.model_path)
        show_volume_result(self._viewer, self._image_layer, result, model, CONTOUR_WIDTH if self.contours.value else 0)
        self._review = None
        self._on_review_count_changed()
        self.last_result, self.last_seconds = result, time.perf_counter() - self._clicked_at
        from napari_cdal.engine.segment.volume import class_voxels

        names = model_config(self._settings.model_path).class_names
        found = class_voxels(result.labels, names)
        self.status.value = f"{model}: {found}; {self.last_seconds:.1f} s from click to labels"

    def _on_review_count_changed(self, *_: Any) -> None:
        if self._review is not None:
            self._review.restart(int(self.review_count.value))
        self.review_button.enabled = self._review is not None and self._review.size > 0

    def review_next(self, *_: Any) -> None:
        """Go to the next of the N likeliest errors of the last result (round and round)."""
        if self._review is None:
            return
        line = self._review.step(self._viewer)
        if line:
            self.status.value = line

    def _drop_run(self) -> None:
        """Take the preview away, then let go of the run and what it ran on."""
        if self._preview is not None:
            self._preview.end()
        super()._drop_run()
        self._preview = self._image_layer = self._settings = self._slide = None

    def _after_run(self, outcome: str) -> None:
        """A cancelled whole slide keeps its finished blocks: say so, and that the next run resumes."""
        if outcome == "cancelled" and self._last_kind == "slide":
            self.status.value = "Cancelled: the store keeps the finished blocks; Whole slide again resumes there"

    def _abandon_run(self, *_: Any) -> None:
        """The dock was closed (mid-run: stop the worker, drop the preview); the widgets are gone."""
        forget_segment_widget(self)
        super()._abandon_run()
