"""The variance-preserving diffusion schedule of cDAL with a handful of large steps (cDAL.md §1-2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PosteriorStep:
    """What one reverse step draws from: N(mean, variance), the posterior q(x_t | x_{t+1}, x_0)."""

    mean: torch.Tensor
    variance: torch.Tensor


def _abar(tau: float, beta_min: float, beta_max: float) -> float:
    # (1) alphabar(tau) = exp(-0.5 tau^2 (beta_max - beta_min) - tau beta_min)
    return math.exp(-0.5 * tau * tau * (beta_max - beta_min) - tau * beta_min)


class VPSchedule:
    """T-step VP schedule: betas, cumulative alphas, closed-form q(x_t | x_0) and its posterior.

    Step indices follow the paper: x_0 is the clean label, x_T is (almost) pure noise, and the
    generator network G is asked for x_0 from x_{t+1} with t in 0..T-1.
    """

    def __init__(
        self,
        diffusion_steps: int = 4,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        eps: float = 1e-3,
    ) -> None:
        if diffusion_steps < 1:
            raise ValueError(f"diffusion_steps must be at least 1, got {diffusion_steps}")
        self.diffusion_steps = diffusion_steps
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.eps = eps
        taus = [eps + (1.0 - eps) * k / diffusion_steps for k in range(diffusion_steps + 1)]
        abars = [_abar(tau, beta_min, beta_max) for tau in taus]
        # (2) beta_k = 1 - abar(tau_k) / abar(tau_{k-1}), k = 1..T; index 0 is a placeholder.
        betas = [0.0] + [1.0 - abars[k] / abars[k - 1] for k in range(1, diffusion_steps + 1)]
        alphas = [1.0 - b for b in betas]
        alphas_cumprod = [1.0]
        for k in range(1, diffusion_steps + 1):
            alphas_cumprod.append(alphas_cumprod[-1] * alphas[k])
        self.betas = torch.tensor(betas, dtype=torch.float64)
        self.alphas = torch.tensor(alphas, dtype=torch.float64)
        self.alphas_cumprod = torch.tensor(alphas_cumprod, dtype=torch.float64)
        # (3) posterior of step t+1 -> t, indexed by t = 0..T-1.
        t = torch.arange(diffusion_steps)
        ac_t, ac_next = self.alphas_cumprod[t], self.alphas_cumprod[t + 1]
        beta_next, alpha_next = self.betas[t + 1], self.alphas[t + 1]
        self.posterior_coef_x0 = beta_next * ac_t.sqrt() / (1.0 - ac_next)
        self.posterior_coef_xt = (1.0 - ac_t) * alpha_next.sqrt() / (1.0 - ac_next)
        self.posterior_variance = beta_next * (1.0 - ac_t) / (1.0 - ac_next)

    @staticmethod
    def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = values.to(like.device)[t.to(like.device)].to(like.dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) for a batch of t."""
        ac = self._gather(self.alphas_cumprod, t, x0)
        return ac.sqrt() * x0 + (1.0 - ac).sqrt() * noise

    def forward_step(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One forward step: x_{t+1} = sqrt(alpha_{t+1}) x_t + sqrt(beta_{t+1}) noise."""
        beta = self._gather(self.betas, t + 1, x_t)
        return (1.0 - beta).sqrt() * x_t + beta.sqrt() * noise

    def training_pair(
        self, x0: torch.Tensor, t: torch.Tensor, rng: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pair (x_t, x_{t+1}) drawn from the forward process, t in 0..T-1 per sample."""
        noise_a = randn_like(x0, rng)
        noise_b = randn_like(x0, rng)
        x_t = self.q_sample(x0, t, noise_a)
        return x_t, self.forward_step(x_t, t, noise_b)

    def jump_coefficients(self, k: int, s: int, noise_scale: float = 1.0) -> tuple[float, float, float]:
        """Coefficients (c1, c2, var) of a jump x_s = c1 x_0 + c2 x_k + sqrt(var) noise, for s < k.

        noise_scale 1 gives q(x_s | x_k, x_0), with s = k - 1 cDAL.md §2's posterior; 0 gives the
        deterministic DDIM jump (Song et al. 2021), which keeps x_k's noise instead of drawing new.
        In between, var = noise_scale^2 times the posterior variance and the mean keeps the
        marginal q(x_s | x_0) (DDIM's eta).
        """
        if not 0 <= s < k <= self.diffusion_steps:
            raise ValueError(f"need 0 <= s < k <= {self.diffusion_steps}, got k={k}, s={s}")
        if not 0.0 <= noise_scale <= 1.0:
            raise ValueError(f"noise_scale must lie in [0, 1], got {noise_scale}")
        ac_s, ac_k = float(self.alphas_cumprod[s]), float(self.alphas_cumprod[k])
        posterior_var = (1.0 - ac_k / ac_s) * (1.0 - ac_s) / (1.0 - ac_k)
        var = noise_scale**2 * posterior_var
        c2 = max(0.0, 1.0 - ac_s - var) ** 0.5 / (1.0 - ac_k) ** 0.5
        c1 = ac_s**0.5 - c2 * ac_k**0.5
        return c1, c2, var

    def posterior(self, x0: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor) -> PosteriorStep:
        """q(x_t | x_{t+1}, x_0): mean c1 x_0 + c2 x_{t+1} and its variance, per-sample t."""
        c1 = self._gather(self.posterior_coef_x0, t, x0)
        c2 = self._gather(self.posterior_coef_xt, t, x0)
        var = self._gather(self.posterior_variance, t, x0)
        return PosteriorStep(mean=c1 * x0 + c2 * x_next, variance=var)

    def posterior_sample(
        self,
        x0: torch.Tensor,
        x_next: torch.Tensor,
        t: torch.Tensor,
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample x_t from the posterior; where t == 0 the result is x_0 itself (no noise)."""
        post = self.posterior(x0, x_next, t)
        noise = randn_like(x0, rng)
        return post.mean + post.variance.sqrt() * noise

    def jump_sample(
        self,
        x0: torch.Tensor,
        x_k: torch.Tensor,
        k: int,
        s: int,
        rng: torch.Generator | None = None,
        noise_scale: float = 1.0,
    ) -> torch.Tensor:
        """Draw x_s for one pair of levels (see jump_coefficients); s == 0 returns x_0 itself."""
        if s == 0:
            return x0
        c1, c2, var = self.jump_coefficients(k, s, noise_scale)
        noise = randn_like(x0, rng) if var > 0 else torch.zeros_like(x0)
        return c1 * x0 + c2 * x_k + var**0.5 * noise

    def sampling_levels(self, sampling_steps: int) -> list[int]:
        """The noise levels visited when sampling with `sampling_steps` <= T passes of G, ending at 0.

        T = 4 with 4 steps visits [4, 3, 2, 1, 0]; with 2 steps [4, 2, 0]; with 1 step [4, 0].
        """
        steps = sampling_steps
        if not 1 <= steps <= self.diffusion_steps:
            raise ValueError(f"sampling_steps must lie in 1..{self.diffusion_steps} for this model, got {steps}")
        levels = [round(self.diffusion_steps * (steps - i) / steps) for i in range(steps + 1)]
        return levels


def randn_like(x: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn from `rng` (a torch.Generator) on the rng's device.

    Drawing on the rng's device and moving keeps CPU-seeded runs identical whatever
    device the model runs on.
    """
    rng_device = rng.device if rng is not None else x.device
    noise = torch.randn(x.shape, generator=rng, device=rng_device, dtype=torch.float32)
    return noise.to(device=x.device, dtype=x.dtype)
