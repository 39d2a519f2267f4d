"""The models the widgets' runs load (once per file, time and device), their cancel checks, and the OpenMP rule.

In napari the GUI thread (and, without a GPU, the canvas' software renderer) shares the cores with
the worker's torch threads. OpenMP's default spin-waiting turns each moment they take into lost
compute, so the plugin asks for passive waiting before it first imports torch (ask_passive_openmp: a widget's
device field, a run; a user's own OMP_WAIT_POLICY wins); on 2 cores it took a Segment click from 0.84 s to 0.65 s
over the engine. Importing the widgets changes nothing in the process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_cdal.engine.method.model import CdalModel

OPENMP_SPINS: bool | None = None
"""True when torch, and with it OpenMP, was loaded before the plugin could ask for passive waiting (another plugin or
a script imported it first) and the user chose no policy: OpenMP's threads then spin-wait, and a Segment run takes
one torch thread (threads_for_the_gui). None until the plugin first needs torch (ask_passive_openmp)."""


def ask_passive_openmp() -> bool:
    """Before the plugin's first use of torch: ask OpenMP to wait passively unless the user chose a policy or torch
    is loaded already (then too late); return OPENMP_SPINS, settled on the first call."""
    global OPENMP_SPINS
    if OPENMP_SPINS is None:
        OPENMP_SPINS = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return OPENMP_SPINS


@contextlib.contextmanager
def threads_for_the_gui() -> Iterator[None]:
    """One torch thread while a Segment run lasts where OpenMP spin-waits (OPENMP_SPINS), then the count there was
    (torch's count is the worker thread's own; threads started later take the last one set).

    Spinning threads take turns on the cores with napari's GUI thread and any other program: on a loaded 2-core
    machine a volume took 15-20 s instead of 2 s (benchmarks/volume_widget.py, torch loaded first); with one
    thread there is nothing to wait for. Where the plugin loaded torch itself (waiting passively) nothing changes.
    """
    if not ask_passive_openmp():
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def stoppable(model: CdalModel, cancel: threading.Event | None) -> AbstractContextManager[None]:
    """The model's networks check `cancel` before each block while the run lasts: a Cancel stops a pass at once."""
    from napari_cdal.engine.events import stop_on_cancel

    return stop_on_cancel(cancel, model.generator, model.discriminator)
