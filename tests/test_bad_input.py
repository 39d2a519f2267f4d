"""Nothing lost, nothing silent: every bad input or fault gives one line before the work, and no file changes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import TINY, files_in, message_lines, run
from PIL import Image

from napari_cdal.catalog import list_models
from napari_cdal.cli import state_path
from napari_cdal.engine import checks
from napari_cdal.engine.io import checkpoint, owner
from napari_cdal.engine.io.checkpoint import (
    atomic_write,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from napari_cdal.engine.io.images import integer_bit_depth, to_rgb_float
from napari_cdal.engine.method.model import bundled_model_path, load_model
from napari_cdal.engine.segment.stain import keep_stained, stained_nuclei


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_error_line(err: str, command: str) -> str:
    """The one line a command printed besides its (carriage-return redrawn) progress bars."""
    lines = message_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"napari-cdal {command}: error: "), err
    return lines[0]


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if a command gets as far as loading a model: its checks must come first."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("napari_cdal.cli.common.load_model", refuse)


def dead_pid() -> int:
    """The pid of a process that has ended (so no live writer owns a temporary file of that pid)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- option ranges, all refused before the model is loaded ---------------------------------------


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("--mpp", "inf", "--mpp inf is not a µm per pixel between 0.05 and 5.0"),
        ("--mpp", "1000", "--mpp 1000.0 is not a µm per pixel"),
        ("--mpp", "nan", "--mpp nan is not a µm per pixel"),
        ("--mpp", "0.01", "--mpp 0.01 is not a µm per pixel"),
        ("--threads", "-2", "--threads -2 must be an integer of at least 1"),
        ("--threshold", "1.5", "--threshold 1.5 must lie strictly between 0 and 1"),
        ("--threshold", "0", "--threshold 0.0 must lie strictly between 0 and 1"),
        ("--steps", "0", "--steps 0 must be an integer of at least 1"),
        ("--samples", "0", "--samples 0 must be an integer of at least 1"),
        ("--review", "0", "--review 0 must be an integer of at least 1"),
        ("--review", "-3", "--review -3 must be an integer of at least 1"),
    ],
)
def test_segment_options_out_of_range(capsys, no_model_load, blob_images, tmp_path, option, value, words):
    code, _, err = run(capsys, "segment", blob_images[0], "--out", tmp_path / "out", option, value)
    assert code == 1 and words in one_error_line(err, "segment")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, words",
    [
        (["--steps", "0"], "--steps 0 must be an integer of at least 1"),
        (["--checkpoint-every", "0"], "--checkpoint-every 0 must be an integer of at least 1"),
        (["--validate-every", "0"], "--validate-every 0 must be an integer of at least 1"),
        (["--batch-size", "0"], "--batch-size 0 must be an integer of at least 1"),
        (["--patch-size", "7"], "--patch-size 7 must be a positive multiple of 4 for this model; use e.g. 8"),
        (["--mpp", "nan"], "--mpp nan is not a µm per pixel"),
        (["--threads", "0"], "--threads 0 must be an integer of at least 1"),
    ],
)
def test_train_options_out_of_range(capsys, blob_folder, tmp_path, options, words):
    out = tmp_path / "runs" / "m.safetensors"
    code, _, err = run(capsys, "train", blob_folder, "--config", "tiny", "--out", out, *options)
    assert code == 1 and words in one_error_line(err, "train")
    assert not out.parent.exists()


def test_train_config_file_is_checked_too(capsys, blob_folder, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"steps": 0}))
    code, _, err = run(
        capsys, "train", blob_folder, "--config", "tiny", "--train-config", recipe, "--out", tmp_path / "m.safetensors"
    )
    assert code == 1 and "TrainConfig.iterations must be an integer >= 1, got 0" in one_error_line(err, "train")


@pytest.mark.parametrize(
    "options, words",
    [
        (["--lr", "nan"], "--lr nan must be a learning rate in (0, 1]"),
        (["--steps", "0"], "--steps 0 must be an integer of at least 1"),
        (["--mpp", "inf"], "--mpp inf is not a µm per pixel"),
    ],
)
def test_finetune_options_out_of_range(capsys, no_model_load, blob_images, tmp_path, options, words):
    mask = tmp_path / "mask.png"
    Image.fromarray((blob_images[2].instances > 0).astype(np.uint8)).save(mask)
    out = tmp_path / "new.safetensors"
    code, _, err = run(capsys, "finetune", blob_images[0], "--masks", mask, "--out", out, *options)
    assert code == 1 and words in one_error_line(err, "finetune")
    assert not out.exists()


# --- never overwrite -----------------------------------------------------------------------------


def test_segment_keeps_an_existing_labels_file_unless_overwrite(capsys, tiny_model_file, blob_images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    corrected = out / "tile_labels.tif"
    tifffile.imwrite(corrected, np.ones((128, 128), np.uint16))  # a mask the user corrected
    before = digest(corrected)
    code, _, err = run(
        capsys, "segment", blob_images[0], "--model", tiny_model_file, "--mpp", "0.5", "--out", out, "--save-steps"
    )
    line = one_error_line(err, "segment")
    assert code == 1 and "tile_labels.tif already exists" in line and "--overwrite" in line
    assert digest(corrected) == before and files_in(out) == ["tile_labels.tif"]
    code, _, _ = run(
        capsys, "segment", blob_images[0], "--model", tiny_model_file, "--mpp", "0.5", "--out", out, "--overwrite"
    )
    assert code == 0 and digest(corrected) != before


def test_segment_refuses_a_folder_where_an_output_goes(capsys, no_model_load, blob_images, tmp_path):
    (tmp_path / "out" / "tile_labels.tif").mkdir(parents=True)
    code, _, err = run(capsys, "segment", blob_images[0], "--out", tmp_path / "out", "--overwrite")
    assert code == 1 and "tile_labels.tif is a folder where an output file goes" in one_error_line(err, "segment")


def test_segment_out_under_a_file_or_unwritable(capsys, monkeypatch, no_model_load, blob_images, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, "segment", blob_images[0], "--out", tmp_path / "afile" / "out")
    assert code == 1 and "afile is a file, not a folder" in one_error_line(err, "segment")

    def read_only(folder):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(checks, "_probe_write", read_only)
    code, _, err = run(capsys, "segment", blob_images[0], "--out", tmp_path / "new" / "out")
    line = one_error_line(err, "segment")
    assert code == 1 and "is not writable" in line and "Read-only file system" in line
    assert not (tmp_path / "new").exists()


def test_train_never_replaces_a_file_or_the_bundled_model(capsys, blob_folder, tmp_path):
    existing = tmp_path / "m.safetensors"
    existing.write_bytes(b"someone's model")
    code, _, err = run(capsys, "train", blob_folder, "--config", "tiny", "--steps", "2", "--out", existing)
    assert code == 1 and "already exists and train never replaces a file" in one_error_line(err, "train")
    assert existing.read_bytes() == b"someone's model"
    bundled = bundled_model_path()
    before = digest(bundled)
    code, _, err = run(capsys, "train", blob_folder, "--config", "tiny", "--steps", "2", "--out", bundled)
    assert code == 1 and "bundled weights, which are never replaced" in one_error_line(err, "train")
    code, _, err = run(capsys, "train", blob_folder, "--config", "tiny", "--steps", "2", "--out", bundled, "--resume")
    assert code == 1 and "never replaced" in err
    assert digest(bundled) == before


def test_train_resume_goes_on_only_where_there_is_more_to_do(capsys, blob_folder, tmp_path):
    out = tmp_path / "m.safetensors"
    common = ["--config", "tiny", "--patch-size", "32", "--batch-size", "2", "--threads", "1"]
    assert run(capsys, "train", blob_folder, "--out", out, "--steps", "2", *common)[0] == 0
    code, _, err = run(capsys, "train", blob_folder, "--out", out, "--steps", "2", *common)
    assert code == 1 and "or pass --resume to continue the run that wrote it" in one_error_line(err, "train")
    code, _, err = run(capsys, "train", blob_folder, "--out", out, "--resume", "--threads", "1")
    assert code == 1 and "has finished its 2 iterations; give --iterations more than 2" in one_error_line(err, "train")
    code, _, err = run(capsys, "train", blob_folder, "--out", out, "--resume", "--steps", "1", "--threads", "1")
    assert code == 1 and "already at iteration 2; give --steps more than 2" in one_error_line(err, "train")
    assert state_path(out).exists()


def test_evaluate_json_replaces_only_an_earlier_result(capsys, tiny_model_file, blob_folder, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": ["blob-a"]}))
    code, _, err = run(capsys, "evaluate", blob_folder, "--model", tiny_model_file, "--json", split)
    assert code == 1 and "is not an earlier evaluate result; it is kept" in one_error_line(err, "evaluate")
    assert json.loads(split.read_text()) == {"validation": ["blob-a"]}
    result = tmp_path / "result.json"
    for _ in range(2):  # the second run replaces the first's result
        code, _, _ = run(
            capsys,
            "evaluate",
            blob_folder,
            "--model",
            tiny_model_file,
            "--mpp",
            "0.5",
            "--split",
            split,
            "--json",
            result,
        )
        assert code == 0 and "per_image" in json.loads(result.read_text())


def test_evaluate_or_train_an_empty_folder_is_an_error(capsys, tmp_path):
    (tmp_path / "images").mkdir()
    code, _, err = run(capsys, "evaluate", tmp_path, "--json", tmp_path / "r.json")
    assert code == 1 and "no images to score" in one_error_line(err, "evaluate")
    assert not (tmp_path / "r.json").exists()
    code, _, err = run(capsys, "train", tmp_path, "--config", "tiny", "--out", tmp_path / "m.safetensors")
    assert code == 1 and "no training images" in one_error_line(err, "train")


# --- faults while writing ------------------------------------------------------------------------


def test_full_disk_in_segment_is_one_line_and_leaves_nothing(
    capsys, monkeypatch, tiny_model_file, blob_images, tmp_path
):
    def full(path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tifffile, "imwrite", full)
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", blob_images[0], "--model", tiny_model_file, "--mpp", "0.5", "--out", out)
    line = one_error_line(err, "segment")
    assert code == 1 and "No space left on device" in line and "tile_labels.tif" in line
    assert files_in(out) == []  # no half-written file, no temporary one


def test_full_disk_in_finetune_is_one_line_and_leaves_nothing(
    capsys, monkeypatch, tiny_model_file, blob_images, tmp_path
):
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr("safetensors.torch.save_file", full)
    mask = tmp_path / "mask.png"
    Image.fromarray(blob_images[2].instances.astype(np.uint16)).save(mask)
    out = tmp_path / "models" / "new.safetensors"
    code, _, err = run(
        capsys,
        "finetune",
        blob_images[0],
        "--masks",
        mask,
        "--model",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--steps",
        "2",
        "--out",
        out,
        "--threads",
        "1",
    )
    line = one_error_line(err, "finetune")
    assert code == 1 and "No space left on device" in line and "source model is unchanged" in line
    assert files_in(out.parent) == []


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 3 GB. Buy new RAM! out of memory"),
    ],
)
def test_running_out_of_memory_is_one_line(capsys, monkeypatch, tiny_model_file, blob_images, tmp_path, error):
    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr("napari_cdal.engine.segment.image.segment_image", exhausted)
    code, _, err = run(capsys, "segment", blob_images[0], "--model", tiny_model_file, "--out", tmp_path / "out")
    line = one_error_line(err, "segment")
    assert code == 1 and "out of memory" in line and "--slide" in line


def test_an_image_too_large_for_free_memory_is_refused_before_it_is_read(
    capsys, monkeypatch, tiny_model_file, blob_images, tmp_path
):
    monkeypatch.setattr(checks, "available_memory", lambda: 2**10)

    def unread(path):
        raise AssertionError("the pixels were read before the memory check")

    monkeypatch.setattr("napari_cdal.engine.io.images.read_image", unread)
    code, _, err = run(capsys, "segment", blob_images[0], "--model", tiny_model_file, "--out", tmp_path / "out")
    line = one_error_line(err, "segment")
    assert code == 1 and "MiB of memory but 0 MiB are free" in line and "crop it into tiles" in line


def test_peak_memory_estimate_grows_with_what_is_kept() -> None:
    plain = checks.segment_peak_bytes(1000, 1000, 0.25, TINY, 2, 1, keep_steps=False, with_attention=False)
    kept = checks.segment_peak_bytes(1000, 1000, 0.25, TINY, 2, 2, keep_steps=True, with_attention=True)
    finer = checks.segment_peak_bytes(1000, 1000, 1.0, TINY, 2, 1, keep_steps=False, with_attention=False)
    assert 1000 * 1000 * 12 < plain < kept and finer > plain


# --- damaged inputs ------------------------------------------------------------------------------


def test_truncated_tiff_says_truncated(capsys, no_model_load, tmp_path):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.full((200, 200, 3), 128, np.uint8))
    data = whole.read_bytes()
    for name, size in (("cut.tif", len(data) // 2), ("stub.tif", 8)):
        (tmp_path / name).write_bytes(data[:size])
        code, _, err = run(capsys, "segment", tmp_path / name, "--out", tmp_path / "out")
        line = one_error_line(err, "segment")
        assert code == 1 and f"{name} is truncated" in line and "shape (0,)" not in line
    assert "200 x 200 x 3" in line or "describes no image" in line


def test_nan_weights_are_named_at_load(tiny_model_file, tmp_path):
    tensors, meta = load_checkpoint(tiny_model_file)
    key = next(k for k in tensors if k.startswith("generator.") and tensors[k].is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    broken = tmp_path / "nan.safetensors"
    save_checkpoint(broken, tensors, meta)
    with pytest.raises(ValueError, match=r"holds NaN or infinite generator weights .* use an earlier checkpoint"):
        load_model(broken)


def test_unsupported_file_type_is_named(capsys, no_model_load, tmp_path):
    (tmp_path / "scan.bmp").write_bytes(b"BM")
    code, _, err = run(capsys, "segment", tmp_path / "scan.bmp", "--out", tmp_path / "out")
    assert code == 1 and "scan.bmp is not a supported image file" in one_error_line(err, "segment")


# --- honest results ------------------------------------------------------------------------------


def test_bit_depth_from_the_data_not_the_dtype() -> None:
    assert integer_bit_depth(np.array([0, 255], np.uint8)) == 8
    assert integer_bit_depth(np.array([0, 200], np.uint16)) == 8
    assert integer_bit_depth(np.array([0, 1000], np.uint16)) == 10
    assert integer_bit_depth(np.array([0, 4095], np.uint16)) == 12
    assert integer_bit_depth(np.array([0, 4096], np.uint16)) == 14
    assert integer_bit_depth(np.array([0, 65535], np.uint16)) == 16
    assert integer_bit_depth(np.array([0, 32767], np.int16)) == 15  # the sign bit holds no brightness
    np.testing.assert_allclose(to_rgb_float(np.array([[0, 32767]], np.int16))[0, :, 0], [0.0, 255.0])
    rgb8 = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    twelve = (rgb8.astype(np.uint32) * 4095 // 255).astype(np.uint16)
    np.testing.assert_allclose(to_rgb_float(twelve), rgb8.astype(np.float32), atol=0.07)
    np.testing.assert_allclose(to_rgb_float(twelve, bit_depth=16), twelve * (255 / 65535), rtol=1e-6)


def test_twelve_bit_tile_segments_like_the_eight_bit_one(capsys, tiny_model_file, blob_images, tmp_path):
    tile = blob_images[2]
    twelve = tmp_path / "twelve.tif"
    tifffile.imwrite(twelve, (tile.image.astype(np.uint32) * 4095 // 255).astype(np.uint16))
    for image in (blob_images[0], twelve):
        assert run(capsys, "segment", image, "--model", tiny_model_file, "--mpp", "0.5", "--out", tmp_path)[0] == 0
    eight_bit = tifffile.imread(tmp_path / "tile_labels.tif")
    assert eight_bit.max() > 5
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "twelve_labels.tif") > 0, eight_bit > 0)


def _disc_labels(size: int = 64) -> np.ndarray:
    labels = np.zeros((size, size), np.uint32)
    yy, xx = np.mgrid[:size, :size]
    labels[(yy - 16) ** 2 + (xx - 16) ** 2 <= 36] = 1
    labels[(yy - 44) ** 2 + (xx - 44) ** 2 <= 36] = 2
    return labels


@pytest.mark.parametrize("fill", [255, 0, 200], ids=["white", "black", "flat-grey"])
def test_no_nuclei_on_blank_glass(fill) -> None:
    labels = _disc_labels()
    blank = np.full((64, 64, 3), fill, np.float32)
    assert not stained_nuclei(labels, blank, 0.25).any()
    assert keep_stained(labels, blank, 0.25).max() == 0


def test_stained_nuclei_stay_and_are_renumbered() -> None:
    labels = _disc_labels()
    image = np.full((64, 64, 3), 250.0, np.float32)  # glass ...
    image[labels == 2] = (90, 50, 130)  # ... with one haematoxylin-stained nucleus
    assert stained_nuclei(labels, image, 0.25).tolist() == [False, True]
    kept = keep_stained(labels, image, 0.25)
    assert kept.max() == 1 and np.array_equal(kept > 0, labels == 2)
    noisy = np.clip(np.random.default_rng(0).normal(240, 6, (64, 64, 3)), 0, 255).astype(np.float32)
    assert not stained_nuclei(labels, noisy, 0.25).any()  # scanner noise is not stain
    grey_tissue = np.repeat(np.where(labels > 0, 60.0, 200.0)[..., None], 3, axis=-1)
    assert stained_nuclei(labels, grey_tissue, 0.25).all()  # a grey scan with contrast keeps its nuclei


def test_blank_tiles_give_no_nuclei_through_the_cli(capsys, tiny_model_file, tmp_path):
    for name, fill in (("white", 255), ("black", 0)):
        tifffile.imwrite(tmp_path / f"{name}.tif", np.full((128, 128, 3), fill, np.uint8))
    code, out, _ = run(
        capsys,
        "segment",
        tmp_path / "white.tif",
        tmp_path / "black.tif",
        "--model",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--out",
        tmp_path / "out",
    )
    assert code == 0 and out.count(": 0 nuclei") == 2
    assert tifffile.imread(tmp_path / "out" / "white_labels.tif").max() == 0


# --- interrupted saves ---------------------------------------------------------------------------


def test_stale_temporary_files_are_removed_live_ones_kept(monkeypatch, tmp_path):
    dead = dead_pid()
    monkeypatch.setattr(owner, "writer_alive", lambda pid: pid != dead)  # no reuse of the dead pid
    stale = tmp_path / f"{checkpoint.temp_prefix(Path('new.safetensors'), dead)}abc123.tmp"
    live = tmp_path / f"{checkpoint.temp_prefix(Path('other.safetensors'))}def456.tmp"
    elsewhere = tmp_path / f".far.safetensors.otherhost~{dead}.xyz789.tmp"  # another machine's writer
    someone = tmp_path / ".notes.tmp"  # not a name atomic_write makes
    for path in (stale, live, elsewhere, someone):
        path.write_bytes(b"partial")
    (tmp_path / "kept.safetensors").write_bytes(b"model")
    assert remove_stale_temps(tmp_path) == [stale]
    assert live.exists() and elsewhere.exists() and someone.exists() and (tmp_path / "kept.safetensors").exists()
    old = time.time() - 2 * checkpoint.STALE_TEMP_SECONDS
    os.utime(elsewhere, (old, old))
    assert remove_stale_temps(tmp_path) == [elsewhere] and someone.exists()


def test_a_killed_save_leaves_no_model_and_is_cleaned_up(monkeypatch, tmp_path):
    target = tmp_path / "models" / "new.safetensors"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from napari_cdal.engine.io.checkpoint import atomic_write\n"
        "def slow(tmp):\n"
        "    Path(tmp).write_bytes(b'half a model')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        f"atomic_write({str(target)!r}, slow)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.kill()
    child.wait()
    monkeypatch.setattr(owner, "writer_alive", lambda pid: pid != child.pid)  # no reuse of its pid
    left = list(target.parent.iterdir())
    assert not target.exists() and len(left) == 1 and left[0].name.endswith(".tmp")
    assert [entry.path for entry in list_models(target.parent) if not entry.bundled] == []
    assert list(target.parent.iterdir()) == []  # listing the models cleaned it up
    left[0].write_bytes(b"again")  # and so does the next save of that name
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"whole"))
    assert sorted(p.name for p in target.parent.iterdir()) == ["new.safetensors"]


# --- round 2 (issue 26): every mode read or refused, models that cannot lie, one writer, whole sets ---------------


def finish(generator):
    """Run a worker body (a generator that returns its result) to the end; its return value."""
    try:
        while True:
            next(generator)
    except StopIteration as stop:
        return stop.value


def tampered_model(source: Path, folder: Path, config: dict | None = None, tensors=None) -> Path:
    """A copy of the tiny model whose metadata claims `config` changes (or whose tensors are `tensors`)."""
    from napari_cdal.engine.config import ModelConfig

    stored, meta = load_checkpoint(source)
    meta["model_config"] = {**ModelConfig.from_dict(meta["model_config"]).to_dict(), **(config or {})}
    path = folder / f"tampered-{len(list(folder.glob('tampered-*')))}.safetensors"
    save_checkpoint(path, tensors(stored) if tensors else stored, meta)
    return path


def relabel_as_int32(stored: dict) -> dict:
    """The first generator weight's float32 bytes relabelled int32 (same byte count, nothing else changed)."""
    key = next(k for k in stored if k.startswith("generator.") and stored[k].dtype == torch.float32)
    return {**stored, key: stored[key].view(torch.int32)}


def test_image_modes_are_read_as_their_colours_or_refused(tmp_path) -> None:
    from PIL import ImageOps

    from napari_cdal.engine.io.images import ImageError, read_header, read_image

    rgb = blob_tile_image(7)
    picture = Image.fromarray(rgb)
    palette = picture.quantize(64)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png"), np.asarray(palette.convert("RGB")))
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png", labels=True), np.asarray(palette))  # ids
    colours = np.asarray(palette.getpalette(), np.uint16).reshape(-1, 3)
    tifffile.imwrite(
        tmp_path / "palette.tif",
        np.asarray(palette),
        photometric="palette",
        colormap=np.resize(colours, (256, 3)).T * 257,
    )
    np.testing.assert_array_equal(read_image(tmp_path / "palette.tif"), np.asarray(palette.convert("RGB")))
    picture.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - rgb).max() < 40  # not the K-less 3 planes
    tifffile.imwrite(tmp_path / "cmyk.tif", np.asarray(picture.convert("CMYK")), photometric="separated")
    np.testing.assert_array_equal(read_image(tmp_path / "cmyk.tif"), rgb)
    grey = rgb[..., 0]
    tifffile.imwrite(tmp_path / "white.tif", 255 - grey, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "white.tif"), grey)
    Image.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[..., 0], grey)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    np.testing.assert_array_equal(read_image(tmp_path / "sixteen.png"), grey.astype(np.uint16) * 257)
    picture.convert("LAB").save(tmp_path / "lab.tif")
    with pytest.raises(ImageError, match=r"lab.tif stores its pixels as TIFF CIELAB, which this tool does not read"):
        read_header(tmp_path / "lab.tif")
    for orientation in range(1, 9):  # as Pillow turns it for viewers, in every format
        exif = Image.Exif()
        exif[0x0112] = orientation
        picture.crop((0, 0, 128, 96)).save(tmp_path / f"turned{orientation}.png", exif=exif)
        shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / f"turned{orientation}.png")))
        np.testing.assert_array_equal(read_image(tmp_path / f"turned{orientation}.png"), shown)
        tifffile.imwrite(tmp_path / f"turned{orientation}.tif", rgb[:96], extratags=[(274, "H", 1, orientation, True)])
        np.testing.assert_array_equal(read_image(tmp_path / f"turned{orientation}.tif"), shown)
        assert read_header(tmp_path / f"turned{orientation}.tif").shape == shown.shape


def blob_tile_image(seed: int) -> np.ndarray:
    from conftest import blob_tile

    return blob_tile(seed).image


def test_floats_cmyk_grey_and_turned_tiles_through_the_cli(capsys, tiny_model_file, tmp_path) -> None:
    rgb = blob_tile_image(7)
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "tile.tif", rgb)
    tifffile.imwrite(folder / "float.tif", rgb.astype(np.float32) * 257, photometric="rgb")  # 16-bit as float
    tifffile.imwrite(folder / "cmyk.tif", np.asarray(Image.fromarray(rgb).convert("CMYK")), photometric="separated")
    Image.fromarray(rgb[..., 1]).save(folder / "grey.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb[:96]).save(folder / "turned.png", exif=exif)
    out = tmp_path / "out"
    code, said, err = run(
        capsys,
        "segment",
        *sorted(folder.iterdir()),
        "--model",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--runtime",
        "torch",
        "--out",
        out,
    )
    assert code == 0, err
    reference = tifffile.imread(out / "tile_labels.tif")
    assert reference.max() > 5
    for name in ("float", "cmyk"):  # read as the tile: the same nuclei, not white (float) or grey levels
        np.testing.assert_array_equal(tifffile.imread(out / f"{name}_labels.tif"), reference)
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert any(
        re.match(
            r"note: float.tif: it holds floating-point values from \d+ to 65535, read with 0 as black "
            "and 65535 as white",
            line,
        )
        for line in notes
    ), err
    assert any(line.startswith("note: grey.png: it is grayscale, but the model segments H&E") for line in notes)
    assert any(
        "turned.png: its orientation tag (6: turned 90° clockwise) was applied" in line
        and "96 x 128 px (width x height), not the file's stored 128 x 96" in line
        for line in notes
    )
    assert tifffile.imread(out / "turned_labels.tif").shape == (128, 96)
    assert not any(line.startswith(("note: tile.tif", "note: cmyk.tif: it is")) for line in notes)


def test_the_widget_says_the_same_notes_and_refuses_the_same_models(tiny_model_file, tmp_path) -> None:
    from napari_cdal._widgets._segment_run import SegmentSettings, run_segmentation
    from napari_cdal._widgets._worker import RunFailure

    settings = SegmentSettings(str(tiny_model_file), "cpu", 0.5, 1, 1, 0, 0.5)
    grey = blob_tile_image(7)[..., 1]
    shown = finish(run_segmentation(grey, settings))
    assert any(note.startswith("it is grayscale, but the model segments H&E") for note in shown.notes)
    lying = tampered_model(tiny_model_file, tmp_path, {"diffusion_steps": 10**9})
    failed = finish(run_segmentation(grey, SegmentSettings(str(lying), "cpu", 0.5, 1, 1, 0, 0.5)))
    assert (
        isinstance(failed, RunFailure)
        and "ModelConfig.diffusion_steps must be an integer from 1 to 1000" in failed.message
    )
    many = finish(run_segmentation(grey, SegmentSettings(str(tiny_model_file), "cpu", 0.5, 1, 10**6, 0, 0.5)))
    assert isinstance(many, RunFailure) and "of memory but" in many.message


@pytest.mark.parametrize(
    "claim, words",
    [
        ({"diffusion_steps": 10**9}, "ModelConfig.diffusion_steps must be an integer from 1 to 1000, got 1000000000"),
        ({"default_samples": 10**9}, "ModelConfig.default_samples must be an integer from 1 to 256, got 1000000000"),
        ({"base_width": 10**6}, "ModelConfig.base_width must be an integer from 1 to 512"),
        ({"channel_mults": [1, 2, 4, 8, 16, 32, 64, 128, 256]}, "ModelConfig.channel_mults must be 1 to 8 integers"),
        ({"beta_max": float("nan")}, "ModelConfig.beta_max must be a number in (0, 1000]"),
        (
            {"base_width": 512},
            "generator weights do not match its config (encoder.stem.weight has shape (8, 3, 3, 3) "
            "where its config builds (512, 3, 3, 3))",
        ),
        ("int32", "generator weight"),
    ],
)
def test_a_model_file_that_claims_what_it_is_not_is_refused_at_load(tiny_model_file, tmp_path, claim, words) -> None:
    from napari_cdal.engine.io.checkpoint import CheckpointError

    lying = (
        tampered_model(tiny_model_file, tmp_path, tensors=relabel_as_int32)
        if claim == "int32"
        else tampered_model(tiny_model_file, tmp_path, claim)
    )
    with pytest.raises(CheckpointError) as info:
        load_model(lying)
    assert words in str(info.value) and "\n" not in str(info.value)
    if claim == "int32":
        assert "holds int32 values, but every weight is floating point" in str(info.value)


def test_a_lying_model_is_refused_by_segment_before_any_work(capsys, tiny_model_file, blob_images, tmp_path) -> None:
    lying = tampered_model(tiny_model_file, tmp_path, tensors=relabel_as_int32)
    code, _, err = run(capsys, "segment", blob_images[0], "--model", lying, "--out", tmp_path / "out")
    assert code == 1 and "holds int32 values, but every weight is floating point" in one_error_line(err, "segment")
    assert files_in(tmp_path / "out") == []


def test_memory_refusals_count_the_samples(capsys, monkeypatch, tiny_model_file, blob_images, tmp_path) -> None:
    one = checks.segment_peak_bytes(1000, 1000, 0.25, TINY, 2, 1)
    assert checks.segment_peak_bytes(1000, 1000, 0.25, TINY, 2, 101) > one + 100 * 250 * 250 * 600  # K x model px
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        "segment",
        blob_images[0],
        "--model",
        tiny_model_file,
        "--samples",
        "100000",
        "--runtime",
        "torch",
        "--out",
        out,
    )
    line = one_error_line(err, "segment")
    assert code == 1 and "100000 samples) needs about" in line and "of memory but" in line and "--samples" in line
    assert files_in(out) == []
    greedy = tampered_model(tiny_model_file, tmp_path, {"default_samples": 256})  # within bounds, asks for much
    monkeypatch.setattr(checks, "available_memory", lambda: 2**28)
    code, _, err = run(capsys, "segment", blob_images[0], "--model", greedy, "--runtime", "torch", "--out", out)
    assert code == 1 and "256 samples) needs about" in one_error_line(err, "segment")


@pytest.mark.parametrize(
    "command, option, value, words",
    [
        ("segment", "--seed", str(2**70), f"--seed {2**70} must be between 0 and 2**64-1"),
        ("segment", "--seed", "-1", "--seed -1 must be between 0 and 2**64-1"),
        ("segment", "--threads", "100000", "--threads 100000 must be an integer between 1 and 1024"),
        ("segment", "--workers", "5000", "--workers 5000 must be an integer between 1 and 1024"),
        ("segment", "--samples", str(2**40), f"--samples {2**40} must be an integer between 1 and 2147483647"),
        ("segment", "--review", str(2**70), f"--review {2**70} must be an integer between 1 and 2147483647"),
        ("train", "--seed", str(2**70), f"--seed {2**70} must be between 0 and 2**64-1"),
        ("train", "--steps", str(2**40), f"--steps {2**40} must be an integer between 1 and 2147483647"),
        ("train", "--batch-size", str(2**40), f"--batch-size {2**40} must be an integer between 1 and 2147483647"),
        ("train", "--patch-size", str(2**40), f"--patch-size {2**40} must be an integer between 1 and 2147483647"),
        ("finetune", "--seed", str(2**70), f"--seed {2**70} must be between 0 and 2**64-1"),
        ("evaluate", "--seed", str(2**64), f"--seed {2**64} must be between 0 and 2**64-1"),
    ],
)
def test_every_range_error_names_the_option_as_typed(
    capsys, no_model_load, blob_folder, tmp_path, command, option, value, words
) -> None:
    image = blob_folder / "images" / "blob-a.tif"
    inputs = {
        "segment": [image, "--out", tmp_path / "out"],
        "train": [blob_folder, "--config", "tiny", "--out", tmp_path / "m.safetensors"],
        "finetune": [image, "--masks", blob_folder / "masks" / "blob-a.png", "--out", tmp_path / "m.safetensors"],
        "evaluate": [blob_folder],
    }[command]
    code, _, err = run(capsys, command, *inputs, option, value)
    assert code == 1 and words in one_error_line(err, command)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.safetensors").exists()


def test_train_refuses_masks_with_no_nucleus(capsys, blob_folder, tmp_path) -> None:
    for sub in ("masks", "masks_instance"):
        Image.fromarray(np.zeros((128, 128), np.uint8)).save(blob_folder / sub / "blob-b.png")
    out = tmp_path / "m.safetensors"
    code, _, err = run(capsys, "train", blob_folder, "--config", "tiny", "--steps", "2", "--out", out)
    line = one_error_line(err, "train")
    assert code == 1 and "the masks of tile 'blob-b'" in line and "are empty (no nucleus in them)" in line
    assert "--split" in line and not out.exists()


def _zero_affine_volume(path: Path) -> None:
    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape((6, 16, 16))
    header.set_data_dtype(np.float32)
    for row in ("srow_x", "srow_y", "srow_z"):
        header[row] = 0
    header["sform_code"], header["qform_code"] = 1, 0
    nibabel.save(nibabel.Nifti1Image(np.ones((6, 16, 16), np.float32), None, header=header), str(path))


def test_volumes_with_a_degenerate_affine_or_too_many_voxels_are_refused_before_work(
    capsys, no_model_load, tmp_path
) -> None:
    import gzip

    import nibabel

    from napari_cdal.engine.io.volumes import read_volume

    _zero_affine_volume(tmp_path / "flat.nii.gz")
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", tmp_path / "flat.nii.gz", "--model", "cdal_hippocampus", "--out", out)
    line = one_error_line(err, "segment")
    assert code == 1 and "flat.nii.gz has a degenerate affine" in line and "img.set_sform(" in line
    assert not out.exists()
    header = nibabel.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4)).header
    header.set_data_shape((4096, 4096, 4096))  # 256 GiB of float32 declared by a file of a few hundred bytes
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(header.binaryblock + bytes(1004)))
    with pytest.raises(
        checks.InputError,
        match=r"bomb.nii.gz \(4096 x 4096 x 4096 voxels of float32\) needs about "
        r"256.0 GiB of memory but",
    ):
        read_volume(tmp_path / "bomb.nii.gz")


def test_a_bomb_volume_is_a_memory_refusal_in_segment(capsys, no_model_load, tmp_path) -> None:
    import gzip

    import nibabel

    header = nibabel.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4)).header
    header.set_data_shape((4096, 4096, 4096))
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(header.binaryblock + bytes(1004)))
    code, _, err = run(capsys, "segment", tmp_path / "bomb.nii.gz", "--out", tmp_path / "out")
    line = one_error_line(err, "segment")
    assert code == 1 and "of memory but" in line and "truncated" not in line and "damaged" not in line


def _hold_lock(target: Path) -> subprocess.Popen:
    """A child process that holds the output lock of `target` until it is killed (it prints 'locked' first)."""
    script = (
        "import sys, time\n"
        "from napari_cdal.engine.io.lock import output_lock\n"
        f"with output_lock({str(target)!r}):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_one_writer_at_a_time_and_a_dead_writers_lock_is_taken_over(
    capsys, tiny_model_file, blob_folder, tmp_path
) -> None:
    from napari_cdal.engine.io.lock import lock_path

    model = tmp_path / "runs" / "m.safetensors"
    out = tmp_path / "out"
    image = blob_folder / "images" / "blob-a.tif"
    children = [_hold_lock(model), _hold_lock(out / "blob-a_labels.tif")]
    try:
        code, _, err = run(capsys, "train", blob_folder, "--config", "tiny", "--steps", "2", "--out", model)
        line = one_error_line(err, "train")
        assert (
            code == 1
            and f"--out {model} is being written by another napari-cdal run (pid {children[0].pid} on this machine"
            in line
            and "nothing was written" in line
        )
        code, _, err = run(capsys, "finetune", image, "--masks", blob_folder / "masks" / "blob-a.png", "--out", model)
        assert code == 1 and "is being written by another napari-cdal run" in one_error_line(err, "finetune")
        code, _, err = run(
            capsys, "segment", image, "--model", tiny_model_file, "--mpp", "0.5", "--runtime", "torch", "--out", out
        )
        assert (
            code == 1
            and f"blob-a_labels.tif is being written by another napari-cdal run (pid {children[1].pid}"
            in one_error_line(err, "segment")
        )
        assert files_in(out) == [lock_path(out / "blob-a_labels.tif").name] and not model.exists()
    finally:
        for child in children:
            child.kill()
            child.wait()
    code, _, err = run(
        capsys, "segment", image, "--model", tiny_model_file, "--mpp", "0.5", "--runtime", "torch", "--out", out
    )  # its writer is dead: its lock is taken over
    assert code == 0, err
    assert files_in(out) == ["blob-a_labels.tif"]  # the lock went with the run


def test_lock_of_another_host_is_kept_and_says_what_to_delete(tmp_path) -> None:
    from napari_cdal.engine.io.lock import LockError, lock_path, output_lock

    target = tmp_path / "new" / "m.safetensors"
    lock = lock_path(target)
    lock.parent.mkdir()
    lock.write_text("otherhost~12\n")
    with pytest.raises(LockError, match=r"\(pid 12 on otherhost, since .*if no such run is going on, delete "):
        with output_lock(target):
            pass
    assert lock.read_text() == "otherhost~12\n"
    lock.unlink()
    with output_lock(tmp_path / "made" / "deep" / "m.safetensors"):
        assert (tmp_path / "made" / "deep").is_dir()
    assert not (tmp_path / "made").exists()  # folders it made and nothing filled are gone with it


def test_overwrite_stopped_half_way_leaves_the_earlier_set_whole(
    capsys, monkeypatch, tiny_model_file, blob_images, tmp_path
) -> None:
    from napari_cdal.engine.io import detections

    out = tmp_path / "out"
    first = [
        "segment",
        blob_images[0],
        "--model",
        tiny_model_file,
        "--mpp",
        "0.5",
        "--runtime",
        "torch",
        "--out",
        out,
        "--geojson",
        "--measurements",
    ]
    assert run(capsys, *first)[0] == 0
    before = {name: digest(out / name) for name in files_in(out)}
    assert sorted(before) == ["tile_labels.tif", "tile_nuclei.csv", "tile_nuclei.geojson"]
    real = detections.write_text

    def killed_at_the_table(path, text):
        if str(path).endswith(".csv"):
            raise KeyboardInterrupt  # as a Ctrl-C after the labels and the GeoJSON of the new set were written
        real(path, text)

    monkeypatch.setattr(detections, "write_text", killed_at_the_table)
    code, _, err = run(capsys, *first, "--overwrite", "--threshold", "0.3")
    assert code == 130
    assert {name: digest(out / name) for name in files_in(out)} == before  # nothing new, nothing hidden left
    monkeypatch.setattr(detections, "write_text", real)
    code, _, err = run(capsys, *first[:-2], "--overwrite", "--threshold", "0.3")  # no --geojson/--measurements now
    assert code == 0 and "note: removed tile_nuclei.geojson, tile_nuclei.csv of the earlier run" in err
    assert files_in(out) == ["tile_labels.tif"] and digest(out / "tile_labels.tif") != before["tile_labels.tif"]


def test_a_set_killed_while_written_or_while_moved_in_is_never_a_mix(tmp_path) -> None:
    from napari_cdal.engine.io.outputs import REMOVED_LIST, committed_folder, recover_output_set

    out = tmp_path / "out"
    out.mkdir()
    for name in ("a_labels.tif", "a_nuclei.csv"):
        (out / name).write_text("old")
    script = (
        "import time\n"
        "from pathlib import Path\n"
        "from napari_cdal.engine.io.outputs import output_set\n"
        f"out = Path({str(out)!r})\n"
        "files = {'labels': out / 'a_labels.tif', 'table': out / 'a_nuclei.csv'}\n"
        "with output_set(files, files['labels']) as staged:\n"
        "    staged['labels'].write_text('new')\n"
        "    print('half', flush=True)\n"
        "    time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "half"
    child.kill()
    child.wait()
    assert [(out / name).read_text() for name in ("a_labels.tif", "a_nuclei.csv")] == ["old", "old"]
    assert recover_output_set(out / "a_labels.tif") == []  # the killed writer's half set is removed, not moved in
    assert sorted(files_in(out)) == ["a_labels.tif", "a_nuclei.csv"]
    complete = committed_folder(out / "a_labels.tif")  # killed (SIGKILL) after the set was complete, mid-move
    complete.mkdir()
    (complete / "a_labels.tif").write_text("new")
    (complete / REMOVED_LIST).write_text(json.dumps(["a_nuclei.csv"]))
    assert recover_output_set(out / "a_labels.tif") == [out / "a_labels.tif"]
    assert files_in(out) == ["a_labels.tif"] and (out / "a_labels.tif").read_text() == "new"


def test_a_damaged_store_json_names_the_store(tmp_path) -> None:
    from napari_cdal.engine.slide.store import StoreError, open_store, store_levels

    store = tmp_path / "slide_labels.zarr"
    open_store(store, [(256, 256), (128, 128)], {"run": 1})
    (store / "levels" / "1" / "zarr.json").write_text("")
    with pytest.raises(
        StoreError,
        match=r"slide_labels.zarr is damaged: its levels/1/zarr.json cannot be read "
        r"\(JSONDecodeError: .*--overwrite",
    ):
        store_levels(store)
    (store / "zarr.json").write_text("{")
    with pytest.raises(StoreError, match=r"slide_labels.zarr is damaged: its zarr.json cannot be read"):
        open_store(store, [(256, 256), (128, 128)], {"run": 1})


def test_symlink_loops_are_not_called_missing(capsys, no_model_load, tmp_path) -> None:
    for name in ("tile.tif", "model.safetensors", "volume.nii.gz"):
        (tmp_path / name).symlink_to(tmp_path / f"back-{name}")
        (tmp_path / f"back-{name}").symlink_to(tmp_path / name)
    for image in ("tile.tif", "volume.nii.gz"):
        code, _, err = run(capsys, "segment", tmp_path / image, "--out", tmp_path / "out")
        line = one_error_line(err, "segment")
        assert code == 1 and f"{image} is a symbolic link that loops back on itself" in line and "not found" not in line
    with pytest.raises(ValueError, match="model.safetensors is a symbolic link that loops back on itself"):
        load_model(tmp_path / "model.safetensors")


def test_model_names_from_the_users_folder_and_a_folder_that_is_a_file(
    capsys, monkeypatch, tiny_model_file, tmp_path
) -> None:
    from napari_cdal.catalog import MODEL_DIR_ENV

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "mine.safetensors").write_bytes(tiny_model_file.read_bytes())
    monkeypatch.setenv(MODEL_DIR_ENV, str(folder))
    code, listed, _ = run(capsys, "info", "--list")
    assert code == 0 and "  mine: H&E nuclei" in listed
    for name in ("mine", "cdal_monuseg (bundled)"):
        code, said, err = run(capsys, "info", "--model", name)
        assert code == 0, err
    assert "tiny" not in said and "(bundled)" in said
    code, _, err = run(capsys, "info", "--model", "theirs")
    assert (
        code == 1
        and "theirs is neither a model file nor the name of a model; the names are" in one_error_line(err, "info")
        and "mine" in err
    )
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    monkeypatch.setenv(MODEL_DIR_ENV, str(afile))
    code, _, err = run(capsys, "info", "--list")
    assert code == 0 and f"warning: {MODEL_DIR_ENV} ({afile}) is a file, not a folder" in err
    code, _, err = run(capsys, "info", "--model", "mine")
    assert code == 1 and "is a file, not a folder" in one_error_line(err, "info")


def test_evaluate_and_the_widgets_volume_run_refuse_samples_beyond_memory(capsys, tiny_model_file, blob_folder) -> None:
    from conftest import TINY_CLASSES

    from napari_cdal._widgets import _volume_run
    from napari_cdal._widgets._segment_run import SegmentSettings
    from napari_cdal._widgets._worker import RunFailure
    from napari_cdal.engine.method.model import CdalModel

    code, _, err = run(
        capsys, "evaluate", blob_folder, "--model", tiny_model_file, "--samples", "100000", "--runtime", "torch"
    )
    line = one_error_line(err, "evaluate")
    assert code == 1 and "blob-a.tif (128 x 128 px, 100000 samples) needs about" in line and "--samples" in line
    model = CdalModel.initialise(TINY_CLASSES).eval()
    settings = SegmentSettings("unused", "cpu", 1.0, 1, 10**5, 0, 0.5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_volume_run, "sampling_model_cached", lambda *_: model)
        failed = finish(_volume_run.run_volume_segmentation(np.zeros((4, 16, 16), np.float32), settings))
    assert (
        isinstance(failed, RunFailure)
        and "the volume (4 x 16 x 16 voxels) needs about" in failed.message
        and "lower K" in failed.message
    )


def test_a_lock_naming_no_writer_is_taken_over_after_a_moment(tmp_path) -> None:
    from napari_cdal.engine.io.lock import UNWRITTEN_LOCK_SECONDS, lock_path, output_lock

    target = tmp_path / "m.safetensors"
    lock = lock_path(target)
    lock.write_text("")  # its writer was killed between making it and writing its pid
    old = time.time() - 2 * UNWRITTEN_LOCK_SECONDS
    os.utime(lock, (old, old))
    with output_lock(target) as held:
        assert held[0].path.read_text().strip().endswith(f"~{os.getpid()}")
    assert not lock.exists()
