"""The Segment widget, docked in a real napari viewer under Xvfb, with the tiny test model."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
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

from napari_cdal._widgets._layers import CONTOUR_WIDTH, PREVIEW_SUFFIX, kind_title, layer_name, preview_name
from napari_cdal._widgets._pairs import layer_boxes
from napari_cdal._widgets._review import KIND_COLOURS, KIND_WORDS, viewer_camera
from napari_cdal._widgets.segment import OTHER_FILE, SegmentWidget
from napari_cdal.engine.defaults import MIN_REGION_UM, REGION_MARGIN_UM
from napari_cdal.engine.io.regions import widen_box
from napari_cdal.layer_metadata import TAG, image_mpp

pytestmark = pytest.mark.gui

PLUGIN = "napari-cdal"
NAME = "blobs"
MODEL = "tiny"
KINDS = ("mask", "steps", "estimates", "attention", "uncertainty")
SCALE, TRANSLATE = (0.5, 0.5), (10.0, 20.0)
TIMEOUT_MS = 120_000
ATTENTION_MAP = "channel_mean"
"""The tiny model's attention_display (tests/data): cDAL's channel mean of D's features."""


def result_name(kind: str) -> str:
    """A result layer's name: after its kind (the attention's with the map it shows), the image and the model."""
    return layer_name(NAME, kind_title(kind, ATTENTION_MAP), MODEL)


def running_name(kind: str) -> str:
    """The name of a run's layer of `kind` while the run goes."""
    return preview_name(NAME, kind_title(kind, ATTENTION_MAP), MODEL)


def dock(viewer) -> SegmentWidget:
    """Dock the widget the way napari's Plugins menu does (through the manifest)."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    return widget


def add_blobs(viewer, size: int = 128, name: str = NAME):
    """A synthetic H&E-like tile at the tiny model's 0.5 µm/px, placed off the origin."""
    return viewer.add_image(blob_tile(3, size).image, name=name, scale=SCALE, translate=TRANSLATE, units=("µm", "µm"))


def use_model(widget: SegmentWidget, path: Path) -> None:
    widget.model.value = OTHER_FILE
    widget.model_file.value = path


def click_segment(qtbot, widget: SegmentWidget, timeout: int = TIMEOUT_MS) -> str:
    """Click Segment like a user and wait for the run to end; return its outcome."""
    return click_and_wait(qtbot, widget, widget.segment_button, timeout)


def result_layers(viewer) -> list:
    return [layer for layer in viewer.layers if TAG in layer.metadata]


@pytest.fixture()
def errors(monkeypatch) -> list[str]:
    """Messages the widget sends to napari's error notifications."""
    shown: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda message: shown.append(str(message)))
    return shown


@pytest.fixture()
def viewer_widget(make_napari_viewer, tiny_model_file):
    viewer = make_napari_viewer()
    add_blobs(viewer)
    widget = dock(viewer)
    use_model(widget, tiny_model_file)
    widget.samples.value = 2  # the tiny model's default is one sample, which has no uncertainty layer
    return viewer, widget


# ----------------------------------------------------------------------------- one click, five layers


def test_segment_gives_five_layers_on_the_image_grid(qtbot, viewer_widget) -> None:
    viewer, widget = viewer_widget
    assert widget.mpp.value == pytest.approx(0.5)
    slide_only = (widget.slide_output, widget.tissue_only, widget.slide_button)
    assert not any(field.native.isVisibleTo(widget.native) for field in slide_only), "a tile is no slide"
    assert widget.mpp.native.isVisibleTo(widget.native) and widget.contours.native.isVisibleTo(widget.native)
    assert click_segment(qtbot, widget) == "done"
    names = [layer.name for layer in viewer.layers]
    assert names == [
        NAME,
        result_name("steps"),
        result_name("estimates"),
        result_name("attention"),
        result_name("uncertainty"),
        result_name("mask"),
    ]
    mask, steps, estimates, attention, uncertainty = (viewer.layers[result_name(kind)] for kind in KINDS)
    assert type(mask).__name__ == "Labels" and mask.data.shape == (128, 128) and mask.data.dtype == np.uint32
    assert steps.data.shape == (5, 128, 128), "the chain: x_T, then the x_t of each of the 4 steps"
    assert estimates.data.shape == attention.data.shape == (4, 128, 128)
    assert steps.data.dtype == estimates.data.dtype == attention.data.dtype == uncertainty.data.dtype == np.float32
    assert uncertainty.data.shape == (128, 128)
    for layer in (mask, uncertainty):
        assert tuple(layer.scale) == SCALE and tuple(layer.translate) == TRANSLATE
    assert tuple(steps.scale) == (1.0, *SCALE) and tuple(steps.translate) == (0.0, *TRANSLATE)
    for layer in (estimates, attention):
        assert tuple(layer.scale) == (1.0, *SCALE) and tuple(layer.translate) == (1.0, *TRANSLATE)
    assert attention.colormap.name == "napari-cdal attention" and attention.blending == "translucent"
    assert attention.name == f"attention: channel mean · {NAME} · {MODEL}", "the name says which map it shows"
    assert steps.axis_labels[0] == estimates.axis_labels[0] == attention.axis_labels[0] == "step"
    assert not steps.visible and not estimates.visible
    for layer in (steps, estimates, attention):
        assert 0.0 <= layer.data.min() and layer.data.max() <= 1.0
    noise = steps.data[0]
    assert abs(float(noise.mean()) - 0.5) < 0.02 and float(noise.std()) > 0.2, "x_T: the seed's noise"
    assert np.array_equal(steps.data[-1], estimates.data[-1]), "x_0 is the last step's x̂0"
    assert mask.contour == CONTOUR_WIDTH
    n_nuclei = int(mask.data.max())
    assert n_nuclei > 5 and np.array_equal(np.unique(mask.data), np.arange(n_nuclei + 1))
    assert widget.status.value.startswith(f"{n_nuclei} nuclei, mean area ")
    assert "µm²" in widget.status.value and widget.last_seconds > 0
    assert widget.segment_button.enabled and not widget.cancel_button.enabled
    assert widget.image.choices == (viewer.layers[NAME],), "result layers are not offered as inputs"


def one_event_at_a_time(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the engine wait after each event until the returned event is set (once it is handled).

    Waiting keeps each event apart: one the worker has already queued is never handled inside the
    handler of the one before, whatever that handler does.
    Ticks are not waited on: the widget lets them pass unhandled.
    """
    import napari_cdal.engine.segment.image as engine_segment
    from napari_cdal.engine.events import TICK

    handled = threading.Event()
    real = engine_segment.segment_image

    def handshake(*args, **kwargs):
        for index, event in enumerate(real(*args, **kwargs)):
            handled.clear()
            yield event
            if event.stage != TICK and not handled.wait(TIMEOUT_MS / 1000):
                raise TimeoutError(f"event {index} ({event.stage}) was not handled in time")

    monkeypatch.setattr(engine_segment, "segment_image", handshake)
    return handled


def answered_inside_passes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Inside each pass of G (in the worker, mid-computation), ask the GUI thread's event loop to answer a signal
    and wait for the answer; the returned list says, per pass, whether the GUI thread answered it."""
    from qtpy.QtCore import QObject, Signal, Slot

    from napari_cdal.engine.method.networks import Generator

    class Answerer(QObject):  # made here, in the GUI thread: a signal from the worker is queued to its event loop
        ping = Signal()

        def __init__(self) -> None:
            super().__init__()
            self.answered = threading.Event()
            self.ping.connect(self.answer)

        @Slot()
        def answer(self) -> None:
            if threading.current_thread() is threading.main_thread():
                self.answered.set()

    answerer = Answerer()
    answers: list[bool] = []
    real_forward = Generator.forward

    def asking(self, *args):
        answerer.answered.clear()
        answerer.ping.emit()
        answers.append(answerer.answered.wait(TIMEOUT_MS / 1000))
        return real_forward(self, *args)

    monkeypatch.setattr(Generator, "forward", asking)  # which keeps the answerer alive as long as the patch
    return answers


def test_progress_moves_per_step_and_tile_while_the_ui_keeps_running(
    qtbot, monkeypatch, make_napari_viewer, tiny_model_file
) -> None:
    from napari.utils import progress as napari_progress

    from napari_cdal._widgets._worker import RunProgress

    handled = one_event_at_a_time(monkeypatch)
    napari_bars: list[str] = []  # napari's progress turns a spinner in its status bar, redrawing the window all run
    napari_init = napari_progress.__init__

    def counted_init(self, *args, **kwargs) -> None:
        napari_bars.append(str(kwargs.get("desc", "")))
        napari_init(self, *args, **kwargs)

    monkeypatch.setattr(napari_progress, "__init__", counted_init)

    viewer = make_napari_viewer()
    add_blobs(viewer, size=600)  # 600 px at the model's 0.5 µm/px: 2 x 2 tiles of 512
    widget = dock(viewer)
    use_model(widget, tiny_model_file)
    seen: list[tuple[int, int]] = []
    drawn: list[int] = []  # steps of the preview's steps layer with something in them, at each event
    original_update = RunProgress.update

    def spy(self, n: int = 1) -> None:
        original_update(self, n)
        seen.append((self.n, self.total))
        running = viewer.layers[running_name("steps")].data  # the chain: x_T and a plane per step
        drawn.append(int(running.any(axis=(1, 2)).sum()))
        handled.set()

    monkeypatch.setattr(RunProgress, "update", spy)
    previews = []
    viewer.layers.events.inserted.connect(
        lambda event: previews.append((event.value, event.value.name)) if PREVIEW_SUFFIX in event.value.name else None
    )
    answers = answered_inside_passes(monkeypatch)
    assert click_segment(qtbot, widget) == "done"
    assert seen == [(i, 16) for i in range(1, 17)]  # 4 tiles x 4 steps
    assert napari_bars == [], "the widget's own bar, not napari's"
    assert widget.progress_bar.value == 0 and widget.progress_bar.native.format() == "", "empty again after the run"
    assert len(answers) >= 16 and all(answers), "the event loop must keep running while the worker computes"
    kinds = ("steps", "estimates", "attention", "mask")  # one sample: no uncertainty
    assert [name for _, name in previews] == [running_name(kind) for kind in kinds]
    assert drawn[0] == 2 and drawn[-1] == 5 and drawn == sorted(drawn), "x_T, then every step drawn live, in order"
    # the run's layers became the result layers: nothing added at the end, nothing left running
    assert [layer for layer, _ in previews] == [viewer.layers[result_name(kind)] for kind in kinds]
    assert [layer.name for layer in viewer.layers] == [NAME, *(result_name(kind) for kind in kinds)]
    assert viewer.layers[result_name("mask")].visible and viewer.layers[result_name("mask")].data.max() > 0


def gate_engine(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold the engine before its first event until `start` is set, and after it until `resume` is set."""
    import napari_cdal.engine.segment.image as engine_segment
    from napari_cdal.engine.events import TICK

    start, resume = threading.Event(), threading.Event()
    real = engine_segment.segment_image

    def gated(*args, **kwargs):
        start.wait(TIMEOUT_MS / 1000)
        held = False
        for event in real(*args, **kwargs):
            yield event
            if not held and event.stage != TICK:
                held = True
                resume.wait(TIMEOUT_MS / 1000)

    monkeypatch.setattr(engine_segment, "segment_image", gated)
    return start, resume


def test_the_image_stays_in_view_while_segmenting(qtbot, viewer_widget, monkeypatch) -> None:
    viewer, widget = viewer_widget
    image = viewer.layers[NAME]
    for run in ("first", "again"):  # new preview layers, then the earlier run's layers lent to the preview
        start, resume = gate_engine(monkeypatch)
        outcomes: list[str] = []
        widget.run_finished.connect(outcomes.append)
        widget.segment_button.native.click()
        running = 5 if run == "first" else 3  # the mask and uncertainty of a first run wait in places of their own
        qtbot.waitUntil(lambda: widget.run.preview.started, timeout=TIMEOUT_MS)  # nothing more is added now
        assert sum(PREVIEW_SUFFIX in layer.name for layer in viewer.layers) == running
        covering = [layer.name for layer in viewer.layers if layer is not image and layer.visible]
        assert covering == ([] if run == "first" else [result_name("mask")]), "nothing empty over the image"
        start.set()
        shown = [viewer.layers[running_name(kind)] for kind in ("steps", "attention")]
        qtbot.waitUntil(lambda shown=shown: all(layer.visible for layer in shown), timeout=TIMEOUT_MS)
        for layer in shown:  # an overlay, clear where its map is 0
            assert layer.blending == "translucent" and layer.colormap.map(np.array([0.0]))[0, 3] == 0, layer.name
            assert layer.data.any(), f"{layer.name} is shown once it has a plane"
        assert not viewer.layers[running_name("estimates")].visible, "x̂0 fills in hidden"
        assert image.visible and image.opacity == 1 and viewer.layers.index(image) == 0
        resume.set()
        qtbot.waitUntil(lambda outcomes=outcomes: bool(outcomes), timeout=TIMEOUT_MS)
        assert outcomes == ["done"]
        monkeypatch.undo()


def relative_luminance(rgb) -> float:
    """WCAG's relative luminance of an sRGB colour on 0..1."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


HAEMATOXYLIN, EOSIN = (0.33, 0.22, 0.55), (0.92, 0.62, 0.80)
"""The purple of stained nuclei and the pink of stroma on an H&E tile."""


def hue_distance(rgb, other) -> float:
    """Degrees between two colours' hues."""
    import colorsys

    turn = abs(colorsys.rgb_to_hsv(*rgb)[0] - colorsys.rgb_to_hsv(*other)[0]) % 1
    return 360 * min(turn, 1 - turn)


def test_the_mask_and_the_maps_take_colours_that_stand_out_on_he(qtbot, viewer_widget) -> None:
    viewer, widget = viewer_widget
    assert click_segment(qtbot, widget) == "done"
    mask = viewer.layers[result_name("mask")]
    colours = np.asarray(mask.colormap.map(np.arange(1, 200)))[:, :3]  # what ids 1..199 are painted in
    background = mask.colormap.map(np.array([0]))[0]
    purple = relative_luminance(HAEMATOXYLIN)
    assert background[3] == 0
    for rgb in colours:  # none of H&E's dark blue, purple or brown
        assert (relative_luminance(rgb) + 0.05) / (purple + 0.05) >= 4, rgb
        assert min(hue_distance(rgb, HAEMATOXYLIN), hue_distance(rgb, EOSIN)) >= 60, rgb
    assert len({tuple(np.round(rgb, 3)) for rgb in colours[:24]}) == 24, "neighbouring ids differ"
    for kind in ("attention", "uncertainty"):
        colormap = viewer.layers[result_name(kind)].colormap
        top, bottom = colormap.map(np.array([1.0]))[0], colormap.map(np.array([0.0]))[0]
        assert bottom[3] == 0 and top[3] == 1, f"{kind}: clear at 0, solid at its top"
        assert (relative_luminance(top[:3]) + 0.05) / (purple + 0.05) >= 4, kind
        assert min(hue_distance(top[:3], HAEMATOXYLIN), hue_distance(top[:3], EOSIN)) >= 75, kind
    yellow = viewer.layers[result_name("uncertainty")].colormap.map(np.array([1.0]))[0, :3]
    others = [*colours[:24], *KIND_COLOURS.values()]  # every label hue, the review's marks
    assert min(hue_distance(rgb, yellow) for rgb in others) >= 25, "yellow is the uncertainty's alone"


# ----------------------------------------------------------------------------- re-runs and edits


def test_rerun_updates_in_place_but_keeps_an_edited_mask(qtbot, viewer_widget) -> None:
    viewer, widget = viewer_widget
    assert click_segment(qtbot, widget) == "done"
    first = {kind: viewer.layers[result_name(kind)] for kind in KINDS}
    first_labels = first["mask"].data.copy()
    assert click_segment(qtbot, widget) == "done"
    assert len(viewer.layers) == 6
    assert all(viewer.layers[result_name(kind)] is first[kind] for kind in KINDS)
    assert np.array_equal(first["mask"].data, first_labels), "the same seed repeats the mask"

    first["mask"].paint((5, 5), int(first_labels.max()) + 1)
    edited = first["mask"].data.copy()
    widget.seed.value = 1
    assert click_segment(qtbot, widget) == "done"
    assert [layer.name for layer in viewer.layers][-1] == result_name("mask") + " [1]"
    assert np.array_equal(first["mask"].data, edited), "an edited mask is never overwritten"
    assert all(
        viewer.layers[result_name(kind)] is first[kind] for kind in ("steps", "estimates", "attention", "uncertainty")
    )
    second_mask = viewer.layers[result_name("mask") + " [1]"]
    assert tuple(second_mask.scale) == SCALE and second_mask.data.dtype == np.uint32

    assert click_segment(qtbot, widget) == "done"
    assert len(viewer.layers) == 7 and viewer.layers[-1] is second_mask


def test_several_samples_give_a_nonzero_uncertainty(qtbot, viewer_widget) -> None:
    viewer, widget = viewer_widget
    widget.samples.value = 3
    assert click_segment(qtbot, widget) == "done"
    uncertainty = viewer.layers[result_name("uncertainty")]
    assert uncertainty.data.max() > 0 and uncertainty.contrast_limits[1] == uncertainty.data.max()
    # the layer shows doubt, not borders: each nucleus of the mask is painted with one value, its mean
    mask = viewer.layers[result_name("mask")].data
    for nucleus in np.unique(mask[mask > 0])[:20]:
        assert np.ptp(uncertainty.data[mask == nucleus]) == 0


def test_the_contour_checkbox_switches_the_mask_display(qtbot, viewer_widget) -> None:
    viewer, widget = viewer_widget
    widget.contours.value = False
    assert click_segment(qtbot, widget) == "done"
    mask = viewer.layers[result_name("mask")]
    assert mask.contour == 0
    widget.contours.value = True
    assert mask.contour == CONTOUR_WIDTH


# ----------------------------------------------------------------------------- cancel


@pytest.fixture()
def paused_engine(monkeypatch) -> threading.Event:
    """Hold the engine after its first step until the returned event is set (a deterministic 'mid-run')."""
    import napari_cdal.engine.segment.image as engine_segment

    return pause_after_first_event(monkeypatch, engine_segment, "segment_image")


def cancel_mid_run(qtbot, viewer, widget: SegmentWidget, resume: threading.Event) -> str:
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    widget.segment_button.native.click()
    qtbot.waitUntil(lambda: any(PREVIEW_SUFFIX in layer.name for layer in viewer.layers), timeout=TIMEOUT_MS)
    assert widget.running and not widget.segment_button.enabled and widget.cancel_button.enabled
    widget.cancel_button.native.click()
    resume.set()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=TIMEOUT_MS)
    return outcomes[0]


def test_cancel_on_a_first_run_leaves_only_the_image(qtbot, viewer_widget, paused_engine) -> None:
    viewer, widget = viewer_widget
    assert cancel_mid_run(qtbot, viewer, widget, paused_engine) == "cancelled"
    assert [layer.name for layer in viewer.layers] == [NAME]
    assert widget.status.value.startswith("Cancelled")
    assert widget.segment_button.enabled and not widget.cancel_button.enabled and not widget.running


def test_cancel_takes_effect_inside_a_network_pass_of_a_step(qtbot, viewer_widget, monkeypatch) -> None:
    # Cancel while the engine is inside G's pass of the second reverse step: the cancel token stops
    # it at the next block of that pass, and no network pass starts after the Cancel.
    import napari_cdal.engine.segment.image as engine_segment
    from napari_cdal.engine.events import RunCancelled

    viewer, widget = viewer_widget
    widget.sampling_steps.value = 4
    calls = count_network_passes(monkeypatch)
    hold = hold_in_block(monkeypatch, engine_segment, "segment_image", "step", calls)
    outcomes = cancel_at_hold(qtbot, widget, widget.segment_button, hold, TIMEOUT_MS)
    assert outcomes == ["cancelled"] and [layer.name for layer in viewer.layers] == [NAME]
    assert hold.stopped_by is RunCancelled and hold.last_event.stage == "step"
    assert hold.last_event.index == 1 and hold.last_event.total == 4  # one step done of four: inside the second
    assert hold.calls_at_hold > 0 and len(calls) == hold.calls_at_hold and hold.events_after_hold == 0


def test_cancel_leaves_the_previous_result_as_it_was(qtbot, viewer_widget, paused_engine) -> None:
    viewer, widget = viewer_widget
    paused_engine.set()
    assert click_segment(qtbot, widget) == "done"
    before = [
        (layer.name, layer, np.array(layer.data), layer.visible, np.array(layer.translate)) for layer in viewer.layers
    ]
    paused_engine.clear()
    widget.seed.value = 7
    assert cancel_mid_run(qtbot, viewer, widget, paused_engine) == "cancelled"
    assert [layer.name for layer in viewer.layers] == [name for name, *_ in before]
    for name, layer, data, visible, translate in before:
        assert viewer.layers[name] is layer and np.array_equal(layer.data, data), name
        assert layer.visible == visible and np.array_equal(layer.translate, translate), name


def test_a_first_run_adds_its_layers_one_per_turn_at_the_start_and_fills_them_at_the_end(
    qtbot, viewer_widget, paused_engine, monkeypatch
) -> None:
    from napari_cdal._widgets._preview import LivePreview

    viewer, widget = viewer_widget
    widget.samples.value = 2
    calls: list[bool] = []  # each call that adds the preview's layers: whether it came within the click
    clicking = [False]
    real_add = LivePreview._add_waiting

    def counted(self) -> None:  # the click calls it once, then the preview's zero-interval timer, once per turn
        calls.append(clicking[0])
        real_add(self)

    monkeypatch.setattr(LivePreview, "_add_waiting", counted)
    added: list[tuple[str, int]] = []  # each layer added and the call that added it
    removed: list[str] = []
    viewer.layers.events.inserted.connect(lambda event: added.append((event.value.name, len(calls))))
    viewer.layers.events.removed.connect(lambda event: removed.append(event.value.name))
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    clicking[0] = True
    widget.segment_button.native.click()
    clicking[0] = False
    kinds = ("steps", "estimates", "attention", "uncertainty", "mask")
    qtbot.waitUntil(lambda: len(added) == 5, timeout=TIMEOUT_MS)
    assert [name for name, _ in added] == [running_name(kind) for kind in kinds]
    assert [call for _, call in added] == [1, 2, 3, 4, 5], "each layer added by a call of its own"
    assert calls[:5] == [True, False, False, False, False], "the steps stack with the click, then one per turn"
    mask = viewer.layers[running_name("mask")]
    assert not mask.visible and not mask.data.any(), "the new mask's place waits hidden and empty"
    assert viewer.layers[running_name("steps")].visible, "the chain is what the preview shows"
    assert not viewer.layers[running_name("estimates")].visible, "x̂0 fills in hidden"
    paused_engine.set()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=TIMEOUT_MS)
    assert outcomes == ["done"] and len(added) == 5 and removed == []
    assert [layer.name for layer in viewer.layers] == [NAME, *(result_name(kind) for kind in kinds)]
    assert viewer.layers[result_name("mask")] is mask and mask.visible and mask.data.max() > 0
    uncertainty = viewer.layers[result_name("uncertainty")]
    assert not uncertainty.visible and uncertainty.data.any()


def test_a_rerun_previews_in_the_earlier_maps_and_adds_or_removes_no_layer(qtbot, viewer_widget, paused_engine) -> None:
    # each layer added costs the canvas a new visual and each removed one a garbage collection, so
    # a rerun of the same model borrows its steps, estimates and attention layers for the preview
    viewer, widget = viewer_widget
    paused_engine.set()
    assert click_segment(qtbot, widget) == "done"
    steps, attention = viewer.layers[result_name("steps")], viewer.layers[result_name("attention")]
    estimates = viewer.layers[result_name("estimates")]
    attention.visible = True  # the user looks at the attention; the steps and estimates stay hidden
    first_steps = steps.data.copy()
    changes: list[str] = []
    viewer.layers.events.inserted.connect(lambda event: changes.append(f"added {event.value.name}"))
    viewer.layers.events.removed.connect(lambda event: changes.append(f"removed {event.value.name}"))
    paused_engine.clear()
    widget.seed.value = 7
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    widget.segment_button.native.click()
    # the attention is lent after the estimates; the steps are shown once their first plane has come
    qtbot.waitUntil(lambda: PREVIEW_SUFFIX in attention.name and steps.visible, timeout=TIMEOUT_MS)
    assert attention.name == running_name("attention")
    assert estimates.name == running_name("estimates") and not estimates.visible, "as the user left it"
    assert not steps.data[2:].any(), "the preview starts empty and has drawn x_T and the first step at most"
    paused_engine.set()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=TIMEOUT_MS)
    assert outcomes == ["done"] and changes == []
    assert viewer.layers[result_name("steps")] is steps and viewer.layers[result_name("attention")] is attention
    assert viewer.layers[result_name("estimates")] is estimates
    assert not steps.visible and not estimates.visible and attention.visible, "each map's visibility is the user's"
    assert steps.data.shape == first_steps.shape and not np.array_equal(steps.data, first_steps), "the new seed's steps"


def test_deleting_the_widget_mid_run_stops_the_worker_and_the_preview(
    qtbot, make_napari_viewer, tiny_model_file, paused_engine
) -> None:
    viewer = make_napari_viewer()
    add_blobs(viewer)
    dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    use_model(widget, tiny_model_file)
    widget.segment_button.native.click()
    qtbot.waitUntil(lambda: len(viewer.layers) > 1, timeout=TIMEOUT_MS)
    worker = widget.run.worker
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        viewer.window.remove_dock_widget(dock_widget)
        widget.native.deleteLater()  # what closing the window does to its docked widgets
        qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=TIMEOUT_MS)
        paused_engine.set()
    assert [layer.name for layer in viewer.layers] == [NAME]

    import gc

    from napari_cdal.engine.events import _CancelCheck

    def no_cancel_check_left() -> bool:  # on the cached model, with its token set, one stopped later runs
        return not [check for check in gc.get_objects() if isinstance(check, _CancelCheck) and check.on]

    qtbot.waitUntil(no_cancel_check_left, timeout=TIMEOUT_MS)


# ----------------------------------------------------------------------------- inputs and errors


def test_grayscale_image_with_an_unset_scale_uses_0_25_and_an_edited_mpp(
    qtbot, make_napari_viewer, tiny_model_file
) -> None:
    viewer = make_napari_viewer()
    viewer.add_image(blob_tile(4, 96).image.mean(axis=-1).astype(np.uint8), name="gray")
    widget = dock(viewer)
    use_model(widget, tiny_model_file)
    assert widget.mpp.value == pytest.approx(0.25)
    widget.mpp.value = 0.5
    assert click_segment(qtbot, widget) == "done"
    mask = viewer.layers[layer_name("gray", "mask", MODEL)]
    assert mask.data.shape == (96, 96) and tuple(mask.scale) == (1.0, 1.0)
    assert viewer.layers[layer_name("gray", "steps", MODEL)].data.shape == (5, 96, 96)


def test_mpp_comes_from_the_layer_scale_in_its_unit(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    in_mm = viewer.add_image(np.zeros((8, 8), np.uint8), scale=(0.0005, 0.0005), units=("mm", "mm"))
    bare = viewer.add_image(np.zeros((8, 8), np.uint8), scale=(0.4, 0.4))
    unset = viewer.add_image(np.zeros((8, 8), np.uint8))
    assert image_mpp(in_mm) == pytest.approx(0.5)
    assert image_mpp(bare) == pytest.approx(0.4)
    assert image_mpp(unset) == pytest.approx(0.25)
    widget = dock(viewer)
    widget.image.value = in_mm
    assert widget.mpp.value == pytest.approx(0.5)


def test_a_layer_scale_outside_the_mpp_range_is_said_not_clamped(make_napari_viewer) -> None:
    from napari_cdal.engine.checks import MPP_RANGE

    viewer = make_napari_viewer()
    in_nm_as_um = viewer.add_image(np.zeros((8, 8), np.uint8), name="odd", scale=(250.0, 250.0))
    widget = dock(viewer)
    widget.image.value = in_nm_as_um
    assert (widget.mpp.min, widget.mpp.max) == MPP_RANGE
    assert widget.mpp.value == pytest.approx(0.25), "the default, not the nearest bound"
    assert "odd's scale says 250 µm/px, outside 0.05-5" in widget.status.value


@pytest.mark.parametrize("kind", ["rgba", "stack"])
def test_bad_image_layers_are_refused_with_a_notification(
    qtbot, make_napari_viewer, tiny_model_file, errors, kind
) -> None:
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    if kind == "rgba":
        layer = viewer.add_image(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8), rgb=True, name="bad")
        expected = "RGBA"
    else:
        layer = viewer.add_image(rng.integers(0, 255, (5, 32, 32), dtype=np.uint8), name="bad")
        expected = "stack"
    widget = dock(viewer)
    use_model(widget, tiny_model_file)
    widget.image.value = layer
    widget.segment_button.native.click()
    assert len(errors) == 1 and expected in errors[0] and "'bad'" in errors[0]
    assert not widget.running and len(viewer.layers) == 1


def test_missing_and_corrupt_model_files_are_reported(qtbot, viewer_widget, errors, tmp_path) -> None:
    viewer, widget = viewer_widget
    widget.model_file.value = tmp_path / "nowhere.safetensors"
    widget.segment_button.native.click()
    assert "model file not found" in errors[-1] and not widget.running
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    widget.model_file.value = corrupt
    assert click_segment(qtbot, widget) == "failed"
    assert "corrupt.safetensors" in errors[-1]
    assert [layer.name for layer in viewer.layers] == [NAME]
    assert widget.status.value.startswith("Failed")


def test_without_a_bundled_model_the_widget_says_what_to_do(make_napari_viewer, monkeypatch, tmp_path, errors) -> None:
    from napari_cdal import catalog

    monkeypatch.setattr(catalog, "bundled_model_file", lambda: tmp_path / "absent.safetensors")
    monkeypatch.setenv("NAPARI_CDAL_MODEL_DIR", str(tmp_path / "empty"))
    viewer = make_napari_viewer()
    add_blobs(viewer)
    widget = dock(viewer)
    assert widget.model.choices == (OTHER_FILE,)
    assert "No bundled model" in widget.status.value and str(tmp_path / "empty") in widget.status.value
    widget.segment_button.native.click()
    assert "no model chosen" in errors[-1] and len(viewer.layers) == 1


def test_models_in_the_user_folder_are_offered(
    qtbot, make_napari_viewer, monkeypatch, tmp_path, tiny_model_file
) -> None:
    shutil.copy(tiny_model_file, tmp_path / "my-finetuned.safetensors")
    monkeypatch.setenv("NAPARI_CDAL_MODEL_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    add_blobs(viewer)
    widget = dock(viewer)
    mine = str(tmp_path / "my-finetuned.safetensors")
    assert mine in widget.model.choices and widget.model.choices[-1] == OTHER_FILE
    assert widget.model.get_choice("my-finetuned") == mine and widget.model.get_choice("other file…") == OTHER_FILE
    widget.model.value = str(tmp_path / "my-finetuned.safetensors")
    assert widget.sampling_steps.max == 4
    assert click_segment(qtbot, widget) == "done"
    assert layer_name(NAME, "mask", "my-finetuned") in viewer.layers


def test_device_choices_list_cuda_only_when_there_is_one(make_napari_viewer) -> None:
    import torch

    widget = dock(make_napari_viewer())
    values = list(widget.device.choices)
    assert values[:2] == ["auto", "cpu"]
    assert ("cuda" in values) == torch.cuda.is_available()


# ----------------------------------------------------------------------------- sample, reader, view


def test_open_sample_gives_the_monuseg_tile_at_0_25_um(make_napari_viewer) -> None:
    from napari_cdal.sample_data import LICENCE_LINE, SAMPLE_NAME

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "monuseg")
    (layer,) = viewer.layers
    assert layer.name == SAMPLE_NAME and layer.rgb and layer.data.shape == (1000, 1000, 3)
    assert tuple(layer.scale) == (0.25, 0.25) and layer.metadata["licence"] == LICENCE_LINE
    widget = dock(viewer)
    assert widget.image.value is layer and widget.mpp.value == pytest.approx(0.25)


def test_an_aperio_xml_opens_as_labels(make_napari_viewer, tmp_path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "tile.tif", np.zeros((40, 50, 3), np.uint8))
    (tmp_path / "tile.xml").write_text(
        '<Annotations MicronsPerPixel="0.25"><Annotation><Regions><Region Id="1"><Vertices>'
        '<Vertex X="5" Y="5"/><Vertex X="15" Y="5"/><Vertex X="15" Y="15"/><Vertex X="5" Y="15"/>'
        "</Vertices></Region></Regions></Annotation></Annotations>"
    )
    viewer = make_napari_viewer()
    (layer,) = viewer.open(tmp_path / "tile.xml", plugin=PLUGIN)
    assert type(layer).__name__ == "Labels" and layer.data.shape == (40, 50) and layer.data.max() == 1


def test_view_command_opens_the_sample_with_the_widget_docked(make_napari_viewer, monkeypatch) -> None:
    import napari

    from napari_cdal.cli import main

    made = []
    monkeypatch.setattr(napari, "Viewer", lambda: made.append(make_napari_viewer()) or made[-1])
    monkeypatch.setattr(napari, "run", lambda: None)
    assert main(["view", "--sample"]) == 0
    (viewer,) = made
    assert [layer.name for layer in viewer.layers] == ["TCGA-B0-5698-01Z-00-DX1"]
    assert any(isinstance(w, SegmentWidget) for w in viewer.window.dock_widgets.values())


def test_view_command_reports_a_missing_image(capsys) -> None:
    from napari_cdal.cli import main

    assert main(["view", "no-such-tile.tif"]) == 1
    assert "image file not found: no-such-tile.tif" in capsys.readouterr().err


def test_view_command_without_a_display_says_so(capsys, monkeypatch) -> None:
    from napari_cdal.cli import main

    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["view", "--sample"]) == 1
    assert "no display" in capsys.readouterr().err


def test_plugin_modules_import_without_torch() -> None:
    code = (
        "import sys, napari_cdal._widgets.segment, napari_cdal._reader, napari_cdal._writer, "
        "napari_cdal.catalog; sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----------------------------------------------------------------------------- K = 1, features, review


def test_one_sample_adds_no_uncertainty_layer_and_drops_a_stale_one(qtbot, viewer_widget) -> None:
    viewer, widget = viewer_widget
    assert click_segment(qtbot, widget) == "done"
    assert result_name("uncertainty") in [layer.name for layer in viewer.layers]
    widget.samples.value = 1
    assert click_segment(qtbot, widget) == "done"
    names = [layer.name for layer in viewer.layers]
    assert result_name("uncertainty") not in names and result_name("mask") in names
    features = viewer.layers[result_name("mask")].features
    assert features["mean_uncertainty"].isna().all()


def test_mask_carries_per_nucleus_features(qtbot, viewer_widget) -> None:
    viewer, widget = viewer_widget
    assert click_segment(qtbot, widget) == "done"
    mask = viewer.layers[result_name("mask")]
    uncertainty = viewer.layers[result_name("uncertainty")].data
    features = mask.features
    n = int(mask.data.max())
    assert list(features["index"]) == list(range(1, n + 1))
    for nucleus in (1, n):
        row = features[features["index"] == nucleus].iloc[0]
        inside = mask.data == nucleus
        assert row["area_um2"] == pytest.approx(inside.sum() * 0.5 * 0.5)
        assert row["mean_uncertainty"] == pytest.approx(float(uncertainty[inside].mean()), rel=1e-5)
        assert 0.0 <= row["mean_attention"] <= 1.0


def expected_queue(widget: SegmentWidget) -> list:
    """The review queue the engine makes of the widget's last result."""
    from napari_cdal.engine.segment.review import review_items

    result = widget.last_result
    return review_items(result.labels, result.probability, result.uncertainty, float(widget.mpp.value))


def test_review_steps_through_the_likeliest_errors_and_marks_them(qtbot, viewer_widget) -> None:
    viewer, widget = viewer_widget
    assert not widget.review_button.enabled, "nothing to review before a result"
    assert widget.review_button.text == "Review next likely error"
    assert click_segment(qtbot, widget) == "done"
    mask = viewer.layers[result_name("mask")]
    queue = expected_queue(widget)[:3]
    assert len(queue) == 3
    widget.review_count.value = 3
    assert widget.review_button.enabled
    assert result_name("review") not in [layer.name for layer in viewer.layers], "no marks before the first click"
    viewer.layers.selection.active = viewer.layers[NAME]
    for click in range(4):
        widget.review_button.native.click()
        item = queue[click % 3]
        expected = np.array(TRANSLATE) + np.array(SCALE) * (item.y, item.x)
        np.testing.assert_allclose(viewer_camera(viewer).center[-2:], expected, atol=1e-6)
        assert viewer.layers.selection.active is mask
        wanted = int(mask.data.max()) + 1 if item.kind == "miss" else item.id
        assert mask.selected_label == wanted
        assert widget.status.value.startswith(f"Review {click % 3 + 1} of 3: ")
        assert f"score {item.score:.2f}" in widget.status.value and KIND_WORDS[item.kind] in widget.status.value
        marks = viewer.layers[result_name("review")]
        np.testing.assert_allclose(marks.data, [[i.y, i.x] for i in queue])
        assert tuple(marks.scale) == SCALE and tuple(marks.translate) == TRANSLATE
        assert tuple(marks.units) == tuple(mask.units), "the marks share the mask's units (napari warns otherwise)"
        widths = np.asarray(marks.border_width)
        assert widths[click % 3] == widths.max() > np.delete(widths, click % 3).max(), "the current item stands out"
        np.testing.assert_allclose(np.asarray(marks.border_color)[:, :3], [KIND_COLOURS[i.kind] for i in queue])
    assert viewer_camera(viewer).zoom >= 3.0 / SCALE[0] - 1e-9
    assert [layer.name for layer in viewer.layers].count(result_name("review")) == 1
    # each place visited is a checked region, once, widened as `finetune --regions` widens a review CSV's boxes
    checked = viewer.layers[layer_name(NAME, "checked regions")]
    mpp = image_mpp(mask)
    widened = [
        widen_box(i.box, round(REGION_MARGIN_UM / mpp), math.ceil(MIN_REGION_UM / mpp), mask.data.shape) for i in queue
    ]
    assert layer_boxes(checked, viewer.layers[NAME]) == widened and checked.shape_type == ["rectangle"] * 3
    assert viewer.layers.selection.active is mask, "the brush stays ready on the mask"
    widget.seed.value = 5  # a rerun's queue replaces the marks, none current
    assert click_segment(qtbot, widget) == "done"
    marks = viewer.layers[result_name("review")]
    np.testing.assert_allclose(marks.data, [[i.y, i.x] for i in expected_queue(widget)[:3]])
    assert np.ptp(np.asarray(marks.border_width)) == 0
    assert [layer.name for layer in viewer.layers].count(result_name("review")) == 1


def test_review_readies_a_new_id_for_a_miss_and_the_nucleus_for_a_merge(qtbot, viewer_widget, monkeypatch) -> None:
    import napari_cdal.engine.segment.review as review
    from napari_cdal.engine.segment.review import ReviewItem

    viewer, widget = viewer_widget
    real = review.review_items
    merged: list[int] = []

    def with_a_miss_and_a_merge(labels, *args, **kwargs):  # the blob tile has neither: put one of each first
        found = real(labels, *args, **kwargs)
        y, x = np.argwhere(labels == 0)[0]
        first = found[0]
        merged.append(first.id)
        miss = ReviewItem(1, "miss", 0, float(y), float(x), 20.0, 0.9, (0, 8, 0, 8))
        merge = ReviewItem(2, "merge", first.id, first.y, first.x, first.area_um2, 0.8, first.box)
        return [miss, merge, *found]

    monkeypatch.setattr(review, "review_items", with_a_miss_and_a_merge)
    assert click_segment(qtbot, widget) == "done"
    mask = viewer.layers[result_name("mask")]
    widget.review_count.value = 3
    widget.review_button.native.click()
    free = int(mask.data.max()) + 1
    assert mask.selected_label == free and viewer.layers.selection.active is mask
    assert "likely missed nucleus" in widget.status.value and f"new nucleus {free}" in widget.status.value
    mask.paint((4, 4), mask.selected_label)  # the brush now paints a new nucleus
    assert (mask.data == free).any()
    widget.review_button.native.click()
    assert mask.selected_label == merged[-1] and f"likely merge {merged[-1]}" in widget.status.value
    colours = np.asarray(viewer.layers[result_name("review")].border_color)[:2, :3]
    np.testing.assert_allclose(colours, [KIND_COLOURS["miss"], KIND_COLOURS["merge"]])


def test_the_sampling_fields_follow_the_models_config_under_its_former_key_names(tiny_model_file, tmp_path) -> None:
    from napari_cdal._widgets._segment_fields import model_steps
    from napari_cdal.engine.config import FORMER_NAMES, ModelConfig
    from napari_cdal.engine.io.checkpoint import load_checkpoint, read_metadata, save_checkpoint

    tensors, meta = load_checkpoint(tiny_model_file)
    current = {**ModelConfig.from_dict(meta["model_config"]).to_dict(), "default_samples": 3}
    current.update(diffusion_steps=4, default_sampling_steps=2)  # T = 4, sampled in 2 steps, K = 3
    former = {new: old for old, new in FORMER_NAMES["ModelConfig"].items()}  # written by an earlier version
    old_file = tmp_path / "former-keys.safetensors"
    save_checkpoint(old_file, tensors, {**meta, "model_config": {former.get(k, k): v for k, v in current.items()}})
    written = read_metadata(old_file)["model_config"]
    assert {"num_steps", "sampling_steps"} <= set(written) and "diffusion_steps" not in written
    assert model_steps(str(old_file)) == (4, 2, 3)


# ----------------------------------------------------------------------------- the user's layers, tool and status


NARROW_LIST_PX = 200
"""The width napari's layer list gives a name when its dock is narrow (the user's round-2 journey cut names there)."""


def test_layer_names_keep_the_kind_and_the_model_in_view_in_a_narrow_layer_list(
    qtbot, make_napari_viewer, tiny_model_file, tmp_path
) -> None:
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    image = add_blobs(viewer, 64, name="TCGA-B0-5698-01Z-00-DX1")
    widget = dock(viewer)
    fine_tuned = tmp_path / "tiny-ft-TCGA-B0-5698-01Z.safetensors"
    shutil.copy(tiny_model_file, fine_tuned)
    for model in (tiny_model_file, fine_tuned):
        use_model(widget, model)
        assert click_segment(qtbot, widget) == "done"
    metrics = viewer.window._qt_viewer.layers.fontMetrics()  # napari's list cuts a long name in its middle
    shown = {
        layer.name: metrics.elidedText(layer.name, Qt.TextElideMode.ElideMiddle, NARROW_LIST_PX)
        for layer in viewer.layers
        if layer is not image
    }
    assert len(set(shown.values())) == len(shown) == 8, f"every layer tells itself apart: {sorted(shown.values())}"
    for name, text in shown.items():
        kind = viewer.layers[name].metadata[TAG]["kind"]
        assert text.startswith(kind), (kind, text)
    assert all(text.endswith("tiny") or text.endswith("01Z") for text in shown.values())
    mask = viewer.layers[layer_name(image.name, "mask", fine_tuned.stem)]
    assert mask.name == f"mask · {image.name} · {fine_tuned.stem}", "the whole name: the layer list's tooltip"


def test_a_run_keeps_the_users_active_layer_and_tool(qtbot, viewer_widget) -> None:
    viewer, widget = viewer_widget
    painted = viewer.add_labels(
        np.zeros((128, 128), np.uint32), name="my corrections", scale=SCALE, translate=TRANSLATE
    )
    painted.mode = "paint"
    viewer.layers.selection.active = painted
    actives: list = []
    viewer.layers.selection.events.active.connect(lambda event: actives.append(event.value))
    assert click_segment(qtbot, widget) == "done"
    assert viewer.layers.selection.active is painted and set(viewer.layers.selection) == {painted}
    assert painted.mode == "paint", "the brush is still in the user's hand"
    assert all(layer is painted for layer in actives), f"no preview or result layer was ever made active: {actives}"
    viewer.layers.selection.clear()
    assert click_segment(qtbot, widget) == "done"
    assert viewer.layers.selection.active is None and len(viewer.layers.selection) == 0


def test_results_of_two_models_sit_side_by_side(qtbot, viewer_widget, tmp_path) -> None:
    viewer, widget = viewer_widget
    assert click_segment(qtbot, widget) == "done"
    first = viewer.layers[result_name("mask")]
    first_labels = first.data.copy()
    other = tmp_path / "other-model.safetensors"
    shutil.copy(widget.model_file.value, other)
    widget.model_file.value = other
    widget.seed.value = 5
    assert click_segment(qtbot, widget) == "done"
    second = viewer.layers[layer_name(NAME, "mask", "other-model")]
    assert second is not first and np.array_equal(first.data, first_labels), "the first model's mask is kept"
    assert second.metadata[TAG]["model"] == "other-model" and first.metadata[TAG]["model"] == MODEL
    names = {layer_name(NAME, kind_title(kind, ATTENTION_MAP), "other-model") for kind in KINDS}
    assert names <= {layer.name for layer in viewer.layers}


def test_the_status_bar_is_cleared_after_a_run_and_a_cancel(qtbot, viewer_widget, paused_engine) -> None:
    viewer, widget = viewer_widget

    def hover_preview() -> bool:  # what napari's status bar says while the mouse is over a preview layer
        previews = [layer for layer in viewer.layers if PREVIEW_SUFFIX in layer.name]
        if previews:
            viewer.status = f"{previews[0].name} [0 0 0]: 0.5"
            viewer.tooltip.text = previews[0].name
        return bool(previews)

    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    widget.segment_button.native.click()
    qtbot.waitUntil(hover_preview, timeout=TIMEOUT_MS)
    paused_engine.set()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=TIMEOUT_MS)
    assert outcomes == ["done"] and viewer.status == "Ready" and viewer.tooltip.text == ""
    paused_engine.clear()
    widget.seed.value = 3
    widget.segment_button.native.click()
    qtbot.waitUntil(hover_preview, timeout=TIMEOUT_MS)
    widget.cancel_button.native.click()
    paused_engine.set()
    qtbot.waitUntil(lambda: len(outcomes) == 2, timeout=TIMEOUT_MS)
    assert outcomes[1] == "cancelled" and PREVIEW_SUFFIX not in str(viewer.status)
    assert viewer.status == "Ready"


def test_sampling_steps_and_samples_are_kept_when_switching_model(
    make_napari_viewer, tiny_model_file, tmp_path, monkeypatch
) -> None:
    import napari_cdal._widgets.segment as segment_module

    short = tmp_path / "short.safetensors"  # a model of 2 diffusion steps
    shutil.copy(tiny_model_file, short)
    real = segment_module.model_steps
    monkeypatch.setattr(
        segment_module, "model_steps", lambda path: (2, 2, 1) if Path(path).name == short.name else real(path)
    )
    viewer = make_napari_viewer()
    add_blobs(viewer)
    widget = dock(viewer)
    use_model(widget, tiny_model_file)
    assert (widget.sampling_steps.value, widget.samples.value) == (4, 1), "untouched fields take the model's defaults"
    widget.sampling_steps.value, widget.samples.value = 3, 4
    other = tmp_path / "other.safetensors"
    shutil.copy(tiny_model_file, other)
    widget.model_file.value = other
    assert (widget.sampling_steps.value, widget.samples.value) == (3, 4)
    assert "lowered" not in widget.status.value, "no note when nothing was clamped"
    widget.model_file.value = short
    assert (widget.sampling_steps.value, widget.samples.value, widget.sampling_steps.max) == (2, 4, 2)
    assert widget.status.value == "sampling steps lowered from 3 to 2: short has 2 diffusion steps"
    tip = widget.sampling_steps.tooltip
    assert "diffusion steps T" in tip and "counts the steps done" in tip and "x_T (0)" in tip


def test_the_step_slider_counts_the_steps_done(qtbot, viewer_widget) -> None:
    # slider position and status-bar coordinate agree: 0 is the noise x_T, S the mask x_0; the
    # estimates and attention of step s lie at s
    viewer, widget = viewer_widget
    assert click_segment(qtbot, widget) == "done"
    for kind, first in (("steps", 0.0), ("estimates", 1.0), ("attention", 1.0)):
        low, high = viewer.layers[result_name(kind)].extent.world[:, 0]
        assert (low, high) == (first, 4.0), kind
    assert viewer.dims.range[0].start == pytest.approx(0.0) and viewer.dims.range[0].stop == pytest.approx(4.0)
    assert viewer.dims.range[0].step == pytest.approx(1.0)
