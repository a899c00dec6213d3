"""Predictive features (stage 2): one truncated pass of the frozen TVP UNet at the highest-noise step.

As the reference's ``diffusion_extract``: the scheduler is set to ``features.schedule_steps`` (20) steps, the latents
are pure noise x ``init_noise_sigma``, and only step ``features.step_index`` (0, the noisiest) runs, without CFG:
time + added-time embedding -> conv_in -> every down block -> mid block -> up blocks 0..``features.up_block``; the
remaining up blocks and conv_out are skipped. The outputs of the chosen up blocks (all of 0..k with
``features.all_layers``, else block k only) are nearest-upsampled to the last one's resolution and concatenated on
channels. The micro-conditioning (fps, motion bucket, noise-aug) and the text recipe are the model config's, the same
as stage 1's (the reference used fps 7 in stage 1 and 4 here, vpp.md §11.2).

Output: (B, F, N, C) with N = h_k * w_k tokens per frame and C the summed channels of the chosen blocks
(SVD at 256 px: up blocks 0 + 1 -> 1280 + 1280 = 2560 channels on 16 x 16 = 256 tokens, 16 frames).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from videoaction.models.vpp.config import VPPConfig
from videoaction.models.vpp.tvp import TVP, svd_scheduler


def feature_layout(m: VPPConfig, latent_size: int) -> tuple[int, int]:
    """(tokens per frame, channels) of the features for a square latent of side ``latent_size``."""
    u = m.unet
    size = latent_size // 2 ** (len(u.down_block_types) - 1)  # every down block but the last halves the size
    rev = list(reversed(u.block_out_channels))
    chans, sizes = [], []
    for i in range(m.features.up_block + 1):
        if i < len(u.up_block_types) - 1:
            size *= 2  # up blocks upsample at their end, except the last
        chans.append(rev[i])
        sizes.append(size)
    c = sum(chans) if m.features.all_layers else chans[-1]
    return sizes[-1] ** 2, c


@torch.no_grad()
def extract_features(tvp: TVP, cond_latent: torch.Tensor, text: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled frame-0 latent (B, C, h, w) + text states (B, L, D) -> features (B, F, N, C_feat)."""
    m, unet = tvp.m, tvp.unet
    fc = m.features
    b, f = cond_latent.shape[0], m.num_frames
    sched = svd_scheduler(m)
    sched.set_timesteps(fc.schedule_steps, device=cond_latent.device)
    t, sigma = sched.timesteps[fc.step_index], float(sched.sigmas[fc.step_index])
    x = randn_tensor((b, f, *cond_latent.shape[1:]), generator=generator, device=cond_latent.device,
                     dtype=cond_latent.dtype) * sched.init_noise_sigma
    x = x / (sigma ** 2 + 1) ** 0.5  # the scheduler's scale_model_input at that step
    inp = torch.cat([x, (cond_latent / tvp.scaling)[:, None].expand(-1, f, -1, -1, -1)], dim=2)

    # the first part of UNetSpatioTemporalConditionModel.forward, stopped after up block `fc.up_block`
    emb = unet.time_embedding(unet.time_proj(t.reshape(1).expand(b).to(inp.device)).to(inp.dtype))
    ids = tvp.added_time_ids(b, inp.device, inp.dtype)
    emb = emb + unet.add_embedding(unet.add_time_proj(ids.flatten()).reshape(b, -1).to(emb.dtype))
    emb = emb.repeat_interleave(f, dim=0)
    states = text.repeat_interleave(f, dim=0)
    h = unet.conv_in(inp.flatten(0, 1))
    indicator = torch.zeros(b, f, dtype=h.dtype, device=h.device)
    res = (h,)
    for block in unet.down_blocks:
        kw = {"encoder_hidden_states": states} if getattr(block, "has_cross_attention", False) else {}
        h, r = block(hidden_states=h, temb=emb, image_only_indicator=indicator, **kw)
        res += r
    h = unet.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=states, image_only_indicator=indicator)
    outs = []
    for i, block in enumerate(unet.up_blocks[: fc.up_block + 1]):
        skip, res = res[-len(block.resnets):], res[: -len(block.resnets)]
        kw = {"encoder_hidden_states": states} if getattr(block, "has_cross_attention", False) else {}
        h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=skip, image_only_indicator=indicator, **kw)
        outs.append(h)
    if not fc.all_layers:
        outs = outs[-1:]
    size = outs[-1].shape[-2:]
    feat = torch.cat([o if o.shape[-2:] == size else F.interpolate(o, size=size, mode="nearest") for o in outs], 1)
    return feat.flatten(2).transpose(1, 2).reshape(b, f, size[0] * size[1], feat.shape[1])  # (B, F, N, C)
