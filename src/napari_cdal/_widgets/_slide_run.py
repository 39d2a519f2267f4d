"""Whole slide: the slide file behind an image layer segmented block by block into a resumable zarr store (the engine's
segment_slide, as `napari-cdal segment` on a slide), its labels shown over the slide as the blocks finish."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_cdal._widgets._layers import SLIDE_LABELS, Grid, keep_selection, layer_name, mask_colormap
from napari_cdal._widgets._model_cache import sampling_model_cached, stoppable
from napari_cdal._widgets._segment_run import SegmentHost, SegmentSettings, SegmentWidgetRun
from napari_cdal._widgets._worker import NO_RESULT, RunFailure
from napari_cdal.layer_metadata import TAG, tag_of

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]
    from napari.layers import Image, Labels  # type: ignore[import-untyped]

    from napari_cdal.engine.events import Progress
    from napari_cdal.engine.slide.stitch import SlideResult


def slide_paths(layer: Image, chosen_folder: str) -> tuple[Path, Path, Path]:
    """(the slide file behind `layer`, its labels store, its labels TIFF); InputError when there is none.

    The store and TIFF go into `chosen_folder`, or beside the slide when it is empty.
    """
    from napari_cdal.engine.checks import InputError, check_output_folder
    from napari_cdal.engine.slide.source import SLIDE_SUFFIXES

    source = getattr(layer.source, "path", None)
    if not source or Path(source).suffix.lower() not in SLIDE_SUFFIXES or not Path(source).is_file():
        raise InputError(
            f"{layer.name} was not opened from a slide file ({', '.join(SLIDE_SUFFIXES)}): open "
            "the slide with File > Open, or run `napari-cdal segment SLIDE --out DIR`"
        )
    slide = Path(source)
    folder = check_output_folder(slide.parent if chosen_folder in ("", ".") else Path(chosen_folder), "slide output")
    store, tiff = folder / f"{slide.stem}_labels.zarr", folder / f"{slide.stem}_labels.tif"
    if store.exists() and not store.is_dir():
        raise InputError(f"{store} is a file, not a labels store; move it or choose another slide output")
    return slide, store, tiff


def tissue_png_path(tiff: Path) -> Path:
    """Where Whole slide writes the tissue mask: beside the labels TIFF, <slide>_tissue.png (as the CLI names it)."""
    return tiff.with_name(tiff.name.replace("_labels.tif", "_tissue.png"))


def run_whole_slide(
    slide: Path,
    store: Path,
    tiff: Path,
    settings: SegmentSettings,
    tissue: str,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, SlideResult | RunFailure]:
    """Worker body: segment a slide block by block into its zarr store (resuming one), then its pyramidal TIFF.

    The same engine function as `napari-cdal segment` on a slide (`tissue`: 'auto' skips glass,
    'all' segments every block); the TIFF and the tissue mask's PNG beside it are written only when
    no file of that name exists. Once `cancel` is set the networks raise RunCancelled (the block
    under way is not written).
    """
    from napari_cdal.engine.device import resolve_device
    from napari_cdal.engine.io.checkpoint import CheckpointError
    from napari_cdal.engine.io.images import ImageError
    from napari_cdal.engine.slide.source import open_slide
    from napari_cdal.engine.slide.stitch import labels_tiff, segment_slide
    from napari_cdal.engine.slide.tissue import save_tissue_png

    try:
        device = str(resolve_device(settings.device))
        model = sampling_model_cached(settings.model_path, device)
        with open_slide(slide) as source, stoppable(model, cancel):
            for event in segment_slide(
                model,
                source,
                store,
                settings.image_mpp,
                sampling_steps=settings.sampling_steps,
                samples=settings.samples,
                seed=settings.seed,
                threshold=settings.threshold,
                tissue=tissue,
            ):
                if event.stage == "done":
                    result: SlideResult = event.payload
                    if not tiff.exists():
                        labels_tiff(store, tiff)
                    mask_png = tissue_png_path(tiff)
                    if result.tissue is not None and not mask_png.exists():
                        save_tissue_png(result.tissue, mask_png)
                    return result
                yield event
    except (CheckpointError, ImageError, FileNotFoundError, ValueError, OSError) as exc:
        return RunFailure(str(exc))
    except MemoryError:
        return RunFailure("out of memory: close other programs, or run `napari-cdal segment` on the slide")
    return RunFailure(NO_RESULT)


def show_slide_labels(viewer: napari.Viewer, image: Image, levels: list[Any], store: str) -> Labels:
    """The labels store of a whole-slide run as a multiscale Labels layer over `image` (one per store, reused)."""
    for layer in viewer.layers:
        tag = tag_of(layer.metadata)
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


class SlideRun(SegmentWidgetRun["SlideResult"]):
    """Whole slide: the store's labels shown (then refreshed) as blocks finish, and the run summed up at its end."""

    what = "Whole slide"
    failed_note = "Failed: the store keeps the blocks already written"
    cancelled_note = "Cancelled: the store keeps the finished blocks; Whole slide again resumes there"

    def __init__(
        self,
        widget: SegmentHost,
        layer: Image,
        settings: SegmentSettings,
        paths: tuple[Path, Path, Path],
        tissue: str,
    ) -> None:
        """Segment the slide of `paths` (slide, store, TIFF: slide_paths) into its store; `tissue` 'auto' or 'all'."""
        super().__init__(widget, layer, settings)
        self.slide, self.store, self.tiff = paths
        self.tissue = tissue
        self.tiff_existed = self.tiff.exists()
        self.labels_layer: Labels | None = None

    def events(self, cancel: threading.Event) -> Generator[Progress, None, SlideResult | RunFailure]:
        """run_whole_slide of the slide into its store."""
        return run_whole_slide(self.slide, self.store, self.tiff, self.settings, self.tissue, cancel)

    def on_event(self, event: Progress) -> None:
        """A block written: its labels shown, the count in the status line and the bar."""
        self._show_labels()
        self.widget.status.value = f"Whole slide: block {event.index} of {event.total} written"
        self.advance(event)

    def _show_labels(self) -> None:
        """Show the store's labels over the slide (the first time), or let napari read the new blocks."""
        from napari_cdal.engine.slide.store import store_levels

        viewer = self.widget.viewer
        if self.labels_layer is None or self.labels_layer not in viewer.layers:
            self.labels_layer = show_slide_labels(viewer, self.layer, store_levels(self.store), str(self.store))
        else:
            self.labels_layer.refresh()

    def show(self, result: SlideResult) -> None:
        """The labels, and the run in words: nuclei, blocks, glass skipped, time, the files written."""
        widget = self.widget
        self._show_labels()
        widget.last_slide = result
        widget.last_seconds = time.perf_counter() - self.clicked_at
        tiff = self.tiff
        written = f"kept the existing {tiff.name}" if self.tiff_existed else f"wrote {tiff.name}"
        area = (
            f"every block segmented, {result.slide_mm2:.3g} mm²"
            if result.tissue_mm2 is None
            else f"{result.skipped} of glass skipped; tissue {result.tissue_mm2:.3g} of {result.slide_mm2:.3g} mm²"
        )
        widget.status.value = (
            f"Whole slide: {result.n_nuclei} nuclei in {result.blocks} blocks ({area}), "
            f"{widget.last_seconds:.1f} s; labels in {Path(result.store).name}, {written} "
            "(in the slide output folder)"
        )
