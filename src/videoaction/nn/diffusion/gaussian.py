"""Gaussian diffusion (IDDPM / DiT / MAR semantics), written compactly.

* Schedules: ``cosine`` (alpha_bar(s) = cos^2((s + 0.008)/1.008 * pi/2), beta capped at 0.999) and ``linear``
  (scaled 1e-4 .. 2e-2), computed in float64.
* Training: epsilon prediction with a learned-range variance; loss = MSE(eps) + VB term with the mean frozen
  (KL in bits, discretised-Gaussian decoder NLL at t = 0), exactly the ``LossType.MSE`` + ``LEARNED_RANGE`` loss.
* Respacing: K kept steps (IDDPM ``space_timesteps(T, "K")``), betas recomputed from the kept alpha_bar; the model
  keeps receiving the original step indices.
* Sampling: ancestral ``p_sample_loop``; temperature multiplies only the per-step noise; optional x0 clipping.

Tables live in float64 on the CPU; training gathers use a float32 per-device copy (plain attributes, never in a
state dict); sampling uses per-step Python floats (all tokens share one step, so no gathers at all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """IDDPM cosine schedule: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta), float64 (T,)."""

    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


def linear_betas(num_steps: int) -> torch.Tensor:
    """IDDPM linear schedule scaled to ``num_steps`` (1e-4 .. 2e-2 at T = 1000), float64 (T,)."""
    scale = 1000 / num_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)


def make_betas(schedule: str, num_steps: int) -> torch.Tensor:
    if schedule == "cosine":
        return cosine_betas(num_steps)
    if schedule == "linear":
        return linear_betas(num_steps)
    raise ValueError(f"noise_schedule must be 'cosine' or 'linear', got {schedule!r}")


def space_timesteps(num_steps: int, kept: int) -> list[int]:
    """IDDPM ``space_timesteps(T, str(K))``: K evenly strided steps round(i (T-1)/(K-1)), i = 0..K-1 (T=1000,
    K=100: 0, 10, 20, ..., 101, ..., 989, 999)."""
    if not 1 <= kept <= num_steps:
        raise ValueError(f"cannot keep {kept} of {num_steps} diffusion steps")
    if kept == 1:
        return [0]
    stride = (num_steps - 1) / (kept - 1)
    cur, taken = 0.0, []
    for _ in range(kept):
        taken.append(round(cur))
        cur += stride
    return taken


class GaussianTables:
    """All schedule-derived quantities (float64, CPU) for the betas of one (possibly respaced) diffusion."""

    def __init__(self, betas: torch.Tensor, timestep_map: list[int] | None = None):
        b = betas.to(torch.float64)
        self.num_timesteps = int(b.shape[0])
        self.timestep_map = list(range(self.num_timesteps)) if timestep_map is None else list(timestep_map)
        alphas = 1.0 - b
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        self.betas = b
        self.alphas_cumprod = ac
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / ac).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1.0).sqrt()
        self.posterior_variance = post_var
        # log of the posterior variance, with the 0 at t = 0 replaced by the value at t = 1
        if self.num_timesteps > 1:
            self.posterior_log_variance_clipped = torch.cat([post_var[1:2], post_var[1:]]).log()
        else:
            self.posterior_log_variance_clipped = torch.zeros(1, dtype=torch.float64)  # unused (no noise at t=0)
        self.log_betas = b.log()
        self.posterior_mean_coef1 = b * ac_prev.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac)
        self._device_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._float_cache: dict[str, list[float]] | None = None

    NAMES = (
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_log_variance_clipped",
        "log_betas",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    )

    @classmethod
    def respaced(cls, base_betas: torch.Tensor, kept: int) -> "GaussianTables":
        """Keep ``kept`` steps of the base schedule; betas recomputed from the kept alpha_bar."""
        use = space_timesteps(int(base_betas.shape[0]), kept)
        ac = torch.cumprod(1.0 - base_betas.to(torch.float64), 0)
        kept_ac = ac[use]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), kept_ac[:-1]])
        return cls(1.0 - kept_ac / prev, timestep_map=use)

    def on(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Float32 copies of the tables on ``device`` (cached; for per-token gathers in training)."""
        key = str(device)
        if key not in self._device_cache:
            self._device_cache[key] = {
                n: getattr(self, n).to(device=device, dtype=torch.float32) for n in self.NAMES
            }
        return self._device_cache[key]

    def floats(self) -> dict[str, list[float]]:
        """Per-step Python floats (for the sampling loop: every token shares the step)."""
        if self._float_cache is None:
            self._float_cache = {n: getattr(self, n).tolist() for n in self.NAMES}
        return self._float_cache


def _gather(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """table (T,), t (N,) -> (N, 1, ...) broadcastable to an ndim tensor."""
    return table[t].reshape(-1, *([1] * (ndim - 1)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] discretised to 8-bit bins (IDDPM), elementwise, in nats."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


@dataclass
class DDPMTerms:
    """Per-token loss terms (N,)."""

    loss: torch.Tensor
    mse: torch.Tensor
    vb: torch.Tensor


def q_sample(tab: dict[str, torch.Tensor], x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    nd = x0.ndim
    a, s = _gather(tab["sqrt_alphas_cumprod"], t, nd), _gather(tab["sqrt_one_minus_alphas_cumprod"], t, nd)
    return a * x0 + s * noise


def ddpm_training_terms(
    tab: dict[str, torch.Tensor],
    model_out: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> DDPMTerms:
    """MSE(eps) + VB (frozen mean, bits) for a learned-range-variance model; model_out (N, 2C), x0/x_t/noise (N, C)."""
    nd = x0.ndim
    C = x0.shape[1]
    eps, var_v = model_out[:, :C].float(), model_out[:, C:].float()
    reduce_dims = tuple(range(1, nd))
    mse = ((noise - eps) ** 2).mean(dim=reduce_dims)

    g = lambda name: _gather(tab[name], t, nd)  # noqa: E731
    c1, c2 = g("posterior_mean_coef1"), g("posterior_mean_coef2")
    true_mean = c1 * x0 + c2 * x_t
    true_logvar = g("posterior_log_variance_clipped")
    # model mean from the frozen epsilon; model log-variance from the (trainable) interpolation value
    x0_pred = g("sqrt_recip_alphas_cumprod") * x_t - g("sqrt_recipm1_alphas_cumprod") * eps.detach()
    model_mean = c1 * x0_pred + c2 * x_t
    frac = (var_v + 1.0) / 2.0
    model_logvar = frac * g("log_betas") + (1.0 - frac) * true_logvar
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).mean(dim=reduce_dims) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).mean(dim=reduce_dims)
    vb = torch.where(t == 0, nll / math.log(2.0), kl)
    return DDPMTerms(loss=mse + vb, mse=mse, vb=vb)
