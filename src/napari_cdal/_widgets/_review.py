"""Review of a Segment result: step the camera through its least certain nuclei, each selected for the brush."""

from __future__ import annotations

from typing import Any

import numpy as np

REVIEW_SCREEN_PX_PER_PIXEL = 3.0
"""Review zooms in at least this far: screen pixels per image pixel, so a nucleus fills the view."""


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera: `viewer.scene.camera` from napari 0.9 on, `viewer.camera` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


class ReviewQueue:
    """The least certain nuclei of one result, in order, and where the review has got to.

    Nuclei are ranked by their mean uncertainty; with one sample (no uncertainty) by their mean
    attention instead. The ranking is taken from the mask's features when the result arrives, so
    the user's edits do not reshuffle it mid-review.
    """

    def __init__(self, mask: Any) -> None:
        from napari_cdal.engine.segment.measurements import review_order

        features = {key: np.asarray(mask.features[key]) for key in mask.features.columns}
        self.key = (
            "mean_uncertainty"
            if not np.all(np.isnan(features["mean_uncertainty"]))
            else "mean_attention"
        )
        self._mask = mask
        self._features = features
        self._row = {int(i): r for r, i in enumerate(features["index"])}
        self._ranked = [] if np.all(np.isnan(features[self.key])) else list(review_order(features, self.key))
        self._scale = np.asarray(mask.scale[-2:], float)
        self._translate = np.asarray(mask.translate[-2:], float)
        self.ids: list[int] = []
        self.position = -1

    @property
    def size(self) -> int:
        """How many nuclei the review steps through."""
        return len(self.ids)

    def restart(self, count: int) -> None:
        """Review the `count` least certain nuclei from the first one again."""
        self.ids = [int(i) for i in self._ranked[:count]]
        self.position = -1

    def step(self, viewer: Any) -> str:
        """Centre the camera on the next nucleus, select it in the mask; the status line to show."""
        if not self.ids:
            return ""
        self.position = (self.position + 1) % len(self.ids)
        nucleus = self.ids[self.position]
        row = self._row[nucleus]
        centre = (
            self._translate
            + self._scale * np.array([self._features["centroid_y"][row], self._features["centroid_x"][row]])
        )
        camera = viewer_camera(viewer)
        camera.center = tuple(float(c) for c in centre)
        camera.zoom = max(camera.zoom, REVIEW_SCREEN_PX_PER_PIXEL / float(self._scale.min()))
        if self._mask in viewer.layers:
            self._mask.selected_label = nucleus
            viewer.layers.selection.active = self._mask
        what = "uncertainty" if self.key == "mean_uncertainty" else "attention"
        return (
            f"Review {self.position + 1} of {len(self.ids)}: nucleus {nucleus}, mean {what} "
            f"{self._features[self.key][row]:.2f}, {self._features['area_um2'][row]:.0f} µm²; "
            "it is selected in the mask, ready for the brush"
        )
