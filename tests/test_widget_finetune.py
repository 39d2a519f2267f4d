"""The Fine-tune widget, docked next to Segment in a real napari viewer under Xvfb (tiny model)."""

from __future__ import annotations

import errno
import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    blob_tile,
    cancel_at_hold,
    click_and_wait,
    count_network_passes,
    hold_in_block,
    pause_after_first_event,
)
from skimage.draw import disk

from napari_cdal._widgets._layers import layer_name
from napari_cdal._widgets._names import default_model_name, model_name_problem
from napari_cdal._widgets._pairs import NO_REGIONS, WHOLE_IMAGE, WHOLE_IMAGE_WARNING, layer_boxes
from napari_cdal._widgets.finetune import FinetuneWidget
from napari_cdal._widgets.segment import OTHER_FILE, SegmentWidget
from napari_cdal.engine.config import iterations_done
from napari_cdal.layer_metadata import TAG

pytestmark = pytest.mark.gui

PLUGIN = "napari-cdal"
NAME = "blobs"
SCALE, TRANSLATE = (0.5, 0.5), (10.0, 20.0)
TIMEOUT_MS = 120_000
STEPS = 2


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_files(folder: Path) -> list[str]:
    """Everything in the model folder, hidden temporary files included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture()
def model_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("NAPARI_CDAL_MODEL_DIR", str(folder))
    return folder


@pytest.fixture()
def errors(monkeypatch) -> list[str]:
    """Messages the widgets send to napari's error notifications."""
    shown: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda message: shown.append(str(message)))
    return shown


def add_image(viewer, name: str = NAME, size: int = 128):
    """A synthetic H&E-like tile at the tiny model's 0.5 µm/px, placed off the origin."""
    return viewer.add_image(blob_tile(3, size).image, name=name, scale=SCALE, translate=TRANSLATE, units=("µm", "µm"))


def add_corrected_mask(viewer, image_name: str = NAME, size: int = 128):
    """The tile's true nuclei as an edited `<image> mask`: one nucleus painted in with the brush."""
    labels = viewer.add_labels(
        blob_tile(3, size).instances.copy(),
        name=f"{image_name} mask",
        scale=SCALE,
        translate=TRANSLATE,
        metadata={TAG: {"image": image_name, "kind": "mask", "fingerprint": "before the edit"}},
    )
    labels.selected_label = int(labels.data.max()) + 1
    labels.brush_size = 8
    labels.paint((20, 100), labels.selected_label, refresh=True)
    return labels


def add_regions(viewer, boxes_px: list[tuple[int, int, int, int]]):
    """A Shapes layer of rectangles given as (y0, y1, x0, x1) image pixels, drawn in world units."""
    rectangles = []
    for y0, y1, x0, x1 in boxes_px:
        corners = np.array([[y0 - 0.5, x0 - 0.5], [y1 - 0.5, x1 - 0.5]])
        rectangles.append(corners * SCALE + TRANSLATE)
    return viewer.add_shapes(rectangles, shape_type="rectangle", name="checked")


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def dock_both(viewer, model_file: Path) -> tuple[SegmentWidget, FinetuneWidget]:
    segment = dock(viewer, "Segment")
    segment.model.value = OTHER_FILE
    segment.model_file.value = model_file
    finetune = dock(viewer, "Fine-tune")
    finetune.iterations.value = STEPS
    learn_from_whole_images(finetune)
    return segment, finetune


def learn_from_whole_images(finetune: FinetuneWidget) -> None:
    """Without a Shapes layer, choose the whole image explicitly (it is never the default)."""
    for row in finetune.pair_rows:
        if row.regions.value == NO_REGIONS:
            row.regions.value = WHOLE_IMAGE


@pytest.fixture()
def improved(monkeypatch):
    """Decide whether the fine-tuned model is better beyond noise on the held-back part (two steps decide nothing)."""
    import dataclasses

    from napari_cdal.engine.training import acceptance
    from napari_cdal.engine.training import finetune as finetune_module

    def decide(value: bool) -> None:
        monkeypatch.setattr(
            finetune_module, "judge", lambda *args: dataclasses.replace(acceptance.judge(*args), improved=value)
        )

    decide(True)
    return decide


def click_finetune(qtbot, widget: FinetuneWidget, timeout: int = TIMEOUT_MS) -> str:
    """Click Fine-tune like a user and wait for the run to end; return its outcome."""
    return click_and_wait(qtbot, widget, widget.finetune_button, timeout)


# ----------------------------------------------------------------------------- the whole round trip


def test_finetune_writes_a_new_model_that_segment_selects_and_back_undoes(
    qtbot, make_napari_viewer, tiny_model_file, model_folder, improved
) -> None:
    from napari_cdal.engine.io.checkpoint import read_metadata

    original_hash = sha256(tiny_model_file)
    viewer = make_napari_viewer()
    image = add_image(viewer)
    labels = add_corrected_mask(viewer)
    corrected = labels.data.copy()
    add_regions(viewer, [(0, 64, 60, 128)])
    segment, finetune = dock_both(viewer, tiny_model_file)
    (row,) = finetune.pair_rows
    assert row.image.value is image and row.corrected_labels.value is labels
    row.regions.value = viewer.layers["checked"]
    assert finetune.mpp.value == pytest.approx(0.5)
    assert finetune.base_model_path() == str(tiny_model_file)
    assert finetune.model_name.value == f"tiny-ft-{NAME}"

    name = finetune.model_name.value
    assert click_finetune(qtbot, finetune) == "done"

    new_model = model_folder / f"{name}.safetensors"
    assert model_files(model_folder) == [new_model.name]
    assert finetune.saved_model == new_model
    meta = read_metadata(new_model)
    assert meta["record"]["finetune"]["images"] == [NAME] and iterations_done(meta["record"]) == STEPS
    assert meta["record"]["finetuned_from"]["model"] == tiny_model_file.name
    assert segment.model.value == str(new_model), "Segment now uses the new model"
    assert str(new_model) in segment.model.choices and segment.model.get_choice(name) == str(new_model)
    assert str(new_model) in finetune.base_model.choices
    assert sha256(tiny_model_file) == original_hash, "the base model file is untouched"
    assert np.array_equal(labels.data, corrected), "the user's Labels layer is only read"
    assert finetune.status.value.startswith("On the part you corrected and we held back: ")
    assert " Dice, " in finetune.status.value and " nuclei right: " in finetune.status.value
    assert f"Saved {new_model.name}" in finetune.status.value and "Segment now uses it" in finetune.status.value
    before, after = meta["record"]["finetune"]["before"], meta["record"]["finetune"]["after"]
    assert before["step"] == 0 and before["nuclei_truth"] > 0, "a small region has a held-back part too"
    assert f"{before['dice']:.2f} → {after['dice']:.2f} Dice" in finetune.report
    assert finetune.model_name.value == f"tiny-ft-{NAME}-2", "the next suggestion: short, no snowballing suffixes"

    assert finetune.back_button.enabled
    finetune.back_button.native.click()
    assert segment.selected_model_path() == str(tiny_model_file)
    assert not finetune.back_button.enabled
    assert finetune.model_name.value == f"tiny-ft-{NAME}-2", "refreshed after Back, still short"
    assert finetune.finetune_button.enabled and not finetune.cancel_button.enabled


def test_the_progress_bar_says_what_happens_before_the_first_step_then_counts_the_steps_with_the_loss(
    qtbot, monkeypatch, make_napari_viewer, tiny_model_file, model_folder
) -> None:
    from napari_cdal._widgets._finetune_run import CHECKING, GETTING_READY, FinetuneRun
    from napari_cdal._widgets._worker import RunProgress
    from napari_cdal.engine.events import TICK

    shown: list[tuple[str, str]] = []  # the bar's text and tooltip after each step
    original = RunProgress.update

    def spy(self, n: int = 1) -> None:
        original(self, n)
        bar = finetune.progress_bar
        shown.append((bar.native.text(), bar.tooltip))

    monkeypatch.setattr(RunProgress, "update", spy)
    handled: list[tuple[str, str, str]] = []  # each event's stage, the bar's text and the status, once handled
    on_event = FinetuneRun.on_event

    def watched(self, event) -> None:
        on_event(self, event)
        if event.stage != TICK:
            handled.append((event.stage, self.widget.progress_bar.native.text(), self.widget.status.value))

    monkeypatch.setattr(FinetuneRun, "on_event", watched)
    viewer = make_napari_viewer()
    add_image(viewer)
    add_corrected_mask(viewer)
    _, finetune = dock_both(viewer, tiny_model_file)
    outcomes: list[str] = []
    finetune.run_finished.connect(outcomes.append)
    finetune.finetune_button.native.click()
    assert finetune.progress_bar.native.text() == GETTING_READY, "not '0 of N' while nothing is counted yet"
    qtbot.waitUntil(lambda: bool(outcomes), timeout=TIMEOUT_MS)
    assert outcomes == ["done"]
    first_step = next(index for index, (stage, _, _) in enumerate(handled) if stage == "train")
    assert first_step > 0 and all(text == CHECKING for _, text, _ in handled[:first_step]), handled[:first_step]
    assert "checking the base model, before the first step, on the held-back part" in handled[0][2]
    assert [text for text, _ in shown] == [f"{i} of {STEPS}" for i in range(1, STEPS + 1)]
    assert all(tip.startswith(f"the generator's loss at step {i}: ") for i, (_, tip) in enumerate(shown, 1))
    assert finetune.progress_bar.value == 0 and "loss" not in finetune.progress_bar.tooltip


def fitted_and_laid_out(qtbot, widget) -> None:
    """Wait until the plugin has fitted a docked widget (a turn after napari docks it, its drop-downs are narrowed),
    then deliver every layout request Qt still holds: the window's geometry is final, however busy the machine."""
    from qtpy.QtCore import QEvent
    from qtpy.QtWidgets import QApplication, QComboBox

    from napari_cdal._widgets._fields import CHOICE_CHARS

    def fitted() -> bool:
        combos = widget.native.findChildren(QComboBox)
        return bool(combos) and all(combo.minimumContentsLength() == CHOICE_CHARS for combo in combos)

    qtbot.waitUntil(fitted, timeout=TIMEOUT_MS)
    for _ in range(10):  # a layout done may ask its parent's for another: one round per level of the window
        QApplication.sendPostedEvents(None, QEvent.Type.LayoutRequest)


def test_fine_tune_comes_to_the_front_keeps_the_canvas_width_and_shows_its_labels_whole(
    qtbot, make_napari_viewer, tiny_model_file
) -> None:
    from qtpy.QtWidgets import QLabel, QTabBar

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    add_image(viewer, name="TCGA-B0-5698-01Z-00-DX1")  # long layer names must not widen the dock
    viewer.add_labels(np.zeros((128, 128), np.uint32), name="mask · TCGA-B0-5698-01Z-00-DX1 · cdal_monuseg")
    canvas = viewer.window._qt_viewer.canvas.native
    fitted_and_laid_out(qtbot, dock(viewer, "Segment"))
    beside_segment = canvas.width()
    finetune = dock(viewer, "Fine-tune")  # Plugins > napari-cdal > Fine-tune
    window = viewer.window._qt_window

    def front_tab() -> str:
        bars = [bar for bar in window.findChildren(QTabBar) if bar.count() == 2]  # none until the dock is tabbed
        return bars[0].tabText(bars[0].currentIndex()) if bars else ""

    qtbot.waitUntil(lambda: front_tab().startswith("Fine-tune"), timeout=TIMEOUT_MS)
    fitted_and_laid_out(qtbot, finetune)
    assert canvas.width() == beside_segment > 300, "the shared dock is no wider than Segment made it"
    for label in finetune.native.findChildren(QLabel):
        if label.isVisibleTo(finetune.native) and label.text() and not label.wordWrap():
            assert label.width() >= label.fontMetrics().horizontalAdvance(label.text()), f"{label.text()} is clipped"


def test_a_binary_mask_is_split_with_a_visible_note(
    qtbot, monkeypatch, make_napari_viewer, tiny_model_file, model_folder
) -> None:
    from napari_cdal.engine.io.checkpoint import read_metadata

    infos: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_info", lambda message: infos.append(str(message)))
    viewer = make_napari_viewer()
    add_image(viewer)
    binary = np.zeros((128, 128), np.uint8)
    for centre in ((40, 40), (40, 58), (90, 90)):  # two touching nuclei and one apart
        binary[disk(centre, 10, shape=binary.shape)] = 1
    labels = viewer.add_labels(binary.copy(), name=f"{NAME} mask", scale=SCALE, translate=TRANSLATE)
    _, finetune = dock_both(viewer, tiny_model_file)
    assert finetune.pair_rows[0].corrected_labels.value is labels
    name = finetune.model_name.value
    assert click_finetune(qtbot, finetune) == "done"
    assert len(finetune.notes) == 1 and "binary" in finetune.notes[0]
    assert "split by a distance-map watershed into 3 nuclei" in finetune.notes[0]
    assert infos == [f"Fine-tune: {finetune.notes[0]}"]
    assert np.array_equal(labels.data, binary), "the user's layer is only read"
    meta = read_metadata(model_folder / f"{name}.safetensors")
    assert meta["record"]["finetune"]["notes"] == finetune.notes


def test_two_pairs_without_segment_docked_use_the_model_dropdown(
    qtbot, make_napari_viewer, tiny_model_file, model_folder
) -> None:
    import shutil

    from napari_cdal.engine.io.checkpoint import read_metadata

    model_folder.mkdir()
    base = model_folder / "base.safetensors"
    shutil.copy(tiny_model_file, base)
    viewer = make_napari_viewer()
    add_image(viewer)
    add_corrected_mask(viewer)
    second = add_image(viewer, "other", 96)
    add_corrected_mask(viewer, "other", 96)
    finetune = dock(viewer, "Fine-tune")
    finetune.iterations.value = STEPS
    assert "<segment>" not in finetune.base_model.choices
    finetune.base_model.value = str(base)
    finetune.model_name.value = "mine"
    row = finetune.add_pair()
    row.image.value = second
    assert row.corrected_labels.value is viewer.layers["other mask"] and row.regions.value == NO_REGIONS
    learn_from_whole_images(finetune)
    assert click_finetune(qtbot, finetune) == "done"
    assert read_metadata(model_folder / "mine.safetensors")["record"]["finetune"]["images"] == [
        NAME,
        "other",
    ]
    assert finetune.status.value.endswith("Dock Segment to use it")
    assert not finetune.back_button.enabled


def test_rectangles_become_boxes_in_the_image_pixel_grid(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    image = add_image(viewer)
    regions = add_regions(viewer, [(10, 40, 5, 70), (64, 128, 0, 32)])
    assert layer_boxes(regions, image) == [(10, 40, 5, 70), (64, 128, 0, 32)]


def test_names_are_checked_and_suggested(tmp_path) -> None:
    (tmp_path / "taken.safetensors").write_bytes(b"")
    assert model_name_problem("fresh", tmp_path) is None
    assert "already exists" in model_name_problem("taken", tmp_path)
    assert "plain file name" in model_name_problem("../escape", tmp_path)
    assert "plain file name" in model_name_problem("a\\b", tmp_path)
    assert "name" in model_name_problem("", tmp_path)
    assert default_model_name("cdal_monuseg", "my tile/1") == "cdal_monuseg-ft-my_tile_1"
    assert default_model_name("cdal_monuseg-ft-TCGA-AR-A1AK-01Z-00-DX1-2", "TCGA-AR-A1AK-01Z-00-DX1") == (
        "cdal_monuseg-ft-TCGA-AR-A1AK-01Z-00"
    ), "a fine-tuned base does not snowball; the image is cut short"


# ----------------------------------------------------------------------------- bad input


def test_a_name_that_exists_or_has_a_separator_is_refused(
    make_napari_viewer, tiny_model_file, model_folder, errors
) -> None:
    model_folder.mkdir()
    (model_folder / "taken.safetensors").write_bytes(b"keep me")
    viewer = make_napari_viewer()
    add_image(viewer)
    add_corrected_mask(viewer)
    _, finetune = dock_both(viewer, tiny_model_file)
    finetune.model_name.value = "taken"
    assert "already exists" in finetune.model_name.tooltip
    finetune.finetune_button.native.click()
    assert "already exists" in errors[-1] and not finetune.running
    finetune.model_name.value = "sub/name"
    finetune.finetune_button.native.click()
    assert "plain file name" in errors[-1] and not finetune.running
    assert model_files(model_folder) == ["taken.safetensors"]
    assert (model_folder / "taken.safetensors").read_bytes() == b"keep me"


@pytest.mark.parametrize("case", ["empty labels", "shape mismatch", "region without nuclei"])
def test_bad_corrections_are_refused_with_the_engines_message(
    qtbot, make_napari_viewer, tiny_model_file, model_folder, errors, case
) -> None:
    original_hash = sha256(tiny_model_file)
    viewer = make_napari_viewer()
    add_image(viewer)
    if case == "empty labels":
        viewer.add_labels(np.zeros((128, 128), np.uint32), name=f"{NAME} mask")
        expected = "labels are empty"
    elif case == "shape mismatch":
        viewer.add_labels(blob_tile(3, 100).instances, name=f"{NAME} mask")
        expected = "differs from the image's"
    else:
        corner = np.zeros((128, 128), np.uint32)
        corner[disk((10, 10), 5)] = 1
        viewer.add_labels(corner, name=f"{NAME} mask")
        add_regions(viewer, [(80, 128, 80, 128)])
        expected = "hold no nucleus"
    segment, finetune = dock_both(viewer, tiny_model_file)
    if case == "region without nuclei":
        finetune.pair_rows[0].regions.value = viewer.layers["checked"]
    assert click_finetune(qtbot, finetune) == "failed"
    assert len(errors) == 1 and expected in errors[0] and errors[0].startswith("Fine-tune: ")
    assert model_files(model_folder) == []
    assert sha256(tiny_model_file) == original_hash
    assert segment.selected_model_path() == str(tiny_model_file)
    assert finetune.status.value.startswith("Failed") and finetune.finetune_button.enabled


def test_a_shapes_layer_without_rectangles_is_refused(
    make_napari_viewer, tiny_model_file, model_folder, errors
) -> None:
    viewer = make_napari_viewer()
    add_image(viewer)
    add_corrected_mask(viewer)
    viewer.add_shapes(name="nothing drawn")
    _, finetune = dock_both(viewer, tiny_model_file)
    finetune.pair_rows[0].regions.value = viewer.layers["nothing drawn"]
    finetune.finetune_button.native.click()
    assert "has no rectangle" in errors[-1] and not finetune.running


def test_an_unwritable_model_folder_is_refused_before_training(
    qtbot, monkeypatch, make_napari_viewer, tiny_model_file, model_folder, errors
) -> None:
    import napari_cdal.engine.checks as checks

    def read_only(folder) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(checks, "_probe_write", read_only)
    viewer = make_napari_viewer()
    add_image(viewer)
    add_corrected_mask(viewer)
    _, finetune = dock_both(viewer, tiny_model_file)
    finetune.finetune_button.native.click()
    assert "the model folder" in errors[-1] and "Read-only file system" in errors[-1]
    assert not finetune.running and model_files(model_folder) == []


def test_a_full_disk_leaves_nothing_behind(
    qtbot, monkeypatch, make_napari_viewer, tiny_model_file, model_folder, errors
) -> None:
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None) -> None:
        Path(filename).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    original_hash = sha256(tiny_model_file)
    viewer = make_napari_viewer()
    add_image(viewer)
    add_corrected_mask(viewer)
    segment, finetune = dock_both(viewer, tiny_model_file)
    assert click_finetune(qtbot, finetune) == "failed"
    assert "No space left on device" in errors[-1] and "nothing was written" in errors[-1]
    assert model_files(model_folder) == []
    assert sha256(tiny_model_file) == original_hash
    assert segment.selected_model_path() == str(tiny_model_file)


@pytest.fixture()
def paused_finetune(monkeypatch) -> threading.Event:
    """Hold the engine after its first step until the returned event is set (a sure 'mid-run')."""
    import napari_cdal.engine.training.finetune as engine_finetune

    return pause_after_first_event(monkeypatch, engine_finetune, "finetune")


def test_cancel_stops_cleanly_and_writes_nothing(
    qtbot, make_napari_viewer, tiny_model_file, model_folder, paused_finetune
) -> None:
    original_hash = sha256(tiny_model_file)
    viewer = make_napari_viewer()
    add_image(viewer)
    add_corrected_mask(viewer)
    segment, finetune = dock_both(viewer, tiny_model_file)
    finetune.iterations.value = 50
    outcomes: list[str] = []
    finetune.run_finished.connect(outcomes.append)
    finetune.finetune_button.native.click()
    qtbot.waitUntil(lambda: finetune.status.value.startswith("Fine-tuning"), timeout=TIMEOUT_MS)
    assert finetune.running and not finetune.finetune_button.enabled and finetune.cancel_button.enabled
    finetune.cancel_button.native.click()
    paused_finetune.set()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=TIMEOUT_MS)
    assert outcomes == ["cancelled"]
    assert finetune.status.value.startswith("Cancelled: no model written")
    assert model_files(model_folder) == []
    assert sha256(tiny_model_file) == original_hash
    assert segment.selected_model_path() == str(tiny_model_file)
    assert finetune.finetune_button.enabled and not finetune.cancel_button.enabled and not finetune.running


def test_cancel_takes_effect_inside_a_network_pass_of_a_training_step(
    qtbot, make_napari_viewer, tiny_model_file, model_folder, monkeypatch
) -> None:
    # Cancel inside G's pass of the second training step (before its update): the cancel token stops
    # it at the next block of that pass, no network pass starts after the Cancel and nothing is written.
    import napari_cdal.engine.training.finetune as engine_finetune
    from napari_cdal.engine.events import RunCancelled

    viewer = make_napari_viewer()
    add_image(viewer)
    add_corrected_mask(viewer)
    segment, finetune = dock_both(viewer, tiny_model_file)
    finetune.iterations.value = 50
    calls = count_network_passes(monkeypatch)
    hold = hold_in_block(monkeypatch, engine_finetune, "finetune", "train", calls)
    outcomes = cancel_at_hold(qtbot, finetune, finetune.finetune_button, hold, TIMEOUT_MS)
    assert outcomes == ["cancelled"] and model_files(model_folder) == []
    assert hold.stopped_by is RunCancelled and hold.last_event.stage == "train"
    assert hold.last_event.index == 1 and hold.last_event.total == 50  # one step done: inside the second
    assert hold.calls_at_hold > 0 and len(calls) == hold.calls_at_hold and hold.events_after_hold == 0


def test_plugin_modules_import_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, napari_cdal._widgets.finetune; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----------------------------------------------------------------------------- issue 14: what a user meets


def test_corrected_regions_follow_the_shapes_layers_and_whole_image_is_a_warned_choice(
    make_napari_viewer, tiny_model_file, model_folder, errors
) -> None:
    viewer = make_napari_viewer()
    add_image(viewer)
    add_corrected_mask(viewer)
    finetune = dock(viewer, "Fine-tune")
    (row,) = finetune.pair_rows
    assert row.regions.value == NO_REGIONS, "never the whole image by default"
    finetune.finetune_button.native.click()
    assert "draw a rectangle around what you corrected" in errors[-1] and not finetune.running
    first = add_regions(viewer, [(0, 64, 0, 64)])
    assert row.regions.value is first, "the only Shapes layer is picked"
    second = viewer.add_shapes(name="other rectangles")
    assert row.regions.value is second, "a new Shapes layer is the selected one"
    viewer.layers.selection.active = first
    assert row.regions.value is first, "the field follows the selected Shapes layer"
    viewer.layers.selection.active = viewer.layers[NAME]
    assert row.regions.value is first
    assert row.warning.native.isHidden()
    row.regions.value = WHOLE_IMAGE
    assert not row.warning.native.isHidden() and row.warning.value == WHOLE_IMAGE_WARNING
    viewer.layers.selection.active = second
    assert row.regions.value == WHOLE_IMAGE, "an explicit whole-image choice stays"
    assert all(tip for tip in (row.image.tooltip, row.corrected_labels.tooltip, row.regions.tooltip))


def test_a_model_that_does_not_score_better_is_saved_but_not_selected(
    qtbot, make_napari_viewer, tiny_model_file, model_folder, improved
) -> None:
    improved(False)
    viewer = make_napari_viewer()
    add_image(viewer)
    add_corrected_mask(viewer)
    add_regions(viewer, [(0, 128, 0, 128)])
    segment, finetune = dock_both(viewer, tiny_model_file)
    name = finetune.model_name.value
    assert click_finetune(qtbot, finetune) == "done"
    assert (model_folder / f"{name}.safetensors").is_file()
    assert segment.selected_model_path() == str(tiny_model_file), "the old model stays selected"
    status = finetune.status.value
    assert status.startswith("On the part you corrected and we held back: ") and " nuclei right: " in status
    assert "not better beyond the noise (two scorings of the old model differ by up to" in status
    assert "So Segment keeps tiny" in status and not finetune.back_button.enabled


def test_segment_waits_while_a_finetune_holds_the_cpu(
    qtbot, make_napari_viewer, tiny_model_file, model_folder, paused_finetune
) -> None:
    viewer = make_napari_viewer()
    add_image(viewer)
    add_corrected_mask(viewer)
    segment, finetune = dock_both(viewer, tiny_model_file)
    tip = segment.segment_button.tooltip
    outcomes: list[str] = []
    finetune.run_finished.connect(outcomes.append)
    finetune.finetune_button.native.click()
    qtbot.waitUntil(lambda: finetune.status.value.startswith("Fine-tuning"), timeout=TIMEOUT_MS)
    assert not segment.segment_button.enabled and not segment.slide_button.enabled
    assert segment.segment_button.tooltip.startswith("waiting: a fine-tune is using the CPU")
    finetune.cancel_button.native.click()
    paused_finetune.set()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=TIMEOUT_MS)
    assert segment.segment_button.enabled and segment.slide_button.enabled
    assert segment.segment_button.tooltip == tip


def test_both_widgets_share_one_tabbed_dock_each_with_one_named_cancel(
    qtbot, make_napari_viewer, tiny_model_file, model_folder
) -> None:
    from magicgui.widgets import Container, Label, PushButton

    from napari_cdal._widgets._fields import STATUS_MIN_WIDTH

    viewer = make_napari_viewer()
    add_image(viewer)
    segment_dock, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    finetune_dock, finetune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    window = viewer.window._qt_window
    qtbot.waitUntil(lambda: segment_dock in window.tabifiedDockWidgets(finetune_dock), timeout=TIMEOUT_MS)
    for widget, cancel in ((segment, "Cancel segmenting"), (finetune, "Cancel fine-tuning")):
        buttons = [w.text for w in widget if isinstance(w, PushButton)]
        assert [text for text in buttons if text.startswith("Cancel")] == [cancel]
        assert widget.status.native.minimumWidth() >= STATUS_MIN_WIDTH

        def walk(container):
            for child in container:
                if isinstance(child, Container):
                    yield from walk(child)
                elif not isinstance(child, Label):
                    yield child

        untipped = [child.label or child.text for child in walk(widget) if not child.tooltip]
        assert untipped == [], f"every field and button explains itself: {untipped}"
    assert segment.samples.label == "samples (for uncertainty)"
    assert finetune.learning_rate.tooltip.startswith("how far each learning step moves")


def test_the_places_review_visited_are_the_regions_fine_tune_learns_from(
    qtbot, make_napari_viewer, tiny_model_file, model_folder, improved
) -> None:
    import math

    from napari_cdal.engine.defaults import MIN_REGION_UM, REGION_MARGIN_UM
    from napari_cdal.engine.io.regions import widen_box

    viewer = make_napari_viewer()
    image = add_image(viewer)
    segment = dock(viewer, "Segment")
    segment.model.value = OTHER_FILE
    segment.model_file.value = tiny_model_file
    finetune = dock(viewer, "Fine-tune")
    finetune.iterations.value = STEPS
    segment.samples.value = 2
    assert click_and_wait(qtbot, segment, segment.segment_button) == "done"
    segment.review_count.value = 3
    for _ in range(3):
        segment.review_button.native.click()
    checked = viewer.layers[layer_name(NAME, "checked regions")]
    (row,) = finetune.pair_rows
    assert row.regions.value is checked, "Fine-tune takes the places Review visited as the corrected regions"
    mask = row.corrected_labels.value
    mask.paint((10, 10), mask.selected_label)  # a correction with the brush, where Review left it
    items = segment._review.items
    boxes = [
        widen_box(i.box, round(REGION_MARGIN_UM / 0.5), math.ceil(MIN_REGION_UM / 0.5), mask.data.shape) for i in items
    ]
    assert layer_boxes(checked, image) == boxes
    assert [pair.regions for pair in finetune.gather_pairs()] == [boxes]
    assert click_finetune(qtbot, finetune) == "done"
