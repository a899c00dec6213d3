"""Text-guided video predictor (stage 1): SVD's spatio-temporal UNet conditioned on frame 0 and instruction tokens.

* Latents: ``AutoencoderKLTemporalDecoder`` encodes each frame; latents are multiplied by the scaling factor.
* Conditioning: the clean frame-0 latent divided by the scaling factor (SVD's unscaled convention) repeated over the
  frames and concatenated on channels with the noisy latents (4 + 4 = 8 in-channels); instruction tokens as the
  cross-attention states; added time ids (fps, motion bucket, noise-aug), identical everywhere (vpp.md §11.2).
* Loss (EDM, v-preconditioning, sigma_data 1): sigma = exp(p_std * N(0, 1) + p_mean), c_in = 1 / sqrt(s^2 + 1),
  c_skip = 1 / (s^2 + 1), c_out = -s / sqrt(s^2 + 1), c_noise = ln(s) / 4, weight (s^2 + 1) / s^2, all frames.
* Sampling: diffusers' ``EulerDiscreteScheduler`` with SVD's settings (Karras sigmas 700 -> 0.002, v-prediction,
  continuous timesteps), classifier-free guidance with the guidance scale rising linearly over the frames
  (min -> max); the unconditional branch has zero text states and keeps the frame-0 latent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from videoaction.models.vpp.config import VPPConfig


def svd_scheduler(m: VPPConfig) -> EulerDiscreteScheduler:
    """SVD's scheduler (its ``scheduler/scheduler_config.json``) with the config's sigma range."""
    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", interpolation_type="linear",
                                  prediction_type="v_prediction", sigma_min=m.sigma_min, sigma_max=m.sigma_max,
                                  steps_offset=1, timestep_spacing="leading", timestep_type="continuous",
                                  use_karras_sigmas=True)


class TVP(nn.Module):
    """Holds ``unet`` and ``vae`` (diffusers modules; their parameter names are the diffusers folders')."""

    def __init__(self, m: VPPConfig, unet: nn.Module, vae: nn.Module):
        super().__init__()
        self.m, self.unet, self.vae = m, unet, vae

    @property
    def scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    def added_time_ids(self, b: int, device, dtype=torch.float32) -> torch.Tensor:
        m = self.m
        ids = torch.tensor([m.fps, m.motion_bucket_id, m.noise_aug_strength], device=device, dtype=dtype)
        return ids.expand(b, 3)

    # ------------------------------------------------------------------------------------------ latents
    def encode(self, frames: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               chunk: int = 64) -> torch.Tensor:
        """Frames (B, F, 3, S, S) in [-1, 1] -> scaled latents (B, F, C, h, w)."""
        b, f = frames.shape[:2]
        x = frames.reshape(b * f, *frames.shape[2:])
        out = []
        for i in range(0, x.shape[0], chunk):
            dist = self.vae.encode(x[i: i + chunk]).latent_dist
            out.append(dist.sample(generator) if sample else dist.mode())
        z = torch.cat(out) * self.scaling
        return z.reshape(b, f, *z.shape[1:])

    def decode(self, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Scaled latents (B, F, C, h, w) -> frames (B, F, 3, S, S) in [-1, 1] (temporal decoder, chunks of frames)."""
        b, f = latents.shape[:2]
        outs = []
        for i in range(0, f, chunk):
            z = latents[:, i: i + chunk]
            n = z.shape[1]
            x = self.vae.decode(z.flatten(0, 1) / self.scaling, num_frames=n).sample
            outs.append(x.reshape(b, n, *x.shape[1:]))
        return torch.cat(outs, dim=1)

    def vae_loss(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction MSE + ``kl_weight`` x KL of the VAE on the first ``vae.train_frames`` of (B, F, 3, S, S)."""
        frames = frames[:, : self.m.vae.train_frames]
        b, f = frames.shape[:2]
        dist = self.vae.encode(frames.flatten(0, 1)).latent_dist
        rec = self.vae.decode(dist.sample(generator), num_frames=f).sample
        kl = dist.kl().mean() / dist.mean[0].numel()
        return F.mse_loss(rec, frames.flatten(0, 1)) + self.m.vae.kl_weight * kl

    # ------------------------------------------------------------------------------------------ denoiser
    def unet_out(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor,
                 text: torch.Tensor) -> torch.Tensor:
        """Raw UNet output F for already-scaled input ``x_in`` (B, F, C, h, w) and ``cond`` (B, C, h, w) unscaled."""
        b, f = x_in.shape[:2]
        inp = torch.cat([x_in, cond[:, None].expand(-1, f, -1, -1, -1)], dim=2)  # (B, F, 2C, h, w)
        return self.unet(inp, c_noise, encoder_hidden_states=text,
                         added_time_ids=self.added_time_ids(b, x_in.device, x_in.dtype)).sample

    def edm_loss(self, latents: torch.Tensor, text: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """EDM loss on scaled latents (B, F, C, h, w); frame 0 (unscaled) conditions every frame."""
        m = self.m
        b = latents.shape[0]
        dev = generator.device if generator is not None else latents.device
        sigma = (torch.randn(b, generator=generator, device=dev) * m.p_std + m.p_mean).exp().to(latents.device)
        s = sigma.view(b, 1, 1, 1, 1)
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        x_sigma = latents + noise * s
        c_in, c_skip, c_out = 1 / (s ** 2 + 1).sqrt(), 1 / (s ** 2 + 1), -s / (s ** 2 + 1).sqrt()
        out = self.unet_out(x_sigma * c_in, sigma.log() / 4, latents[:, 0] / self.scaling, text)
        x0 = c_out * out + c_skip * x_sigma
        weight = (s ** 2 + 1) / s ** 2
        return (weight * (x0 - latents) ** 2).mean()

    # ------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, cond_latent: torch.Tensor, text: torch.Tensor, num_steps: int | None = None,
               guidance_max: float | None = None, guidance_min: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled frame-0 latent (B, C, h, w) + text states (B, L, D) -> scaled latents (B, F, C, h, w).

        Frame 0 of the result is the given latent (the observation)."""
        m = self.m
        num_steps = num_steps or m.sample_steps
        gmax = m.guidance_max if guidance_max is None else guidance_max
        gmin = m.guidance_min if guidance_min is None else guidance_min
        b, f = cond_latent.shape[0], m.num_frames
        sched = svd_scheduler(m)
        sched.set_timesteps(num_steps, device=cond_latent.device)
        x = randn_tensor((b, f, *cond_latent.shape[1:]), generator=generator, device=cond_latent.device,
                         dtype=cond_latent.dtype) * sched.init_noise_sigma
        cond = cond_latent / self.scaling
        guided = gmax > 1.0 or gmin > 1.0
        scale = torch.linspace(gmin, gmax, f, device=x.device).view(1, f, 1, 1, 1)
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            if guided:
                out = self.unet_out(torch.cat([x_in, x_in]), t, torch.cat([cond, cond]),
                                    torch.cat([torch.zeros_like(text), text]))
                uncond, cnd = out.chunk(2)
                out = uncond + scale * (cnd - uncond)
            else:
                out = self.unet_out(x_in, t, cond, text)
            x = sched.step(out, t, x).prev_sample
        x[:, 0] = cond_latent
        return x


def edm_sigma_weights(sigma: float) -> tuple[float, float, float]:
    """(c_in, c_skip, c_out) of the TVP's preconditioning at ``sigma`` (documentation / tests)."""
    return 1 / math.sqrt(sigma ** 2 + 1), 1 / (sigma ** 2 + 1), -sigma / math.sqrt(sigma ** 2 + 1)
