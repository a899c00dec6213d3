"""Diffusion Policy, CNN variant (DP-C): image + proprio history -> denoised 16-step action chunk.

Training (``compute_loss``): normalise the action window and the observed proprio, encode the To frames with the
shared ResNet-18-GN + spatial-softmax encoder, concatenate [image features, proprio] per frame into one global
condition, add DDPM noise at a random step to the whole normalised action sequence and regress the noise (MSE).
Inference (``predict_action``): DDPM (100 steps) or DDIM (e.g. 16 steps) from Gaussian noise; returns the
un-normalised chunk ``action_pred`` (B, horizon, A) and DP's executed slice ``action = action_pred[:, To-1 : To-1+Ta]``.

Several cameras (``dataset.image_keys``): as Diffusion Policy's multi-image observation encoder, each camera has its
own encoder (``obs_encoder`` for the main camera, ``camera_encoders[k-1]`` for camera k; one shared encoder with
``model.share_rgb_model``) and the features per step are ``[camera 0, camera 1, ..., proprio]``. One camera builds
exactly the single-camera modules.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from torch import nn

from videoaction.config import camera_keys
from videoaction.errors import ConfigError, VideoActionError
from videoaction.models.base import LossOutput, Policy
from videoaction.models.observation import HistoryLayout
from videoaction.models.dp.config import DPConfig, DPRunConfig
from videoaction.models.dp.unet1d import ConditionalUnet1D
from videoaction.models.dp.vision import ImageEncoder

SAMPLERS = ("ddpm", "ddim")


class DiffusionPolicy(Policy):
    """DP-C built entirely from a :class:`DPRunConfig` (so ``from_checkpoint`` / ``load_policy`` work)."""

    family = "dp"
    config_class = DPRunConfig

    def __init__(self, cfg: DPRunConfig):
        super().__init__(cfg)
        m: DPConfig = cfg.model
        _validate(cfg)
        self.mcfg = m
        self.cameras = camera_keys(cfg.dataset)  # observation keys, main camera first
        self.obs_encoder = ImageEncoder(m.backbone_width, m.gn_group_size, m.num_keypoints, m.image_feature_dim)
        if len(self.cameras) > 1 and not m.share_rgb_model:
            self.camera_encoders = nn.ModuleList(
                ImageEncoder(m.backbone_width, m.gn_group_size, m.num_keypoints, m.image_feature_dim)
                for _ in self.cameras[1:])
        self.global_cond_dim = m.n_obs_steps * (len(self.cameras) * m.image_feature_dim + m.state_dim)
        self.model = ConditionalUnet1D(m.action_dim, self.global_cond_dim, m.step_embed_dim, m.down_dims,
                                       m.kernel_size, m.n_groups, m.cond_predict_scale)
        self._layout = HistoryLayout.from_frames(cfg.dataset.frames, state_dim=m.state_dim, cameras=self.cameras)
        self.normalizer = self.build_normalizer(m.action_dim, m.state_dim)  # identity until set_normalizer
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=m.num_train_steps, beta_schedule=m.beta_schedule,
                                             clip_sample=m.clip_sample, prediction_type=m.prediction_type,
                                             variance_type="fixed_small")
        self._samplers: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ properties
    @property
    def action_dim(self) -> int:
        return self.mcfg.action_dim

    @property
    def n_action_steps(self) -> int:
        return self.mcfg.n_action_steps

    @property
    def horizon(self) -> int:
        return self.cfg.dataset.horizon

    @property
    def history_layout(self) -> HistoryLayout:
        """The last ``n_obs_steps`` observations, all of them (positions 0 .. To - 1)."""
        return self._layout

    @property
    def action_chunk_start(self) -> int:
        return 0  # the chunk covers the whole window; execution starts at To - 1 (the newest observation)

    def metadata(self) -> dict:
        meta = super().metadata()
        meta.update(sampler=self.mcfg.sampler, image_size=self.cfg.dataset.image_size)
        return meta

    # ------------------------------------------------------------------------------------------ conditioning
    def _encoder(self, k: int) -> ImageEncoder:
        return self.obs_encoder if k == 0 or self.mcfg.share_rgb_model else self.camera_encoders[k - 1]

    def _global_cond(self, hist: Mapping[str, Any]) -> torch.Tensor:
        """hist: each camera (B, To, 3, S, S) in [-1, 1], ``state`` (B, To, Ds) normalised
        -> (B, To * (n_cameras * feat + Ds))."""
        feats = []
        for k, cam in enumerate(self.cameras):
            image = hist[cam]
            f = self._encoder(k)(rearrange(image, "b t c h w -> (b t) c h w"))
            feats.append(rearrange(f, "(b t) f -> b t f", b=image.shape[0]))  # (B, To, feat)
        feat = torch.cat(feats, dim=-1)  # (B, To, n_cameras * feat): cameras in config order
        state = hist.get("state")
        if state is not None:
            feat = torch.cat([feat, state.to(feat.dtype)], dim=-1)  # DP order per step: [image, agent_pos]
        return rearrange(feat, "b t f -> b (t f)")

    # ------------------------------------------------------------------------------------------ training
    def compile_targets(self) -> list[nn.Module]:
        """The noise-prediction U-Net (the vision encoder trains too, but its input sizes are fixed by the data)."""
        return [self.model]

    def compute_loss(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
                     mode: str | None = None) -> LossOutput:
        m = self.mcfg
        if mode is not None:
            raise VideoActionError(f"DP has no training modes (asked for {mode!r}): it trains on action windows only")
        if "image" not in batch:
            raise VideoActionError(f"DP batch needs 'image' (B, {m.n_obs_steps}, 3, S, S); keys: {sorted(batch)}")
        device = self.device
        hist = self.batch_history_inputs(batch)
        action = batch["action"].to(device)
        for cam in self.cameras:
            image = hist[cam]
            if image.ndim != 5 or image.shape[1] != m.n_obs_steps:
                raise VideoActionError(f"DP batch {cam!r}: expected (B, {m.n_obs_steps}, 3, S, S), "
                                       f"got {tuple(image.shape)}")
        if action.ndim != 3 or action.shape[1:] != (self.horizon, m.action_dim):
            raise VideoActionError(f"DP batch 'action': expected (B, {self.horizon}, {m.action_dim}), "
                                   f"got {tuple(action.shape)}")
        b = action.shape[0]
        naction = self.normalizer.normalize("action", action)  # (B, T, A) in [-1, 1]
        cond = self._global_cond(hist)

        gen_device = generator.device if generator is not None else device
        noise = randn_tensor(naction.shape, generator=generator, device=device, dtype=naction.dtype)
        steps = torch.randint(0, m.num_train_steps, (b,), generator=generator, device=gen_device).to(device)
        noisy = self.noise_scheduler.add_noise(naction, noise, steps)
        pred = self.model(noisy, steps, cond)
        target = noise if m.prediction_type == "epsilon" else naction
        err = F.mse_loss(pred, target, reduction="none").mean(-1)  # (B, T)
        if m.mask_padding and "is_pad" in batch:
            keep = (~batch["is_pad"].to(device)).to(err.dtype)
            loss = (err * keep).sum() / keep.sum().clamp_min(1.0)
        else:
            loss = err.mean()
        return LossOutput(loss, {"action_loss": float(loss.detach())})

    # ------------------------------------------------------------------------------------------ inference
    def _scheduler(self, sampler: str):
        """The sampling scheduler; its x0 clipping (``clip_sample``) bound is the training actions' range in
        normalised units (1 for min-max, the largest |z-score| for mean-std; the max over action dims)."""
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown DP sampler {sampler!r}; expected one of {SAMPLERS}")
        m = self.mcfg
        bound = round(float(self.action_clip_bound().max()), 6)
        key = (sampler, bound)
        if key not in self._samplers:
            common = dict(num_train_timesteps=m.num_train_steps, beta_schedule=m.beta_schedule,
                          clip_sample=m.clip_sample, clip_sample_range=bound, prediction_type=m.prediction_type)
            self._samplers[key] = (DDPMScheduler(**common, variance_type="fixed_small") if sampler == "ddpm" else
                                   DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0))
        return self._samplers[key]

    def predict_action(self, obs: Mapping[str, Any], sampler: str | None = None, num_steps: int | None = None,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """obs ``image`` uint8 (B, To, H, W, 3), ``state`` (B, To, Ds) -> un-normalised ``action`` (B, Ta, A),
        ``action_pred`` (B, horizon, A). ``sampler`` / ``num_steps`` override the config for this call."""
        m = self.mcfg
        sampler = sampler or m.sampler
        if num_steps is None:  # the config's step count goes with the config's sampler; else that sampler's default
            default = m.num_train_steps if sampler == "ddpm" else m.ddim_steps
            num_steps = m.num_inference_steps if (m.num_inference_steps and sampler == m.sampler) else default
        if not 1 <= num_steps <= m.num_train_steps:
            raise ConfigError(f"DP num_steps must be in [1, {m.num_train_steps}], got {num_steps}")
        scheduler = self._scheduler(sampler)
        hist = self.history_inputs(obs)
        b = hist["image"].shape[0]
        cond = self._global_cond(hist)
        traj = randn_tensor((b, self.horizon, m.action_dim), generator=generator, device=self.device, dtype=cond.dtype)
        scheduler.set_timesteps(num_steps, device=self.device)
        extra = {"eta": m.ddim_eta} if sampler == "ddim" else {}
        for t in scheduler.timesteps:
            out = self.model(traj, t, cond)
            traj = scheduler.step(out, t, traj, generator=generator, **extra).prev_sample
        action_pred = self.normalizer.unnormalize("action", traj)  # (B, T, A)
        start = self.execute_from  # To - 1
        return {"action": action_pred[:, start: start + m.n_action_steps], "action_pred": action_pred}


def _validate(cfg: DPRunConfig) -> None:
    m, d = cfg.model, cfg.dataset
    if not isinstance(m, DPConfig):
        raise ConfigError(f"DP run config: 'model' must be a DPConfig, found {type(m).__name__}")
    if d.frames.n_history != m.n_obs_steps or d.frames.n_future != 0:
        raise ConfigError(f"DP run config: dataset.frames must give the {m.n_obs_steps} observed frames "
                          f"(n_history={m.n_obs_steps}, n_future=0), found n_history={d.frames.n_history}, "
                          f"n_future={d.frames.n_future}")
    if d.frames.last_history + m.n_action_steps > d.horizon:  # executed actions start at the newest frame
        raise ConfigError(f"DP run config: the newest observed frame (window position {d.frames.last_history}) + "
                          f"n_action_steps {m.n_action_steps} exceeds dataset.horizon={d.horizon}")
    factor = 2 ** (len(m.down_dims) - 1)
    if d.horizon % factor:
        raise ConfigError(f"DP run config: dataset.horizon={d.horizon} must be divisible by {factor} "
                          f"(2 ** (len(model.down_dims) - 1))")
    if any(c % m.n_groups for c in m.down_dims):
        raise ConfigError(f"DP run config: every model.down_dims {list(m.down_dims)} must be divisible by "
                          f"model.n_groups={m.n_groups}")
    if m.state_dim and d.state_key is None:
        raise ConfigError(f"DP run config: model.state_dim={m.state_dim} but dataset.state_key is None "
                          f"(set model.state_dim 0 to train without proprio)")
    if m.state_dim and d.state_dims is not None and d.state_dims != m.state_dim:
        raise ConfigError(f"DP run config: model.state_dim={m.state_dim} != dataset.state_dims={d.state_dims}")
    if m.sampler not in SAMPLERS:
        raise ConfigError(f"DP run config: model.sampler must be one of {SAMPLERS}, found {m.sampler!r}")
    if m.prediction_type not in ("epsilon", "sample"):
        raise ConfigError(f"DP run config: model.prediction_type must be 'epsilon' or 'sample', found {m.prediction_type!r}")
