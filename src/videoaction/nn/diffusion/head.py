"""DiffusionHead: a per-token diffusion model p(x | z) (MAR's DiffLoss generalised) behind one interface.

Objectives:
* ``ddpm`` (the reference): cosine schedule, 1000 steps, epsilon + learned-range variance (net outputs 2C),
  loss MSE(eps) + VB. Samplers, all on the same trained net (epsilon channels for the ODE samplers):
  ``ddpm`` respaced ancestral (the reference; temperature scales the per-step noise), ``ddim`` (diffusers
  DDIMScheduler, trailing spacing; deterministic unless ``ddim_eta > 0``, then temperature scales its noise),
  ``dpm`` (diffusers DPM-Solver++ 2M on log-SNR-uniform timesteps; deterministic, temperature has no effect).
* ``flow``: rectified flow (x_t = (1 - t) x + t eps, velocity target eps - x, logit-normal or uniform t; net
  outputs C). Sampler: ``euler`` (deterministic; optional grid shift ``flow_shift``).

Classifier-free guidance (``cfg != 1``): ``z`` is (2N, Z) = [cond; uncond]; both halves start from the same noise
and share one state; at every step out_g = out_u + s (out_c - out_u) on the first C (epsilon / velocity) channels,
variance channels from the conditional half; the result is (N, C).

Caveat (measured in tests/test_diffusion.py): a briefly trained epsilon model cannot be sampled unclipped from
t = 999, where x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies the epsilon error by 1/sqrt(abar_999) = 2e4.
Use ``clip_denoised`` (``clip_range`` a few times the data range is enough for ``ddpm``), ``dpm_start="lambda_min"``
for ``dpm``, or the ``flow`` objective. Few-step ODE samplers shrink narrow modes (exact-denoiser std ratios:
ddim-16 0.65, dpm-8 0.96, dpm-4 0.66, euler-8 0.54, euler-8 with flow_shift 1/3 0.78).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from videoaction.errors import ConfigError, VideoActionError
from videoaction.nn.diffusion.gaussian import (
    GaussianTables,
    ddpm_training_terms,
    make_betas,
    q_sample,
)
from videoaction.nn.diffusion.mlp import SimpleMLPAdaLN
from videoaction.nn.diffusion.samplers import ddpm_sample, euler_flow_sample, flow_times, scheduler_sample

OBJECTIVES = ("ddpm", "flow")


class HeadInputError(VideoActionError, ValueError):
    """Tensors of the wrong shape passed to a diffusion head (or a sampler it does not have)."""

SAMPLERS = {"ddpm": ("ddpm", "ddim", "dpm"), "flow": ("euler",)}


@dataclass
class DiffusionHeadConfig:
    """Per-token diffusion head. ``sampler="auto"`` means ``ddpm`` for the ddpm objective, ``euler`` for flow."""

    objective: str = "ddpm"  # "ddpm" | "flow"
    width: int = 1024  # MLP width (MAR/UVA: 1024)
    depth: int = 6  # number of AdaLN residual blocks (MAR/UVA: 6)
    train_steps: int = 1000  # diffusion steps (ddpm); time scale of the flow's timestep embedding
    noise_schedule: str = "cosine"  # "cosine" | "linear" (ddpm)
    sampler: str = "auto"  # "ddpm" | "ddim" | "dpm" (ddpm objective); "euler" (flow)
    sample_steps: int = 100  # default number of sampling steps
    clip_denoised: bool = False  # clip the predicted x0 to [-clip_range, clip_range] at every step (UVA actions)
    clip_range: float = 1.0
    batch_mul: int = 1  # MAR's diffusion_batch_mul: repeat each token this many times in the loss
    ddim_eta: float = 0.0  # DDIM stochasticity (0 = deterministic)
    dpm_order: int = 2  # DPM-Solver++ order (1..3)
    dpm_lambda_min: float = -3.0  # DPM-Solver++: log-SNR where the uniform-lambda grid starts (after t = T-1)
    # "noise": first step at t = T-1 (exact start); "lambda_min": first step at lambda_min, the initial noise taken
    # as x there (bias ~ alpha(lambda_min) |x0| = 0.05 |x0|), robust for briefly trained heads (no t = T-1 x0 blow-up)
    dpm_start: str = "noise"
    flow_t: str = "logit_normal"  # flow training time distribution: "logit_normal" | "uniform"
    flow_shift: float = 1.0  # flow sampling grid t' = s t / (1 + (s - 1) t); s < 1 puts more steps near the data
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"DiffusionHeadConfig.objective: expected one of {OBJECTIVES}, got {self.objective!r}")
        if self.sampler != "auto" and self.sampler not in SAMPLERS[self.objective]:
            raise ConfigError(
                f"DiffusionHeadConfig.sampler: objective {self.objective!r} supports "
                f"{SAMPLERS[self.objective]} (or 'auto'), got {self.sampler!r}"
            )
        if self.noise_schedule not in ("cosine", "linear"):
            raise ConfigError(
                f"DiffusionHeadConfig.noise_schedule: expected 'cosine' or 'linear', got {self.noise_schedule!r}"
            )
        if self.flow_t not in ("logit_normal", "uniform"):
            raise ConfigError(f"DiffusionHeadConfig.flow_t: expected 'logit_normal' or 'uniform', got {self.flow_t!r}")
        for name in ("width", "depth", "train_steps", "sample_steps", "batch_mul"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DiffusionHeadConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if self.dpm_start not in ("noise", "lambda_min"):
            raise ConfigError(
                f"DiffusionHeadConfig.dpm_start: expected 'noise' or 'lambda_min', got {self.dpm_start!r}"
            )
        if self.clip_range <= 0:
            raise ConfigError(f"DiffusionHeadConfig.clip_range: must be > 0, got {self.clip_range}")
        if self.flow_shift <= 0:
            raise ConfigError(f"DiffusionHeadConfig.flow_shift: must be > 0, got {self.flow_shift}")
        if not 1 <= self.dpm_order <= 3:
            raise ConfigError(f"DiffusionHeadConfig.dpm_order: must be 1, 2 or 3, got {self.dpm_order}")

    @property
    def resolved_sampler(self) -> str:
        if self.sampler == "auto":
            return "ddpm" if self.objective == "ddpm" else "euler"
        return self.sampler


class DiffusionHead(nn.Module):
    """Per-token diffusion head over targets (N, C) conditioned on vectors (N, Z); ``net`` = SimpleMLPAdaLN."""

    def __init__(self, target_channels: int, z_channels: int, cfg: DiffusionHeadConfig | None = None):
        super().__init__()
        cfg = cfg if cfg is not None else DiffusionHeadConfig()
        self.cfg = cfg
        self.target_channels = target_channels
        self.z_channels = z_channels
        out = 2 * target_channels if cfg.objective == "ddpm" else target_channels
        self.net = SimpleMLPAdaLN(
            target_channels, cfg.width, out, z_channels, cfg.depth, grad_checkpointing=cfg.grad_checkpointing
        )
        # schedule tables: plain attributes (never in the state dict, never cast with the module's dtype)
        self.betas = make_betas(cfg.noise_schedule, cfg.train_steps)  # float64 (T,)
        self.train_tables = GaussianTables(self.betas)
        self._spaced: dict[int, GaussianTables] = {}
        self._schedulers: dict[str, object] = {}

    # ------------------------------------------------------------------ training
    def forward(self, target: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None, generator=None):
        return self.loss(target, z, mask, generator)

    def loss(
        self,
        target: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Scalar loss: per-token loss (N,) averaged over entries with mask = 1 (all if ``mask`` is None)."""
        per_token = self.loss_terms(target, z, generator=generator)["loss"]
        m = self.cfg.batch_mul
        if mask is None:
            return per_token.mean()
        mask = mask.reshape(-1).to(per_token.dtype)
        if m > 1:
            mask = mask.repeat(m)
        return (per_token * mask).sum() / mask.sum().clamp_min(1.0)

    def loss_terms(
        self, target: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-token terms (N * batch_mul,): ``loss`` and ``mse`` + ``vb`` (ddpm) or ``mse`` (flow)."""
        if target.ndim != 2 or target.shape[1] != self.target_channels:
            raise HeadInputError(
                f"DiffusionHead.loss: target must be (N, {self.target_channels}), got {tuple(target.shape)}"
            )
        if z.shape != (target.shape[0], self.z_channels):
            raise HeadInputError(
                f"DiffusionHead.loss: z must be ({target.shape[0]}, {self.z_channels}), got {tuple(z.shape)}"
            )
        if self.cfg.batch_mul > 1:
            target, z = target.repeat(self.cfg.batch_mul, 1), z.repeat(self.cfg.batch_mul, 1)
        x0 = target.float()
        n, dev = x0.shape[0], x0.device
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=torch.float32)
        if self.cfg.objective == "ddpm":
            t = torch.randint(0, self.cfg.train_steps, (n,), generator=generator, device=dev)
            tab = self.train_tables.on(dev)
            x_t = q_sample(tab, x0, t, noise)
            out = self.net(x_t.to(self._dtype()), t, z.to(self._dtype()))
            terms = ddpm_training_terms(tab, out, x0, x_t, t, noise)
            return {"loss": terms.loss, "mse": terms.mse, "vb": terms.vb}
        if self.cfg.flow_t == "logit_normal":
            t = torch.sigmoid(torch.randn((n,), generator=generator, device=dev))
        else:
            t = torch.rand((n,), generator=generator, device=dev)
        tt = t[:, None]
        x_t = (1.0 - tt) * x0 + tt * noise
        v = self.net(x_t.to(self._dtype()), t * self.cfg.train_steps, z.to(self._dtype())).float()
        mse = ((v - (noise - x0)) ** 2).mean(dim=1)
        return {"loss": mse, "mse": mse}

    def _dtype(self) -> torch.dtype:
        p = next(self.net.parameters(), None)
        return p.dtype if p is not None else torch.float32

    # ------------------------------------------------------------------ sampling
    def spaced_tables(self, num_steps: int) -> GaussianTables:
        """Respaced tables keeping ``num_steps`` of the training steps (cached)."""
        if num_steps not in self._spaced:
            self._spaced[num_steps] = GaussianTables.respaced(self.betas, num_steps)
        return self._spaced[num_steps]

    def diffusers_scheduler(self, sampler: str):
        """A diffusers DDIM / DPM-Solver++ scheduler with this head's betas (cached per sampler)."""
        if sampler not in self._schedulers:
            self._schedulers[sampler] = make_diffusers_scheduler(
                sampler, self.cfg.train_steps, self.cfg.noise_schedule, self.cfg.dpm_order
            )
        return self._schedulers[sampler]

    def dpm_timesteps(self, num_steps: int) -> list[int]:
        """DPM-Solver++ steps, uniform in log-SNR lambda = log(alpha/sigma) from max(dpm_lambda_min, lambda(T-1))
        to lambda(0) (K + 1 points, the last one is the data), as distinct ints; with ``dpm_start="noise"`` the
        first step is moved to t = T-1 (pure noise)."""
        ac = self.train_tables.alphas_cumprod
        lam = 0.5 * torch.log(ac / (1.0 - ac))  # (T,) decreasing in t
        grid = torch.linspace(max(self.cfg.dpm_lambda_min, lam[-1].item()), lam[0].item(), num_steps + 1)[:-1]
        # invert the monotone lambda(t) by linear interpolation
        idx = torch.searchsorted(-lam, -grid.double()).clamp(1, len(lam) - 1)
        l0, l1 = lam[idx - 1], lam[idx]
        t = (idx - 1).double() + (l0 - grid.double()) / (l0 - l1)
        ts = t.round().long().tolist()
        if self.cfg.dpm_start == "noise":
            ts[0] = len(lam) - 1
        return sorted(set(ts), reverse=True)

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        temperature: float = 1.0,
        cfg: float = 1.0,
        num_steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        clip_denoised: bool | None = None,
        guidance: bool | None = None,
        noise: torch.Tensor | None = None,
        clip_range: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw x (N, C) ~ p(x | z).

        z: (N, Z), or (2N, Z) = [cond; uncond] when guided (``guidance`` defaults to ``cfg != 1``; pass
        ``guidance=True`` to run the guided path at cfg = 1). ``noise`` (N, C) overrides the initial noise.
        ``clip_range`` (a number or a (C,) tensor of per-channel bounds) overrides ``cfg.clip_range`` when clipping.
        """
        sampler = sampler or self.cfg.resolved_sampler
        if sampler not in SAMPLERS[self.cfg.objective]:
            raise HeadInputError(f"DiffusionHead.sample: objective {self.cfg.objective!r} has samplers "
                             f"{SAMPLERS[self.cfg.objective]}, got {sampler!r}")
        K = int(num_steps or self.cfg.sample_steps)
        do_clip = self.cfg.clip_denoised if clip_denoised is None else bool(clip_denoised)
        clip = (float(self.cfg.clip_range) if clip_range is None else clip_range) if do_clip else None
        if isinstance(clip, torch.Tensor):
            clip = clip.to(device=z.device, dtype=torch.float32)
        guided = (cfg != 1.0) if guidance is None else bool(guidance)
        if z.ndim != 2 or z.shape[1] != self.z_channels or (guided and z.shape[0] % 2):
            raise HeadInputError(
                f"DiffusionHead.sample: z must be (N, {self.z_channels})"
                + (" with N even ([cond; uncond])" if guided else "") + f", got {tuple(z.shape)}"
            )
        n = z.shape[0] // 2 if guided else z.shape[0]
        C, dev = self.target_channels, z.device
        if noise is None:
            x = torch.randn((n, C), generator=generator, device=dev, dtype=torch.float32)
        elif tuple(noise.shape) != (n, C):
            raise HeadInputError(f"DiffusionHead.sample: noise must be ({n}, {C}), got {tuple(noise.shape)}")
        else:
            x = noise.to(device=dev, dtype=torch.float32)

        if sampler == "ddpm":
            tables = self.spaced_tables(K)
            t_values = tables.timestep_map[::-1]
        elif sampler == "ddim":
            sched = self.diffusers_scheduler(sampler)
            sched.set_timesteps(K)
            t_values = [int(t) for t in sched.timesteps.tolist()]
        elif sampler == "dpm":
            sched = self.diffusers_scheduler(sampler)
            t_values = self.dpm_timesteps(K)
            sched.set_timesteps(timesteps=t_values)
        else:
            t_values = [t * self.cfg.train_steps for t in flow_times(K, self.cfg.flow_shift)[:-1]]
        fn = self._denoiser(z, t_values, float(cfg), guided)

        if sampler == "ddpm":
            return ddpm_sample(fn, x, tables, temperature, clip, generator)
        if sampler in ("ddim", "dpm"):
            return scheduler_sample(
                fn, x, sched, t_values, self.train_tables, temperature, clip, generator, eta=self.cfg.ddim_eta
            )
        return euler_flow_sample(fn, x, K, clip, self.cfg.flow_shift)

    def _timesteps(self, t_values: list, device: torch.device) -> torch.Tensor:
        """(K,) float32 step values on ``device``, kept per (steps, device): no host-to-device copy per call (a
        CUDA-graph capture of the sampling loop would refuse one)."""
        key = (tuple(float(t) for t in t_values), str(device))
        cache = self.__dict__.setdefault("_t_cache", {})
        if key not in cache:
            cache[key] = torch.tensor(key[0], dtype=torch.float32, device=device)
        return cache[key]

    def _denoiser(self, z: torch.Tensor, t_values: list, scale: float, guided: bool):
        """fn(x (N, C), j) -> net output at t_values[j] (guided if requested); embeddings computed once."""
        net, C = self.net, self.target_channels
        dtype = self._dtype()
        c_emb = net.embed_cond(z.to(dtype))  # (N or 2N, W)
        t_emb = net.embed_time(self._timesteps(t_values, z.device))  # (K, W)
        if not guided:
            return lambda x, j: net.forward_embedded(x.to(dtype), c_emb + t_emb[j])
        n = z.shape[0] // 2
        xx = torch.empty((2 * n, C), dtype=dtype, device=z.device)

        def fn(x: torch.Tensor, j: int) -> torch.Tensor:
            xx[:n].copy_(x)
            xx[n:].copy_(x)
            out = net.forward_embedded(xx, c_emb + t_emb[j]).float()  # (2N, C_out)
            cond, unc = out[:n], out[n:]
            g = torch.lerp(unc[:, :C], cond[:, :C], scale)  # u + s (c - u) on the eps / velocity channels
            return torch.cat([g, cond[:, C:]], dim=1) if out.shape[1] > C else g

        return fn


def make_diffusers_scheduler(sampler: str, train_steps: int, schedule: str, dpm_order: int = 2):
    """DDIM (trailing spacing, final alpha 1) or DPM-Solver++ multistep (the head passes its own log-SNR-uniform
    timesteps); epsilon prediction, no clipping, the same betas as :func:`make_betas` ("squaredcos_cap_v2" is
    IDDPM's cosine; "linear" is 1e-4 .. 2e-2 scaled to ``train_steps``)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    scale = 1000 / train_steps
    common = dict(
        num_train_timesteps=train_steps,
        beta_schedule="squaredcos_cap_v2" if schedule == "cosine" else "linear",
        beta_start=scale * 1e-4,
        beta_end=scale * 0.02,
        prediction_type="epsilon",
    )
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    if sampler == "dpm":
        return DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=dpm_order, lower_order_final=True,
            final_sigmas_type="zero",
        )
    raise ValueError(f"no diffusers scheduler for sampler {sampler!r}")


def benchmark_head_latency(
    head: DiffusionHead, n_tokens: int, sampler: str | None = None, steps: int | None = None,
    cfg: float = 1.0, repeats: int = 5, warmup: int = 1,
) -> float:
    """Median wall-clock seconds of one ``head.sample`` over ``n_tokens`` tokens (random z, fixed seed)."""
    p = next(head.parameters())
    gen = torch.Generator(device=p.device).manual_seed(0)
    n = n_tokens * (2 if cfg != 1.0 else 1)
    z = torch.randn((n, head.z_channels), generator=gen, device=p.device, dtype=p.dtype)
    times = []
    for k in range(warmup + repeats):
        if p.device.type == "cuda":
            torch.cuda.synchronize(p.device)
        t0 = time.perf_counter()
        head.sample(z, cfg=cfg, sampler=sampler, num_steps=steps, generator=gen)
        if p.device.type == "cuda":
            torch.cuda.synchronize(p.device)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]
