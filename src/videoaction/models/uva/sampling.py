"""Network passes and samplers of :class:`~videoaction.models.uva.policy.UVAPolicy` (a mixin; ``self`` is the policy).

* :meth:`UVASamplingMixin.sample_actions`: one encoder/decoder pass, then the action head (policy_model by default,
  inverse_model with ``future`` given and ``history_visible=False``).
* :meth:`UVASamplingMixin.sample_video`: MAR iterative masked sampling of the future latents with the cosine
  schedule, one random order shared by all future frames; forward dynamics when actions are given; classifier-free
  guidance by doubling the batch into [cond; uncond] (uncond = text -> ``fake_latent`` or history ->
  ``fake_latent_x``), one transformer pass on 2B, guidance inside every head step, linear or constant scale.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from einops import rearrange

from videoaction.errors import VideoActionError
from videoaction.models.uva.masking import cosine_mask_len, mask_from_orders, random_orders
from videoaction.nn.guidance import doubled, per_half, uncond_flags

Cond = dict[str, Any]  # history (B,Th,C,h,w) latents, state, history_actions (normalised), text (B,Dt) | None


class UVASamplingMixin:
    """Sampling methods shared by the inference functions (see the module docstring)."""

    def _uncond_flags(self, b: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(history_drop, text_drop) for a doubled [cond; uncond] batch."""
        m = self.cfg.model
        which = m.guidance_condition
        trained = m.label_drop_prob > 0 and m.language if which == "text" else m.history_drop_prob > 0
        if not trained and not self._warned_cfg:
            self._warned_cfg = True
            warnings.warn(f"classifier-free guidance drops the {which} condition, but this model was configured "
                          f"without {which} dropout in training (model.{'label' if which == 'text' else 'history'}"
                          f"_drop_prob = 0): its unconditional branch is untrained", stacklevel=3)
        flags = uncond_flags(b, self.device)
        return (flags, None) if which == "history" else (None, flags)

    def _forward(self, cond: Cond, future=None, future_mask=None, actions=None, history_visible=True,
                 guided: bool = False) -> torch.Tensor:
        """Network pass; with ``guided`` every input is doubled into [cond; uncond] and z is (2B, N, D)."""
        hist = cond["history"] if history_visible else None
        kw = dict(state=cond.get("state"), history_actions=cond.get("history_actions"), text=cond.get("text"))
        b = cond["history"].shape[0]
        hd = td = None
        if guided:
            hd, td = self._uncond_flags(b)
            future, future_mask, actions, hist = doubled(future), doubled(future_mask), doubled(actions), doubled(hist)
            kw = {k: doubled(v) for k, v in kw.items()}
            b = 2 * b
        return self.model(future, hist, future_mask=future_mask, actions=actions, history_drop=hd, text_drop=td,
                          batch_size=b, **kw)

    def sample_actions(self, cond: Cond, *, future=None, future_mask=None, history_visible=True,
                       temperature: float | None = None, cfg: float | None = None, sampler: str | None = None,
                       num_steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised actions (B, n_actions, A) from one network pass (policy_model by default)."""
        m = self.cfg.model
        if not m.predict_action:
            raise VideoActionError("this UVA model has no action head (stage-1 config, model.predict_action False)")
        s = m.act_cfg if cfg is None else cfg
        if s != 1.0:
            self._check_action_guidance(s)
        z = self._forward(cond, future, future_mask, None, history_visible, guided=s != 1.0)
        return self.model.diffactloss.sample_actions(z, temperature=m.temperature if temperature is None else temperature,
                                                     cfg=s, num_steps=num_steps, sampler=sampler, generator=generator,
                                                     clip_range=self.action_clip_range())

    def action_clip_range(self) -> torch.Tensor:
        """(A,) bound of the action head's x0 clipping in normalised units: the training data's range
        (:meth:`~videoaction.models.base.Policy.action_clip_bound`) times ``model.action_head.clip_range``."""
        return self.action_clip_bound() * float(self.cfg.model.action_head.clip_range)

    def _check_action_guidance(self, scale: float) -> None:
        """Refuse action guidance whose unconditional branch (history or text dropped) was never trained."""
        m = self.cfg.model
        if m.guidance_condition == "text":
            trained, fix = m.language and m.label_drop_prob > 0, "model.label_drop_prob > 0"
        else:
            trained, fix = m.act_cfg != 1.0 and m.history_drop_prob > 0, "model.act_cfg != 1 and history_drop_prob > 0"
        if not trained:
            raise VideoActionError(
                f"action guidance (cfg {scale}) drops the {m.guidance_condition} condition, but this model never "
                f"trained its action head without it (trained with model.act_cfg {m.act_cfg}, "
                f"history_drop_prob {m.history_drop_prob}, label_drop_prob {m.label_drop_prob}): the unconditional "
                f"branch is untrained. Use cfg 1, or retrain with {fix}")

    def sample_video(self, cond: Cond, actions: torch.Tensor | None = None, *, num_iter: int | None = None,
                     cfg: float | None = None, cfg_schedule: str | None = None, temperature: float | None = None,
                     sampler: str | None = None, num_steps: int | None = None, joint: bool = False,
                     generator: torch.Generator | None = None, force_guidance: bool = False
                     ) -> dict[str, torch.Tensor]:
        """MAR iterative sampling of the future latents (B, T, C, h, w); ``actions`` normalised (dynamic_model).

        ``joint`` also samples actions from the last iteration's pass (full_dynamic_model, the planner).
        ``force_guidance`` runs the doubled-batch guided path even at cfg = 1 (equal to unguided; a test hook).
        """
        m, net = self.cfg.model, self.model
        num_iter = m.num_iter if num_iter is None else int(num_iter)
        s_cfg = m.cfg if cfg is None else float(cfg)
        schedule = cfg_schedule or m.cfg_schedule
        temp = m.temperature if temperature is None else temperature
        b, tf, big_l = cond["history"].shape[0], net.n_future, net.seq_len
        c, (h, w) = net.latent_channels, net.grid
        dev = self.device
        tokens = torch.zeros(b, tf, big_l, c, device=dev)
        mask = torch.ones(b, big_l, dtype=torch.bool, device=dev)
        orders = random_orders(b, big_l, generator, dev)  # one order per sample, shared by all frames
        guided = s_cfg != 1.0 or force_guidance
        out: dict[str, torch.Tensor] = {}
        for step in range(num_iter):
            fut = rearrange(tokens, "b t (h w) c -> b t c h w", h=h, w=w)
            z = self._forward(cond, fut, mask, actions, True, guided=guided)  # (B or 2B, N, D)
            n_masked = int(mask[0].sum())
            mask_len = cosine_mask_len(step, num_iter, big_l, n_masked)
            last = step == num_iter - 1
            new_mask = mask_from_orders(orders, mask_len) if not last else torch.zeros_like(mask)
            predict = mask & ~new_mask  # (B, L)
            s_iter = 1.0 + (s_cfg - 1.0) * (big_l - mask_len) / big_l if schedule == "linear" else s_cfg
            pf = predict.unsqueeze(1).expand(b, tf, big_l)  # same positions in every frame
            zz = z.reshape(z.shape[0], tf, big_l, -1)
            zsel = per_half(zz, lambda half: half[pf]) if guided else zz[pf]
            if zsel.shape[0]:
                new = net.diffloss.sample(zsel, temperature=temp, cfg=s_iter if guided else 1.0, guidance=guided,
                                          num_steps=num_steps, sampler=sampler, generator=generator)
                tokens[pf] = new.to(tokens.dtype)
            if joint and last:  # the planner's actions come from the last pass (video mostly visible)
                if guided:
                    out["action_norm"] = net.diffactloss.sample_actions(z, temperature=temp, cfg=m.act_cfg,
                                                                        guidance=True, generator=generator,
                                                                        clip_range=self.action_clip_range())
                else:
                    out["action_norm"] = net.diffactloss.sample_actions(z[:b], temperature=temp, generator=generator,
                                                                        clip_range=self.action_clip_range())
            mask = new_mask
        out["latent"] = rearrange(tokens, "b t (h w) c -> b t c h w", h=h, w=w)
        return out
