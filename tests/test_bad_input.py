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
from conftest import TINY, files_in, run
from PIL import Image

from napari_cdal.cli import state_path
from napari_cdal.engine import checks
from napari_cdal.engine.io import checkpoint
from napari_cdal.engine.io.checkpoint import (
    atomic_write,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from napari_cdal.engine.io.images import integer_bit_depth, to_rgb_float
from napari_cdal.engine.method.model import bundled_model_path, load_model
from napari_cdal.engine.segment.stain import keep_stained, stained_nuclei
from napari_cdal.models import list_models


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_error_line(err: str, command: str) -> str:
    """The one line a command printed besides its (carriage-return redrawn) progress bars."""
    chunks = [chunk.strip() for chunk in re.split(r"[\r\n]", err) if chunk.strip()]
    lines = [chunk for chunk in chunks if not re.search(r"\d+%\|", chunk)]
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

@pytest.mark.parametrize("option, value, words", [
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
])
def test_segment_options_out_of_range(capsys, no_model_load, blob_images, tmp_path, option, value, words):
    code, _, err = run(capsys, "segment", blob_images[0], "--out", tmp_path / "out", option, value)
    assert code == 1 and words in one_error_line(err, "segment")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, words", [
    (["--steps", "0"], "--steps 0 must be an integer of at least 1"),
    (["--checkpoint-every", "0"], "--checkpoint-every 0 must be an integer of at least 1"),
    (["--validate-every", "0"], "--validate-every 0 must be an integer of at least 1"),
    (["--batch-size", "0"], "--batch-size 0 must be an integer of at least 1"),
    (["--patch-size", "7"], "--patch-size 7 must be a positive multiple of 4 for this model; use e.g. 8"),
    (["--mpp", "nan"], "--mpp nan is not a µm per pixel"),
    (["--threads", "0"], "--threads 0 must be an integer of at least 1"),
])
def test_train_options_out_of_range(capsys, blob_folder, tmp_path, options, words):
    out = tmp_path / "runs" / "m.safetensors"
    code, _, err = run(capsys, "train", blob_folder, "--config", "tiny", "--out", out, *options)
    assert code == 1 and words in one_error_line(err, "train")
    assert not out.parent.exists()


def test_train_config_file_is_checked_too(capsys, blob_folder, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"steps": 0}))
    code, _, err = run(capsys, "train", blob_folder, "--config", "tiny", "--train-config", recipe,
                       "--out", tmp_path / "m.safetensors")
    assert code == 1 and "TrainConfig.iterations must be an integer >= 1, got 0" in one_error_line(err, "train")


@pytest.mark.parametrize("options, words", [
    (["--lr", "nan"], "--lr nan must be a learning rate in (0, 1]"),
    (["--steps", "0"], "--steps 0 must be an integer of at least 1"),
    (["--mpp", "inf"], "--mpp inf is not a µm per pixel"),
])
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
    code, _, err = run(capsys, "segment", blob_images[0], "--model", tiny_model_file, "--mpp", "0.5",
                       "--out", out, "--save-steps")
    line = one_error_line(err, "segment")
    assert code == 1 and "tile_labels.tif already exists" in line and "--overwrite" in line
    assert digest(corrected) == before and files_in(out) == ["tile_labels.tif"]
    code, _, _ = run(capsys, "segment", blob_images[0], "--model", tiny_model_file, "--mpp", "0.5",
                            "--out", out, "--overwrite")
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
        code, _, _ = run(capsys, "evaluate", blob_folder, "--model", tiny_model_file, "--mpp", "0.5",
                         "--split", split, "--json", result)
        assert code == 0 and "per_image" in json.loads(result.read_text())


def test_evaluate_or_train_an_empty_folder_is_an_error(capsys, tmp_path):
    (tmp_path / "images").mkdir()
    code, _, err = run(capsys, "evaluate", tmp_path, "--json", tmp_path / "r.json")
    assert code == 1 and "no images to score" in one_error_line(err, "evaluate")
    assert not (tmp_path / "r.json").exists()
    code, _, err = run(capsys, "train", tmp_path, "--config", "tiny", "--out", tmp_path / "m.safetensors")
    assert code == 1 and "no training images" in one_error_line(err, "train")


# --- faults while writing ------------------------------------------------------------------------

def test_full_disk_in_segment_is_one_line_and_leaves_nothing(capsys, monkeypatch, tiny_model_file, blob_images,
                                                            tmp_path):
    def full(path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tifffile, "imwrite", full)
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", blob_images[0], "--model", tiny_model_file, "--mpp", "0.5", "--out", out)
    line = one_error_line(err, "segment")
    assert code == 1 and "No space left on device" in line and "tile_labels.tif" in line
    assert files_in(out) == []  # no half-written file, no temporary one


def test_full_disk_in_finetune_is_one_line_and_leaves_nothing(capsys, monkeypatch, tiny_model_file, blob_images,
                                                             tmp_path):
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr("safetensors.torch.save_file", full)
    mask = tmp_path / "mask.png"
    Image.fromarray(blob_images[2].instances.astype(np.uint16)).save(mask)
    out = tmp_path / "models" / "new.safetensors"
    code, _, err = run(capsys, "finetune", blob_images[0], "--masks", mask, "--model", tiny_model_file, "--mpp",
                       "0.5", "--steps", "2", "--out", out, "--threads", "1")
    line = one_error_line(err, "finetune")
    assert code == 1 and "No space left on device" in line and "source model is unchanged" in line
    assert files_in(out.parent) == []


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: not enough memory: you "
                                                                 "tried to allocate 3 GB. Buy new RAM! out of memory")])
def test_running_out_of_memory_is_one_line(capsys, monkeypatch, tiny_model_file, blob_images, tmp_path, error):
    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr("napari_cdal.engine.segment.image.segment_image", exhausted)
    code, _, err = run(capsys, "segment", blob_images[0], "--model", tiny_model_file, "--out", tmp_path / "out")
    line = one_error_line(err, "segment")
    assert code == 1 and "out of memory" in line and "--slide" in line


def test_an_image_too_large_for_free_memory_is_refused_before_it_is_read(capsys, monkeypatch, tiny_model_file,
                                                                         blob_images, tmp_path):
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
    code, out, _ = run(capsys, "segment", tmp_path / "white.tif", tmp_path / "black.tif", "--model",
                       tiny_model_file, "--mpp", "0.5", "--out", tmp_path / "out")
    assert code == 0 and out.count(": 0 nuclei") == 2
    assert tifffile.imread(tmp_path / "out" / "white_labels.tif").max() == 0


# --- interrupted saves ---------------------------------------------------------------------------

def test_stale_temporary_files_are_removed_live_ones_kept(monkeypatch, tmp_path):
    dead = dead_pid()
    monkeypatch.setattr(checkpoint, "writer_alive", lambda pid: pid != dead)  # no reuse of the dead pid
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
    monkeypatch.setattr(checkpoint, "writer_alive", lambda pid: pid != child.pid)  # no reuse of its pid
    left = list(target.parent.iterdir())
    assert not target.exists() and len(left) == 1 and left[0].name.endswith(".tmp")
    assert [entry.path for entry in list_models(target.parent) if not entry.bundled] == []
    assert list(target.parent.iterdir()) == []  # listing the models cleaned it up
    left[0].write_bytes(b"again")  # and so does the next save of that name
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"whole"))
    assert sorted(p.name for p in target.parent.iterdir()) == ["new.safetensors"]
