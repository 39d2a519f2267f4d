"""Each widget field starts at the default the engine has for it (the model's config, engine/defaults.py, fine-tuning's
TrainConfig): a literal in a widget that drifts from the engine's value fails here."""

from __future__ import annotations

import pytest

from napari_cdal._widgets._inputs import model_config
from napari_cdal._widgets.segment import OTHER_FILE
from napari_cdal.catalog import bundled_model_file
from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.defaults import (
    DEFAULT_IMAGE_MPP,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    DEFAULT_TISSUE,
    MPP_RANGE,
    REVIEW_COUNT,
)

pytestmark = pytest.mark.gui

PLUGIN = "napari-cdal"


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def assert_engine_defaults(widget) -> None:
    """The Segment fields whose defaults live in engine/defaults.py."""
    assert widget.threshold.value == pytest.approx(DEFAULT_THRESHOLD)
    assert widget.seed.value == DEFAULT_SEED
    assert widget.mpp.value == pytest.approx(DEFAULT_IMAGE_MPP) and (widget.mpp.min, widget.mpp.max) == MPP_RANGE
    assert widget.tissue_only.value == (DEFAULT_TISSUE == "auto")
    assert widget.review_count.value == REVIEW_COUNT


def test_segment_starts_at_the_bundled_models_sampling_and_the_engines_defaults(make_napari_viewer) -> None:
    config = model_config(str(bundled_model_file()))
    if config is None:
        pytest.skip("no bundled model in this checkout")
    widget = dock(make_napari_viewer(), "Segment")
    assert widget.selected_model_path() == str(bundled_model_file())
    assert widget.sampling_steps.value == config.sampling_steps
    assert widget.sampling_steps.max == config.diffusion_steps
    assert widget.samples.value == config.default_samples
    assert_engine_defaults(widget)


def test_without_any_model_segment_starts_at_model_configs_defaults(make_napari_viewer, monkeypatch, tmp_path) -> None:
    from napari_cdal import catalog

    monkeypatch.setattr(catalog, "bundled_model_file", lambda: tmp_path / "absent.safetensors")
    monkeypatch.setenv("NAPARI_CDAL_MODEL_DIR", str(tmp_path / "empty"))
    widget = dock(make_napari_viewer(), "Segment")
    assert widget.model.choices == (OTHER_FILE,)
    defaults = ModelConfig()
    assert widget.sampling_steps.value == defaults.sampling_steps
    assert widget.sampling_steps.max == defaults.diffusion_steps
    assert widget.samples.value == defaults.default_samples
    assert_engine_defaults(widget)


def test_fine_tune_starts_at_fine_tunings_own_settings(make_napari_viewer) -> None:
    from napari_cdal.engine.training.finetune import finetune_config

    config = finetune_config()
    widget = dock(make_napari_viewer(), "Fine-tune")
    assert widget.iterations.value == config.iterations
    assert widget.learning_rate.value == pytest.approx(config.lr_g)
    assert widget.mpp.value == pytest.approx(DEFAULT_IMAGE_MPP) and (widget.mpp.min, widget.mpp.max) == MPP_RANGE
