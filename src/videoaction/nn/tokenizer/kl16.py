"""MAR's KL-16 autoencoder (the LDM KL-VAE: ch 128, ch_mult 1,1,2,2,4, z 16, stride 16), our own compact module.

Decision on diffusers' ``AutoencoderKL``: it can express the *computation* exactly (4 x ``DownEncoderBlock2D`` +
one ``AttnDownEncoderBlock2D`` at the lowest level -- its Encoder passes ``attention_head_dim=out_channels``, i.e.
the LDM's single-head attention -- plus a 512-wide attention mid block and 5 x ``UpDecoderBlock2D`` with
``layers_per_block=2``, pad-(0,1,0,1) downsampling, GroupNorm eps 1e-6, logvar clamp [-30, 20]); ``to_diffusers``
below builds it and a test checks that its outputs equal ours. It cannot express the *parameter layout*: other
names (``down_blocks.i.resnets.j``, ``attentions.j.to_q``), attention projections as Linear (C, C) instead of 1x1
convs (C, C, 1, 1), and decoder levels numbered in execution order (its ``up_blocks.0`` is MAR's ``up.4``). Using it
would need renaming + reshaping hooks at every state-dict boundary, which break the name/shape invariants that
FSDP, distributed checkpointing, EMA and "copy tensors whose name and shape match" initialisation rely on. So this
module is our own (about 150 lines) with MAR's exact names: its state dict is ``kl16_keys.json`` (312 tensors,
66,456,019 parameters), so MAR's ``kl16.ckpt`` and UVA's ``vae_model.*`` keys load with no mapping at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .base import DiagonalGaussian, Tokenizer
from .config import KL16_SCALE, TokenizerError


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3 -> GN -> swish -> conv3, plus a 1x1 ``nin_shortcut`` when channels change."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions with 1x1-conv q, k, v, proj_out; residual."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(n, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))  # (N,1,HW,C)
        o = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(o.transpose(2, 3).reshape(n, c, h, w))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right/bottom by 1, as LDM


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (AttnBlocks, may be empty), optional resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block, self.attn = nn.ModuleList(blocks), nn.ModuleList(attns)

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """(N, 3, H, W) -> moments (N, 2*z, H/2^(L-1), W/2^(L-1)); attention at the lowest level and in the mid."""

    def __init__(self, ch: int = 128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int = 16):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(ch_mult):
            cout = ch * m
            last = i == len(ch_mult) - 1
            blocks = [ResnetBlock(cin if j == 0 else cout, cout) for j in range(num_res_blocks)]
            level = _Level(blocks, [AttnBlock(cout) for _ in range(num_res_blocks)] if last else [])
            if not last:
                level.downsample = Downsample(cout)
            self.down.append(level)
            cin = cout
        self.mid = _Mid(cin)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, 2 * z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """z (N, z, h, w) -> (N, 3, h*2^(L-1), w*2^(L-1)); ``up`` listed by level 0..L-1, executed L-1 -> 0."""

    def __init__(self, ch: int = 128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 3, z_channels: int = 16):
        super().__init__()
        cin = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin)
        levels: list[_Level] = []
        for i in reversed(range(len(ch_mult))):
            cout = ch * ch_mult[i]
            level = _Level([ResnetBlock(cin if j == 0 else cout, cout) for j in range(num_res_blocks)], [])
            if i != 0:
                level.upsample = Upsample(cout)
            levels.insert(0, level)
            cin = cout
        self.up = nn.ModuleList(levels)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class KL16Autoencoder(Tokenizer):
    """MAR kl16 (``AutoencoderKL(embed_dim=16, ch_mult=(1,1,2,2,4))``): 256^2 RGB -> 16 x 16 x 16 latents.

    ``ch``/``ch_mult`` are configurable only so tests can build a narrow copy; the released weights need defaults.
    """

    kind = "kl16"

    def __init__(self, ch: int = 128, ch_mult=(1, 1, 2, 2, 4), embed_dim: int = 16, scale: float = KL16_SCALE):
        super().__init__()
        self.encoder = Encoder(ch, ch_mult, 2, embed_dim)
        self.decoder = Decoder(ch, ch_mult, 3, embed_dim)
        self.quant_conv = nn.Conv2d(2 * embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)
        self.latent_channels, self.stride, self.scale = embed_dim, 2 ** (len(ch_mult) - 1), float(scale)
        self.arch = {"ch": ch, "ch_mult": list(ch_mult), "embed_dim": embed_dim}

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


def check_state_dict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``TokenizerError`` listing missing, unexpected and mis-shaped keys unless ``sd`` fits exactly."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def _list(items: list[str]) -> str:
            return ", ".join(items[:20]) + (f" ... (+{len(items) - 20} more)" if len(items) > 20 else "")
        parts = [f"{source}: weights do not fit the {getattr(module, 'kind', type(module).__name__)} tokenizer"]
        if missing:
            parts.append(f"{len(missing)} missing: {_list(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_list(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} mis-shaped: {_list(shapes)}")
        raise TokenizerError("; ".join(parts))


def kl16_to_diffusers_state_dict(sd: Mapping[str, torch.Tensor], n_levels: int = 5) -> dict[str, torch.Tensor]:
    """Rename (and reshape 1x1-conv attention projections to Linear) MAR kl16 keys to diffusers' AutoencoderKL."""
    out: dict[str, torch.Tensor] = {}
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    for key, t in sd.items():
        p = key.split(".")
        if p[0] in ("encoder", "decoder") and p[1] in ("down", "up"):
            lvl = int(p[2]) if p[1] == "down" else n_levels - 1 - int(p[2])
            base = f"{p[0]}.{p[1]}_blocks.{lvl}"
            if p[3] == "block":
                leaf = "conv_shortcut" if p[5] == "nin_shortcut" else p[5]
                new = f"{base}.resnets.{p[4]}.{leaf}.{p[6]}"
            elif p[3] == "attn":
                new = f"{base}.attentions.{p[4]}.{attn[p[5]]}.{p[6]}"
            else:  # downsample.conv / upsample.conv
                new = f"{base}.{p[3]}rs.0.conv.{p[5]}"
        elif p[0] in ("encoder", "decoder") and p[1] == "mid":
            sub = {"block_1": "resnets.0", "block_2": "resnets.1", "attn_1": "attentions.0"}[p[2]]
            leaf = attn[p[3]] if p[2] == "attn_1" else p[3]
            new = f"{p[0]}.mid_block.{sub}.{leaf}.{p[4]}"
        elif p[0] in ("encoder", "decoder") and p[1] == "norm_out":
            new = f"{p[0]}.conv_norm_out.{p[2]}"
        else:
            new = key
        if ".attentions." in new and t.dim() == 4:
            t = t[:, :, 0, 0]
        out[new] = t
    return out


def to_diffusers(model: KL16Autoencoder):
    """The same network as a diffusers ``AutoencoderKL`` with our weights (e.g. for its tiled decoding)."""
    from diffusers import AutoencoderKL

    ch, mult = model.arch["ch"], model.arch["ch_mult"]
    n = len(mult)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=model.latent_channels,
                        down_block_types=("DownEncoderBlock2D",) * (n - 1) + ("AttnDownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(ch * m for m in mult),
                        layers_per_block=2, act_fn="silu", norm_num_groups=32, scaling_factor=model.scale)
    missing, unexpected = vae.load_state_dict(kl16_to_diffusers_state_dict(model.state_dict(), n), strict=False)
    if missing or unexpected:
        raise TokenizerError(f"diffusers AutoencoderKL layout mismatch: missing {missing}, unexpected {unexpected}")
    return vae
