"""The worker plumbing both widgets share: start, cancel, and finishing safely under re-entrancy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class WorkerRun:
    """Mixin for a widget that runs one engine generator at a time in a napari worker.

    The widget (a magicgui Container) provides `cancel_button`, `status`, `_on_step`,
    `_on_returned`, `_finish` and `_abandon_run`; the run state below starts at these class
    defaults and is set per instance once a run starts.
    """

    unchanged_note = "nothing changed"
    _worker: Any = None
    _progress: Any = None
    _outcome = ""
    _depth = 0
    _finish_pending = False

    def _follow_viewer(self, viewer: Any) -> None:
        """Refresh the layer choices as the layer list changes; stop the run if the dock closes."""
        layer_events = viewer.layers.events
        for event in (layer_events.inserted, layer_events.removed, layer_events.reordered):
            event.connect(self.reset_choices)
        self.native.destroyed.connect(self._abandon_run)

    @property
    def running(self) -> bool:
        """True while a run is in progress."""
        return self._worker is not None

    def _connections(self) -> list[tuple[Any, Any]]:
        worker = self._worker
        return [(worker.yielded, self._on_step), (worker.returned, self._on_returned),
                (worker.errored, self._on_errored), (worker.finished, self._on_finished)]

    def _connect_worker(self) -> None:
        for signal, slot in self._connections():
            signal.connect(slot)

    def _disconnect_worker(self) -> None:
        """Detach the handlers and stop the worker (the dock is going away)."""
        for signal, slot in self._connections():
            signal.disconnect(slot)
        self._worker.quit()

    def cancel(self, *_: Any) -> None:
        """Stop the run at its next step."""
        if self.running and not self._outcome:
            self._outcome = "cancelled"
            self._worker.quit()
            self.cancel_button.enabled = False
            self.status.value = "Cancelling at the next step…"

    @contextlib.contextmanager
    def _handling(self) -> Iterator[None]:
        # napari's progress bar calls processEvents(), so the worker's queued signals can arrive
        # inside another handler; the run is wrapped up only once no handler is on the stack
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
