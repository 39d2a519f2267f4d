"""When a fine-tuned model replaces its source: a gain on the held-back part beyond the scoring's own noise.

The held-back part is small (a quarter of the corrections), and sampling is random, so the same
model scored with two seeds differs. The rule: the old model is scored with two seeds; their
difference is the noise (at least NOISE_FLOOR). The new model is scored with the second seed, which
did not pick it among the checkpoints, against the old one's score under that seed. It replaces the
old model when, on AJI and nuclei right together, one gains beyond the noise and neither loses
beyond it. Where a metric is missing (binary truth has no AJI; volumes count no nuclei) Dice stands in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JUDGED = ("aji", "nuclei_right")
"""The metrics the rule weighs together: nuclei told apart (AJI) and nuclei a pathologist would count as right."""

FALLBACK = "dice"
"""What the rule weighs where none of JUDGED is scored."""

NOISE_FLOOR = {"aji": 0.01, "nuclei_right": 1.0, "dice": 0.01}
"""The least noise assumed per metric, whatever two scorings show: one nucleus, one hundredth of AJI or Dice."""

CHECK_SEED = 1
"""The seed of the second scoring (the checkpoints are picked with seed 0)."""

WORDS = {"aji": "AJI", "nuclei_right": "nuclei right", "dice": "Dice"}


@dataclass(frozen=True)
class Verdict:
    """Whether the new model is better beyond noise, with the gains and margins behind it."""

    improved: bool
    gains: dict[str, float]
    margins: dict[str, float]

    def words(self) -> str:
        """The verdict in plain words, with the noise it was judged against."""
        noise = " and ".join(_amount(key, value) for key, value in self.margins.items())
        if self.improved:
            return f"better beyond the noise (two scorings of the old model differ by up to {noise})"
        return f"not better beyond the noise (two scorings of the old model differ by up to {noise})"


def _amount(key: str, value: float) -> str:
    if key == "nuclei_right":
        count = int(round(value))
        return f"{count} nucle{'us' if count == 1 else 'i'}"
    return f"{value:.2f} {WORDS[key]}"


def judged_metrics(scores: dict[str, Any]) -> tuple[str, ...]:
    """The metrics the rule weighs for these scores: JUDGED where scored, else FALLBACK."""
    present = tuple(key for key in JUDGED if scores.get(key) is not None)
    return present or (FALLBACK,)


def noise_of(first: dict[str, Any], second: dict[str, Any]) -> dict[str, float]:
    """How far two scorings of one model differ, per judged metric."""
    return {key: abs(float(first[key]) - float(second[key])) for key in judged_metrics(first)}


def judge(before: dict[str, Any], after: dict[str, Any], noise: dict[str, float]) -> Verdict:
    """The rule: one judged metric gains beyond its margin (noise, at least NOISE_FLOOR) and none loses beyond it."""
    keys = judged_metrics(before)
    margins = {key: max(noise.get(key, 0.0), NOISE_FLOOR[key]) for key in keys}
    gains = {key: float(after[key]) - float(before[key]) for key in keys}
    improved = any(gains[key] > margins[key] for key in keys) and all(gains[key] >= -margins[key] for key in keys)
    return Verdict(improved, gains, margins)
