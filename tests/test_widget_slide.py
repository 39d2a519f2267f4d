"""Slides in napari: the reader's multiscale layer, Segment on the field of view or a rectangle, Whole slide."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tifffile
from conftest import (
    blob_tile,
    cancel_at_hold,
    click_and_wait,
    count_network_passes,
    hold_in_block,
    new_napari_session,
    open_with_file_menu,
    pause_after_first_event,
)
from test_widget_segment import TIMEOUT_MS, click_segment, dock, use_model

from napari_cdal._widgets._layers import layer_name
from napari_cdal._widgets._review import viewer_camera
from napari_cdal.layer_metadata import TAG

pytestmark = pytest.mark.gui

MPP = 0.5


@pytest.fixture()
def slide(tmp_path):
    """A 256 x 256 pyramidal tiled TIFF of four blob tiles at 0.5 µm/px (levels 256, 128, 64) and its nuclei."""
    tiles = [blob_tile(seed) for seed in (41, 42, 43, 44)]
    image = np.concatenate(
        [np.concatenate([t.image for t in tiles[:2]], 1), np.concatenate([t.image for t in tiles[2:]], 1)], 0
    )
    foreground = np.concatenate(
        [np.concatenate([t.foreground for t in tiles[:2]], 1), np.concatenate([t.foreground for t in tiles[2:]], 1)], 0
    )
    path = tmp_path / "slides" / "slide.tif"
    path.parent.mkdir()
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k in range(3):
            options = {"subifds": 2} if k == 0 else {"subfiletype": 1}
            tif.write(
                image[:: 2**k, :: 2**k],
                tile=(32, 32),
                photometric="rgb",
                compression="zlib",
                resolution=(1e4 / (MPP * 2**k),) * 2,
                resolutionunit="CENTIMETER",
                **options,
            )
    return path, image, foreground > 0


@pytest.fixture()
def opened(make_napari_viewer, slide, tiny_model_file, monkeypatch):
    """Segment docked in a new napari session, then the slide opened with File > Open (napari-cdal reads it), on
    the tiny model."""
    viewer = new_napari_session(make_napari_viewer())
    widget = dock(viewer)
    (layer,) = open_with_file_menu(viewer, slide[0], monkeypatch).layers
    use_model(widget, tiny_model_file)
    widget.samples.value = 1
    return viewer, widget, layer


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_the_reader_opens_a_lazy_multiscale_layer_at_the_slides_scale(opened) -> None:
    viewer, widget, layer = opened
    assert layer.multiscale and layer.rgb and len(layer.data) == 3
    assert [tuple(level.shape) for level in layer.data] == [(256, 256, 3), (128, 128, 3), (64, 64, 3)]
    assert not isinstance(layer.data[0], np.ndarray), "level 0 is read tile by tile, not loaded"
    assert tuple(layer.scale) == (MPP, MPP) and widget.mpp.value == pytest.approx(MPP)
    assert widget.region.value == "field of view", "a slide is segmented where the user looks"
    for field in (widget.slide_output, widget.tissue_only, widget.slide_button):
        assert field.native.isVisibleTo(widget.native), "Whole slide's controls come with a multiscale layer"


def test_segment_takes_the_field_of_view_at_full_resolution(qtbot, opened, slide) -> None:
    viewer, widget, layer = opened
    camera = viewer_camera(viewer)
    camera.center = (40.0, 70.0)  # µm: pixel (80, 140)
    camera.zoom = max(viewer.canvas.size) / 50.0  # 50 µm = 100 px across the longer side
    half = np.asarray(viewer.canvas.size, float) / (2 * camera.zoom) / MPP
    y0, x0 = (int(np.floor(v)) for v in np.array([80.0, 140.0]) - half)
    y1, x1 = (int(np.ceil(v)) for v in np.array([80.0, 140.0]) + half)
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, 256), min(x1, 256)
    assert click_segment(qtbot, widget) == "done"
    mask = viewer.layers[layer_name(layer.name, "mask", "tiny")]
    assert mask.data.shape == (y1 - y0, x1 - x0) and 0 < mask.data.shape[0] <= 101
    assert tuple(mask.scale) == (MPP, MPP) and tuple(mask.translate) == pytest.approx((y0 * MPP, x0 * MPP))
    assert mask.metadata[TAG]["origin"] == [y0, x0]
    truth = slide[2][y0:y1, x0:x1]
    assert mask.data.max() > 3 and dice(mask.data > 0, truth) > 0.7, "the nuclei lie where the image's are"
    assert dice(mask.data > 0, np.roll(truth, (17, 23), axis=(0, 1))) < dice(mask.data > 0, truth) - 0.2


def test_segment_takes_a_rectangle_drawn_in_a_shapes_layer(qtbot, opened, slide) -> None:
    viewer, widget, layer = opened
    shapes = viewer.add_shapes(
        [np.array([[10.0, 20.0], [10.0, 70.0], [40.0, 70.0], [40.0, 20.0]])], shape_type="rectangle", name="roi"
    )  # µm: pixels 20..80 x 40..140
    viewer.layers.selection.active = layer
    widget.region.value = shapes
    assert click_segment(qtbot, widget) == "done"
    mask = viewer.layers[layer_name(layer.name, "mask", "tiny")]
    assert mask.data.shape == (60, 100) and tuple(mask.translate) == pytest.approx((10.0, 20.0))
    assert dice(mask.data > 0, slide[2][20:80, 40:140]) > 0.7


def test_a_region_too_large_for_memory_is_refused_before_any_work(qtbot, opened, monkeypatch) -> None:
    viewer, widget, _ = opened
    errors: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda message: errors.append(str(message)))
    monkeypatch.setattr("napari_cdal.engine.checks.available_memory", lambda: 2**20)
    widget.region.value = "whole image"
    widget.segment_button.native.click()
    (message,) = errors
    assert message.startswith("Segment: the image (256 x 256 px) needs about ") and "\n" not in message
    assert "zoom in" in message and "rectangle" in message and "Whole slide" in message
    assert not widget.running and len(viewer.layers) == 1


@pytest.fixture()
def small_blocks(monkeypatch):
    """Whole slide in 128-pixel blocks and a pyramid down to 64 px, so the test slide has 4 blocks and levels."""
    import napari_cdal.engine.slide.stitch as stitch

    monkeypatch.setattr(stitch, "PYRAMID_MIN_PX", 64)
    monkeypatch.setattr(stitch, "segment_slide", functools.partial(stitch.segment_slide, block=128))
    return stitch


def test_whole_slide_fills_a_multiscale_labels_layer_from_its_store_and_resumes(
    qtbot, opened, slide, small_blocks, monkeypatch, tmp_path
) -> None:
    viewer, widget, layer = opened
    resume = pause_after_first_event(monkeypatch, small_blocks, "segment_slide")
    out = tmp_path / "out"
    widget.slide_output.value = out
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    widget.slide_button.native.click()
    name = layer_name(layer.name, "slide labels")
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=TIMEOUT_MS)  # shown while the run goes on
    assert widget.running and not widget.segment_button.enabled and not widget.slide_button.enabled
    widget.cancel_button.native.click()
    resume.set()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=TIMEOUT_MS)
    assert outcomes == ["cancelled"] and "Whole slide again resumes" in widget.status.value
    import zarr

    store = out / "slide_labels.zarr"
    done = zarr.open_array(store, mode="r").attrs["done"]
    assert 0 < len(done) < 4 and not (out / "slide_labels.tif").exists()
    labels = viewer.layers[name]

    # goes on from the blocks already done
    assert click_and_wait(qtbot, widget, widget.slide_button, TIMEOUT_MS) == "done"
    assert viewer.layers[name] is labels and zarr.open_array(store, mode="r").attrs["done"] == [0, 1, 2, 3]
    assert labels.multiscale and [tuple(level.shape) for level in labels.data] == [
        (256, 256),
        (128, 128),
        (64, 64),
        (32, 32),
    ]
    assert tuple(labels.scale) == (MPP, MPP) and tuple(labels.translate) == tuple(layer.translate)
    full = np.asarray(labels.data[0][:])
    assert full.max() == widget.last_slide.n_nuclei > 10
    assert dice(full > 0, slide[2]) > 0.7
    np.testing.assert_array_equal(np.asarray(labels.data[1][:]), full[::2, ::2])
    np.testing.assert_array_equal(tifffile.imread(out / "slide_labels.tif"), full)
    assert (
        f"{widget.last_slide.n_nuclei} nuclei in 4 blocks (0 of glass skipped; tissue 0.0164 of 0.0164 mm²)"
        in widget.status.value
    ), "the slide is all tissue"
    assert widget.tissue_only.value and (out / "slide_tissue.png").is_file()

    before = (out / "slide_labels.tif").stat().st_mtime_ns
    # a finished store: nothing to do, and no file replaced
    assert click_and_wait(qtbot, widget, widget.slide_button, TIMEOUT_MS) == "done"
    assert (out / "slide_labels.tif").stat().st_mtime_ns == before and "kept the existing" in widget.status.value


def test_whole_slide_without_tissue_only_segments_every_block(qtbot, opened, small_blocks, tmp_path) -> None:
    import zarr

    _, widget, _ = opened
    widget.tissue_only.value = False
    widget.slide_output.value = tmp_path / "out"
    assert click_and_wait(qtbot, widget, widget.slide_button, TIMEOUT_MS) == "done"
    store = zarr.open_array(tmp_path / "out" / "slide_labels.zarr", mode="r")
    assert store.attrs["settings"]["tissue"] == "all" and store.attrs["done"] == [0, 1, 2, 3]
    assert "(every block segmented, 0.0164 mm²)" in widget.status.value
    assert not (tmp_path / "out" / "slide_tissue.png").exists() and widget.last_slide.tissue is None


def test_cancel_in_whole_slide_stops_inside_a_block(qtbot, opened, small_blocks, monkeypatch, tmp_path) -> None:
    # held in G's first block after block 1 is written, i.e. inside block 2's reverse steps: Cancel
    # stops that pass at its next block, with no network pass after it, and the store keeps block 1 only
    import zarr

    from napari_cdal.engine.events import RunCancelled

    viewer, widget, _ = opened
    calls = count_network_passes(monkeypatch)
    hold = hold_in_block(monkeypatch, small_blocks, "segment_slide", "block", calls)
    widget.slide_output.value = tmp_path / "out"
    outcomes = cancel_at_hold(qtbot, widget, widget.slide_button, hold, TIMEOUT_MS)
    assert outcomes == ["cancelled"] and hold.stopped_by is RunCancelled
    assert hold.last_event.stage == "block" and hold.last_event.index == 1
    assert hold.calls_at_hold > 0 and len(calls) == hold.calls_at_hold and hold.events_after_hold == 0
    assert zarr.open_array(tmp_path / "out" / "slide_labels.zarr", mode="r").attrs["done"] == [0]


def test_whole_slide_needs_a_slide_file(qtbot, make_napari_viewer, tiny_model_file, monkeypatch) -> None:
    errors: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda message: errors.append(str(message)))
    viewer = make_napari_viewer()
    viewer.add_image(blob_tile(3).image, name="in memory")
    widget = dock(viewer)
    use_model(widget, tiny_model_file)
    widget.slide_button.native.click()
    (message,) = errors
    assert message.startswith("Whole slide: in memory was not opened from a slide file") and not widget.running
