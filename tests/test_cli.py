"""Tests for the `napari-cdal` command: segment, evaluate, train, info and one-line errors on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import TINY, files_in, run
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from napari_cdal.cli import main, state_path
from napari_cdal.engine.io.checkpoint import METADATA_KEY, read_metadata


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# --- segment ------------------------------------------------------------------------------------


def test_segment_tiff_and_png(capsys, tiny_model_file, blob_images, tmp_path):
    tif, png, tile = blob_images
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "segment", tif, png, "--model", tiny_model_file, "--mpp", "0.5", "--out", out)
    assert code == 0, err
    assert files_in(out) == ["tile_labels.tif", "tile_png_labels.tif"]
    true_count = len(np.unique(tile.instances)) - 1
    for stem in ("tile", "tile_png"):
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        assert labels.shape == (128, 128)
        assert labels.dtype.kind == "u"
        n = int(labels.max())
        np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))  # ids 1..N, no gaps
        assert abs(n - true_count) <= 4, (n, true_count)
        assert dice(labels > 0, tile.foreground) > 0.9
        assert f"{stem}.{'tif' if stem == 'tile' else 'png'}: {n} nuclei" in stdout
    # the same pixels give the same labels whichever format they came in
    from_tif, from_png = tifffile.imread(out / "tile_labels.tif"), tifffile.imread(out / "tile_png_labels.tif")
    np.testing.assert_array_equal(from_tif, from_png)


def test_segment_saves_steps_attention_uncertainty(capsys, tiny_model_file, blob_images, tmp_path):
    tif, _, _ = blob_images
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        "segment",
        tif,
        "--model",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--out",
        out,
        "--samples",
        "2",
        "--save-steps",
        "--save-attention",
        "--save-uncertainty",
    )
    assert code == 0, err
    assert files_in(out) == [
        "tile_attention.tif",
        "tile_chain.tif",
        "tile_labels.tif",
        "tile_steps.tif",
        "tile_uncertainty.tif",
    ]
    steps = tifffile.imread(out / "tile_steps.tif")
    chain = tifffile.imread(out / "tile_chain.tif")
    attention = tifffile.imread(out / "tile_attention.tif")
    uncertainty = tifffile.imread(out / "tile_uncertainty.tif")
    t = TINY.diffusion_steps
    assert steps.shape == (t, 128, 128) and steps.dtype == np.float32
    assert chain.shape == (t + 1, 128, 128) and chain.dtype == np.float32, "x_T, then each step's x_t"
    assert abs(float(chain[0].mean()) - 0.5) < 0.02 and float(chain[0].std()) > 0.2, "x_T: noise, mapped to 0..1"
    np.testing.assert_array_equal(chain[-1], steps[-1])
    assert attention.shape == (t, 128, 128) and attention.dtype == np.float32
    assert uncertainty.shape == (128, 128) and uncertainty.dtype == np.float32
    assert np.isfinite(steps).all() and np.isfinite(attention).all() and np.isfinite(uncertainty).all()
    assert steps.min() >= 0.0 and steps.max() <= 1.0
    assert uncertainty.min() >= 0.0
    # the last step's x̂0 is the foreground the labels came from
    labels = tifffile.imread(out / "tile_labels.tif")
    assert dice(steps[-1] > 0.5, labels > 0) > 0.9


def test_segment_progress_starts_at_zero_and_counts_the_work(capsys, tiny_model_file, blob_images, tmp_path):
    import re

    tif, _, _ = blob_images
    code, _, err = run(
        capsys,
        "segment",
        tif,
        "--model",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--out",
        tmp_path / "out",
        "--sampling-steps",
        "4",
    )
    assert code == 0, err
    renders = [part.strip() for part in err.split("\r") if part.strip().startswith("tile.tif:")]
    assert renders and renders[0].startswith("tile.tif: 0"), f"the bar opens at 0, before any step: {renders}"
    rates = [float(rate) for render in renders for rate in re.findall(r"([\d.]+)step/s", render)]
    assert all(rate < 1000 for rate in rates), f"a rate of real steps, not of a bar set at once: {renders}"


def test_an_error_during_the_work_starts_on_a_line_of_its_own(
    capsys, monkeypatch, tiny_model_file, blob_images, tmp_path
):
    import napari_cdal.engine.segment.image as engine

    real = engine.segment_image

    def failing(*args, **kwargs):
        events = real(*args, **kwargs)
        yield next(events)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine, "segment_image", failing)
    tif, _, _ = blob_images
    code, _, err = run(capsys, "segment", tif, "--model", tiny_model_file, "--mpp", "0.5", "--out", tmp_path / "out")
    assert code == 1
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("napari-cdal segment: error: ") and "No space left on device" in last, repr(err)
    assert "tile.tif:" in err.split("\n")[0], "the bar had been shown: its line ended before the error"


def test_uncertainty_of_one_sample_is_refused_before_any_work(capsys, tiny_model_file, blob_images, tmp_path):
    tif, _, _ = blob_images
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        "segment",
        tif,
        "--model",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--out",
        out,
        "--samples",
        "1",
        "--save-uncertainty",
    )
    assert code == 1
    assert "--save-uncertainty needs --samples 2 or more" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or files_in(out) == []


def test_segment_fewer_steps_more_samples(capsys, tiny_model_file, blob_images, tmp_path):
    tif, _, tile = blob_images
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        "segment",
        tif,
        "--model",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--out",
        out,
        "--steps",
        "2",
        "--samples",
        "3",
        "--save-steps",
        "--save-uncertainty",
        "--threads",
        "1",
    )
    assert code == 0, err
    assert tifffile.imread(out / "tile_steps.tif").shape == (2, 128, 128)
    assert tifffile.imread(out / "tile_chain.tif").shape == (3, 128, 128)
    uncertainty = tifffile.imread(out / "tile_uncertainty.tif")
    assert uncertainty.max() > 0.0  # three samples disagree somewhere
    assert dice(tifffile.imread(out / "tile_labels.tif") > 0, tile.foreground) > 0.85


def test_segment_too_many_steps(capsys, tiny_model_file, blob_images, tmp_path):
    tif, _, _ = blob_images
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        "segment",
        tif,
        "--model",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--out",
        out,
        "--steps",
        str(TINY.diffusion_steps + 1),
    )
    assert code == 1
    assert "--steps 5 is more than this model's 4 diffusion steps" in err
    assert files_in(out) == []


def test_segment_seed_repeats(capsys, tiny_model_file, blob_images, tmp_path):
    tif, _, _ = blob_images
    outputs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = tmp_path / name
        code, _, err = run(
            capsys,
            "segment",
            tif,
            "--model",
            tiny_model_file,
            "--mpp",
            "0.5",
            "--out",
            out,
            "--seed",
            seed,
            "--save-steps",
        )
        assert code == 0, err
        outputs[name] = out
    a, b, c = outputs["a"], outputs["b"], outputs["c"]
    assert (a / "tile_labels.tif").read_bytes() == (b / "tile_labels.tif").read_bytes()
    assert (a / "tile_steps.tif").read_bytes() == (b / "tile_steps.tif").read_bytes()
    assert (a / "tile_chain.tif").read_bytes() == (b / "tile_chain.tif").read_bytes()
    # another seed draws other noise: the intermediate x̂0 maps differ
    assert not np.array_equal(tifffile.imread(a / "tile_steps.tif"), tifffile.imread(c / "tile_steps.tif"))
    assert tifffile.imread(c / "tile_labels.tif").max() > 0


def test_segment_same_stem_twice_is_refused(capsys, tiny_model_file, blob_images, tmp_path):
    tif, _, tile = blob_images
    other = tif.with_suffix(".png")
    Image.fromarray(tile.image).save(other)
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", tif, other, "--model", tiny_model_file, "--out", out)
    assert code == 1
    assert "tile_labels.tif" in err and len(err.strip().splitlines()) == 1
    assert files_in(out) == []


# --- evaluate -----------------------------------------------------------------------------------


def test_evaluate_prints_table_and_writes_json(capsys, tiny_model_file, blob_folder, tmp_path):
    report = tmp_path / "report" / "scores.json"
    code, stdout, err = run(
        capsys, "evaluate", blob_folder, "--model", tiny_model_file, "--mpp", "0.5", "--json", report
    )
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["image", "dice", "iou", "aji", "pq", "nuclei", "seconds"]
    assert lines[1].startswith("blob-a ") and lines[2].startswith("blob-b ")
    assert lines[3].startswith("mean ")
    summary = json.loads(report.read_text())
    assert [row["image"] for row in summary["per_image"]] == ["blob-a", "blob-b"]
    for row in summary["per_image"]:
        assert set(row) == {"image", "dice", "iou", "aji", "pq", "nuclei", "seconds"}
        assert row["dice"] > 0.9
        assert 0.0 < row["iou"] <= row["dice"]
        assert 0.5 < row["aji"] <= 1.0 and 0.5 < row["pq"] <= 1.0
        assert isinstance(row["nuclei"], int) and row["nuclei"] > 10
        assert row["seconds"] >= 0
    assert set(summary["mean"]) == {"dice", "iou", "aji", "pq"}
    assert summary["mean"]["dice"] == pytest.approx(np.mean([r["dice"] for r in summary["per_image"]]))
    assert summary["mean"]["dice"] > 0.9
    assert summary["seconds_per_image"] >= 0
    assert summary["settings"]["sampling_steps"] == TINY.diffusion_steps and summary["settings"]["mpp"] == 0.5
    # the table shows the same numbers, to three decimals
    assert lines[3].split()[1] == f"{summary['mean']['dice']:.3f}"


def test_evaluate_without_instance_truth(capsys, tiny_model_file, blob_folder, tmp_path):
    """Binary masks only: Dice and IoU are scored, AJI and PQ are null."""
    shutil.rmtree(blob_folder / "masks_instance")
    report = tmp_path / "scores.json"
    code, stdout, err = run(
        capsys, "evaluate", blob_folder, "--model", tiny_model_file, "--mpp", "0.5", "--json", report
    )
    assert code == 0, err
    summary = json.loads(report.read_text())
    for row in summary["per_image"]:
        assert row["aji"] is None and row["pq"] is None
        assert row["dice"] > 0.9
    assert summary["mean"]["aji"] is None and summary["mean"]["pq"] is None
    assert summary["mean"]["dice"] > 0.9
    assert stdout.strip().splitlines()[-1].split()[3:5] == ["-", "-"]


def test_evaluate_split_subset(capsys, tiny_model_file, blob_folder, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["blob-a"], "validation": ["blob-b"]}))
    report = tmp_path / "scores.json"
    code, _, err = run(
        capsys, "evaluate", blob_folder, "--model", tiny_model_file, "--mpp", "0.5", "--split", split, "--json", report
    )
    assert code == 0, err
    assert [r["image"] for r in json.loads(report.read_text())["per_image"]] == ["blob-b"]
    code, _, err = run(
        capsys, "evaluate", blob_folder, "--model", tiny_model_file, "--split", split, "--subset", "test"
    )
    assert code == 1 and "'test'" in err


def test_evaluate_missing_data_dir(capsys, tiny_model_file, tmp_path):
    report = tmp_path / "scores.json"
    code, stdout, err = run(capsys, "evaluate", tmp_path / "nowhere", "--model", tiny_model_file, "--json", report)
    assert code == 1
    assert "nowhere" in err and "does not exist" in err
    assert len(err.strip().splitlines()) == 1
    assert stdout == "" and not report.exists()


# --- train --------------------------------------------------------------------------------------

TRAIN_ARGS = ["--config", "tiny", "--checkpoint-every", "2", "--mpp", "0.5", "--patch-size", "64", "--batch-size", "2"]


def test_train_then_resume(capsys, blob_folder, tmp_path):
    model_path = tmp_path / "models" / "m.safetensors"
    code, stdout, err = run(capsys, "train", blob_folder, "--out", model_path, "--steps", "4", *TRAIN_ARGS)
    assert code == 0, err
    assert "trained 4 iterations" in stdout
    state = state_path(model_path)
    assert state.name == "m.state.safetensors"
    assert files_in(model_path.parent) == ["m.safetensors", "m.state.safetensors"]
    model_meta, state_meta = read_metadata(model_path), read_metadata(state)
    assert model_meta["kind"] == "model" and state_meta["kind"] == "training_state"
    assert model_meta["record"]["iterations"] == 4 and state_meta["step"] == 4
    assert model_meta["model_config"]["base_width"] == 8  # the tiny preset
    assert model_meta["record"]["data_mpp"] == 0.5
    assert model_meta["record"]["train_tiles"] == ["blob-a", "blob-b"]
    assert model_meta["record"]["train_config"]["patch_size"] == 64

    code, stdout, err = run(capsys, "train", blob_folder, "--out", model_path, "--resume", "--steps", "6")
    assert code == 0, err
    assert "trained 6 iterations" in stdout
    assert read_metadata(state)["step"] == 6
    record = read_metadata(model_path)["record"]
    assert record["iterations"] == 6
    assert record["data_mpp"] == 0.5  # kept from the first run
    assert record["train_config"]["batch_size"] == 2 and record["train_config"]["iterations"] == 6


def test_resume_without_state(capsys, blob_folder, tmp_path):
    model_path = tmp_path / "m.safetensors"
    code, stdout, err = run(capsys, "train", blob_folder, "--out", model_path, "--resume", "--steps", "4")
    assert code == 1
    assert "--resume" in err and "m.state.safetensors" in err
    assert len(err.strip().splitlines()) == 1
    assert files_in(tmp_path) == sorted(p.name for p in blob_folder.iterdir())  # nothing new written


def test_resume_is_bit_identical(capsys, blob_folder, tmp_path):
    """4 steps straight and 2 steps + resume to 4 give the same weights, optimiser and RNG state."""
    straight, split = tmp_path / "straight" / "m.safetensors", tmp_path / "split" / "m.safetensors"
    assert run(capsys, "train", blob_folder, "--out", straight, "--steps", "4", *TRAIN_ARGS)[0] == 0
    assert run(capsys, "train", blob_folder, "--out", split, "--steps", "2", *TRAIN_ARGS)[0] == 0
    assert read_metadata(split)["record"]["iterations"] == 2
    # resume names neither --mpp nor the patch settings: they come from the saved state
    code, _, err = run(capsys, "train", blob_folder, "--out", split, "--resume", "--steps", "4")
    assert code == 0, err
    for a, b in ((straight, split), (state_path(straight), state_path(split))):
        ta, tb = load_file(str(a)), load_file(str(b))
        assert sorted(ta) == sorted(tb)
        generator = [k for k in ta if k.startswith("generator.")]
        assert generator
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{b.name}: {key} differs"


def test_train_init_from_a_model(capsys, blob_folder, tiny_model_file, tmp_path):
    """A new run can start from a model's weights; its record says where they came from."""
    model_path = tmp_path / "warm.safetensors"
    code, _, err = run(
        capsys,
        "train",
        blob_folder,
        "--out",
        model_path,
        "--steps",
        "2",
        "--init-from",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--patch-size",
        "64",
        "--batch-size",
        "2",
    )
    assert code == 0, err
    meta = read_metadata(model_path)
    assert meta["record"]["initialised_from"]["model"] == str(tiny_model_file)
    assert meta["record"]["initialised_from"]["iterations"] == 150
    code, _, err = run(
        capsys,
        "train",
        blob_folder,
        "--out",
        tmp_path / "x.safetensors",
        "--steps",
        "2",
        "--init-from",
        tiny_model_file,
        "--config",
        "tiny",
    )
    assert code == 1 and "--init-from" in err


def test_train_missing_data_dir(capsys, tmp_path):
    model_path = tmp_path / "m.safetensors"
    code, _, err = run(capsys, "train", tmp_path / "nowhere", "--out", model_path, "--steps", "2", *TRAIN_ARGS)
    assert code == 1 and "does not exist" in err
    assert not model_path.exists() and not state_path(model_path).exists()


# --- info ---------------------------------------------------------------------------------------


def test_info(capsys, tiny_model_file, trained_tiny):
    code, stdout, err = run(capsys, "info", "--model", tiny_model_file)
    assert code == 0, err
    assert f"model: {tiny_model_file}" in stdout
    assert "  base_width: 8" in stdout
    assert f"  diffusion_steps: {TINY.diffusion_steps}" in stdout
    assert f"  iterations: {trained_tiny[1].step}" in stdout  # the training record, written as "steps" before
    code, stdout, _ = run(capsys, "info", "--model", tiny_model_file, "--json")
    assert code == 0
    meta = json.loads(stdout[stdout.index("\n{") + 1 :])
    assert meta["model_config"]["base_width"] == 8 and meta["kind"] == "model"


def test_installed_entry_point(tiny_model_file):
    """The `napari-cdal` executable installed beside this Python runs the same CLI."""
    exe = Path(sys.executable).with_name("napari-cdal")
    if not exe.exists():
        found = shutil.which("napari-cdal")
        if found is None:
            pytest.skip("napari-cdal executable not installed")
        exe = Path(found)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [str(exe), "info", "--model", str(tiny_model_file)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "base_width: 8" in done.stdout
    done = subprocess.run(
        [str(exe), "info", "--model", str(tiny_model_file.with_name("absent.safetensors"))],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("napari-cdal info: error: checkpoint not found")


# --- bad inputs ---------------------------------------------------------------------------------


def _text_tif(folder):
    path = folder / "x.tif"
    path.write_text("not an image at all\n")
    return path


def _five_channels(folder):
    path = folder / "five.tif"
    tifffile.imwrite(path, np.zeros((32, 32, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    return path


def _empty_array(folder):
    path = folder / "empty.tif"
    with pytest.warns(UserWarning):
        tifffile.imwrite(path, np.zeros((0, 0), np.uint8))
    return path


def _zero_bytes(folder):
    path = folder / "zero.tif"
    path.write_bytes(b"")
    return path


def _four_d(folder):
    path = folder / "stack.tif"
    tifffile.imwrite(path, np.zeros((2, 3, 32, 32), np.uint8), photometric="minisblack")
    return path


def _varying_alpha(folder):
    rgba = np.full((32, 32, 4), 200, np.uint8)
    rgba[:16, :, 3] = 0
    path = folder / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda folder: folder / "missing.tif", ["missing.tif", "not found"]),
        (_text_tif, ["x.tif", "cannot read"]),
        (_five_channels, ["five.tif", "5 channels"]),
        (_empty_array, ["empty.tif", "empty"]),
        (_zero_bytes, ["zero.tif", "cannot read"]),
        (_four_d, ["stack.tif", "shape (2, 3, 32, 32)"]),
        (_varying_alpha, ["alpha.png", "alpha"]),
    ],
    ids=["missing", "text-as-tif", "five-channels", "empty-array", "zero-bytes", "4d", "varying-alpha"],
)
def test_segment_bad_image(capsys, tiny_model_file, tmp_path, make, words):
    image = make(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "segment", image, "--model", tiny_model_file, "--mpp", "0.5", "--out", out)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-cdal segment: error: ")
    for word in words:
        assert word in lines[0]
    assert stdout == ""
    assert files_in(out) == []


def _random_bytes(folder, model_file):
    path = folder / "random.safetensors"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    return path


def _no_metadata(folder, model_file):
    path = folder / "plain.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path))
    return path


def _mismatched_config(folder, model_file):
    tensors = load_file(str(model_file))
    with safe_open(str(model_file), framework="pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
    meta["model_config"]["base_width"] = 16
    path = folder / "mismatch.safetensors"
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (_random_bytes, ["random.safetensors", "not a readable safetensors checkpoint"]),
        (_no_metadata, ["plain.safetensors", "not a napari-cdal checkpoint"]),
        (_mismatched_config, ["mismatch.safetensors", "do not match"]),
        (lambda folder, model_file: folder / "absent.safetensors", ["absent.safetensors", "not found"]),
    ],
    ids=["random-bytes", "no-metadata", "mismatched-config", "missing"],
)
@pytest.mark.parametrize("command", ["segment", "evaluate", "info"])
def test_bad_checkpoint(capsys, tiny_model_file, blob_images, blob_folder, tmp_path, make, words, command):
    checkpoint = make(tmp_path, tiny_model_file)
    out = tmp_path / "out"
    args = {
        "segment": ["segment", blob_images[0], "--out", out],
        "evaluate": ["evaluate", blob_folder, "--json", out / "scores.json"],
        "info": ["info"],
    }[command]
    code, stdout, err = run(capsys, *args, "--model", checkpoint)
    if command == "info" and make is _mismatched_config:
        assert code == 0  # info reads the metadata only; the weights are never built
        return
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0]
    assert files_in(out) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
@pytest.mark.parametrize("command", ["segment", "evaluate", "train"])
def test_cuda_without_cuda(capsys, tiny_model_file, blob_images, blob_folder, tmp_path, command):
    out = tmp_path / "out"
    args = {
        "segment": ["segment", blob_images[0], "--out", out, "--model", tiny_model_file],
        "evaluate": ["evaluate", blob_folder, "--json", out / "scores.json", "--model", tiny_model_file],
        "train": ["train", blob_folder, "--out", out / "m.safetensors", "--steps", "2", *TRAIN_ARGS],
    }[command]
    code, _, err = run(capsys, *args, "--device", "cuda")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "--device cpu" in lines[0]
    assert files_in(out) == []


def test_out_is_a_file(capsys, tiny_model_file, blob_images, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    code, _, err = run(capsys, "segment", blob_images[0], "--model", tiny_model_file, "--out", out)
    assert code == 1 and "out.txt" in err
    assert out.read_text() == "keep me"


def test_non_positive_mpp(capsys, tiny_model_file, blob_images, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", blob_images[0], "--model", tiny_model_file, "--mpp", "0", "--out", out)
    assert code == 1 and "--mpp 0.0 is not a µm per pixel between 0.05 and 5.0" in err
    assert files_in(out) == []


# --- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, options",
    [
        (
            "segment",
            [
                "--out",
                "--model",
                "--steps",
                "--samples",
                "--seed",
                "--mpp",
                "--threshold",
                "--save-steps",
                "--save-attention",
                "--save-uncertainty",
                "--device",
                "--threads",
            ],
        ),
        (
            "evaluate",
            ["--model", "--steps", "--samples", "--seed", "--mpp", "--json", "--split", "--subset", "--device"],
        ),
        (
            "train",
            [
                "--out",
                "--steps",
                "--resume",
                "--config",
                "--split",
                "--mpp",
                "--batch-size",
                "--patch-size",
                "--seed",
                "--checkpoint-every",
                "--validate-every",
                "--device",
            ],
        ),
        ("info", ["--model", "--json"]),
    ],
)
def test_help(capsys, command, options):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: napari-cdal {command}")
    for option in options:
        assert option in text, option


def _help_defaults(capsys, monkeypatch, command: str) -> dict[str, str]:
    """Each option of `command --help` that quotes a default, and what it quotes: the text after its last
    "(default: " up to the end of its help, without the closing parenthesis (wide columns: one line an option)."""
    import re

    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    found = {}
    for entry in re.split(r"\n  (?=-)", text.split("options:", 1)[1]):
        if "(default: " in entry:
            found[entry.split()[0].rstrip(",")] = entry.rsplit("(default: ", 1)[1].strip().removesuffix(")")
    return found


def test_help_quotes_the_defaults_the_runs_take(capsys, monkeypatch):
    from napari_cdal.catalog import bundled_model_path
    from napari_cdal.cli.parser import build_parser
    from napari_cdal.engine.config import TrainConfig
    from napari_cdal.engine.defaults import DEFAULT_IMAGE_MPP, DEFAULT_THRESHOLD
    from napari_cdal.engine.training.finetune import finetune_config

    train, finetune = TrainConfig(), finetune_config()
    quoted = _help_defaults(capsys, monkeypatch, "train")
    for option, value in {
        "--iterations": train.iterations,
        "--batch-size": train.batch_size,
        "--patch-size": train.patch_size,
        "--seed": train.seed,
        "--checkpoint-every": train.checkpoint_every,
        "--validate-every": train.validate_every,
    }.items():
        assert quoted[option] == str(value), option
    quoted = _help_defaults(capsys, monkeypatch, "finetune")
    assert quoted["--iterations"] == str(finetune.iterations) and quoted["--seed"] == str(finetune.seed)
    assert float(quoted["--lr"]) == finetune.lr_g and quoted["--mpp"].startswith(f"{DEFAULT_IMAGE_MPP},")
    quoted = _help_defaults(capsys, monkeypatch, "segment")
    assert float(quoted["--threshold"]) == DEFAULT_THRESHOLD and quoted["--mpp"].startswith(f"{DEFAULT_IMAGE_MPP},")
    assert quoted["--seed"] == str(build_parser().parse_args(["segment", "--out", "o"]).seed)
    if bundled_model_path().is_file():  # the bundled model's own sampling defaults, read from its file
        from napari_cdal.engine.method.model import load_model

        config = load_model().config
        assert quoted["--sampling-steps"].endswith(f"the bundled model: {config.sampling_steps}")
        assert quoted["--samples"].endswith(f"bundled: {config.default_samples}")


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ("segment", "evaluate", "train", "info"):
        assert command in text
