"""Review's queue (engine.segment.review): misses, merges and specks on constructed labels and maps."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import tifffile
from conftest import files_in, run

from napari_cdal.engine.segment.review import (
    KINDS,
    MISS_FEATURES,
    NUCLEUS_FEATURES,
    REVIEW_SETTINGS,
    rank_candidates,
    review_candidates,
    review_items,
    review_table,
    score_candidates,
)

MPP = 0.25
SIZE = 160


def disk(centre: tuple[float, float], radius: float, shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """A filled disk as a boolean mask."""
    y, x = np.ogrid[: shape[0], : shape[1]]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two clean round nuclei (ids 1, 2), one merge of two touching round nuclei (id 3), and a missed one.

    The merge's core channel has two separate blobs; the miss is a blob of sub-threshold foreground
    (0.4) with high uncertainty that no label covers.
    """
    labels = np.zeros((SIZE, SIZE), np.int32)
    foreground = np.zeros((SIZE, SIZE), np.float32)
    core = np.zeros((SIZE, SIZE), np.float32)
    uncertainty = np.full((SIZE, SIZE), 0.02, np.float32)
    for nucleus, centre in ((1, (30, 30)), (2, (30, 120))):
        labels[disk(centre, 14)] = nucleus
        foreground[disk(centre, 14)] = 0.98
        core[disk(centre, 7)] = 0.95
    merged = disk((110, 40), 14) | disk((110, 64), 14)
    labels[merged] = 3
    foreground[merged] = 0.97
    core[disk((110, 40), 6) | disk((110, 64), 6)] = 0.95
    missed = disk((115, 125), 12)
    foreground[missed] = 0.4
    uncertainty[missed] = 0.8
    return labels, np.stack([foreground, core]), uncertainty


def test_review_lists_a_constructed_miss_and_a_constructed_merge() -> None:
    labels, probability, uncertainty = scene()
    items = review_items(labels, probability, uncertainty, MPP)
    kinds = {item.kind for item in items}
    assert kinds == {"nucleus", "merge", "miss"}, items
    merge = next(item for item in items if item.kind == "merge")
    assert merge.id == 3 and merge.area_um2 == pytest.approx((labels == 3).sum() * MPP**2)
    assert {item.id for item in items if item.kind == "nucleus"} == {1, 2}
    misses = [item for item in items if item.kind == "miss"]
    assert len(misses) == 1 and misses[0].id == 0
    assert misses[0].y == pytest.approx(115, abs=1) and misses[0].x == pytest.approx(125, abs=1)
    assert 0.5 * disk((115, 125), 12).sum() * MPP**2 < misses[0].area_um2 <= disk((115, 125), 12).sum() * MPP**2
    y0, y1, x0, x1 = misses[0].box
    assert y0 <= 115 < y1 and x0 <= 125 < x1
    clean = [item for item in items if item.kind == "nucleus"]
    assert all(item.score < merge.score for item in clean), "a merge is likelier wrong than a clean round nucleus"
    assert all(item.score < misses[0].score for item in clean), "so is a doubtful blob nothing covers"
    assert [item.rank for item in items] == list(range(1, len(items) + 1))
    assert [item.score for item in items] == sorted((item.score for item in items), reverse=True)


def test_one_core_blob_and_no_doubt_make_no_merge_and_no_miss() -> None:
    labels, probability, uncertainty = scene()
    probability[1][labels == 3] = 0.0
    probability[1][disk((110, 52), 6)] = 0.95  # one core in the middle: one nucleus of odd shape
    probability[0][disk((115, 125), 12)] = 0.05
    uncertainty[disk((115, 125), 12)] = 0.02
    kinds = [item.kind for item in review_items(labels, probability, uncertainty, MPP)]
    assert "miss" not in kinds
    assert kinds.count("merge") == 0 or REVIEW_SETTINGS.merge_min_um2 < (labels == 3).sum() * MPP**2


def test_without_uncertainty_the_miss_is_found_by_its_foreground() -> None:
    labels, probability, _ = scene()
    items = review_items(labels, probability, None, MPP)
    assert [item.kind for item in items].count("miss") == 1
    assert all(np.isfinite(item.score) for item in items)


def test_an_error_map_flags_a_miss_and_raises_a_nucleus() -> None:
    labels, probability, uncertainty = scene()
    quiet = disk((140, 130), 10)
    error_map = np.zeros(labels.shape, np.float32)
    error_map[quiet] = 0.9  # a place nothing else doubts
    before = {
        item.id: item.score
        for item in review_items(labels, probability, uncertainty, MPP, error_map)
        if item.kind != "miss"
    }
    assert any(
        item.kind == "miss" and quiet[round(item.y), round(item.x)]
        for item in review_items(labels, probability, uncertainty, MPP, error_map)
    )
    error_map[labels == 2] = 1.0
    after = {
        item.id: item.score
        for item in review_items(labels, probability, uncertainty, MPP, error_map)
        if item.kind != "miss"
    }
    assert after[2] > before[2] and after[1] == pytest.approx(before[1])
    assert not any(
        quiet[round(item.y), round(item.x)]
        for item in review_items(labels, probability, uncertainty, MPP)
        if item.kind == "miss"
    )


def small_and_large(speck_side: int = 10, side: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A speck (id 1, 6.25 µm²) and a nucleus (id 2, 36 µm²) of the same maps inside: equal features but area."""
    labels = np.zeros((64, 64), np.int32)
    labels[4 : 4 + speck_side, 4 : 4 + speck_side] = 1
    labels[30 : 30 + side, 30 : 30 + side] = 2
    probability = np.stack([np.where(labels > 0, 0.9, 0.0), np.where(labels > 0, 0.9, 0.0)]).astype(np.float32)
    uncertainty = np.where(labels > 0, 0.6, 0.0).astype(np.float32)
    return labels, probability, uncertainty


def test_specks_rank_below_non_specks_of_equal_score() -> None:
    labels, probability, uncertainty = small_and_large()
    # weights on the uncertainty alone: the speck and the nucleus get the same chance of being wrong
    only_uncertainty = tuple(3.0 if name == "uncertainty" else 0.0 for name in NUCLEUS_FEATURES)
    flat = replace(REVIEW_SETTINGS, nucleus_weights=(0.0, *only_uncertainty), speck_weight=1.0)
    candidates = review_candidates(labels, probability, uncertainty, MPP, settings=flat)
    scores = score_candidates(candidates, flat)
    assert scores[0] == pytest.approx(scores[1]), "equal features, equal score"
    assert candidates.id[rank_candidates(candidates, scores, flat)].tolist() == [2, 1], "the speck comes after"
    down = replace(flat, speck_weight=0.2)
    items = review_items(labels, probability, uncertainty, MPP, settings=down)
    assert [item.id for item in items] == [2, 1]
    assert items[1].score == pytest.approx(0.2 * items[0].score), "a speck's score is multiplied down"


def test_a_doubtful_nucleus_comes_before_a_far_more_doubtful_speck() -> None:
    labels, probability, uncertainty = small_and_large()
    uncertainty[labels == 1] = 0.95
    uncertainty[labels == 2] = 0.8
    items = review_items(labels, probability, uncertainty, MPP)
    assert [item.id for item in items] == [2, 1]
    assert items[1].score <= REVIEW_SETTINGS.speck_weight, "a speck never scores above the speck weight"
    uncertainty[labels == 2] = 0.6  # a nucleus hardly in doubt may still come after a surely wrong speck
    assert review_items(labels, probability, uncertainty, MPP)[0].id == 1


def test_the_table_holds_the_csv_columns_and_count_cuts_the_queue() -> None:
    labels, probability, uncertainty = scene()
    items = review_items(labels, probability, uncertainty, MPP, count=3)
    table = review_table(items)
    assert list(table) == ["rank", "kind", "id", "y", "x", "area_um2", "score", "y0", "y1", "x0", "x1"]
    assert [tuple(table[c][0] for c in ("y0", "y1", "x0", "x1"))] == [items[0].box]
    assert table["rank"].tolist() == [1, 2, 3] and len(items) == 3
    assert review_table([])["rank"].shape == (0,)
    empty = review_items(np.zeros((32, 32), np.int32), np.zeros((2, 32, 32), np.float32), None, MPP)
    assert empty == []


def test_weights_match_their_features() -> None:
    for weights, names in (
        (REVIEW_SETTINGS.nucleus_weights, NUCLEUS_FEATURES),
        (REVIEW_SETTINGS.nucleus_weights_no_uncertainty, NUCLEUS_FEATURES),
        (REVIEW_SETTINGS.miss_weights, MISS_FEATURES),
        (REVIEW_SETTINGS.miss_weights_no_uncertainty, MISS_FEATURES),
    ):
        assert len(weights) == len(names) + 1


def test_mismatched_maps_are_refused() -> None:
    labels, probability, uncertainty = scene()
    with pytest.raises(ValueError, match="uncertainty"):
        review_items(labels, probability, uncertainty[:10], MPP)
    with pytest.raises(ValueError, match="probability"):
        review_items(labels, probability[:, :10], uncertainty, MPP)


# --- segment --review ----------------------------------------------------------------------------


def test_segment_review_csv_agrees_with_the_labels(capsys, tiny_model_file, blob_images, tmp_path) -> None:
    tif, _, _ = blob_images
    out = tmp_path / "out"
    args = ("segment", tif, "--model", tiny_model_file, "--mpp", "0.5", "--out", out, "--samples", "2")
    code, _, err = run(capsys, *args, "--review", "6")
    assert code == 0, err
    assert files_in(out) == ["tile_labels.tif", "tile_review.csv"]
    labels = tifffile.imread(out / "tile_labels.tif")
    rows = list(csv.DictReader((out / "tile_review.csv").read_text().splitlines()))
    assert rows and list(rows[0]) == ["rank", "kind", "id", "y", "x", "area_um2", "score", "y0", "y1", "x0", "x1"]
    assert [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1)) and len(rows) == 6
    scores = [float(row["score"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:
        kind, nucleus, y, x = row["kind"], int(row["id"]), float(row["y"]), float(row["x"])
        assert kind in KINDS
        if kind == "miss":
            assert nucleus == 0 and float(row["area_um2"]) >= REVIEW_SETTINGS.miss_min_um2
            continue
        inside = labels == nucleus
        assert inside.any(), f"nucleus {nucleus} of the CSV is not in the labels"
        rows_at, cols_at = np.nonzero(inside)
        assert abs(rows_at.mean() - y) < 0.01 and abs(cols_at.mean() - x) < 0.01
        assert float(row["area_um2"]) == pytest.approx(inside.sum() * 0.5 * 0.5, abs=1e-3)
        box = tuple(int(row[column]) for column in ("y0", "y1", "x0", "x1"))
        assert box == (rows_at.min(), rows_at.max() + 1, cols_at.min(), cols_at.max() + 1)
    written = (out / "tile_review.csv").read_bytes()
    code, _, err = run(capsys, *args, "--review", "6")
    assert code == 1 and "already exist" in err and (out / "tile_review.csv").read_bytes() == written
    code, _, err = run(capsys, *args, "--review", "2", "--overwrite")
    assert code == 0, err
    assert len((out / "tile_review.csv").read_text().splitlines()) == 3


def test_review_is_refused_for_slides_before_any_work(capsys, monkeypatch, blob_images, tmp_path) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("napari_cdal.cli.common.load_model", refuse)
    code, _, err = run(capsys, "segment", blob_images[0], "--slide", "--review", "5", "--out", tmp_path / "out")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "leave out --review" in lines[0] and "whole slide" in lines[0]
    assert files_in(tmp_path / "out") == []


def test_review_is_refused_for_volumes_before_any_work(capsys, monkeypatch, tmp_path) -> None:
    from conftest import synthetic_volume, volume_affine

    from napari_cdal.engine.io.volumes import write_volume

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("napari_cdal.cli.common.load_model", refuse)
    volume = tmp_path / "head.nii.gz"
    write_volume(volume, synthetic_volume(0)[0], volume_affine())
    code, _, err = run(capsys, "segment", volume, "--review", "5", "--out", tmp_path / "out")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "--review" in lines[0] and "2-D images" in lines[0]
    assert files_in(tmp_path / "out") == []
