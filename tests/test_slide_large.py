"""A slide of real size (100,000 x 80,000 px at 0.25 µm/px): accepted, opened lazily, and segmented only where
tissue is (two small islands on glass), read tile by tile."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.draw import disk

from napari_cdal.engine.io.images import ImageError, ImageHeader, check_read_whole, plane_size
from napari_cdal.engine.slide.source import open_slide
from napari_cdal.engine.slide.stitch import BLOCK_PX, HALO_UM, plan_blocks
from napari_cdal.engine.slide.tissue import TissueMask, detect_tissue

from tools.synthetic_slide import GLASS, write_sparse_slide

HEIGHT, WIDTH, MPP, TILE, LEVELS = 80_000, 100_000, 0.25, 512, 8
ISLANDS = ((21_120, 41_600, 640), (51_840, 72_320, 544))
"""(top, left, side) of each square island of tissue, in level-0 pixels: on the 32-px grid of the 8 µm/px overview,
each well inside one block (rows 10 and 25, columns 20 and 35 of the 2048-px blocks)."""


def tissue_island(seed: int, side: int) -> np.ndarray:
    """H&E-like tissue: pink with purple nuclei of 4-6 µm diameter (radius 8-12 px at 0.25 µm/px) and scanner noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((side, side, 3), np.float32)
    image[:] = (225, 175, 205)
    for _ in range(side * side // 1500):
        r, c = rng.integers(12, side - 12, 2)
        rr, cc = disk((r, c), int(rng.integers(8, 12)), shape=(side, side))
        image[rr, cc] = (95, 55, 135)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory) -> Path:
    """The real-size slide with its two islands (written once for the module: well under a second)."""
    islands = [(top, left, tissue_island(seed, side)) for seed, (top, left, side) in enumerate(ISLANDS)]
    return write_sparse_slide(tmp_path_factory.mktemp("slides") / "scan.tif", islands, HEIGHT, WIDTH, MPP, TILE, LEVELS)


def island_area_mm2() -> float:
    return sum(side * side for _, _, side in ISLANDS) * MPP**2 / 1e6


def test_the_real_size_slide_is_small_on_disk_and_only_the_pixel_cap_of_images_read_whole_refuses_it(big_slide):
    assert big_slide.stat().st_size < 4e6, "mostly empty tiles: a few MB at most"
    header = ImageHeader((HEIGHT, WIDTH, 3), np.dtype(np.uint8))
    assert plane_size(header, "scan.tif") == (HEIGHT, WIDTH), "the header alone is no reason to refuse a slide"
    with pytest.raises(ImageError, match="more than this tool reads at once; crop it, or save it as a tiled TIFF"):
        check_read_whole(HEIGHT, WIDTH, "scan.png")
    with open_slide(big_slide) as source:
        assert (source.height, source.width, source.mpp) == (HEIGHT, WIDTH, pytest.approx(MPP))
        top, left, side = ISLANDS[0]
        part = source.read(top - 8, top + 8, left - 8, left + 8)  # read from the one tile it touches
        assert part.shape == (16, 16, 3) and part[:8, :8].mean() > GLASS - 10 > part[8:, 8:, 1].mean(), "glass, pink"


def test_the_napari_reader_opens_the_real_size_slide_lazily(big_slide):
    from napari_cdal._reader import napari_get_image_reader

    reader = napari_get_image_reader(str(big_slide))
    assert reader is not None
    ((levels, meta, kind),) = reader(str(big_slide))
    assert kind == "image" and meta["multiscale"] and meta["scale"] == pytest.approx((MPP, MPP))
    assert tuple(levels[0].shape) == (HEIGHT, WIDTH, 3) and len(levels) == LEVELS
    assert not any(isinstance(level, np.ndarray) for level in levels), "levels are read on demand"


def test_tissue_is_found_on_a_low_resolution_level_and_only_its_blocks_are_planned(big_slide):
    with open_slide(big_slide) as source:
        tissue = detect_tissue(source, MPP)
    assert tissue.factor == pytest.approx(32) and tissue.mask.shape == (HEIGHT // 32, WIDTH // 32)
    assert tissue.area_mm2() == pytest.approx(island_area_mm2(), rel=0.03)
    expected = np.zeros_like(tissue.mask)
    for top, left, side in ISLANDS:
        expected[top // 32 : (top + side) // 32, left // 32 : (left + side) // 32] = True
    assert (tissue.mask != expected).sum() <= 0.03 * expected.sum(), "the islands, not the glass round them"
    halo = int(np.ceil(HALO_UM / MPP))
    planned = plan_blocks(HEIGHT, WIDTH, BLOCK_PX, halo, tissue)
    running = [block for block in planned if block.region is not None]
    assert len(planned) == 40 * 49 and len(running) == 2
    for block, (top, left, side) in zip(running, ISLANDS, strict=True):
        y0, y1, x0, x1 = block.region  # the island with the margin and halo, not the whole 2048-px block
        assert y0 <= top - halo and y1 >= top + side + halo and x0 <= left - halo and x1 >= left + side + halo
        assert (y1 - y0) < BLOCK_PX // 2 + side and (x1 - x0) < BLOCK_PX // 2 + side


def test_a_slide_of_glass_only_or_of_tissue_only_is_not_split_in_two(tmp_path):
    from napari_cdal.engine.slide.tissue import slide_area_mm2

    rng = np.random.default_rng(3)
    glass = np.clip(rng.normal(238, 4, (512, 512, 3)), 0, 255).astype(np.uint8)
    tissue = tissue_island(5, 512)
    for name, image, share in (("glass", glass, 0.0), ("tissue", tissue, 1.0)):
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(
            path, image, tile=(128, 128), photometric="rgb", resolution=(4e4, 4e4), resolutionunit="CENTIMETER"
        )
        with open_slide(path) as source:
            found = detect_tissue(source, MPP)
        assert found.area_mm2() == pytest.approx(share * slide_area_mm2(512, 512, MPP), abs=1e-4), name


def test_a_real_size_slide_is_segmented_only_where_tissue_is(capsys, tiny_model_file, big_slide, tmp_path):
    from conftest import files_in, run
    from PIL import Image

    out = tmp_path / "out"
    code, stdout, err = run(
        capsys, "segment", big_slide, "--model", tiny_model_file, "--out", out, "--geojson", "--measurements"
    )
    assert code == 0, err
    assert files_in(out) == [
        "scan_labels.tif",
        "scan_labels.zarr",
        "scan_nuclei.csv",
        "scan_nuclei.geojson",
        "scan_tissue.png",
    ]
    assert "in 1960 blocks at 0.25 µm/px (1958 of glass skipped; tissue 0.04" in stdout
    assert "of 500 mm² slide)" in stdout
    with Image.open(out / "scan_tissue.png") as png:
        mask = np.asarray(png) > 0
        assert mask.shape == (HEIGHT // 32, WIDTH // 32) and png.info["dpi"][0] == pytest.approx(25_400 / 8, rel=1e-3)
    assert TissueMask(mask, 32, MPP).area_mm2() == pytest.approx(island_area_mm2(), rel=0.03)
    rows = list(csv.DictReader((out / "scan_nuclei.csv").read_text().splitlines()))
    features = json.loads((out / "scan_nuclei.geojson").read_text())["features"]
    ids = {int(row["id"]) for row in rows}
    assert len(rows) > 100 and ids == {f["properties"]["id"] for f in features} == set(range(1, len(rows) + 1))
    halo = int(np.ceil(HALO_UM / MPP))
    seen: dict[int, int] = {}
    with tifffile.TiffFile(out / "scan_labels.tif") as tif:
        counts = np.asarray(tif.pages[0].databytecounts)
        assert tif.series[0].shape == (HEIGHT, WIDTH) and len(tif.series[0].levels) > 5
        assert (counts == 0).sum() > 0.99 * counts.size, "glass is left as empty tiles"
    with open_slide(out / "scan_labels.tif") as labels:
        for top, left, side in ISLANDS:
            window = labels.read(top - halo, top + side + halo, left - halo, left + side + halo)
            found, areas = np.unique(window[window > 0], return_counts=True)
            seen.update(zip(found.tolist(), areas.tolist(), strict=True))
    assert set(seen) == ids, "every nucleus lies on an island: none on glass"
    for row in rows:  # and wholly: its area in the CSV is all found in the islands' windows
        assert seen[int(row["id"])] == pytest.approx(float(row["area_um2"]) / MPP**2, abs=0.5)
        y, x = float(row["centroid_y_px"]), float(row["centroid_x_px"])
        assert any(top <= y < top + side and left <= x < left + side for top, left, side in ISLANDS)


def test_tissue_all_segments_every_block_and_auto_only_those_near_tissue(trained_tiny, tmp_path):
    from napari_cdal.engine.events import run_to_end
    from napari_cdal.engine.slide.stitch import segment_slide

    image = np.full((512, 512, 3), GLASS, np.uint8)
    image[96:224, 96:224] = tissue_island(7, 256)[::2, ::2]  # 64 x 64 µm at 0.5 µm/px, over four 128-px blocks
    path = tmp_path / "glass.tif"
    tifffile.imwrite(
        path, image, tile=(128, 128), photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )
    results = {}
    with open_slide(path) as source:
        for choice in ("auto", "all"):
            results[choice] = run_to_end(
                segment_slide(trained_tiny[0], source, tmp_path / f"{choice}.zarr", 0.5, block=128, tissue=choice)
            )
    auto, every = results["auto"], results["all"]
    assert (auto.blocks, auto.skipped, every.blocks, every.skipped) == (16, 12, 16, 0)
    assert every.tissue is None and every.tissue_mm2 is None and every.slide_mm2 == pytest.approx(0.065536)
    assert auto.tissue_mm2 == pytest.approx(64 * 64 / 1e6, rel=0.1) and auto.n_nuclei > 5
    assert abs(auto.n_nuclei - every.n_nuclei) <= 0.1 * every.n_nuclei, "the same island's nuclei either way"


def test_a_grey_slide_is_all_tissue(tmp_path):
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, np.full((256, 256), 240, np.uint8), tile=(128, 128))
    with open_slide(path) as source:
        assert detect_tissue(source, MPP).mask.all(), "no stain colour to tell tissue by: nothing is skipped"


def test_a_slide_whose_one_block_cannot_fit_in_memory_is_refused_before_any_work(
    capsys, monkeypatch, tiny_model_file, big_slide, tmp_path
):
    from conftest import run

    from napari_cdal.engine import checks

    monkeypatch.setattr(checks, "available_memory", lambda: 2**20)
    code, _, err = run(capsys, "segment", big_slide, "--model", tiny_model_file, "--out", tmp_path / "out")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "scan.tif, one block of 2176 x 2176 px needs about" in err and "close other programs" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
