"""Sampling loops over a step-indexed denoiser ``fn(x (N, C), j) -> out (N, C_out)`` (guidance already applied).

``fn``'s j-th call is the j-th step of the loop; the caller has embedded that step's timestep in advance.
* :func:`ddpm_sample`: ancestral sampling on (respaced) Gaussian tables, learned-range variance, temperature on the
  per-step noise only, optional x0 clipping.
* :func:`scheduler_sample`: a diffusers scheduler (DDIM / DPM-Solver++) driven by the epsilon channels.
* :func:`euler_flow_sample`: Euler integration of a rectified-flow velocity from t = 1 (noise) to t = 0 (data).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from videoaction.nn.diffusion.gaussian import GaussianTables

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]


def ddpm_sample(
    fn: Denoiser,
    x: torch.Tensor,
    tables: GaussianTables,
    temperature: float = 1.0,
    clip: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """IDDPM ``p_sample_loop`` from x = x_T (N, C); j-th call of ``fn`` is respaced step K-1-j.
    ``clip``: clamp the predicted x0 to [-clip, clip] at every step (None: no clipping)."""
    f = tables.floats()
    C = x.shape[1]
    noise = torch.empty_like(x)
    K = tables.num_timesteps
    for j in range(K):
        i = K - 1 - j
        out = fn(x, j).float()
        eps, v = out[:, :C], out[:, C:]
        x0 = torch.mul(x, f["sqrt_recip_alphas_cumprod"][i]).sub_(eps, alpha=f["sqrt_recipm1_alphas_cumprod"][i])
        if clip is not None:
            x0.clamp_(-clip, clip)
        mean = x0.mul_(f["posterior_mean_coef1"][i]).add_(x, alpha=f["posterior_mean_coef2"][i])
        if i == 0:
            x = mean  # no noise at the last step
            break
        lo, hi = f["posterior_log_variance_clipped"][i], f["log_betas"][i]
        # log-variance = lo + (v + 1)/2 * (hi - lo); std = exp(logvar / 2)
        std = v.add(1.0).mul_(0.25 * (hi - lo)).add_(0.5 * lo).exp_()
        noise.normal_(generator=generator)
        x = mean.addcmul_(std, noise, value=float(temperature))
    return x


def clip_eps(x: torch.Tensor, eps: torch.Tensor, sqrt_ac: float, sqrt_1m_ac: float, clip: float) -> torch.Tensor:
    """The epsilon whose implied x0 = (x - sqrt(1-abar) eps)/sqrt(abar) is clipped to [-clip, clip]."""
    x0 = ((x - sqrt_1m_ac * eps) / sqrt_ac).clamp_(-clip, clip)
    return (x - sqrt_ac * x0) / sqrt_1m_ac


def scheduler_sample(
    fn: Denoiser,
    x: torch.Tensor,
    scheduler,
    timesteps: list[int],
    base: GaussianTables,
    temperature: float = 1.0,
    clip: float | None = None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """Drive a diffusers scheduler (already ``set_timesteps``) with the epsilon channels of ``fn``.

    DDIM with ``eta > 0`` draws its per-step noise from ``generator``, multiplied by ``temperature``; for the
    deterministic samplers (DDIM eta = 0, DPM-Solver++) temperature has no effect.
    """
    C = x.shape[1]
    f = base.floats() if clip is not None else None
    is_ddim = type(scheduler).__name__ == "DDIMScheduler"
    for j, t in enumerate(timesteps):
        eps = fn(x, j)[:, :C].float()
        if f is not None:
            eps = clip_eps(x, eps, f["sqrt_alphas_cumprod"][t], f["sqrt_one_minus_alphas_cumprod"][t], clip)
        if is_ddim and eta > 0:
            prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
            x = _ddim_eta_step(x, eps, t, prev, base, eta, temperature, generator)
        elif is_ddim:
            x = scheduler.step(eps, t, x, eta=0.0, return_dict=False)[0]
        else:
            x = scheduler.step(eps, t, x, generator=generator, return_dict=False)[0]
    return x


def _ddim_eta_step(x, eps, t: int, prev: int, base: GaussianTables, eta: float, temperature: float, generator):
    """Stochastic DDIM step t -> prev (prev < 0: the data, alpha_bar 1) with float64 coefficients.

    Same update as diffusers' ``DDIMScheduler.step`` (x0 from eps; sigma = eta sqrt((1-a_p)/(1-a_t))
    sqrt(1-a_t/a_p); x = sqrt(a_p) x0 + sqrt(1-a_p-sigma^2) eps + sigma z), but its float32
    ``(1 - a_p - sigma^2) ** 0.5`` turns NaN at t = 999 with eta = 1 (rounds below 0); clamped here.
    The per-step noise z is multiplied by ``temperature``."""
    a_t = float(base.alphas_cumprod[t])
    a_p = float(base.alphas_cumprod[prev]) if prev >= 0 else 1.0
    sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(max(1 - a_t / a_p, 0.0))
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    out = x0.mul_(math.sqrt(a_p)).add_(eps, alpha=math.sqrt(max(1 - a_p - sigma * sigma, 0.0)))
    if sigma > 0:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        out.add_(noise, alpha=sigma * temperature)
    return out


def flow_times(num_steps: int, shift: float = 1.0) -> list[float]:
    """K + 1 times from 1 (noise) to 0 (data): u uniform, t = s u / (1 + (s - 1) u) (s = 1: uniform)."""
    us = [1.0 - k / num_steps for k in range(num_steps + 1)]
    return [shift * u / (1.0 + (shift - 1.0) * u) for u in us]


def euler_flow_sample(
    fn: Denoiser, x: torch.Tensor, num_steps: int, clip: float | None = None, shift: float = 1.0
) -> torch.Tensor:
    """x_t = (1 - t) x_data + t eps, velocity v = eps - x_data; Euler from t = 1 to t = 0 in ``num_steps`` steps."""
    ts = flow_times(num_steps, shift)
    for j in range(num_steps):
        t, t_next = ts[j], ts[j + 1]
        v = fn(x, j).float()
        if clip is not None:
            x0 = (x - t * v).clamp_(-clip, clip)
            v = (x - x0) / t
        x = x.add(v, alpha=t_next - t)
    return x
