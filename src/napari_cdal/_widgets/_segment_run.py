"""Segment on a region of an image (the whole image, the field of view, a rectangle): engine.segment_image in a worker.

The worker body (run_segmentation) loads the model, passes segment_image's step events on and makes the result
ready to show (the mask's table, the review queue, the doubt map) off the GUI thread; SegmentRun fills the live
preview as steps arrive and puts the result into the layers named after the image and the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from napari_cdal._widgets._layers import MASK, Grid, keep_selection, normalise_planes, put_map_layers, put_mask_layer
from napari_cdal._widgets._model_cache import sampling_model_cached, stoppable, threads_for_the_gui
from napari_cdal._widgets._names import model_stem
from napari_cdal._widgets._preview import LivePreview
from napari_cdal._widgets._review import ReviewQueue
from napari_cdal._widgets._worker import NO_RESULT, R, Run, RunFailure, RunHost

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]
    import pandas as pd  # type: ignore[import-untyped]
    from napari.layers import Image, Layer  # type: ignore[import-untyped]

    from napari_cdal.engine.config import ModelConfig
    from napari_cdal.engine.events import Progress
    from napari_cdal.engine.segment.image import SegmentationResult
    from napari_cdal.engine.segment.review import ReviewItem
    from napari_cdal.engine.segment.volume import VolumeResult
    from napari_cdal.engine.segment.windows import Box
    from napari_cdal.engine.slide.stitch import SlideResult


@dataclass(frozen=True)
class SegmentSettings:
    """What one click on Segment (or Whole slide) runs with."""

    model_path: str
    device: str
    image_mpp: float
    sampling_steps: int
    samples: int
    seed: int
    threshold: float


class SegmentHost(RunHost, Protocol):
    """What the Segment widget's runs (a region, a volume, a slide) need of it besides a RunHost's."""

    last_result: SegmentationResult | VolumeResult | None
    last_slide: SlideResult | None
    last_seconds: float | None

    def contour_width(self) -> int:
        """How wide the mask's outlines are drawn now (0: filled)."""

    def show_review(self, queue: ReviewQueue | None) -> None:
        """Review the last result's likely errors with `queue` (None: nothing to review)."""


def run_segmentation(
    image: Any, settings: SegmentSettings, box: Box | None = None, cancel: threading.Event | None = None
) -> Generator[Progress, None, ShownResult | RunFailure]:
    """Worker body: load the model, yield the engine's step events, return the result ready to show (or why not).

    With `box` (y0, y1, x0, x1) only that part of `image` (any array, a slide's lazy level 0 too) is
    read, here, off the GUI thread, and segmented. Once `cancel` is set the networks raise RunCancelled.
    """
    from napari_cdal.engine.checks import check_memory, segment_peak_bytes
    from napari_cdal.engine.device import resolve_device
    from napari_cdal.engine.io.checkpoint import CheckpointError
    from napari_cdal.engine.io.images import ImageError, check_pixels, reading_notes
    from napari_cdal.engine.segment.image import segment_image

    try:
        device = str(resolve_device(settings.device))
        model = sampling_model_cached(settings.model_path, device)
        height, width = (box[1] - box[0], box[3] - box[2]) if box is not None else image.shape[:2]
        check_memory(
            segment_peak_bytes(
                height, width, settings.image_mpp, model.config, settings.sampling_steps, settings.samples
            ),
            f"the image ({height} x {width} px)",
        )
        pixels = image if box is None else np.asarray(image[box[0] : box[1], box[2] : box[3]])
        check_pixels(pixels, "the image")
        notes = reading_notes(pixels, model.config.image_channels)  # what the CLI prints as notes
        with stoppable(model, cancel), threads_for_the_gui():
            for event in segment_image(
                model,
                pixels,
                image_mpp=settings.image_mpp,
                sampling_steps=settings.sampling_steps,
                samples=settings.samples,
                seed=settings.seed,
                threshold=settings.threshold,
            ):
                if event.stage == "done":
                    return prepare_result(event.payload, settings.image_mpp, notes)
                yield event
    except (CheckpointError, ImageError, FileNotFoundError, ValueError) as exc:
        return RunFailure(str(exc))
    except MemoryError:
        return RunFailure("out of memory: crop the image into smaller tiles, or lower K (samples)")
    return RunFailure(NO_RESULT)


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


def result_features(result: SegmentationResult, mpp: float) -> dict[str, np.ndarray]:
    """The mask layer's per-nucleus table: id, centroid, area µm², mean uncertainty and attention.

    Attention is the last step's map, scaled to [0, 1] as the layer shows it.
    """
    from napari_cdal.engine.segment.measurements import nucleus_features

    attention = None if result.attention is None else normalise_planes(result.attention[-1:])[0]
    return nucleus_features(result.labels, mpp, result.uncertainty, attention)


def show_result(
    viewer: napari.Viewer,
    image: Image,
    shown: ShownResult,
    contour: int,
    model: str,
    origin: tuple[int, int] = (0, 0),
    spares: dict[str, Layer] | None = None,
    attention_map: str | None = None,
) -> dict[str, Layer]:
    """Put a result into the layers named after `image` and `model` (updated in place where possible).

    `origin` is where the segmented part starts in the image's full-resolution pixels (row, column):
    the layers are translated there, and the mask's metadata keeps it for the writers. `spares` are
    the run's preview layers by kind, taken over where no result layer of their kind exists. The
    attention layer's name says which map it is (`attention_map`). The user's selected layer and tool stay as
    they were.
    """
    result = shown.result
    grid = Grid.of(image).shifted(origin)
    with keep_selection(viewer):
        layers = put_map_layers(
            viewer,
            image.name,
            grid,
            result.chain,
            result.steps,
            shown.attention,
            shown.doubt,
            model,
            spares,
            attention_map,
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


class SegmentWidgetRun(Run[R]):
    """A run the Segment widget starts (a region, a volume, a slide): of an image layer, with its settings."""

    what = "Segment"
    unchanged_note = "layers unchanged"
    failed_note = "Failed: layers unchanged"
    cancelled_note = "Cancelled: layers unchanged"
    widget: SegmentHost

    def __init__(self, widget: SegmentHost, layer: Image, settings: SegmentSettings) -> None:
        super().__init__(widget)
        self.layer = layer
        self.settings = settings


class SegmentRun(SegmentWidgetRun[ShownResult]):
    """Segment on a region of a 2-D image: the live preview as steps arrive, then the result layers and Review."""

    def __init__(
        self,
        widget: SegmentHost,
        layer: Image,
        settings: SegmentSettings,
        image: Any,
        box: Box | None,
        config: ModelConfig | None = None,
    ) -> None:
        """Segment `image` (the layer's pixels), or its `box` (y0, y1, x0, x1) read in the worker, with the model of
        `config` (its header, read at the click); the preview's first layer is added now."""
        super().__init__(widget, layer, settings)
        self._image = image
        self._box = box
        self.attention_map = config.attention_display if config is not None else None
        self.origin = (0, 0) if box is None else (box[0], box[2])
        size = image.shape[:2] if box is None else (box[1] - box[0], box[3] - box[2])
        self.preview: LivePreview | None = LivePreview(
            widget.viewer,
            layer,
            size,
            model_stem(settings.model_path),
            self.origin,
            settings.sampling_steps,
            settings.samples > 1,
            self.attention_map,
        )

    def events(self, cancel: threading.Event) -> Generator[Progress, None, ShownResult | RunFailure]:
        """run_segmentation of the image or its box."""
        return run_segmentation(self._image, self.settings, self._box, cancel)

    def on_event(self, event: Progress) -> None:
        """A step of a tile: into the preview, and the bar one step on."""
        if self.preview is None:
            return
        self.preview.update(event.payload)
        self.advance(event)

    def show(self, result: ShownResult) -> None:
        """The result layers (the preview's layers become them), Review's queue, notes, and the count in words."""
        from napari.utils.notifications import show_info  # type: ignore[import-untyped]

        widget = self.widget
        spares = self.preview.spares() if self.preview is not None else {}
        layers = show_result(
            widget.viewer,
            self.layer,
            result,
            widget.contour_width(),
            model_stem(self.settings.model_path),
            self.origin,
            spares,
            self.attention_map,
        )
        if self.preview is not None:
            self.preview.end(results=layers.values())
        widget.show_review(ReviewQueue(widget.viewer, layers[MASK], result.review))
        for note in result.notes:  # the CLI's notes: an image read by its own range, grayscale to H&E...
            show_info(f"Segment: {self.layer.name}: {note}")
        segmented = result.result
        widget.last_result = segmented
        widget.last_seconds = time.perf_counter() - self.clicked_at
        area_px = segmented.mean_area_px()
        area_um2 = area_px * self.settings.image_mpp**2
        widget.status.value = (
            f"{segmented.n_nuclei} nuclei, mean area {area_um2:.1f} µm² ({area_px:.0f} px); "
            f"{widget.last_seconds:.1f} s from click to mask"
        )

    def end(self) -> None:
        """Take the preview away (what did not become a result), then the bar."""
        if self.preview is not None:
            self.preview.end()
            self.preview = None
        super().end()
