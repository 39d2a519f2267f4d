"""Volumes and classes: NIfTI in and out, slices with neighbours, one-hot targets, batched sampling, scores."""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel
import numpy as np
import pytest
import torch
from conftest import CLASSES, TINY_CLASSES, synthetic_volume, volume_affine

from napari_cdal.catalog import bundled_models
from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.data.volumes import (
    LabelledVolume,
    is_volume_folder,
    labels_to_slices,
    list_volumes,
    load_volume,
    slice_stack,
    slices_to_volume,
    training_slices,
)
from napari_cdal.engine.events import TICK, run_to_end
from napari_cdal.engine.io.images import ImageError
from napari_cdal.engine.io.volumes import read_label_volume, read_volume, volume_stem, write_volume
from napari_cdal.engine.method.intensity import stretch_intensity
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.method.sampler import foreground_of, reverse_process
from napari_cdal.engine.segment.volume import class_scores, evaluate_volumes, segment_volume, summarise_volumes
from napari_cdal.engine.training.step import encode_targets


def test_config_of_classes_is_checked() -> None:
    assert TINY_CLASSES.label_channels == 3 and TINY_CLASSES.is_multiclass
    with pytest.raises(ValueError, match="class_names"):
        replace(TINY_CLASSES, class_names=("background",))
    with pytest.raises(ValueError, match="context_slices 1 needs image_channels 3"):
        replace(TINY_CLASSES, image_channels=1)
    with pytest.raises(ValueError, match="intensity_percentiles"):
        replace(TINY_CLASSES, intensity_percentiles=(99.0, 1.0))
    assert ModelConfig.from_dict(TINY_CLASSES.to_dict()) == TINY_CLASSES  # JSON lists back to tuples


def test_one_hot_targets_in_plus_minus_one() -> None:
    classes = np.array([[0, 1], [2, 0]])
    targets = encode_targets(classes, TINY_CLASSES)
    assert targets.shape == (3, 2, 2)
    assert np.array_equal(targets.argmax(0), classes)
    assert set(np.unique(targets)) == {-1.0, 1.0} and np.all((targets > 0).sum(0) == 1)


def test_stretch_maps_the_percentiles_to_the_ends() -> None:
    values = np.arange(1001, dtype=np.float32).reshape(7, 11, 13)[:, :, :13]
    config = replace(TINY_CLASSES, intensity_percentiles=(10.0, 90.0))
    out = stretch_intensity(values, config)
    low, high = np.percentile(values, (10.0, 90.0))
    assert out.dtype == np.float32
    assert out[values <= low].max() == 0.0 and out[values >= high].min() == 255.0
    middle = (values > low) & (values < high)
    assert np.allclose(out[middle], (values[middle] - low) * 255.0 / (high - low), atol=1e-3)
    assert not stretch_intensity(np.full((3, 4, 5), 7.0), config).any()  # a flat volume has no contrast


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_carry_their_neighbours_and_go_back_in_place(axis: int) -> None:
    rng = np.random.default_rng(0)
    volume = rng.random((5, 6, 7)).astype(np.float32) * 100
    config = replace(TINY_CLASSES, slice_axis=axis, intensity_percentiles=(0.0, 100.0))
    stack = slice_stack(volume, config)
    moved = np.moveaxis(stretch_intensity(volume, config), axis, 0)
    assert stack.shape == (volume.shape[axis], 3, *moved.shape[1:])
    assert np.allclose(stack[:, 1], moved)
    assert np.allclose(stack[1:, 0], moved[:-1]) and np.allclose(stack[0, 0], moved[0])  # edge repeats itself
    assert np.allclose(stack[:-1, 2], moved[1:]) and np.allclose(stack[-1, 2], moved[-1])
    labels = rng.integers(0, 3, volume.shape)
    assert np.array_equal(slices_to_volume(labels_to_slices(labels, config), config), labels)


def test_nifti_round_trip_keeps_voxels_and_affine(tmp_path) -> None:
    data = np.arange(60, dtype=np.uint8).reshape(3, 4, 5) % 3
    path = tmp_path / "out" / "v_labels.nii.gz"
    write_volume(path, data, volume_affine())
    back = read_volume(path)
    assert np.array_equal(back.data, data) and back.data.dtype == np.uint8
    assert np.allclose(back.affine, volume_affine()) and back.spacing == (1.0, 1.5, 2.0)
    assert [p.name for p in path.parent.iterdir()] == ["v_labels.nii.gz"]  # no temporary file left
    with pytest.raises(FileExistsError):
        write_volume(path, data, volume_affine(), replace=False)
    assert volume_stem(path) == "v_labels" and volume_stem("a/b.nii") == "b"


def test_bad_volumes_get_one_line(tmp_path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a volume at all")
    with pytest.raises(ImageError, match="not a readable NIfTI"):
        read_volume(broken)
    labels = tmp_path / "labels.nii.gz"
    write_volume(labels, np.full((2, 2, 2), 5, np.uint8), np.eye(4))
    with pytest.raises(ImageError, match="holds class 5, but the model knows 3"):
        read_label_volume(labels, 3)
    fractional = tmp_path / "fractional.nii.gz"
    write_volume(fractional, np.full((2, 2, 2), 0.5, np.float32), np.eye(4))
    with pytest.raises(ImageError, match="not class numbers"):
        read_label_volume(fractional)


def _volume_folder(root, count: int = 3):
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for index in range(count):
        image, labels = synthetic_volume(index)
        write_volume(root / "images" / f"vol_{index}.nii.gz", image, volume_affine())
        write_volume(root / "labels" / f"vol_{index}.nii.gz", labels, volume_affine())
    return root


def test_volume_folder_lists_and_loads(tmp_path) -> None:
    root = _volume_folder(tmp_path / "data", 2)
    assert is_volume_folder(root) and list_volumes(root) == ["vol_0", "vol_1"]
    volume = load_volume(root, "vol_1", 3)
    assert volume.image.shape == volume.labels.shape == (12, 24, 24)
    tiles = training_slices([volume], TINY_CLASSES)
    assert len(tiles) == 12 and tiles[0].image.shape == (24, 24, 3) and tiles[0].image.dtype == np.float32
    (root / "labels" / "vol_1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no label volume"):
        list_volumes(root)


def _replace_generator(model: CdalModel, forward) -> None:
    """Make `forward` G's pass."""
    model.generator.forward = forward


def _image_follows_model(model: CdalModel) -> None:
    """Replace G by a function of the image alone, so a batch must give each image its own answer."""

    def forward(x_next, t, features, z, previous=None):
        return torch.tanh(features.mean(dim=1, keepdim=True)).expand_as(x_next).contiguous()

    _replace_generator(model, forward)


def test_batched_sampling_gives_each_image_its_own_result() -> None:
    model = CdalModel.initialise(TINY_CLASSES, 0).eval()
    _image_follows_model(model)
    images = torch.randn(3, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    together = run_to_end(reverse_process(model, images, samples=2, rng=torch.Generator().manual_seed(1)))
    assert together.probability.shape == (3, 3, 20, 28) and together.uncertainty.shape == (3, 20, 28)
    for index in range(3):
        alone = run_to_end(
            reverse_process(model, images[index : index + 1], samples=2, rng=torch.Generator().manual_seed(1))
        )
        assert torch.allclose(together.probability[index], alone.probability[0], atol=1e-6)
    assert not torch.allclose(together.probability[0], together.probability[1])
    assert torch.allclose(foreground_of(together.probability, TINY_CLASSES), 1 - together.probability[:, 0])


@pytest.mark.parametrize("axis", [0, 2])
def test_segment_volume_keeps_the_volume_order(axis: int) -> None:
    config = replace(TINY_CLASSES, slice_axis=axis)
    model = CdalModel.initialise(config, 0).eval()
    model.generator.encode_image = lambda image: image  # features: the normalised slice and its neighbours

    def bright_is_anterior(x_next, t, features, z, previous=None):
        score = torch.tanh(10.0 * features[:, 1:2])
        return torch.cat([-score, score, -torch.ones_like(score)], dim=1)

    _replace_generator(model, bright_is_anterior)
    volume = np.random.default_rng(0).random((6, 9, 11)).astype(np.float32)
    events = [e for e in segment_volume(model, volume, samples=2, slices_per_batch=4) if e.stage != TICK]
    assert [e.stage for e in events][-1] == "done" and events[-2].index == volume.shape[axis]
    assert [e.index for e in events[:-1]] == sorted(e.index for e in events[:-1])  # slices done only grow
    result = events[-1].payload
    assert result.labels.shape == volume.shape and result.labels.dtype == np.uint8
    assert result.probability.shape == (3, *volume.shape)
    assert result.steps.shape == (2, *volume.shape) and result.attention.shape == (2, *volume.shape)
    assert result.chain.shape == (3, *volume.shape), "x_T, then each step's x_s"
    assert abs(float(result.chain[0].mean()) - 0.5) < 0.05 and float(result.chain[0].std()) > 0.2
    np.testing.assert_array_equal(result.chain[-1], result.steps[-1])
    assert result.uncertainty.shape == volume.shape
    expected = (stretch_intensity(volume, config) > config.image_mean[0]).astype(np.uint8)
    assert np.array_equal(result.labels, expected)  # each voxel's answer lands on that voxel


def test_a_model_of_classes_refuses_flat_images_and_vice_versa(trained_tiny) -> None:
    with pytest.raises(ValueError, match="segments 2-D images"):
        run_to_end(segment_volume(trained_tiny[0], np.zeros((4, 8, 8))))
    model = CdalModel.initialise(TINY_CLASSES, 0).eval()
    with pytest.raises(ValueError, match="3-D volumes"):
        run_to_end(segment_volume(model, np.zeros((8, 8))))


def test_class_scores_closed_form() -> None:
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2, :2] = 1  # 4 voxels
    truth[1, :, :] = 2  # 16 voxels
    pred = truth.copy()
    pred[0, 0, :2] = 0  # anterior: 2 of 4 found
    pred[1, :2, :] = 1  # posterior: 8 of 16 found, anterior gets 8 false voxels
    scores = class_scores(pred, truth, CLASSES)
    assert scores["dice_anterior"] == pytest.approx(2 * 2 / (10 + 4))
    assert scores["dice_posterior"] == pytest.approx(2 * 8 / (8 + 16))
    assert scores["iou_posterior"] == pytest.approx(8 / 16)
    summary = summarise_volumes([{"image": "a", **scores, "seconds": 1.0}], CLASSES)
    assert summary["mean"]["dice"] == pytest.approx((scores["dice_anterior"] + scores["dice_posterior"]) / 2)


def test_evaluate_volumes_scores_each_volume() -> None:
    model = CdalModel.initialise(TINY_CLASSES, 0).eval()
    image, labels = synthetic_volume(3)
    volumes = [LabelledVolume("a", image, labels, np.eye(4)), LabelledVolume("b", image, labels, np.eye(4))]
    events = list(evaluate_volumes(model, volumes, samples=1))
    assert [e.stage for e in events if e.stage != TICK] == ["image", "image", "done"]
    assert {(e.index, e.total) for e in events if e.stage == TICK} == {(0, 2), (1, 2)}  # stoppable inside each
    summary = events[-1].payload
    assert {"dice_anterior", "dice_posterior", "iou_anterior", "iou_posterior", "dice"} <= set(summary["mean"])
    assert json.loads(json.dumps(summary))["per_image"][1]["image"] == "b"


@pytest.mark.slow
def test_tiny_model_of_classes_learns_synthetic_volumes_through_the_cli(tmp_path, capsys) -> None:
    from conftest import run, train_and_evaluate

    data = _volume_folder(tmp_path / "data", 3)
    model, scores = train_and_evaluate(
        capsys,
        tmp_path,
        data,
        TINY_CLASSES.to_dict(),
        {"train": ["vol_0", "vol_1"], "validation": ["vol_2"]},
        {"flips": False, "lr_g": 3e-3, "lr_d": 1e-3, "warmup_steps": 10},
        iterations=300,
        patch_size=24,
    )
    assert scores["dice_anterior"] > 0.8 and scores["dice_posterior"] > 0.8, scores
    code, out, err = run(
        capsys,
        "segment",
        data / "images" / "vol_2.nii.gz",
        "--model",
        model,
        "--out",
        tmp_path / "out",
        "--samples",
        2,
        "--save-uncertainty",
    )
    assert code == 0, err
    written = nibabel.load(str(tmp_path / "out" / "vol_2_labels.nii.gz"))
    assert written.shape == (12, 24, 24) and written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, volume_affine())
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    assert nibabel.load(str(tmp_path / "out" / "vol_2_uncertainty.nii.gz")).shape == (12, 24, 24)


def test_save_steps_writes_the_estimates_and_the_chain_of_a_volume(tmp_path, capsys) -> None:
    # <stem>_steps.nii.gz keeps x̂0 per step; <stem>_chain.nii.gz holds x_T..x_0, one volume more
    from conftest import run

    from napari_cdal.engine.method.model import save_model

    model = tmp_path / "classes.safetensors"
    save_model(model, CdalModel.initialise(TINY_CLASSES, 0))
    data = _volume_folder(tmp_path / "data", 1)
    code, _, err = run(
        capsys,
        "segment",
        data / "images" / "vol_0.nii.gz",
        "--model",
        model,
        "--out",
        tmp_path / "out",
        "--sampling-steps",
        2,
        "--save-steps",
    )
    assert code == 0, err
    steps = nibabel.load(str(tmp_path / "out" / "vol_0_steps.nii.gz"))
    chain = nibabel.load(str(tmp_path / "out" / "vol_0_chain.nii.gz"))
    assert steps.shape == (12, 24, 24, 2) and chain.shape == (12, 24, 24, 3)
    assert np.allclose(chain.affine, volume_affine())
    noise = np.asarray(chain.dataobj)[..., 0]
    assert abs(float(noise.mean()) - 0.5) < 0.05 and float(noise.std()) > 0.2
    np.testing.assert_allclose(np.asarray(chain.dataobj)[..., -1], np.asarray(steps.dataobj)[..., -1])


def test_a_volume_with_an_h_and_e_model_is_refused_with_a_hint(tmp_path, capsys, tiny_model_file) -> None:
    from conftest import run

    data = _volume_folder(tmp_path / "data", 1)
    code, _, err = run(
        capsys, "segment", data / "images" / "vol_0.nii.gz", "--model", tiny_model_file, "--out", tmp_path / "out"
    )
    assert code == 1 and "cdal_hippocampus" in err and not (tmp_path / "out" / "vol_0_labels.nii.gz").exists()


@pytest.mark.skipif("cdal_hippocampus" not in bundled_models(), reason="no bundled hippocampus model")
def test_volumes_take_the_bundled_volume_model_when_no_model_is_given(tmp_path, capsys) -> None:
    from conftest import run

    data = _volume_folder(tmp_path / "data", 1)
    code, out, err = run(capsys, "segment", data / "images" / "vol_0.nii.gz", "--out", tmp_path / "out")
    assert code == 0, err
    assert nibabel.load(str(tmp_path / "out" / "vol_0_labels.nii.gz")).shape == (12, 24, 24)
    code, out, err = run(capsys, "evaluate", data, "--json", tmp_path / "scores.json")
    assert code == 0, err
    assert json.loads((tmp_path / "scores.json").read_text())["model"].endswith("cdal_hippocampus.safetensors")


def test_corrected_slices_are_where_the_labels_differ_else_where_they_hold_a_label() -> None:
    from napari_cdal.engine.training.corrections import corrected_slices

    result = np.zeros((4, 5, 6), np.uint8)
    result[1, 2, 2] = 1
    labels = result.copy()
    labels[2, 0, 0] = 2  # a voxel painted on slice 2 (axis 0) = row 0 (axis 1) = column 0 (axis 2)
    labels[1, 2, 2] = 0  # a false voxel erased on slice 1
    assert corrected_slices(labels, result, 0) == [1, 2]
    assert corrected_slices(labels, result, 2) == [0, 2]
    assert corrected_slices(labels, None, 0) == [2]  # no result known: every slice holding a label


def test_a_volume_finetune_learns_from_its_corrected_slices_only() -> None:
    from napari_cdal.engine.training.corrections import FinetunePair, VolumeCorrection, prepare_volumes
    from napari_cdal.engine.training.finetune import finetune, finetune_config

    image, truth = synthetic_volume(1)
    result = np.zeros_like(truth)
    corrected = result.copy()
    corrected[3:7] = truth[3:7]  # four slices (axis 0) painted to the truth
    settings = finetune_config(iterations=2, batch_size=2, validate_every=1)
    prepared = prepare_volumes([VolumeCorrection(image, corrected, result, "v")], TINY_CLASSES, settings)
    assert [tile.name for tile in prepared.tiles] == ["v[3]", "v[4]", "v[5]"]
    assert [tile.name for tile in prepared.holdout] == ["v[6]"]  # a quarter held back, the far end
    assert prepared.patch_size == 24 and prepared.tiles[0].image.shape == (24, 24, 3)
    assert np.array_equal(prepared.tiles[0].instances, truth[3]) and "3, 4, 5, 6" in prepared.notes[0]
    model = CdalModel.initialise(TINY_CLASSES, 0).eval()
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    events = list(finetune(model, [VolumeCorrection(image, corrected, result, "v")], settings))
    assert events[0].stage == "note" and events[-1].stage == "done"
    assert any(e.stage == "validate_done" and "dice_anterior" in e.payload for e in events)
    record = events[-1].payload.record
    assert record["finetune"]["slices"] == 4 and record["finetune"]["held_back"] == ["v[6]"]
    assert all(torch.equal(v, model.generator.state_dict()[k]) for k, v in before.items())  # source untouched
    with pytest.raises(ValueError, match="no slice along axis 0 holds a correction"):
        run_to_end(finetune(model, [VolumeCorrection(image, result, result)], settings))
    with pytest.raises(ValueError, match="is a 2-D image, but this model segments volumes"):
        run_to_end(finetune(model, [FinetunePair(image[0], truth[0])], settings))
    with pytest.raises(ValueError, match="class values 0..2"):
        run_to_end(finetune(model, [VolumeCorrection(image, corrected * 2)], settings))
