"""The error-finding pixel discriminator: its target, its maps, its training on G's own estimates, the doubt map."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import TINY, blob_tile

from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.method.model import load_model, save_model
from napari_cdal.engine.method.pixel_disc import PixelDiscriminator, pixel_targets
from napari_cdal.engine.method.sampler import reverse_process
from napari_cdal.engine.segment import reliability as rel
from napari_cdal.engine.segment.doubt import doubt_map, nucleus_mean_map
from napari_cdal.engine.training.error_disc import ErrorDiscSettings, error_disc_config, train_error_discriminator
from napari_cdal.engine.training.state import TrainState
from napari_cdal.engine.training.step import train_step


def pixel_config() -> ModelConfig:
    return error_disc_config(TINY)


def test_target_is_one_minus_the_xor_of_the_thresholded_estimate_and_the_truth() -> None:
    estimate = torch.tensor([[[[0.9, -0.2], [0.1, -0.8]]]])
    truth = torch.tensor([[[[1.0, 1.0], [-1.0, -1.0]]]])
    # right, missed, false, right: the two wrong pixels are fake (0)
    expected = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert torch.equal(pixel_targets(estimate, truth), expected)
    # only the foreground channel decides; the core channel is ignored
    two = torch.cat([estimate, -estimate], dim=1)
    assert torch.equal(pixel_targets(two, torch.cat([truth, truth], dim=1)), expected)


def test_pixel_d_gives_a_logit_per_pixel_at_the_labels_resolution() -> None:
    torch.manual_seed(0)
    disc = PixelDiscriminator(pixel_config())
    x = torch.randn(3, TINY.label_channels, 32, 48)
    image = torch.randn(1, 3, 32, 48)
    t = torch.tensor([0, 1, 3])
    logits = disc.score_map(x, x, t, image)
    assert logits.shape == (3, 1, 32, 48)
    assert torch.allclose(disc(x, x, t, image), logits.mean(dim=(1, 2, 3)))
    wrong = disc.suspicion("error_probability", x, x, t, image)
    assert torch.allclose(wrong, 1.0 - disc.attention(x, x, t, image), atol=1e-6)
    with pytest.raises(ValueError, match="pass the image"):
        disc.score_map(x, x, t)
    with pytest.raises(ValueError, match="no attention map 'channel_mean'"):
        disc.suspicion("channel_mean", x, x, t, image)


def test_config_ties_the_maps_to_the_discriminators_kind() -> None:
    with pytest.raises(ValueError, match="needs disc_image"):
        dataclasses.replace(TINY, disc_kind="pixel", attention_display="error_probability")
    with pytest.raises(ValueError, match="attention_display must be one of"):
        dataclasses.replace(TINY, attention_display="error_probability")
    with pytest.raises(ValueError, match="disc_kind must be one of"):
        dataclasses.replace(TINY, disc_kind="patch")
    assert ModelConfig.from_dict(pixel_config().to_dict()) == pixel_config()


def test_a_pixel_model_round_trips_through_its_checkpoint(trained_tiny, tmp_path) -> None:
    model, _ = trained_tiny
    settings = ErrorDiscSettings(
        iterations=2, pool_batches=1, pool_batch_size=1, patch_size=32, crop_size=32, batch_size=2
    )
    tiles = [blob_tile(5)]
    trained = run_to_end(train_error_discriminator(model, tiles, settings))
    path = tmp_path / "pixel.safetensors"
    save_model(path, trained)
    loaded = load_model(path)
    assert isinstance(loaded.discriminator, PixelDiscriminator)
    assert loaded.config.attention_display == "error_probability"
    x = torch.randn(2, TINY.label_channels, 32, 32)
    image = torch.randn(1, 3, 32, 32)
    t = torch.tensor([0, 1])
    assert torch.equal(loaded.discriminator.score_map(x, x, t, image), trained.discriminator.score_map(x, x, t, image))
    # the generator is the one it was trained for, untouched
    for (name, before), after in zip(
        model.generator.state_dict().items(), loaded.generator.state_dict().values(), strict=True
    ):
        assert torch.equal(before, after), name


def test_d_learns_where_the_generators_estimates_are_wrong(trained_tiny) -> None:
    model, _ = trained_tiny
    settings = ErrorDiscSettings(
        iterations=100,
        pool_batches=2,
        pool_batch_size=2,
        patch_size=48,
        crop_size=48,
        batch_size=4,
        lr=3e-3,
        border_weight=1.0,
    )  # the blobs' errors are all borders
    tiles = [blob_tile(5), blob_tile(6)]
    untrained = run_to_end(train_error_discriminator(model, tiles, dataclasses.replace(settings, iterations=1)))
    trained = run_to_end(train_error_discriminator(model, tiles, settings))
    scores = {}
    for name, candidate in (("untrained", untrained), ("trained", trained)):
        tile = blob_tile(7)  # a tile neither pool saw
        image = torch.from_numpy(np.ascontiguousarray(tile.image.transpose(2, 0, 1)))[None].float()
        from napari_cdal.engine.method.intensity import normalise

        events = reverse_process(
            candidate,
            normalise(image, candidate.config),
            rng=torch.Generator().manual_seed(3),
            attention_kinds=("error_probability",),
        )
        last_step = [e.payload for e in events if e.stage == "step"][-1]
        wrong_map = last_step.attention_maps["error_probability"][0].numpy()
        estimate = last_step.x0_mean[0, 0].numpy() > 0
        wrong = estimate != (tile.foreground > 0)
        scores[name] = (rel.auroc(wrong_map, wrong), float(wrong_map[wrong].mean() - wrong_map[~wrong].mean()))
    # trained, D ranks the wrong pixels first and believes them wrong; untrained it says about 0.5 everywhere
    # (its ranking alone is no test: an untrained D's output already follows the softness of x̂_0)
    assert scores["trained"][0] > 0.9 and scores["trained"][1] > 0.25 > 0.05 > abs(scores["untrained"][1]), scores


def test_a_fine_tuning_step_trains_the_pixel_d_on_the_per_pixel_target(trained_tiny) -> None:
    from napari_cdal.engine.config import TrainConfig

    model, _ = trained_tiny
    pixel = run_to_end(
        train_error_discriminator(
            model,
            [blob_tile(5)],
            ErrorDiscSettings(
                iterations=1, pool_batches=1, pool_batch_size=1, patch_size=32, crop_size=32, batch_size=1
            ),
        )
    )
    state = TrainState.create(
        pixel, TrainConfig(iterations=2, batch_size=2, patch_size=32, r1_interval=1, d_cutmix_weight=0.5)
    )
    images = torch.randn(2, 3, 32, 32)
    x0 = torch.where(torch.rand(2, TINY.label_channels, 32, 32) > 0.5, 1.0, -1.0)
    weights = torch.ones(2, 1, 32, 32)
    before = [p.detach().clone() for p in pixel.discriminator.parameters()]
    losses = train_step(state, images, x0, weights, torch.device("cpu"))
    assert all(np.isfinite(v) for v in losses.values()) and {"d", "r1", "d_cutmix", "adv_g"} <= set(losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, pixel.discriminator.parameters(), strict=True))


def test_doubt_paints_each_nucleus_with_its_mean_and_leaves_out_the_soft_borders() -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15] = 1
    labels[25:35, 25:35] = 2
    spread = np.zeros((40, 40), np.float32)
    spread[5:15, 5:15] = np.linspace(0, 0.4, 10)[None]  # nucleus 1: mean 0.2
    spread[4, 5:15] = 0.9  # the soft border just outside nucleus 1
    spread[20, 5] = 0.7  # a half-seen place far from any nucleus
    painted = nucleus_mean_map(labels, spread)
    assert np.allclose(painted[5:15, 5:15], 0.2) and np.all(painted[25:35, 25:35] == 0.0)
    assert painted[0, 0] == 0.0
    doubt = doubt_map(labels, spread, image_mpp=0.5)  # ring of 1.5 µm = 3 px
    assert np.allclose(doubt[5:15, 5:15], 0.2)
    assert np.all(doubt[4, 5:15] == 0.0)
    assert doubt[20, 5] == pytest.approx(0.7)


def test_cli_trains_a_pixel_discriminator_for_a_frozen_generator(
    capsys, blob_folder, tiny_model_file, tmp_path
) -> None:
    from conftest import run

    tiny = str(tiny_model_file)
    settings = tmp_path / "d.json"
    settings.write_text('{"pool_batches": 1, "pool_batch_size": 2, "patch_size": 32, "crop_size": 32, "batch_size": 2}')
    out = tmp_path / "with_d.safetensors"
    code, printed, _ = run(
        capsys,
        "train",
        str(blob_folder),
        "--init-from",
        tiny,
        "--discriminator-only",
        "--iterations",
        "3",
        "--train-config",
        str(settings),
        "--out",
        str(out),
    )
    assert code == 0 and "pixel discriminator 3 iterations on 2 patches" in printed
    model = load_model(out)
    assert model.config.disc_kind == "pixel" and model.record["error_discriminator"]["iterations"] == 3
    code, printed, _ = run(capsys, "info", "--model", out)
    assert code == 0 and "error_discriminator: {'iterations': 3" in printed and "disc_kind: pixel" in printed
    code, _, err = run(capsys, "train", str(blob_folder), "--discriminator-only", "--out", tmp_path / "b.safetensors")
    assert code == 1 and "give the model with --init-from" in err
    settings.write_text('{"pool_size": 3}')
    code, _, err = run(
        capsys,
        "train",
        str(blob_folder),
        "--init-from",
        tiny,
        "--discriminator-only",
        "--train-config",
        str(settings),
        "--out",
        str(tmp_path / "c.safetensors"),
    )
    assert code == 1 and "pool_size is no setting" in err and not (tmp_path / "c.safetensors").exists()


def test_loss_weights_lower_the_outlines_and_balance_the_wrong_pixels() -> None:
    from napari_cdal.engine.training.error_disc import OUTLINE_PX, loss_weights

    truth = -torch.ones(1, 2, 20, 20)
    truth[:, :, 5:15, 5:15] = 1.0  # one true nucleus
    target = torch.ones(1, 1, 20, 20)
    target[:, :, 0, 0] = 0.0  # one wrong pixel far from the outline
    settings = ErrorDiscSettings(border_weight=0.1, balance_errors=False)
    weight = loss_weights(target, truth, settings)
    assert weight[0, 0, 10, 10] == 1.0 and weight[0, 0, 0, 0] == 1.0
    for row in (5 - OUTLINE_PX, 5 + OUTLINE_PX - 1):  # the band round the outline, outside and inside
        assert weight[0, 0, row, 10] == pytest.approx(0.1)
    balanced = loss_weights(target, truth, dataclasses.replace(settings, balance_errors=True))
    assert balanced[0, 0, 0, 0] == pytest.approx(20.0)  # 399 right pixels to 1 wrong, capped at MAX_ERROR_WEIGHT
    assert torch.equal(balanced[0, 0, 1:], weight[0, 0, 1:])


def test_without_the_gate_a_training_step_never_asks_d_for_attention(trained_tiny, monkeypatch) -> None:
    import copy

    from napari_cdal.engine.config import TrainConfig

    model = copy.deepcopy(trained_tiny[0])
    calls = []
    monkeypatch.setattr(
        type(model.discriminator), "attention", lambda self, *a, **k: calls.append(1) or torch.tensor(1.0)
    )
    images = torch.randn(2, 3, 32, 32)
    x0 = torch.where(torch.rand(2, TINY.label_channels, 32, 32) > 0.5, 1.0, -1.0)
    weights = torch.ones(2, 1, 32, 32)
    for gate, expected in ((False, []), (True, [1])):
        calls.clear()
        state = TrainState.create(model, TrainConfig(iterations=1, batch_size=2, patch_size=32, attention_gate=gate))
        train_step(state, images, x0, weights, torch.device("cpu"))
        assert calls == expected
