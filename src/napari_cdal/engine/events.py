"""Progress events that the engine's generator functions yield, helpers to run them, and the cancel token's check."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from torch import nn

Result = TypeVar("Result")

TICK = "tick"
"""The stage of an event that reports nothing new and is only a place to stop: the engine yields one
after each whole network pass (and while it waits on a cluster), so that closing the generator there
stops between passes. `index` and `total` repeat the progress so far; progress displays skip ticks.
Inside a pass a run stops by its cancel token instead (stop_on_cancel)."""


@dataclass(frozen=True)
class Progress:
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


def then_tick(
    compute: Callable[[], Result],
    index: int,
    total: int,
    around: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Generator[Progress, None, Result]:
    """Run `compute()` (a whole network pass, say) inside `around`, then yield Progress('tick', index, total);
    returns its result.

    `around` (autocast, say) is left before the tick, so it is never held while the consumer holds one.
    """
    with around():
        result = compute()
    yield Progress(TICK, index, total)
    return result


class RunCancelled(Exception):
    """A run's cancel token was set: raised inside a network pass by stop_on_cancel's check; a Cancel, not a failure."""


class _CancelCheck:
    """The forward pre-hook stop_on_cancel puts on every module: raises RunCancelled once `token` is set.

    It fires only in the thread that started the run, so two runs sharing a loaded model (a Segment
    and a Fine-tune in two workers) each stop on their own token. A copy of a hooked network made
    during the run (fine-tuning's working networks, their EMA, a validation's export) shares this
    very check instead of a copy, so it stops with the run; once the run is over the check is off,
    in the copies too.
    """

    def __init__(self, token: threading.Event) -> None:
        self.token = token
        self.thread = threading.get_ident()
        self.on = True

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.token.is_set() and self.on and threading.get_ident() == self.thread:
            raise RunCancelled(f"cancelled before {type(module).__name__} ran")

    def __deepcopy__(self, memo: dict[int, Any]) -> _CancelCheck:
        return self


@contextlib.contextmanager
def stop_on_cancel(token: threading.Event | None, *networks: nn.Module) -> Iterator[None]:
    """While the block runs, every module of `networks` checks `token` before it runs and raises RunCancelled once
    it is set: a run stops between two blocks of a network pass, well within a second of the set.

    The networks stay plain modules (hooks, torch.compile and ONNX export see their forward); the
    checks are forward pre-hooks, put on every submodule so that any network, a new one too, is
    covered with no code of its own, and taken off at the end. They run the same operations, so
    results are unchanged bit for bit. The token is set from any thread (a GUI's Cancel); the checks
    fire in the thread that entered the block. With no token (the CLI) nothing is installed.
    """
    if token is None:
        yield
        return
    check = _CancelCheck(token)
    modules = {id(module): module for network in networks for module in network.modules()}
    handles = [module.register_forward_pre_hook(check) for module in modules.values()]
    try:
        yield
    finally:
        check.on = False
        for handle in handles:
            handle.remove()
