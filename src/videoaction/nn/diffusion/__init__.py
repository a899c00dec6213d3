"""Per-token diffusion heads (MAR's DiffLoss family): SimpleMLPAdaLN, Gaussian diffusion (DDPM with learned-range
variance, respacing; DDIM / DPM-Solver++ through diffusers) and rectified flow, with classifier-free guidance."""

from videoaction.nn.diffusion.gaussian import GaussianTables, cosine_betas, make_betas, space_timesteps
from videoaction.nn.diffusion.head import (
    DiffusionHead,
    DiffusionHeadConfig,
    benchmark_head_latency,
    make_diffusers_scheduler,
)
from videoaction.nn.diffusion.mlp import SimpleMLPAdaLN, timestep_embedding

__all__ = [
    "DiffusionHead",
    "DiffusionHeadConfig",
    "SimpleMLPAdaLN",
    "GaussianTables",
    "benchmark_head_latency",
    "cosine_betas",
    "make_betas",
    "make_diffusers_scheduler",
    "space_timesteps",
    "timestep_embedding",
]
