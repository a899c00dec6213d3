"""What a policy reads from its observation history, on both sides: a rollout's raw observation and a training batch.

A family describes its inputs once with a :class:`HistoryLayout` (which of the last ``n_obs_steps`` observations
are history frames, whether proprio and history actions are used). :func:`select_observation` validates a raw
observation (``predict_action``'s input, e.g. :meth:`videoaction.eval.history.ObservationHistory.stacked` batched)
and picks the history steps; :func:`select_batch` picks the same steps from a training batch of
:class:`videoaction.data.dataset.SequenceDataset`. Training and rollouts therefore feed a network the same frames,
states and history actions (``tests/test_alignment.py`` checks it at every step of an episode).

Cameras: ``layout.cameras`` names the image keys, main camera (``image``) first (``("image", "wrist_image")``);
every camera gets the same history steps, and batches hold one key per camera (``latent`` / ``latent_<camera>`` for
latent stores, :func:`videoaction.config.camera_latent_key`).

History actions: entry ``k`` is the action executed right *before* history frame ``k`` (never the action about to
be chosen), NaN where none was executed (episode start); families map NaN to a learned "no action" token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from videoaction.config import FrameConfig, camera_latent_key
from videoaction.errors import VideoActionError

IMAGE, STATE, HISTORY_ACTION, LANGUAGE = "image", "state", "history_action", "language"


@dataclass(frozen=True)
class HistoryLayout:
    """Which observations a policy conditions on.

    ``positions``: history frames as indices into the last ``n_obs_steps`` observations (UVA: (3, 7, 11, 15) of 16;
    DP-C: (0, 1) of 2). ``state_dim`` / ``action_dim``: proprio dims and history-action dims (0 = not used).
    ``cameras``: the image keys, main camera first (:func:`videoaction.config.camera_keys` of the dataset).
    """

    positions: tuple[int, ...]
    n_obs_steps: int
    state_dim: int = 0
    action_dim: int = 0
    language: bool = False
    cameras: tuple[str, ...] = (IMAGE,)

    @classmethod
    def from_frames(cls, frames: FrameConfig, *, state_dim: int = 0, history_action_dim: int = 0,
                    language: bool = False, cameras: tuple[str, ...] = (IMAGE,)) -> "HistoryLayout":
        """Evenly spaced history frames ending at ``frames.last_history`` (the dataset's evaluation selection)."""
        pos = tuple(int(frames.offset + frames.stride * k) for k in range(frames.n_history))
        return cls(pos, frames.n_obs_steps, state_dim, history_action_dim, language, tuple(cameras))


def as_tensor(x: Any, what: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """numpy / list / tensor -> tensor (no copy for tensors of the right dtype)."""
    try:
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise VideoActionError(f"observation {what!r}: not an array ({exc})") from None
    return t if dtype is None else t.to(dtype)


def _last_steps(x: torch.Tensor, key: str, layout: HistoryLayout, tail: tuple, tail_desc: str) -> torch.Tensor:
    t = layout.n_obs_steps
    if x.dim() != 2 + len(tail) or x.shape[1] < t or any(e is not None and x.shape[2 + i] != e
                                                           for i, e in enumerate(tail)):
        raise VideoActionError(f"observation {key!r}: expected (B, {t}, {tail_desc}) (the last {t} steps, oldest "
                               f"first), found shape {tuple(x.shape)}")
    return x[:, x.shape[1] - t:][:, list(layout.positions)]


def select_observation(obs: Mapping[str, Any], layout: HistoryLayout) -> dict[str, Any]:
    """Raw batched observation -> the history steps the policy uses (still raw, un-normalised).

    Returns ``image`` uint8 (B, n_history, H, W, 3) (and each further camera of ``layout.cameras`` under its key,
    same batch size), ``state`` float32 (B, n_history, Ds), ``history_action``
    float32 (B, n_history, A) (NaN = none executed) and ``language`` (list of B strings), as the layout needs.
    Longer histories are cut to their last ``n_obs_steps`` steps; extra state dims beyond ``state_dim`` are dropped
    (datasets use the first ``state_dims`` dims).
    """
    out: dict[str, Any] = {}
    for cam in layout.cameras:
        if cam not in obs:
            raise VideoActionError(f"observation: missing camera key {cam!r} (the policy's cameras: "
                                   f"{list(layout.cameras)}); got keys {sorted(obs)}")
        out[cam] = _last_steps(as_tensor(obs[cam], cam), cam, layout, (None, None, 3), "H, W, 3 uint8")
    b = out[layout.cameras[0]].shape[0]
    if layout.state_dim:
        if STATE not in obs:
            raise VideoActionError(f"observation: missing key {STATE!r} (B, {layout.n_obs_steps}, "
                                   f"{layout.state_dim}); got keys {sorted(obs)}")
        st = as_tensor(obs[STATE], STATE, torch.float32)
        if st.dim() == 3 and st.shape[2] > layout.state_dim:
            st = st[..., : layout.state_dim]
        out[STATE] = _last_steps(st, STATE, layout, (layout.state_dim,), f"{layout.state_dim} float32")
    if layout.action_dim:
        if HISTORY_ACTION not in obs:
            raise VideoActionError(f"observation: missing key {HISTORY_ACTION!r} (B, {layout.n_obs_steps}, "
                                   f"{layout.action_dim}): the action executed before each observation, NaN at the "
                                   f"episode start (ObservationHistory(action_dim=...) provides it)")
        ha = as_tensor(obs[HISTORY_ACTION], HISTORY_ACTION, torch.float32)
        out[HISTORY_ACTION] = _last_steps(ha, HISTORY_ACTION, layout, (layout.action_dim,),
                                          f"{layout.action_dim} float32")
    if layout.language:
        lang = obs.get(LANGUAGE)
        if lang is None or isinstance(lang, str) or len(lang) != b:
            raise VideoActionError(f"observation {LANGUAGE!r}: expected a list of {b} instructions, found {lang!r}")
        out[LANGUAGE] = [str(v) for v in lang]
    for key in (*layout.cameras[1:], STATE, HISTORY_ACTION):
        if key in out and out[key].shape[0] != b:
            raise VideoActionError(f"observation {key!r}: batch size {out[key].shape[0]}, 'image' has {b}")
    return out


def select_batch(batch: Mapping[str, Any], layout: HistoryLayout) -> dict[str, Any]:
    """Training batch -> the same history steps as :func:`select_observation` (frames already transformed).

    ``image`` (B, n_history, 3, S, S) in [-1, 1] or ``latent`` (B, n_history, C, h, w) (one key per camera of
    ``layout.cameras``: its name, or ``latent_<name>``): the dataset puts the history frames first; ``state`` gathered at ``frame_index`` (the window positions of the frames);
    ``history_action`` as the dataset computed it (B, n_history, A).
    """
    nh = len(layout.positions)
    out: dict[str, Any] = {}
    latent = IMAGE not in batch and "latent" in batch
    for cam in layout.cameras:
        key = camera_latent_key(cam) if latent else cam
        if key not in batch:
            raise VideoActionError(f"training batch: needs {key!r} (camera {cam!r} of {list(layout.cameras)}; "
                                   f"'image' or 'latent' for the main camera), found keys {sorted(batch)}")
        out[key] = batch[key][:, :nh]
    if layout.state_dim:
        if STATE not in batch:
            raise VideoActionError(f"training batch: needs {STATE!r} (B, T, {layout.state_dim}); keys {sorted(batch)}")
        st = batch[STATE].float()
        b = st.shape[0]
        idx = batch["frame_index"][:, :nh].long().to(st.device) if "frame_index" in batch else \
            torch.tensor(layout.positions, device=st.device).expand(b, -1)
        out[STATE] = torch.gather(st, 1, idx.unsqueeze(-1).expand(-1, -1, st.shape[-1]))
    if layout.action_dim:
        if HISTORY_ACTION not in batch:
            raise VideoActionError(f"training batch: needs {HISTORY_ACTION!r} (B, {nh}, {layout.action_dim}); "
                                   f"keys {sorted(batch)}")
        out[HISTORY_ACTION] = batch[HISTORY_ACTION].float()
    if layout.language:
        out[LANGUAGE] = list(batch[LANGUAGE])
    return out
