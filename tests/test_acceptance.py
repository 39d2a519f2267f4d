"""The acceptance rule: a fine-tuned model replaces its source only for a gain beyond the scoring's noise."""

from __future__ import annotations

import pytest

from napari_cdal.engine.training.acceptance import NOISE_FLOOR, judge, noise_of


def scores(aji: float | None = 0.60, right: int | None = 30, dice: float = 0.80) -> dict:
    row = {"dice": dice, "aji": aji, "nuclei_right": right, "nuclei_truth": 40}
    return {key: value for key, value in row.items() if value is not None}


def test_no_gain_keeps_the_old_model() -> None:
    verdict = judge(scores(), scores(), noise_of(scores(), scores()))
    assert not verdict.improved and verdict.gains == {"aji": 0.0, "nuclei_right": 0.0}
    assert verdict.margins == {"aji": NOISE_FLOOR["aji"], "nuclei_right": NOISE_FLOOR["nuclei_right"]}


def test_dice_alone_decides_nothing() -> None:
    # the journey's case: 0.76 -> 0.77 Dice, AJI and nuclei right unchanged
    assert not judge(scores(dice=0.76), scores(dice=0.77), {}).improved


def test_a_gain_beyond_the_noise_on_aji_with_no_loss_of_nuclei_is_taken() -> None:
    verdict = judge(scores(aji=0.60, right=30), scores(aji=0.63, right=30), {"aji": 0.004, "nuclei_right": 0.0})
    assert verdict.improved and verdict.gains["aji"] == pytest.approx(0.03)


def test_more_nuclei_right_beyond_the_noise_is_taken() -> None:
    assert judge(scores(right=30), scores(right=33), {"aji": 0.0, "nuclei_right": 2.0}).improved


def test_a_gain_within_the_measured_noise_is_not_taken() -> None:
    # two scorings of the old model differed by 0.03 AJI and 3 nuclei: +0.02 and +2 are within that
    before, after = scores(aji=0.60, right=30), scores(aji=0.62, right=32)
    assert not judge(before, after, {"aji": 0.03, "nuclei_right": 3.0}).improved
    assert judge(before, after, {"aji": 0.005, "nuclei_right": 1.0}).improved


def test_a_loss_beyond_the_noise_on_the_other_metric_vetoes() -> None:
    before, after = scores(aji=0.60, right=30), scores(aji=0.65, right=26)
    assert not judge(before, after, {"aji": 0.0, "nuclei_right": 1.0}).improved


def test_dice_stands_in_where_no_instance_metric_is_scored() -> None:
    # a volume's classes: no AJI, no nuclei counted
    before, after = scores(aji=None, right=None, dice=0.85), scores(aji=None, right=None, dice=0.88)
    verdict = judge(before, after, noise_of(before, scores(aji=None, right=None, dice=0.86)))
    assert verdict.improved and set(verdict.gains) == {"dice"} and verdict.margins["dice"] == pytest.approx(0.01)
    assert not judge(before, scores(aji=None, right=None, dice=0.855), {}).improved


def test_the_words_give_the_margins() -> None:
    verdict = judge(scores(), scores(aji=0.70, right=35), {"aji": 0.02, "nuclei_right": 2.0})
    assert verdict.words() == (
        "better beyond the noise (two scorings of the old model differ by up to 0.02 AJI and 2 nuclei)"
    )
    assert judge(scores(), scores(), {}).words().startswith("not better beyond the noise")
