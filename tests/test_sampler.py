"""The reverse process and whole-image segmentation: events, shapes, determinism, tiling."""

import numpy as np
import pytest
import torch
from conftest import blob_tile

from napari_cdal.engine.device import make_rng
from napari_cdal.engine.events import TICK, run_to_end
from napari_cdal.engine.method.intensity import normalise
from napari_cdal.engine.method.sampler import reverse_process
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import dice


def _normalised(tile, model):
    pixels = torch.from_numpy(tile.image.astype(np.float32).transpose(2, 0, 1))[None]
    return normalise(pixels, model.config)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_reverse_process_yields_every_step_then_the_maps(trained_tiny, steps) -> None:
    model, _ = trained_tiny
    image = _normalised(blob_tile(9, size=60), model)  # 60 is not a multiple of 4: padded inside
    events = [
        e for e in reverse_process(model, image, sampling_steps=steps, samples=3, rng=make_rng(0)) if e.stage != TICK
    ]
    assert [e.stage for e in events] == ["step"] * steps + ["done"]
    assert [e.index for e in events[:-1]] == list(range(steps))
    for event in events[:-1]:
        assert event.payload.x0_mean.shape == (1, 2, 60, 60)
        assert event.payload.attention.shape == (1, 60, 60)
    out = events[-1].payload
    assert out.probability.shape == (1, 2, 60, 60)
    assert out.uncertainty.shape == (1, 60, 60)
    assert 0.0 <= out.probability.min() and out.probability.max() <= 1.0
    assert (out.uncertainty > 0).any()


def test_the_chain_starts_at_the_seeds_noise_and_ends_at_the_last_estimate(trained_tiny) -> None:
    # x_T is the first draw of the passed generator (mean over K); each step starts where the last
    # one ended; the last step's x_s is x_0, which is that step's x̂_0.
    model, _ = trained_tiny
    config, samples = model.config, 3
    image = _normalised(blob_tile(9, size=64), model)  # 64: a multiple of the model's, nothing padded
    steps = [
        e.payload
        for e in reverse_process(model, image, sampling_steps=2, samples=samples, rng=make_rng(7))
        if e.stage == "step"
    ]
    noise = torch.randn(samples, config.label_channels, 64, 64, generator=make_rng(7))
    assert steps[0].x_from_mean.shape == (1, config.label_channels, 64, 64)
    assert torch.allclose(steps[0].x_from_mean[0], noise.mean(dim=0))
    assert torch.equal(steps[1].x_from_mean, steps[0].x_to_mean)
    assert not torch.allclose(steps[0].x_to_mean, steps[0].x0_mean, atol=0.05), "x_2 is x̂_0 with noise again"
    assert torch.equal(steps[-1].x_to_mean, steps[-1].x0_mean)


def test_one_sample_has_no_spread(trained_tiny) -> None:
    model, _ = trained_tiny
    events = list(reverse_process(model, _normalised(blob_tile(9, 32), model), samples=1, rng=make_rng(0)))
    assert torch.count_nonzero(events[-1].payload.uncertainty) == 0


def test_image_encoder_runs_once_per_image(trained_tiny, monkeypatch) -> None:
    model, _ = trained_tiny
    calls = []
    original = model.generator.encode_image
    monkeypatch.setattr(model.generator, "encode_image", lambda x: calls.append(1) or original(x))
    list(reverse_process(model, _normalised(blob_tile(9, 32), model), sampling_steps=4, samples=5, rng=make_rng(0)))
    assert len(calls) == 1


def test_seeded_segmentation_repeats_bit_for_bit(trained_tiny) -> None:
    model, _ = trained_tiny
    image = blob_tile(11).image
    a = run_to_end(segment_image(model, image, image_mpp=0.5, samples=2, seed=3))
    b = run_to_end(segment_image(model, image, image_mpp=0.5, samples=2, seed=3))
    c = run_to_end(segment_image(model, image, image_mpp=0.5, samples=2, seed=4))
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.probability, b.probability)
    assert np.array_equal(a.steps, b.steps) and np.array_equal(a.chain, b.chain)
    assert not np.array_equal(a.chain[0], c.chain[0]), "another seed, other noise"
    assert not np.array_equal(a.probability, c.probability)


def test_tiny_model_segments_unseen_blobs(trained_tiny) -> None:
    model, _ = trained_tiny
    tile = blob_tile(12)
    result = run_to_end(segment_image(model, tile.image, image_mpp=0.5, sampling_steps=4, samples=1))
    assert result.labels.shape == tile.instances.shape
    assert result.labels.dtype == np.uint32
    assert dice(result.labels, tile.instances) > 0.9
    assert abs(result.n_nuclei - len(np.unique(tile.instances)) + 1) <= 5
    assert result.steps.shape == (4, 128, 128) and result.attention.shape == (4, 128, 128)
    assert result.chain.shape == (5, 128, 128), "x_T and the four steps' x_s"


@pytest.mark.parametrize("steps", [1, 2])
def test_the_chain_stack_runs_from_the_noise_to_the_mask(trained_tiny, steps) -> None:
    # Tiled with overlap like the other maps: x_T (the drawn noise, mapped to [0, 1]: mean 0.5, wide
    # spread), one plane per step, the last the final estimate's mapping.
    model, _ = trained_tiny
    events = list(
        segment_image(
            model,
            blob_tile(18, size=100).image,
            image_mpp=0.5,
            sampling_steps=steps,
            samples=2,
            window_px=64,
            overlap=16,
        )
    )
    result = events[-1].payload
    assert result.chain.shape == (steps + 1, 100, 100) and result.chain.dtype == np.float32
    assert result.steps.shape == (steps, 100, 100)
    noise = result.chain[0]
    assert abs(float(noise.mean()) - 0.5) < 0.02 and float(noise.std()) > 0.2
    assert 0.0 <= result.chain.min() and result.chain.max() <= 1.0
    np.testing.assert_array_equal(result.chain[-1], result.steps[-1])
    np.testing.assert_allclose(result.chain[-1], result.probability[0], atol=1e-5)
    assert float(result.chain[-1].std()) > 0.3, "the mask: near 0 or 1, not noise"
    updates = [e.payload for e in events if e.stage == "step"]
    assert all((u.chain_start is not None) == (u.step == 0) for u in updates)
    y0, y1, x0, x1 = updates[0].box
    assert updates[0].chain.shape == updates[0].chain_start.shape == (y1 - y0, x1 - x0)


def test_tiles_reproduce_the_whole_image_result(trained_tiny) -> None:
    # The same image segmented whole and in 64-px tiles with overlap agrees nearly everywhere.
    model, _ = trained_tiny
    tile = blob_tile(13, size=160)
    whole = run_to_end(segment_image(model, tile.image, image_mpp=0.5, window_px=256, overlap=32))
    tiled_events = list(segment_image(model, tile.image, image_mpp=0.5, window_px=64, overlap=24))
    tiled = tiled_events[-1].payload
    n_tiles = len({e.payload.window for e in tiled_events if e.stage == "step"})
    assert n_tiles == 16  # 160 px, tile 64, stride 40: starts 0, 40, 80, 96 on each axis
    assert dice(whole.labels, tiled.labels) > 0.97
    assert np.abs(whole.probability - tiled.probability).mean() < 0.03


def test_resampling_returns_to_the_input_grid(trained_tiny) -> None:
    # A 0.25 µm/px image is halved for the model and the labels come back at full size.
    model, _ = trained_tiny
    tile = blob_tile(14, size=96)
    big = np.kron(tile.image, np.ones((2, 2, 1), np.uint8))
    truth = np.kron(tile.instances, np.ones((2, 2), np.uint32))
    result = run_to_end(segment_image(model, big, image_mpp=0.25))
    assert result.labels.shape == (192, 192)
    assert result.probability.shape == (2, 192, 192)
    assert dice(result.labels, truth) > 0.9


def test_progress_events_count_tiles_and_steps(trained_tiny) -> None:
    model, _ = trained_tiny
    events = list(
        segment_image(model, blob_tile(15, size=100).image, image_mpp=0.5, sampling_steps=2, window_px=64, overlap=16)
    )
    steps = [e for e in events if e.stage == "step"]
    assert len(steps) == 4 * 2
    assert [e.index for e in steps] == list(range(1, 9))
    assert all(e.total == 8 for e in steps)
    update = steps[0].payload
    y0, y1, x0, x1 = update.box
    assert update.foreground.shape == (y1 - y0, x1 - x0)


def test_default_steps_come_from_the_config(trained_tiny) -> None:
    # sampling_steps = 2 on a T = 4 model: two reverse steps unless more are asked for.
    import dataclasses

    model, _ = trained_tiny
    original = model.config
    try:
        model.config = dataclasses.replace(original, default_sampling_steps=2)
        events = list(segment_image(model, blob_tile(16, size=64).image, image_mpp=0.5))
        assert events[-1].payload.steps.shape[0] == 2
        events = segment_image(model, blob_tile(16, size=64).image, image_mpp=0.5, sampling_steps=4)
        assert len([e for e in events if e.stage != TICK]) == 5
    finally:
        model.config = original
    with pytest.raises(ValueError, match="default_sampling_steps"):
        dataclasses.replace(original, default_sampling_steps=5)


def test_runs_without_step_maps_send_no_live_maps(trained_tiny) -> None:
    # evaluate and the CLI keep no step maps: the step events still count, but carry no arrays.
    model, _ = trained_tiny
    events = list(segment_image(model, blob_tile(17, size=64).image, image_mpp=0.5, keep_steps=False))
    steps = [e.payload for e in events if e.stage == "step"]
    assert len(steps) == model.config.sampling_steps
    assert all(u.foreground is None and u.attention is None and u.chain is None for u in steps)
    assert events[-1].payload.steps is None and events[-1].payload.attention is None
    assert events[-1].payload.chain is None


def test_ticks_come_after_every_network_pass_and_carry_no_payload(trained_tiny) -> None:
    # a tick after G's pass and after each of D's: as many before each step's event, none after 'done'.
    model, _ = trained_tiny
    events = list(
        reverse_process(model, _normalised(blob_tile(9, 32), model), sampling_steps=2, samples=2, rng=make_rng(0))
    )
    stages = [e.stage for e in events]
    first_step, second_step = (i for i, stage in enumerate(stages) if stage == "step")
    assert stages[-1] == "done" and stages[0] == TICK
    assert stages[first_step + 1 : second_step].count(TICK) == first_step >= 2  # every step: as many ticks
    ticks = [e for e in events if e.stage == TICK]
    assert all(e.payload is None and e.total == 2 for e in ticks)
    assert {e.index for e in ticks[:first_step]} == {0} and {e.index for e in ticks[first_step:]} == {1}


def _count_blocks(monkeypatch) -> list[int]:
    """Record the index, in G's own order, of every residual block of G that runs."""
    from napari_cdal.engine.method.networks import ResBlock

    ran: list[int] = []
    real = ResBlock.forward

    def counted(self, *args):
        ran.append(self.order)
        return real(self, *args)

    monkeypatch.setattr(ResBlock, "forward", counted)
    return ran


def _number_blocks(model, monkeypatch) -> int:
    """Give each residual block of G its index in G's order; how many there are."""
    from napari_cdal.engine.method.networks import ResBlock

    blocks = [m for m in model.generator.modules() if isinstance(m, ResBlock)]
    for index, block in enumerate(blocks):
        monkeypatch.setattr(block, "order", index, raising=False)
    return len(blocks)


def test_closing_at_a_tick_stops_between_network_passes(trained_tiny, monkeypatch) -> None:
    model, _ = trained_tiny
    count = _number_blocks(model, monkeypatch)
    ran = _count_blocks(monkeypatch)
    events = reverse_process(model, _normalised(blob_tile(9, 32), model), sampling_steps=4, samples=2, rng=make_rng(0))
    assert next(events).stage == TICK
    assert ran == list(range(count))  # the first tick comes after G's whole first pass, block by block
    events.close()
    assert ran == list(range(count))


def test_the_cancel_token_stops_a_run_between_two_blocks(trained_tiny, monkeypatch) -> None:
    # the token is set as block 2 of G's second pass ends: block 3 never runs, the run raises
    # RunCancelled, and once the run is over the networks check nothing
    import threading

    from napari_cdal.engine.events import RunCancelled, stop_on_cancel

    model, _ = trained_tiny
    count = _number_blocks(model, monkeypatch)
    ran = _count_blocks(monkeypatch)
    token = threading.Event()

    def set_in_second_pass(*_) -> None:
        if len(ran) > count:
            token.set()

    blocks = [m for m in model.generator.modules() if hasattr(m, "order")]
    setter = blocks[2].register_forward_hook(set_in_second_pass)
    image = _normalised(blob_tile(9, 32), model)
    try:
        with stop_on_cancel(token, model.generator, model.discriminator), pytest.raises(RunCancelled):
            run_to_end(reverse_process(model, image, sampling_steps=4, samples=2, rng=make_rng(0)))
    finally:
        setter.remove()
    assert token.is_set() and ran == list(range(count)) + [0, 1, 2]
    assert run_to_end(reverse_process(model, image, sampling_steps=1, samples=2, rng=make_rng(0))) is not None


def _reference_sampling(model, image, steps: int, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cDAL's reverse process for one image written out plainly, as the sampler's reference: G's forward and the
    jump between noise levels (schedule.jump_coefficients), nothing else (no ticks, no cancel checks, no D, no
    runtime), drawing from one seeded generator in the sampler's order: x_T, then each step's z and its jump's
    noise. The mean probability per channel (C, H, W) and the foreground's spread over the K samples (H, W)."""
    config, schedule = model.config, model.schedule
    assert config.sampling_noise == 1.0 and not config.attention_in_sampling, "the reference leaves those out"
    rng = make_rng(seed)
    with torch.no_grad():
        features = model.generator.encode_image(image)
        x_k = torch.randn(samples, config.label_channels, *image.shape[-2:], generator=rng)
        x0 = torch.zeros_like(x_k)
        levels = schedule.sampling_levels(steps)
        for k, s in zip(levels[:-1], levels[1:], strict=True):
            t = torch.full((samples,), k - 1, dtype=torch.long)
            z = torch.randn(samples, config.latent_dim, generator=rng)
            x0 = model.generator(x_k, t, features, z, x0)
            if s == 0:
                x_k = x0
            else:
                c1, c2, var = schedule.jump_coefficients(k, s)
                x_k = c1 * x0 + c2 * x_k + var**0.5 * torch.randn(x0.shape, generator=rng)
    probability = ((x_k + 1.0) / 2.0).clamp(0.0, 1.0)
    return probability.mean(dim=0), probability[:, 0].std(dim=0, unbiased=False)


@pytest.mark.parametrize("steps", [2, 4])
def test_sampling_is_the_reverse_process_written_out_with_or_without_cancel_checks(trained_tiny, steps) -> None:
    # the sampler (ticks after every pass, D's passes for the attention) gives the reference's bits, and so it does
    # with the cancel token's checks on every module while the token is not set
    import threading

    from napari_cdal.engine.events import stop_on_cancel

    model, _ = trained_tiny
    assert model.config.uncertainty_measure == "std" and not model.config.is_multiclass
    image = _normalised(blob_tile(10, 48), model)  # 48: a multiple of the model's, nothing padded
    probability, spread = _reference_sampling(model, image, steps, samples=3, seed=5)
    assert float(spread.max()) > 0.01, "three samples that differ: the comparison sees each one's noise"
    done = run_to_end(reverse_process(model, image, sampling_steps=steps, samples=3, rng=make_rng(5)))
    with stop_on_cancel(threading.Event(), model.generator, model.discriminator):
        checked = run_to_end(reverse_process(model, image, sampling_steps=steps, samples=3, rng=make_rng(5)))
    for result in (done, checked):
        torch.testing.assert_close(result.probability[0], probability, rtol=0, atol=1e-6)
        torch.testing.assert_close(result.uncertainty[0], spread, rtol=0, atol=1e-6)


@pytest.mark.parametrize("view", range(8))
def test_each_view_turns_back_to_the_image(view) -> None:
    from napari_cdal.engine.method.symmetry import RECTANGLE_VIEWS, from_view, to_view

    square = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    seen = to_view(square, view)
    assert torch.equal(from_view(seen, view), square)
    assert view == 0 or not torch.equal(seen, square)  # every view but the identity moves the pixels
    if view < RECTANGLE_VIEWS:
        assert to_view(torch.zeros(3, 4, 6), view).shape == (3, 4, 6)


def test_the_views_are_the_eight_symmetries_of_a_square() -> None:
    from napari_cdal.engine.method.symmetry import VIEWS, member_views, to_view

    square = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    seen = {tuple(to_view(square, view).flatten().tolist()) for view in range(len(VIEWS))}
    assert len(seen) == 8
    assert member_views(6, 3, 8, 8) == [0, 1, 2, 0, 1, 2]
    assert member_views(6, 6, 8, 12) == [0, 1, 2, 3, 0, 1]  # a rectangle keeps to the four flips


def test_augmented_samples_are_the_plain_samples_of_the_flipped_image_turned_back(trained_tiny) -> None:
    # sample 1 of an augmented run sees the image mirrored left-right: with the same seed (the same noise drawn in
    # the same order) it is the plain run's sample 1 on the mirrored image, mirrored back
    model, _ = trained_tiny
    image = _normalised(blob_tile(11, size=48), model)

    def estimates(pixels, augment):
        events = reverse_process(
            model,
            pixels,
            sampling_steps=2,
            samples=2,
            rng=make_rng(5),
            with_attention=False,
            keep_pairs=True,
            augment=augment,
        )
        return [e.payload.pair.estimate for e in events if e.stage == "step"][-1]

    augmented = estimates(image, True)
    plain = estimates(image, False)
    mirrored = estimates(torch.flip(image, dims=(-1,)), False)
    torch.testing.assert_close(augmented[0], plain[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(augmented[1], torch.flip(mirrored[1], dims=(-1,)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(augmented[1], plain[1], atol=1e-3)
