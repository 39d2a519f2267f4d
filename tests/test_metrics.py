"""Tests for napari_cdal.engine.segment.metrics: hand-worked Dice, IoU, AJI and PQ cases."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cdal.engine.segment.metrics import (
    aggregated_jaccard_index,
    dice,
    iou,
    panoptic_quality,
    score_segmentation,
)


def _square(image: np.ndarray, label: int, row: int, col: int, height: int, width: int) -> None:
    image[row : row + height, col : col + width] = label


def _mixed_case() -> tuple[np.ndarray, np.ndarray]:
    """One shifted, one exact, one missed nucleus and one false positive (worked out below)."""
    truth = np.zeros((12, 16), dtype=np.int32)
    pred = np.zeros((12, 16), dtype=np.int32)
    _square(truth, 1, 0, 0, 4, 4)  # G1: 16 px
    _square(truth, 2, 6, 0, 2, 2)  # G2: 4 px
    _square(truth, 3, 6, 10, 2, 2)  # G3: 4 px, missed
    _square(pred, 5, 0, 1, 4, 4)  # S5 = G1 shifted one column: inter 12, union 20, IoU 0.6
    _square(pred, 9, 6, 0, 2, 2)  # S9 = G2 exactly: IoU 1
    _square(pred, 4, 10, 14, 2, 2)  # S4: false positive, 4 px
    return pred, truth


def test_two_shifted_small_squares() -> None:
    # Two 2x2 nuclei, each predicted shifted by one pixel: overlap 2, union 6, IoU 1/3 each.
    # AJI = (2 + 2) / (6 + 6) = 1/3.  No IoU > 0.5, so TP = 0, FP = FN = 2 and PQ = DQ = SQ = 0.
    # Foreground: 8 px each, intersection 4 -> Dice = 8/16 = 0.5, IoU = 4/12 = 1/3.
    truth = np.zeros((6, 8), dtype=np.uint8)
    pred = np.zeros((6, 8), dtype=np.uint8)
    _square(truth, 1, 0, 0, 2, 2)
    _square(truth, 2, 3, 4, 2, 2)
    _square(pred, 1, 0, 1, 2, 2)
    _square(pred, 2, 4, 4, 2, 2)
    assert aggregated_jaccard_index(pred, truth) == pytest.approx(1 / 3)
    assert panoptic_quality(pred, truth) == {"pq": 0.0, "dq": 0.0, "sq": 0.0}
    assert dice(pred, truth) == pytest.approx(0.5)
    assert iou(pred, truth) == pytest.approx(1 / 3)


def test_iou_of_exactly_half_is_not_a_match() -> None:
    # 3x3 square shifted one column: overlap 6, union 12, IoU exactly 0.5, and PQ needs IoU > 0.5.
    # 4x4 square shifted one column: overlap 12, union 20, IoU 0.6 > 0.5 -> PQ = SQ = 0.6, DQ = 1.
    truth = np.zeros((5, 6), dtype=np.int32)
    pred = np.zeros((5, 6), dtype=np.int32)
    _square(truth, 1, 0, 0, 3, 3)
    _square(pred, 1, 0, 1, 3, 3)
    assert panoptic_quality(pred, truth)["pq"] == 0.0
    truth[:] = 0
    pred[:] = 0
    _square(truth, 1, 0, 0, 4, 4)
    _square(pred, 1, 0, 1, 4, 4)
    result = panoptic_quality(pred, truth)
    assert result["dq"] == pytest.approx(1.0)
    assert result["sq"] == pytest.approx(0.6)
    assert result["pq"] == pytest.approx(0.6)


def test_shifted_missed_and_false_positive() -> None:
    # AJI: G1 -> S5 adds 12 / 20, G2 -> S9 adds 4 / 4, G3 has no overlap (union += 4),
    # S4 is never used (union += 4): AJI = (12 + 4) / (20 + 4 + 4 + 4) = 16 / 32 = 0.5.
    # PQ: TP = 2 (IoU 0.6 and 1), FP = 1 (S4), FN = 1 (G3): DQ = 2 / (2 + 0.5 + 0.5) = 2/3,
    # SQ = (0.6 + 1) / 2 = 0.8, PQ = 8/15.
    # Foreground: 24 px each, intersection 16: Dice = 32/48 = 2/3, IoU = 16/32 = 0.5.
    pred, truth = _mixed_case()
    assert aggregated_jaccard_index(pred, truth) == pytest.approx(0.5)
    result = panoptic_quality(pred, truth)
    assert result["dq"] == pytest.approx(2 / 3)
    assert result["sq"] == pytest.approx(0.8)
    assert result["pq"] == pytest.approx(8 / 15)
    assert dice(pred, truth) == pytest.approx(2 / 3)
    assert iou(pred, truth) == pytest.approx(0.5)


def test_split_nucleus() -> None:
    # G (4x4 = 16 px) predicted as S1 (3 columns, 12 px, IoU 0.75) and S2 (1 column, 4 px,
    # IoU 0.25).
    # AJI: G -> S1 adds 12 / 16, S2 unused adds 4 to the union: 12 / 20 = 0.6.
    # PQ: TP = 1 (0.75), FP = 1 (S2), FN = 0: DQ = 1 / 1.5 = 2/3, SQ = 0.75, PQ = 0.5.
    truth = np.zeros((6, 6), dtype=np.int32)
    pred = np.zeros((6, 6), dtype=np.int32)
    _square(truth, 1, 1, 1, 4, 4)
    _square(pred, 1, 1, 1, 4, 3)
    _square(pred, 2, 1, 4, 4, 1)
    assert aggregated_jaccard_index(pred, truth) == pytest.approx(0.6)
    result = panoptic_quality(pred, truth)
    assert result["dq"] == pytest.approx(2 / 3)
    assert result["sq"] == pytest.approx(0.75)
    assert result["pq"] == pytest.approx(0.5)
    assert dice(pred, truth) == pytest.approx(1.0)


def test_merged_nucleus_uses_classic_aji() -> None:
    # G1 (4x4, 16 px) and G2 (4x2, 8 px) side by side, predicted as one S (4x6, 24 px).
    # Classic AJI: both pick S; numerator 16 + 8, denominator |G1 u S| + |G2 u S| = 24 + 24,
    # S is "used" so it is not added again: AJI = 24 / 48 = 0.5.
    # PQ: IoU(G1, S) = 16/24 = 2/3 > 0.5 is the only match: TP = 1, FN = 1, FP = 0,
    # DQ = 1 / 1.5 = 2/3, SQ = 2/3, PQ = 4/9.
    truth = np.zeros((4, 6), dtype=np.int32)
    _square(truth, 1, 0, 0, 4, 4)
    _square(truth, 2, 0, 4, 4, 2)
    pred = np.full((4, 6), 3, dtype=np.int32)
    assert aggregated_jaccard_index(pred, truth) == pytest.approx(0.5)
    result = panoptic_quality(pred, truth)
    assert result["dq"] == pytest.approx(2 / 3)
    assert result["sq"] == pytest.approx(2 / 3)
    assert result["pq"] == pytest.approx(4 / 9)


def test_aji_picks_the_max_iou_prediction_not_the_largest_overlap() -> None:
    # G: rows 0-1, cols 0-3 (8 px).
    # S2: row 0, cols 0-2 (3 px): inter 3, union 8, IoU 3/8.
    # S1: the other 5 px of G plus a 4x5 block below (25 px): inter 5, union 8 + 25 - 5 = 28,
    # IoU 5/28 < 3/8, so G picks S2 although S1 overlaps it more; S1 is unused (+25):
    # AJI = 3 / (8 + 25) = 1/11 (picking S1 would give 5 / (28 + 3) = 5/31 instead).
    truth = np.zeros((6, 6), dtype=np.int32)
    _square(truth, 1, 0, 0, 2, 4)
    pred = np.zeros((6, 6), dtype=np.int32)
    _square(pred, 1, 0, 0, 2, 4)
    _square(pred, 1, 2, 0, 4, 5)
    _square(pred, 2, 0, 0, 1, 3)
    assert np.count_nonzero(pred == 1) == 25
    assert aggregated_jaccard_index(pred, truth) == pytest.approx(1 / 11)


def test_identical_labelings_score_one() -> None:
    pred, truth = _mixed_case()
    assert aggregated_jaccard_index(truth, truth) == 1.0
    assert panoptic_quality(truth, truth) == {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    assert dice(truth, truth) == 1.0
    assert iou(truth, truth) == 1.0


def test_id_permutation_and_dtype_invariance() -> None:
    pred, truth = _mixed_case()
    permuted_truth = np.zeros_like(truth, dtype=np.uint64)
    for old, new in ((1, 70_000), (2, 3), (3, 2**40)):
        permuted_truth[truth == old] = new
    permuted_pred = np.where(pred > 0, 1000 - pred, 0).astype(np.int16)
    assert aggregated_jaccard_index(permuted_pred, permuted_truth) == pytest.approx(0.5)
    assert panoptic_quality(permuted_pred, permuted_truth)["pq"] == pytest.approx(8 / 15)


def test_many_ids_use_the_sparse_overlap_path() -> None:
    # 100 x 100 one-pixel nuclei (10 000 ids), predicted as 1 x 2 pairs (5 000 ids): every G picks
    # the pair holding it (inter 1, union 2, IoU 0.5) and each pair serves two G, counted twice:
    # AJI = 10 000 / 20 000 = 0.5; IoU 0.5 is no PQ match, so PQ = 0.
    rng = np.random.default_rng(1)
    truth = rng.permutation(10_000).reshape(100, 100).astype(np.int64) + 1
    pred = (np.arange(10_000).reshape(100, 100) // 2 + 1) * 3
    assert aggregated_jaccard_index(pred, truth) == pytest.approx(0.5)
    assert panoptic_quality(pred, truth)["pq"] == 0.0
    assert aggregated_jaccard_index(truth, truth) == 1.0


def test_empty_images() -> None:
    empty = np.zeros((4, 4), dtype=np.int32)
    one = empty.copy()
    one[1:3, 1:3] = 7
    assert aggregated_jaccard_index(empty, empty) == 1.0
    assert panoptic_quality(empty, empty) == {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    assert dice(empty, empty) == 1.0
    assert iou(empty, empty) == 1.0
    assert aggregated_jaccard_index(one, empty) == 0.0  # truth empty, prediction not
    assert aggregated_jaccard_index(empty, one) == 0.0  # nothing predicted
    assert panoptic_quality(one, empty)["pq"] == 0.0
    assert panoptic_quality(empty, one)["pq"] == 0.0
    assert dice(one, empty) == 0.0


def test_score_segmentation_keys_and_values() -> None:
    pred, truth = _mixed_case()
    scores = score_segmentation(pred, truth > 0, truth)
    assert set(scores) == {"dice", "iou", "aji", "pq"}
    assert scores["dice"] == pytest.approx(2 / 3)
    assert scores["iou"] == pytest.approx(0.5)
    assert scores["aji"] == pytest.approx(0.5)
    assert scores["pq"] == pytest.approx(8 / 15)
    without = score_segmentation(pred, truth > 0, None)
    assert without["aji"] is None and without["pq"] is None
    assert without["dice"] == pytest.approx(2 / 3)


def test_bad_input_raises_value_error() -> None:
    a = np.zeros((4, 4), dtype=np.int32)
    with pytest.raises(ValueError, match="same shape"):
        dice(a, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="same shape"):
        aggregated_jaccard_index(a, np.zeros((5, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="2-D"):
        panoptic_quality(np.zeros((2, 4, 4), dtype=np.int32), np.zeros((2, 4, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="truth_labels.*integer"):
        aggregated_jaccard_index(a, a.astype(np.float32))
    with pytest.raises(ValueError, match="pred_labels.*integer"):
        panoptic_quality(a > 0, a)
    with pytest.raises(ValueError, match="negative"):
        aggregated_jaccard_index(a - 1, a)
    with pytest.raises(ValueError, match="iou_threshold"):
        panoptic_quality(a, a, iou_threshold=0.3)
    with pytest.raises(ValueError, match="truth_binary"):
        score_segmentation(a, np.zeros((3, 3)), None)


def test_large_image_is_exact() -> None:
    # 38 x 38 = 1444 squares of 20x20, each predicted shifted by (2, 3) with other ids:
    # overlap 18 * 17 = 306, union 800 - 306 = 494 for every nucleus and nothing unused,
    # so AJI = SQ = PQ = 306 / 494 and DQ = 1.
    truth = np.zeros((1000, 1000), dtype=np.uint16)
    pred = np.zeros((1000, 1000), dtype=np.uint32)
    label = 0
    for i in range(38):
        for j in range(38):
            label += 1
            _square(truth, label, 26 * i, 26 * j, 20, 20)
            _square(pred, 7 * label + 100_000, 26 * i + 2, 26 * j + 3, 20, 20)
    aji = aggregated_jaccard_index(pred, truth)
    pq = panoptic_quality(pred, truth)
    assert aji == pytest.approx(306 / 494)
    assert pq["dq"] == pytest.approx(1.0)
    assert pq["pq"] == pytest.approx(306 / 494)
