"""HMA configs: embodiments (:class:`DomainConfig`), the model (:class:`HMAConfig`), the run and the presets.

Presets: ``hma-tiny-disc`` / ``hma-tiny-cont`` (CPU: 4 x 4 tokens, 8 frames, width 128, 4 layers; LFQ ids with a
2^10 vocabulary factorised 2 x 32, or 8-channel latents of the small autoencoder) and ``hma-base-disc`` /
``hma-base-cont`` (the reference's released sizes, hma.md §5-6: d256 x 32 layers x 8 heads, 12 frames, 64 action
tokens, concat + per-embodiment modulation; discrete 16 x 16 MagViT-2 ids, 2^18 vocabulary factorised 2 x 512;
continuous 4 x 32 x 32 SVD-VAE latents x 0.18215 in 2 x 2 patches, DiffLoss width 1024 depth 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from videoaction.config import OptimConfig, RunConfig
from videoaction.errors import ConfigError
from videoaction.nn.diffusion import DiffusionHeadConfig

VARIANTS = ("discrete", "continuous")
ACTION_NETWORKS = ("concat", "modulate", "concat+modulate", "none")


@dataclass
class DomainConfig:
    """One embodiment / dataset: its action space, frame stride to the common rate and where its tokens are."""

    name: str = "pusht"
    action_dim: int = 2  # raw action dims per step; the model sees action_dim * stride per frame
    stride: int = 1  # frames skipped to reach the common rate (reference: max(Hz // 2, 1))
    data: str = ""  # token dataset directory (``videoaction encode --format hma``)

    @property
    def frame_action_dim(self) -> int:
        return self.action_dim * self.stride


@dataclass
class HMAConfig:
    """The spatio-temporal masked model; frame grid, vocabulary / latent channels and embodiments included."""

    variant: str = "discrete"  # discrete (MaskGIT, factorised CE) | continuous (MAR, per-token diffusion)
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    window: int = 8  # frames per sample (T)
    grid: int = 4  # tokenizer grid side (h = w)
    # discrete tokens
    vocab_size: int = 2 ** 10
    num_factored_vocabs: int = 2  # vocabulary = factored_vocab_size ** num_factored_vocabs
    label_smoothing: float = 0.01
    max_corrupt_rate: float = 0.2  # random sub-token replacement rate U(0,1) * this (discrete training)
    # continuous latents
    latent_channels: int = 8
    patch_size: int = 1
    latent_scale: float = 1.0  # applied when reading a dataset (reference SVD latents: 0.18215)
    diff_head: DiffusionHeadConfig = field(default_factory=lambda: DiffusionHeadConfig(width=256, depth=3))
    mask_ratio_min: float = 0.1  # continuous: per-frame mask ratio cos(pi/2 r), r ~ U(mask_ratio_min, 1)
    # actions
    action_network: str = "concat+modulate"
    n_action_tokens: int = 4
    per_domain_modulation: bool = False  # the reference's per-embodiment per-layer modulation (hma.md §10.8)
    previous_action: bool = True  # frame t is conditioned on action t-1 (else on action t as the reference)
    action_drop_prob: float = 0.1  # per sample: actions -> the null action (CFG's unconditional branch)
    predict_actions: bool = False  # per-embodiment action heads on the pooled action tokens (normalised targets)
    action_loss_weight: float = 0.5
    # training corruption
    non_mlm_ratio: float = 0.2  # p of "frames < k clean" samples (closer to autoregressive inference)
    num_prompt_frames: int = 2
    # decoding defaults
    decode_steps: int = 2
    temperature: float = 0.0  # 0 = greedy (discrete) / 0 noise scale 1 (continuous uses the head's sampler)
    cfg: float = 1.0
    unmask_mode: str = "random"  # random | confidence
    domains: tuple[DomainConfig, ...] = (DomainConfig(),)
    tokenizer: str | None = None  # tokenizer folder used to make the data (for generate / evaluation)

    @property
    def factored_vocab_size(self) -> int:
        v = round(self.vocab_size ** (1.0 / self.num_factored_vocabs))
        return v

    @property
    def tokens_per_frame(self) -> int:
        side = self.grid // (self.patch_size if self.variant == "continuous" else 1)
        return side * side

    @property
    def token_channels(self) -> int:
        return self.latent_channels * self.patch_size ** 2

    def domain(self, name: str) -> DomainConfig:
        for d in self.domains:
            if d.name == name:
                return d
        raise ConfigError(f"unknown embodiment {name!r}; the model knows {[d.name for d in self.domains]}")

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"model.variant must be one of {VARIANTS}, found {self.variant!r}")
        if self.action_network not in ACTION_NETWORKS:
            raise ConfigError(f"model.action_network must be one of {ACTION_NETWORKS}, found {self.action_network!r}")
        if self.d_model % self.num_heads:
            raise ConfigError(f"model.d_model {self.d_model} is not divisible by model.num_heads {self.num_heads}")
        if self.variant == "discrete" and self.factored_vocab_size ** self.num_factored_vocabs != self.vocab_size:
            raise ConfigError(f"model.vocab_size {self.vocab_size} is not a power {self.num_factored_vocabs} of an "
                              f"integer (model.num_factored_vocabs)")
        if self.variant == "continuous" and self.grid % self.patch_size:
            raise ConfigError(f"model.grid {self.grid} is not divisible by model.patch_size {self.patch_size}")
        names = [d.name for d in self.domains]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"model.domains: need distinct embodiment names, found {names}")
        if self.unmask_mode not in ("random", "confidence"):
            raise ConfigError(f"model.unmask_mode must be random or confidence, found {self.unmask_mode!r}")


@dataclass
class HMARunConfig(RunConfig):
    family: str = "hma"
    mix_temperature: float = 3.0  # dataset p ~ (n_i / N) ** (1 / T) (reference: 3 train, 4 val)
    model: HMAConfig = field(default_factory=HMAConfig)


SCRIPTED = (DomainConfig("pusht", 2, 1), DomainConfig("pusht-m", 2, 1), DomainConfig("metaworld", 4, 1))


def _tiny(variant: str) -> HMARunConfig:
    model = HMAConfig(variant=variant, domains=SCRIPTED)
    if variant == "continuous":
        model.diff_head = DiffusionHeadConfig(width=128, depth=2, clip_denoised=True, clip_range=3.0)
        model.decode_steps = 4
    return HMARunConfig(preset=f"hma-tiny-{variant[:4]}", steps=3000, save_every=500, log_every=25,
                        optim=OptimConfig(batch_size=16, lr=5e-4, betas=(0.9, 0.95), weight_decay=0.01,
                                          warmup_steps=100, grad_clip=1.0, ema=False),
                        model=model)


def _base(variant: str) -> HMARunConfig:
    common = dict(d_model=256, num_layers=32, num_heads=8, window=12, n_action_tokens=64, per_domain_modulation=True,
                  previous_action=False, num_prompt_frames=4, domains=SCRIPTED)
    if variant == "discrete":
        model = HMAConfig(variant=variant, grid=16, vocab_size=2 ** 18, num_factored_vocabs=2, **common)
        optim = OptimConfig(batch_size=8, lr=1e-4, weight_decay=0.05, warmup_steps=500, grad_clip=1.0,
                            scheduler="constant_with_warmup", ema=False)
    else:
        model = HMAConfig(variant=variant, grid=32, latent_channels=4, patch_size=2, latent_scale=0.18215,
                          attn_drop=0.1, proj_drop=0.05, decode_steps=16,
                          diff_head=DiffusionHeadConfig(width=1024, depth=4), **common)
        optim = OptimConfig(batch_size=8, lr=2e-4, weight_decay=0.01, warmup_steps=500, grad_clip=10.0,
                            scheduler="constant_with_warmup", ema=False)
    return HMARunConfig(preset=f"hma-base-{variant[:4]}", steps=200_000, save_every=10_000, log_every=50,
                        optim=optim, model=model)


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "hma-tiny-disc": lambda: _tiny("discrete"),
    "hma-tiny-cont": lambda: _tiny("continuous"),
    "hma-base-disc": lambda: _base("discrete"),
    "hma-base-cont": lambda: _base("continuous"),
}
