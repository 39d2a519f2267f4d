"""The labels store holds together: a run killed at any point of a block's commit resumes to the same labels and
detections, and a damaged store is named (block and fix) before any block runs, never read as a hole."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TILED, blob_mosaic, message_lines

from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.slide import stitch
from napari_cdal.engine.slide.block_detections import block_detections_path
from napari_cdal.engine.slide.source import open_slide
from napari_cdal.engine.slide.store import StoreError, box_chunks, chunk_file, level_roots, remove_store, store_levels

BLOCK, HALO_UM, MPP = 96, 10.0, 0.5
KILLED_BLOCK = 4
"""The centre block of the 3 x 3: its halo reaches into all eight others."""


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """The blob mosaic as a tiled BigTIFF (conftest.blob_mosaic)."""
    path = tmp_path_factory.mktemp("store") / "slide.tif"
    blob_mosaic(path, **TILED)
    return path


def _run(model, path, store, **kw):
    with open_slide(path) as source:
        return run_to_end(
            stitch.segment_slide(
                model, source, store, MPP, block=BLOCK, halo_um=HALO_UM, detections=True, pyramid_min=64, **kw
            )
        )


@pytest.fixture(scope="module")
def straight(trained_tiny, mosaic, tmp_path_factory):
    """A run never stopped: its labels and the number of nuclei."""
    result = _run(trained_tiny[0], mosaic, tmp_path_factory.mktemp("straight") / "labels.zarr")
    return np.asarray(store_levels(result.store)[0][:]), result.n_nuclei


def _consistent(store) -> np.ndarray:
    """The store's labels, after checking that its detections are exactly its nuclei (each once, same areas)."""
    labels = np.asarray(store_levels(store)[0][:])
    geojson, table = Path(store).with_suffix(".geojson"), Path(store).with_suffix(".csv")
    stitch.write_slide_detections(store, geojson, table)
    features = json.loads(geojson.read_text())["features"]
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    assert sorted(f["properties"]["id"] for f in features) == ids.tolist(), "every nucleus once in the GeoJSON"
    assert [int(row["id"]) for row in rows] == ids.tolist(), "every nucleus once in the measurements"
    by_id = {f["properties"]["id"]: f["properties"]["measurements"]["area_um2"] for f in features}
    np.testing.assert_allclose([by_id[i] for i in ids.tolist()], areas * MPP**2)
    return labels


def _killed_at(point: str, monkeypatch):
    """Make the commit of block KILLED_BLOCK raise at `point`, with what comes before it in the commit written.

    Each writer runs once per block, in block order, so its call number is the block's index."""

    class Killed(RuntimeError):
        pass

    real = {
        name: getattr(stitch, name)
        for name in ("_write_labels", "_update_levels", "save_block_detections", "_mark_done")
    }
    calls = dict.fromkeys(real, -1)

    def reached(name: str) -> bool:
        calls[name] += 1
        return calls[name] == KILLED_BLOCK

    def write_labels(levels, window, region):
        if reached("_write_labels") and point == "level 0, half written":
            half = window.shape[0] // 2
            levels[0][region[0] : region[0] + half, region[2] : region[3]] = window[:half]
            raise Killed(point)
        real["_write_labels"](levels, window, region)

    def update_levels(levels, window, region):
        if reached("_update_levels") and point == "pyramid, one level written":
            real["_update_levels"](levels[:2], window, region)
            raise Killed(point)
        real["_update_levels"](levels, window, region)

    def save_detections(*args):
        now = reached("save_block_detections")
        if now and point == "before the detections":
            raise Killed(point)
        real["save_block_detections"](*args)
        if now and point == "after the detections":
            raise Killed(point)

    def mark_done(labels, done, next_id):
        if reached("_mark_done") and point == "before the done mark":
            raise Killed(point)
        real["_mark_done"](labels, done, next_id)

    for name, replacement in (
        ("_write_labels", write_labels),
        ("_update_levels", update_levels),
        ("save_block_detections", save_detections),
        ("_mark_done", mark_done),
    ):
        monkeypatch.setattr(stitch, name, replacement)
    return Killed


@pytest.mark.parametrize(
    "point",
    [
        "level 0, half written",
        "pyramid, one level written",
        "before the detections",
        "after the detections",
        "before the done mark",
    ],
)
def test_a_run_killed_at_any_point_of_a_commit_resumes_to_complete_consistent_labels_and_detections(
    trained_tiny, mosaic, straight, tmp_path, monkeypatch, point
):
    import zarr

    model = trained_tiny[0]
    store = tmp_path / "labels.zarr"
    with monkeypatch.context() as patch:
        killed = _killed_at(point, patch)
        with pytest.raises(killed):
            _run(model, mosaic, store)
    assert zarr.open_array(store, mode="r").attrs["done"] == list(range(KILLED_BLOCK)), "done is written last"
    result = _run(model, mosaic, store)
    labels = _consistent(store)
    np.testing.assert_array_equal(labels, straight[0])
    assert result.n_nuclei == straight[1] == int(labels.max())
    levels = store_levels(store)
    assert len(levels) == 4
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(level[:], labels[:: 2**k, :: 2**k])


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_a_damaged_store_is_named_with_its_block_and_the_fix_and_overwrite_starts_afresh(
    capsys, tiny_model_file, mosaic, straight, tmp_path, monkeypatch, damage
):
    from conftest import run

    monkeypatch.setattr("napari_cdal.engine.slide.store.CHUNK_PX", 64)  # 4 x 4 chunks: each block touches a few
    monkeypatch.setattr(stitch, "segment_slide", functools.partial(stitch.segment_slide, block=BLOCK))
    out = tmp_path / "out"
    args = ["segment", mosaic, "--model", tiny_model_file, "--out", out, "--slide", "--geojson", "--tissue", "all"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    store = out / "slide_labels.zarr"
    levels = store_levels(store)
    chunk = (3, 1)
    path = chunk_file(level_roots(store, len(levels))[0], levels[0], chunk)
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"not a chunk at all")
    halo = int(np.ceil(32.0 / MPP))
    planned = stitch.plan_blocks(256, 256, BLOCK, halo, None)
    first = next(index for index, block in enumerate(planned) if chunk in set(box_chunks(block.region, (64, 64))))
    (out / "slide_labels.tif").unlink()
    (out / "slide_nuclei.geojson").unlink()
    code, _, err = run(capsys, *args)
    assert code == 1 and len(message_lines(err)) == 1, err
    assert f"is damaged: block {first} (rows" in err and "c/3/1 is " in err and "--overwrite" in err
    assert ("missing" if damage == "deleted" else "unreadable") in err
    code, _, err = run(capsys, *args, "--overwrite")
    assert code == 0, err
    _consistent(store)


def test_resume_refuses_a_done_block_whose_detections_are_gone(trained_tiny, mosaic, tmp_path):
    store = tmp_path / "labels.zarr"
    _run(trained_tiny[0], mosaic, store)
    block_detections_path(store, 2).unlink()
    with pytest.raises(StoreError, match=r"block 2 is done but its detections .* are missing.*--overwrite"):
        _run(trained_tiny[0], mosaic, store)


def test_only_a_labels_store_is_ever_removed(tmp_path):
    folder = tmp_path / "slide_labels.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="is not a labels store"):
        remove_store(folder)
    assert (folder / "notes.txt").read_text() == "mine"
