"""Grayscale 2-D images (the chest X-ray path): 1-channel tiles, the per-image stretch once, seen whole, end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_cdal.engine.checks import segment_peak_bytes
from napari_cdal.engine.config import PRESETS, ModelConfig
from napari_cdal.engine.data.tiles import check_image_channels, load_folder, load_tile
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.io.images import integer_bit_depth
from napari_cdal.engine.method.intensity import normalise
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.method.resampling import model_grid
from napari_cdal.engine.segment import image as segment_module
from napari_cdal.engine.segment.evaluate import evaluate_tiles
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.training import run as run_module
from napari_cdal.engine.training.run import prepare_tiles

GRAY = ModelConfig(**PRESETS["grayscale"])
TINY_GRAY = ModelConfig(**{**PRESETS["grayscale"], **PRESETS["tiny"], "model_side": 48, "default_samples": 2})
SHAPES = ((64, 80), (80, 64), (72, 72), (64, 64))


def _xray(seed: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic chest film in 0..1: two dark 'lungs' (the mask) in a brighter body, noise and a slope."""
    rng = np.random.default_rng(seed)
    height, width = shape
    y, x = np.indices(shape, dtype=np.float64)
    mask = np.zeros(shape, bool)
    for side in (0.3, 0.7):
        cy, cx = height * rng.uniform(0.45, 0.55), width * rng.uniform(side - 0.04, side + 0.04)
        ry, rx = height * rng.uniform(0.25, 0.32), width * rng.uniform(0.11, 0.15)
        mask |= ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1.0
    image = np.where(mask, 0.3, 0.7) + 0.1 * y / height + rng.normal(0, 0.06, shape)
    return np.clip(image, 0, 1), mask


def _write_pair(root, name: str, seed: int, shape: tuple[int, int], sixteen_bit: bool) -> np.ndarray:
    """One image on its own intensity scale (a dim 8-bit PNG, a 16-bit TIFF using a part of its range) and its mask.

    Unstretched, both kinds are dark all over (a model trained on stretched images calls it all lung).
    """
    image, mask = _xray(seed, shape)
    rng = np.random.default_rng(100 + seed)
    if sixteen_bit:
        low, span = rng.uniform(1000, 3000), rng.uniform(12000, 20000)
        tifffile.imwrite(root / "images" / f"{name}.tif", (low + span * image).astype(np.uint16))
    else:
        low, span = rng.uniform(5, 20), rng.uniform(30, 50)
        Image.fromarray((low + span * image).astype(np.uint8)).save(root / "images" / f"{name}.png")
    scale = 255 if seed % 2 else 1  # masks in {0, 1} and in {0, 255}
    Image.fromarray(mask.astype(np.uint8) * scale).save(root / "masks" / f"{name}.png")
    return mask


def _gray_folder(root, count: int = 6) -> dict[str, np.ndarray]:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    return {
        f"cxr_{index}": _write_pair(root, f"cxr_{index}", index, SHAPES[index % len(SHAPES)], index % 2 == 0)
        for index in range(count)
    }


def test_grayscale_preset_sees_images_whole() -> None:
    assert (GRAY.image_channels, GRAY.label_encoding, GRAY.diffusion_steps) == (1, "foreground", 2)
    assert GRAY.intensity_percentiles == (0.5, 99.5) and GRAY.label_channels == 1
    assert model_grid(2048, 1800, 0.25, GRAY) == (256, 225)  # the longer side at 256, whatever the µm/px
    assert model_grid(2048, 1800, 3.0, GRAY) == (256, 225)
    assert model_grid(2048, 1800, 0.25, ModelConfig()) == (1024, 900)  # H&E: by µm/px, as before
    assert ModelConfig.from_dict(GRAY.to_dict()) == GRAY
    with pytest.raises(ValueError, match="model_side"):
        replace(GRAY, model_side=-1)
    fine, coarse = (segment_peak_bytes(4000, 3000, mpp, GRAY, 2, 8) for mpp in (0.05, 5.0))
    assert fine == coarse  # the memory estimate knows the model grid does not follow µm/px


def test_one_channel_tiles_are_float_and_unstretched(tmp_path) -> None:
    masks = _gray_folder(tmp_path, 2)
    png, tif = load_tile(tmp_path, "cxr_1", channels=1), load_tile(tmp_path, "cxr_0", channels=1)
    for tile, shape in ((png, SHAPES[1]), (tif, SHAPES[0])):
        assert tile.image.shape == (*shape, 1) and tile.image.dtype == np.float32
        assert np.array_equal(tile.foreground, masks[tile.name]) and not tile.has_instance_truth
    raw = tifffile.imread(tmp_path / "images" / "cxr_0.tif")
    top = 2 ** integer_bit_depth(raw) - 1
    assert np.allclose(tif.image[..., 0], raw * 255.0 / top, atol=1e-3)  # scaled by its bit depth, not stretched
    rgb = load_tile(tmp_path, "cxr_1")  # an RGB model gets the gray image repeated, as segment gives it
    assert rgb.image.shape == (*SHAPES[1], 3) and rgb.image.dtype == np.uint8
    assert np.array_equal(rgb.image[..., 0], rgb.image[..., 2])


def test_stretch_applied_once_for_training_and_for_segmenting(tmp_path, monkeypatch) -> None:
    _gray_folder(tmp_path, 2)
    tiles = load_folder(tmp_path, channels=1)
    calls = []
    real = run_module.stretch_intensity

    def counted(values, config):
        calls.append(values.shape)
        return real(values, config)

    monkeypatch.setattr(run_module, "stretch_intensity", counted)
    monkeypatch.setattr(segment_module, "stretch_intensity", counted)
    same_grid = replace(TINY_GRAY, model_side=80)  # cxr_0 is 64 x 80: its own grid, so no resampling
    prepared = prepare_tiles(tiles, 0.25, same_grid)
    assert len(calls) == 2
    low, high = np.percentile(prepared[0].image, (0.5, 99.5))
    assert low < 1.0 and high > 254.0 and prepared[0].image.shape == (64, 80, 1)
    model = CdalModel.initialise(same_grid, 0).eval()
    seen = []

    def capture(model, tile, *args, **kwargs):
        seen.append(tile)
        raise StopIteration

    monkeypatch.setattr(segment_module, "reverse_process", capture)
    with pytest.raises(RuntimeError):  # the StopIteration, inside a generator
        run_to_end(segment_image(model, tifffile.imread(tmp_path / "images" / "cxr_0.tif")))
    assert len(calls) == 3  # segment stretches the raw image once; load_tile did not
    expected = normalise(torch.from_numpy(prepared[0].image.transpose(2, 0, 1))[None], same_grid)
    assert torch.allclose(seen[0], expected, atol=1e-4)  # training and segmenting feed the same numbers
    monkeypatch.undo()
    model = CdalModel.initialise(TINY_GRAY, 0).eval()
    monkeypatch.setattr(segment_module, "stretch_intensity", counted)
    events = list(evaluate_tiles(model, tiles, samples=1))
    assert len(calls) == 5 and events[-1].payload["mean"]["aji"] is None  # once per tile; no instance truth


def test_wrong_kind_of_images_refused_before_training(tmp_path, blob_folder, capsys) -> None:
    from conftest import run

    _gray_folder(tmp_path / "gray", 2)
    code, _, err = run(
        capsys, "train", tmp_path / "gray", "--out", tmp_path / "a.safetensors", "--config", "tiny", "--iterations", 1
    )
    assert code == 1 and "grayscale image" in err and "--config grayscale" in err and len(err.splitlines()) == 1
    config = tmp_path / "gray.json"
    config.write_text(json.dumps(TINY_GRAY.to_dict()))
    code, _, err = run(
        capsys, "train", blob_folder, "--out", tmp_path / "b.safetensors", "--config", config, "--iterations", 1
    )
    assert code == 1 and "colour image" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "b.safetensors").exists()
    image, _ = _xray(0, (32, 32))
    Image.fromarray(np.repeat((image[..., None] * 255).astype(np.uint8), 3, axis=-1)).save(
        tmp_path / "gray" / "images" / "cxr_0.png"
    )  # a grayscale film saved as RGB is still grayscale
    (tmp_path / "gray" / "images" / "cxr_0.tif").unlink()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "gray" / "masks" / "cxr_0.png")
    check_image_channels(tmp_path / "gray", ["cxr_0"], 1)


def test_rgb_model_still_segments_a_grayscale_image(trained_tiny) -> None:
    image, _ = _xray(3, (48, 48))
    result = run_to_end(segment_image(trained_tiny[0], (image * 255).astype(np.uint8), image_mpp=0.5, samples=1))
    assert result.labels.shape == (48, 48)


@pytest.mark.slow
def test_tiny_grayscale_model_learns_through_the_cli(tmp_path, capsys) -> None:
    from conftest import run, train_and_evaluate

    data = tmp_path / "data"
    masks = _gray_folder(data, 6)
    split = {"train": [f"cxr_{i}" for i in range(4)], "validation": ["cxr_4", "cxr_5"]}
    model, scores = train_and_evaluate(
        capsys,
        tmp_path,
        data,
        TINY_GRAY.to_dict(),
        split,
        {"lr_g": 3e-3, "lr_d": 1e-3, "warmup_steps": 10},
        iterations=200,
        patch_size=32,
    )
    assert scores["dice"] > 0.8 and scores["iou"] > 0.65, scores
    assert scores["aji"] is None  # masks only: no instance truth to score
    image = data / "images" / "cxr_4.tif"  # 16-bit, 72 x 72: segmented at 48 px and brought back
    code, out, err = run(capsys, "segment", image, "--model", model, "--out", tmp_path / "out")
    assert code == 0, err
    labels = tifffile.imread(tmp_path / "out" / "cxr_4_labels.tif")
    assert labels.shape == masks["cxr_4"].shape
    found = labels > 0
    assert 2 * np.count_nonzero(found & masks["cxr_4"]) / (found.sum() + masks["cxr_4"].sum()) > 0.8


def test_a_model_that_sees_images_whole_never_takes_the_slide_path(tmp_path, capsys, monkeypatch) -> None:
    from conftest import run

    from napari_cdal.cli import segment_slides
    from napari_cdal.engine.method.model import save_model

    model = tmp_path / "gray.safetensors"
    save_model(model, CdalModel.initialise(TINY_GRAY, 0))
    image, _ = _xray(0, (40, 48))
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "film.png")
    code, _, err = run(capsys, "segment", tmp_path / "film.png", "--model", model, "--out", tmp_path / "out", "--slide")
    assert code == 1 and "leave out --slide" in err and not (tmp_path / "out" / "film_labels.tif").exists()
    monkeypatch.setattr(segment_slides, "SLIDE_MIN_PIXELS", 100)  # the film is "slide-sized" now
    code, _, err = run(capsys, "segment", tmp_path / "film.png", "--model", model, "--out", tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["film_labels.tif"]  # whole, no zarr store
    assert tifffile.imread(tmp_path / "out" / "film_labels.tif").shape == (40, 48)
