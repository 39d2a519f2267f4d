"""tools/bundle_model.py: the bundled copy keeps the weights and record and gains the chosen default T."""

from __future__ import annotations

import runpy
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from napari_cdal.engine.method.model import load_model, save_model, with_new_config

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bundle_model.py"


def run_tool(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [str(TOOL), *args])
    runpy.run_path(str(TOOL), run_name="__main__")


def test_bundle_sets_default_sampling_steps_and_keeps_weights(tiny_model_file, tmp_path, monkeypatch):
    out = tmp_path / "bundled.safetensors"
    source = load_model(tiny_model_file)
    steps = source.config.diffusion_steps - 1

    run_tool(monkeypatch, str(tiny_model_file), "--default-steps", str(steps), "--out", str(out))

    bundled = load_model(out)
    assert bundled.config.default_sampling_steps == steps
    assert bundled.config.sampling_steps == steps
    assert bundled.record["bundled"]["default_sampling_steps"] == steps
    assert bundled.record["bundled"]["from_step"] == source.record.get("steps")
    for name, tensor in source.generator.state_dict().items():
        assert torch.equal(tensor, bundled.generator.state_dict()[name]), name


def test_bundle_sets_the_sampler_defaults(tiny_model_file, tmp_path, monkeypatch):
    out = tmp_path / "bundled.safetensors"
    run_tool(
        monkeypatch,
        str(tiny_model_file),
        "--default-steps",
        "2",
        "--default-samples",
        "3",
        "--uncertainty",
        "chain_entropy",
        "--attention",
        "score_map",
        "--sampling-noise",
        "0.5",
        "--out",
        str(out),
    )
    config = load_model(out).config
    assert (config.sampling_steps, config.default_samples) == (2, 3)
    assert (config.uncertainty_measure, config.attention_display, config.sampling_noise) == (
        "chain_entropy",
        "score_map",
        0.5,
    )
    assert load_model(out).record["bundled"]["sampler_defaults"]["default_samples"] == 3


def test_bundle_refuses_steps_beyond_the_models_t(tiny_model_file, tmp_path, monkeypatch):
    out = tmp_path / "bundled.safetensors"
    too_many = load_model(tiny_model_file).config.diffusion_steps + 1
    with pytest.raises(SystemExit, match="default_sampling_steps"):
        run_tool(monkeypatch, str(tiny_model_file), "--default-steps", str(too_many), "--out", str(out))
    assert not out.exists()


def test_bundle_refuses_weights_over_the_package_limit(tiny_model_file, tmp_path, monkeypatch):
    out = tmp_path / "bundled.safetensors"
    namespace = runpy.run_path(str(TOOL))
    monkeypatch.setitem(namespace["main"].__globals__, "MAX_BYTES", 1)
    monkeypatch.setattr(sys, "argv", [str(TOOL), str(tiny_model_file), "--default-steps", "1", "--out", str(out)])
    with pytest.raises(SystemExit, match="over the 25 MB"):
        namespace["main"]()
    assert not out.exists()


def test_bundle_names_no_machine_paths(tiny_model_file, tmp_path, monkeypatch):
    from napari_cdal.engine.method.model import save_model

    source = load_model(tiny_model_file)
    source.record["initialised_from"] = {"model": str(tmp_path / "runs" / "base.safetensors"), "steps": 7}
    marked = tmp_path / "marked.safetensors"
    save_model(marked, source)
    out = tmp_path / "bundled.safetensors"
    run_tool(monkeypatch, str(marked), "--default-steps", "1", "--out", str(out))
    assert load_model(out).record["initialised_from"] == {"model": "base.safetensors", "steps": 7}


def test_bundle_carries_a_replay_set_from_the_training_tiles(tiny_model_file, blob_folder, tmp_path, monkeypatch):
    import json

    from napari_cdal.engine.training.replay import REPLAY_PATCHES

    out = tmp_path / "bundled.safetensors"
    names = sorted(p.stem for p in (blob_folder / "images").iterdir())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": names[:1], "validation": names[1:]}))
    monkeypatch.setattr("napari_cdal.engine.training.replay.REPLAY_PATCH_PX", 48)  # the blob tiles are 128 px
    run_tool(
        monkeypatch,
        str(tiny_model_file),
        "--default-steps",
        "2",
        "--replay-data",
        str(blob_folder),
        "--replay-split",
        str(split),
        "--replay-mpp",
        "0.5",
        "--out",
        str(out),
    )
    bundled = load_model(out)
    assert bundled.replay is not None and bundled.replay.images.shape[:3] == (REPLAY_PATCHES, 48, 48)
    assert bundled.record["replay_set"]["from_tiles"] == names[:1], "only the training tiles, never validation"
    assert bundled.record["replay_set"]["patch_px"] == 48


def test_bundle_takes_the_discriminator_of_another_model_grown_to_its_channels(tiny_model_file, tmp_path, monkeypatch):
    before = load_model(tiny_model_file)
    config = replace(before.config, label_encoding="foreground_core_distance")
    tuned = with_new_config(before, config, seed=3)
    with torch.no_grad():
        for tensor in tuned.discriminator.parameters():
            tensor.add_(1.0)  # a D trained on: not the one to ship
    tuned_file, out = tmp_path / "tuned.safetensors", tmp_path / "bundled.safetensors"
    save_model(tuned_file, tuned)

    run_tool(
        monkeypatch,
        str(tuned_file),
        "--default-steps",
        "1",
        "--discriminator-from",
        str(tiny_model_file),
        "--out",
        str(out),
    )

    bundled = load_model(out)
    grown = with_new_config(before, config).discriminator.state_dict()
    for name, tensor in bundled.discriminator.state_dict().items():
        assert torch.equal(tensor, grown[name]), name
    for name, tensor in tuned.generator.state_dict().items():
        assert torch.equal(tensor, bundled.generator.state_dict()[name]), name
    assert bundled.record["discriminator_from"]["model"] == tiny_model_file.name
