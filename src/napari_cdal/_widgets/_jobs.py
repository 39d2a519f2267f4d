"""The worker bodies: what one click on Segment or Fine-tune runs off the GUI thread (engine calls only, no Qt)."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Generator, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari_cdal._widgets._layers import ShownResult
    from napari_cdal.engine.events import Progress
    from napari_cdal.engine.method.model import CdalModel
    from napari_cdal.engine.segment.tiling import Box
    from napari_cdal.engine.segment.volume import VolumeResult
    from napari_cdal.engine.slide.stitch import SlideResult
    from napari_cdal.engine.training.corrections import FinetunePair, VolumeCorrection

NO_RESULT = "the engine stopped without a result"


@dataclass(frozen=True)
class RunFailure:
    """A run stopped by bad input (image, model file); `message` says why and what to do."""

    message: str


@dataclass(frozen=True)
class SegmentSettings:
    """What one click on Segment runs with."""

    model_path: str
    device: str
    image_mpp: float
    sampling_steps: int
    samples: int
    seed: int
    threshold: float


@dataclass(frozen=True)
class Finetuned:
    """A fine-tune's new model file and its check on the held-back part of the corrections."""

    path: Path
    report: str
    """FinetuneResult.report(): the before → after scores in plain words."""
    improved: bool | None
    """Better than the base model on the held-back part; None when nothing was held back."""


@dataclass(frozen=True)
class FinetuneSettings:
    """What one click on Fine-tune runs with."""

    base_model: str
    output: Path
    device: str
    image_mpp: float
    iterations: int
    learning_rate: float


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


def sampling_model_cached(path: str | Path, device: str) -> CdalModel:
    """The model Segment samples with (loaded once per file, time and device): torch at the default precision
    (bfloat16 where the CPU computes it natively), so that a Cancel stops inside a network pass, which OpenVINO
    cannot; on these CPUs torch's bfloat16 took 14 % more time than OpenVINO's (benchmarks/peer_speed.py)."""
    from napari_cdal.engine.defaults import DEFAULT_PRECISION
    from napari_cdal.engine.method.runtime import with_runtime

    return with_runtime(load_model_cached(path, device), "torch", DEFAULT_PRECISION)


@contextlib.contextmanager
def threads_for_the_gui() -> Iterator[None]:
    """One torch thread while a Segment run lasts where OpenMP spin-waits (OPENMP_SPINS), then the count there was
    (torch's count is the worker thread's own; threads started later take the last one set).

    Spinning threads take turns on the cores with napari's GUI thread and any other program: on a loaded 2-core
    machine a volume took 15-20 s instead of 2 s (benchmarks/volume_widget.py, torch loaded first); with one
    thread there is nothing to wait for. Where the plugin loaded torch itself (waiting passively) nothing changes.
    """
    import torch

    from napari_cdal._widgets import OPENMP_SPINS

    if not OPENMP_SPINS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stoppable(model: CdalModel, cancel: threading.Event | None) -> AbstractContextManager[None]:
    """The model's networks check `cancel` before each block while the run lasts: a Cancel stops a pass at once."""
    from napari_cdal.engine.events import stop_on_cancel

    return stop_on_cancel(cancel, model.generator, model.discriminator)


def run_segmentation(
    image: Any, settings: SegmentSettings, box: Box | None = None, cancel: threading.Event | None = None
) -> Generator[Progress, None, ShownResult | RunFailure]:
    """Worker body: load the model, yield the engine's step events, return the result ready to show (or why not).

    With `box` (y0, y1, x0, x1) only that part of `image` (any array, a slide's lazy level 0 too) is
    read, here, off the GUI thread, and segmented. Once `cancel` is set the networks raise RunCancelled.
    """
    from napari_cdal._widgets._layers import prepare_result
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
        with _stoppable(model, cancel), threads_for_the_gui():
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
        with _stoppable(model, cancel), threads_for_the_gui():
            for event in segment_volume(
                model, np.asarray(volume), settings.sampling_steps, settings.samples, settings.seed
            ):
                if event.stage == "done":
                    return event.payload
                yield event
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        return RunFailure(str(exc))
    except MemoryError:
        return RunFailure("out of memory: lower K (samples), or segment the volume with `napari-cdal segment`")
    return RunFailure(NO_RESULT)


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
        with open_slide(slide) as source, _stoppable(model, cancel):
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
                    if not tiff.exists():
                        labels_tiff(store, tiff)
                    mask_png = tissue_png_path(tiff)
                    if event.payload.tissue is not None and not mask_png.exists():
                        save_tissue_png(event.payload.tissue, mask_png)
                    return event.payload
                yield event
    except (CheckpointError, ImageError, FileNotFoundError, ValueError, OSError) as exc:
        return RunFailure(str(exc))
    except MemoryError:
        return RunFailure("out of memory: close other programs, or run `napari-cdal segment` on the slide")
    return RunFailure(NO_RESULT)


def tissue_png_path(tiff: Path) -> Path:
    """Where Whole slide writes the tissue mask: beside the labels TIFF, <slide>_tissue.png (as the CLI names it)."""
    return tiff.with_name(tiff.name.replace("_labels.tif", "_tissue.png"))


def run_finetune(
    pairs: list[FinetunePair] | list[VolumeCorrection],
    settings: FinetuneSettings,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, Finetuned | RunFailure]:
    """Worker body: load the base model, fine-tune it, save it as a new file with its check (or say why not).

    Once `cancel` is set the networks raise RunCancelled: their copies that fine-tuning trains share the check."""
    from napari_cdal.engine.defaults import FINETUNE_D_LR_RATIO
    from napari_cdal.engine.device import resolve_device
    from napari_cdal.engine.events import Progress
    from napari_cdal.engine.io.checkpoint import CheckpointError
    from napari_cdal.engine.training.finetune import finetune, finetune_config, save_finetuned

    try:
        device = str(resolve_device(settings.device))
        model = load_model_cached(settings.base_model, device)
        config = finetune_config(
            iterations=settings.iterations,
            lr_g=settings.learning_rate,
            lr_d=settings.learning_rate * FINETUNE_D_LR_RATIO,
        )
        with _stoppable(model, cancel):
            for event in finetune(model, pairs, config, device, settings.image_mpp):
                if event.stage == "done":
                    yield Progress("save", event.index, event.total)  # a last chance to cancel
                    result = event.payload
                    return Finetuned(save_finetuned(result.model, settings.output), result.report(), result.improved)
                yield event
    except (CheckpointError, FileNotFoundError, ValueError, OSError) as exc:
        return RunFailure(str(exc))
    return RunFailure(NO_RESULT)
