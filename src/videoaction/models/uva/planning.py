"""Long-horizon video rollouts and forward-dynamics planning with a :class:`UVAPolicy` (not in the reference code).

* :func:`rollout_video`: chunk after chunk, each chunk's predicted future frames become the next chunk's history
  (the last ``n_history`` frames of [history, prediction]); actions per chunk come from a given sequence, from the
  model's own policy head (``"policy"``), from a callable, or are absent (pure video model).
* :func:`plan_with_dynamics`: the paper's forward-dynamics planning experiment (code never released): predict the
  outcome of each of K candidate action chunks with the dynamics model (``dynamic_model``) and return the chunk whose
  predicted final frame is closest to a goal (latent MSE by default, or any scorer).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from videoaction.errors import VideoActionError


def _as_tensor(x, dtype=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if dtype is None else t.to(dtype)


@torch.no_grad()
def rollout_video(policy, obs: Mapping[str, Any], actions_or_policy=None, n_chunks: int = 2, *,
                  num_iter: int | None = None, cfg: float | None = None, temperature: float | None = None,
                  sampler: str | None = None, num_steps: int | None = None, decode: bool = True,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Predict ``n_chunks`` consecutive chunks of future frames.

    actions_or_policy: None (video model, no actions); ``"policy"`` (the model's own action head on the current
    history, then forward dynamics); raw actions (B, n_chunks * n_actions, A); or a callable
    ``fn(chunk_index, history_latents (B, Th, C, h, w)) -> raw actions (B, n_actions, A)``.
    Returns ``latent`` (B, n_chunks * T, C, h, w), ``frames`` uint8 (with ``decode``) and ``action`` (B, n_chunks *
    n_actions, A) raw when actions were used. Proprio / language conditions stay those of ``obs``.
    """
    if n_chunks < 1:
        raise VideoActionError(f"rollout_video: n_chunks must be >= 1, found {n_chunks}")
    m = policy.cfg.model
    cond = policy.condition(obs)
    b, nh, na = cond["history"].shape[0], policy.model.n_history, m.n_actions
    seq = None
    if isinstance(actions_or_policy, str):
        if actions_or_policy != "policy":
            raise VideoActionError(f"rollout_video: actions_or_policy must be None, 'policy', actions or a callable; "
                                   f"found {actions_or_policy!r}")
    elif actions_or_policy is not None and not callable(actions_or_policy):
        seq = _as_tensor(actions_or_policy, torch.float32)
        if seq.shape != (b, n_chunks * na, m.action_dim):
            raise VideoActionError(f"rollout_video: actions must be ({b}, {n_chunks * na}, {m.action_dim}) for "
                                   f"{n_chunks} chunks of {na}, found {tuple(seq.shape)}")
    latents, actions = [], []
    for k in range(n_chunks):
        act = None
        if actions_or_policy == "policy":
            act = policy.sample_actions(cond, temperature=temperature, sampler=sampler, num_steps=num_steps,
                                        generator=generator)
        elif seq is not None:
            act = policy.normalizer.normalize("action", seq[:, k * na: (k + 1) * na].to(policy.device))
        elif callable(actions_or_policy):
            raw = _as_tensor(actions_or_policy(k, cond["history"]), torch.float32)
            act = policy._norm_actions(raw, b)
        out = policy.sample_video(cond, act, num_iter=num_iter, cfg=cfg, temperature=temperature, sampler=sampler,
                                  num_steps=num_steps, generator=generator)
        latents.append(out["latent"])
        if act is not None:
            actions.append(policy.normalizer.unnormalize("action", act))
        cond = dict(cond, history=torch.cat([cond["history"], out["latent"]], dim=1)[:, -nh:])
    res = {"latent": torch.cat(latents, dim=1)}
    if actions:
        res["action"] = torch.cat(actions, dim=1)
    if decode:
        res["frames"] = policy.decode_latents(res["latent"])
    return res


def latent_goal_score(pred: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Negative MSE between each candidate's last predicted frame latent (N, T, C, h, w) and the goal (N, C, h, w)."""
    return -((pred[:, -1] - goal) ** 2).flatten(1).mean(1)


@torch.no_grad()
def plan_with_dynamics(policy, obs: Mapping[str, Any], candidate_actions, goal, *, n_candidates: int = 8,
                       num_iter: int | None = None, cfg: float | None = None, temperature: float | None = None,
                       sampler: str | None = None, num_steps: int | None = None,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Pick the best of K candidate action chunks by their predicted outcome.

    candidate_actions: raw (B, K, n_actions, A), or a sampler ``fn(obs, K) -> (B, K, n_actions, A)`` (e.g. the
        policy sampled K times, or noise around it); K = ``n_candidates`` for a sampler.
    goal: uint8 goal image (B, H, W, 3), goal latents (B, C, h, w), or a scorer
        ``fn(pred_latents (B*K, T, C, h, w)) -> (B*K,)`` (higher is better).
    Returns ``action`` (B, n_actions, A) (best chunk), ``index`` (B,), ``scores`` (B, K), ``latent`` (B, K, T, C, h, w).
    """
    m = policy.cfg.model
    cond = policy.condition(obs)
    b = cond["history"].shape[0]
    cand = candidate_actions(obs, n_candidates) if callable(candidate_actions) else candidate_actions
    cand = _as_tensor(cand, torch.float32).to(policy.device)
    if cand.dim() != 4 or cand.shape[0] != b or cand.shape[2:] != (m.n_actions, m.action_dim):
        raise VideoActionError(f"plan_with_dynamics: candidate actions must be ({b}, K, {m.n_actions}, "
                               f"{m.action_dim}), found {tuple(cand.shape)}")
    k = cand.shape[1]
    rep = {key: (v.repeat_interleave(k, dim=0) if isinstance(v, torch.Tensor) else v) for key, v in cond.items()}
    act = policy.normalizer.normalize("action", cand.reshape(b * k, m.n_actions, m.action_dim))
    pred = policy.sample_video(rep, act, num_iter=num_iter, cfg=cfg, temperature=temperature, sampler=sampler,
                               num_steps=num_steps, generator=generator)["latent"]  # (B*K, T, C, h, w)
    if callable(goal):
        scores = _as_tensor(goal(pred), torch.float32).to(pred.device).reshape(b * k)
    else:
        g = _as_tensor(goal)
        if g.dtype == torch.uint8:
            if g.dim() != 4 or g.shape[0] != b:
                raise VideoActionError(f"plan_with_dynamics: goal image must be ({b}, H, W, 3) uint8, found "
                                       f"{tuple(g.shape)}")
            g = policy.encode_frames(policy.preprocess(g[:, None]))[:, 0]
        g = g.to(pred.device, torch.float32)
        if g.shape != (b, *pred.shape[2:]):
            raise VideoActionError(f"plan_with_dynamics: goal latents must be ({b}, {', '.join(map(str, pred.shape[2:]))})"
                                   f", found {tuple(g.shape)}")
        scores = latent_goal_score(pred, g.repeat_interleave(k, dim=0))
    scores = scores.reshape(b, k)
    best = scores.argmax(dim=1)
    return {"action": cand[torch.arange(b), best], "index": best, "scores": scores,
            "latent": pred.reshape(b, k, *pred.shape[1:])}
