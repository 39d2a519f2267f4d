"""Segment on a volume (a 3-D layer, a model of classes): engine.segment_volume slice by slice in a worker, and its
VolumeResult as layers named after the model."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cdal._widgets._layers import (
    MASK,
    RESULT,
    Grid,
    keep_selection,
    normalise_planes,
    put_map_layers,
    put_mask_layer,
)
from napari_cdal._widgets._model_cache import sampling_model_cached, stoppable, threads_for_the_gui
from napari_cdal._widgets._names import model_stem
from napari_cdal._widgets._segment_run import SegmentHost, SegmentSettings, SegmentWidgetRun
from napari_cdal._widgets._worker import NO_RESULT, RunFailure

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]
    from napari.layers import Image, Layer  # type: ignore[import-untyped]

    from napari_cdal.engine.config import ModelConfig
    from napari_cdal.engine.events import Progress
    from napari_cdal.engine.segment.volume import VolumeResult


def run_volume_segmentation(
    volume: Any, settings: SegmentSettings, cancel: threading.Event | None = None
) -> Generator[Progress, None, VolumeResult | RunFailure]:
    """Worker body: load a model of classes, yield segment_volume's per-slice events, return its VolumeResult.

    Once `cancel` is set the networks raise RunCancelled."""
    from napari_cdal.engine.checks import check_memory, volume_peak_bytes
    from napari_cdal.engine.device import resolve_device
    from napari_cdal.engine.io.checkpoint import CheckpointError
    from napari_cdal.engine.segment.volume import SLICES_PER_BATCH, segment_volume

    try:
        device = str(resolve_device(settings.device))
        model = sampling_model_cached(settings.model_path, device)
        shape = tuple(np.shape(volume))
        if len(shape) == 3:  # another shape is segment_volume's to refuse
            check_memory(
                volume_peak_bytes(shape, model.config, settings.sampling_steps, settings.samples, SLICES_PER_BATCH),
                f"the volume ({' x '.join(map(str, shape))} voxels)",
                "lower K (samples), or segment the volume with `napari-cdal segment`",
            )
        with stoppable(model, cancel), threads_for_the_gui():
            for event in segment_volume(
                model, np.asarray(volume), settings.sampling_steps, settings.samples, settings.seed
            ):
                if event.stage == "done":
                    result: VolumeResult = event.payload
                    return result
                yield event
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        return RunFailure(str(exc))
    except MemoryError:
        return RunFailure("out of memory: lower K (samples), or segment the volume with `napari-cdal segment`")
    return RunFailure(NO_RESULT)


def show_volume_result(
    viewer: napari.Viewer,
    image: Image,
    result: VolumeResult,
    model: str,
    contour: int,
    attention_map: str | None = None,
) -> dict[str, Layer]:
    """A VolumeResult as `mask|steps|estimates|attention|uncertainty · <image> · <model>` layers on the volume's grid.

    The mask is a uint8 Labels layer of classes; it keeps the model's labels (to find the corrected
    slices later) and the volume's affine (for the NIfTI writer). Steps (the chain x_T..x_0),
    estimates (x̂0) and attention are (step, z, y, x) stacks; uncertainty (z, y, x) comes with two
    or more samples; the attention's name says which map it is (`attention_map`).
    """
    with keep_selection(viewer):
        return _put_volume_layers(viewer, image, result, model, contour, attention_map)


def _put_volume_layers(
    viewer: napari.Viewer, image: Image, result: VolumeResult, model: str, contour: int, attention_map: str | None
) -> dict[str, Layer]:
    grid = Grid.of(image, axes=3)
    attention = None if result.attention is None else normalise_planes(result.attention)
    chain, steps, uncertainty = result.chain, result.steps, result.uncertainty
    layers = put_map_layers(
        viewer, image.name, grid, chain, steps, attention, uncertainty, model, attention_map=attention_map
    )
    labels = np.ascontiguousarray(result.labels, dtype=np.uint8)
    mask = put_mask_layer(viewer, image.name, labels, grid.plane(), contour, model=model, extra={RESULT: labels.copy()})
    affine = image.metadata.get("affine")
    if affine is not None:
        mask.metadata["affine"] = np.asarray(affine)
    layers[MASK] = mask
    return layers


class VolumeRun(SegmentWidgetRun["VolumeResult"]):
    """Segment on a whole volume (the region does not apply): the bar counts slices; the result, layers."""

    def __init__(
        self, widget: SegmentHost, layer: Image, settings: SegmentSettings, config: ModelConfig | None = None
    ) -> None:
        """Segment the layer's voxels with the model of `config` (its header, read at the click)."""
        super().__init__(widget, layer, settings)
        self.config = config
        self._volume = layer.data

    def events(self, cancel: threading.Event) -> Generator[Progress, None, VolumeResult | RunFailure]:
        """run_volume_segmentation of the layer's voxels."""
        return run_volume_segmentation(self._volume, self.settings, cancel)

    def on_event(self, event: Progress) -> None:
        """A batch of slices done: said in the status line and the bar."""
        self.widget.status.value = f"Segmenting {self.layer.name}: {event.index} of {event.total} slices"
        self.advance(event)

    def show(self, result: VolumeResult) -> None:
        """The result's layers named after the model, no Review, and the voxels per class in the status line."""
        from napari_cdal.engine.segment.volume import class_voxels

        widget = self.widget
        model = model_stem(self.settings.model_path)
        config = self.config
        attention_map = config.attention_display if config is not None else None
        show_volume_result(widget.viewer, self.layer, result, model, widget.contour_width(), attention_map)
        widget.show_review(None)
        widget.last_result, widget.last_seconds = result, time.perf_counter() - self.clicked_at
        found = class_voxels(result.labels, config.class_names if config is not None else ())
        widget.status.value = f"{model}: {found}; {widget.last_seconds:.1f} s from click to labels"
