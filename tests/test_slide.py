"""Whole slides: read on demand, segmented in blocks, nuclei stitched once across seams, resumable."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import TILED, blob_mosaic
from scipy import ndimage as ndi

from napari_cdal.engine.events import TICK, run_to_end
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import aggregated_jaccard_index
from napari_cdal.engine.slide.blocks import block_cores
from napari_cdal.engine.slide.source import open_slide
from napari_cdal.engine.slide.stitch import labels_tiff, segment_slide
from napari_cdal.engine.slide.store import store_levels

BLOCK, HALO_UM, MPP = 96, 10.0, 0.5


@pytest.fixture()
def mosaic(tmp_path):
    """The blob mosaic as a tiled BigTIFF (conftest.blob_mosaic), and its pixels."""
    path = tmp_path / "slide.tif"
    return path, blob_mosaic(path, **TILED)


def _run(model, path, store, **kw):
    with open_slide(path) as source:
        return run_to_end(segment_slide(model, source, store, MPP, block=BLOCK, halo_um=HALO_UM, **kw))


def test_the_slide_is_read_lazily_with_its_pixel_size(mosaic) -> None:
    path, image = mosaic
    with open_slide(path) as source:
        assert (source.height, source.width) == (256, 256) and source.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(source.read(60, 130, 200, 300), image[60:130, 200:256])


def test_a_slide_in_strips_is_read_region_by_region_and_segmented_as_the_tiled_one(
    trained_tiny, mosaic, tmp_path, monkeypatch
) -> None:
    from tifffile.zarr import ZarrTiffStore

    path, image = mosaic
    strips, mapped = tmp_path / "strips.tif", tmp_path / "mapped.tif"
    blob_mosaic(strips, compression="zlib", rowsperstrip=8)  # 32 deflate strips of 6 KiB
    blob_mosaic(mapped)  # uncompressed, in one strip: mapped from the file
    decoded: list[str] = []
    real_get = ZarrTiffStore.get

    async def counted(self, key, *args, **kwargs):
        decoded.append(key)
        return await real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(ZarrTiffStore, "get", counted)
    for slide, decodes in ((strips, 6), (mapped, 0)):
        with open_slide(slide) as source:
            decoded.clear()
            np.testing.assert_array_equal(source.read(100, 140, 20, 60), image[100:140, 20:60])
            assert len(decoded) == decodes, "rows 100-140 lie in strips 12-17: only those are decoded"
    tiled = np.asarray(store_levels(_run(trained_tiny[0], path, tmp_path / "tiled.zarr").store)[0][:])
    assert tiled.max() > 50
    for slide in (strips, mapped):  # the same pixels, the same tissue and blocks: the same labels
        result = _run(trained_tiny[0], slide, tmp_path / f"{slide.stem}.zarr")
        np.testing.assert_array_equal(store_levels(result.store)[0][:], tiled)


def test_a_slide_in_one_large_compressed_strip_is_refused_in_one_line_before_the_model_loads(
    capsys, monkeypatch, tiny_model_file, tmp_path
) -> None:
    from conftest import run

    from napari_cdal.cli import common
    from napari_cdal.engine.slide import source as slide_source

    monkeypatch.setattr(slide_source, "MAX_CHUNK_BYTES", 2**20)
    monkeypatch.setattr("napari_cdal.cli.segment_slides.SLIDE_MIN_PIXELS", 512 * 512)
    monkeypatch.setattr(common, "load_model", lambda *_: pytest.fail("the model was loaded"))
    pixels = np.random.default_rng(0).integers(0, 256, (1024, 512, 3), dtype=np.uint8)
    path, raw = tmp_path / "scan.tif", tmp_path / "raw.tif"
    tifffile.imwrite(path, pixels, compression="zlib", rowsperstrip=1024)  # one deflate strip of 1.5 MiB
    tifffile.imwrite(raw, pixels, rowsperstrip=1024)  # the same strip uncompressed: read from the file by region
    code, _, err = run(capsys, "segment", path, "--model", tiny_model_file, "--out", tmp_path / "out")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "holds its 1024 x 512 pixels in one compressed strip of 2 MiB decoded" in err
    assert "re-save it as a tiled pyramidal TIFF, e.g. with `vips tiffsave scan.tif scan_tiled.tif --tile" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with open_slide(raw) as source:
        np.testing.assert_array_equal(source.read(500, 600, 100, 200), pixels[500:600, 100:200])


def test_blocks_cover_the_slide_once() -> None:
    cores = block_cores(250, 130, 96)
    covered = np.zeros((250, 130), int)
    for y0, y1, x0, x1 in cores:
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all() and len(cores) == 3 * 2


def test_stitched_nuclei_match_the_whole_image_and_none_is_doubled(trained_tiny, mosaic, tmp_path) -> None:
    import zarr

    model = trained_tiny[0]
    path, image = mosaic
    result = _run(model, path, tmp_path / "labels.zarr")
    stitched = np.asarray(zarr.open_array(result.store, mode="r")[:])
    whole = run_to_end(segment_image(model, image, image_mpp=MPP, keep_steps=False, with_attention=False)).labels
    assert result.blocks == 9 and stitched.max() == result.n_nuclei
    assert abs(result.n_nuclei - int(whole.max())) <= 0.1 * int(whole.max())
    assert aggregated_jaccard_index(stitched, whole) > 0.85
    for ident in np.unique(stitched[stitched > 0]):  # one piece per nucleus: none kept by two blocks
        assert ndi.label(stitched == ident)[1] == 1
    seams = np.zeros(image.shape[:2], bool)
    seams[[BLOCK, 2 * BLOCK], :] = seams[:, [BLOCK, 2 * BLOCK]] = True
    for ident in np.unique(whole[seams & (whole > 0)]):  # nuclei on a seam come out whole
        ids, counts = np.unique(stitched[whole == ident], return_counts=True)
        assert counts[ids > 0].max(initial=0) >= 0.8 * counts.sum(), f"nucleus {ident} was cut at a seam"


def test_an_interrupted_run_goes_on_where_it_stopped(trained_tiny, mosaic, tmp_path) -> None:
    import zarr

    model = trained_tiny[0]
    path, _ = mosaic
    straight = _run(model, path, tmp_path / "straight.zarr")
    with open_slide(path) as source:
        events = segment_slide(model, source, tmp_path / "resumed.zarr", MPP, block=BLOCK, halo_um=HALO_UM)
        blocks = ticks_in_fifth = 0
        for event in events:
            blocks += event.stage == "block"
            ticks_in_fifth += blocks == 4 and event.stage == TICK
            if ticks_in_fifth == 3:
                break
        events.close()  # stopped inside the fifth block: a Cancel need not wait for a block to end
    assert zarr.open_array(tmp_path / "resumed.zarr", mode="r").attrs["done"] == [0, 1, 2, 3]
    resumed = _run(model, path, tmp_path / "resumed.zarr")
    np.testing.assert_array_equal(
        zarr.open_array(resumed.store, mode="r")[:], zarr.open_array(straight.store, mode="r")[:]
    )
    with pytest.raises(ValueError, match="holds labels of another run"):
        _run(model, path, tmp_path / "resumed.zarr", seed=5)


def test_labels_come_out_as_a_tiled_pyramidal_bigtiff(trained_tiny, mosaic, tmp_path) -> None:
    path, _ = mosaic
    result = _run(trained_tiny[0], path, tmp_path / "labels.zarr", pyramid_min=64)
    levels = store_levels(result.store)
    assert [tuple(level.shape) for level in levels] == [(256, 256), (128, 128), (64, 64), (32, 32)]
    full = np.asarray(levels[0][:])
    for k, level in enumerate(levels):  # every level is level 0 taken every 2^k-th pixel, filled as blocks came
        np.testing.assert_array_equal(level[:], full[:: 2**k, :: 2**k])
    tiff = labels_tiff(result.store, tmp_path / "slide_labels.tif", tile=64)
    with tifffile.TiffFile(tiff) as tif:
        series = tif.series[0]
        assert tif.is_bigtiff and tif.pages[0].is_tiled and len(series.levels) == 4
        assert len(tif.pages[0].subifds) == 3, "the pyramid's levels are SubIFDs of level 0"
        for k, level in enumerate(series.levels):
            assert level.keyframe.is_tiled
            np.testing.assert_array_equal(level.asarray(), full[:: 2**k, :: 2**k])
    with open_slide(tiff) as labels:  # the resolution tags carry the run's µm/px
        assert labels.mpp == pytest.approx(MPP)


def test_segment_takes_large_images_through_the_slide_path(capsys, monkeypatch, tiny_model_file, mosaic, tmp_path):
    from conftest import files_in, run

    monkeypatch.setattr("napari_cdal.cli.segment_slides.SLIDE_MIN_PIXELS", 200 * 200)
    path, _ = mosaic
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "segment", path, "--model", tiny_model_file, "--out", out)
    assert code == 0, err
    assert " blocks at 0.5 µm/px" in stdout, "the slide's own µm/px (not the default 0.25) is used without --mpp"
    assert files_in(out) == ["slide_labels.tif", "slide_labels.zarr", "slide_tissue.png"]
    with tifffile.TiffFile(out / "slide_labels.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled and tif.asarray().max() > 50
    code, _, err = run(capsys, "segment", path, "--model", tiny_model_file, "--out", out)
    assert code == 1 and "slide_labels.tif and 1 more already exist" in err
    code, _, err = run(capsys, "segment", path, "--model", tiny_model_file, "--out", tmp_path / "o2", "--save-steps")
    assert code == 1 and "leave out --save-steps" in err


def test_slide_flag_takes_any_image_through_the_slide_path(capsys, tiny_model_file, blob_images, tmp_path):
    from conftest import files_in, run

    out = tmp_path / "out"
    code, stdout, err = run(
        capsys, "segment", blob_images[0], "--model", tiny_model_file, "--mpp", "0.5", "--out", out, "--slide"
    )
    assert code == 0, err
    assert " blocks at 0.5 µm/px" in stdout
    assert files_in(out) == ["tile_labels.tif", "tile_labels.zarr", "tile_tissue.png"]


def test_slide_geojson_and_csv_agree_with_the_stitched_labels(capsys, tiny_model_file, mosaic, tmp_path):
    import csv
    import json

    from conftest import files_in, run

    path, _ = mosaic
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        "segment",
        path,
        "--model",
        tiny_model_file,
        "--out",
        out,
        "--slide",
        "--samples",
        "2",
        "--geojson",
        "--measurements",
    )
    assert code == 0, err
    assert files_in(out) == [
        "slide_labels.tif",
        "slide_labels.zarr",
        "slide_nuclei.csv",
        "slide_nuclei.geojson",
        "slide_tissue.png",
    ]
    labels = tifffile.imread(out / "slide_labels.tif")
    present = set(np.unique(labels[labels > 0]).tolist())
    rows = list(csv.DictReader((out / "slide_nuclei.csv").read_text().splitlines()))
    features = json.loads((out / "slide_nuclei.geojson").read_text())["features"]
    assert {int(row["id"]) for row in rows} == present == {f["properties"]["id"] for f in features}
    assert len(rows) == len(features) == len(present), "each nucleus once"
    for row in rows:  # areas and centroids in slide coordinates, as in the stitched labels
        mask = labels == int(row["id"])
        assert float(row["area_um2"]) == pytest.approx(mask.sum() * MPP * MPP, abs=1e-3)
        ys, xs = np.nonzero(mask)
        assert float(row["centroid_x_px"]) == pytest.approx(xs.mean(), abs=1e-3)
        assert float(row["centroid_y_um"]) == pytest.approx(ys.mean() * MPP, abs=1e-3)
    first = next(f for f in features if f["properties"]["id"] == int(rows[-1]["id"]))
    ring = np.array(first["geometry"]["coordinates"][0])
    ys, xs = np.nonzero(labels == int(rows[-1]["id"]))
    assert xs.min() <= ring[:, 0].mean() <= xs.max() + 1 and ys.min() <= ring[:, 1].mean() <= ys.max() + 1
