"""Opening files in napari as a user does (File > Open, no reader named): tiles, volumes and slides."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import blob_tile, new_napari_session, open_with_file_menu, synthetic_volume, volume_affine
from test_reader_writer import pyramid_tiff

from napari_cdal.engine.io.volumes import write_volume

pytestmark = pytest.mark.gui

PLUGIN = "napari-cdal"


@pytest.fixture()
def files(tmp_path):
    """A plain H&E-like tile (TIFF), a NIfTI volume and a pyramidal slide (TIFF), and the tile's pixels."""
    tile = blob_tile(3, 96).image
    tifffile.imwrite(tmp_path / "tile.tif", tile)
    write_volume(tmp_path / "vol.nii.gz", synthetic_volume(0)[0], volume_affine())
    pyramid_tiff(tmp_path / "slide.tif", np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8))
    return tmp_path, tile


def test_after_docking_segment_file_open_reads_tiles_volumes_and_slides_without_asking(
    make_napari_viewer, monkeypatch, files
) -> None:
    folder, tile = files
    viewer = new_napari_session(make_napari_viewer())
    viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")  # Plugins > napari-cdal > Segment
    opened = open_with_file_menu(viewer, folder / "tile.tif", monkeypatch)
    assert not opened.asked, "napari-cdal is the preferred reader once the plugin has been used"
    (layer,) = opened.layers
    assert layer.name == "tile" and layer.rgb and not layer.multiscale and np.array_equal(layer.data, tile)
    opened = open_with_file_menu(viewer, folder / "vol.nii.gz", monkeypatch)
    (volume,) = opened.layers
    assert not opened.asked and volume.name == "vol" and volume.ndim == 3 and tuple(volume.scale) == (1.0, 1.5, 2.0)
    opened = open_with_file_menu(viewer, folder / "slide.tif", monkeypatch)
    (slide,) = opened.layers
    assert not opened.asked and slide.multiscale and tuple(slide.scale) == (0.5, 0.5)
    (again,) = viewer.open(folder / "vol.nii.gz", plugin=None)  # a script's open without a reader named
    assert again.ndim == 3


def test_in_a_new_session_napari_asks_once_and_napari_cdal_reads_the_volume(
    make_napari_viewer, monkeypatch, files
) -> None:
    folder, _ = files
    viewer = new_napari_session(make_napari_viewer())
    opened = open_with_file_menu(viewer, folder / "vol.nii.gz", monkeypatch, choose=PLUGIN)
    assert opened.asked == [str(folder / "vol.nii.gz")], "napari asks while the plugin has never been used"
    (volume,) = opened.layers
    assert volume.ndim == 3 and volume.metadata["source"] == str(folder / "vol.nii.gz")
    opened = open_with_file_menu(viewer, folder / "tile.tif", monkeypatch)
    assert not opened.asked and len(opened.layers) == 1, "reading once made napari-cdal the preferred reader"


def test_napari_cdal_view_opens_a_volume_and_a_tile_with_segment_docked(make_napari_viewer, monkeypatch, files) -> None:
    from napari_cdal.cli import open_viewer

    folder, _ = files
    monkeypatch.setattr("napari.Viewer", lambda: new_napari_session(make_napari_viewer()))
    viewer = open_viewer([folder / "vol.nii.gz", folder / "tile.tif"], sample=False)
    assert [(layer.name, layer.ndim) for layer in viewer.layers] == [("vol", 3), ("tile", 2)]
    assert "Segment (napari-cdal)" in viewer.window.dock_widgets
