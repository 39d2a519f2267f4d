"""cDAL's method pinned down: G's attention-modulated input, lazy R1, where the adversarial
gradient goes, multi-level jumps, self-conditioning, z, D's maps and weight carry-over."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY

from napari_cdal.engine.config import TrainConfig
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.method.model import CdalModel, with_new_config
from napari_cdal.engine.method.sampler import reverse_process, uncertainty_maps
from napari_cdal.engine.method.schedule import VPSchedule
from napari_cdal.engine.segment.instances import border_distance
from napari_cdal.engine.training.state import TrainState
from napari_cdal.engine.training.step import encode_targets, train_step

CPU = torch.device("cpu")


def _state(config=TINY, **train) -> TrainState:
    cfg = TrainConfig(**{"iterations": 10, "batch_size": 2, "patch_size": 32, "warmup_steps": 1, **train})
    return TrainState.create(CdalModel.initialise(config, 3), cfg)


def _batch(seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, size, size, generator=g)
    x0 = torch.where(torch.rand(2, 2, size, size, generator=g) > 0.5, 1.0, -1.0)
    return images, x0, torch.ones(2, 1, size, size)


def test_generator_input_is_the_attention_modulated_pair(monkeypatch) -> None:
    state = _state()
    images, x0, weights = _batch()
    gate = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(2, 1, 32, 32).contiguous()
    monkeypatch.setattr(state.model.discriminator, "attention", lambda *a, **k: gate)
    seen = []
    real_forward = state.model.generator.forward
    monkeypatch.setattr(
        state.model.generator,
        "forward",
        lambda x, *a, **k: (seen.append(x.clone()), real_forward(x, *a, **k))[1],
    )
    # the same draws, in train_step's order: t, z, the plain pair, then the pair from A ⊙ x0
    rng = copy.deepcopy(state.torch_rng)
    schedule = state.model.schedule
    t = torch.randint(0, schedule.diffusion_steps, (2,), generator=rng)
    torch.randn(2, TINY.latent_dim, generator=rng)
    schedule.training_pair(x0, t, rng)
    _, expected = schedule.training_pair(gate * x0, t, rng)
    _, unmodulated = schedule.training_pair(x0, t, copy.deepcopy(rng))
    train_step(state, images, x0, weights, CPU)
    assert torch.equal(seen[0], expected)
    assert not torch.allclose(seen[0], unmodulated)


def test_r1_runs_on_its_interval_with_its_scaling() -> None:
    images, x0, weights = _batch(1)
    with_r1, without = _state(r1_gamma=1.0, r1_interval=10), _state(r1_gamma=0.0, r1_interval=10)
    on_interval = train_step(with_r1, images, x0, weights, CPU)
    plain = train_step(without, images, x0, weights, CPU)
    assert "r1" in on_interval and "r1" not in plain and on_interval["r1"] > 0
    # the D loss gains (gamma / 2) * ||grad||^2 scaled by the interval, nothing else
    assert on_interval["d"] - plain["d"] == pytest.approx(0.5 * on_interval["r1"] * 10, rel=1e-4, abs=1e-6)
    with_r1.step = without.step = 1
    off_interval = train_step(with_r1, images, x0, weights, CPU)
    assert "r1" not in off_interval


def test_adversarial_gradient_reaches_the_generator_only() -> None:
    images, x0, weights = _batch(2)
    strong, faint = _state(adversarial_weight=1.0), _state(adversarial_weight=1e-30)
    for state in (strong, faint):
        train_step(state, images, x0, weights, CPU)
    for a, b in zip(strong.model.discriminator.parameters(), faint.model.discriminator.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(strong.model.generator.parameters(), faint.model.generator.parameters(), strict=True)
    )


@pytest.mark.parametrize("diffusion_steps", [4, 2])
def test_jump_moments_match_gaussian_conditioning(diffusion_steps: int) -> None:
    # x_s = sqrt(ac_s) x0 + sqrt(1 - ac_s) e1 and x_k = sqrt(ac_k / ac_s) x_s + sqrt(1 - ac_k / ac_s) e2:
    # E[x_s | x_k, x0] and Var[x_s | x_k, x0] by conditioning the joint Gaussian.
    schedule = VPSchedule(diffusion_steps)
    for k in range(2, diffusion_steps + 1):
        for s in range(1, k - 1 + 1):
            ac_s, ac_k = float(schedule.alphas_cumprod[s]), float(schedule.alphas_cumprod[k])
            cov = math.sqrt(ac_k / ac_s) * (1.0 - ac_s)
            var_k = 1.0 - ac_k
            c2 = cov / var_k
            c1 = math.sqrt(ac_s) - c2 * math.sqrt(ac_k)
            var = (1.0 - ac_s) - cov * cov / var_k
            assert schedule.jump_coefficients(k, s) == pytest.approx((c1, c2, var), rel=1e-9, abs=1e-12)


def test_jump_moments_match_sampling() -> None:
    # q(x_1 | x_4, x0) of the T = 4 schedule, two levels apart, by Monte Carlo of the forward process
    schedule = VPSchedule(4)
    g = torch.Generator().manual_seed(0)
    n = 400_000
    ac1, ac4 = float(schedule.alphas_cumprod[1]), float(schedule.alphas_cumprod[4])
    x1 = math.sqrt(ac1) * 1.0 + math.sqrt(1 - ac1) * torch.randn(n, generator=g, dtype=torch.float64)
    x4 = math.sqrt(ac4 / ac1) * x1 + math.sqrt(1 - ac4 / ac1) * torch.randn(n, generator=g, dtype=torch.float64)
    design = torch.stack([torch.ones(n, dtype=torch.float64), x4], dim=1)
    coef = torch.linalg.lstsq(design, x1[:, None]).solution[:, 0]
    residual = (x1 - design @ coef).var().item()
    c1, c2, var = schedule.jump_coefficients(4, 1)
    assert coef[0].item() == pytest.approx(c1, abs=0.01)
    assert coef[1].item() == pytest.approx(c2, abs=0.02)
    assert residual == pytest.approx(var, rel=0.02)


def test_deterministic_jump_keeps_the_marginal_and_draws_no_noise() -> None:
    schedule = VPSchedule(4)
    for k, s in ((4, 2), (4, 3), (2, 1)):
        c1, c2, var = schedule.jump_coefficients(k, s, noise_scale=0.0)
        ac_s, ac_k = float(schedule.alphas_cumprod[s]), float(schedule.alphas_cumprod[k])
        assert var == 0.0
        # x_k = sqrt(ac_k) x0 + sqrt(1 - ac_k) e  ->  x_s = sqrt(ac_s) x0 + sqrt(1 - ac_s) e
        assert c1 + c2 * math.sqrt(ac_k) == pytest.approx(math.sqrt(ac_s))
        assert c2 * math.sqrt(1 - ac_k) == pytest.approx(math.sqrt(1 - ac_s))
    x0, x_k = torch.ones(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    a = schedule.jump_sample(x0, x_k, 4, 2, torch.Generator().manual_seed(1), noise_scale=0.0)
    b = schedule.jump_sample(x0, x_k, 4, 2, torch.Generator().manual_seed(2), noise_scale=0.0)
    assert torch.equal(a, b)


def test_latent_changes_a_trained_models_output(trained_tiny) -> None:
    model = trained_tiny[0]
    fresh = CdalModel.initialise(TINY, 0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 32, 32, generator=g)
    image = torch.randn(1, 3, 32, 32, generator=g)
    z1, z2 = (
        torch.randn(1, TINY.latent_dim, generator=g),
        torch.randn(1, TINY.latent_dim, generator=g),
    )
    t = torch.tensor([1])

    def spread(m: CdalModel) -> float:
        with torch.no_grad():
            f = m.generator.encode_image(image)
            return (m.generator(x, t, f, z1) - m.generator(x, t, f, z2)).abs().max().item()

    assert spread(fresh) == 0.0  # adaptive norms start at gamma = 1, beta = 0: z does nothing yet
    assert spread(model) > 1e-3


def test_self_conditioned_sampler_feeds_the_previous_estimate(monkeypatch) -> None:
    model = with_new_config(CdalModel.initialise(TINY, 0), replace(TINY, self_condition=True)).eval()
    seen = []
    real_forward = model.generator.forward

    def forward(x, t, f, z, prev=None):
        seen.append(prev.clone())
        out = real_forward(x, t, f, z, prev)
        seen.append(out.clone())
        return out

    monkeypatch.setattr(model.generator, "forward", forward)
    run_to_end(
        reverse_process(
            model,
            torch.randn(1, 3, 32, 32),
            sampling_steps=2,
            samples=2,
            rng=torch.Generator().manual_seed(0),
        )
    )
    first_input, first_output, second_input, _ = seen
    assert torch.count_nonzero(first_input) == 0
    assert torch.equal(second_input, first_output)


def test_new_inputs_start_at_zero_so_an_adapted_model_computes_the_same() -> None:
    source = CdalModel.initialise(TINY, 5).eval()
    adapted = with_new_config(source, replace(TINY, self_condition=True, disc_image=True), seed=9).eval()
    g = torch.Generator().manual_seed(0)
    x, x_next, image = (torch.randn(2, c, 32, 32, generator=g) for c in (2, 2, 3))
    z, t = torch.randn(2, TINY.latent_dim, generator=g), torch.tensor([0, 1])
    with torch.no_grad():
        f_old, f_new = source.generator.encode_image(image), adapted.generator.encode_image(image)
        assert torch.allclose(
            source.generator(x_next, t, f_old, z),
            adapted.generator(x_next, t, f_new, z, torch.randn(2, 2, 32, 32)),
            atol=1e-6,
        )
        assert torch.allclose(
            source.discriminator(x, x_next, t),
            adapted.discriminator(x, x_next, t, image),
            atol=1e-6,
        )
    with pytest.raises(ValueError, match="pass the image"):
        adapted.discriminator(x, x_next, t)


def test_score_map_averages_to_the_score_and_maps_have_the_label_size() -> None:
    D = CdalModel.initialise(TINY, 1).discriminator.eval()
    g = torch.Generator().manual_seed(3)
    x, x_next, t = (
        torch.randn(2, 2, 32, 32, generator=g),
        torch.randn(2, 2, 32, 32, generator=g),
        torch.tensor([0, 1]),
    )
    with torch.no_grad():
        assert torch.allclose(D.score_map(x, x_next, t).mean(dim=(1, 2, 3)), D(x, x_next, t), atol=1e-6)
        for kind in ("channel_mean", "score_map", "score_gradient"):
            assert D.suspicion(kind, x, x_next, t).shape == (2, 1, 32, 32)
    # the gradient map is zero where x_t cannot change D: nowhere here, so it has mass
    with torch.no_grad():
        assert D.suspicion("score_gradient", x, x_next, t).sum() > 0


def test_uncertainty_measures_closed_forms() -> None:
    half = torch.full((4, 2, 2), 0.5)
    split = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(4, 1, 1).expand(4, 2, 2)
    sure = torch.ones(4, 2, 2)
    maps = {name: uncertainty_maps(p) for name, p in (("half", half), ("split", split), ("sure", sure))}
    # every sample says 0.5: entropy 1 bit, no disagreement
    assert torch.allclose(maps["half"]["entropy"], torch.ones(2, 2), atol=1e-4)
    assert torch.allclose(maps["half"]["mutual_information"], torch.zeros(2, 2), atol=1e-4)
    assert torch.count_nonzero(maps["half"]["std"]) == 0
    # samples split between 0 and 1: std 0.5, entropy 1 bit, all of it disagreement
    assert torch.allclose(maps["split"]["std"], torch.full((2, 2), 0.5))
    assert torch.allclose(maps["split"]["mutual_information"], torch.ones(2, 2), atol=1e-3)
    assert all(torch.count_nonzero(v) == 0 for v in maps["sure"].values())
    assert all(torch.count_nonzero(v) == 0 for v in uncertainty_maps(half[:1]).values())


def test_shared_latent_removes_the_spread_that_z_makes(trained_tiny) -> None:
    model = trained_tiny[0]
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def spread(shared: bool) -> float:
        out = run_to_end(
            reverse_process(
                model,
                image,
                sampling_steps=1,
                samples=4,
                rng=torch.Generator().manual_seed(1),
                with_attention=False,
                shared_latent=shared,
            )
        )
        return out.uncertainty_maps["std"].pow(2).mean().item()

    # one step from x_T: the noise barely reaches x̂0 (sqrt(abar_T) ~ 0.007), so z makes the spread
    assert spread(True) < spread(False)


def test_cutmix_boxes_and_the_per_place_discriminator_loss() -> None:
    from napari_cdal.engine.training.step import cutmix_boxes

    boxes = cutmix_boxes(64, (32, 40), torch.Generator().manual_seed(0))
    assert boxes.shape == (64, 1, 32, 40) and set(boxes.unique().tolist()) <= {0.0, 1.0}
    share = boxes.mean(dim=(1, 2, 3))
    assert share.min() > 0.0 and share.max() < 1.0  # always a mix of real and fake
    # each side 25-75 %: the box covers 1/16 .. 9/16 of the image, or the rest when inverted
    box_share = torch.where(share <= 0.5625, share, 1.0 - share)
    assert box_share.min() >= 0.0625 - 0.01
    images, x0, weights = _batch(4)
    losses = train_step(_state(d_cutmix_weight=1.0), images, x0, weights, CPU)
    plain = train_step(_state(), images, x0, weights, CPU)
    assert losses["d_cutmix"] > 0 and "d_cutmix" not in plain


def test_chain_measures_pool_every_step_and_sample() -> None:
    # last step: both samples sure (1.0); first step: both at 0.0 -> the chain's mean is 0.5
    last = torch.ones(2, 3, 3)
    chain = torch.stack([torch.zeros(2, 3, 3), last])
    maps = uncertainty_maps(last, chain)
    assert torch.count_nonzero(maps["entropy"]) == 0 and torch.count_nonzero(maps["std"]) == 0
    assert torch.allclose(maps["chain_entropy"], torch.ones(3, 3), atol=1e-4)
    assert torch.allclose(maps["chain_std"], torch.full((3, 3), 0.5))


def test_own_chain_input_is_made_from_the_generators_first_estimate(monkeypatch) -> None:
    from napari_cdal.engine.training.step import own_chain_input

    state = _state()
    G, schedule = state.model.generator, state.model.schedule
    x_next = torch.randn(4, 2, 16, 16)
    t = torch.tensor([0, 1, 2, 3])  # t + 1 = T = 4 for the last: noise either way, kept
    features = G.encode_image(torch.randn(1, 3, 16, 16))
    assert own_chain_input(G, schedule, x_next, t, features, 0.0, torch.Generator()) is x_next
    rng = torch.Generator().manual_seed(5)
    made = own_chain_input(G, schedule, x_next, t, features, 1.0, copy.deepcopy(rng))
    assert torch.equal(made[3], x_next[3])
    # the same draws by hand: who is used, x_T, the first z, G's estimate, then the jumps
    use = torch.rand(4, generator=rng) < 1.0
    x_top = torch.randn(x_next.shape, generator=rng)
    z = torch.randn(4, TINY.latent_dim, generator=rng)
    with torch.no_grad():
        first = G(x_top, torch.full_like(t, 3), features, z)
    assert use.all()
    for row, level in ((0, 1), (1, 2), (2, 3)):
        c1, c2, var = schedule.jump_coefficients(4, level)
        residual = made[row] - c1 * first[row] - c2 * x_top[row]
        assert residual.std().item() == pytest.approx(var**0.5, rel=0.2)


def test_error_auroc_closed_forms_and_nucleus_matching() -> None:
    import numpy as np

    from napari_cdal.engine.labels import nucleus_areas, nucleus_means
    from napari_cdal.engine.segment import reliability as rel

    assert rel.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert rel.auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert rel.auroc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5  # all tied
    # 2 positives, 2 negatives, one pair out of order in four: 3/4
    assert rel.auroc(np.array([0.1, 0.6, 0.5, 0.9]), np.array([0, 0, 1, 1])) == 0.75
    assert rel.auroc(np.zeros(3), np.zeros(3)) is None
    truth = np.zeros((10, 10), int)
    truth[1:5, 1:5] = 1
    truth[6:9, 6:9] = 2
    pred = np.zeros((10, 10), int)
    pred[1:5, 1:5] = 1  # exact: right
    pred[6:9, 6:7] = 2  # a third of nucleus 2: IoU 1/3, wrong
    pred[0, 9] = 3  # nothing there: wrong
    assert rel.wrong_nuclei(pred, truth).tolist() == [False, True, True]
    assert nucleus_areas(pred).tolist() == [16.0, 3.0, 1.0]
    assert nucleus_means(pred, np.where(pred == 2, 1.0, 0.0)).tolist() == [0.0, 1.0, 0.0]


def test_nucleus_features() -> None:
    import numpy as np

    from napari_cdal.engine.segment.measurements import nucleus_features

    labels = np.zeros((6, 8), int)
    labels[0:2, 0:2] = 1
    labels[3:6, 4:8] = 2
    labels[0, 7] = 3
    doubt = np.where(labels == 3, 0.9, np.where(labels == 1, 0.5, 0.1))
    features = nucleus_features(labels, 0.5, doubt, None)
    assert features["index"].tolist() == [1, 2, 3]
    assert features["area_um2"].tolist() == [1.0, 3.0, 0.25]
    assert features["centroid_y"].tolist() == [0.5, 4.0, 0.0]
    assert features["centroid_x"].tolist() == [0.5, 5.5, 7.0]
    assert features["mean_uncertainty"].tolist() == pytest.approx([0.5, 0.1, 0.9])
    assert np.isnan(features["mean_attention"]).all()


@pytest.mark.parametrize("disc_kind", ["trunk", "pixel"])
def test_a_distance_channel_added_leaves_the_old_channels_as_they_were(disc_kind: str) -> None:
    display = {"trunk": "channel_mean", "pixel": "error_probability"}[disc_kind]
    config = replace(TINY, disc_kind=disc_kind, disc_image=True, attention_display=display)
    source = CdalModel.initialise(config, 5).eval()
    adapted = with_new_config(source, replace(source.config, label_encoding="foreground_core_distance"), seed=9).eval()
    assert adapted.config.label_channels == 3
    g = torch.Generator().manual_seed(0)
    x, x_next, image = (torch.randn(2, c, 32, 32, generator=g) for c in (2, 2, 3))
    x3, next3 = (torch.cat([v, torch.randn(2, 1, 32, 32, generator=g)], dim=1) for v in (x, x_next))
    z, t = torch.randn(2, TINY.latent_dim, generator=g), torch.tensor([0, 1])
    with torch.no_grad():
        before = source.generator(x_next, t, source.generator.encode_image(image), z)
        after = adapted.generator(next3, t, adapted.generator.encode_image(image), z)
        assert torch.allclose(after[:, :2], before, atol=1e-6)
        assert torch.allclose(after[:, 2], before[:, 1], atol=1e-6)  # the distance starts as the core
        assert torch.allclose(
            adapted.discriminator(x3, next3, t, image), source.discriminator(x, x_next, t, image), atol=1e-6
        )


def test_distance_targets_follow_foreground_and_core() -> None:
    labels = torch.zeros(12, 12, dtype=torch.int32).numpy()
    labels[1:8, 1:8] = 2
    labels[8:11, 2:11] = 7
    three = encode_targets(labels, replace(TINY, label_encoding="foreground_core_distance"))
    two = encode_targets(labels, TINY)
    assert three.shape == (3, 12, 12) and np.array_equal(three[:2], two)
    assert np.allclose(three[2], 2 * border_distance(labels) - 1)
    assert three[2].min() == -1.0 and three[2].max() == 1.0
