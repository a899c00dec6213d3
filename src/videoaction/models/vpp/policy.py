"""``VPPPolicy``: Video Prediction Policy, both stages in one model family (``model.stage``).

* ``stage="video"`` (stage 1, the TVP): :meth:`compute_loss` is the EDM loss of the text-guided video predictor on
  the window's ``num_frames`` frames (+ the autoencoder's loss when the tiny presets train it);
  :meth:`predict_video` samples a video from one frame and an instruction with classifier-free guidance.
* ``stage="policy"`` (stage 2): the TVP and the text tokens are frozen; one truncated UNet pass gives predictive
  features of every predicted frame, the Video Former compresses them, the diffusion-transformer head denoises the
  action chunk. :meth:`predict_action` takes the current frame (``T_obs = 1``) and the instruction.
* Several cameras (``dataset.image_keys``, e.g. CALVIN's static + gripper): as the reference, every camera's frame
  goes through the same frozen UNet pass (cameras stacked on the batch, the instruction repeated per camera) and the
  per-frame feature tokens are joined on the token axis in camera order (main camera first) before the one Video
  Former: (B, F, n_cameras * N, C). No camera adds a parameter, so the weights' keys and shapes do not depend on the
  camera count. Stage 1 trains on the main camera (``image``) only.

Stage 2 starts from a stage-1 checkpoint with ``--init``; the TVP settings (UNet / VAE layout, text recipe, fps,
motion bucket, noise-aug, frames) must equal the checkpoint's, which is checked when the policy is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from einops import rearrange

from videoaction.config import camera_keys, camera_latent_key, to_dict
from videoaction.data.normalizer import Normalizer
from videoaction.data.transforms import preprocess_frames
from videoaction.errors import ConfigError, VideoActionError
from videoaction.models.base import LossOutput, Policy
from videoaction.models.observation import HistoryLayout
from videoaction.models.vpp.action_head import ActionHead
from videoaction.models.vpp.config import VPPRunConfig
from videoaction.models.vpp.convert_dp import adopt_converted
from videoaction.models.vpp.features import extract_features, feature_layout
from videoaction.models.vpp.loading import build_unet, build_vae, load_svd
from videoaction.models.vpp.text_tokens import TextTokens, text_dropout
from videoaction.models.vpp.tvp import TVP
from videoaction.models.vpp.video_former import VideoFormer

# model-config fields that define the frozen TVP and its conditioning (identical in stage 1 and stage 2)
TVP_FIELDS = ("vae", "unet", "text", "num_frames", "fps", "motion_bucket_id", "noise_aug_strength", "latent_sample")


class VPPPolicy(Policy):
    """Example::

        policy = load_policy("runs/vpp/checkpoints/latest")
        policy.predict_action({"image": frame_uint8, "language": ["open the drawer"]})["action"]  # (B, 10, A)
        policy.predict_action(obs, steps=10, sigma_min=1.0, sampler="ddim")                     # explicit sampler
        policy.predict_video(frames_uint8, ["open the drawer"], guidance_max=7.5)["frames"]      # stage-1 model
    """

    family = "vpp"
    config_class = VPPRunConfig

    def __init__(self, cfg: VPPRunConfig, load_pretrained: bool = True):
        """``load_pretrained=False`` (checkpoint loading): build every module from the config alone (no SVD
        folder, no --init checkpoint needed); the weights follow from the checkpoint."""
        super().__init__(cfg)
        m, ds = cfg.model, cfg.dataset
        m.validate()
        if m.text.kind == "task_tokens" and not m.text.vocabulary:
            m.text.vocabulary = _vocabulary(cfg)
        if cfg.init and m.stage == "policy" and load_pretrained:
            _check_same_tvp(cfg)
        if m.svd_path and load_pretrained:  # from a checkpoint, the config already holds the folder's layout
            unet, vae = load_svd(m.svd_path, m.unet, m.vae)
        else:
            unet, vae = build_unet(m.unet), build_vae(m.vae)
        self.tvp = TVP(m, unet, vae)
        self.text = TextTokens(m.text, m.unet.cross_attention_dim)
        stride = 2 ** (len(m.vae.block_out_channels) - 1)
        if ds.image_size % stride:
            raise ConfigError(f"dataset.image_size {ds.image_size} is not a multiple of the VAE stride {stride}")
        self.latent_size = ds.image_size // stride
        fr = ds.frames
        if m.stage == "video":
            if fr.n_history != 1 or fr.n_history + fr.n_future != m.num_frames:
                raise ConfigError(f"VPP stage 1: dataset.frames must give 1 history + {m.num_frames - 1} future "
                                  f"frames (model.num_frames), found {fr.n_history} + {fr.n_future}")
            self.tvp.vae.requires_grad_(m.vae.train)
        else:
            if fr.n_history != 1 or fr.n_future != 0 or fr.offset != 0:
                raise ConfigError(f"VPP stage 2: dataset.frames must give the current frame only (n_history 1, "
                                  f"n_future 0, offset 0), found {fr.n_history} + {fr.n_future} at {fr.offset}")
            if ds.horizon < m.n_actions:
                raise ConfigError(f"VPP stage 2: dataset.horizon {ds.horizon} < model.n_actions {m.n_actions}")
            self.tvp.requires_grad_(False)
            self.text.requires_grad_(False)
            n_tok, c_feat = feature_layout(m, self.latent_size)
            converted = adopt_converted(m, c_feat, m.action_weights) if m.action_weights and load_pretrained \
                else None
            self.former = VideoFormer(m.former, c_feat, m.num_frames)
            self.head = ActionHead(m.head, m.action_dim, m.n_actions, m.text.goal_dim, self.former.n_tokens)
            if converted is not None:  # strict: every former.* / head.* tensor, nothing else
                trained = {f"former.{k}": v for k, v in self.former.state_dict().items()}
                trained.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
                missing, extra = sorted(set(trained) - set(converted)), sorted(set(converted) - set(trained))
                if missing or extra:
                    raise ConfigError(f"model.action_weights {m.action_weights}: {len(missing)} missing {missing[:5]}, "
                                      f"{len(extra)} unexpected {extra[:5]}")
                self.former.load_state_dict({k[7:]: v for k, v in converted.items() if k.startswith("former.")})
                self.head.load_state_dict({k[5:]: v for k, v in converted.items() if k.startswith("head.")})
        self.normalizer = Normalizer({"action": m.action_dim}, {"action": ds.action_norm})

    # ------------------------------------------------------------------------------------------ basics
    @property
    def action_dim(self) -> int:
        return self.cfg.model.action_dim

    @property
    def n_action_steps(self) -> int:
        return self.cfg.model.n_action_steps

    @property
    def horizon(self) -> int:
        return self.cfg.model.n_actions

    @property
    def device(self) -> torch.device:
        return self.tvp.unet.conv_in.weight.device

    @property
    def stage(self) -> str:
        return self.cfg.model.stage

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage == "policy":  # frozen and deterministic
            self.tvp.eval()
            self.text.eval()
        return self

    @property
    def history_layout(self) -> HistoryLayout:
        """The current frame of every camera (main camera ``image`` first) and the instruction."""
        return HistoryLayout((0,), 1, language=self.cfg.model.text.kind != "none",
                             cameras=camera_keys(self.cfg.dataset))

    @property
    def action_chunk_start(self) -> int:
        return 0  # action_pred[:, 0] is the action at the observed frame

    def metadata(self) -> dict:
        meta = super().metadata()
        m = self.cfg.model
        meta.update(language=m.text.kind != "none", stage=m.stage, image_size=self.cfg.dataset.image_size)
        return meta

    @classmethod
    def _build_from_state(cls, run, state: Mapping[str, torch.Tensor], source: str) -> "VPPPolicy":
        return cls(run, load_pretrained=False)  # every weight (UNet, VAE included) comes from the checkpoint

    # ------------------------------------------------------------------------------------------ pieces
    def text_states(self, language, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Instructions -> (cross-attention tokens (B, L, D), goal (B, Dg))."""
        if self.cfg.model.text.kind != "none":
            if language is None or isinstance(language, str) or len(language) != b:
                raise VideoActionError(f"VPP: 'language' must be a list of {b} instructions, found {language!r}")
        return self.text(list(language) if language is not None else [""] * b)

    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Frames (B, F, 3, S, S) in [-1, 1] -> scaled latents (B, F, C, h, w) (mode, or sample if configured)."""
        sample = self.cfg.model.latent_sample
        with torch.no_grad():
            return self.tvp.encode(frames.to(self.device), sample=sample,
                                   generator=generator if sample and generator is not None and
                                   generator.device == self.device else None)

    def _frames(self, obs_image, n: int | None = None) -> torch.Tensor:
        img = torch.as_tensor(np.asarray(obs_image)) if not isinstance(obs_image, torch.Tensor) else obs_image
        if img.ndim != 5 or img.shape[-1] != 3 or img.dtype != torch.uint8:
            raise VideoActionError(f"VPP observation 'image': expected uint8 (B, T, H, W, 3), found "
                                   f"{tuple(img.shape)} {img.dtype}")
        img = img[:, -1:] if n is None else img
        return preprocess_frames(img.to(self.device), self.cfg.dataset)

    def camera_latents(self, inputs: Mapping[str, torch.Tensor],
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Model inputs of :meth:`history_inputs` / :meth:`batch_history_inputs` (per camera: frames (B, 1, 3, S, S)
        in [-1, 1], or a latent store's ``latent`` / ``latent_<camera>`` (B, 1, C, h, w)) -> the current frame's
        scaled latents of every camera stacked on the batch, camera-major: (n_cameras * B, C, h, w)."""
        cams = self.history_layout.cameras
        if all(cam in inputs for cam in cams):
            frames = torch.cat([inputs[cam][:, 0] for cam in cams]).to(self.device, torch.float32)
            return self.encode(frames[:, None], generator)[:, 0]
        keys = [camera_latent_key(cam) for cam in cams]
        missing = [k for k in keys if k not in inputs]
        if missing:
            raise VideoActionError(f"VPP: needs every camera of {list(cams)} as frames or latents {keys}; missing "
                                   f"{missing}, found keys {sorted(inputs)}")
        return torch.cat([inputs[k][:, 0] for k in keys]).to(self.device, torch.float32)

    def camera_features(self, z0: torch.Tensor, text: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents (n_cameras * B, C, h, w) of :meth:`camera_latents` + text states (B, L, D) -> predictive
        features (B, F, n_cameras * N, C_feat): one UNet pass over all cameras, each frame's tokens joined in camera
        order (camera 0's N tokens first), as the reference joins static and gripper features."""
        k = len(self.history_layout.cameras)
        with torch.no_grad():
            feats = extract_features(self.tvp, z0, text.repeat(k, 1, 1), generator=_on(generator, self.device))
        return rearrange(feats, "(k b) f n c -> b f (k n) c", k=k)

    def context(self, inputs: Mapping[str, torch.Tensor], language,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Every camera's current frame (or latent; see :meth:`camera_latents`) + instructions -> the action head's
        encoded context."""
        with torch.no_grad():
            z0 = self.camera_latents(inputs, generator)
            text, goal = self.text_states(language, z0.shape[0] // len(self.history_layout.cameras))
            feats = self.camera_features(z0, text, generator)
        return self.head.context(goal, self.former(feats))

    # ------------------------------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                     mode: str | None = None) -> LossOutput:
        m = self.cfg.model
        g = _on(generator, self.device)
        if self.stage == "video":
            if "latent" in batch:
                latents, frames = batch["latent"].to(self.device, torch.float32), None
            elif "image" in batch:
                frames = batch["image"].to(self.device, torch.float32)
                latents = self.encode(frames, g)
            else:
                raise VideoActionError(f"VPP stage 1 batch needs 'image' or 'latent'; keys: {sorted(batch)}")
            if latents.shape[1] != m.num_frames:
                raise VideoActionError(f"VPP stage 1 batch: {latents.shape[1]} frames, model.num_frames is "
                                       f"{m.num_frames}")
            text, _ = self.text_states(batch.get("language"), latents.shape[0])
            video_loss = self.tvp.edm_loss(latents, text_dropout(text, m.text_drop_prob, g), g)
            terms = {"video_loss": float(video_loss.detach())}
            loss = video_loss
            if m.vae.train and frames is not None:
                vae_loss = self.tvp.vae_loss(frames, g)
                loss = loss + vae_loss
                terms["vae_loss"] = float(vae_loss.detach())
            terms["loss"] = float(loss.detach())
            return LossOutput(loss, terms)
        if self.history_layout.language and "language" not in batch:
            raise VideoActionError(f"VPP stage 2 batch needs 'language' (B instructions); keys: {sorted(batch)}")
        if "action" not in batch:
            raise VideoActionError(f"VPP stage 2 batch needs 'action' (B, >={m.n_actions}, {m.action_dim}); keys: "
                                   f"{sorted(batch)}")
        inputs = self.batch_history_inputs(batch)  # each camera: its frames (B, 1, 3, S, S) or latents
        action = batch["action"].to(self.device)
        if action.ndim != 3 or action.shape[1] < m.n_actions or action.shape[2] != m.action_dim:
            raise VideoActionError(f"VPP batch 'action': expected (B, >={m.n_actions}, {m.action_dim}), found "
                                   f"{tuple(action.shape)}")
        ctx = self.context(inputs, inputs.get("language"), g)
        target = self.normalizer.normalize("action", action[:, : m.n_actions].float())
        loss = self.head.loss(target, ctx, g)
        return LossOutput(loss, {"action_loss": float(loss.detach()), "loss": float(loss.detach())})

    # ------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, Any], *, steps: int | None = None, sigma_min: float | None = None,
                       sigma_max: float | None = None, sampler: str | None = None,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """obs ``image`` uint8 (B, T, H, W, 3) (the last frame is used; every further camera of
        ``history_layout.cameras`` under its key, same shape), ``language`` (B strings) -> un-normalised
        ``action`` (B, n_action_steps, A) and ``action_pred`` (B, n_actions, A). Sampler settings default to
        ``model.head`` (reference evaluation: ddim, 10 steps, sigma 80 -> 1.0)."""
        if self.stage != "policy":
            raise VideoActionError("this VPP model is stage 1 (video prediction only; model.stage='video'); "
                                   "train stage 2 with --init from it")
        inputs = self.history_inputs(obs)  # every camera (B, 1, 3, S, S) in [-1, 1], validated by name
        g = _on(generator, self.device)
        ctx = self.context(inputs, inputs.get("language"), g)
        a = self.head.sample(ctx, steps=steps, sigma_min=sigma_min, sigma_max=sigma_max, sampler=sampler,
                             generator=g)
        a = self.normalizer.unnormalize("action", a)
        return {"action": a[:, : self.n_action_steps], "action_pred": a}

    @torch.no_grad()
    def predict_video(self, first_frame, language=None, *, steps: int | None = None,
                      guidance_max: float | None = None, guidance_min: float | None = None,
                      generator: torch.Generator | None = None, decode: bool = True,
                      **unsupported) -> dict[str, torch.Tensor]:
        """First frame uint8 (B, H, W, 3) or (B, 1, H, W, 3) + instructions -> ``latent`` (B, F, C, h, w) and
        ``frames`` uint8 (B, F, S, S, 3) (frame 0 is the input, reconstructed by the VAE)."""
        if isinstance(first_frame, Mapping) or unsupported:
            raise VideoActionError("VPP predict_video takes (first_frame, language), not an observation dict with "
                                   "actions (VPP's video model is not action-conditioned); see `videoaction predict`; "
                                   f"unsupported arguments: {sorted(unsupported)}")
        img = torch.as_tensor(np.asarray(first_frame)) if not isinstance(first_frame, torch.Tensor) else first_frame
        if img.ndim == 4:
            img = img[:, None]
        frame = self._frames(img)  # (B, 1, 3, S, S)
        g = _on(generator, self.device)
        z0 = self.encode(frame, g)[:, 0]
        text, _ = self.text_states(language, z0.shape[0])
        lat = self.tvp.sample(z0, text, num_steps=steps, guidance_max=guidance_max, guidance_min=guidance_min,
                              generator=g)
        out = {"latent": lat}
        if decode:
            x = self.tvp.decode(lat)
            out["frames"] = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
        return out


def _on(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """The generator if it draws on ``device`` (randn_tensor / rand need that), else None."""
    return generator if generator is not None and generator.device.type == device.type else None


def _vocabulary(cfg: VPPRunConfig) -> tuple[str, ...]:
    """The learned instruction tokens' vocabulary: the --init checkpoint's, else the training store's."""
    if cfg.init:
        saved = _init_config(cfg.init)
        vocab = ((saved.get("model") or {}).get("text") or {}).get("vocabulary")
        if vocab:
            return tuple(vocab)
    if cfg.data and cfg.dataset.language_key:
        from videoaction.data.store import EpisodeStore

        store = EpisodeStore.open(cfg.data)
        if cfg.dataset.language_key in store.meta_keys:
            return tuple(sorted({str(v).strip() for v in store.meta_column(cfg.dataset.language_key)}))
    raise ConfigError("VPP text 'task_tokens' needs the instructions: train on a store with a language column "
                      "(dataset.language_key), start from a checkpoint (--init) or set model.text.vocabulary")


def _init_config(init) -> dict:
    from videoaction.train.checkpoint import resolve_checkpoint

    path = Path(resolve_checkpoint(init)) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--init {init}: cannot read {path} ({exc})") from None


def _check_same_tvp(cfg: VPPRunConfig) -> None:
    """Stage 2 from a stage-1 checkpoint: the TVP and its conditioning must be the ones stage 1 trained."""
    saved = _init_config(cfg.init)
    if saved.get("family") != "vpp":
        return  # another family: load_init reports what matches
    mine, theirs = to_dict(cfg.model), saved.get("model") or {}
    diff = [f"{k}: {theirs.get(k)!r} (checkpoint) vs {mine[k]!r} (this run)" for k in TVP_FIELDS
            if k in theirs and _norm(theirs[k]) != _norm(mine[k])]
    if diff:
        raise ConfigError(f"--init {cfg.init}: stage 2 must use the TVP settings of stage 1; different: "
                          + "; ".join(diff))


def _norm(v):
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items() if k not in ("path", "train", "kl_weight", "train_frames")}
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v
