"""Nuclei for QuPath and spreadsheets: GeoJSON detections and the CSV table agree with the labels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from conftest import files_in, run
from skimage.draw import disk

from napari_cdal.engine.io.detections import csv_text, labels_to_geojson, write_csv_tables, write_feature_collection
from napari_cdal.engine.segment.measurements import nucleus_measurements


def _two_discs() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((80, 80), np.uint16)
    labels[disk((20, 20), 8, shape=labels.shape)] = 1
    labels[disk((55, 60), 10, shape=labels.shape)] = 2
    image = np.full((80, 80, 3), (230, 190, 215), np.float32)  # eosin-pink background
    image[labels == 1] = (60, 40, 140)  # dark haematoxylin
    image[labels == 2] = (170, 140, 200)  # pale nucleus
    return labels, image


def test_measurements_follow_the_shapes_and_the_stain() -> None:
    labels, image = _two_discs()
    table = nucleus_measurements(labels, image, image_mpp=0.5)
    assert table["id"].tolist() == [1, 2]
    np.testing.assert_allclose(table["area_um2"], [np.sum(labels == k) * 0.25 for k in (1, 2)])
    np.testing.assert_allclose(table["centroid_y_um"], [10.0, 27.5], atol=0.05)
    np.testing.assert_allclose(table["centroid_x_px"], [20.0, 60.0], atol=0.1)
    np.testing.assert_allclose(table["perimeter_um"], [2 * np.pi * 8 * 0.5, 2 * np.pi * 10 * 0.5], rtol=0.1)
    assert np.all(table["eccentricity"] < 0.2) and np.all(table["solidity"] > 0.95)
    assert table["mean_hematoxylin_od"][0] > table["mean_hematoxylin_od"][1] > 0
    assert np.isnan(table["mean_uncertainty"]).all(), "no uncertainty was computed"


def test_geojson_detections_carry_the_measurements_by_id() -> None:
    labels, image = _two_discs()
    labels[labels == 2] = 7  # ids need not run 1..N
    table = nucleus_measurements(labels, image, image_mpp=0.5)
    document = labels_to_geojson(labels, table, object_type="detection")
    features = document["features"]
    assert [f["properties"]["id"] for f in features] == [1, 7]
    for feature, area in zip(features, table["area_um2"], strict=True):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        properties = feature["properties"]
        assert properties["objectType"] == "detection" and properties["classification"] == {"name": "Nucleus"}
        assert properties["measurements"]["area_um2"] == pytest.approx(area)
        assert "mean_uncertainty" not in properties["measurements"], "NaN (not computed) is left out"
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) >= 4


def test_csv_has_one_row_per_nucleus_and_empty_cells_for_nan() -> None:
    labels, image = _two_discs()
    rows = list(csv.DictReader(csv_text(nucleus_measurements(labels, image, 0.5)).splitlines()))
    assert [row["id"] for row in rows] == ["1", "2"] and rows[0]["mean_uncertainty"] == ""


def test_streamed_files_hold_the_text_of_the_whole(tmp_path) -> None:
    labels, image = _two_discs()
    table = nucleus_measurements(labels, image, 0.5)
    features = labels_to_geojson(labels, table, "detection")["features"]
    halves = [{name: column[part] for name, column in table.items()} for part in (slice(0, 1), slice(1, None))]
    write_feature_collection(tmp_path / "nuclei.geojson", [features[:1], [], features[1:]])
    write_csv_tables(tmp_path / "nuclei.csv", halves)
    assert (tmp_path / "nuclei.geojson").read_text() == json.dumps({"type": "FeatureCollection", "features": features})
    assert (tmp_path / "nuclei.csv").read_text() == csv_text(table)
    write_feature_collection(tmp_path / "none.geojson", [])
    write_csv_tables(tmp_path / "none.csv", [])
    assert json.loads((tmp_path / "none.geojson").read_text()) == {"type": "FeatureCollection", "features": []}
    assert (tmp_path / "none.csv").read_text() == csv_text({})


def test_segment_writes_labels_polygons_and_table_with_one_numbering(capsys, tiny_model_file, blob_images, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        "segment",
        blob_images[0],
        "--model",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--out",
        out,
        "--samples",
        "2",
        "--geojson",
        "--measurements",
    )
    assert code == 0, err
    assert files_in(out) == ["tile_labels.tif", "tile_nuclei.csv", "tile_nuclei.geojson"]
    labels = tifffile.imread(out / "tile_labels.tif")
    n = int(labels.max())
    assert n > 5
    rows = list(csv.DictReader((out / "tile_nuclei.csv").read_text().splitlines()))
    features = json.loads((out / "tile_nuclei.geojson").read_text())["features"]
    assert [int(row["id"]) for row in rows] == list(range(1, n + 1))
    assert [f["properties"]["id"] for f in features] == list(range(1, n + 1))
    for row, feature in zip(rows, features, strict=True):
        area = np.count_nonzero(labels == int(row["id"])) * 0.25
        assert float(row["area_um2"]) == pytest.approx(area, abs=1e-3)
        assert feature["properties"]["measurements"]["area_um2"] == pytest.approx(area)
        assert row["mean_uncertainty"] != "", "two samples give an uncertainty per nucleus"


def test_existing_table_is_kept_without_overwrite(capsys, tiny_model_file, blob_images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tile_nuclei.csv").write_text("mine")
    code, _, err = run(
        capsys, "segment", blob_images[0], "--model", tiny_model_file, "--mpp", "0.5", "--out", out, "--measurements"
    )
    assert code == 1 and "tile_nuclei.csv already exists" in err
    assert (out / "tile_nuclei.csv").read_text() == "mine" and files_in(out) == ["tile_nuclei.csv"]
