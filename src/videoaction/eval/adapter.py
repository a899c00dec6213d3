"""Uniform view of what the runner evaluates: a :class:`~videoaction.models.base.Policy` or a plain callable.

The adapter gives each policy the observation keys its ``observation_spec()`` declares (low-dim keys: the first D
dims, as checked against the environment's observation protocol by the runner; frames resized with the training
resize when the environment renders at another size) and returns action chunks as numpy ``(B, n_steps, A)``.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import numpy as np
import torch

from videoaction.data.transforms import resize_uint8_frames
from videoaction.errors import VideoActionError
from videoaction.eval.history import HISTORY_ACTION_KEY


class PolicyAdapter:
    """Uniform view of a :class:`~videoaction.models.base.Policy` or a callable: history length, chunk size and
    ``act(obs_history) -> actions (B, n_action_steps, A)`` numpy."""

    def __init__(self, policy: Any, predict_kwargs: Mapping[str, Any] | None = None, seed: int | None = 0):
        from videoaction.models.base import Policy

        self.policy = policy
        self.is_model = isinstance(policy, Policy)
        self.predict_kwargs = dict(predict_kwargs or {})
        self.generator = None
        if self.is_model:
            params = inspect.signature(policy.predict_action).parameters
            unknown = [k for k in self.predict_kwargs if k not in params]
            if unknown:
                raise VideoActionError(f"{type(policy).__name__}.predict_action does not accept {unknown}")
            if seed is not None and "generator" in params:
                self.generator = torch.Generator(device=policy.device).manual_seed(int(seed))
            self.spec = {k: tuple(v.shape) for k, v in policy.observation_spec().items()}
            self.n_obs_steps = max(s[0] for s in self.spec.values()) if self.spec else 1
            self.n_action_steps = int(policy.n_action_steps)
            self.description = f"{policy.family} policy"
        else:
            if not callable(policy):
                raise VideoActionError(f"policy must be a videoaction Policy or a callable, got "
                                       f"{type(policy).__name__}")
            spec = policy.observation_spec() if hasattr(policy, "observation_spec") else None
            self.spec = {k: tuple(v.shape) for k, v in spec.items()} if spec else None
            self.n_obs_steps = int(getattr(policy, "n_obs_steps", 1))
            self.n_action_steps = int(getattr(policy, "n_action_steps", 1))
            desc = getattr(policy, "describe", None)
            self.description = desc() if callable(desc) else getattr(policy, "__name__", type(policy).__name__)
        self.wants_history_action = bool(self.spec) and HISTORY_ACTION_KEY in self.spec
        self._warned = False

    def bind(self, action_space) -> None:
        if hasattr(self.policy, "bind_action_space"):
            self.policy.bind_action_space(action_space)

    def _model_obs(self, obs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        device = self.policy.device
        for key, shape in self.spec.items():
            if key not in obs:
                raise VideoActionError(f"the policy expects observation key {key!r}, the environment gives "
                                       f"{sorted(obs)}")
            x = obs[key][:, -shape[0]:]  # (B, T_k, ...)
            if x.dtype == np.uint8 and len(shape) == 4 and tuple(x.shape[2:4]) != tuple(shape[1:3]):
                x = resize_uint8_frames(x, tuple(shape[1:3]))
                if not self._warned:
                    print(f"videoaction eval: note: resizing {key} frames {obs[key].shape[2:4]} -> {shape[1:3]}")
                    self._warned = True
            elif x.dtype != np.uint8 and len(shape) == 2:
                if x.shape[-1] < shape[-1]:
                    raise VideoActionError(f"the policy expects {key} with {shape[-1]} dims per step, the environment "
                                           f"gives {x.shape[-1]}")
                x = x[..., : shape[-1]].astype(np.float32)
            out[key] = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        if "language" in obs:
            out["language"] = list(obs["language"])
        return out

    @torch.no_grad()
    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.is_model:
            kw = dict(self.predict_kwargs)
            if self.generator is not None:
                kw["generator"] = self.generator
            pred = self.policy.predict_action(self._model_obs(obs), **kw)["action"]
            actions = pred.detach().float().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        else:
            if self.spec:  # a callable that declares its observations gets those (low-dim keys: the first D dims)
                obs = {k: (v if k == "language" or k not in self.spec or len(self.spec[k]) != 2
                           else v[..., : self.spec[k][-1]]) for k, v in obs.items()
                       if k in self.spec or k == "language"}
            o = dict(obs) if self.n_obs_steps > 1 else {k: (v[:, -1] if k != "language" else v) for k, v in obs.items()}
            actions = np.asarray(self.policy(o), dtype=np.float32)
        if actions.ndim == 2:
            actions = actions[:, None]
        if actions.ndim != 3:
            raise VideoActionError(f"policy returned actions of shape {actions.shape}; expected (B, n_steps, A)")
        return actions[:, : self.n_action_steps] if self.n_action_steps > 0 else actions


__all__ = ["PolicyAdapter"]
