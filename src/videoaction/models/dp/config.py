"""Diffusion Policy (CNN variant, "DP-C") configs and the presets ``dp-tiny`` (CPU) and ``dp-base`` (paper size).

Defaults follow Diffusion Policy's PushT image CNN recipe (``image_pusht_diffusion_policy_cnn.yaml``): observation
horizon 2, action horizon 16, execute 8, ResNet-18 (GroupNorm) + spatial softmax (32 keypoints -> 64 features) per
frame, 1-D conditional U-Net [512, 1024, 2048] with kernel 5, 8 groups, FiLM scale+bias, step embedding 128, DDPM with
100 train / 100 inference steps (squaredcos_cap_v2, epsilon, clip_sample), AdamW 1e-4 (0.95, 0.999) wd 1e-6, cosine
schedule with 500 warm-up steps, batch 64, EMA power 0.75, random crop 84 of 96.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from videoaction.config import DatasetConfig, FrameConfig, OptimConfig, RunConfig, aligned_padding


@dataclass
class DPConfig:
    """Model part of a DP-C run."""

    n_obs_steps: int = 2  # To: frames + proprio steps conditioning the policy (= dataset.frames.n_history)
    n_action_steps: int = 8  # Ta: actions executed per chunk, action_pred[:, To-1 : To-1+Ta]
    action_dim: int = 2
    state_dim: int = 2  # proprio dims (= dataset.state_dims); 0 = no proprio input
    obs_image_size: int = 96  # frame size the environment renders (observation spec only; any size is resized)
    # --- vision encoder: ResNet-18 with GroupNorm, spatial softmax head
    backbone_width: int = 64  # channels of the stem; 64 = ResNet-18 (layers: w, 2w, 4w, 8w)
    gn_group_size: int = 16  # GroupNorm groups = channels // gn_group_size (DP: channels // 16)
    num_keypoints: int = 32
    image_feature_dim: int = 64  # linear layer after the 2 * num_keypoints spatial-softmax coordinates
    share_rgb_model: bool = False  # several cameras: one encoder for all (True) or one per camera (DP's default)
    # --- 1-D conditional U-Net
    down_dims: tuple[int, ...] = (512, 1024, 2048)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 128
    cond_predict_scale: bool = True  # FiLM with scale and bias (False: bias only)
    # --- diffusion
    num_train_steps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # epsilon | sample
    clip_sample: bool = True
    sampler: str = "ddpm"  # default sampler at inference: ddpm | ddim
    num_inference_steps: int | None = None  # steps of `sampler`; None: num_train_steps for DDPM, ddim_steps for DDIM
    ddim_steps: int = 16
    ddim_eta: float = 0.0
    mask_padding: bool = False  # exclude padded steps from the loss (DP trains on edge-padded actions: False)


@dataclass
class DPRunConfig(RunConfig):
    family: str = "dp"
    model: DPConfig = field(default_factory=DPConfig)


def _dp_dataset(image_size: int, crop_ratio: float, state_dims: int = 2) -> DatasetConfig:
    # window of 16 steps: 2 observed (frames 0, 1), actions over all 16; DP's padding (To - 1, Ta - 1) = (1, 7)
    frames = FrameConfig(n_history=2, n_future=0, offset=0, stride=1, random_history=False)
    before, after = aligned_padding(frames, 16, first_action=frames.last_history, n_action_steps=8)
    return DatasetConfig(horizon=16, pad_before=before, pad_after=after, state_dims=state_dims, frames=frames,
                         image_size=image_size, crop_ratio=crop_ratio, val_ratio=0.02)


def dp_base() -> DPRunConfig:
    """Paper size: ResNet-18 (11.2 M) + U-Net [512, 1024, 2048] (~255 M); crop 84 of 96 as in DP."""
    return DPRunConfig(
        preset="dp-base", steps=200_000, save_every=10_000, log_every=50,
        dataset=_dp_dataset(image_size=84, crop_ratio=0.875),
        optim=OptimConfig(batch_size=64, lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, warmup_steps=500,
                          scheduler="cosine", grad_clip=0.0, ema=True, ema_power=0.75, ema_max=0.9999),
        model=DPConfig(),
    )


def dp_tiny() -> DPRunConfig:
    """CPU size: ResNet-18 layout at width 16, U-Net [64, 128, 256], 64 px inputs (crop 84 of 96, resized)."""
    return DPRunConfig(
        preset="dp-tiny", steps=2000, save_every=500, log_every=10,
        dataset=_dp_dataset(image_size=64, crop_ratio=0.875),
        optim=OptimConfig(batch_size=32, lr=3e-4, betas=(0.95, 0.999), weight_decay=1e-6, warmup_steps=100,
                          scheduler="cosine", grad_clip=1.0, ema=True, ema_power=0.75, ema_max=0.9999),
        model=DPConfig(backbone_width=16, down_dims=(64, 128, 256), step_embed_dim=64),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {"dp-tiny": dp_tiny, "dp-base": dp_base}


def dp_tiny_image_only() -> DPRunConfig:
    """``dp-tiny`` without agent_pos: frames alone (``dp-tiny`` is PushT's standard image + agent_pos)."""
    cfg = dp_tiny()
    cfg.preset = "dp-tiny-image-only"
    cfg.dataset.state_key, cfg.dataset.state_dims = None, None
    cfg.model.state_dim = 0
    return cfg


def dp_tiny_metaworld() -> DPRunConfig:
    """``dp-tiny`` on Metaworld's standard observation: camera image + 4-d proprio (hand position, gripper). One task
    per model: DP-C has no instruction input."""
    cfg = dp_tiny()
    cfg.preset = "dp-tiny-metaworld"
    cfg.dataset.state_dims = 4
    cfg.model.state_dim = 4
    return cfg


PRESETS.update({"dp-tiny-image-only": dp_tiny_image_only, "dp-tiny-metaworld": dp_tiny_metaworld})
