"""Progress events that the engine's generator functions yield, and a helper to run them to the end."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, NamedTuple


class Progress(NamedTuple):
    """One event: `stage` names the work, `index` of `total` is done, `payload` carries data."""

    stage: str
    index: int
    total: int
    payload: Any = None


def run_to_end(events: Generator[Progress, None, Any], callback: Callable[[Progress], None] | None = None) -> Any:
    """Consume a generator of Progress events and return the payload of the final 'done' event."""
    result = None
    for event in events:
        if callback is not None:
            callback(event)
        if event.stage == "done":
            result = event.payload
    return result
