"""The sampling runtimes: OpenVINO computes what torch computes, is converted once, and falls back cleanly."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import TINY, blob_tile

from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.method import runtime as runtimes
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.method.runtime import Runtime, choose_runtime, with_runtime
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import dice

pytest.importorskip("openvino")


def _inputs(model: CdalModel, batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    rng = torch.Generator().manual_seed(seed)
    config = model.config
    x = torch.randn(batch, config.label_channels, height, width, generator=rng)
    t = torch.full((batch,), config.diffusion_steps - 1, dtype=torch.long)
    with torch.no_grad():
        features = model.generator.encode_image(torch.randn(1, config.image_channels, height, width, generator=rng))
    z = torch.randn(batch, config.latent_dim, generator=rng)
    return x, t, features, z, torch.zeros_like(x)


@pytest.fixture(scope="module")
def tiny(trained_tiny) -> CdalModel:
    """A fresh copy of the tiny model, so that no test here can touch the session's."""
    model = CdalModel.initialise(TINY)
    model.generator.load_state_dict(trained_tiny[0].generator.state_dict())
    model.discriminator.load_state_dict(trained_tiny[0].discriminator.state_dict())
    return model.eval()


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 64, 64), (3, 48, 80)])
def test_openvino_float32_computes_what_torch_computes(tiny, tmp_path, batch, height, width):
    fast = choose_runtime(tiny, "openvino", "float32", cache=tmp_path)
    assert fast.name == "openvino" and fast.precision == "float32" and fast.note == ""
    inputs = _inputs(tiny, batch, height, width)
    with torch.no_grad():
        reference = Runtime(tiny, "float32").generator_pass(*inputs)
    got = fast.generator_pass(*inputs)
    assert got.shape == reference.shape == (batch, TINY.label_channels, height, width)
    assert got.dtype == torch.float32
    assert float((got - reference).abs().max()) < 1e-4


def test_segmenting_on_openvino_gives_the_reference_nuclei(tiny, tmp_path):
    image = blob_tile(7, size=96).image
    reference = run_to_end(segment_image(tiny, image, image_mpp=0.5, seed=3)).labels
    model = with_runtime(tiny, "openvino", "float32", cache=tmp_path)
    assert model.generator is tiny.generator  # the same networks, not a copy
    fast = run_to_end(segment_image(model, image, image_mpp=0.5, seed=3)).labels
    assert dice(fast > 0, reference > 0) > 0.99
    assert abs(int(fast.max()) - int(reference.max())) <= 1


def test_a_model_is_converted_once_into_the_cache(tiny, tmp_path, monkeypatch):
    choose_runtime(tiny, "openvino", "float32", cache=tmp_path)
    folders = sorted(p.name for p in (tmp_path / "openvino").iterdir())
    assert folders == [runtimes.generator_digest(tiny)]  # no half-written folder is left beside it
    assert (tmp_path / "openvino" / folders[0] / "generator.xml").is_file()

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    import openvino

    monkeypatch.setattr(openvino, "convert_model", no_second_conversion)
    assert choose_runtime(tiny, "openvino", "float32", cache=tmp_path).name == "openvino"


def test_other_weights_are_another_cache_entry(tiny, tmp_path):
    other = CdalModel.initialise(TINY, seed=5)
    assert runtimes.generator_digest(other) != runtimes.generator_digest(tiny)


def test_without_openvino_sampling_runs_in_torch_and_says_why(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    chosen = choose_runtime(tiny, "openvino", "float32", cache=tmp_path)
    assert chosen.name == "torch" and "not installed" in chosen.note
    assert choose_runtime(tiny, "auto", "float32", cache=tmp_path).name == "torch"


def test_a_failed_conversion_falls_back_to_torch(tiny, tmp_path, monkeypatch):
    def broken(model, folder):
        raise RuntimeError("unsupported operation\nmore detail")

    monkeypatch.setattr(runtimes, "_converted_graph", broken)
    chosen = choose_runtime(tiny, "auto", "float32", cache=tmp_path)
    assert chosen.name == "torch"
    assert chosen.describe() == "torch float32 (OpenVINO failed, so torch: unsupported operation)"
    image = blob_tile(2, size=64).image
    model = with_runtime(tiny, "auto", "float32", cache=tmp_path)
    assert run_to_end(segment_image(model, image, image_mpp=0.5, seed=0)).labels.shape == (64, 64)


def test_weights_changed_after_conversion_are_computed_by_torch(tmp_path, trained_tiny):
    model = CdalModel.initialise(TINY)
    model.generator.load_state_dict(trained_tiny[0].generator.state_dict())
    model.eval()
    fast = choose_runtime(model, "openvino", "float32", cache=tmp_path)
    with torch.no_grad():  # an optimiser's step: in place
        for parameter in model.generator.parameters():
            parameter.mul_(1.5)
    inputs = _inputs(model, 2, 32, 32)
    with torch.no_grad():
        expected = Runtime(model, "float32").generator_pass(*inputs)
    assert torch.equal(fast.generator_pass(*inputs), expected)


def test_bfloat16_stays_close_to_float32(tiny, tmp_path):
    inputs = _inputs(tiny, 2, 64, 64)
    with torch.no_grad():
        reference = Runtime(tiny, "float32").generator_pass(*inputs)
        half = Runtime(tiny, "bfloat16").generator_pass(*inputs)
    assert half.dtype == torch.float32
    assert 0 < float((half - reference).abs().max()) < 0.1
    fast = choose_runtime(tiny, "openvino", "bfloat16", cache=tmp_path)
    assert float((fast.generator_pass(*inputs) - reference).abs().max()) < 0.1


def test_auto_precision_is_concrete_on_the_cpu(tiny, tmp_path):
    for name in ("torch", "openvino"):
        assert choose_runtime(tiny, name, "auto", cache=tmp_path).precision in ("float32", "bfloat16")
    assert Runtime(tiny, "auto").precision == "auto"  # the reference: float32 on the CPU


@pytest.mark.parametrize(("runtime", "precision"), [("onnx", "auto"), ("auto", "half")])
def test_unknown_choices_are_refused(tiny, runtime, precision):
    with pytest.raises(ValueError, match="must be one of"):
        choose_runtime(tiny, runtime, precision)


def test_cli_runtime_options_and_fast(tiny_model_file, tmp_path):
    from napari_cdal.cli import main

    tile = blob_tile(4, size=96)
    folder = tmp_path / "tiles"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    from PIL import Image

    Image.fromarray(tile.image).save(folder / "images" / "t.tif")
    Image.fromarray(tile.foreground.astype(np.uint8) * 255).save(folder / "masks" / "t.png")
    scored = {}
    for name, extra in (
        ("torch", ["--runtime", "torch", "--precision", "float32"]),
        ("openvino", ["--runtime", "openvino", "--precision", "float32"]),
        ("fast", ["--fast"]),
    ):
        out = tmp_path / f"{name}.json"
        assert (
            main(["evaluate", str(folder), "--model", str(tiny_model_file), "--mpp", "0.5", "--json", str(out), *extra])
            == 0
        )
        scored[name] = json.loads(out.read_text())
    assert scored["torch"]["settings"]["runtime"] == "torch float32"
    assert scored["openvino"]["settings"]["runtime"] == "openvino float32"
    assert abs(scored["openvino"]["mean"]["dice"] - scored["torch"]["mean"]["dice"]) < 0.01
    assert scored["fast"]["settings"]["sampling_steps"] == 1 and scored["fast"]["settings"]["samples"] == 1
