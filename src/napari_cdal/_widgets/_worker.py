"""A job run in a napari worker: the base of every run object and of the widgets that start them.

A widget runs one job at a time, each a `Run`: segmenting an image region (`_segment_run.SegmentRun`), a volume
(`_volume_run.VolumeRun`), a whole slide (`_slide_run.SlideRun`) or fine-tuning (`_finetune_run.FinetuneRun`).
A run says which engine generator its worker runs (`events`), what each event does in the widget (`on_event`)
and how its result is shown (`show`); this module starts it in a `thread_worker`, moves the widget's own
progress bar, cancels it (closing the generator at its next event, or its cancel token inside a network pass)
and wraps it up once, however Qt nests the worker's signals. `RunWidget` is the dock widget side: the buttons
that start a run, Cancel, the progress bar and status line, the hold while another widget's run takes the CPU.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from magicgui.widgets.bases import Widget
from psygnal import Signal

from napari_cdal._widgets._fields import IDLE_PROGRESS_TIP
from napari_cdal.engine.events import TICK, RunCancelled

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]

    from napari_cdal.engine.events import Progress

R = TypeVar("R")
"""What a run's engine call gives when it ends well (a result to show)."""

NO_RESULT = "the engine stopped without a result"


@dataclass(frozen=True)
class RunFailure:
    """A run stopped by bad input (image, model file); `message` says why and what to do."""

    message: str


def relay(events: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """The worker's generator: `events` passed on one by one, their return value returned.

    A run stopped by its cancel token (RunCancelled, raised inside a network pass) ends quietly
    here, as a Cancel (returning None): napari would otherwise report it as an error.
    """
    try:
        return (yield from events)
    except RunCancelled:
        return None


class RunProgress:
    """A run's progress in the widget's own bar (`progress_bar()`), with the n / total / update / close of napari's.

    napari's progress keeps a spinner turning in the status bar for the whole run, which redraws the
    window about 25 times a second (on a machine without a GPU that took a third of a core from the
    computation), and it processes Qt events inside each update. This bar repaints when it moves.
    """

    def __init__(self, bar: ProgressBar, total: int) -> None:
        self._bar = bar
        self.n = 0
        self._total = 0
        self.total = total

    @property
    def total(self) -> int:
        """The number of events the run will have; 0 while unknown (the bar says 'starting…')."""
        return self._total

    @total.setter
    def total(self, total: int) -> None:
        self._total = int(total)
        self._bar.max = max(self._total, 1)
        self._show()

    def _show(self) -> None:
        self._bar.value = min(self.n, self._bar.max)
        self._bar.native.setFormat(f"%v of {self._total}" if self._total else "starting…")

    def update(self, n: int = 1) -> None:
        """Move the bar `n` events on."""
        self.n += n
        self._show()

    def say(self, text: str) -> None:
        """Show what the run is doing in the bar, in place of '<done> of <total>', until it next moves."""
        self._bar.native.setFormat(text)

    def set_description(self, text: str) -> None:
        """A line for the curious, as the bar's tooltip (the fine-tune's loss)."""
        self._bar.tooltip = text

    def close(self) -> None:
        """Empty the bar for the next run."""
        self._bar.max, self._bar.value, self._bar.tooltip = 1, 0, IDLE_PROGRESS_TIP
        self._bar.native.setFormat("")


class RunHost(Protocol):
    """What a run needs of the widget that starts it (a RunWidget)."""

    progress_bar: ProgressBar
    status: Label
    cancel_button: PushButton

    @property
    def viewer(self) -> napari.viewer.Viewer:
        """The viewer the widget is docked in."""

    def start_buttons(self) -> list[PushButton]:
        """The buttons that start a run."""

    def run_ended(self, run: Run[Any], outcome: str) -> None:
        """`run` is over with `outcome`: the widget is free again."""


class Run(Generic[R]):
    """One run of a job in a napari worker: start, its events, Cancel, and its result shown.

    A job subclasses it with `events` (the worker body: one engine generator, engine calls only, no Qt),
    `on_event` (what an event does in the widget: ticks never reach it) and `show` (the result, on the GUI
    thread); it may extend `end` (what to let go of when the run is over, however it ended). Its `outcome` is
    '' while it goes, then 'done', 'failed' or 'cancelled'.
    """

    what = "Run"
    """How notifications name the job ('Segment: <message>')."""
    unchanged_note = "nothing changed"
    """Said after 'Failed (<error>): ' when the worker raised."""
    failed_note = "Failed: nothing changed"
    """The status line after a RunFailure (the notification says why)."""
    cancelled_note = "Cancelled: nothing changed"
    """The status line after a cancel."""
    keeps_late_result = False
    """True when a result that came after Cancel was clicked is shown all the same (it was written already)."""

    def __init__(self, widget: RunHost) -> None:
        self.widget = widget
        self.clicked_at = time.perf_counter()
        self.outcome = ""
        self.progress: RunProgress | None = None
        self.cancel_token = threading.Event()
        """Set by Cancel (from the GUI thread): the engine's networks stop at their next block."""
        self.worker: Any = None
        """The napari GeneratorWorker running `events` (None before the start)."""
        self._events: Generator[Any, None, Any] | None = None
        self._depth = 0
        self._finish_pending = False

    # ------------------------------------------------------------------ what a job says

    def events(self, cancel: threading.Event) -> Generator[Progress, None, R | RunFailure]:
        """The worker body: the engine's events, then the result to show (or why not); checks `cancel` inside."""
        raise NotImplementedError

    def on_event(self, event: Progress) -> None:
        """Show one event (not a tick) in the widget, on the GUI thread."""
        raise NotImplementedError

    def show(self, result: R) -> None:
        """Show the run's result in the viewer and the widget, on the GUI thread."""
        raise NotImplementedError

    def on_failure(self, failure: RunFailure) -> None:
        """Say why the run stopped: the status line and a notification."""
        from napari.utils.notifications import show_error  # type: ignore[import-untyped]

        self.widget.status.value = self.failed_note
        show_error(f"{self.what}: {failure.message}")

    def end(self) -> None:
        """The run is over (done, failed, cancelled or abandoned): let go of what it holds (the bar here)."""
        if self.progress is not None:
            self.progress.close()
        self.progress = None

    # ------------------------------------------------------------------ the plumbing

    def start(self, status: str, total: int) -> None:
        """Run `events` in a worker, its progress (of `total` events, 0: unknown) in the bar, `status` said."""
        from napari.qt.threading import create_worker  # type: ignore[import-untyped]

        widget = self.widget
        self.progress = RunProgress(widget.progress_bar, total)
        self._events = self.events(self.cancel_token)
        self.worker = create_worker(relay, self._events, _start_thread=False)
        for signal, slot in self._connections():
            signal.connect(slot)
        for button in widget.start_buttons():
            button.enabled = False
        widget.cancel_button.enabled = True
        widget.status.value = status
        self.worker.start()

    def advance(self, event: Progress) -> None:
        """Move the progress bar to the event's step (of its total)."""
        if self.progress is None:
            return
        if self.progress.total != event.total:
            self.progress.total = event.total
        self.progress.update(event.index - self.progress.n)

    def cancel(self) -> None:
        """Stop the run at its next event or, inside a network pass, before the next block (well within a second)."""
        if self.outcome:
            return
        self.outcome = "cancelled"
        self.cancel_token.set()
        self.worker.quit()
        self.widget.cancel_button.enabled = False
        self.widget.status.value = "Cancelling…"

    def abandon(self) -> None:
        """The widget is gone: stop the worker and let go of the run (nothing is written, no signal is handled)."""
        self.cancel_token.set()
        events = self._events
        # the worker may still be inside the engine's generator: it stops at its next block or event, and once the
        # worker has left it the generator is closed there, so that its cancel checks come off the shared cached
        # model; left to the garbage collector, a check with its token set stopped a later run in the same pool thread
        if events is not None:
            self.worker.finished.connect(events.close)
        for signal, slot in self._connections():
            signal.disconnect(slot)
        self.worker.quit()
        self._events = None
        self.end()

    def _connections(self) -> list[tuple[Any, Any]]:
        worker = self.worker
        return [
            (worker.yielded, self._on_yielded),
            (worker.returned, self._on_returned),
            (worker.errored, self._on_errored),
            (worker.finished, self._on_finished),
        ]

    @contextlib.contextmanager
    def _handling(self) -> Iterator[None]:
        # a handler that processes Qt events (a dialog, a notification) can receive the worker's
        # queued signals inside it; the run is wrapped up only once no handler is on the stack
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._finish_pending:
                self._finish()

    def _on_yielded(self, event: Progress) -> None:
        with self._handling():
            if self.outcome or self.progress is None or event.stage == TICK:  # a tick only let the worker see Cancel
                return
            self.on_event(event)

    def _on_returned(self, result: R | RunFailure | None) -> None:
        """What the worker returned: the result, a RunFailure, or None when the cancel token stopped the engine."""
        with self._handling():
            if result is None or (self.outcome == "cancelled" and not self.keeps_late_result):
                return
            if isinstance(result, RunFailure):
                self.outcome = "failed"
                self.on_failure(result)
                return
            late = self.outcome == "cancelled"
            self.outcome = "done"
            self.show(result)
            if late:
                self.widget.status.value = f"The run had ended before Cancel: {self.widget.status.value}"

    def _on_errored(self, exc: Exception) -> None:
        self.outcome = "failed"
        self.widget.status.value = f"Failed ({type(exc).__name__}): {self.unchanged_note}"

    def _on_finished(self) -> None:
        self._finish_pending = True
        if self._depth == 0:
            self._finish()

    def _finish(self) -> None:
        """Wrap the run up: close the engine's generator, say a cancel, give the widget back (run_finished)."""
        self._finish_pending = False
        if self._events is not None:  # the worker has left it: a cancelled run ends here, at the event it held
            self._events.close()
            self._events = None
        self.end()
        outcome = self.outcome or "cancelled"
        if outcome == "cancelled":
            self.widget.status.value = self.cancelled_note
        self.widget.run_ended(self, outcome)


class RunWidget(Container[Widget]):
    """A dock widget that runs one job at a time: the buttons that start it, Cancel, its bar and status line.

    A subclass makes `progress_bar`, `status` and `cancel_button`, says which buttons start a run
    (`start_buttons`) and may extend `after_run`; `launch` starts a run object, `run` is the one going.
    """

    run_finished = Signal(str)
    """The outcome of a run ('done', 'failed' or 'cancelled'), once it has ended and the widget is free again."""

    progress_bar: ProgressBar
    status: Label
    cancel_button: PushButton

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.run: Run[Any] | None = None
        """The run going on (None between runs)."""
        self.last_seconds: float | None = None
        """Seconds from the click to the result, of the last run that finished well."""
        self._held_by: str | None = None
        self._free_tips: dict[int, str] | None = None

    @property
    def viewer(self) -> napari.viewer.Viewer:
        """The viewer the widget is docked in."""
        return self._viewer

    @property
    def running(self) -> bool:
        """True while a run is in progress."""
        return self.run is not None

    def start_buttons(self) -> list[PushButton]:
        """The buttons that start a run: disabled while one goes."""
        raise NotImplementedError

    def launch(self, run: Run[Any], status: str, total: int) -> None:
        """Start `run` (of `total` events, 0: unknown), saying `status`."""
        self.run = run
        run.start(status, total)

    def cancel(self, *_: Any) -> None:
        """Cancel the run going on (Cancel's click)."""
        if self.run is not None:
            self.run.cancel()

    def hold(self, reason: str | None) -> None:
        """Disable the start buttons, with `reason` as their tooltip, while another run holds the CPU; None: free."""
        if self._free_tips is None:
            self._free_tips = {id(button): button.tooltip or "" for button in self.start_buttons()}
        self._held_by = reason
        for button in self.start_buttons():
            button.enabled = reason is None and not self.running
            button.tooltip = reason or self._free_tips[id(button)]

    def run_ended(self, run: Run[Any], outcome: str) -> None:
        """`run` is over: give the buttons back, clear napari's status bar, tell `run_finished`."""
        if self.run is run:
            self.run = None
        for button in self.start_buttons():
            button.enabled = self._held_by is None
        self.cancel_button.enabled = False
        self._clear_viewer_status()
        self.after_run(outcome)
        self.run_finished.emit(outcome)

    def after_run(self, outcome: str) -> None:
        """What the widget does once a run has ended ('done', 'failed' or 'cancelled'); nothing here."""

    def _clear_viewer_status(self) -> None:
        """napari's status bar and tooltip may name a preview layer that is gone: set them back to 'Ready'."""
        self._viewer.status = "Ready"
        self._viewer.tooltip.text = ""

    def _follow_viewer(self) -> None:
        """Refresh the layer choices as the layer list changes; stop the run if the dock closes."""
        layer_events = self._viewer.layers.events
        for event in (layer_events.inserted, layer_events.removed, layer_events.reordered):
            event.connect(self.reset_choices)
        self.native.destroyed.connect(self._abandon_run)

    def _abandon_run(self, *_: Any) -> None:
        """The dock was closed: stop a run in progress (nothing is written); the widgets are gone."""
        run, self.run = self.run, None
        if run is not None:
            run.abandon()
