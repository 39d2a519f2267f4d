"""Readers (Aperio XML, GeoJSON, slides) and writers (instance TIFF, GeoJSON, CSV) through npe2, as napari does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from npe2 import PluginManager, read, write
from PIL import Image
from skimage.draw import disk

from napari_cdal._reader import PREFERRED_PATTERNS, napari_get_image_reader, napari_get_reader
from napari_cdal._writer import write_labels_csv, write_labels_geojson, write_labels_tiff
from napari_cdal.engine.io.detections import labels_to_geojson

PLUGIN = "napari-cdal"


@pytest.fixture(autouse=True, scope="module")
def discovered_plugins() -> None:
    """npe2 finds installed manifests only once asked to (napari asks at start-up)."""
    PluginManager.instance().discover()


def _aperio_xml(path: Path, squares: list[tuple[int, int, int]], mpp: str | None = "0.252100") -> Path:
    """Write an ImageScope XML with one square Region (x, y, side) per nucleus."""
    regions = []
    for index, (x, y, side) in enumerate(squares, start=1):
        corners = [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]
        vertices = "".join(f'<Vertex X="{cx}" Y="{cy}" Z="0"/>' for cx, cy in corners)
        regions.append(f'<Region Id="{index}" Type="0"><Vertices>{vertices}</Vertices></Region>')
    attribute = f' MicronsPerPixel="{mpp}"' if mpp else ""
    path.write_text(
        f'<?xml version="1.0"?><Annotations{attribute}><Annotation Id="1"><Regions>'
        f"{''.join(regions)}</Regions></Annotation></Annotations>"
    )
    return path


def _nuclei(shape: tuple[int, int] = (90, 120), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    for k in range(1, 20):
        rr, cc = disk(tuple(rng.integers(0, shape)), int(rng.integers(1, 7)), shape=shape)
        labels[rr, cc] = 10 * k
    return labels


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images split the pixels into the same nuclei (ids may differ)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1] and bool(
        ((pairs[0] == 0) == (pairs[1] == 0)).all()
    )


# ----------------------------------------------------------------------------- reader


def test_xml_reads_as_labels_on_the_grid_of_the_image_beside_it(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "tile.tif", np.zeros((64, 80, 3), np.uint8))
    xml = _aperio_xml(tmp_path / "tile.xml", [(5, 5, 10), (40, 30, 8)])
    ((data, meta, kind),) = read([str(xml)], stack=False, plugin_name=PLUGIN)
    assert kind == "labels" and data.shape == (64, 80) and data.dtype == np.uint32
    assert set(np.unique(data)) == {0, 1, 2}
    assert data[10, 10] == 1 and data[34, 44] == 2
    assert meta["name"] == "tile annotations"
    assert meta["metadata"]["microns_per_pixel"] == pytest.approx(0.2521)
    assert meta["metadata"]["tile_image"].endswith("tile.tif")


def test_xml_in_the_monuseg_layout_finds_its_image_in_the_images_folder(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(tmp_path / "images" / "tile.png")
    xml = _aperio_xml(tmp_path / "annotations" / "tile.xml", [(1, 1, 5)])
    ((data, _, _),) = read([str(xml)], stack=False, plugin_name=PLUGIN)
    assert data.shape == (50, 70)


def test_xml_without_an_image_takes_the_polygons_extent(tmp_path) -> None:
    xml = _aperio_xml(tmp_path / "alone.xml", [(5, 5, 10), (30, 20, 9)], mpp=None)
    ((data, meta, _),) = read([str(xml)], stack=False, plugin_name=PLUGIN)
    assert data.shape == (30, 40)
    assert data.max() == 2 and meta["metadata"]["microns_per_pixel"] is None


def test_other_xml_files_are_left_to_other_readers(tmp_path) -> None:
    other = tmp_path / "pom.xml"
    other.write_text("<project><name>x</name></project>")
    assert napari_get_reader(str(other)) is None
    assert napari_get_reader(str(tmp_path / "missing.xml")) is None
    assert napari_get_reader(str(tmp_path / "tile.tif")) is None


def test_a_broken_xml_says_which_file(tmp_path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text("<Annotations><Region>")
    reader = napari_get_reader(str(broken))
    with pytest.raises(ValueError, match="broken.xml"):
        reader(str(broken))


# ----------------------------------------------------------------------------- writers


def test_instance_tiff_round_trip(tmp_path) -> None:
    labels = _nuclei()
    meta = {"name": "tile mask"}
    written = write(str(tmp_path / "mask.tif"), [(labels, meta, "labels")], plugin_name=PLUGIN)
    assert written == [str(tmp_path / "mask.tif")]
    back = tifffile.imread(tmp_path / "mask.tif")
    assert back.dtype == np.uint16 and back.shape == labels.shape
    assert np.array_equal(np.unique(back), np.arange(len(np.unique(labels))))
    assert _same_partition(back, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif"]


def test_instance_tiff_switches_to_uint32_past_65534_nuclei(tmp_path) -> None:
    labels = np.arange(1, 300 * 300 + 1, dtype=np.uint32).reshape(300, 300)
    write_labels_tiff(str(tmp_path / "many.tif"), labels, {})
    back = tifffile.imread(tmp_path / "many.tif")
    assert back.dtype == np.uint32 and np.array_equal(back, labels)


def test_writers_refuse_non_integer_labels(tmp_path) -> None:
    with pytest.raises(ValueError, match="integer ids"):
        write_labels_tiff(str(tmp_path / "x.tif"), np.zeros((4, 4), np.float32), {})
    with pytest.raises(ValueError, match="2-D"):
        write_labels_geojson(str(tmp_path / "x.geojson"), np.zeros((2, 4, 4), np.uint8), {})
    assert list(tmp_path.iterdir()) == []


def test_geojson_is_a_feature_collection_of_closed_pixel_polygons(tmp_path) -> None:
    labels = np.zeros((20, 40), np.uint16)
    labels[10:13, 30:36] = 7
    document = labels_to_geojson(labels)
    assert document["type"] == "FeatureCollection"
    (feature,) = document["features"]
    assert feature["properties"] == {
        "objectType": "annotation",
        "classification": {"name": "Nucleus"},
        "id": 7,
    }
    assert feature["geometry"]["type"] == "Polygon"
    (ring,) = feature["geometry"]["coordinates"]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    assert ring[0] == ring[-1] and len(ring) >= 4
    # [x, y] with pixel (r, c) covering [c, c + 1] x [r, r + 1]: the box is x 30..36, y 10..13
    assert 30 <= min(xs) and max(xs) <= 36 and 10 <= min(ys) and max(ys) <= 13


def test_geojson_round_trip_is_exact(tmp_path) -> None:
    labels = _nuclei(seed=3)
    labels[0, 0], labels[-1, -1] = 5000, 5001
    labels[40, 3:6], labels[41, 6] = 6000, 6000  # touching only at a corner: two parts
    Image.fromarray(np.zeros((*labels.shape, 3), np.uint8)).save(tmp_path / "tile.png")
    write(str(tmp_path / "tile.geojson"), [(labels, {"name": "m"}, "labels")], plugin_name=PLUGIN)
    document = json.loads((tmp_path / "tile.geojson").read_text())
    kinds = {f["properties"]["id"]: f["geometry"]["type"] for f in document["features"]}
    assert kinds[6000] == "MultiPolygon" and kinds[5000] == "Polygon"
    ((back, _, kind),) = read([str(tmp_path / "tile.geojson")], stack=False, plugin_name=PLUGIN)
    assert kind == "labels" and back.shape == labels.shape
    assert np.array_equal(back, labels)


def test_geojson_features_without_ids_get_fresh_ones(tmp_path) -> None:
    square = [[[2, 2], [6, 2], [6, 6], [2, 6], [2, 2]]]
    document = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": square},
                "properties": {"id": 3},
            },
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[10, 2], [14, 2], [14, 6], [10, 2]]],
                },
                "properties": {"objectType": "annotation"},
            },
        ],
    }
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(document))
    ((back, _, _),) = read([str(path)], stack=False, plugin_name=PLUGIN)
    assert back.shape == (7, 15)
    assert set(np.unique(back)) == {0, 3, 4}
    assert (back == 3).sum() == 16


# ----------------------------------------------------------------------------- slides


def pyramid_tiff(path: Path, image: np.ndarray, levels: int = 3, mpp: float = 0.5) -> Path:
    """A tiled pyramidal TIFF (levels halved as SubIFDs, every 2^k-th pixel) at `mpp` µm/px."""
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k in range(levels):
            options = {"subifds": levels - 1} if k == 0 else {"subfiletype": 1}
            tif.write(
                image[:: 2**k, :: 2**k],
                tile=(32, 32),
                photometric="rgb",
                compression="zlib",
                resolution=(1e4 / (mpp * 2**k),) * 2,
                resolutionunit="CENTIMETER",
                **options,
            )
    return path


def test_a_pyramidal_tiff_reads_as_a_lazy_multiscale_image_at_its_um_per_px(tmp_path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    path = pyramid_tiff(tmp_path / "slide.tif", image)
    ((levels, meta, kind),) = read([str(path)], stack=False, plugin_name=PLUGIN)
    assert kind == "image" and meta["multiscale"] and meta["rgb"] and meta["name"] == "slide"
    assert meta["scale"] == pytest.approx((0.5, 0.5)) and meta["units"] == ("µm", "µm")
    assert [tuple(level.shape) for level in levels] == [(200, 300, 3), (100, 150, 3), (50, 75, 3)]
    assert not any(isinstance(level, np.ndarray) for level in levels), "levels are read on demand"
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(np.asarray(level[10:40, 20:60]), image[:: 2**k, :: 2**k][10:40, 20:60])


def test_plain_tiles_read_as_napari_reads_them_so_choosing_napari_cdal_never_refuses_one(tmp_path) -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tile.tif", rgb)
    tifffile.imwrite(tmp_path / "tiled.tif", rgb, tile=(32, 32))
    Image.fromarray(rgb).save(tmp_path / "tile.png")
    Image.fromarray(rgb).save(tmp_path / "tile.jpg", quality=95)
    for name in ("tile.tif", "tiled.tif", "tile.png", "tile.jpg"):
        ((ours, _, kind),) = read([str(tmp_path / name)], stack=False, plugin_name=PLUGIN)
        napari_s = read([str(tmp_path / name)], stack=False, plugin_name="napari")[0][0]
        assert kind == "image" and np.array_equal(np.asarray(ours), np.asarray(napari_s)), name
    for name in ("missing.svs", "missing.tif", "notes.txt"):
        assert napari_get_image_reader(str(tmp_path / name)) is None, name
    pyramid = pyramid_tiff(tmp_path / "pyramid.tiff", np.zeros((64, 64, 3), np.uint8), levels=2)
    ((levels, meta, _),) = read([str(pyramid)], stack=False, plugin_name=PLUGIN)
    assert meta["multiscale"] and len(levels) == 2


def test_the_manifest_claims_the_patterns_it_prefers_and_prefers_them_when_activated() -> None:
    from napari.settings import get_settings

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    claimed = {pattern for reader in manifest.contributions.readers for pattern in reader.filename_patterns}
    assert set(PREFERRED_PATTERNS) <= claimed and manifest.on_activate == "napari_cdal._reader:on_activate"
    plugins = get_settings().plugins
    before = dict(plugins.extension2reader)
    try:
        plugins.extension2reader = {"*.png": "napari"}  # a choice the user made stays
        from napari_cdal._reader import on_activate

        on_activate()
        chosen = dict(plugins.extension2reader)
        assert chosen.pop("*.png") == "napari"
        assert chosen == {pattern: PLUGIN for pattern in PREFERRED_PATTERNS if pattern != "*.png"}
    finally:
        plugins.extension2reader = before


def test_csv_rows_are_the_nuclei_with_areas_in_um2_and_centroids_in_the_image(tmp_path) -> None:
    import csv

    labels = _nuclei(seed=4)
    ids = set(np.unique(labels[labels > 0]).tolist())
    meta = {"name": "m", "scale": (0.5, 0.5), "metadata": {"napari_cdal": {"origin": [100, 200]}}}
    written = write(str(tmp_path / "nuclei.csv"), [(labels, meta, "labels")], plugin_name=PLUGIN)
    assert written == [str(tmp_path / "nuclei.csv")]
    rows = list(csv.DictReader((tmp_path / "nuclei.csv").read_text().splitlines()))
    assert len(rows) == len(ids) and {int(row["id"]) for row in rows} == ids
    for row in rows:
        mask = labels == int(row["id"])
        ys, xs = np.nonzero(mask)
        assert float(row["area_um2"]) == pytest.approx(mask.sum() * 0.25, abs=1e-3)
        assert float(row["centroid_y_px"]) == pytest.approx(ys.mean() + 100, abs=1e-3)
        assert float(row["centroid_x_um"]) == pytest.approx((xs.mean() + 200) * 0.5, abs=1e-3)
        assert row["mean_hematoxylin_od"] == "" and row["mean_uncertainty"] == ""
    with pytest.raises(ValueError, match="2-D"):
        write_labels_csv(str(tmp_path / "stack.csv"), np.zeros((2, 4, 4), np.uint8), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei.csv"]


def test_geojson_of_a_part_is_placed_in_its_image(tmp_path) -> None:
    labels = np.zeros((20, 40), np.uint16)
    labels[10:13, 30:36] = 7
    meta = {"metadata": {"napari_cdal": {"origin": [100, 200]}}}
    write_labels_geojson(str(tmp_path / "part.geojson"), labels, meta)
    (feature,) = json.loads((tmp_path / "part.geojson").read_text())["features"]
    ring = np.array(feature["geometry"]["coordinates"][0])
    assert 230 <= ring[:, 0].min() and ring[:, 0].max() <= 236 and 110 <= ring[:, 1].min() <= 113
