"""Diffusion Policy, CNN variant (DP-C): image + proprio history -> denoised 16-step action chunk.

Training (``compute_loss``): normalise the action window and the observed proprio, encode the To frames with the
shared ResNet-18-GN + spatial-softmax encoder, concatenate [image features, proprio] per frame into one global
condition, add DDPM noise at a random step to the whole normalised action sequence and regress the noise (MSE).
Inference (``predict_action``): DDPM (100 steps) or DDIM (e.g. 16 steps) from Gaussian noise; returns the
un-normalised chunk ``action_pred`` (B, horizon, A) and DP's executed slice ``action = action_pred[:, To-1 : To-1+Ta]``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from videoaction.data.errors import ConfigError, VideoActionError
from videoaction.data.normalizer import Normalizer
from videoaction.data.transforms import preprocess_frames
from videoaction.models.base import LossOutput, ObsSpec, Policy
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
        self.obs_encoder = ImageEncoder(m.backbone_width, m.gn_group_size, m.num_keypoints, m.image_feature_dim)
        self.global_cond_dim = m.n_obs_steps * (m.image_feature_dim + m.state_dim)
        self.model = ConditionalUnet1D(m.action_dim, self.global_cond_dim, m.step_embed_dim, m.down_dims,
                                       m.kernel_size, m.n_groups, m.cond_predict_scale)
        dims = {"action": m.action_dim}
        modes = {"action": cfg.dataset.action_norm}
        if m.state_dim:
            dims["state"], modes["state"] = m.state_dim, cfg.dataset.state_norm
        self.normalizer = Normalizer(dims, modes)  # unfitted = identity until set_normalizer
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

    def observation_spec(self) -> dict[str, ObsSpec]:
        m = self.mcfg
        spec = {"image": ObsSpec((m.n_obs_steps, m.obs_image_size, m.obs_image_size, 3), "uint8")}
        if m.state_dim:
            spec["state"] = ObsSpec((m.n_obs_steps, m.state_dim), "float32")
        return spec

    def metadata(self) -> dict:
        meta = super().metadata()
        meta.update(sampler=self.mcfg.sampler, image_size=self.cfg.dataset.image_size)
        return meta

    # ------------------------------------------------------------------------------------------ conditioning
    def _global_cond(self, image: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """image (B, To, 3, S, S) in [-1, 1], state (B, To, Ds) normalised -> (B, To * (feat + Ds))."""
        b, to = image.shape[:2]
        feat = self.obs_encoder(image.reshape(b * to, *image.shape[2:])).reshape(b, to, -1)  # (B, To, feat)
        if state is not None:
            feat = torch.cat([feat, state.to(feat.dtype)], dim=-1)  # DP order per step: [image, agent_pos]
        return feat.reshape(b, -1)

    # ------------------------------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> LossOutput:
        m = self.mcfg
        if "image" not in batch:
            raise VideoActionError(f"DP batch needs 'image' (B, {m.n_obs_steps}, 3, S, S); keys: {sorted(batch)}")
        device = self.device
        image = batch["image"].to(device)
        action = batch["action"].to(device)
        if image.ndim != 5 or image.shape[1] != m.n_obs_steps:
            raise VideoActionError(f"DP batch 'image': expected (B, {m.n_obs_steps}, 3, S, S), got {tuple(image.shape)}")
        if action.ndim != 3 or action.shape[1:] != (self.horizon, m.action_dim):
            raise VideoActionError(f"DP batch 'action': expected (B, {self.horizon}, {m.action_dim}), "
                                   f"got {tuple(action.shape)}")
        b = action.shape[0]
        state = None
        if m.state_dim:
            if "state" not in batch:
                raise VideoActionError(f"DP batch needs 'state' (B, T, {m.state_dim}); keys: {sorted(batch)}")
            full = batch["state"].to(device)
            if "frame_index" in batch:  # proprio at the observed frames' window positions
                idx = batch["frame_index"].to(device).long()[..., None].expand(-1, -1, full.shape[-1])
                obs_state = torch.gather(full, 1, idx)
            else:
                obs_state = full[:, : m.n_obs_steps]
            state = self.normalizer.normalize("state", obs_state)
        naction = self.normalizer.normalize("action", action)  # (B, T, A) in [-1, 1]
        cond = self._global_cond(image, state)

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
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown DP sampler {sampler!r}; expected one of {SAMPLERS}")
        if sampler == "ddpm":
            return self.noise_scheduler
        if "ddim" not in self._samplers:
            m = self.mcfg
            self._samplers["ddim"] = DDIMScheduler(num_train_timesteps=m.num_train_steps, beta_schedule=m.beta_schedule,
                                                   clip_sample=m.clip_sample, prediction_type=m.prediction_type,
                                                   set_alpha_to_one=True, steps_offset=0)
        return self._samplers["ddim"]

    def _prepare_obs(self, obs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = self.mcfg
        if "image" not in obs:
            raise VideoActionError(f"DP observation needs 'image' uint8 (B, {m.n_obs_steps}, H, W, 3); "
                                   f"keys: {sorted(obs)}")
        img = obs["image"]
        img = img if isinstance(img, torch.Tensor) else torch.from_numpy(np.asarray(img))
        if img.ndim != 5 or img.shape[1] != m.n_obs_steps or img.shape[-1] != 3:
            raise VideoActionError(f"DP observation 'image': expected (B, {m.n_obs_steps}, H, W, 3) uint8, "
                                   f"got {tuple(img.shape)} {img.dtype}")
        image = preprocess_frames(img.to(self.device), self.cfg.dataset)  # (B, To, 3, S, S) on the model device
        state = None
        if m.state_dim:
            if "state" not in obs:
                raise VideoActionError(f"DP observation needs 'state' (B, {m.n_obs_steps}, {m.state_dim}); "
                                       f"keys: {sorted(obs)}")
            st = torch.as_tensor(np.asarray(obs["state"]) if not isinstance(obs["state"], torch.Tensor) else obs["state"])
            if st.ndim != 3 or st.shape[1] != m.n_obs_steps or st.shape[0] != image.shape[0] or st.shape[2] < m.state_dim:
                raise VideoActionError(f"DP observation 'state': expected (B={image.shape[0]}, {m.n_obs_steps}, "
                                       f">={m.state_dim}), got {tuple(st.shape)}")
            st = st[..., : m.state_dim].to(self.device, torch.float32)  # first state_dims dims, as in training
            state = self.normalizer.normalize("state", st)
        return image, state

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
        image, state = self._prepare_obs(obs)
        b = image.shape[0]
        cond = self._global_cond(image, state)
        traj = randn_tensor((b, self.horizon, m.action_dim), generator=generator, device=self.device, dtype=cond.dtype)
        scheduler.set_timesteps(num_steps, device=self.device)
        extra = {"eta": m.ddim_eta} if sampler == "ddim" else {}
        for t in scheduler.timesteps:
            out = self.model(traj, t, cond)
            traj = scheduler.step(out, t, traj, generator=generator, **extra).prev_sample
        action_pred = self.normalizer.unnormalize("action", traj)  # (B, T, A)
        start = m.n_obs_steps - 1
        return {"action": action_pred[:, start: start + m.n_action_steps], "action_pred": action_pred}


def _validate(cfg: DPRunConfig) -> None:
    m, d = cfg.model, cfg.dataset
    if not isinstance(m, DPConfig):
        raise ConfigError(f"DP run config: 'model' must be a DPConfig, found {type(m).__name__}")
    if d.frames.n_history != m.n_obs_steps or d.frames.n_future != 0:
        raise ConfigError(f"DP run config: dataset.frames must give the {m.n_obs_steps} observed frames "
                          f"(n_history={m.n_obs_steps}, n_future=0), found n_history={d.frames.n_history}, "
                          f"n_future={d.frames.n_future}")
    if m.n_obs_steps - 1 + m.n_action_steps > d.horizon:
        raise ConfigError(f"DP run config: n_obs_steps - 1 + n_action_steps = {m.n_obs_steps - 1 + m.n_action_steps} "
                          f"exceeds dataset.horizon={d.horizon}")
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
