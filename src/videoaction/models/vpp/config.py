"""VPP configs: text-guided video predictor (stage 1) and the policy on its predictive features (stage 2).

Numbers follow the reference (``../shared/reference/vpp.md``): SVD spatio-temporal UNet with 8 input channels (noisy
latents + clean frame-0 latent), CLIP text tokens (max length 20) duplicated to the 1024-wide cross-attention, added
time ids (fps, motion bucket, noise-aug), EDM v-preconditioning; stage 2: one truncated UNet pass at the highest-noise
step of a 20-step schedule (up blocks 0..1), Video Former (16 frames x 14 queries x 384) and an MDT-style
encoder-decoder diffusion transformer (4 + 4 layers, 384 wide, EDM with sigma_data 0.5, 10-step DDIM) predicting 10
actions.

Presets: ``vpp-tiny-video`` / ``vpp-tiny`` (CPU: 32 px, small VAE and UNet of the same diffusers classes, learned
instruction tokens) and ``vpp-base-video`` / ``vpp-base`` (the released ``svd-robot`` diffusers layout: set
``--model.svd-path`` and ``--model.text.path``). Stage 2 starts from stage 1 with ``--init``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from videoaction.config import DatasetConfig, FrameConfig, OptimConfig, RunConfig
from videoaction.errors import ConfigError

STAGES = ("video", "policy")
TEXT_KINDS = ("clip", "task_tokens", "none")


@dataclass
class VAEConfig:
    """``AutoencoderKLTemporalDecoder`` (SVD's VAE); filled from ``svd_path``/vae when that is set."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    scaling_factor: float = 0.18215
    train: bool = False  # tiny presets: learn the autoencoder beside the TVP (reconstruction + KL)
    kl_weight: float = 1e-4
    train_frames: int = 2  # frames per sample the autoencoder loss sees (its decoder costs most on a CPU)


@dataclass
class UNetConfig:
    """``UNetSpatioTemporalConditionModel`` arguments (SVD img2vid defaults); filled from ``svd_path``/unet."""

    in_channels: int = 8
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",)
    up_block_types: tuple[str, ...] = ("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    num_attention_heads: tuple[int, ...] = (5, 10, 20, 20)
    cross_attention_dim: int = 1024
    addition_time_embed_dim: int = 256
    transformer_layers_per_block: int = 1
    num_frames: int = 25
    sample_size: int = 96


@dataclass
class TextConfig:
    """Instruction tokens for the UNet's cross-attention (and the pooled goal vector of stage 2).

    ``clip``: HF ``CLIPTextModelWithProjection`` from the local ``path`` (frozen, out of the state dict):
    ``last_hidden_state`` (B, max_length, width) as tokens, ``text_embeds`` as the goal. ``task_tokens``: learned
    (max_length, dim) tokens per instruction of the training store (CPU presets). ``none``: zeros."""

    kind: str = "clip"
    path: str | None = None
    max_length: int = 20
    dim: int = 512  # token width (clip: taken from the model)
    goal_dim: int = 512  # pooled goal width (clip: projection_dim; task_tokens: = dim)
    pos_encoding: bool = False  # fixed 1-D sin-cos added to the tokens (svd-robot: on, CALVIN model: off)
    vocabulary: tuple[str, ...] = ()


@dataclass
class FeatureConfig:
    """Stage-2 predictive features: one truncated UNet pass (settings must match stage 1's conditioning)."""

    schedule_steps: int = 20  # set_timesteps(20); only the first (highest-noise) step is run
    step_index: int = 0
    up_block: int = 1  # stop after this up block (extract_layer_idx)
    all_layers: bool = True  # concatenate up blocks 0..up_block (nearest-upsampled), else only up_block


@dataclass
class VideoFormerConfig:
    dim: int = 384
    hidden: int = 768  # input MLP feat -> hidden -> dim
    queries: int = 14  # per frame
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    temporal_attention: bool = True  # False: the reference's '2d' variant
    # the reference's temporal attention (fused qkv and output projection with biases, head width dim // heads, no
    # pre-norm), so converted dp-calvin weights reproduce its outputs (docs/vpp.md "Converting dp-calvin")
    reference_compat: bool = False


@dataclass
class ActionHeadConfig:
    """MDT-style encoder-decoder diffusion transformer with EDM preconditioning."""

    dim: int = 384
    encoder_depth: int = 4
    decoder_depth: int = 4
    heads: int = 8
    mlp_ratio: float = 4.0
    attn_dropout: float = 0.3
    resid_dropout: float = 0.1
    goal_hidden: int = 768
    causal_self_attention: bool = True  # action tokens among themselves (MDT); cross-attention is never causal
    # the reference's network (MDT DiffusionTransformer) with its defects: causal cross-attention, AdaLN without
    # "1 +" nor zero-init, no positions, bias-free LayerNorms / MLPs, so converted dp-calvin weights reproduce its
    # outputs (docs/vpp.md "Converting dp-calvin"); False: the fixed head
    reference_compat: bool = False
    sigma_data: float = 0.5
    train_sigma_min: float = 0.001
    train_sigma_max: float = 80.0
    sigma_loc: float = -0.6931471805599453  # log-logistic training sigma: loc ln 0.5, scale 0.5
    sigma_scale: float = 0.5
    # --- sampling (explicit evaluation parameters; predict_action can override them per call)
    sampler: str = "ddim"  # ddim (DPM-Solver-1) | dpmpp_2m
    sample_steps: int = 10
    sample_sigma_min: float = 1.0  # the reference evaluates with 1.0 (trains with 0.001)
    sample_sigma_max: float = 80.0


@dataclass
class VPPConfig:
    stage: str = "video"  # video: train the TVP; policy: frozen TVP features -> actions
    svd_path: str | None = None  # diffusers SVD folder (unet/, vae/): svd-robot, svd-robot-calvin-ft
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextConfig = field(default_factory=TextConfig)
    num_frames: int = 16  # predicted frames (frame 0 = the observation)
    obs_image_size: int = 256  # raw frame size of the observation spec (any size is resized to image_size)
    # --- SVD micro-conditioning, identical in training, sampling and feature extraction (vpp.md §11.2)
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.0
    latent_sample: bool = False  # VAE posterior sample (reference precompute) instead of its mode
    # --- stage-1 objective (EDM, v-preconditioning, sigma_data 1) and sampling
    p_mean: float = 0.7
    p_std: float = 1.6
    text_drop_prob: float = 0.05
    sample_steps: int = 30
    guidance_min: float = 1.0
    guidance_max: float = 7.5
    sigma_min: float = 0.002  # EulerDiscreteScheduler of SVD (Karras sigmas)
    sigma_max: float = 700.0
    # --- stage 2
    features: FeatureConfig = field(default_factory=FeatureConfig)
    former: VideoFormerConfig = field(default_factory=VideoFormerConfig)
    head: ActionHeadConfig = field(default_factory=ActionHeadConfig)
    action_dim: int = 7
    n_actions: int = 10
    n_action_steps: int = 10
    # a folder from `videoaction convert --kind vpp-dp-calvin`: stage 2 takes its Video Former and action head
    # (configs and weights, reference_compat) instead of building fresh ones
    action_weights: str | None = None

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"model.stage must be one of {STAGES}, found {self.stage!r}")
        if self.text.kind not in TEXT_KINDS:
            raise ConfigError(f"model.text.kind must be one of {TEXT_KINDS}, found {self.text.kind!r}")
        if self.unet.in_channels != 2 * self.vae.latent_channels or self.unet.out_channels != self.vae.latent_channels:
            raise ConfigError(f"model.unet: in/out channels {self.unet.in_channels}/{self.unet.out_channels} must be "
                              f"2 x / 1 x the VAE's {self.vae.latent_channels} latent channels (frame-0 concat)")
        if self.unet.cross_attention_dim % self.text.dim and self.text.kind != "clip":
            raise ConfigError(f"model.unet.cross_attention_dim {self.unet.cross_attention_dim} is not a multiple of "
                              f"model.text.dim {self.text.dim}")
        if not 0 <= self.features.up_block < len(self.unet.up_block_types):
            raise ConfigError(f"model.features.up_block {self.features.up_block} outside the UNet's "
                              f"{len(self.unet.up_block_types)} up blocks")
        if self.n_action_steps > self.n_actions:
            raise ConfigError(f"model.n_action_steps {self.n_action_steps} > model.n_actions {self.n_actions}")
        if self.head.sampler not in ("ddim", "dpmpp_2m"):
            raise ConfigError(f"model.head.sampler must be ddim or dpmpp_2m, found {self.head.sampler!r}")


@dataclass
class VPPRunConfig(RunConfig):
    family: str = "vpp"
    model: VPPConfig = field(default_factory=VPPConfig)


def _video_dataset(image_size: int, frames: int, stride: int, **kw) -> DatasetConfig:
    """Stage 1: ``frames`` frames at ``stride`` from the window start, clamped at the episode end."""
    horizon = 1 + (frames - 1) * stride
    return DatasetConfig(horizon=horizon, pad_before=0, pad_after=horizon - 1, state_key=None, state_dims=None,
                         language_key="language", image_size=image_size,
                         frames=FrameConfig(n_history=1, n_future=frames - 1, offset=0, stride=stride), **kw)


def _policy_dataset(image_size: int, n_actions: int, **kw) -> DatasetConfig:
    """Stage 2: the current frame and the next ``n_actions`` actions (edge-padded at the episode end)."""
    return DatasetConfig(horizon=n_actions, pad_before=0, pad_after=n_actions - 1, state_key=None, state_dims=None,
                         language_key="language", image_size=image_size,
                         frames=FrameConfig(n_history=1, n_future=0, offset=0, stride=1), **kw)


def _tiny_model(stage: str) -> VPPConfig:
    return VPPConfig(
        stage=stage, num_frames=8, obs_image_size=96,
        vae=VAEConfig(block_out_channels=(32, 32, 64), layers_per_block=1, scaling_factor=1.0, train=True),
        unet=UNetConfig(block_out_channels=(32, 64, 64),
                        down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                                          "DownBlockSpatioTemporal"),
                        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                                        "CrossAttnUpBlockSpatioTemporal"),
                        layers_per_block=1, num_attention_heads=(2, 4, 4), cross_attention_dim=64,
                        addition_time_embed_dim=8, num_frames=8, sample_size=8),
        text=TextConfig(kind="task_tokens", dim=32, goal_dim=32, max_length=8, pos_encoding=True),
        sample_steps=12, guidance_max=2.0,
        former=VideoFormerConfig(dim=64, hidden=128, queries=4, depth=2, heads=4, dim_head=16),
        head=ActionHeadConfig(dim=64, encoder_depth=2, decoder_depth=2, heads=4, attn_dropout=0.0,
                              resid_dropout=0.0, goal_hidden=128),
        action_dim=2, n_actions=8, n_action_steps=8)


def vpp_tiny_video() -> VPPRunConfig:
    """CPU stage 1: 32 px, 8 frames at stride 2, VAE (stride 4 -> 8 x 8 latents, trained alongside), 3-level UNet."""
    return VPPRunConfig(
        preset="vpp-tiny-video", steps=2000, save_every=500, log_every=10,
        dataset=_video_dataset(32, 8, 2),
        optim=OptimConfig(batch_size=8, lr=3e-4, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=50,
                          scheduler="constant_with_warmup", grad_clip=1.0, ema=True),
        model=_tiny_model("video"))


def vpp_tiny() -> VPPRunConfig:
    """CPU stage 2 on the frozen ``vpp-tiny-video`` (start from it with ``--init``)."""
    return VPPRunConfig(
        preset="vpp-tiny", steps=2000, save_every=500, log_every=10,
        dataset=_policy_dataset(32, 8),
        optim=OptimConfig(batch_size=32, lr=3e-4, betas=(0.9, 0.9), weight_decay=0.05, warmup_steps=50,
                          scheduler="cosine", grad_clip=1.0, ema=True, ema_max=0.999),
        model=_tiny_model("policy"))


def vpp_base_video() -> VPPRunConfig:
    """Stage 1 at paper size: the SVD folder (``--model.svd-path``), CLIP ViT-B/32 text (``--model.text.path``),
    256 px, 16 frames at stride 2, lr 5e-6 constant, batch 48 (6 per GPU x 8)."""
    return VPPRunConfig(
        preset="vpp-base-video", steps=100_000, save_every=20_000, log_every=50,
        dataset=_video_dataset(256, 16, 2, val_ratio=0.02),
        optim=OptimConfig(batch_size=6, lr=5e-6, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=0,
                          scheduler="constant", grad_clip=1.0, mixed_precision="fp16", ema=False),
        model=VPPConfig(stage="video"))


def vpp_base() -> VPPRunConfig:
    """Stage 2 at paper size (CALVIN recipe): lr 1e-4, betas (0.9, 0.9), wd 0.05, 50k steps, EMA 0.9999 (saved)."""
    return VPPRunConfig(
        preset="vpp-base", steps=50_000, save_every=5_000, log_every=50,
        dataset=_policy_dataset(256, 10, val_ratio=0.02, action_norm="identity"),
        optim=OptimConfig(batch_size=32, lr=1e-4, betas=(0.9, 0.9), weight_decay=0.05, warmup_steps=1000,
                          scheduler="cosine", grad_clip=0.0, mixed_precision="fp16", ema=True, ema_max=0.9999),
        model=VPPConfig(stage="policy", fps=7))


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "vpp-tiny-video": vpp_tiny_video,
    "vpp-tiny": vpp_tiny,
    "vpp-base-video": vpp_base_video,
    "vpp-base": vpp_base,
}
