"""Volumes in napari under Xvfb: NIfTI in and out, Segment on a 3-D image, fine-tuning from corrected slices."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
from conftest import (
    TINY_CLASSES,
    blob_tile,
    click_and_wait,
    new_napari_session,
    open_with_file_menu,
    pause_after_first_event,
    synthetic_volume,
    used_before,
    volume_affine,
)

from napari_cdal._widgets._layers import kind_title, layer_name
from napari_cdal._widgets.finetune import FinetuneWidget
from napari_cdal._widgets.segment import OTHER_FILE, SegmentWidget
from napari_cdal.catalog import bundled_models
from napari_cdal.engine.config import iterations_done
from napari_cdal.engine.io.volumes import write_volume
from napari_cdal.layer_metadata import TAG

pytestmark = pytest.mark.gui

PLUGIN = "napari-cdal"
SPACING = (1.0, 1.5, 2.0)
TRANSLATE = (3.0, -4.0, 5.0)
TIMEOUT_MS = 120_000
MODEL = "tiny_classes"


@pytest.fixture(scope="module")
def classes_model_file(tmp_path_factory) -> Path:
    """An untrained tiny model of classes (3 classes, 2.5D slices along axis 0): shapes and grids, not accuracy."""
    from napari_cdal.engine.method.model import CdalModel, save_model

    path = tmp_path_factory.mktemp("models") / f"{MODEL}.safetensors"
    save_model(path, CdalModel.initialise(TINY_CLASSES, 0))
    return path


@pytest.fixture()
def errors(monkeypatch) -> list[str]:
    """Messages the widgets send to napari's error notifications."""
    shown: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda message: shown.append(str(message)))
    return shown


@pytest.fixture()
def volume_files(tmp_path) -> tuple[Path, Path]:
    """A synthetic volume and its labels written as NIfTI (images/ and labels/, the MSD layout)."""
    image, labels = synthetic_volume(0)
    image_path, labels_path = tmp_path / "images" / "vol.nii.gz", tmp_path / "labels" / "vol.nii.gz"
    write_volume(image_path, image, volume_affine())
    write_volume(labels_path, labels, volume_affine())
    return image_path, labels_path


def test_a_nifti_opens_as_a_3d_image_with_its_spacing_and_affine(make_napari_viewer, volume_files) -> None:
    viewer = used_before(make_napari_viewer())
    (layer,) = viewer.open(volume_files[0], plugin=None)
    assert type(layer).__name__ == "Image" and layer.name == "vol"
    assert layer.data.shape == (12, 24, 24) and tuple(layer.scale) == SPACING
    assert np.allclose(layer.metadata["affine"], volume_affine())
    assert layer.metadata["source"] == str(volume_files[0])


def test_a_label_volume_opens_as_labels(make_napari_viewer, volume_files, tmp_path) -> None:
    viewer = used_before(make_napari_viewer())
    (labels,) = viewer.open(volume_files[1], plugin=None)
    assert type(labels).__name__ == "Labels" and tuple(labels.scale) == SPACING
    assert set(np.unique(labels.data)) == {0, 1, 2}
    elsewhere = tmp_path / "elsewhere" / "mask.nii"  # few small integers, outside a labels folder
    write_volume(elsewhere, np.asarray(labels.data, np.int16), np.eye(4))
    (mask,) = viewer.open(elsewhere, plugin=None)
    assert type(mask).__name__ == "Labels"
    as_floats = tmp_path / "labelsTr" / "vol.nii.gz"  # MSD stores some label volumes as float32
    write_volume(as_floats, np.asarray(labels.data, np.float32), volume_affine())
    (floats,) = viewer.open(as_floats, plugin=None)
    assert type(floats).__name__ == "Labels" and floats.data.dtype == np.uint8
    assert np.array_equal(floats.data, labels.data)
    mri = tmp_path / "elsewhere" / "mri.nii.gz"  # integers, but an image's many values
    write_volume(mri, np.arange(12 * 24 * 24, dtype=np.int16).reshape(12, 24, 24), np.eye(4))
    (image,) = viewer.open(mri, plugin=None)
    assert type(image).__name__ == "Image"


def test_labels_are_saved_as_nifti_with_the_source_affine(make_napari_viewer, volume_files, tmp_path) -> None:
    viewer = used_before(make_napari_viewer())
    (labels,) = viewer.open(volume_files[1], plugin=None)
    labels.paint((5, 10, 10), 2, refresh=True)
    out = tmp_path / "out" / "corrected.nii.gz"
    out.parent.mkdir()
    written = viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    assert written == [str(out)] and sorted(p.name for p in out.parent.iterdir()) == ["corrected.nii.gz"]
    saved = nibabel.load(str(out))
    assert saved.get_data_dtype() == np.uint8 and np.allclose(saved.affine, volume_affine())
    assert np.array_equal(np.asarray(saved.dataobj), labels.data)

    plain = viewer.add_labels(
        np.ones((3, 4, 5), np.int32), name="drawn", scale=(2.0, 3.0, 4.0), translate=(1.0, 0.0, -1.0)
    )
    viewer.layers.selection = {plain}
    out = tmp_path / "out" / "drawn.nii"
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]
    expected = np.diag([2.0, 3.0, 4.0, 1.0])
    expected[:3, 3] = (1.0, 0.0, -1.0)
    assert np.allclose(nibabel.load(str(out)).affine, expected)


def test_a_2d_labels_layer_is_not_written_as_a_volume(make_napari_viewer, tmp_path) -> None:
    from napari_cdal._writer import write_labels_nifti

    with pytest.raises(ValueError, match="needs a 3-D Labels layer"):
        write_labels_nifti(str(tmp_path / "flat.nii.gz"), np.ones((4, 4), np.uint8), {})
    assert not (tmp_path / "flat.nii.gz").exists()


def dock(viewer, name: str, model_file: Path | None = None):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    if model_file is not None:
        widget.model.value = OTHER_FILE
        widget.model_file.value = model_file
    return widget


def open_volume(viewer, path: Path):
    """Open a NIfTI as napari does with no reader named (napari-cdal preferred) and move it off the origin, as a
    registered volume may be."""
    (layer,) = viewer.open(path, plugin=None)
    layer.translate = TRANSLATE
    return layer


def test_segment_on_a_volume_gives_aligned_3d_labels_and_4d_stacks(
    qtbot, monkeypatch, make_napari_viewer, volume_files, classes_model_file
) -> None:
    from napari_cdal._widgets._worker import RunProgress

    bar: list[tuple[int, int]] = []
    original = RunProgress.update

    def spy(self, n: int = 1) -> None:
        original(self, n)
        bar.append((self.n, self.total))

    monkeypatch.setattr(RunProgress, "update", spy)
    viewer = used_before(make_napari_viewer())
    image = open_volume(viewer, volume_files[0])
    widget: SegmentWidget = dock(viewer, "Segment", classes_model_file)
    widget.samples.value = 2
    assert click_and_wait(qtbot, widget, widget.segment_button) == "done"
    assert bar[-1] == (12, 12), "the bar counts slices"
    names = [layer.name for layer in viewer.layers]
    kinds = ("steps", "estimates", "attention", "uncertainty", "mask")
    titles = [kind_title(kind, "channel_mean") for kind in kinds]  # the tiny model's attention_display
    assert names == ["vol", *(layer_name("vol", title, MODEL) for title in titles)]
    steps, estimates, attention, uncertainty, mask = (viewer.layers[layer_name("vol", t, MODEL)] for t in titles)
    assert type(mask).__name__ == "Labels" and mask.data.dtype == np.uint8 and mask.data.shape == (12, 24, 24)
    assert set(np.unique(mask.data)) <= {0, 1, 2}
    for layer in (mask, uncertainty):
        assert tuple(layer.scale) == SPACING and tuple(layer.translate) == TRANSLATE
    assert uncertainty.data.shape == (12, 24, 24)
    for layer, planes, first in ((steps, 3, 0.0), (estimates, 2, 1.0), (attention, 2, 1.0)):
        assert layer.data.shape == (planes, 12, 24, 24) and layer.axis_labels[0] == "step"
        assert tuple(layer.scale) == (1.0, *SPACING) and tuple(layer.translate) == (first, *TRANSLATE)
    assert np.array_equal(steps.data[-1], estimates.data[-1]), "the chain ends at the last step's x̂0"
    assert np.allclose(mask.metadata["affine"], image.metadata["affine"])
    assert np.array_equal(mask.metadata[TAG]["result"], mask.data) and mask.metadata[TAG]["model"] == MODEL
    assert widget.status.value.startswith(f"{MODEL}: anterior ") and "voxels" in widget.status.value
    assert not widget.review_button.enabled


@pytest.mark.parametrize("spins", [True, False], ids=["torch-loaded-first", "plugin-loaded-first"])
def test_a_run_takes_one_torch_thread_where_openmp_spin_waits(
    qtbot, monkeypatch, make_napari_viewer, volume_files, classes_model_file, spins
) -> None:
    # torch loaded before the plugin (another plugin, a script) leaves OpenMP's threads spin-waiting: on a loaded
    # 2-core machine a volume took 15-20 s instead of 2 (benchmarks/volume_widget.py); with one thread, 2 s
    import torch

    import napari_cdal._widgets._model_cache as model_cache
    import napari_cdal.engine.segment.volume as engine

    monkeypatch.setattr(model_cache, "OPENMP_SPINS", spins)
    set_to: list[int] = []  # what the run set the worker thread's count to (torch's counts are per thread)
    real_set = torch.set_num_threads

    def recorded(count: int) -> None:
        set_to.append(count)
        real_set(count)

    seen: list[int] = []
    real = engine.segment_volume

    def watched(*args, **kwargs):
        for event in real(*args, **kwargs):
            seen.append(torch.get_num_threads())
            yield event

    monkeypatch.setattr(engine, "segment_volume", watched)
    viewer = used_before(make_napari_viewer())
    open_volume(viewer, volume_files[0])
    widget = dock(viewer, "Segment", classes_model_file)
    monkeypatch.setattr(torch, "set_num_threads", recorded)
    assert click_and_wait(qtbot, widget, widget.segment_button) == "done"
    if spins:
        assert set(seen) == {1} and len(set_to) == 2 and set_to[0] == 1, "one thread, then the count given back"
    else:
        assert set_to == [], "torch's thread count is left alone where OpenMP waits passively"


def test_cancel_on_a_volume_leaves_the_layers_as_they_were(
    qtbot, monkeypatch, make_napari_viewer, volume_files, classes_model_file
) -> None:
    import napari_cdal.engine.segment.volume as engine_volume

    resume = pause_after_first_event(monkeypatch, engine_volume, "segment_volume")
    viewer = used_before(make_napari_viewer())
    open_volume(viewer, volume_files[0])
    widget: SegmentWidget = dock(viewer, "Segment", classes_model_file)
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    widget.segment_button.native.click()
    qtbot.waitUntil(lambda: "slices" in widget.status.value, timeout=TIMEOUT_MS)
    widget.cancel_button.native.click()
    resume.set()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=TIMEOUT_MS)
    assert outcomes == ["cancelled"] and [layer.name for layer in viewer.layers] == ["vol"]


def test_a_model_that_does_not_fit_the_layer_is_refused_before_any_work(
    make_napari_viewer, volume_files, classes_model_file, tiny_model_file, errors
) -> None:
    viewer = used_before(make_napari_viewer())
    open_volume(viewer, volume_files[0])
    widget: SegmentWidget = dock(viewer, "Segment", tiny_model_file)
    widget.segment_button.native.click()
    assert len(errors) == 1 and "'vol' is a stack or volume of shape (12, 24, 24)" in errors[0]
    assert "cdal_hippocampus" in errors[0]
    viewer.add_image(blob_tile(3, 64).image, name="tile")
    widget.image.value = viewer.layers["tile"]
    widget.model_file.value = classes_model_file
    widget.segment_button.native.click()
    assert len(errors) == 2 and f"{MODEL} segments 3-D volumes, and layer 'tile'" in errors[1]
    assert not widget.running and [layer.name for layer in viewer.layers] == ["vol", "tile"]


def test_finetune_learns_from_the_corrected_slices_of_a_volume(
    qtbot, monkeypatch, make_napari_viewer, volume_files, classes_model_file, tmp_path
) -> None:
    from napari_cdal.engine.io.checkpoint import read_metadata

    models = tmp_path / "models"
    monkeypatch.setenv("NAPARI_CDAL_MODEL_DIR", str(models))
    infos: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_info", lambda message: infos.append(str(message)))
    source_bytes = classes_model_file.read_bytes()
    viewer = used_before(make_napari_viewer())
    open_volume(viewer, volume_files[0])
    segment: SegmentWidget = dock(viewer, "Segment", classes_model_file)
    assert click_and_wait(qtbot, segment, segment.segment_button) == "done"
    mask = viewer.layers[layer_name("vol", "mask", MODEL)]
    for z in (3, 4):  # the user corrects two slices with the brush
        mask.selected_label = 1 + mask.data[z, 10, 10] % 2
        mask.paint((z, 10, 10), mask.selected_label, refresh=True)
    corrected = mask.data.copy()
    finetune: FinetuneWidget = dock(viewer, "Fine-tune")
    finetune.iterations.value = 2
    (row,) = finetune.pair_rows
    assert row.image.value is viewer.layers["vol"] and row.corrected_labels.value is mask
    name = finetune.model_name.value
    assert click_and_wait(qtbot, finetune, finetune.finetune_button) == "done"

    new_model = models / f"{name}.safetensors"
    assert sorted(p.name for p in models.iterdir()) == [new_model.name]
    assert classes_model_file.read_bytes() == source_bytes, "the base model is never replaced"
    assert np.array_equal(mask.data, corrected), "the user's Labels layer is only read"
    assert any(
        "2 corrected slice(s) along axis 0 (where the labels differ from the model's result): 3, 4" in i for i in infos
    )
    record = read_metadata(new_model)["record"]
    assert record["finetune"]["slices"] == 2 and record["finetune"]["images"] == ["vol"]
    assert record["finetuned_from"]["model"] == classes_model_file.name and iterations_done(record) == 2
    assert segment.selected_model_path() == str(new_model), "Segment now uses the new model"


def shown(widget, field) -> bool:
    """True when the widget shows `field` (its row is not hidden), whether or not the window is on screen."""
    return field.native.isVisibleTo(widget.native)


@pytest.mark.skipif("cdal_hippocampus" not in bundled_models(), reason="no bundled hippocampus model in this checkout")
def test_a_volume_opened_with_file_open_takes_the_volume_model_and_shows_only_its_fields(
    qtbot, make_napari_viewer, monkeypatch
) -> None:
    from napari_cdal.engine.io.volumes import read_label_volume
    from napari_cdal.sample_data import sample_volume_path

    viewer = new_napari_session(make_napari_viewer())
    widget = dock(viewer, "Segment")  # Plugins > napari-cdal > Segment, then File > Open
    (layer,) = open_with_file_menu(viewer, sample_volume_path(), monkeypatch).layers
    assert type(layer).__name__ == "Image" and layer.data.ndim == 3 and tuple(layer.scale) == (1.0, 1.0, 1.0)
    assert [str(unit) for unit in layer.units] == ["millimeter"] * 3 and layer.axis_labels == ("x", "y", "z")
    assert viewer.dims.axis_labels[0] == "x", "the slider is named after the axis it moves along, not -3"
    assert widget.image.value is layer
    assert Path(widget.selected_model_path()).stem == "cdal_hippocampus", "a volume takes the volume model"
    assert "cdal_hippocampus chosen" in widget.status.value
    for field in (
        widget.region,
        widget.mpp,
        widget.contours,
        widget.review_count,
        widget.review_button,
        widget.slide_output,
        widget.tissue_only,
        widget.slide_button,
    ):
        assert not shown(widget, field), f"{field.label or field.text} does not apply to an MRI volume"
    for field in (widget.model, widget.sampling_steps, widget.samples, widget.seed, widget.segment_button):
        assert shown(widget, field)
    assert click_and_wait(qtbot, widget, widget.segment_button) == "done"
    (mask,) = [item for item in viewer.layers if type(item).__name__ == "Labels"]
    assert mask.name == layer_name(layer.name, "mask", "cdal_hippocampus") and mask.data.shape == layer.data.shape
    assert [str(unit) for unit in mask.units] == ["millimeter"] * 3 and mask.axis_labels == ("x", "y", "z")
    assert viewer.dims.axis_labels[:2] == ("step", "x")
    truth = read_label_volume(Path(__file__).parent / "data" / "hippocampus_276_labels.nii.gz", 3).data
    for value in (1, 2):  # the bundled model at its defaults, as the golden test measures it
        found, true = np.asarray(mask.data) == value, truth == value
        assert 2 * np.count_nonzero(found & true) / (found.sum() + true.sum()) > 0.85
    tile = viewer.add_image(blob_tile(3, 64).image, name="tile")
    widget.image.value = tile
    assert Path(widget.selected_model_path()).stem == "cdal_monuseg", "a 2-D image takes the H&E model back"
    assert shown(widget, widget.mpp) and shown(widget, widget.contours) and not shown(widget, widget.slide_button)


@pytest.mark.skipif("cdal_hippocampus" not in bundled_models(), reason="no bundled hippocampus model in this checkout")
def test_the_sample_volume_opens_with_its_licence(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    (layer,) = viewer.open_sample(PLUGIN, "hippocampus")
    assert "CC BY-SA 4.0" in layer.metadata["licence"] and layer.axis_labels == ("x", "y", "z")
