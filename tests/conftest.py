"""Shared fixtures: synthetic blob tiles and the tiny cDAL model stored in tests/data."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from napari_cdal.catalog import CACHE_DIR_ENV
from napari_cdal.engine.config import PRESETS, ModelConfig
from napari_cdal.engine.events import TICK
from napari_cdal.engine.method.model import CdalModel

# one definition of the blob tiles and the tiny model's training, shared with the script that stores
# the model (tools/ is a package, the repository root is on pytest's pythonpath: pyproject.toml);
# the tests import TINY, blob_tile and train_tiny from here
from tools.build_tiny_model import STORED, TINY, blob_tile, load_tiny, train_tiny  # noqa: F401

# napari keeps its settings (reader preferences among them) in a per-user file: the tests' own, never the user's
TEST_SETTINGS = Path(tempfile.mkdtemp(prefix="napari-cdal-test-settings-")) / "settings.yaml"
os.environ.setdefault("NAPARI_CONFIG", str(TEST_SETTINGS))

CLASSES = ("background", "anterior", "posterior")
TINY_CLASSES = ModelConfig(
    **{
        **PRESETS["tiny"],
        "image_channels": 3,
        "context_slices": 1,
        "label_encoding": "classes",
        "class_names": CLASSES,
        "intensity_percentiles": (0.5, 99.5),
        "image_mean": (128.0,) * 3,
        "image_std": (64.0,) * 3,
        "diffusion_steps": 2,
    }
)
"""A tiny model of classes (2.5D slices, three classes), for volume tests that build their own model."""


def volume_affine() -> np.ndarray:
    """An affine with unequal spacing and an offset, to see it survive a round trip."""
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 7.5)
    return affine


def synthetic_volume(seed: int, shape=(12, 24, 24)) -> tuple[np.ndarray, np.ndarray]:
    """A dark volume with a bright ball (class 1) in front of a mid-grey one (class 2)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    labels = np.zeros(shape, np.uint8)
    cy, cx = rng.integers(8, 16, 2)
    labels[(y - cy) ** 2 + (x - cx + 4) ** 2 < 16] = 1
    labels[(y - cy) ** 2 + (x - cx - 4) ** 2 < 12] = 2
    image = np.choose(labels, [20.0, 200.0, 110.0]) + rng.normal(0, 8, shape)
    return image.astype(np.float32), labels


def pytest_configure(config) -> None:
    """NAPARI_CDAL_TEST_THREADS caps torch's threads: on a 2-core machine that also trains in the
    background, two threads per process spin against each other and run many times slower.
    The runtimes' cache is a temporary folder of the run unless NAPARI_CDAL_CACHE_DIR names one."""
    threads = os.environ.get("NAPARI_CDAL_TEST_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    if not os.environ.get(CACHE_DIR_ENV):  # converted models go to a folder of this run, never the user's cache
        os.environ[CACHE_DIR_ENV] = tempfile.mkdtemp(prefix="napari-cdal-test-cache-")


@dataclass(frozen=True)
class StoredRun:
    """What the tests read of the stored tiny model's training run: its step count and record.

    `step` counts the 'train' events the build saw (one per step, each with its losses: the record's
    step_losses), not the record's own iteration count, so a test can hold one against the other."""

    step: int
    record: dict[str, Any]


@pytest.fixture(scope="session")
def trained_tiny() -> tuple[CdalModel, StoredRun]:
    """The tiny model tools/build_tiny_model.py trained, loaded from tests/data, and its run."""
    model = load_tiny()
    return model, StoredRun(len(model.record["step_losses"]), model.record)


@pytest.fixture(scope="session")
def tiny_model_file(trained_tiny, tmp_path_factory) -> Path:
    """A copy of the stored tiny model for tests that load files; none can alter the original."""
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    shutil.copyfile(STORED, path)
    return path


def blob_mosaic(path: Path, **layout: Any) -> np.ndarray:
    """Write a 256 x 256 mosaic of four blob tiles at the tiny model's 0.5 µm/px (20000 px per cm) as a TIFF laid
    out as `layout` says (tiles or strips, compression: tifffile.imwrite's options); return its pixels."""
    import tifffile

    top = np.concatenate([blob_tile(31).image, blob_tile(32).image], axis=1)
    bottom = np.concatenate([blob_tile(33).image, blob_tile(34).image], axis=1)
    image = np.concatenate([top, bottom], axis=0)
    tifffile.imwrite(path, image, resolution=(20000, 20000), resolutionunit="CENTIMETER", **layout)
    return image


TILED = {"tile": (64, 64), "compression": "zlib", "bigtiff": True}
"""blob_mosaic's layout as a slide: a tiled BigTIFF."""


@pytest.fixture()
def blob_folder(tmp_path) -> Path:
    """A MoNuSeg-layout folder of two blob tiles at 0.5 µm/px (what the tiny model was trained at)."""
    import tifffile

    for sub in ("images", "masks", "masks_instance"):
        (tmp_path / sub).mkdir()
    for seed, name in ((5, "blob-a"), (6, "blob-b")):
        tile = blob_tile(seed)
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", tile.image)
        Image.fromarray(tile.foreground.astype(np.uint8)).save(tmp_path / "masks" / f"{name}.png")
        Image.fromarray(tile.instances.astype(np.uint16)).save(tmp_path / "masks_instance" / f"{name}.png")
    return tmp_path


def pause_after_first_event(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str) -> threading.Event:
    """Make the engine generator `module.name` wait after its first event (ticks aside) until the event is set.

    The widgets look the engine function up at run time, so a run started now is surely mid-way
    when the test acts (cancel, close the dock) and goes on once the event is set.
    """
    resume = threading.Event()
    real = getattr(module, name)

    def paused(*args, **kwargs):
        waited = False
        for event in real(*args, **kwargs):
            yield event
            if not waited and event.stage != TICK:
                waited = True
                resume.wait(30)

    monkeypatch.setattr(module, name, paused)
    return resume


def click_and_wait(qtbot, widget, button, timeout: int = 120_000) -> str:
    """Click a widget's run button like a user and wait for the run to end; return its outcome."""
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    button.native.click()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=timeout)
    widget.run_finished.disconnect(outcomes.append)
    return outcomes[0]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """`--threads` changes torch's global thread count in-process; put it back after each test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


PROGRESS_RENDER = re.compile(r"\d+%\||\d+\w* \[\d+:\d+")
"""A progress bar as tqdm draws it: '40%|████ | 2/5 [...]' with its total, '0step [00:00, ...' at 0 before it."""


def message_lines(err: str) -> list[str]:
    """What a command printed on stderr besides its progress bars (redrawn with carriage returns), line by line."""
    chunks = [chunk.strip() for chunk in re.split(r"[\r\n]", err) if chunk.strip()]
    return [chunk for chunk in chunks if not PROGRESS_RENDER.search(chunk)]


def run(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    from napari_cdal.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_and_evaluate(
    capsys,
    tmp_path: Path,
    data: Path,
    config: dict[str, Any],
    split: dict[str, list[str]],
    recipe: dict[str, Any],
    iterations: int,
    patch_size: int,
) -> tuple[Path, dict[str, Any]]:
    """`napari-cdal train` a model of `config` on `data` (the split and the training recipe as JSON files), then
    `evaluate` it on the validation subset; the model file and the mean scores."""
    files = {}
    for name, content in (("config", config), ("split", split), ("recipe", recipe)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(content))
    model = tmp_path / "model.safetensors"
    code, _, err = run(
        capsys,
        "train",
        data,
        "--out",
        model,
        "--config",
        files["config"],
        "--split",
        files["split"],
        "--train-config",
        files["recipe"],
        "--iterations",
        iterations,
        "--batch-size",
        8,
        "--patch-size",
        patch_size,
        "--validate-every",
        iterations,
        "--threads",
        1,
    )
    assert code == 0, err
    code, _, err = run(
        capsys,
        "evaluate",
        data,
        "--model",
        model,
        "--split",
        files["split"],
        "--subset",
        "validation",
        "--json",
        tmp_path / "scores.json",
    )
    assert code == 0, err
    return model, json.loads((tmp_path / "scores.json").read_text())["mean"]


def files_in(folder: Path) -> list[str]:
    """The names in a folder (hidden temporary files too), [] when it does not exist."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture()
def blob_images(tmp_path):
    """One blob tile written as a TIFF and as a PNG (different stems), and its truth."""
    import tifffile

    tile = blob_tile(7)
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "tile.tif", tile.image)
    Image.fromarray(tile.image).save(folder / "tile_png.png")
    return folder / "tile.tif", folder / "tile_png.png", tile


@dataclass
class HeldInBlock:
    """What hold_in_block saw: set `resume` to let the engine go on from the block it holds."""

    held: threading.Event
    resume: threading.Event
    calls_at_hold: int = -1
    last_event: Any = None
    stopped_by: type[BaseException] | None = None
    events_after_hold: int = 0


def hold_in_block(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str, after: str, count_calls: list[Any]
) -> HeldInBlock:
    """Hold the engine inside the first block of G (a ResBlock) that runs after the engine generator
    `module.name` hands on an event of stage `after`.

    The block waits before its own work (its cancel check has passed) until `resume` is set, so a
    Cancel clicked meanwhile takes effect at the next module's check, inside that network pass.
    `calls_at_hold` is len(count_calls) then (the test counts network passes in it), `last_event`
    the last event handed on before the hold, and `stopped_by` what ended the engine generator
    (RunCancelled from the token, GeneratorExit when it was closed at an event).
    """
    from napari_cdal.engine.method.networks import ResBlock

    state = HeldInBlock(threading.Event(), threading.Event())
    armed = threading.Event()
    real = getattr(module, name)
    real_forward = ResBlock.forward

    def holding_forward(self, *args):
        if armed.is_set() and not state.held.is_set():
            state.calls_at_hold = len(count_calls)
            state.held.set()
            state.resume.wait(30)
        return real_forward(self, *args)

    def watching(*args, **kwargs):
        try:
            for event in real(*args, **kwargs):
                if state.held.is_set():
                    state.events_after_hold += 1
                else:
                    state.last_event = event
                if event.stage == after:
                    armed.set()
                yield event
        except BaseException as exc:  # noted, then passed on as it came
            state.stopped_by = type(exc)
            raise

    monkeypatch.setattr(ResBlock, "forward", holding_forward)
    monkeypatch.setattr(module, name, watching)
    return state


def cancel_at_hold(qtbot, widget, button, hold: HeldInBlock, timeout: int = 120_000) -> list[str]:
    """Click `button`, click Cancel while the engine is held in a block, then let it go on; the outcomes seen."""
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    button.native.click()
    qtbot.waitUntil(hold.held.is_set, timeout=timeout)
    widget.cancel_button.native.click()
    hold.resume.set()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=timeout)
    return outcomes


def count_network_passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every pass of G and of D's trunk (sampling and training alike), by network."""
    from napari_cdal.engine.method.networks import Discriminator, Generator

    calls: list[str] = []
    for cls, method in ((Generator, "forward"), (Discriminator, "features")):
        real = getattr(cls, method)

        def counted(self, *args, _real=real, _name=cls.__name__):
            calls.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(cls, method, counted)
    return calls


PLUGIN = "napari-cdal"


def new_napari_session(viewer: Any) -> Any:
    """`viewer` as napari starts on a machine where napari-cdal has never been used: the plugin not yet active and
    no reader preference (make_napari_viewer has reset napari's settings). Its first use activates it."""
    from npe2 import PluginManager

    PluginManager.instance().deactivate(PLUGIN)
    return viewer


def used_before(viewer: Any) -> Any:
    """`viewer` in a later napari session: an earlier one used napari-cdal, which saved its reader preferences."""
    from napari_cdal._reader import prefer_napari_cdal_readers

    prefer_napari_cdal_readers()
    return viewer


@dataclass
class Opened:
    """What File > Open did: the layers it added and the files napari asked a reader for (its Choose reader dialog)."""

    layers: list[Any]
    asked: list[str]


def open_with_file_menu(
    viewer: Any, path: str | Path, monkeypatch: pytest.MonkeyPatch, choose: str | None = None
) -> Opened:
    """Open `path` with File > Open File(s)... as a user does: the file dialog answers `path`; napari picks the reader
    (a preference, or the only one that claims it) or asks in its Choose reader dialog, answered with the reader
    named `choose` (None: Cancel)."""
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog
    from qtpy.QtWidgets import QFileDialog

    asked: list[str] = []

    def answer(dialog: Any) -> tuple[str, bool]:
        asked.append(dialog._current_file)
        return (choose or "", False)

    monkeypatch.setattr(QFileDialog, "getOpenFileNames", lambda *args, **kwargs: ([str(path)], ""))
    monkeypatch.setattr(QtReaderDialog, "get_user_choices", answer)
    before = list(viewer.layers)
    action = next(action for action in viewer.window.file_menu.actions() if action.text() == "Open File(s)...")
    action.trigger()
    return Opened([layer for layer in viewer.layers if layer not in before], asked)
