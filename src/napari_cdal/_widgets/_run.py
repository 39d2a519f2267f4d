"""The worker plumbing both widgets share: start, progress, cancel, and finishing safely under re-entrancy."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any

from napari_cdal._widgets._common import IDLE_PROGRESS_TIP
from napari_cdal.engine.events import RunCancelled


def _relay(events: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """The worker's generator: `events` passed on one by one, their return value returned.

    A run stopped by its cancel token (RunCancelled, raised inside a network pass) ends quietly
    here, as a Cancel: napari would otherwise report it as an error.
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

    def __init__(self, bar: Any, total: int) -> None:
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


class WorkerRun:
    """Mixin for a widget that runs one engine generator at a time in a napari worker.

    The widget (a magicgui Container) provides `cancel_button`, `progress_bar`, `status`,
    `run_finished`, `_run_button` (the button that starts a run), `_on_step` and `_on_returned`; it may extend
    `_drop_run` (per-run state to let go of) and `_after_run` (what follows a run). The run state
    below starts at these class defaults and is set per instance once a run starts. A run's body
    takes its cancel token as `cancel` (a threading.Event, set by Cancel from the GUI thread) and
    has the engine check it between network blocks (events.stop_on_cancel).
    """

    unchanged_note = "nothing changed"
    """Said after 'Failed (<error>): ' when the worker raised."""
    cancelled_note = "Cancelled: nothing changed"
    """The status line after a cancel."""
    _run_button: Any = None
    _worker: Any = None
    _events: Any = None
    _progress: Any = None
    _cancel_token: threading.Event | None = None
    _outcome = ""
    _depth = 0
    _finish_pending = False
    _held_by: str | None = None
    _free_tips: dict[int, str] | None = None

    def _follow_viewer(self, viewer: Any) -> None:
        """Refresh the layer choices as the layer list changes; stop the run if the dock closes."""
        layer_events = viewer.layers.events
        for event in (layer_events.inserted, layer_events.removed, layer_events.reordered):
            event.connect(self.reset_choices)
        self.native.destroyed.connect(self._abandon_run)

    def _start_buttons(self) -> list[Any]:
        """The buttons that start a run: disabled while one goes (the widget may have more than `_run_button`)."""
        return [self._run_button]

    def hold(self, reason: str | None) -> None:
        """Disable the start buttons, with `reason` as their tooltip, while another run holds the CPU; None: free."""
        if self._free_tips is None:
            self._free_tips = {id(button): button.tooltip or "" for button in self._start_buttons()}
        self._held_by = reason
        for button in self._start_buttons():
            button.enabled = reason is None and not self.running
            button.tooltip = reason or self._free_tips[id(button)]

    @property
    def running(self) -> bool:
        """True while a run is in progress."""
        return self._worker is not None

    def _launch(self, body: Callable[..., Any], *args: Any, total: int, status: str) -> None:
        """Run `body(*args, cancel=token)` in a worker, its progress (of `total` events, 0: unknown) in the bar.

        The token is a fresh threading.Event per run; Cancel sets it.
        """
        from napari.qt.threading import create_worker

        self._outcome = ""
        self._progress = RunProgress(self.progress_bar, total)
        self._cancel_token = threading.Event()
        self._events = body(*args, cancel=self._cancel_token)
        self._worker = create_worker(_relay, self._events, _start_thread=False)
        self._connect_worker()
        for button in self._start_buttons():
            button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = status
        self._worker.start()

    def _advance(self, event: Any) -> None:
        """Move the progress bar to the event's step (of its total)."""
        if self._progress.total != event.total:
            self._progress.total = event.total
        self._progress.update(event.index - self._progress.n)

    def _connections(self) -> list[tuple[Any, Any]]:
        worker = self._worker
        return [
            (worker.yielded, self._on_step),
            (worker.returned, self._on_returned),
            (worker.errored, self._on_errored),
            (worker.finished, self._on_finished),
        ]

    def _connect_worker(self) -> None:
        for signal, slot in self._connections():
            signal.connect(slot)

    def _disconnect_worker(self) -> None:
        """Detach the handlers and stop the worker (the dock is going away)."""
        for signal, slot in self._connections():
            signal.disconnect(slot)
        self._worker.quit()

    def cancel(self, *_: Any) -> None:
        """Stop the run at its next event or, inside a network pass, before the next block (well within a second)."""
        if self.running and not self._outcome:
            self._outcome = "cancelled"
            self._cancel_token.set()
            self._worker.quit()
            self.cancel_button.enabled = False
            self.status.value = "Cancelling…"

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

    def _on_errored(self, exc: Exception) -> None:
        self._outcome = "failed"
        self.status.value = f"Failed ({type(exc).__name__}): {self.unchanged_note}"

    def _on_finished(self) -> None:
        self._finish_pending = True
        if self._depth == 0:
            self._finish()

    def _drop_run(self) -> None:
        """Let go of the run: close its progress bar, forget its worker (widgets add their own state)."""
        self._progress.close()
        self._worker = self._progress = None

    def _after_run(self, outcome: str) -> None:
        """What the widget does once a run has ended ('done', 'failed' or 'cancelled'); nothing here."""

    def _finish(self) -> None:
        """Wrap the run up: close the engine's generator, say a cancel, give the buttons back, tell `run_finished`."""
        self._finish_pending = False
        if self._events is not None:  # the worker has left it: a cancelled run ends here, at the event it held
            self._events.close()
            self._events = None
        self._drop_run()
        outcome = self._outcome or "cancelled"
        if outcome == "cancelled":
            self.status.value = self.cancelled_note
        for button in self._start_buttons():
            button.enabled = self._held_by is None
        self.cancel_button.enabled = False
        self._clear_viewer_status()
        self._after_run(outcome)
        self.run_finished.emit(outcome)

    def _clear_viewer_status(self) -> None:
        """napari's status bar and tooltip may name a preview layer that is gone: set them back to 'Ready'."""
        viewer = getattr(self, "_viewer", None)
        if viewer is not None:
            viewer.status = "Ready"
            viewer.tooltip.text = ""

    def _abandon_run(self, *_: Any) -> None:
        """The dock was closed: stop a run in progress (nothing is written); the widgets are gone."""
        if self._worker is None:
            return
        self._cancel_token.set()
        # the worker may still be inside the engine's generator: it stops at its next block or event, and once the
        # worker has left it the generator is closed there, so that its cancel checks come off the shared cached
        # model; left to the garbage collector, a check with its token set stopped a later run in the same pool thread
        self._worker.finished.connect(self._events.close)
        self._disconnect_worker()
        self._events = None
        self._drop_run()
