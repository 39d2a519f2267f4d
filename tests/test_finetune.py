"""Fine-tuning: a new model from corrected labels, the source untouched, regions, guards and bad input."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import blob_tile
from PIL import Image

from napari_cdal.cli import main
from napari_cdal.engine.config import TrainConfig, iterations_done
from napari_cdal.engine.events import TICK, run_to_end
from napari_cdal.engine.io.checkpoint import read_metadata
from napari_cdal.engine.method.model import bundled_model_path, load_model
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import dice
from napari_cdal.engine.training import finetune as finetune_module
from napari_cdal.engine.training.acceptance import judge
from napari_cdal.engine.training.corrections import FinetunePair, prepare_pairs
from napari_cdal.engine.training.finetune import (
    FinetuneSaveError,
    finetune,
    finetune_config,
    save_finetuned,
    suggest_new_name,
)
from napari_cdal.engine.training.holdout import CONTEXT_UM, overlap_groups, side_by_side
from napari_cdal.engine.training.run import make_patch_source
from napari_cdal.engine.training.state import TrainState

QUICK = finetune_config(iterations=3, patch_size=64, batch_size=2, warmup_steps=1, holdout_fraction=0.0)
"""Three steps, no held-back strip (a 64 µm blob tile holds one back by default since issue 14)."""


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    # the CLI's --threads changes torch's global thread count in-process; put it back after each test
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def source(tiny_model_file):
    """The tiny model loaded from its file, as the widget and the CLI would hold it."""
    return load_model(tiny_model_file)


def weights_of(model) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{k}": v.clone()
        for name, module in (("g", model.generator), ("d", model.discriminator))
        for k, v in module.state_dict().items()
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def inverted_stain_tile(seed: int, size: int = 128):
    """Blob geometry with the colours swapped: light nuclei on a dark ground (the tiny model fails here)."""
    tile = blob_tile(seed, size)
    rng = np.random.default_rng(seed + 1000)
    image = np.where(tile.instances[..., None] > 0, (225, 180, 210), (90, 50, 130)).astype(np.float32)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), tile.instances


# --- the new model -------------------------------------------------------------------------------


def test_finetune_makes_a_new_model_and_leaves_the_source_alone(source, tiny_model_file) -> None:
    before, file_hash = weights_of(source), sha256(tiny_model_file)
    tile = blob_tile(8)
    events = [
        e
        for e in finetune(source, [FinetunePair(tile.image, tile.instances, name="blob-8")], QUICK, "cpu", 0.5)
        if e.stage != TICK
    ]
    assert [e.stage for e in events] == ["train"] * 3 + ["done"]
    assert all(np.isfinite(e.payload["mse"]) for e in events[:-1])
    result = events[-1].payload
    record = result.model.record
    assert record["finetuned_from"]["model"] == tiny_model_file.name
    assert record["finetuned_from"]["iterations"] == iterations_done(source.record)
    assert record["iterations"] == 3 and record["wall_seconds"] > 0
    assert record["finetune"]["pairs"] == 1 and record["finetune"]["images"] == ["blob-8"]
    assert record["finetune"]["nuclei"] == len(np.unique(tile.instances)) - 1
    assert record["finetune"]["settings"]["lr_g"] == QUICK.lr_g
    assert record["train_config"]["adversarial_weight"] == source.record["train_config"]["adversarial_weight"]
    for key, value in weights_of(source).items():
        assert torch.equal(value, before[key]), key
    after = weights_of(result.model)
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("g."))
    assert sha256(tiny_model_file) == file_hash


def test_finetuned_model_chains_its_origin(source, tmp_path) -> None:
    tile = blob_tile(8)
    first = run_to_end(finetune(source, [FinetunePair(tile.image, tile.instances)], QUICK, "cpu", 0.5))
    path = save_finetuned(first.model, tmp_path / "first.safetensors")
    second = run_to_end(finetune(load_model(path), [FinetunePair(tile.image, tile.instances)], QUICK, "cpu", 0.5))
    origin = second.model.record["finetuned_from"]
    assert origin["model"] == "first.safetensors"
    assert origin["finetuned_from"]["model"] == first.model.record["finetuned_from"]["model"]


def test_shifted_stain_is_learned_from_one_corrected_tile(source) -> None:
    train_image, train_labels = inverted_stain_tile(41)
    test_image, test_labels = inverted_stain_tile(43)
    before = run_to_end(segment_image(source, test_image, image_mpp=0.5))
    settings = finetune_config(iterations=50, patch_size=64, lr_g=1e-3, lr_d=5e-4, ema_decay=0.9, warmup_steps=5)
    result = run_to_end(finetune(source, [FinetunePair(train_image, train_labels)], settings, "cpu", 0.5))
    after = run_to_end(segment_image(result.model, test_image, image_mpp=0.5))
    assert dice(before.labels, test_labels > 0) < 0.3
    assert dice(after.labels, test_labels > 0) > 0.8


# --- labels and regions --------------------------------------------------------------------------


def _two_touching_and_one_apart(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """An image and instance truth: two discs that touch (one blob when binary) and one on its own."""
    from skimage.draw import disk

    truth = np.zeros((size, size), np.uint32)
    for k, (r, c) in enumerate(((30, 30), (30, 48), (70, 70)), start=1):
        rr, cc = disk((r, c), 10, shape=truth.shape)
        truth[rr, cc] = k
    image = np.full((size, size, 3), (225, 180, 210), np.uint8)
    image[truth > 0] = (90, 50, 130)
    return image, truth


@pytest.mark.parametrize(
    "as_mask", [lambda inst: inst > 0, lambda inst: np.where(inst > 0, 255, 0).astype(np.uint8)], ids=["bool", "0-255"]
)
def test_binary_masks_split_touching_nuclei_with_a_note(source, as_mask) -> None:
    image, truth = _two_touching_and_one_apart()
    prepared = prepare_pairs([FinetunePair(image, as_mask(truth), name="x")], source.config, 0.5, QUICK)
    instances = prepared.tiles[0].instances
    assert instances.max() == 3  # connected components would give 2: the touching pair merged
    assert np.array_equal(instances > 0, truth > 0), "every painted pixel keeps a nucleus"
    for k in (1, 2, 3):  # each true nucleus is (mostly) one of the split instances
        ids, counts = np.unique(instances[truth == k], return_counts=True)
        assert counts.max() / counts.sum() > 0.9
    assert not prepared.tiles[0].has_instance_truth
    assert len(prepared.notes) == 1 and "binary" in prepared.notes[0] and "1 blob(s)" in prepared.notes[0]
    events = list(finetune(source, [FinetunePair(image, as_mask(truth), name="x")], QUICK, "cpu", 0.5))
    assert events[0].stage == "note" and events[0].payload == prepared.notes[0]
    assert events[-1].payload.record["finetune"]["notes"] == prepared.notes
    assert events[-1].payload.record["iterations"] == 3


def test_instance_masks_and_separate_blobs_need_no_note(source) -> None:
    image, truth = _two_touching_and_one_apart()
    assert prepare_pairs([FinetunePair(image, truth)], source.config, 0.5, QUICK).notes == []
    apart = np.where(truth == 2, 0, truth) > 0  # binary, but no blob holds two nuclei
    prepared = prepare_pairs([FinetunePair(image, apart)], source.config, 0.5, QUICK)
    assert prepared.notes == [] and prepared.tiles[0].instances.max() == 2


def test_regions_map_to_model_pixels_and_weigh_zero_outside(source) -> None:
    # a 128 px tile at 0.25 µm/px is 64 px at the model's 0.5; the left half stays the left half
    tile = blob_tile(10)
    pair = FinetunePair(tile.image, tile.instances, regions=[(0, 128, 0, 64)])
    settings = finetune_config(patch_size=256, augment=False, holdout_fraction=0.0)  # the mapping alone
    prepared = prepare_pairs([pair], source.config, 0.25, settings)
    assert prepared.tiles[0].image.shape == (64, 64, 3)
    assert prepared.regions == [[(0, 64, 0, 32)]]
    assert prepared.patch_size == 64  # shrunk to the region instead of padding a 256 patch
    state = TrainState.create(source, TrainConfig(patch_size=prepared.patch_size, augment=False))
    images, _, weights = make_patch_source(prepared.tiles, state, source.config, prepared.regions)(3)
    for image, weight in zip(images, weights[:, 0], strict=True):
        columns = np.flatnonzero(weight[0])
        assert len(columns) == 32 and np.all(weight[:, columns] == 1) and weight.sum() == 64 * 32
        region_pixels = image[:, :, columns].transpose(1, 2, 0)
        assert np.array_equal(region_pixels, prepared.tiles[0].image[:, :32].astype(np.float32))


def test_discriminator_sees_no_labels_outside_the_regions(source, monkeypatch) -> None:
    # D's real and fake x_t must agree wherever the weights are 0, so unchecked labels teach D nothing
    seen: list[torch.Tensor] = []
    disc_class = type(source.discriminator)
    original = disc_class.forward

    def recording(self, x_t, *args, **kwargs):
        seen.append(x_t.detach().clone())
        return original(self, x_t, *args, **kwargs)

    monkeypatch.setattr(disc_class, "forward", recording)
    batches = []

    def recording_source(*args, **kwargs):
        sample = make_patch_source(*args, **kwargs)
        return lambda size: batches.append(sample(size)) or batches[-1]

    monkeypatch.setattr(finetune_module, "make_patch_source", recording_source)
    tile = blob_tile(11)
    settings = finetune_config(iterations=1, patch_size=64, batch_size=2)
    run_to_end(
        finetune(source, [FinetunePair(tile.image, tile.instances, regions=[(0, 128, 0, 64)])], settings, "cpu", 0.25)
    )
    outside = torch.from_numpy(batches[-1][2] == 0).expand_as(seen[-1])
    assert 0 < outside.float().mean() < 1
    real, fake = seen[-2], seen[-1]  # the D step judges the real pair, then the fake one
    assert torch.equal(real[outside], fake[outside])
    assert not torch.equal(real[~outside], fake[~outside])


# --- the held-back guard ---------------------------------------------------------------------------


def test_a_small_region_holds_back_a_strip_and_the_result_says_before_and_after(source) -> None:
    # 64 x 48 px at 0.5 µm/px (32 x 24 µm): a quarter would be under 16 µm, so 16 µm (32 px) is held back
    tile = blob_tile(12, size=256, count=100)
    settings = finetune_config(iterations=2, patch_size=64, batch_size=2, holdout_fraction=0.25, validate_every=2)
    pair = FinetunePair(tile.image, tile.instances, regions=[(0, 64, 0, 48)], name="small")
    prepared = prepare_pairs([pair], source.config, 0.5, settings)
    assert prepared.regions == [[(0, 32, 0, 48)]] and [t.name for t in prepared.holdout] == ["small held-back"]
    result = run_to_end(finetune(source, [pair], settings, "cpu", 0.5))
    before, after = result.before, result.after
    assert before["step"] == 0 and after["step"] == result.best_step
    assert 0 <= before["nuclei_right"] <= before["nuclei_truth"] and before["nuclei_truth"] > 0
    finetune_record = result.record["finetune"]
    assert finetune_record["validation"][0]["step"] == 0  # picked with seed 0, checked with CHECK_SEED
    assert result.verdict == judge(before, after, finetune_record["noise"])
    assert result.improved is result.verdict.improved and finetune_record["improved"] is result.improved
    assert result.report() == (
        f"on the part you corrected and we held back: {before['dice']:.2f} → "
        f"{after['dice']:.2f} Dice, {before['aji']:.2f} → {after['aji']:.2f} AJI (touching "
        f"nuclei told apart), {before['nuclei_right']} → {after['nuclei_right']} "
        f"of {before['nuclei_truth']} nuclei right: {result.verdict.words()}"
    )
    assert finetune_record["before"] == before


def test_without_a_held_back_part_the_report_says_so(source) -> None:
    tile = blob_tile(12)
    settings = finetune_config(iterations=1, patch_size=64, batch_size=2, holdout_fraction=0.0)
    result = run_to_end(finetune(source, [FinetunePair(tile.image, tile.instances)], settings, "cpu", 0.5))
    assert result.improved is None and result.report().startswith("nothing was held back to check it")


def test_held_back_strip_keeps_the_start_when_fine_tuning_hurts(source) -> None:
    # a learning rate far too high wrecks the generator; the held-back strip must keep the start
    tile = blob_tile(12, size=256, count=100)
    settings = finetune_config(
        iterations=6,
        patch_size=64,
        batch_size=2,
        lr_g=0.5,
        lr_d=0.5,
        warmup_steps=1,
        ema_decay=0.0,
        holdout_fraction=0.25,
        validate_every=3,
    )
    events = list(finetune(source, [FinetunePair(tile.image, tile.instances, name="big")], settings, "cpu", 0.5))
    stages = [e.stage for e in events]
    assert stages.count("validate_done") == 3  # the start, step 3, step 6
    result = events[-1].payload
    validation = result.record["finetune"]["validation"]
    assert [row["step"] for row in validation] == [0, 3, 6]
    assert validation[0]["dice"] > 0.8 and max(row["dice"] for row in validation[1:]) < validation[0]["dice"]
    assert result.kept_start and result.best_step == 0
    assert result.record["finetune"]["held_back"] == ["big held-back"]
    for key, value in weights_of(result.model).items():
        if key.startswith("g."):
            assert torch.equal(value, weights_of(source)[key]), key


def test_many_regions_hold_back_whole_regions_scored_in_their_context(source) -> None:
    # six 40 x 40 px boxes at 0.5 µm/px (the tiny model's own): a quarter, rounded, is 2 whole boxes
    tile = blob_tile(12, size=256, count=100)
    boxes = [(y, y + 40, x, x + 40) for y in (8, 108, 208) for x in (20, 150)]
    boxes = [box for box in boxes if tile.instances[box[0] : box[1], box[2] : box[3]].any()]
    assert len(boxes) >= 4
    settings = finetune_config(iterations=2, patch_size=64, batch_size=2, holdout_fraction=0.25, validate_every=2)
    pair = FinetunePair(tile.image, tile.instances, regions=boxes, name="review")
    prepared = prepare_pairs([pair], source.config, 0.5, settings)
    held = prepared.holdout
    assert len(held) == round(len(boxes) * 0.25) and len(prepared.regions[0]) == len(boxes) - len(held)
    context = round(CONTEXT_UM / 0.5)
    for part in held:
        y0, y1, x0, x1 = part.window
        box = next(
            b
            for b in boxes
            if b[1] - b[0] == y1 - y0
            and b[3] - b[2] == x1 - x0
            and np.array_equal(part.instances[y0:y1, x0:x1] > 0, tile.instances[b[0] : b[1], b[2] : b[3]] > 0)
        )
        assert box not in prepared.regions[0], "a held-back region never trains"
        assert part.image.shape[:2] == (
            min(256, box[1] + context) - max(0, box[0] - context),
            min(256, box[3] + context) - max(0, box[2] - context),
        )
    summary = run_to_end(prepared.evaluation(source))
    in_windows = sum(
        np.count_nonzero(np.unique(p.instances[p.window[0] : p.window[1], p.window[2] : p.window[3]])) for p in held
    )
    assert summary["nuclei"]["truth"] == in_windows, "only the windows are scored, never their context"
    result = run_to_end(finetune(source, [pair], settings, "cpu", 0.5))
    assert result.record["finetune"]["held_back"] == ["review held-back 1", "review held-back 2"]


def test_overlapping_regions_are_held_back_together_and_only_their_pixels_scored(source) -> None:
    # Review's neighbouring items overlap: a held-back region must not share pixels with one that trains
    assert overlap_groups([(0, 10, 0, 10), (20, 30, 20, 30), (5, 15, 5, 15), (14, 18, 14, 18)]) == [[0, 2, 3], [1]]
    tile = blob_tile(12, size=256, count=100)
    pair = [(100, 140, 100, 140), (122, 162, 120, 160)]  # overlap 18 x 20 px
    boxes = [(8, 48, 20, 60), *pair, (208, 248, 150, 190)]
    assert all(tile.instances[y0:y1, x0:x1].any() for y0, y1, x0, x1 in boxes)
    settings = finetune_config(iterations=2, patch_size=64, batch_size=2, holdout_fraction=0.25, validate_every=2)
    prepared = prepare_pairs([FinetunePair(tile.image, tile.instances, regions=boxes)], source.config, 0.5, settings)
    assert prepared.regions == [[boxes[0], boxes[3]]], "the middle group, the overlapping pair, is held back whole"
    (part,) = prepared.holdout
    y0, y1, x0, x1 = part.window
    assert (y1 - y0, x1 - x0) == part.scored.shape == (62, 60)
    assert part.scored.sum() == 2 * 40 * 40 - 18 * 20, "their union is scored, not its bounding box"
    assert not part.scored[0, -1] and not part.scored[-1, 0]


def test_side_by_side_keeps_every_nucleus_apart() -> None:
    a = np.array([[1, 1, 0], [0, 2, 2]], np.uint32)
    b = np.array([[7], [7], [0]], np.uint32)
    canvas = side_by_side([a, b])
    assert canvas.shape == (3, 5) and np.count_nonzero(np.unique(canvas)) == 3
    assert np.array_equal(canvas[:2, :3] > 0, a > 0) and (canvas[:, 3] == 0).all()


def test_a_fine_tune_that_learns_nothing_keeps_the_old_model(source) -> None:
    # a learning rate of 1e-12 leaves the weights as they were: whatever the checkpoints' scores, the check
    # with the second seed finds no gain beyond the noise, so Segment would keep the old model
    tile = blob_tile(12, size=256, count=100)
    settings = finetune_config(
        iterations=4, patch_size=64, batch_size=2, lr_g=1e-12, lr_d=1e-12, holdout_fraction=0.25, validate_every=2
    )
    result = run_to_end(finetune(source, [FinetunePair(tile.image, tile.instances)], settings, "cpu", 0.5))
    assert result.improved is False and not result.verdict.improved
    assert all(
        abs(gain) <= margin
        for gain, margin in zip(result.verdict.gains.values(), result.verdict.margins.values(), strict=True)
    )
    assert "not better beyond the noise" in result.report()


def test_patience_stops_early(source) -> None:
    tile = blob_tile(12, size=256, count=100)
    settings = finetune_config(
        iterations=20,
        patch_size=64,
        batch_size=2,
        lr_g=0.5,
        lr_d=0.5,
        warmup_steps=1,
        ema_decay=0.0,
        holdout_fraction=0.25,
        validate_every=2,
        patience=2,
    )
    result = run_to_end(finetune(source, [FinetunePair(tile.image, tile.instances)], settings, "cpu", 0.5))
    assert result.stopped_early and result.record["iterations"] == 4


# --- bad input -------------------------------------------------------------------------------------


def _bad_pairs():
    tile = blob_tile(13)
    no_nuclei = tile.instances.copy()
    no_nuclei[:, :64] = 0  # nuclei only on the right; the region is the left
    return {
        "empty labels": (FinetunePair(tile.image, np.zeros((128, 128), np.uint16)), ["labels are empty"]),
        "region without nuclei": (
            FinetunePair(tile.image, no_nuclei, regions=[(0, 128, 0, 50)]),
            ["hold no nucleus", "(0, 128, 0, 50)"],
        ),
        "shape mismatch": (FinetunePair(tile.image, tile.instances[:100]), ["(100, 128)", "(128, 128)"]),
        "region outside": (
            FinetunePair(tile.image, tile.instances, regions=[(200, 300, 0, 50)]),
            ["outside the 128x128 image"],
        ),
        "region empty": (FinetunePair(tile.image, tile.instances, regions=[(50, 50, 0, 50)]), ["is empty"]),
        "no regions": (FinetunePair(tile.image, tile.instances, regions=[]), ["empty list"]),
        "region too small": (
            FinetunePair(tile.image, tile.instances, regions=[(0, 10, 0, 128)]),
            ["smaller than 8 µm"],
        ),
        "float labels": (FinetunePair(tile.image, tile.instances.astype(np.float32)), ["dtype float32"]),
        "negative ids": (FinetunePair(tile.image, -tile.instances.astype(np.int32)), ["negative"]),
        "empty image": (FinetunePair(np.zeros((0, 0, 3), np.uint8), tile.instances), ["empty"]),
    }


@pytest.mark.parametrize("case", list(_bad_pairs()))
def test_bad_input_is_refused_before_any_step(source, case) -> None:
    pair, words = _bad_pairs()[case]
    before = weights_of(source)
    events = finetune(source, [pair], QUICK, "cpu", 0.5)
    with pytest.raises(ValueError) as info:
        next(events)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert "pair 0" in str(info.value)
    for key, value in weights_of(source).items():
        assert torch.equal(value, before[key])


def test_region_of_background_is_fine_beside_one_with_nuclei(source) -> None:
    tile = blob_tile(13)
    labels = tile.instances.copy()
    labels[:, :64] = 0
    pair = FinetunePair(tile.image, labels, regions=[(0, 128, 0, 50), (0, 128, 64, 128)])
    assert run_to_end(finetune(source, [pair], QUICK, "cpu", 0.5)).record["iterations"] == 3


@pytest.mark.parametrize(
    "settings",
    [dict(iterations=0), dict(lr_g=0.0), dict(ema_decay=1.0), dict(holdout_fraction=0.9), dict(batch_size=True)],
)
def test_bad_settings_name_the_field(settings) -> None:
    name = next(iter(settings))
    with pytest.raises(ValueError, match=f"TrainConfig.{name}"):
        finetune_config(**settings)


def test_no_pairs_and_bad_mpp(source) -> None:
    with pytest.raises(ValueError, match="pairs is empty"):
        next(finetune(source, [], QUICK))
    tile = blob_tile(14)
    with pytest.raises(ValueError, match="image_mpp"):
        next(finetune(source, [FinetunePair(tile.image, tile.instances)], QUICK, "cpu", 0.0))


def test_cancelled_run_leaves_nothing(source, tmp_path, monkeypatch) -> None:
    # the token is set after the first step: the second stops at its first block, in the copies of the
    # networks that fine-tuning trains (they share the source's check), and nothing is left behind
    import threading

    from napari_cdal.engine.events import RunCancelled, stop_on_cancel

    monkeypatch.chdir(tmp_path)
    before = weights_of(source)
    tile = blob_tile(15)
    token = threading.Event()
    with stop_on_cancel(token, source.generator, source.discriminator):
        events = finetune(
            source,
            [FinetunePair(tile.image, tile.instances)],
            finetune_config(iterations=50, patch_size=64),
            "cpu",
            0.5,
        )
        stages = [next(events).stage]
        while stages[-1] != "train":
            stages.append(next(events).stage)
        reported = [stage for stage in stages if stage != TICK]
        # the held-back strip scores the start first, then again with the acceptance check's seed
        assert reported == ["validate", "validate_done", "validate", "train"]
        token.set()
        with pytest.raises(RunCancelled):
            next(events)
    assert list(tmp_path.iterdir()) == []
    for key, value in weights_of(source).items():
        assert torch.equal(value, before[key])


# --- saving --------------------------------------------------------------------------------------


def test_save_refuses_existing_file_and_suggests_a_name(trained_tiny, tmp_path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(FinetuneSaveError, match="already exists") as info:
        save_finetuned(trained_tiny[0], target)
    assert "model-2.safetensors" in str(info.value)
    assert target.read_bytes() == b"keep me"
    (tmp_path / "model-2.safetensors").write_bytes(b"")
    assert suggest_new_name(target).name == "model-3.safetensors"
    assert suggest_new_name(tmp_path / "run-7.safetensors").name == "run-8.safetensors"


def test_save_refuses_the_bundled_model(trained_tiny) -> None:
    bundled = bundled_model_path()
    existed = bundled.exists()
    digest = sha256(bundled) if existed else None
    with pytest.raises(FinetuneSaveError, match="bundled model"):
        save_finetuned(trained_tiny[0], bundled)
    assert bundled.exists() == existed and (not existed or sha256(bundled) == digest)


def test_full_disk_leaves_nothing_behind(trained_tiny, tmp_path, monkeypatch) -> None:
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(FinetuneSaveError, match="No space left on device") as info:
        save_finetuned(trained_tiny[0], tmp_path / "new.safetensors")
    assert "nothing was written" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_saved_model_loads_with_its_record(source, tmp_path) -> None:
    tile = blob_tile(8)
    result = run_to_end(finetune(source, [FinetunePair(tile.image, tile.instances)], QUICK, "cpu", 0.5))
    path = save_finetuned(result.model, tmp_path / "sub" / "tuned.safetensors")
    loaded = load_model(path)
    assert loaded.record["finetune"]["pairs"] == 1
    for key, value in weights_of(loaded).items():
        assert torch.equal(value, weights_of(result.model)[key])


# --- CLI -----------------------------------------------------------------------------------------


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def corrected_files(tmp_path):
    """Two blob tiles as TIFFs with their masks: one instance PNG, one binary {0,255} PNG."""
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for seed, binary in ((16, False), (17, True)):
        tile = blob_tile(seed)
        tifffile.imwrite(folder / f"tile{seed}.tif", tile.image)
        mask = (tile.foreground * 255).astype(np.uint8) if binary else tile.instances.astype(np.uint16)
        Image.fromarray(mask).save(folder / f"tile{seed}_mask.png")
        paths.append((folder / f"tile{seed}.tif", folder / f"tile{seed}_mask.png"))
    return paths


def test_cli_finetune_writes_a_new_model(capsys, tiny_model_file, corrected_files, tmp_path) -> None:
    source_hash = sha256(tiny_model_file)
    (img_a, mask_a), (img_b, mask_b) = corrected_files
    out = tmp_path / "tuned.safetensors"
    code, stdout, err = run(
        capsys,
        "finetune",
        img_a,
        img_b,
        "--masks",
        mask_a,
        mask_b,
        "--model",
        tiny_model_file,
        "--out",
        out,
        "--steps",
        "3",
        "--mpp",
        "0.5",
        "--lr",
        "2e-4",
        "--seed",
        "3",
        "--threads",
        "1",
    )
    assert code == 0, err
    assert "fine-tuned 3 iterations on 2 image(s)" in stdout and str(out) in stdout
    record = read_metadata(out)["record"]
    assert record["finetuned_from"]["model"] == tiny_model_file.name
    assert record["finetune"]["images"] == ["tile16.tif with tile16_mask.png", "tile17.tif with tile17_mask.png"]
    assert record["train_config"]["lr_g"] == 2e-4 and record["train_config"]["lr_d"] == 1e-4
    assert record["train_config"]["seed"] == 3
    assert sha256(tiny_model_file) == source_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "tuned.safetensors"]

    out_hash = sha256(out)
    code, _, err = run(
        capsys,
        "finetune",
        img_a,
        "--masks",
        mask_a,
        "--model",
        tiny_model_file,
        "--out",
        out,
        "--steps",
        "2",
        "--mpp",
        "0.5",
    )
    assert code == 1 and "already exists" in err and "tuned-2.safetensors" in err
    assert len(err.strip().splitlines()) == 1
    assert sha256(out) == out_hash


def test_cli_refuses_the_source_as_out(capsys, tiny_model_file, corrected_files) -> None:
    source_hash = sha256(tiny_model_file)
    (img, mask), _ = corrected_files
    code, _, err = run(
        capsys,
        "finetune",
        img,
        "--masks",
        mask,
        "--model",
        tiny_model_file,
        "--out",
        tiny_model_file,
        "--steps",
        "2",
        "--mpp",
        "0.5",
    )
    assert code == 1 and "already exists" in err
    assert sha256(tiny_model_file) == source_hash


def test_cli_count_mismatch(capsys, tiny_model_file, corrected_files, tmp_path) -> None:
    (img_a, mask_a), (img_b, _) = corrected_files
    out = tmp_path / "tuned.safetensors"
    code, _, err = run(
        capsys, "finetune", img_a, img_b, "--masks", mask_a, "--model", tiny_model_file, "--out", out, "--steps", "2"
    )
    assert code == 1 and "2 images but 1 --masks" in err
    assert not out.exists()


def test_cli_bad_masks_give_one_line_and_no_file(capsys, tiny_model_file, corrected_files, tmp_path) -> None:
    (img, _), _ = corrected_files
    small = tmp_path / "small.png"
    Image.fromarray(np.ones((64, 64), np.uint8)).save(small)
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(empty)
    for mask, words in (
        (small, "differs from the image's"),
        (empty, "labels are empty"),
        (tmp_path / "missing.png", "not found"),
    ):
        out = tmp_path / "tuned.safetensors"
        code, _, err = run(
            capsys,
            "finetune",
            img,
            "--masks",
            mask,
            "--model",
            tiny_model_file,
            "--out",
            out,
            "--steps",
            "2",
            "--mpp",
            "0.5",
        )
        assert code == 1 and words in err, err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_cli_help_matches_the_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--masks", "--model", "--out", "--steps", "--mpp", "--lr", "--seed", "--device", "--threads"):
        assert option in text
    defaults = finetune_config()
    assert f"(default: {defaults.iterations})" in text and f"(default: {defaults.lr_g:g})" in text
