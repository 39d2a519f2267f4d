"""Progress events that the engine's generator functions yield, and a helper to run them to the end."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, TypeVar

Result = TypeVar("Result")

TICK = "tick"
"""The stage of an event that reports nothing new and is only a place to stop: the engine yields one
between stages of a network pass or of a training step (well under a second apart), so that closing
the generator there cancels within a second. `index` and `total` repeat the progress so far; progress
displays skip ticks."""


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


def ticks_of(events: Generator[Progress, None, Any], index: int, total: int) -> Generator[Progress, None, Any]:
    """Pass on each event of `events` as Progress('tick', index, total); returns its 'done' payload (or return value).

    For a function that runs another to the end inside one unit of its own progress, yet should
    stay cancellable wherever the inner one is.
    """
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            return stop.value
        if event.stage == "done":
            events.close()
            return event.payload
        yield Progress(TICK, index, total)


def ticks_at_pauses(paused: Generator[Any, None, Result], index: int, total: int,
                    around: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
                    ) -> Generator[Progress, None, Result]:
    """Run `paused` (a computation that yields at each pause and returns its result), yielding
    Progress('tick', index, total) at each pause; returns its result.

    `around` (autocast, say) is entered only around each part of the work, never while the consumer
    holds a tick. The networks' staged passes and train_step_stages are run this way.
    """
    while True:
        with around():
            try:
                next(paused)
            except StopIteration as stop:
                return stop.value
        yield Progress(TICK, index, total)
