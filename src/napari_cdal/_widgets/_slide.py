"""The Segment widget's Whole slide run: a slide file segmented block by block into a resumable zarr store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_cdal._widgets._jobs import RunFailure, run_whole_slide
from napari_cdal._widgets._layers import show_slide_labels
from napari_cdal._widgets._region import slide_paths

if TYPE_CHECKING:
    from napari_cdal.engine.events import Progress
    from napari_cdal.engine.slide.stitch import SlideResult


class SlideRun:
    """Mixin of the Segment widget: start a Whole slide run, show its labels as blocks finish, sum it up."""

    _slide: dict[str, Any] | None = None
    _slide_layer: Any = None
    last_slide: SlideResult | None = None

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
            slide, store, tiff = slide_paths(layer, str(self.slide_output.value))
        except InputError as exc:
            show_error(f"Whole slide: {exc}")
            return
        self._clicked_at = time.perf_counter()
        self._image_layer = layer
        self._settings = self._settings_now(model_path)
        self._slide = {"store": store, "tiff": tiff, "tiff_existed": tiff.exists()}
        self._slide_layer = None
        self._last_kind = "slide"
        resumed = " (resuming)" if store.exists() else ""
        tissue = "auto" if self.tissue_only.value else "all"
        self._launch(
            run_whole_slide,
            slide,
            store,
            tiff,
            self._settings,
            tissue,
            status=f"Whole slide: segmenting {slide.name} into {store}{resumed}…",
            total=0,
        )

    def _on_slide_step(self, event: Progress) -> None:
        self._show_slide_labels()
        self.status.value = f"Whole slide: block {event.index} of {event.total} written"
        self._advance(event)

    def _show_slide_labels(self) -> None:
        """Show the store's labels over the slide (the first time), or let napari read the new blocks."""
        from napari_cdal.engine.slide.stitch import store_levels

        if self._slide_layer is None or self._slide_layer not in self._viewer.layers:
            store = self._slide["store"]
            self._slide_layer = show_slide_labels(self._viewer, self._image_layer, store_levels(store), str(store))
        else:
            self._slide_layer.refresh()

    def _on_slide_returned(self, result: SlideResult | RunFailure) -> None:
        from napari.utils.notifications import show_error

        if self._outcome == "cancelled":
            return
        if isinstance(result, RunFailure):
            self._outcome = "failed"
            self.status.value = "Failed: the store keeps the blocks already written"
            show_error(f"Whole slide: {result.message}")
            return
        self._outcome = "done"
        self._show_slide_labels()
        self.last_slide = result
        self.last_seconds = time.perf_counter() - self._clicked_at
        tiff = self._slide["tiff"]
        written = f"kept the existing {tiff.name}" if self._slide["tiff_existed"] else f"wrote {tiff.name}"
        area = (
            f"every block segmented, {result.slide_mm2:.3g} mm²"
            if result.tissue_mm2 is None
            else f"{result.skipped} of glass skipped; tissue {result.tissue_mm2:.3g} of {result.slide_mm2:.3g} mm²"
        )
        self.status.value = (
            f"Whole slide: {result.n_nuclei} nuclei in {result.blocks} blocks ({area}), "
            f"{self.last_seconds:.1f} s; labels in {Path(result.store).name}, {written} "
            "(in the slide output folder)"
        )
