"""Training: the tiny model learns blobs, EMA and learning-rate math, exact resume, loss masking."""

import numpy as np
import pytest
import torch
from conftest import TINY, blob_tile, train_tiny

from napari_cdal.engine.config import TrainConfig, iterations_done
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.instances import core_targets
from napari_cdal.engine.segment.metrics import dice
from napari_cdal.engine.training.state import EMA, TrainState, learning_rate
from napari_cdal.engine.training.step import _weighted_mean, encode_targets, soft_dice_loss

from tools.build_tiny_model import STEPS, start_tiny


def test_tiny_model_learns_blobs(trained_tiny) -> None:
    model, state = trained_tiny
    history = state.record["history"]
    first, last = history[0], history[-1]
    assert last["mse"] < 0.5 * first["mse"]
    assert last["dice"] < 0.5 * first["dice"]
    tile = blob_tile(21)
    result = run_to_end(segment_image(model, tile.image, image_mpp=0.5))
    assert dice(result.labels, tile.foreground) > 0.9
    # three counts kept apart: the build's 'train' events, the state's step counter, the configured iterations
    assert state.step == STEPS == TrainConfig.from_dict(model.record["train_config"]).iterations
    assert iterations_done(model.record) == STEPS
    assert [entry["step"] for entry in history] == [1, 50, 100, 150]


def test_each_iteration_updates_g_and_d_once_and_is_counted_once() -> None:
    # the step counter, the 'train' events and the record against the optimisers' own updates
    state, events = start_tiny(steps=3, seed=4)
    updates = {"G": 0, "D": 0}
    for name, optimiser in (("G", state.optim_g), ("D", state.optim_d)):
        optimiser.register_step_post_hook(lambda *_, name=name: updates.__setitem__(name, updates[name] + 1))
    train = [(event.index, event.total) for event in events if event.stage == "train"]
    assert updates == {"G": 3, "D": 3}
    assert train == [(1, 3), (2, 3), (3, 3)]
    assert state.step == 3 and iterations_done(state.exported_model().record) == 3


def test_encode_targets_channels() -> None:
    tile = blob_tile(3, size=64)
    targets = encode_targets(tile.instances, TINY)
    assert targets.shape == (2, 64, 64) and targets.dtype == np.float32
    assert set(np.unique(targets)) == {-1.0, 1.0}
    assert np.array_equal(targets[0] > 0, tile.instances > 0)
    assert np.array_equal(targets[1] > 0, core_targets(tile.instances))


def test_ema_update_is_the_closed_form() -> None:
    source = torch.nn.Linear(2, 1)
    ema = EMA(source, decay=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        source.weight.add_(1.0)
    ema.update(source)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * source.weight)


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(iterations=1000, warmup_steps=100, lr_min=1e-5)
    assert learning_rate(0, 1e-3, cfg) == pytest.approx(1e-5)
    assert learning_rate(99, 1e-3, cfg) == pytest.approx(1e-3)
    assert learning_rate(100, 1e-3, cfg) == pytest.approx(1e-3)
    assert learning_rate(550, 1e-3, cfg) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert learning_rate(1000, 1e-3, cfg) == pytest.approx(1e-5)


def test_resume_repeats_the_run_bit_for_bit(tmp_path) -> None:
    _, straight = train_tiny(steps=6, seed=4)
    _, first = train_tiny(steps=3, seed=4)
    first.save(tmp_path / "state.safetensors")
    resumed = TrainState.load(
        tmp_path / "state.safetensors",
        torch.device("cpu"),
        TrainConfig.from_dict({**first.train_config.to_dict(), "iterations": 6}),
    )
    # go on with the same data stream: the sampler draws from the restored numpy RNG
    from napari_cdal.engine.data.patches import PatchSampler

    sampler = PatchSampler([blob_tile(1), blob_tile(2)], 64, lambda inst: encode_targets(inst, TINY), resumed.np_rng)
    from napari_cdal.engine.training.loop import training_loop

    for _ in training_loop(resumed, sampler.sample, torch.device("cpu")):
        pass
    straight_cfg = straight.train_config.to_dict()
    assert straight_cfg["iterations"] == 6
    for a, b in zip(straight.model.generator.parameters(), resumed.model.generator.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.module.parameters(), resumed.ema.module.parameters(), strict=True):
        assert torch.equal(a, b)


def test_weights_mask_the_losses() -> None:
    # Pixels of weight 0 do not count: changing the prediction there changes no loss term.
    target = torch.sign(torch.randn(2, 2, 16, 16))
    prob = torch.rand(2, 2, 16, 16)
    weights = torch.ones(2, 1, 16, 16)
    weights[..., 8:] = 0
    other = prob.clone()
    other[..., 8:] = 1.0 - other[..., 8:]
    for p in (prob, other):
        assert _weighted_mean((p - target).pow(2), weights) == pytest.approx(
            ((prob - target).pow(2)[..., :8]).mean().item(), rel=1e-6
        )
    assert soft_dice_loss(prob, (target + 1) / 2, weights) == pytest.approx(
        soft_dice_loss(other, (target + 1) / 2, weights).item(), rel=1e-6
    )


def test_soft_dice_loss_closed_form() -> None:
    # One channel, prediction = target = a 4-pixel square in 16: Dice = (2*4+1)/(4+4+1) = 1, loss 0;
    # prediction all zeros: loss = 1 - 1 / (0 + 4 + 1) = 0.8.
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1
    ones = torch.ones(1, 1, 4, 4)
    assert soft_dice_loss(target, target, ones).item() == pytest.approx(0.0)
    assert soft_dice_loss(torch.zeros_like(target), target, ones).item() == pytest.approx(0.8)
