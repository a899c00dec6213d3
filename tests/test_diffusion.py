"""Diffusion heads: MAR layout and init, schedules, respacing, loss terms, samplers (against an analytic denoiser
and after a short training on a conditional 2-D Gaussian mixture), classifier-free guidance, determinism.

Small models run single-threaded (a busy 2-core box makes multi-threaded tiny matmuls ~20x slower).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from videoaction.errors import ConfigError, VideoActionError
from videoaction.nn.diffusion import (
    DiffusionHead,
    DiffusionHeadConfig,
    SimpleMLPAdaLN,
    benchmark_head_latency,
    cosine_betas,
    make_diffusers_scheduler,
    space_timesteps,
    timestep_embedding,
)
from videoaction.nn.diffusion.gaussian import GaussianTables, ddpm_training_terms


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------- layout and init
def _mar_shapes(C: int, W: int, N: int, Z: int) -> dict[str, tuple]:
    """Expected ``net.*`` shapes (mar.md section 1)."""
    s = {
        "time_embed.mlp.0.weight": (W, 256), "time_embed.mlp.0.bias": (W,),
        "time_embed.mlp.2.weight": (W, W), "time_embed.mlp.2.bias": (W,),
        "cond_embed.weight": (W, Z), "cond_embed.bias": (W,),
        "input_proj.weight": (W, C), "input_proj.bias": (W,),
        "final_layer.linear.weight": (2 * C, W), "final_layer.linear.bias": (2 * C,),
        "final_layer.adaLN_modulation.1.weight": (2 * W, W), "final_layer.adaLN_modulation.1.bias": (2 * W,),
    }
    for j in range(N):
        for leaf, shape in [("in_ln.weight", (W,)), ("in_ln.bias", (W,)), ("mlp.0.weight", (W, W)),
                            ("mlp.0.bias", (W,)), ("mlp.2.weight", (W, W)), ("mlp.2.bias", (W,)),
                            ("adaLN_modulation.1.weight", (3 * W, W)), ("adaLN_modulation.1.bias", (3 * W,))]:
            s[f"res_blocks.{j}.{leaf}"] = shape
    return s


def test_mar_layout_param_count_and_keys(reference_keys):
    torch.manual_seed(0)
    head = DiffusionHead(16, 768, DiffusionHeadConfig())  # MAR / UVA video head: C=16, W=1024, N=6, Z=768
    sd = head.state_dict()
    assert sum(p.numel() for p in head.parameters()) == 35_749_920
    got = {k: tuple(v.shape) for k, v in sd.items()}
    assert got == {f"net.{k}": v for k, v in _mar_shapes(16, 1024, 6, 768).items()}
    assert list(dict(head.named_buffers())) == []  # no schedule tensors in the state dict
    ref = reference_keys("uva_pusht_keys.json")  # the reference's own list (UVA PushT: video C=16, action C=2)
    for prefix, c in (("diffloss.net.", 16), ("diffactloss.net.", 2)):
        want = {k[len(prefix) - 4:]: tuple(v) for k, v in ref.items() if k.startswith(prefix)}
        assert len(want) == 60  # time / cond / input / final layers 12 + 6 res-blocks x 8
        h = head if c == 16 else DiffusionHead(c, 768, DiffusionHeadConfig())
        assert {k: tuple(v.shape) for k, v in h.state_dict().items()} == want


def test_mar_init_and_zero_output():
    torch.manual_seed(0)
    net = SimpleMLPAdaLN(4, 256, 8, 32, 3)
    assert net.final_layer.linear.weight.abs().sum() == 0 and net.final_layer.linear.bias.abs().sum() == 0
    for m in [b.adaLN_modulation[1] for b in net.res_blocks] + [net.final_layer.adaLN_modulation[1]]:
        assert m.weight.abs().sum() == 0 and m.bias.abs().sum() == 0
    for lin in (net.time_embed.mlp[0], net.time_embed.mlp[2]):
        assert abs(lin.weight.std().item() - 0.02) < 0.002 and lin.bias.abs().sum() == 0
    w = net.res_blocks[0].mlp[0].weight  # xavier uniform: bound sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / (256 + 256))
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert net.res_blocks[0].in_ln.eps == 1e-6 and net.final_layer.norm_final.eps == 1e-6
    assert not net.final_layer.norm_final.elementwise_affine
    out = net(torch.randn(5, 4), torch.tensor([0, 1, 10, 500, 999]), torch.randn(5, 32))
    assert out.shape == (5, 8) and out.abs().sum() == 0  # zero-initialised head predicts 0


def test_timestep_embedding_values():
    e = timestep_embedding(torch.tensor([0.0, 3.0]), 256)
    assert e.shape == (2, 256)
    assert torch.equal(e[0, :128], torch.ones(128)) and torch.equal(e[0, 128:], torch.zeros(128))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(128) / 128)
    assert torch.allclose(e[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]), atol=1e-6)


# ---------------------------------------------------------------------------------------------- schedules
def test_cosine_schedule_and_diffusers_betas_match():
    b = cosine_betas(1000)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert b.shape == (1000,) and abs(b[0].item() - (1 - f(1e-3) / f(0))) < 1e-15
    assert abs(b[0].item() - 4.13e-5) < 1e-7 and b[-1].item() == 0.999 and (b[:-1] < 0.999).all()
    for sampler in ("ddim", "dpm"):  # diffusers "squaredcos_cap_v2" == IDDPM cosine, to float32 precision
        sched = make_diffusers_scheduler(sampler, 1000, "cosine")
        assert (sched.betas.double() - b).abs().max().item() < 1e-6
    lin = make_diffusers_scheduler("ddim", 1000, "linear")
    assert (lin.betas.double() - DiffusionHead(2, 3, DiffusionHeadConfig(noise_schedule="linear", width=8,
                                                                          depth=1)).betas).abs().max() < 1e-6


def test_respacing_kept_steps_and_betas():
    kept = space_timesteps(1000, 100)
    assert len(kept) == 100 and kept[:3] == [0, 10, 20] and kept[10] == 101 and kept[-2:] == [989, 999]
    assert kept == [round(i * 999 / 99) for i in range(100)]
    assert space_timesteps(1000, 1000) == list(range(1000)) and space_timesteps(1000, 1) == [0]
    base = GaussianTables(cosine_betas(1000))
    sp = GaussianTables.respaced(cosine_betas(1000), 100)
    assert sp.timestep_map == kept
    assert torch.allclose(sp.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-9, atol=0)


# ---------------------------------------------------------------------------------------------- loss terms
def test_vb_term_is_zero_for_the_exact_posterior_and_trains_only_the_variance():
    tab = GaussianTables(cosine_betas(1000)).on("cpu")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(64, 3, generator=g) * 2 - 1, torch.randn(64, 3, generator=g)
    t = torch.randint(1, 1000, (64,), generator=g)
    x_t = tab["sqrt_alphas_cumprod"][t, None] * x0 + tab["sqrt_one_minus_alphas_cumprod"][t, None] * noise
    exact = torch.cat([noise, -torch.ones(64, 3)], 1)  # true eps, v = -1 -> posterior variance
    terms = ddpm_training_terms(tab, exact, x0, x_t, t, noise)
    assert terms.mse.abs().max() < 1e-10 and terms.vb.abs().max() < 1e-3
    out = torch.cat([noise + 0.1 * torch.randn(64, 3, generator=g), torch.zeros(64, 3)], 1).requires_grad_()
    terms = ddpm_training_terms(tab, out, x0, x_t, t, noise)
    assert (terms.vb > 0).all()
    (grad,) = torch.autograd.grad(terms.vb.sum(), out)
    assert grad[:, :3].abs().max() == 0 and grad[:, 3:].abs().max() > 0  # mean frozen in the VB term
    t0 = torch.zeros(64, dtype=torch.long)  # t = 0: discretised decoder NLL (bits) is finite and positive
    x_0 = tab["sqrt_alphas_cumprod"][t0, None] * x0 + tab["sqrt_one_minus_alphas_cumprod"][t0, None] * noise
    vb0 = ddpm_training_terms(tab, out.detach(), x0, x_0, t0, noise).vb
    assert torch.isfinite(vb0).all() and (vb0 > 0).all()


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_loss_mask_averages_over_masked_entries_only(objective):
    torch.manual_seed(0)
    head = DiffusionHead(3, 5, DiffusionHeadConfig(objective=objective, width=16, depth=1))
    nn.init.normal_(head.net.final_layer.linear.weight, std=0.5)  # a non-trivial output
    x, z = torch.randn(10, 3), torch.randn(10, 5)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 0, 1], dtype=torch.bool)
    per = head.loss_terms(x, z, generator=torch.Generator().manual_seed(7))["loss"]
    loss = head.loss(x, z, mask, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(loss, per[mask].mean(), rtol=1e-6)
    assert not torch.allclose(loss, per.mean())
    assert torch.allclose(head.loss(x, z, None, generator=torch.Generator().manual_seed(7)), per.mean())
    assert head.loss(x, z, torch.zeros(10), generator=torch.Generator().manual_seed(7)).item() == 0.0
    # MAR's diffusion_batch_mul: each token repeated m times, the mask with it
    head.cfg.batch_mul = 3
    per3 = head.loss_terms(x, z, generator=torch.Generator().manual_seed(7))["loss"]
    loss3 = head.loss(x, z, mask, generator=torch.Generator().manual_seed(7))
    assert per3.shape == (30,) and torch.allclose(loss3, per3[mask.repeat(3)].mean(), rtol=1e-6)


def test_config_validation():
    with pytest.raises(ConfigError, match="objective"):
        DiffusionHeadConfig(objective="ddim")
    with pytest.raises(ConfigError, match="sampler"):
        DiffusionHeadConfig(objective="flow", sampler="ddim")
    with pytest.raises(ConfigError, match="sampler"):
        DiffusionHeadConfig(objective="ddpm", sampler="euler")
    assert DiffusionHeadConfig(objective="flow").resolved_sampler == "euler"
    assert DiffusionHeadConfig().resolved_sampler == "ddpm"
    head = DiffusionHead(2, 3, DiffusionHeadConfig(width=8, depth=1))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        head.sample(torch.randn(4, 5))
    with pytest.raises(ValueError, match="cond; uncond"):
        head.sample(torch.randn(3, 3), cfg=2.0)
    with pytest.raises(VideoActionError, match="noise"):
        head.sample(torch.randn(4, 3), noise=torch.randn(4, 3))
    with pytest.raises(VideoActionError, match="target"):
        head.loss(torch.randn(4, 3), torch.randn(4, 3))


# ---------------------------------------------------------------------------------------------- analytic denoiser
class GaussianOracle(nn.Module):
    """Exact denoiser for x ~ N(mu[c], sigma^2 I), c a one-hot condition: E[eps | x_t] (ddpm; variance channel
    ``v``) or E[eps - x0 | x_t] (flow). Exposes the ``SimpleMLPAdaLN`` sampling interface; records timesteps."""

    def __init__(self, mu: torch.Tensor, sigma: float, objective: str, alphas_cumprod=None, v: float = 0.0):
        super().__init__()
        self.mu, self.sigma, self.objective, self.ac, self.v = mu.double(), sigma, objective, alphas_cumprod, v
        self.seen: list[list[float]] = []

    def embed_cond(self, z):  # (N, K) -> (N, K + 1): [z, 0]
        return torch.cat([z, torch.zeros(len(z), 1)], 1)

    def embed_time(self, t):  # (S,) -> (S, K + 1): [0, t]
        self.seen.append(t.tolist())
        return torch.cat([torch.zeros(len(t), self.mu.shape[0]), t[:, None]], 1)

    def forward_embedded(self, x, y):
        x, y = x.double(), y.double()
        mu, t = y[:, :-1] @ self.mu, y[:, -1:]
        if self.objective == "ddpm":
            ab = self.ac[t.round().long()]
            a, s = ab.sqrt(), (1 - ab).sqrt()
        else:
            a, s = 1 - t / 1000, t / 1000
        var = a * a * self.sigma**2 + s * s
        eps = s * (x - a * mu) / var
        if self.objective == "ddpm":
            return torch.cat([eps, torch.full_like(eps, self.v)], 1).float()
        return (eps - (mu + a * self.sigma**2 * (x - a * mu) / var)).float()


MU2 = torch.tensor([[0.5, -0.3], [-0.4, 0.2]])


def _oracle_head(objective: str, sigma: float = 0.1, v: float = 0.0, mu=MU2, **kw) -> DiffusionHead:
    head = DiffusionHead(2, 2, DiffusionHeadConfig(objective=objective, width=8, depth=1, **kw))
    head.net = GaussianOracle(mu, sigma, objective, head.train_tables.alphas_cumprod, v)
    return head


def _oracle_stats(head, n=2000, **kw):
    z = torch.eye(2).repeat_interleave(n, 0)
    x = head.sample(z, generator=torch.Generator().manual_seed(0), **kw).view(2, n, 2)
    return (x.mean(1) - head.net.mu.float()).abs().max().item(), x.std(1).min().item(), x.std(1).max().item()


# (objective, sampler, steps, extra config) -> measured sample std for data std 0.1 with the exact denoiser
ORACLE_CASES = {
    # ancestral DDPM, respaced 100 (variance v = 0: halfway between posterior and beta in log space)
    "ddpm-100": ("ddpm", "ddpm", 100, {}, (0.090, 0.105)),
    "ddim-16": ("ddpm", "ddim", 16, {}, (0.058, 0.075)),  # trailing spacing: the last jump shrinks the spread
    "dpm-8": ("ddpm", "dpm", 8, {}, (0.090, 0.108)),  # DPM-Solver++ 2M, log-SNR-uniform steps
    "dpm-4": ("ddpm", "dpm", 4, {}, (0.058, 0.075)),
    "euler-8": ("flow", "euler", 8, {}, (0.048, 0.062)),  # uniform grid
    "euler-8-shift": ("flow", "euler", 8, {"flow_shift": 1 / 3}, (0.070, 0.086)),
}


@pytest.mark.parametrize("case", list(ORACLE_CASES))
def test_samplers_recover_an_analytic_gaussian(case):
    objective, sampler, steps, extra, (lo, hi) = ORACLE_CASES[case]
    head = _oracle_head(objective, **extra)
    dmu, sd_min, sd_max = _oracle_stats(head, sampler=sampler, num_steps=steps)
    print(f"oracle {case}: max|dmu| {dmu:.4f} sd [{sd_min:.4f}, {sd_max:.4f}] (true 0.1)")
    assert dmu < 0.008 and lo <= sd_min and sd_max <= hi


def test_ddpm_learned_variance_and_temperature_and_timesteps():
    small, large = _oracle_head("ddpm", v=-1.0), _oracle_head("ddpm", v=1.0)
    s_small, s_large = _oracle_stats(small, num_steps=100)[1], _oracle_stats(large, num_steps=100)[1]
    assert 0.080 < s_small < 0.093 and 0.100 < s_large < 0.112  # v in [-1, 1] interpolates the log-variance
    cold = _oracle_head("ddpm")
    s1, s05 = _oracle_stats(cold, num_steps=100)[1], _oracle_stats(cold, num_steps=100, temperature=0.5)[1]
    assert s05 < 0.8 * s1  # temperature scales the per-step noise
    # the network sees the original step indices of the respaced chain, from 999 down to 0
    assert cold.net.seen[-1] == [float(t) for t in space_timesteps(1000, 100)[::-1]]
    _oracle_stats(cold, n=10, num_steps=1000)
    assert cold.net.seen[-1] == [float(t) for t in range(999, -1, -1)]
    # temperature 0: after the initial noise the chain is deterministic (generator unused)
    z, x_T = torch.eye(2), torch.randn(2, 2)
    a = cold.sample(z, temperature=0.0, noise=x_T, generator=torch.Generator().manual_seed(1))
    b = cold.sample(z, temperature=0.0, noise=x_T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm", "euler"])
def test_clip_denoised_keeps_samples_in_range(sampler):
    objective = "flow" if sampler == "euler" else "ddpm"
    head = _oracle_head(objective, mu=torch.tensor([[3.0, -3.0], [0.0, 2.0]]))
    z = torch.eye(2).repeat_interleave(50, 0)
    free = head.sample(z, sampler=sampler, num_steps=8, generator=torch.Generator().manual_seed(0))
    clip = head.sample(z, sampler=sampler, num_steps=8, generator=torch.Generator().manual_seed(0),
                       clip_denoised=True)
    assert free.abs().max() > 2.0 and clip.abs().max() <= 1.0 + 1e-4
    head.cfg.clip_range = 2.0
    clip2 = head.sample(z, sampler=sampler, num_steps=8, generator=torch.Generator().manual_seed(0),
                        clip_denoised=True)
    assert clip2.abs().max() <= 2.0 + 1e-4 and clip2.abs().max() > 1.5


def test_low_precision_net_samples_and_trains():
    head = DiffusionHead(3, 4, DiffusionHeadConfig(width=16, depth=1)).to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    loss = head.loss(torch.randn(6, 3), torch.randn(6, 4), generator=g)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for sampler in ("ddpm", "dpm"):
        x = head.sample(torch.randn(6, 4).to(torch.bfloat16), sampler=sampler, num_steps=4, generator=g)
        assert x.shape == (6, 3) and x.dtype == torch.float32 and torch.isfinite(x).all()


# ---------------------------------------------------------------------------------------------- trained heads
MODES = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
SIGMA, P_OWN, N_CLS = 0.1, 0.6, 4  # class k: mode k with p 0.6, each other mode 0.4/3; class 4 (null) = marginal


def _mixture_batch(n: int, g: torch.Generator, p_null: float = 0.2):
    """Conditional 2-D Gaussian mixture: x (n, 2), one-hot z (n, 5) (index 4 = dropped condition)."""
    k = torch.randint(0, N_CLS, (n,), generator=g)
    other = (k + torch.randint(1, N_CLS, (n,), generator=g)) % N_CLS
    mode = torch.where(torch.rand(n, generator=g) < P_OWN, k, other)
    x = MODES[mode] + SIGMA * torch.randn(n, 2, generator=g)
    k = torch.where(torch.rand(n, generator=g) < p_null, torch.full_like(k, N_CLS), k)
    return x, nn.functional.one_hot(k, N_CLS + 1).float()


def _train(objective: str, steps: int = 700, bs: int = 256, lr: float = 3e-3) -> DiffusionHead:
    torch.manual_seed(0)
    head = DiffusionHead(2, N_CLS + 1, DiffusionHeadConfig(objective=objective, width=64, depth=2))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, z = _mixture_batch(bs, g)
        loss = head.loss(x, z, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return head.eval()


@pytest.fixture(scope="module")
def ddpm_head():
    return _train("ddpm")


@pytest.fixture(scope="module")
def flow_head():
    return _train("flow")


def _mixture_stats(head, n: int = 300, cfg: float = 1.0, **kw) -> dict[str, float]:
    """Sample n per class; report the worst class: own-mode fraction error, within-mode mean error and std
    range (modes with >= 30 samples), off-mode fraction (farther than 3 sigma from every mode)."""
    z = nn.functional.one_hot(torch.arange(N_CLS).repeat_interleave(n), N_CLS + 1).float()
    if cfg != 1.0:
        z = torch.cat([z, nn.functional.one_hot(torch.full((len(z),), N_CLS), N_CLS + 1).float()])
    x = head.sample(z, cfg=cfg, generator=torch.Generator().manual_seed(1), **kw).view(N_CLS, n, 2)
    d = (x[:, :, None] - MODES[None, None]).norm(dim=-1)  # (classes, n, modes)
    near = d.argmin(-1)
    out = {"own": 1.0, "own_err": 0.0, "dmu": 0.0, "sd_lo": 1.0, "sd_hi": 0.0, "off": 0.0}
    for k in range(N_CLS):
        own = (near[k] == k).float().mean().item()
        out["own"] = min(out["own"], own)
        out["own_err"] = max(out["own_err"], abs(own - P_OWN))
        out["off"] = max(out["off"], (d[k].min(-1).values > 3 * SIGMA).float().mean().item())
        for m in range(N_CLS):
            pts = x[k][(near[k] == m) & (d[k, :, m] < 3 * SIGMA)]
            if len(pts) >= 30:
                out["dmu"] = max(out["dmu"], (pts.mean(0) - MODES[m]).abs().max().item())
                out["sd_lo"] = min(out["sd_lo"], pts.std(0).min().item())
                out["sd_hi"] = max(out["sd_hi"], pts.std(0).max().item())
    return out


# Bounds per objective/sampler after 700 steps (width 64, depth 2), about 1.4x the measured values (in brackets):
# own-mode fraction error (true 0.6), within-mode mean error, within-mode std range (true 0.1), off-mode fraction
# (true 0.011). DDPM-family heads sample with x0 clipping: a briefly trained epsilon model is not accurate enough at
# t = 999 (x0 = x_t / sqrt(abar) - ..., 1/sqrt(abar_999) = 2e4) to sample unclipped.
FIT_CASES = {
    # measured: own_err 0.013, dmu 0.054, sd 0.087-0.118, off 0.067
    "ddpm-100": ("ddpm", dict(sampler="ddpm", num_steps=100, clip_denoised=True), (0.06, 0.075, 0.07, 0.14, 0.10)),
    # measured: own_err 0.073, dmu 0.084, sd 0.051-0.095, off 0.100
    "ddim-16": ("ddpm", dict(sampler="ddim", num_steps=16, clip_denoised=True), (0.11, 0.11, 0.04, 0.12, 0.14)),
    # measured: own_err 0.053, dmu 0.055, sd 0.072-0.119, off 0.093
    "dpm-8": ("ddpm", dict(sampler="dpm", num_steps=8, clip_denoised=True), (0.09, 0.08, 0.055, 0.14, 0.13)),
    # measured: own_err 0.050, dmu 0.071, sd 0.059-0.105, off 0.137
    "euler-8": ("flow", dict(sampler="euler", num_steps=8), (0.09, 0.10, 0.045, 0.125, 0.18)),
}


@pytest.mark.parametrize("case", list(FIT_CASES))
def test_trained_head_fits_conditional_mixture(case, request):
    objective, kw, (own_tol, dmu_tol, sd_lo, sd_hi, off_tol) = FIT_CASES[case]
    head = request.getfixturevalue(f"{objective}_head")
    s = _mixture_stats(head, **kw)
    print(f"fit {case}: " + " ".join(f"{k} {v:.3f}" for k, v in s.items()))
    assert s["own_err"] <= own_tol and s["dmu"] <= dmu_tol and s["off"] <= off_tol
    assert sd_lo <= s["sd_lo"] and s["sd_hi"] <= sd_hi


@pytest.mark.parametrize("case", ["ddpm-100", "dpm-8", "euler-8"])
def test_cfg_moves_samples_to_the_conditional_mode(case, request):
    objective, kw, _ = FIT_CASES[case]
    head = request.getfixturevalue(f"{objective}_head")
    s1, s3 = _mixture_stats(head, **kw)["own"], _mixture_stats(head, cfg=3.0, **kw)["own"]
    print(f"cfg {case}: own-mode fraction {s1:.3f} (s=1) -> {s3:.3f} (s=3); ideal 0.6 -> 0.97")
    assert s3 >= 0.85 and s3 > s1 + 0.2


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm", "euler"])
def test_cfg_scale_one_equals_unguided(sampler, ddpm_head, flow_head):
    head = flow_head if sampler == "euler" else ddpm_head
    z = nn.functional.one_hot(torch.arange(N_CLS).repeat_interleave(8), N_CLS + 1).float()
    zu = nn.functional.one_hot(torch.full((len(z),), N_CLS), N_CLS + 1).float()
    plain = head.sample(z, sampler=sampler, num_steps=10, generator=torch.Generator().manual_seed(3))
    guided = head.sample(torch.cat([z, zu]), cfg=1.0, guidance=True, sampler=sampler, num_steps=10,
                         generator=torch.Generator().manual_seed(3))
    assert guided.shape == plain.shape and torch.allclose(guided, plain, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm", "euler"])
def test_seeded_sampling_is_deterministic(sampler, ddpm_head, flow_head):
    head = flow_head if sampler == "euler" else ddpm_head
    z = nn.functional.one_hot(torch.arange(N_CLS).repeat_interleave(4), N_CLS + 1).float()
    run = lambda seed, **kw: head.sample(z, sampler=sampler, num_steps=10,  # noqa: E731
                                         generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))
    zz = torch.cat([z, z.flip(0)])  # guided path
    guided = lambda seed: head.sample(zz, cfg=2.0, sampler=sampler, num_steps=10,  # noqa: E731
                                      generator=torch.Generator().manual_seed(seed))
    assert torch.equal(guided(5), guided(5))
    # a seeded loss is reproducible too
    x, zt = _mixture_batch(16, torch.Generator().manual_seed(0))
    l1 = head.loss(x, zt, generator=torch.Generator().manual_seed(9))
    assert torch.equal(l1, head.loss(x, zt, generator=torch.Generator().manual_seed(9)))


def test_benchmark_head_latency_runs(ddpm_head):
    assert 0 < benchmark_head_latency(ddpm_head, n_tokens=4, sampler="dpm", steps=4, repeats=2) < 10


def test_guided_denoiser_mixes_eps_channels_only():
    torch.manual_seed(0)
    head = DiffusionHead(3, 4, DiffusionHeadConfig(width=16, depth=1))
    for p in head.net.parameters():
        nn.init.normal_(p, std=0.3)
    zc, zu, x = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 3)
    t = torch.tensor([999.0, 500.0])
    fn = head._denoiser(torch.cat([zc, zu]), t.tolist(), 2.5, guided=True)
    with torch.no_grad():
        oc = head.net(x, t[1].expand(5), zc)
        ou = head.net(x, t[1].expand(5), zu)
        got = fn(x, 1)
    assert torch.allclose(got[:, :3], ou[:, :3] + 2.5 * (oc[:, :3] - ou[:, :3]), atol=1e-5)
    assert torch.allclose(got[:, 3:], oc[:, 3:], atol=1e-5, rtol=1e-5)  # variance channels from the conditional half


def test_stochastic_ddim_uses_temperature_and_generator():
    head = _oracle_head("ddpm", ddim_eta=1.0)
    _, lo, hi = _oracle_stats(head, sampler="ddim", num_steps=50)
    _, lo_cold, hi_cold = _oracle_stats(head, sampler="ddim", num_steps=50, temperature=0.3)
    print(f"oracle ddim-50 eta 1: sd [{lo:.4f}, {hi:.4f}], temperature 0.3: [{lo_cold:.4f}, {hi_cold:.4f}]")
    # eta = 1 adds the posterior (small) variance per step; measured 0.077-0.081 for data std 0.1
    assert 0.070 < lo and hi < 0.090 and hi_cold < 0.5 * lo
    z = torch.eye(2)
    def run(seed):
        return head.sample(z, sampler="ddim", num_steps=5, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_stochastic_ddim_step_matches_diffusers():
    from videoaction.nn.diffusion.samplers import _ddim_eta_step

    sched = make_diffusers_scheduler("ddim", 1000, "cosine")
    sched.set_timesteps(5)  # trailing: 999, 799, 599, 399, 199
    base = GaussianTables(cosine_betas(1000))
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    for t, prev in ((799, 599), (199, -1)):
        z = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
        ref = sched.step(eps, t, x, eta=0.5, variance_noise=z, return_dict=False)[0]
        mine = _ddim_eta_step(x.clone(), eps, t, prev, base, 0.5, 1.0, torch.Generator().manual_seed(1))
        assert torch.allclose(mine, ref, atol=1e-5, rtol=1e-5)


def test_dpm_start_at_lambda_min_skips_the_terminal_step(ddpm_head):
    head = DiffusionHead(2, 2, DiffusionHeadConfig(width=8, depth=1, dpm_start="lambda_min"))
    assert head.dpm_timesteps(8)[:3] == [967, 912, 770]
    assert _oracle_head("ddpm").dpm_timesteps(8)[:3] == [999, 912, 770]
    # unclipped few-step sampling of a briefly trained head: from t = 999 the x0 estimate blows up (1/sqrt(abar)
    # = 2e4 times the epsilon error); starting at lambda_min keeps it usable (measured off-mode 0.09, own err 0.05)
    ddpm_head.cfg.dpm_start = "noise"
    bad = _mixture_stats(ddpm_head, sampler="dpm", num_steps=8)
    ddpm_head.cfg.dpm_start = "lambda_min"
    try:
        good = _mixture_stats(ddpm_head, sampler="dpm", num_steps=8)
    finally:
        ddpm_head.cfg.dpm_start = "noise"
    print(f"unclipped dpm-8: start at noise off {bad['off']:.3f}; at lambda_min off {good['off']:.3f}, "
          f"own err {good['own_err']:.3f}")
    assert bad["off"] > 0.5 and good["off"] < 0.14 and good["own_err"] < 0.09
