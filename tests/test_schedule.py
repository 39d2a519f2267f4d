"""The VP schedule against cDAL.md's check values and the closed-form Gaussian posterior."""

import math

import pytest
import torch

from napari_cdal.engine.method.schedule import VPSchedule


def test_t4_values_match_the_method() -> None:
    s = VPSchedule(4)
    assert s.betas[1:].tolist() == pytest.approx([0.4783, 0.8492, 0.9564, 0.9874], abs=1e-4)
    assert s.alphas_cumprod[1:].sqrt().tolist() == pytest.approx([0.7223, 0.2805, 0.0586, 0.0066], abs=1e-4)


def test_t2_values_match_the_method() -> None:
    assert VPSchedule(2).betas[1:].tolist() == pytest.approx([0.9213, 0.9995], abs=1e-4)


@pytest.mark.parametrize("steps", [2, 4])
def test_posterior_coefficients_are_the_closed_form(steps: int) -> None:
    s = VPSchedule(steps)
    ac = s.alphas_cumprod.tolist()
    for t in range(steps):
        beta, alpha = s.betas[t + 1].item(), s.alphas[t + 1].item()
        c1 = beta * math.sqrt(ac[t]) / (1 - ac[t + 1])
        c2 = (1 - ac[t]) * math.sqrt(alpha) / (1 - ac[t + 1])
        var = beta * (1 - ac[t]) / (1 - ac[t + 1])
        assert s.posterior_coef_x0[t].item() == pytest.approx(c1, rel=1e-12)
        assert s.posterior_coef_xt[t].item() == pytest.approx(c2, rel=1e-12)
        assert s.posterior_variance[t].item() == pytest.approx(var, rel=1e-12, abs=1e-15)
        assert s.jump_coefficients(t + 1, t) == pytest.approx((c1, c2, var), rel=1e-12, abs=1e-15)


def test_last_reverse_step_returns_x0_without_noise() -> None:
    s = VPSchedule(4)
    x0 = torch.rand(3, 1, 5, 5) * 2 - 1
    out = s.posterior_sample(
        x0, torch.randn_like(x0), torch.zeros(3, dtype=torch.long), torch.Generator().manual_seed(0)
    )
    assert torch.allclose(out, x0)


def test_q_sample_has_the_closed_form_moments() -> None:
    s = VPSchedule(4)
    rng = torch.Generator().manual_seed(0)
    x0 = torch.ones(200_000, 1, 1, 1)
    t = torch.full((200_000,), 1)
    x_t = s.q_sample(x0, t, torch.randn(x0.shape, generator=rng))
    ac = s.alphas_cumprod[1].item()
    assert x_t.mean().item() == pytest.approx(math.sqrt(ac), abs=0.01)
    assert x_t.var().item() == pytest.approx(1 - ac, abs=0.01)


def test_training_pair_follows_one_forward_step() -> None:
    # x_{t+1} | x_t has mean sqrt(alpha_{t+1}) x_t and variance beta_{t+1}: regress to check.
    s = VPSchedule(4)
    rng = torch.Generator().manual_seed(1)
    x0 = torch.ones(100_000, 1, 1, 1)
    t = torch.full((100_000,), 0)
    x_t, x_next = s.training_pair(x0, t, rng)
    resid = x_next - math.sqrt(s.alphas[1].item()) * x_t
    assert resid.mean().item() == pytest.approx(0.0, abs=0.01)
    assert resid.var().item() == pytest.approx(s.betas[1].item(), abs=0.01)


def test_sampling_levels_and_bad_step_counts() -> None:
    s = VPSchedule(4)
    assert s.sampling_levels(4) == [4, 3, 2, 1, 0]
    assert s.sampling_levels(2) == [4, 2, 0]
    assert s.sampling_levels(1) == [4, 0]
    with pytest.raises(ValueError, match="steps"):
        s.sampling_levels(5)
    with pytest.raises(ValueError, match="diffusion_steps"):
        VPSchedule(0)
