"""HMA as a model family: training losses (MaskGIT cross-entropy / MAR diffusion) and world-model generation.

Batch (one embodiment per batch, from :mod:`videoaction.models.hma.training`):

* ``tokens``: int64 ids (B, T, h, w) (discrete) or float latents (B, T, C, h, w) (continuous, already scaled);
* ``action``: float32 (B, T, A * stride) raw actions, frame t's = the steps leading from frame t to t + 1;
* ``domain``: the embodiment's name.

HMA is an action-conditioned video model, not a policy: :meth:`predict_action` is refused with a clear error;
:meth:`generate` predicts frames from prompt frames and actions.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from videoaction.errors import VideoActionError
from videoaction.models.base import LossOutput, ObsSpec, Policy

from .config import HMARunConfig
from .decoding import generate_frames, mar_frame, maskgit_frame
from .network import HMANetwork


class HMAPolicy(Policy):
    family = "hma"
    config_class = HMARunConfig

    def __init__(self, cfg: HMARunConfig):
        super().__init__(cfg)
        self.net = HMANetwork(cfg.model)

    @classmethod
    def train_entry(cls):
        """Token datasets, not episode stores: HMA's own run-directory training (run.py)."""
        from .run import train_run

        return train_run

    @classmethod
    def video_eval_entry(cls):
        """Held-out windows of token datasets, decoded by their tokenizer (video_eval.py)."""
        from .video_eval import evaluate_hma_video

        return evaluate_hma_video

    @property
    def mcfg(self):
        return self.cfg.model

    # ------------------------------------------------------------------------------------------ data plumbing
    def set_action_stats(self, domain: str, mean, std) -> None:
        """Per raw action dimension statistics (A,), tiled over the embodiment's frame stride."""
        dom = self.mcfg.domain(domain)
        mean = torch.as_tensor(np.asarray(mean, np.float32)).flatten()
        std = torch.as_tensor(np.asarray(std, np.float32)).flatten()
        if mean.numel() != dom.action_dim or std.numel() != dom.action_dim:
            raise VideoActionError(f"embodiment {domain!r}: statistics have {mean.numel()} dims, its action_dim is "
                                   f"{dom.action_dim}")
        stem = self.net.stems[domain]
        stem.mean.copy_(mean.repeat(dom.stride))
        stem.std.copy_(std.clamp_min(1e-6).repeat(dom.stride))

    def to_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        """Dataset frames -> model tokens: ids (B, T, h, w) -> (B, T, S); latents (B, T, C, h, w) -> patches
        (B, T, S, C p p)."""
        m = self.mcfg
        if m.variant == "discrete":
            if tokens.dim() != 4 or tuple(tokens.shape[2:]) != (m.grid, m.grid):
                raise VideoActionError(f"hma: expected ids (B, T, {m.grid}, {m.grid}), got {tuple(tokens.shape)}")
            return tokens.long().flatten(2)
        if tokens.dim() != 5 or tuple(tokens.shape[2:]) != (m.latent_channels, m.grid, m.grid):
            raise VideoActionError(f"hma: expected latents (B, T, {m.latent_channels}, {m.grid}, {m.grid}), got "
                                   f"{tuple(tokens.shape)}")
        p = m.patch_size
        b, t, c, h, w = tokens.shape
        x = tokens.float().reshape(b, t, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, t, (h // p) * (w // p), c * p * p)

    def from_sequence(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mcfg
        b, t = x.shape[:2]
        if m.variant == "discrete":
            return x.reshape(b, t, m.grid, m.grid)
        p, g = m.patch_size, m.grid // m.patch_size
        x = x.reshape(b, t, g, g, m.latent_channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, t, m.latent_channels, m.grid, m.grid)

    # ------------------------------------------------------------------------------------------ training
    def _mask(self, b: int, t: int, s: int, device, generator) -> tuple[torch.Tensor, int]:
        """Per (sample, frame >= first) masking: prob cos(pi/2 u); first frame 1, or k in [prompt, T-1] with
        probability ``non_mlm_ratio``. Never empty."""
        m = self.mcfg
        r = lambda *shape: torch.rand(shape, generator=generator, device=device)  # noqa: E731
        first = 1
        if t > 2 and float(r(1)) < m.non_mlm_ratio:
            lo = min(max(m.num_prompt_frames, 1), t - 1)
            first = lo + int(float(r(1)) * (t - lo))
        lo_u = m.mask_ratio_min if m.variant == "continuous" else 0.0
        u = lo_u + (1 - lo_u) * r(b, t - first, 1)
        prob = torch.cos(math.pi / 2 * u)
        frames = r(b, t - first, s) < prob
        mask = torch.zeros((b, t, s), dtype=torch.bool, device=device)
        mask[:, first:] = frames
        empty = ~mask.flatten(1).any(1)
        mask[empty, t - 1, 0] = True
        return mask, first

    def compute_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                     mode: str | None = None) -> LossOutput:
        m = self.mcfg
        domain = batch["domain"]
        x = self.to_sequence(batch["tokens"].to(self.device))
        actions = batch["action"].to(self.device).float()
        b, t, s = x.shape[:3]
        dev = x.device
        mask, first = self._mask(b, t, s, dev, generator)
        drop = (torch.rand((b, 1), generator=generator, device=dev) < m.action_drop_prob).expand(b, t)
        terms: dict[str, float] = {}
        if m.variant == "discrete":
            inp = x.clone()
            rate = float(torch.rand((), generator=generator, device=dev)) * m.max_corrupt_rate
            noise = torch.randint(0, m.vocab_size, x.shape, generator=generator, device=dev)
            corrupt = (torch.rand(x.shape, generator=generator, device=dev) < rate)
            corrupt[:, :first] = False
            inp = torch.where(corrupt, noise, inp)
            feats, pooled = self.net(inp, mask, actions, domain, drop)
            logits = self.net.logits(feats)[mask]  # (N, F, V)
            V, Fn = m.factored_vocab_size, m.num_factored_vocabs
            target = torch.stack([(x[mask] // V ** i) % V for i in range(Fn)], dim=-1)  # (N, F)
            ce = F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), label_smoothing=m.label_smoothing,
                                 reduction="none").reshape(-1, Fn).sum(-1)
            loss = ce.mean()
            acc = (logits.argmax(-1) == target).all(-1).float().mean()
            terms.update(video_loss=float(loss.detach()), token_acc=float(acc))
        else:
            feats, pooled = self.net(x, mask, actions, domain, drop)
            z = self.net.diffusion_condition(feats)
            loss = self.net.diffloss.loss(x[mask], z[mask], generator=generator)
            terms["video_loss"] = float(loss.detach())
        if m.predict_actions:
            target = self.net.stems[domain].normalize(actions)  # normalised targets (hma.md §10.2)
            a_loss = F.mse_loss(self.net.predict_actions(pooled, domain), target)
            loss = loss + m.action_loss_weight * a_loss
            terms["action_loss"] = float(a_loss.detach())
        terms["loss"] = float(loss.detach())
        return LossOutput(loss, terms)

    # ------------------------------------------------------------------------------------------ generation
    def _fill(self, actions, domain, steps, temperature, cfg, generator):
        m, net = self.mcfg, self.net
        guided = cfg != 1.0

        def run(x, mask, t):
            if not guided:
                return net(x, mask, actions, domain)[0][:, t]
            xx, mm = torch.cat([x, x]), torch.cat([mask, mask])
            aa = torch.cat([actions, actions]) if actions is not None else None
            drop = torch.zeros(xx.shape[:2], dtype=torch.bool, device=x.device)
            drop[len(x):] = True  # second half: the null action (unconditional)
            return net(xx, mm, aa, domain, drop)[0][:, t]

        if m.variant == "discrete":
            def logits_fn(x, mask):
                t = int(mask.any(2).float().argmax(1).min())  # the frame being filled
                lg = net.logits(run(x, mask, t).unsqueeze(1)).squeeze(1)
                if guided:
                    cond, unc = lg.chunk(2)
                    lg = unc + cfg * (cond - unc)
                return lg

            return lambda x, mask, t: maskgit_frame(logits_fn, x, mask, t, m.factored_vocab_size, steps, temperature,
                                                    m.unmask_mode, generator)

        def z_fn(x, mask):
            t = int(mask.any(2).float().argmax(1).min())
            feats = run(x, mask, t).unsqueeze(1)
            z = (net.out(net.out_norm(feats)) + net.diffusion_pos[:, t: t + 1]).squeeze(1)
            return torch.cat(z.chunk(2), dim=-1) if guided else z

        def sample_fn(z):
            if guided:
                zc, zu = z.chunk(2, dim=-1)
                z = torch.cat([zc, zu])
            return net.diffloss.sample(z, temperature=temperature, cfg=cfg, generator=generator)

        return lambda x, mask, t: mar_frame(z_fn, sample_fn, x, mask, t, steps, generator)

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, actions: torch.Tensor | None, domain: str, n_prompt: int,
                 teacher_forced: bool = False, steps: int | None = None, temperature: float | None = None,
                 cfg: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Predict frames ``n_prompt..T-1`` of ``tokens`` (dataset layout, (B, T, h, w) ids or (B, T, C, h, w)
        latents; later frames are ignored) given raw ``actions`` (B, T, A) (None = unconditional)."""
        m = self.mcfg
        x = self.to_sequence(tokens.to(self.device))
        acts = actions.to(self.device).float() if actions is not None else None
        fill = self._fill(acts, domain, steps or m.decode_steps, m.temperature if temperature is None else temperature,
                          m.cfg if cfg is None else cfg, generator)
        return self.from_sequence(generate_frames(fill, x, n_prompt, teacher_forced))

    # ------------------------------------------------------------------------------------------ policy API
    def predict_action(self, obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        raise VideoActionError("hma is an action-conditioned world model: it predicts frames from frames and "
                               "actions (`videoaction generate`), not actions from observations")

    def observation_spec(self) -> dict[str, ObsSpec]:
        m = self.mcfg
        shape = (m.grid, m.grid) if m.variant == "discrete" else (m.latent_channels, m.grid, m.grid)
        return {"tokens": ObsSpec((m.window, *shape), "int64" if m.variant == "discrete" else "float32")}

    @property
    def action_dim(self) -> int:
        return max(d.frame_action_dim for d in self.mcfg.domains)

    @property
    def n_action_steps(self) -> int:
        return 0

    @property
    def horizon(self) -> int:
        return self.mcfg.window
