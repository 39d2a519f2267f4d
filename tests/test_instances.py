"""Tests for napari_cdal.engine.segment.instances: splitting nuclei, core targets and relabelling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_cdal.engine.labels import relabel_sequential_uint
from napari_cdal.engine.segment.instances import (
    border_distance,
    core_targets,
    instances_from_probability,
)

_EIGHT = np.ones((3, 3), dtype=bool)


def _touching_discs(
    shape: tuple[int, int] = (40, 48),
    centres: tuple[tuple[int, int], ...] = ((20, 16), (20, 30)),
    radius: float = 8.0,
) -> np.ndarray:
    """Label image of discs that overlap; each overlapping pixel goes to the nearest centre."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dist = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres])
    nearest = dist.argmin(axis=0)
    return np.where(dist.min(axis=0) <= radius, nearest + 1, 0).astype(np.int32)


def _overlap_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel counts of every (id in a, id in b) pair, background included at index 0."""
    table = np.zeros((int(a.max()) + 1, int(b.max()) + 1), dtype=np.int64)
    np.add.at(table, (a.ravel(), b.ravel()), 1)
    return table


def _assert_matches(out: np.ndarray, truth: np.ndarray, min_fraction: float) -> None:
    """Each output id is mostly inside one distinct truth nucleus, and vice versa."""
    table = _overlap_matrix(out, truth)[1:, 1:]
    assert table.shape[0] == table.shape[1]
    best = table.argmax(axis=1)
    assert sorted(best.tolist()) == list(range(table.shape[1]))
    for i, j in enumerate(best):
        assert table[i, j] >= min_fraction * np.count_nonzero(truth == j + 1)


def test_touching_discs_split_with_cores() -> None:
    truth = _touching_discs()
    foreground = np.where(truth > 0, 0.9, 0.05)
    core = core_targets(truth).astype(np.float64)
    out = instances_from_probability(foreground, core)
    assert out.dtype == np.uint32 and out.shape == truth.shape
    assert int(out.max()) == 2
    assert np.array_equal(out > 0, truth > 0)  # no foreground pixel lost or added
    _assert_matches(out, truth, min_fraction=0.9)


def test_small_core_specks_seed_no_nucleus_of_their_own() -> None:
    # one disc whose core has a 4-pixel speck beside it: a marker each splits the disc in two;
    # with min_core_area 5 the speck seeds nothing and the disc stays one nucleus, whole
    truth = _touching_discs(centres=((20, 20),), radius=9.0)
    foreground = np.where(truth > 0, 0.9, 0.05)
    core = core_targets(truth).astype(np.float64)
    core[18:23, 23:25] = 0.0
    core[19:21, 25:27] = 0.9
    split = instances_from_probability(foreground, core, min_area=1)
    kept = instances_from_probability(foreground, core, min_area=1, min_core_area=5)
    assert int(split.max()) == 2
    assert int(kept.max()) == 1 and np.array_equal(kept > 0, truth > 0)


def test_core_threshold_is_separate_from_the_foreground_threshold() -> None:
    truth = _touching_discs()
    foreground = np.where(truth > 0, 0.9, 0.05)
    core = core_targets(truth) * 0.55
    assert int(instances_from_probability(foreground, core, core_threshold=0.5).max()) == 2
    # no core above 0.6: markers come from nowhere, the whole mask is one unseeded component
    assert int(instances_from_probability(foreground, core, core_threshold=0.6).max()) == 1


def test_touching_discs_split_from_mask_alone() -> None:
    # Centres 14 px apart, radius 8: the union has a neck about 2 * sqrt(64 - 49) ~ 7.7 px wide,
    # so its distance transform has one maximum per disc (value ~8) and a saddle in between.
    truth = _touching_discs()
    out = instances_from_probability((truth > 0).astype(np.float32))
    assert int(out.max()) == 2
    assert np.array_equal(out > 0, truth > 0)
    _assert_matches(out, truth, min_fraction=0.9)


def test_single_disc_is_one_nucleus() -> None:
    truth = _touching_discs(centres=((20, 24),))
    out = instances_from_probability((truth > 0).astype(np.float32))
    assert np.array_equal(out, truth.astype(np.uint32))


def test_component_without_core_is_kept_as_its_own_nucleus() -> None:
    # Disc 1 has a core, disc 2 (far away) has none: disc 2 still becomes nucleus 2.
    truth = _touching_discs(centres=((12, 12), (28, 36)), radius=6)
    core = (truth == 1) & (core_targets(truth))
    out = instances_from_probability((truth > 0).astype(float), core.astype(float))
    assert np.array_equal(out, truth.astype(np.uint32))


def test_tiny_watershed_fragment_is_merged_not_dropped() -> None:
    # A spurious one-pixel core on the rim of a disc floods only a few rim pixels (< min_area),
    # so it is merged back: one nucleus, every foreground pixel kept.
    truth = _touching_discs(centres=((20, 24),))
    core = core_targets(truth).astype(float)
    core[20, 16] = 1.0  # rim pixel, 8 px left of the centre
    out = instances_from_probability((truth > 0).astype(float), core, min_area=8)
    assert int(out.max()) == 1
    assert np.array_equal(out > 0, truth > 0)


def test_ids_are_consecutive_and_small_specks_dropped() -> None:
    foreground = np.zeros((30, 30))
    foreground[2:8, 2:8] = 1.0  # 36 px nucleus
    foreground[20:26, 20:26] = 1.0  # 36 px nucleus
    foreground[15:17, 2:4] = 1.0  # 4 px speck < min_area = 8
    out = instances_from_probability(foreground, min_area=8)
    assert out.dtype == np.uint32
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    assert np.count_nonzero(out) == 72
    assert not out[15:17, 2:4].any()


def test_small_holes_are_filled() -> None:
    truth = _touching_discs(centres=((20, 24),))
    foreground = (truth > 0).astype(float)
    foreground[20, 24] = 0.0  # one-pixel hole in the middle
    out = instances_from_probability(foreground)
    assert out[20, 24] == 1
    assert np.array_equal(out > 0, truth > 0)


def test_many_touching_nuclei_round_trip_through_core_targets() -> None:
    # A 6 x 6 grid of discs (radius 6, spacing 11) that all touch their neighbours: feeding the
    # exact foreground and core_targets back must give back every nucleus. Hole filling is off
    # here because four touching discs enclose a small background pocket.
    centres = tuple((8 + 11 * i, 8 + 11 * j) for i in range(6) for j in range(6))
    truth = _touching_discs(shape=(76, 76), centres=centres, radius=6.0)
    core = core_targets(truth)
    foreground = (truth > 0).astype(float)
    filled = instances_from_probability(foreground, core.astype(float))
    assert np.all(filled[truth > 0] > 0)
    out = instances_from_probability(foreground, core.astype(float), max_hole_area=0)
    assert int(out.max()) == 36
    assert np.array_equal(out > 0, truth > 0)
    _assert_matches(out, truth, min_fraction=0.95)


def test_core_targets_of_touching_discs() -> None:
    truth = _touching_discs()
    core = core_targets(truth)
    assert core.dtype == bool and core.shape == truth.shape
    components, n = ndi.label(core, structure=_EIGHT)
    assert n == 2
    for k in (1, 2):
        inside = np.unique(truth[components == k])
        assert inside.size == 1 and inside[0] > 0  # each core lies inside one disc
    assert core[20, 16] and core[20, 30]  # the centres are core
    assert not core[20, 8] and not core[20, 23]  # left edge and the contact line are not


def test_core_targets_hand_computed_squares() -> None:
    # 5x5 square: inner boundary = outer ring, interior 3x3 with distances 1 (ring) and 2 (centre);
    # largest = 2, threshold 1 -> core is the whole 3x3 interior.
    # 7x7 square: interior distances 1, 2, 3 from its rim inwards; largest 3, threshold 1.5 ->
    # core is the central 3x3.
    labels = np.zeros((12, 20), dtype=np.uint16)
    labels[1:6, 1:6] = 4
    labels[2:9, 10:17] = 9
    expected = np.zeros(labels.shape, dtype=bool)
    expected[2:5, 2:5] = True
    expected[4:7, 12:15] = True
    assert np.array_equal(core_targets(labels), expected)


def test_core_targets_of_tiny_nuclei_are_not_empty() -> None:
    labels = np.zeros((8, 8), dtype=np.int64)
    labels[1, 1] = 1  # 1 px
    labels[4, 4:6] = 2  # 1 x 2
    labels[6:8, 0:2] = 3  # 2 x 2
    core = core_targets(labels)
    for k in (1, 2, 3):
        assert core[labels == k].any()
    assert not core[labels == 0].any()


def test_core_targets_empty_and_bad_input() -> None:
    assert not core_targets(np.zeros((5, 5), dtype=np.int32)).any()
    with pytest.raises(ValueError, match="instance_labels.*2-D"):
        core_targets(np.zeros((2, 5, 5), dtype=np.int32))
    with pytest.raises(ValueError, match="instance_labels.*integer"):
        core_targets(np.zeros((5, 5), dtype=np.float32))


def test_relabel_sequential_uint() -> None:
    labels = np.array([[0, 900, 5], [5, 0, 70_000]], dtype=np.int64)
    out = relabel_sequential_uint(labels)
    assert out.dtype == np.uint16
    assert out.tolist() == [[0, 2, 1], [1, 0, 3]]  # order of the original ids is kept
    assert relabel_sequential_uint(np.arange(65_535, dtype=np.int32)).dtype == np.uint16  # N 65534
    wide = relabel_sequential_uint(np.arange(1, 65_536, dtype=np.int32))  # N = 65535
    assert wide.dtype == np.uint32 and int(wide.max()) == 65_535
    huge = relabel_sequential_uint(np.array([0, 2**62, 3], dtype=np.uint64))
    assert huge.tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match="labels.*integer"):
        relabel_sequential_uint(np.zeros(3, dtype=float))


def test_instances_bad_input() -> None:
    good = np.zeros((10, 10))
    with pytest.raises(ValueError, match="foreground.*2-D"):
        instances_from_probability(np.zeros((3, 10, 10)))
    with pytest.raises(ValueError, match="core must have the shape"):
        instances_from_probability(good, np.zeros((10, 11)))
    with pytest.raises(ValueError, match=r"foreground.*\[0, 1\]"):
        instances_from_probability(good + 3.0)
    with pytest.raises(ValueError, match="foreground.*\\[0, 1\\]"):
        instances_from_probability(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="threshold"):
        instances_from_probability(good, threshold=1.0)
    with pytest.raises(ValueError, match="min_area"):
        instances_from_probability(good, min_area=-1)
    with pytest.raises(ValueError, match="min_distance"):
        instances_from_probability(good, min_distance=0)
    empty = instances_from_probability(good)
    assert empty.dtype == np.uint32 and empty.shape == (10, 10) and not empty.any()


def test_large_tile_is_recovered_exactly() -> None:
    # About 1000 non-overlapping nuclei (radius 3-8 px) on a 1000 x 1000 tile.
    rng = np.random.default_rng(0)
    centres = np.stack(np.meshgrid(np.arange(16, 1000, 31), np.arange(16, 1000, 31)), -1)
    centres = centres.reshape(-1, 2) + rng.integers(-4, 5, size=(centres.size // 2, 2))
    radii = rng.uniform(3, 8, size=len(centres))
    truth = np.zeros((1000, 1000), dtype=np.int32)
    yy, xx = np.mgrid[-8:9, -8:9]
    for k, ((cy, cx), r) in enumerate(zip(centres, radii, strict=True), start=1):
        disc = yy**2 + xx**2 <= r**2
        truth[cy - 8 : cy + 9, cx - 8 : cx + 9][disc] = k
    core = core_targets(truth).astype(np.float32)
    foreground = (truth > 0).astype(np.float32)
    out = instances_from_probability(foreground, core)
    assert int(out.max()) == len(centres)
    assert np.array_equal(out > 0, truth > 0)


def test_small_nuclei_stay_only_where_the_model_is_sure() -> None:
    from napari_cdal.engine.segment.instances import drop_unsure_small

    labels = np.zeros((20, 20), dtype=np.uint32)
    labels[1:3, 1:3] = 1  # 4 px, unsure: dropped
    labels[5:7, 5:7] = 2  # 4 px, sure: kept
    labels[10:16, 10:16] = 3  # 36 px, unsure but large: kept
    foreground = np.full(labels.shape, 0.6, dtype=np.float32)
    foreground[5:7, 5:7] = 0.9
    out = drop_unsure_small(labels, foreground, small_area=10, floor=0.7)
    assert out.max() == 2
    assert (out[1:3, 1:3] == 0).all()
    assert (out[5:7, 5:7] == 1).all() and (out[10:16, 10:16] == 2).all()
    assert out.dtype == labels.dtype
    assert drop_unsure_small(labels, foreground, small_area=0, floor=0.7) is labels


def test_border_distance_hand_computed_squares() -> None:
    # 7x7 square: interior distances 1, 2, 3 from its rim inwards, 0 on the rim; largest 3.
    labels = np.zeros((10, 10), dtype=np.uint16)
    labels[1:8, 1:8] = 3
    labels[9, 9] = 5  # a single pixel has no interior: 1 throughout
    distance = border_distance(labels)
    assert distance.dtype == np.float32
    assert distance[4, 4] == 1.0 and distance[1, 4] == 0.0 and distance[0, 0] == 0.0
    assert np.isclose(distance[2, 4], 1 / 3) and np.isclose(distance[3, 4], 2 / 3)
    assert distance[9, 9] == 1.0
    assert np.array_equal(core_targets(labels), (labels > 0) & (distance >= 0.5))


def test_touching_discs_split_along_a_distance_map_where_the_cores_merge() -> None:
    truth = _touching_discs()
    merged_cores = ndi.binary_dilation(core_targets(truth), iterations=4) & (truth > 0)
    assert ndi.label(merged_cores, structure=_EIGHT)[1] == 1
    joined = instances_from_probability((truth > 0).astype(float), merged_cores.astype(float), 0.5, 1)
    assert joined.max() == 1
    distance = border_distance(truth)
    split = instances_from_probability((truth > 0).astype(float), distance, 0.5, 1, core_threshold=0.5, centre=distance)
    _assert_matches(split, truth, 0.9)
