"""Fine-tune: a model taught the user's corrections (engine.training.finetune in a worker), saved as a new model file.

The new model is written atomically at the end of the run, so a cancel or an error leaves no file and every
existing model untouched; the run ends with the engine's before → after check on the held-back part.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from napari_cdal._widgets._model_cache import load_model_cached, stoppable
from napari_cdal._widgets._worker import NO_RESULT, Run, RunFailure, RunHost

if TYPE_CHECKING:
    from napari_cdal.engine.events import Progress
    from napari_cdal.engine.training.corrections import FinetunePair, VolumeCorrection

GETTING_READY = "getting ready…"
CHECKING = "checking the held-back part…"
"""What the progress bar says while no learning step is counted: at the start, and while a check scores the part of
the corrections held back (at the start, then every few dozen steps)."""

SHOWN_STAGES = ("note", "train", "save", "validate", "validate_done")
"""The engine's events the widget shows; the others (the engine's own steps within a check) pass by."""


@dataclass(frozen=True)
class FinetuneSettings:
    """What one click on Fine-tune runs with."""

    base_model: str
    output: Path
    device: str
    image_mpp: float
    iterations: int
    learning_rate: float


@dataclass(frozen=True)
class Finetuned:
    """A fine-tune's new model file and its check on the held-back part of the corrections."""

    path: Path
    report: str
    """FinetuneResult.report(): the before → after scores in plain words."""
    improved: bool | None
    """Better than the base model on the held-back part; None when nothing was held back."""


class FinetuneHost(RunHost, Protocol):
    """What a fine-tune run needs of the Fine-tune widget besides a RunHost's."""

    notes: list[str]
    saved_model: Path | None
    report: str
    last_seconds: float | None

    def use_new_model(self, result: Finetuned) -> None:
        """Offer the new model (Segment switches to it when it scored better)."""


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
        with stoppable(model, cancel):
            for event in finetune(model, pairs, config, device, settings.image_mpp):
                if event.stage == "done":
                    yield Progress("save", event.index, event.total)  # a last chance to cancel
                    result = event.payload
                    return Finetuned(save_finetuned(result.model, settings.output), result.report(), result.improved)
                yield event
    except (CheckpointError, FileNotFoundError, ValueError, OSError) as exc:
        return RunFailure(str(exc))
    return RunFailure(NO_RESULT)


def starting_status(model: str, pairs: list[Any]) -> str:
    """What a run starts on: the pairs, or for volumes which slices count as corrected (the engine's rule)."""
    from napari_cdal.engine.training.corrections import VolumeCorrection

    volumes = [pair for pair in pairs if isinstance(pair, VolumeCorrection)]
    if not volumes:
        return f"Fine-tuning {model} on {len(pairs)} pair(s)…"
    rule = (
        "the slices where the labels differ from Segment's result"
        if all(v.reference is not None for v in volumes)
        else "every slice holding a label (no Segment result kept for these labels)"
    )
    return f"Fine-tuning {model} on the corrected slices of {', '.join(v.name for v in volumes)}: {rule}…"


class FinetuneRun(Run[Finetuned]):
    """Fine-tune: notes as notifications, the steps in the bar (the loss in its tooltip), the checks said, and the
    new model offered at the end. A model saved before a late Cancel is offered all the same (it is written)."""

    what = "Fine-tune"
    unchanged_note = "no model written"
    failed_note = "Failed: no model written, the models are unchanged"
    cancelled_note = "Cancelled: no model written, the models are unchanged"
    keeps_late_result = True
    widget: FinetuneHost

    def __init__(
        self, widget: FinetuneHost, pairs: list[FinetunePair] | list[VolumeCorrection], settings: FinetuneSettings
    ) -> None:
        super().__init__(widget)
        self.pairs = pairs
        self.settings = settings

    def events(self, cancel: threading.Event) -> Generator[Progress, None, Finetuned | RunFailure]:
        """run_finetune of the pairs."""
        return run_finetune(self.pairs, self.settings, cancel)

    def start(self, status: str, total: int) -> None:
        """Start, the bar saying it is getting ready: preparing the corrections, then the first check, no step yet."""
        super().start(status, total)
        if self.progress is not None:
            self.progress.say(GETTING_READY)

    def on_event(self, event: Progress) -> None:
        """A note, a check, a step (with its loss) or the save, in the status line and the bar."""
        progress = self.progress
        if progress is None or event.stage not in SHOWN_STAGES:
            return
        status = self.widget.status
        if event.stage == "note":
            from napari.utils.notifications import show_info  # type: ignore[import-untyped]

            self.widget.notes.append(event.payload)
            show_info(f"Fine-tune: {event.payload}")
            return
        if event.stage == "save":
            status.value = "Saving the new model…"
            return
        if event.stage in ("validate", "validate_done"):
            which = "the base model, before the first step," if progress.n == 0 else "the model"
            status.value = f"Fine-tuning: checking {which} on the held-back part of your corrections…"
            progress.say(CHECKING)
            return
        loss = event.payload.get("g") if isinstance(event.payload, dict) else None
        if loss is not None:  # the loss is for the curious, in the bar's tooltip; the status line stays plain
            progress.set_description(f"the generator's loss at step {event.index}: {loss:.4f}")
        status.value = f"Fine-tuning: step {event.index} of {event.total}"
        self.advance(event)

    def show(self, result: Finetuned) -> None:
        """The new model's file and check kept on the widget, and the model offered to Segment."""
        widget = self.widget
        widget.saved_model = result.path
        widget.last_seconds = time.perf_counter() - self.clicked_at
        widget.report = result.report
        widget.use_new_model(result)
