"""``UVAPolicy``: one network that is a policy, a video model, forward and inverse dynamics, and a planner.

Functions (the paper's uses of the one model; all inputs raw, outputs un-normalised):

* :meth:`UVAPolicy.predict_action` — policy: history frames (+ proprio, language) -> action chunk. One
  encoder/decoder pass with every future token fake, then the action head only (never the video head or the
  tokenizer's decoder).
* :meth:`UVAPolicy.predict_video` — video model (no actions) or forward dynamics (``actions`` given): MAR iterative
  masked sampling with the cosine schedule, one random order shared by all future frames, working
  classifier-free guidance (batch doubled [cond; uncond], guidance inside every head step).
* :meth:`UVAPolicy.inverse_dynamics` — actions that explain a future video.
* :meth:`UVAPolicy.plan` — joint video + actions (``full_dynamic_model``).
* :meth:`UVAPolicy.rollout_video` and :meth:`UVAPolicy.plan_with_dynamics` — see :mod:`.planning`.

Training (:meth:`compute_loss`): one task mode per batch (uva.md §7), truncated-normal mask ratio, video loss on
masked tokens, action loss on the ``n_actions`` actions from the last history frame on, losses summed.

Several cameras (``dataset.image_keys``): every camera is tokenized by the one frozen tokenizer and the latent grids
are stacked along the height in camera order (``join_cameras``), so each frame has ``n_cameras * h * w`` tokens;
video outputs (``latent``, decoded ``frames``) are those stacked grids. One camera is the single-camera model exactly.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from einops import rearrange, repeat

from videoaction.errors import VideoActionError
from videoaction.data.sampler import frame_positions
from videoaction.models.base import LossOutput, Policy
from videoaction.config import camera_keys, camera_latent_key
from videoaction.models.observation import HistoryLayout, select_observation
from videoaction.models.uva.config import UVARunConfig
from videoaction.models.uva.masking import (MODE_SPECS, choose_mode, gen_device, random_spatial_mask,
                                            sample_mask_ratio)
from videoaction.models.uva.network import UVANetwork
from videoaction.models.uva.sampling import Cond, UVASamplingMixin
from videoaction.models.text_condition import TextConditioning
from videoaction.nn.latent_cache import LatentCache
from videoaction.nn.tokenizer import SmallAutoencoder, Tokenizer, build_tokenizer, resolved_config, tokenizer_from_state


class UVAPolicy(UVASamplingMixin, Policy):
    """Unified Video Action model (see the module docstring for the functions it offers).

    Example (raw observations as the environment gives them; the last ``n_obs_steps`` = 16 frames)::

        policy = load_policy("runs/uva/checkpoints/latest")            # or UVAPolicy(get_preset("uva-tiny"))
        obs = {"image": frames_uint8}                                   # (B, 16, H, W, 3) [+ "state", "language"]
        policy.predict_action(obs)["action"]                            # (B, 8, A): execute these
        policy.predict_action(obs, sampler="ddim", num_steps=16)        # few-step action head
        policy.predict_video(obs, num_iter=8, cfg=2.0)["frames"]        # (B, 4, S, S, 3) uint8 video model
        policy.predict_video(obs, actions=chunk)                        # forward dynamics, chunk (B, 16, A)
        policy.inverse_dynamics(None, future_frames)["action_pred"]     # actions explaining a video
        policy.plan(obs)                                                # joint video + actions
        policy.rollout_video(obs, "policy", n_chunks=4)                 # long horizon, predictions fed back
        policy.plan_with_dynamics(obs, candidates, goal=goal_image)     # best of K chunks by predicted outcome
    """

    family = "uva"
    config_class = UVARunConfig

    def __init__(self, cfg: UVARunConfig, allow_random_tokenizer: bool = False, tokenizer: Tokenizer | None = None):
        """Build from a run config. The tokenizer is loaded from ``model.tokenizer.path`` (missing weights are an
        error unless ``allow_random_tokenizer``), or passed in ready-made (``tokenizer``, e.g. from a checkpoint)."""
        super().__init__(cfg)
        m, ds = cfg.model, cfg.dataset
        m.validate()
        fr = ds.frames
        if fr.n_history < 1 or fr.n_future < 1:
            raise VideoActionError(f"dataset.frames: UVA needs >= 1 history and >= 1 future frame, found "
                                   f"{fr.n_history} + {fr.n_future}")
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer(m.tokenizer,
                                                                                 allow_random=allow_random_tokenizer)
        self.tokenizer.requires_grad_(False).eval()
        m.tokenizer = resolved_config(self.tokenizer, m.tokenizer)  # saved configs rebuild the same module
        if isinstance(self.tokenizer, SmallAutoencoder):
            tc = self.tokenizer.config_dict()
            m.tokenizer.channels, m.tokenizer.kl = tuple(tc["channels"]), bool(tc["kl"])
        s = self.tokenizer.stride
        if ds.image_size % s:
            raise VideoActionError(f"dataset.image_size {ds.image_size} is not a multiple of the tokenizer stride {s}")
        # several cameras: each camera's latent grid is stacked along the height, so a frame's tokens are camera 0's
        # tokens, then camera 1's, ... (one camera: the single-camera grid and parameters exactly)
        self.cameras = camera_keys(ds)
        grid = (len(self.cameras) * (ds.image_size // s), ds.image_size // s)
        frame_positions(fr, ds.horizon)  # validates that the frames fit the window
        self._layout = HistoryLayout.from_frames(fr, state_dim=m.state_dim if m.use_state else 0,
                                                 history_action_dim=m.action_dim if m.use_history_action else 0,
                                                 language=m.language, cameras=self.cameras)
        self.history_positions = list(self._layout.positions)
        self.h_last = fr.last_history
        self.action_start = self.h_last if m.shift_action else self.h_last + 1
        if self.action_start + m.n_actions > ds.horizon:
            raise VideoActionError(f"model.n_actions {m.n_actions} from window position {self.action_start} does "
                                   f"not fit dataset.horizon {ds.horizon}")
        self._warned_cfg = False
        self.latent_cache: LatentCache | None = None  # see enable_latent_cache
        self._text = TextConditioning(m.text) if m.language else None
        self.text_encoder = self._text.learned if self._text else None  # learned weights: in the state dict
        if self._text and self._text.dim is not None:
            m.text_dim = self._text.dim
        self.model = UVANetwork(m, self.tokenizer.latent_channels, grid, fr.n_future, fr.n_history,
                                n_history_actions=fr.n_history)
        self.normalizer = self.build_normalizer(m.action_dim, m.state_dim if m.use_state or m.predict_state else 0)

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
    def action_chunk_start(self) -> int:
        return self.action_start  # h_last (shift_action) or h_last + 1

    @property
    def history_layout(self) -> HistoryLayout:
        """History frames at ``dataset.frames`` positions of the last ``last_history + 1`` observations (16)."""
        return self._layout

    @property
    def device(self) -> torch.device:
        return self.model.fake_latent_x.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()  # frozen, deterministic
        return self

    def metadata(self) -> dict:
        meta = super().metadata()
        meta["language"] = bool(self.cfg.model.language)
        return meta

    @classmethod
    def _build_from_state(cls, run, state: Mapping[str, torch.Tensor], source: str) -> "UVAPolicy":
        """Tokenizer weights come from the checkpoint itself, not from the tokenizer's original path."""
        tok_sd = {k[len("tokenizer."):]: v for k, v in state.items() if k.startswith("tokenizer.")}
        return cls(run, tokenizer=tokenizer_from_state(run.model.tokenizer, tok_sd, source))

    # ------------------------------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
                      chunk: int = 64) -> torch.Tensor:
        """Images (B, F, 3, S, S) in [-1, 1] -> scaled latents (B, F, C, h, w) with the frozen tokenizer."""
        x = rearrange(frames, "b f c h w -> (b f) c h w").to(self.device)
        z = torch.cat([self.tokenizer.encode(x[i: i + chunk], sample=sample, generator=generator)
                       for i in range(0, x.shape[0], chunk)])
        return rearrange(z, "(b f) c h w -> b f c h w", b=frames.shape[0])

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        """Latents (B, F, C, h, w) -> uint8 frames (B, F, S, S, 3)."""
        z = rearrange(latents, "b f c h w -> (b f) c h w")
        x = torch.cat([self.tokenizer.decode(z[i: i + chunk]) for i in range(0, z.shape[0], chunk)])
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return rearrange(x, "(b f) c h w -> b f h w c", b=latents.shape[0])

    def enable_latent_cache(self, max_frames: int = 256) -> None:
        """Remember the latents of observed frames (keyed by their bytes): consecutive policy calls share history
        frames (UVA: 2 of 4 when executing 8 of 16 actions), so only new frames are encoded. ``0`` disables."""
        self.latent_cache = LatentCache(max_frames) if max_frames > 0 else None

    @staticmethod
    def join_cameras(latents: list[torch.Tensor]) -> torch.Tensor:
        """Per-camera latents (B, F, C, h, w), main camera first -> one grid (B, F, C, n_cameras * h, w)."""
        return latents[0] if len(latents) == 1 else torch.cat(latents, dim=-2)

    @torch.no_grad()
    def encode_observed(self, frames) -> torch.Tensor:
        """Raw uint8 frames (B, F, H, W, 3) -> latents (B, F, C, h, w), through the latent cache when enabled."""
        if self.latent_cache is None:
            return self.encode_frames(self.preprocess(frames))
        return self.latent_cache.encode(frames, lambda new: self.encode_frames(self.preprocess(new)))

    def encode_text(self, texts) -> torch.Tensor:
        """Instructions (list of B strings) -> text features (B, text_dim)."""
        if self._text is None:
            raise VideoActionError("this UVA model has no language input (model.language is False)")
        return self._text.encode(texts, self.device, self.cfg.model.text_dim)

    def _frames_latents(self, x, n: int, what: str) -> torch.Tensor:
        """uint8 frames (B, n, H, W, 3) or latents (B, n, C, h, w) float -> latents."""
        t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
        if t.dim() != 5 or t.shape[1] != n:
            raise VideoActionError(f"{what}: expected (B, {n}, H, W, 3) uint8 frames or (B, {n}, C, h, w) latents, "
                                   f"found shape {tuple(t.shape)}")
        if t.dtype == torch.uint8:
            return self.encode_frames(self.preprocess(t))
        return t.to(self.device, torch.float32)

    def condition(self, obs: Mapping[str, Any]) -> Cond:
        """Raw observation -> the model's conditions (history latents picked at the configured positions)."""
        sel = select_observation(obs, self.history_layout)
        cond: Cond = {"history": self.join_cameras([self.encode_observed(sel[c]) for c in self.cameras])}
        low = self._normalised_low_dim(sel)
        if "state" in low:
            cond["state"] = low["state"]
        if "history_action" in low:
            cond["history_actions"] = low["history_action"]
        if "language" in sel:
            cond["text"] = self.encode_text(sel["language"])
        return cond

    # ------------------------------------------------------------------------------------------ public inference
    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, Any], *, sampler: str | None = None, num_steps: int | None = None,
                       temperature: float | None = None, cfg: float | None = None,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Policy: ``{"action": (B, n_action_steps, A), "action_pred": (B, n_actions, A)}`` un-normalised.

        One encoder/decoder pass with every future token fake (policy_model), then the action head; ``sampler`` /
        ``num_steps`` override the head's configured sampler (e.g. ``"ddim"``, 16). The first action is for the
        step of the newest observation, so ``model.shift_action`` False (targets start one step later) is refused.
        """
        self._check_executable("predict_action")
        cond = self.condition(obs)
        a = self.sample_actions(cond, temperature=temperature, cfg=cfg, sampler=sampler, num_steps=num_steps,
                                generator=generator)
        a = self.normalizer.unnormalize("action", a)
        return {"action": a[:, : self.n_action_steps], "action_pred": a}

    def _check_executable(self, what: str) -> None:
        """Refuse to return actions to execute when the first predicted one is not for the newest frame's step."""
        if self.execute_from != 0:
            raise VideoActionError(
                f"{what}: this UVA model was trained with model.shift_action False, so its first predicted action "
                f"is for the step after the newest observation (window position {self.action_start}, the newest "
                f"frame is at {self.h_last}); executing it now would act one step late. Train with "
                "model.shift_action True for closed-loop control (predict_video / inverse_dynamics still work)")

    @torch.no_grad()
    def predict_state(self, obs: Mapping[str, Any], *, sampler: str | None = None, num_steps: int | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Future proprio states (B, n_actions, Ds) over the action window (needs ``model.predict_state``)."""
        if not self.cfg.model.predict_state:
            raise VideoActionError("this UVA model has no proprio-prediction head (model.predict_state is False)")
        z = self._forward(self.condition(obs))
        bound = self.normalizer.normalized_bound("state") * float(self.cfg.model.action_head.clip_range)
        s = self.model.diffproploss.sample_actions(z, temperature=self.cfg.model.temperature, num_steps=num_steps,
                                                   sampler=sampler, generator=generator, clip_range=bound)
        return self.normalizer.unnormalize("state", s)

    @torch.no_grad()
    def predict_video(self, obs: Mapping[str, Any], actions=None, num_iter: int = 1, cfg: float = 1.0,
                      temperature: float = 0.95, generator: torch.Generator | None = None, *,
                      cfg_schedule: str | None = None, sampler: str | None = None, num_steps: int | None = None,
                      decode: bool = True) -> dict[str, torch.Tensor]:
        """Video model, or forward dynamics when ``actions`` (B, n_actions, A) raw are given.

        Returns ``latent`` (B, T, C, h, w) and, with ``decode``, ``frames`` uint8 (B, T, S, S, 3).
        """
        cond = self.condition(obs)
        act = None if actions is None else self._norm_actions(actions, cond["history"].shape[0])
        out = self.sample_video(cond, act, num_iter=num_iter, cfg=cfg, cfg_schedule=cfg_schedule,
                                temperature=temperature, sampler=sampler, num_steps=num_steps, generator=generator)
        if decode:
            out["frames"] = self.decode_latents(out["latent"])
        return out

    @torch.no_grad()
    def inverse_dynamics(self, history, future, *, language=None, temperature: float | None = None,
                         sampler: str | None = None, num_steps: int | None = None,
                         generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Actions (B, n_actions, A) that explain ``future`` (B, T, H, W, 3) uint8 frames or latents.

        inverse_model hides the history frames (reference); ``history`` (same formats, or None) is accepted for
        symmetry and only sets the batch size. Proprio-conditioned models are not supported here.
        """
        m = self.cfg.model
        fut = self._frames_latents(future, self.model.n_future, "future")
        b = fut.shape[0]
        if history is not None:
            hist = self._frames_latents(history, self.model.n_history, "history")
        else:
            hist = torch.zeros(b, self.model.n_history, *fut.shape[2:], device=self.device)
        cond: Cond = {"history": hist}
        if m.use_state or m.use_history_action:
            raise VideoActionError("inverse_dynamics: models with proprio / history-action inputs are not supported")
        if m.language:
            if language is None:
                raise VideoActionError("inverse_dynamics: this model needs `language` (list of B strings)")
            cond["text"] = self.encode_text(language)
        a = self.sample_actions(cond, future=fut, history_visible=False, temperature=temperature, sampler=sampler,
                                num_steps=num_steps, generator=generator)
        return {"action_pred": self.normalizer.unnormalize("action", a)}

    @torch.no_grad()
    def plan(self, obs: Mapping[str, Any], num_iter: int | None = None, cfg: float | None = None,
             temperature: float | None = None, generator: torch.Generator | None = None,
             decode: bool = True) -> dict[str, torch.Tensor]:
        """Policy + planner (full_dynamic_model): future video and actions together."""
        if not self.cfg.model.predict_action:
            raise VideoActionError("plan: this UVA model has no action head (model.predict_action is False)")
        self._check_executable("plan")
        cond = self.condition(obs)
        out = self.sample_video(cond, None, num_iter=num_iter, cfg=cfg, temperature=temperature, joint=True,
                                generator=generator)
        a = self.normalizer.unnormalize("action", out.pop("action_norm"))
        out.update(action=a[:, : self.n_action_steps], action_pred=a)
        if decode:
            out["frames"] = self.decode_latents(out["latent"])
        return out

    def rollout_video(self, obs, actions_or_policy=None, n_chunks: int = 2, **kw) -> dict[str, torch.Tensor]:
        """Long-horizon rollout, chunk after chunk; see :func:`videoaction.models.uva.planning.rollout_video`."""
        from videoaction.models.uva.planning import rollout_video

        return rollout_video(self, obs, actions_or_policy, n_chunks, **kw)

    def plan_with_dynamics(self, obs, candidate_actions, goal, **kw) -> dict[str, torch.Tensor]:
        """Forward-dynamics planning; see :func:`videoaction.models.uva.planning.plan_with_dynamics`."""
        from videoaction.models.uva.planning import plan_with_dynamics

        return plan_with_dynamics(self, obs, candidate_actions, goal, **kw)

    def _norm_actions(self, actions, b: int) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions,
                            dtype=torch.float32)
        m = self.cfg.model
        if a.shape != (b, m.n_actions, m.action_dim):
            raise VideoActionError(f"actions: expected shape ({b}, {m.n_actions}, {m.action_dim}) (raw, "
                                   f"un-normalised), found {tuple(a.shape)}")
        return self.normalizer.normalize("action", a.to(self.device))

    # ------------------------------------------------------------------------------------------ training
    def compile_targets(self) -> list[nn.Module]:
        """The encoder / decoder blocks and the denoiser MLPs of both heads (the tokenizer is frozen or cached)."""
        net = self.model
        heads = [net.diffloss.net] + ([net.diffactloss.net] if getattr(net, "diffactloss", None) is not None else [])
        return [*net.encoder_blocks, *net.decoder_blocks, *heads]

    def compute_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                     mode: str | None = None) -> LossOutput:
        """One task mode for the batch (uva.md §7; ``mode`` forces one, e.g. ``video_model`` for an action-free
        batch); returns the summed loss and its detached parts."""
        m, net = self.cfg.model, self.model
        g = generator
        if mode is None:
            mode = choose_mode(m.task_modes, g)
        elif mode not in MODE_SPECS:
            raise VideoActionError(f"compute_loss: unknown task mode {mode!r}; expected one of {list(MODE_SPECS)}")
        spec = MODE_SPECS[mode]
        dev = self.device
        action = batch["action"].to(dev, torch.float32)
        b = action.shape[0]
        ratio = sample_mask_ratio(g, m.mask_ratio_min, 1.0, m.mask_ratio_loc, m.mask_ratio_std)
        mask = random_spatial_mask(b, net.seq_len, ratio, g, dev)  # same for every future frame
        u = torch.rand(2, b, generator=g, device=gen_device(g)).to(dev)  # text / history dropout draws
        hist_in = self.batch_history_inputs(batch)
        need_future = spec.future != "fake"
        hist, fut = self._batch_latents(batch, hist_in, spec.history, need_future, g)
        act = self.normalizer.normalize("action", action[:, self.action_start: self.action_start + m.n_actions])
        kw: dict[str, Any] = {}
        if "state" in hist_in:
            kw["state"] = hist_in["state"]
        if "history_action" in hist_in:
            kw["history_actions"] = hist_in["history_action"]
        if m.language:
            kw["text"] = self.encode_text(batch["language"])
            kw["text_drop"] = u[0] < m.label_drop_prob
        if m.history_drop_prob > 0 and mode in m.history_drop_modes:
            kw["history_drop"] = u[1] < m.history_drop_prob
        z = net(fut if need_future else None, hist if spec.history else None,
                future_mask=mask if spec.future == "masked" else None, actions=act if spec.actions else None,
                batch_size=b, **kw)
        zero = z.new_zeros(())
        video_loss = action_loss = zero
        if spec.video_loss:
            target = rearrange(fut, "b t c h w -> (b t h w) c")
            lmask = repeat(mask, "b l -> (b t l)", t=net.n_future).to(z.dtype)
            video_loss = net.diffloss.loss(target, z.reshape(-1, net.width), lmask, generator=g)
        if spec.action_loss:
            action_loss = net.diffactloss.action_loss(z, act, generator=g)
        loss = video_loss + action_loss
        terms = {"video_loss": float(video_loss.detach()), "action_loss": float(action_loss.detach()),
                 "mask_ratio": ratio, "mode": float(list(MODE_SPECS).index(mode))}
        if m.predict_state:  # proprio prediction: added in every mode (reference)
            st = batch["state"].to(dev, torch.float32)[:, self.action_start: self.action_start + m.n_actions]
            state_loss = net.diffproploss.action_loss(z, self.normalizer.normalize("state", st), generator=g)
            loss = loss + state_loss
            terms["state_loss"] = float(state_loss.detach())
        terms["loss"] = float(loss.detach())
        return LossOutput(loss=loss, terms=terms)

    def _batch_latents(self, batch, hist_in, need_history: bool, need_future: bool, g
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """History latents (from :meth:`batch_history_inputs`) and future latents of a training batch."""
        nh = self.model.n_history
        if "latent" in hist_in:
            keys = [camera_latent_key(c) for c in self.cameras]
            return (self.join_cameras([hist_in[k] for k in keys]),
                    self.join_cameras([batch[k][:, nh:].to(self.device, torch.float32) for k in keys]))
        g = g if g is None or g.device == self.device else None  # the posterior sample draws on the model's device
        sample = self.cfg.model.sample_latents
        hist = self.join_cameras([self.encode_frames(hist_in[c], sample, g) for c in self.cameras]
                                 ) if need_history else None
        fut = self.join_cameras([self.encode_frames(batch[c][:, nh:], sample, g) for c in self.cameras]
                                ) if need_future else None
        return hist, fut

