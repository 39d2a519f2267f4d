"""finetune --regions: corrected regions from a mask image or a GeoJSON, and only they are learned from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from conftest import blob_tile, run
from PIL import Image

from napari_cdal.engine.config import TrainConfig
from napari_cdal.engine.io.regions import read_regions
from napari_cdal.engine.method.model import load_model
from napari_cdal.engine.training import finetune as finetune_module
from napari_cdal.engine.training.corrections import prepare_pairs


def test_a_mask_gives_the_box_of_each_part_and_a_geojson_of_each_polygon(tmp_path) -> None:
    mask = np.zeros((60, 80), np.uint8)
    mask[5:20, 10:30] = 255
    mask[40:50, 60:75] = 1
    mask[20, 30] = 7  # touches the first part diagonally: the same region
    Image.fromarray(mask).save(tmp_path / "regions.png")
    assert read_regions(tmp_path / "regions.png", (60, 80)) == [(5, 21, 10, 31), (40, 50, 60, 75)]
    rectangle = {
        "type": "Feature",
        "properties": {},
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[10.0, 5.0], [30.5, 5.0], [30.5, 20.0], [10.0, 20.0], [10.0, 5.0]]],
        },
    }
    (tmp_path / "regions.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [rectangle]}))
    assert read_regions(tmp_path / "regions.geojson", (60, 80)) == [(5, 20, 10, 31)]


def test_bad_regions_are_named_in_one_line(tmp_path) -> None:
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="holds no non-zero pixel"):
        read_regions(tmp_path / "empty.png", (60, 80))
    with pytest.raises(ValueError, match="is 60 x 80 px but its image is 64 x 80"):
        read_regions(tmp_path / "empty.png", (64, 80))
    (tmp_path / "broken.geojson").write_text("{not json")
    with pytest.raises(ValueError, match="is not a GeoJSON of polygons"):
        read_regions(tmp_path / "broken.geojson", (60, 80))
    (tmp_path / "points.geojson").write_text(
        json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 4]}})
    )
    with pytest.raises(ValueError, match="holds no Polygon"):
        read_regions(tmp_path / "points.geojson", (60, 80))


@pytest.fixture()
def seen(monkeypatch) -> list:
    """The pairs `napari-cdal finetune` hands the engine, gathered as the fine-tune runs."""
    pairs: list = []
    real = finetune_module.finetune

    def watching(model, given, settings, *args, **kwargs):
        pairs.extend(given)
        return real(model, given, settings, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune", watching)
    return pairs


def test_cli_finetune_learns_only_inside_the_regions(capsys, tiny_model_file, tmp_path, seen) -> None:
    tile = blob_tile(16)
    tifffile.imwrite(tmp_path / "tile.tif", tile.image)
    Image.fromarray(tile.instances.astype(np.uint16)).save(tmp_path / "mask.png")
    region = np.zeros(tile.instances.shape, np.uint8)
    region[0:64, 0:64] = 1  # the top-left quarter was corrected; the rest of the mask is not truth
    Image.fromarray(region).save(tmp_path / "region.png")
    out = tmp_path / "tuned.safetensors"
    code, stdout, err = run(
        capsys,
        "finetune",
        tmp_path / "tile.tif",
        "--masks",
        tmp_path / "mask.png",
        "--regions",
        tmp_path / "region.png",
        "--model",
        tiny_model_file,
        "--out",
        out,
        "--iterations",
        "2",
        "--mpp",
        "0.5",
        "--threads",
        "1",
    )
    assert code == 0, err
    assert [pair.regions for pair in seen] == [[(0, 64, 0, 64)]]
    # the loss mask: what training learns from lies inside the region, on the model's grid too
    model = load_model(tiny_model_file)
    prepared = prepare_pairs(seen, model.config, 0.5, TrainConfig(holdout_fraction=0.0))
    assert prepared.regions == [[(0, 64, 0, 64)]]
    weights = np.zeros(tile.instances.shape, bool)
    for y0, y1, x0, x1 in prepared.regions[0]:
        weights[y0:y1, x0:x1] = True
    assert weights.sum() == 64 * 64 and not weights[64:].any() and not weights[:, 64:].any()

    code, _, err = run(
        capsys,
        "finetune",
        tmp_path / "tile.tif",
        "--masks",
        tmp_path / "mask.png",
        "--regions",
        tmp_path / "region.png",
        tmp_path / "region.png",
        "--model",
        tiny_model_file,
        "--out",
        tmp_path / "other.safetensors",
    )
    assert code == 1 and "1 images but 2 --regions" in err and not (tmp_path / "other.safetensors").exists()
    Image.fromarray(region[:100]).save(tmp_path / "small.png")
    code, _, err = run(
        capsys,
        "finetune",
        tmp_path / "tile.tif",
        "--masks",
        tmp_path / "mask.png",
        "--regions",
        tmp_path / "small.png",
        "--model",
        tiny_model_file,
        "--out",
        tmp_path / "other.safetensors",
    )
    assert code == 1 and "is 100 x 128 px but its image is 128 x 128" in err and len(err.strip().splitlines()) == 1


def test_a_review_csv_gives_each_item_s_box_widened_by_the_margin(tmp_path) -> None:
    from napari_cdal.engine.defaults import MIN_REGION_UM, REGION_MARGIN_UM

    path = tmp_path / "tile_review.csv"
    path.write_text(
        "rank,kind,id,y,x,area_um2,score,y0,y1,x0,x1\n"
        "1,nucleus,4,30.5,40.5,20.0,0.9,20,41,30,51\n"
        "2,miss,0,2.0,2.0,3.0,0.5,0,4,0,4\n"
    )
    margin, least = round(REGION_MARGIN_UM / 0.25), round(MIN_REGION_UM / 0.25)
    boxes = read_regions(path, (200, 300), 0.25)
    assert boxes[0] == (20 - margin, 41 + margin, 30 - margin, 51 + margin)
    assert boxes[1] == (0, least, 0, least), "a speck's box at the corner grows inwards to the least side"
    assert read_regions(path, (200, 300), 0.5)[0] == (
        20 - margin // 2,
        41 + margin // 2,
        30 - margin // 2,
        51 + margin // 2,
    )


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("measurements.csv", "id,y,x\n1,2,3\n", "without the box columns y0, y1, x0, x1"),
        (
            "other_review.csv",
            "rank,y0,y1,x0,x1\n1,500,520,10,30\n",
            "outside the 60 x 80 image: was the CSV written for another image",
        ),
        ("empty_review.csv", "rank,y0,y1,x0,x1\n", "holds no item"),
        ("garbled_review.csv", "rank,y0,y1,x0,x1\n1,a,b,c,d\n", "is not a review CSV of segment --review"),
    ],
)
def test_a_bad_review_csv_is_refused_in_one_line(tmp_path, name, text, message) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_regions(path, (60, 80))


def test_the_loop_is_scripted_with_segment_review_and_finetune_regions(capsys, tiny_model_file, tmp_path, seen) -> None:
    import csv

    from napari_cdal.engine.defaults import REGION_MARGIN_UM

    tile = blob_tile(16)
    tifffile.imwrite(tmp_path / "tile.tif", tile.image)
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        "segment",
        tmp_path / "tile.tif",
        "--model",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--out",
        out,
        "--samples",
        "2",
        "--review",
        "5",
        "--threads",
        "1",
    )
    assert code == 0, err
    rows = list(csv.DictReader((out / "tile_review.csv").read_text().splitlines()))
    # the pathologist corrects those items in the labels (here: the truth) and fine-tunes on their boxes
    Image.fromarray(tile.instances.astype(np.uint16)).save(tmp_path / "corrected.png")
    code, stdout, err = run(
        capsys,
        "finetune",
        tmp_path / "tile.tif",
        "--masks",
        tmp_path / "corrected.png",
        "--regions",
        out / "tile_review.csv",
        "--model",
        tiny_model_file,
        "--out",
        tmp_path / "tuned.safetensors",
        "--iterations",
        "2",
        "--mpp",
        "0.5",
        "--threads",
        "1",
    )
    assert code == 0, err
    margin = round(REGION_MARGIN_UM / 0.5)
    first = tuple(int(rows[0][c]) for c in ("y0", "y1", "x0", "x1"))
    assert len(seen[0].regions) == len(rows) == 5
    assert seen[0].regions[0][0] <= max(0, first[0] - margin) and seen[0].regions[0][1] >= min(128, first[1] + margin)
    # five regions: one whole region is held back, and the verdict says whether to use the new model
    assert "check: on the part you corrected and we held back: " in stdout and "beyond the noise" in stdout
