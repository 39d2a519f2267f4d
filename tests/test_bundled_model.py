"""Golden regression of the bundled model on the bundled sample tile, at the model's defaults.

The sample tile (TCGA-B0-5698, kidney) is a validation tile: the bundled model was not trained on
it. The stored figures were measured with the bundled model (seed 0, CPU, float32) when this tile
became the sample; a change to the networks, sampler, resampling or instance step that moves them
beyond the tolerances shows here. Re-measure them (and say why in the commit) only when the
bundled model or the sample tile itself changes, or the defaults of segmenting do (issue 23: the K
samples' views and the confidence rule for small nuclei took 347 nuclei, Dice 0.7888, AJI 0.6039
to 336, 0.7883, 0.6066; the flood down the core and the model with a distance channel to 341, 0.7830, 0.5985).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.io.images import read_image
from napari_cdal.engine.method.model import bundled_model_path, load_model
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import aggregated_jaccard_index, dice
from napari_cdal.sample_data import sample_tile_path

TRUTH = Path(__file__).parent / "data" / "TCGA-B0-5698-01Z-00-DX1_instances.png"
GOLDEN = {"nuclei": 341, "dice": 0.7830, "aji": 0.5985}
TOLERANCE = {"nuclei": 4, "dice": 0.003, "aji": 0.006}

pytestmark = pytest.mark.skipif(not bundled_model_path().is_file(), reason="no bundled model in this checkout")


@pytest.fixture(scope="module")
def sample_result():
    model = load_model()
    return run_to_end(
        segment_image(model, read_image(sample_tile_path()), seed=0, keep_steps=False, with_attention=False)
    )


def test_bundled_model_on_the_sample_tile_matches_its_golden_figures(sample_result) -> None:
    truth = np.asarray(Image.open(TRUTH)).astype(np.int64)
    measured = {
        "nuclei": sample_result.n_nuclei,
        "dice": dice(sample_result.labels, truth > 0),
        "aji": aggregated_jaccard_index(sample_result.labels, truth),
    }
    for key, value in GOLDEN.items():
        assert abs(measured[key] - value) <= TOLERANCE[key], f"{key}: measured {measured[key]}, golden {value}"


def test_the_same_seed_repeats_the_bundled_model_exactly(sample_result) -> None:
    again = run_to_end(
        segment_image(
            load_model(),
            read_image(sample_tile_path()),
            seed=0,
            keep_steps=False,
            with_attention=False,
        )
    )
    assert np.array_equal(again.labels, sample_result.labels)
