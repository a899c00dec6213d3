"""MagViT-2 style lookup-free quantisation (LFQ) image tokenizer with Open-MAGVIT2's module layout.

Architecture (the ``VQModel`` whose weights HMA's discrete model uses, ``magvit2.ckpt``): conv encoder ->
``z_channels`` = log2(vocab) channels -> sign quantisation to {-1, +1} -> conv decoder. Parameter names match that
checkpoint: ``encoder.conv_in``, ``encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}``,
``encoder.down.{i}.downsample`` (a stride-2 conv), ``encoder.mid_block.{j}``, ``encoder.norm_out``,
``encoder.conv_out``; ``decoder.conv_in``, ``decoder.mid_block.{j}``, ``decoder.up.{i}.block.{j}``,
``decoder.up.{i}.upsample.conv1`` (conv to 4x channels + depth-to-space), ``decoder.norm_out``, ``decoder.conv_out``.
Res-block convs have no bias; GroupNorm(32, eps 1e-6); swish. The quantiser has no parameters.

Token ids follow the reference's ``encode(flip=True)`` convention: bit i of the id is channel i's sign (> 0), so
``id = sum_i [z_i > 0] 2^i`` and decoding maps bit i back to channel i.

Weights load from a local folder (``lfq.json`` + ``model.safetensors``, written by :func:`save_lfq`) or from a
Lightning checkpoint (``{"state_dict": {...}}``, pickled: only with ``allow_pickle``) — ``encoder.*`` / ``decoder.*``
kept, discriminator / LPIPS / EMA entries ignored, anything missing an error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import TokenizerError

LFQ_CONFIG = "lfq.json"
LFQ_WEIGHTS = "model.safetensors"


@dataclass
class LFQConfig:
    """Sizes of an LFQ tokenizer (defaults: the reference's 256-px, 2^18-vocabulary model, stride 16)."""

    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 18  # bits per token: vocabulary 2^z_channels
    base_channels: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    groups: int = 32  # GroupNorm groups (32 in the reference)

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def vocab_size(self) -> int:
        return 2 ** self.z_channels


def tiny_lfq_config(z_channels: int = 10, stride: int = 8, base_channels: int = 32) -> LFQConfig:
    """CPU-sized: 1 res block per level, 8 GroupNorm groups, widths ``base_channels`` x (1, 1, 2, 2, 4, ...) for as
    many levels as ``stride`` needs (stride 8: 32/32/64/64)."""
    levels = int(stride).bit_length()
    if stride < 2 or 2 ** (levels - 1) != stride:
        raise TokenizerError(f"lfq tokenizer: stride must be a power of two >= 2, got {stride}")
    mult = (1, 1, 2, 2, 4, 4, 8)[:levels]
    return LFQConfig(z_channels=z_channels, base_channels=base_channels, ch_mult=mult, num_res_blocks=1, groups=8)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(_swish(self.norm2(self.conv1(_swish(self.norm1(x))))))
        return h + (self.nin_shortcut(x) if self.nin_shortcut is not None else x)


class Upsampler(nn.Module):
    """3x3 conv to 4C channels, then depth-to-space by 2 (DCR order)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        b, c4, h, w = y.shape
        y = y.view(b, 2, 2, c4 // 4, h, w).permute(0, 3, 4, 1, 5, 2)  # (B, C, h, 2, w, 2)
        return y.reshape(b, c4 // 4, h * 2, w * 2)


class Encoder(nn.Module):
    def __init__(self, cfg: LFQConfig):
        super().__init__()
        ch, g = cfg.base_channels, cfg.groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        mult_in = (1,) + tuple(cfg.ch_mult)
        for i, m in enumerate(cfg.ch_mult):
            level = nn.Module()
            cin, cout = ch * mult_in[i], ch * m
            level.block = nn.ModuleList([ResBlock(cin if j == 0 else cout, cout, g) for j in range(cfg.num_res_blocks)])
            if i < len(cfg.ch_mult) - 1:
                level.downsample = nn.Conv2d(cout, cout, 3, stride=2, padding=1)
            self.down.append(level)
        top = ch * cfg.ch_mult[-1]
        self.mid_block = nn.ModuleList([ResBlock(top, top, g) for _ in range(cfg.num_res_blocks)])
        self.norm_out = nn.GroupNorm(g, top, eps=1e-6)
        self.conv_out = nn.Conv2d(top, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                x = block(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(_swish(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: LFQConfig):
        super().__init__()
        ch, g, n = cfg.base_channels, cfg.groups, len(cfg.ch_mult)
        c = ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid_block = nn.ModuleList([ResBlock(c, c, g) for _ in range(cfg.num_res_blocks)])
        levels: list[nn.Module] = []
        for i in reversed(range(n)):
            level = nn.Module()
            cout = ch * cfg.ch_mult[i]
            level.block = nn.ModuleList([ResBlock(c if j == 0 else cout, cout, g) for j in range(cfg.num_res_blocks)])
            c = cout
            if i > 0:
                level.upsample = Upsampler(c)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # indexed by level (0 = full resolution); run from the last to the first
        self.norm_out = nn.GroupNorm(g, c, eps=1e-6)
        self.conv_out = nn.Conv2d(c, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for block in self.mid_block:
            x = block(x)
        for level in reversed(self.up):
            for block in level.block:
                x = block(x)
            if hasattr(level, "upsample"):
                x = level.upsample(x)
        return self.conv_out(_swish(self.norm_out(x)))


class LFQTokenizer(nn.Module):
    """Encoder -> sign quantiser -> decoder. Discrete ids (N, h, w) in [0, 2^z) or codes (N, z, h, w) in {-1, 1}."""

    kind = "lfq"

    def __init__(self, cfg: LFQConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or LFQConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.stride, self.vocab_size, self.latent_channels = cfg.stride, cfg.vocab_size, cfg.z_channels
        self.register_buffer("bits", 2 ** torch.arange(cfg.z_channels, dtype=torch.long), persistent=False)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels or x.shape[-1] % self.stride or x.shape[-2] % self.stride:
            raise TokenizerError(f"lfq tokenizer: expected images (N, {self.cfg.in_channels}, H, W) with H, W "
                                 f"multiples of {self.stride}, got {tuple(x.shape)}")

    @staticmethod
    def quantize(z: torch.Tensor) -> torch.Tensor:
        """Sign quantisation with straight-through gradients: (N, z, h, w) -> {-1, 1}."""
        q = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
        return z + (q - z).detach()

    def codes_to_ids(self, q: torch.Tensor) -> torch.Tensor:
        return ((q > 0).long() * self.bits.view(1, -1, 1, 1)).sum(1)  # (N, h, w)

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        bits = (ids.long().unsqueeze(1) & self.bits.view(1, -1, 1, 1)) != 0  # (N, z, h, w)
        return bits.float() * 2.0 - 1.0

    @torch.no_grad()
    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> token ids (N, H/s, W/s) int64."""
        self._check(x)
        return self.codes_to_ids(self.encoder(x))

    @torch.no_grad()
    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (N, h, w) -> images (N, 3, h*s, w*s) clamped to [-1, 1]."""
        if ids.dim() != 3:
            raise TokenizerError(f"lfq tokenizer: expected ids (N, h, w), got {tuple(ids.shape)}")
        if int(ids.max()) >= self.vocab_size or int(ids.min()) < 0:
            raise TokenizerError(f"lfq tokenizer: ids outside [0, {self.vocab_size})")
        return self.decoder(self.ids_to_codes(ids).to(self.decoder.conv_in.weight.dtype)).clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction and loss terms (commitment, entropy) for training."""
        self._check(x)
        z = self.encoder(x)
        q = self.quantize(z)
        recon = self.decoder(q)
        commit = F.mse_loss(z, q.detach())
        # per-bit entropy: each bit confident (low per-sample entropy) yet used both ways across the batch at every
        # position (a marginal over positions too would let each bit collapse to a fixed spatial pattern)
        p = torch.sigmoid(4.0 * z)
        ent = lambda t: -(t * torch.log(t + 1e-6) + (1 - t) * torch.log(1 - t + 1e-6))  # noqa: E731
        entropy = ent(p).mean() - ent(p.mean(dim=0)).mean()
        return recon, {"commit": commit, "entropy": entropy}


def fit_lfq(model: LFQTokenizer, frames: torch.Tensor, steps: int = 300, batch_size: int = 32, lr: float = 1e-3,
            commit_weight: float = 0.0, entropy_weight: float = 0.5, seed: int = 0, log=None,
            progress: bool = False) -> list[float]:
    """Train on frames (N, 3, H, W), float in [-1, 1] or uint8 (converted batch by batch), with L1 + MSE
    reconstruction, commitment and entropy terms (no GAN / LPIPS: the CPU-sized variant). Returns the per-step
    reconstruction MSE.

    Defaults for short CPU fits (measured on 64 moving-box frames, 60 steps): the reference's commitment 0.25
    with entropy 0.05 freezes every code's sign in the first steps (ids constant per position, the decoder learns
    the mean image); entropy 0.5 without commitment used 42 ids with every position varying."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    model.train()
    curve = []
    from tqdm.auto import tqdm

    for step in tqdm(range(steps), desc="lfq tokenizer", disable=not progress, dynamic_ncols=True):
        idx = torch.randint(0, len(frames), (min(batch_size, len(frames)),), generator=g)
        x = frames[idx]
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        recon, terms = model(x)
        mse = F.mse_loss(recon, x)
        loss = mse + F.l1_loss(recon, x) + commit_weight * terms["commit"] + entropy_weight * terms["entropy"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(float(mse.detach()))
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(f"lfq step {step}: mse {float(mse.detach()):.4f}")
    model.eval()
    return curve


# ------------------------------------------------------------------------------------------------ persistence
def save_lfq(model: LFQTokenizer, directory, extra: dict | None = None) -> Path:
    from videoaction.utils.io import atomic_write_json, save_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_state_dict(model.state_dict(), directory / LFQ_WEIGHTS)
    cfg = asdict(model.cfg)
    atomic_write_json(directory / LFQ_CONFIG, {"kind": "lfq", **cfg, **(extra or {})})
    return directory


def is_lfq_path(path) -> bool:
    path = Path(path)
    return (path / LFQ_CONFIG).is_file() or (path.is_file() and path.suffix in (".ckpt", ".pt", ".pth"))


def load_lfq(path, cfg: LFQConfig | None = None, allow_pickle: bool = False, prefer_ema: bool = False) -> LFQTokenizer:
    """Load from a folder written by :func:`save_lfq` (or holding ``lfq.json`` + a ``.ckpt``), or from a reference
    Lightning checkpoint file (``cfg`` defaults to the reference sizes). Missing or mis-shaped tensors: an error."""
    path = Path(path)
    if path.is_dir():
        conf = path / LFQ_CONFIG
        if not conf.is_file():
            raise TokenizerError(f"{path}: no {LFQ_CONFIG} (an LFQ tokenizer folder holds {LFQ_CONFIG} + weights)")
        info = json.loads(conf.read_text())
        fields = LFQConfig.__dataclass_fields__
        cfg = LFQConfig(**{k: tuple(v) if k == "ch_mult" else v for k, v in info.items() if k in fields})
        weights = path / LFQ_WEIGHTS
        if not weights.is_file():
            found = sorted(path.glob("*.ckpt"))
            if not found:
                raise TokenizerError(f"{path}: no {LFQ_WEIGHTS} and no *.ckpt")
            weights = found[0]
    else:
        weights, cfg = path, cfg or LFQConfig()
    if weights.suffix == ".safetensors":
        from videoaction.utils.io import load_state_dict

        state = load_state_dict(weights)
    else:
        if not allow_pickle:
            raise TokenizerError(f"{weights}: a pickled checkpoint runs code when read; pass allow_pickle=True "
                                 f"(--allow-pickle) if you trust it, or convert it once with save_lfq")
        raw = torch.load(weights, map_location="cpu", weights_only=False)
        state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    model = LFQTokenizer(cfg)
    state = _select_generator(state, prefer_ema)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TokenizerError(f"{weights}: weights do not match the LFQ tokenizer {asdict(cfg)}: {len(missing)} "
                             f"missing {sorted(missing)[:6]}, {len(unexpected)} unexpected {sorted(unexpected)[:6]}")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(shapes[k])]
    if bad:
        raise TokenizerError(f"{weights}: shape mismatch for {bad[:6]}")
    return model.eval()


def _select_generator(state: dict, prefer_ema: bool) -> dict:
    """Keep ``encoder.*`` / ``decoder.*`` (from ``model_ema.*`` when asked and present); drop loss / EMA extras."""
    out = {k: v for k, v in state.items() if k.startswith(("encoder.", "decoder."))}
    if prefer_ema:
        ema = {k[len("model_ema."):]: v for k, v in state.items() if k.startswith("model_ema.")}
        flat = {k.replace(".", ""): k for k in out}  # Lightning's LitEma stores names without dots
        out.update({flat[k]: v for k, v in ema.items() if k in flat})
    if not out:
        raise TokenizerError(f"checkpoint holds no encoder.* / decoder.* tensors (keys like {list(state)[:4]})")
    return out


def lfq_param_count(cfg: LFQConfig) -> int:
    return sum(p.numel() for p in LFQTokenizer(cfg).parameters())


__all__ = ["LFQConfig", "LFQTokenizer", "fit_lfq", "is_lfq_path", "load_lfq", "save_lfq", "tiny_lfq_config",
           "lfq_param_count"]
