"""Former home of intensity (normalise, stretch_intensity) and resampling (resample, model_size, model_grid).

It did two jobs under one name; each now has its module. The names stay importable from here for scripts.
"""

from __future__ import annotations

from napari_cdal.engine.method.intensity import normalise, stretch_intensity
from napari_cdal.engine.method.resampling import model_grid, model_size, resample

__all__ = ["model_grid", "model_size", "normalise", "resample", "stretch_intensity"]
