"""Volumes in napari under Xvfb: NIfTI in and out, Segment on a 3-D image, fine-tuning from corrected slices."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
from conftest import synthetic_volume, volume_affine

from napari_cdal.engine.io.volumes import write_volume

pytestmark = pytest.mark.gui

PLUGIN = "napari-cdal"
SPACING = (1.0, 1.5, 2.0)


@pytest.fixture()
def volume_files(tmp_path) -> tuple[Path, Path]:
    """A synthetic volume and its labels written as NIfTI (images/ and labels/, the MSD layout)."""
    image, labels = synthetic_volume(0)
    image_path, labels_path = tmp_path / "images" / "vol.nii.gz", tmp_path / "labels" / "vol.nii.gz"
    write_volume(image_path, image, volume_affine())
    write_volume(labels_path, labels, volume_affine())
    return image_path, labels_path


def test_a_nifti_opens_as_a_3d_image_with_its_spacing_and_affine(make_napari_viewer, volume_files) -> None:
    viewer = make_napari_viewer()
    (layer,) = viewer.open(volume_files[0], plugin=PLUGIN)
    assert type(layer).__name__ == "Image" and layer.name == "vol"
    assert layer.data.shape == (12, 24, 24) and tuple(layer.scale) == SPACING
    assert np.allclose(layer.metadata["affine"], volume_affine())
    assert layer.metadata["source"] == str(volume_files[0])


def test_a_label_volume_opens_as_labels(make_napari_viewer, volume_files, tmp_path) -> None:
    viewer = make_napari_viewer()
    (labels,) = viewer.open(volume_files[1], plugin=PLUGIN)
    assert type(labels).__name__ == "Labels" and tuple(labels.scale) == SPACING
    assert set(np.unique(labels.data)) == {0, 1, 2}
    elsewhere = tmp_path / "elsewhere" / "mask.nii"  # few small integers, outside a labels folder
    write_volume(elsewhere, np.asarray(labels.data, np.int16), np.eye(4))
    (mask,) = viewer.open(elsewhere, plugin=PLUGIN)
    assert type(mask).__name__ == "Labels"
    mri = tmp_path / "elsewhere" / "mri.nii.gz"  # integers, but an image's many values
    write_volume(mri, np.arange(12 * 24 * 24, dtype=np.int16).reshape(12, 24, 24), np.eye(4))
    (image,) = viewer.open(mri, plugin=PLUGIN)
    assert type(image).__name__ == "Image"


def test_labels_are_saved_as_nifti_with_the_source_affine(make_napari_viewer, volume_files, tmp_path) -> None:
    viewer = make_napari_viewer()
    (labels,) = viewer.open(volume_files[1], plugin=PLUGIN)
    labels.paint((5, 10, 10), 2, refresh=True)
    out = tmp_path / "out" / "corrected.nii.gz"
    out.parent.mkdir()
    written = viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    assert written == [str(out)] and sorted(p.name for p in out.parent.iterdir()) == ["corrected.nii.gz"]
    saved = nibabel.load(str(out))
    assert saved.get_data_dtype() == np.uint8 and np.allclose(saved.affine, volume_affine())
    assert np.array_equal(np.asarray(saved.dataobj), labels.data)

    plain = viewer.add_labels(np.ones((3, 4, 5), np.int32), name="drawn", scale=(2.0, 3.0, 4.0),
                              translate=(1.0, 0.0, -1.0))
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
