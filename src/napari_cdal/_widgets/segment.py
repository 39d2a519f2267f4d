"""The Segment dock widget: gathers settings and starts the run of the job they ask for, each in a thread_worker.

Segment takes the whole image, the field of view or a drawn rectangle (on a slide, the field of
view, at full resolution): a SegmentRun (_segment_run.py), whose steps (the chain), estimates (x̂0) and attention
fill in live in `(running)` layers (an earlier run's layers of the same model, borrowed, or new ones); the mask
and uncertainty are written when the run finishes, and Cancel (or an error) gives every layer back
exactly as it was. A 3-D image with a model of classes is a VolumeRun (_volume_run.py), slice by slice.
Whole slide is a SlideRun (_slide_run.py): the slide file into a zarr store beside the chosen folder, its labels
shown as the blocks finish; a cancelled or interrupted store is resumed by the next run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import CheckBox, ComboBox, FileEdit, PushButton

from napari_cdal._widgets._docked import forget_segment_widget, register_segment_widget
from napari_cdal._widgets._fields import (
    cancel_button,
    device_combo,
    mpp_spin_box,
    progress_bar,
    set_mpp_from_layer,
    status_label,
    tab_with_sibling,
)
from napari_cdal._widgets._inputs import (
    image_choices,
    is_volume_layer,
    model_config,
    model_file_choices,
    model_fit_problem,
)
from napari_cdal._widgets._layers import CONTOUR_WIDTH, MASK
from napari_cdal._widgets._names import model_stem
from napari_cdal._widgets._region import FIELD_OF_VIEW, WHOLE_IMAGE, region_choices, region_to_segment
from napari_cdal._widgets._review import ReviewQueue
from napari_cdal._widgets._segment_fields import model_steps, review_fields, sampling_fields, slide_fields
from napari_cdal._widgets._segment_run import SegmentRun, SegmentSettings
from napari_cdal._widgets._slide_run import SlideRun, slide_paths
from napari_cdal._widgets._volume_run import VolumeRun
from napari_cdal._widgets._worker import RunWidget
from napari_cdal.layer_metadata import tag_of

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]
    from napari.layers import Image  # type: ignore[import-untyped]

    from napari_cdal.engine.segment.image import SegmentationResult
    from napari_cdal.engine.segment.volume import VolumeResult
    from napari_cdal.engine.slide.stitch import SlideResult

OTHER_FILE = ""
SEGMENT_TIP = "segment the chosen region of the image with the model; the result layers appear when it is done"


class SegmentWidget(RunWidget):
    """Dock widget: image, model, device, T, K, seed, threshold, µm/px, and Segment / Cancel."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self.last_slide: SlideResult | None = None
        self.last_result: SegmentationResult | VolumeResult | None = None
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
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.safetensors",
            tooltip="a .safetensors model file (with 'other file…' as the model)",
        )
        self.device = device_combo()
        self.sampling_steps, self.samples, self.seed, self.threshold = sampling_fields()
        self.mpp = mpp_spin_box("the image's µm per pixel: from the layer's scale, else 0.25 (40x)")
        self.contours = CheckBox(
            text="show nuclei as contours",
            value=True,
            tooltip="draw each nucleus as an outline (on) or filled (off); painting works the same either way",
        )
        self.segment_button = PushButton(text="Segment", tooltip=SEGMENT_TIP)
        self.slide_output, self.tissue_only, self.slide_button = slide_fields()
        self.cancel_button = cancel_button(
            "segmenting",
            "stop Segment or Whole slide within about a second; the "
            "result layers stay as they were (a whole slide keeps its finished blocks, "
            "the block it was on is left out)",
        )
        self.review_count, self.review_button = review_fields()
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
        self._follow_viewer()
        self._on_image_changed(self.image.value)
        self._on_model_changed()

    def _model_choices(self) -> list[tuple[str, str]]:
        return [*model_file_choices(), ("other file…", OTHER_FILE)]

    def selected_model_path(self) -> str | None:
        """The chosen model file, or None when 'other file…' is chosen and no file is given."""
        chosen = self.model.value
        if chosen != OTHER_FILE:
            return None if chosen is None else str(chosen)
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

    def start_buttons(self) -> list[PushButton]:
        """Segment and Whole slide."""
        return [self.segment_button, self.slide_button]

    def contour_width(self) -> int:
        """How wide the masks' outlines are drawn, as the contours box says now (0: filled)."""
        return CONTOUR_WIDTH if self.contours.value else 0

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
        for slide_field in (self.slide_output, self.tissue_only, self.slide_button):
            slide_field.visible = slide

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
        from napari_cdal.catalog import bundled_model_file, model_dir

        self.model_file.visible = self.model.value == OTHER_FILE
        path = self.selected_model_path()
        steps = model_steps(path) if path else None
        if steps is not None:
            self._fit_sampling_fields(*steps, model_stem(path))
        if not bundled_model_file().is_file() and not self.running:
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
            tag = tag_of(candidate.metadata)
            if layer is not None and tag.get("kind") == MASK and tag.get("image") == layer.name:
                candidate.contour = CONTOUR_WIDTH if show else 0

    def _checked_inputs(self, what: str) -> tuple[Image, str] | None:
        """The image layer and model file to run with; None (with a notification) when one is missing."""
        from napari.utils.notifications import show_error  # type: ignore[import-untyped]

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
        """Check the inputs and start segmenting the chosen region (a volume: all of it) in a worker thread (errors go
        to a notification)."""
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
        config = model_config(model_path)
        problem = model_fit_problem(layer, config, Path(model_path).stem)
        if problem:
            show_error(f"Segment: {problem}")
            return
        if is_volume_layer(layer):  # the whole volume, slice by slice (the region does not apply)
            self.launch(VolumeRun(self, layer, settings, config), f"Segmenting the volume {layer.name}…", total=0)
            return
        try:  # a region is read in the worker, only the part asked for
            image, box = region_to_segment(self._viewer, layer, self.region.value, settings, config)
        except (ImageError, InputError) as exc:
            show_error(f"Segment: {exc}")
            return
        run = SegmentRun(self, layer, settings, image, box, config)
        self.launch(run, f"Segmenting {layer.name}…", total=0)

    def start_slide(self, *_: Any) -> None:
        """Segment the whole slide behind the image layer in a worker, its labels filling in as blocks finish."""
        from napari.utils.notifications import show_error

        from napari_cdal.engine.checks import InputError

        if self.running:
            return
        checked = self._checked_inputs("Whole slide")
        if checked is None:
            return
        layer, model_path = checked
        try:
            paths = slide_paths(layer, str(self.slide_output.value))
        except InputError as exc:
            show_error(f"Whole slide: {exc}")
            return
        slide, store = paths[0], paths[1]
        resumed = " (resuming)" if store.exists() else ""
        run = SlideRun(self, layer, self._settings_now(model_path), paths, "auto" if self.tissue_only.value else "all")
        self.launch(run, f"Whole slide: segmenting {slide.name} into {store}{resumed}…", total=0)

    def show_review(self, queue: ReviewQueue | None) -> None:
        """Review the last result's likely errors with `queue` (None: nothing to review, a volume's result)."""
        self._review = queue
        self._on_review_count_changed()

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

    def _abandon_run(self, *_: Any) -> None:
        """The dock was closed (mid-run: stop the worker, drop the preview); the widgets are gone."""
        forget_segment_widget(self)
        super()._abandon_run()
