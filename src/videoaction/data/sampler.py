"""Windows of ``horizon`` steps over episodes, with edge padding and an ``is_pad`` mask.

Same windows as Diffusion Policy's ``SequenceSampler``: starts run from ``-pad_before`` to
``L - horizon + pad_after`` inside each episode, windows never cross episodes, and out-of-episode positions
repeat the first / last real step. Unlike DP we also return which positions are padding, and we compute the
buffer index of every window position, so a dataset can read only the frames it needs.
"""

from __future__ import annotations

import numpy as np

from videoaction.config import FrameConfig
from videoaction.errors import VideoActionError


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 42,
                   max_train_episodes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, val) masks over episodes. At least one of each when n >= 2 and val_ratio > 0."""
    val = np.zeros(n_episodes, dtype=bool)
    if val_ratio > 0 and n_episodes >= 2:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
        rng = np.random.default_rng(seed)
        val[rng.choice(n_episodes, size=n_val, replace=False)] = True
    train = ~val
    if max_train_episodes is not None and train.sum() > max_train_episodes:
        rng = np.random.default_rng(seed + 1)
        keep = rng.choice(np.nonzero(train)[0], size=max_train_episodes, replace=False)
        train = np.zeros(n_episodes, dtype=bool)
        train[keep] = True
    return train, val


class SequenceSampler:
    """All windows of one split; ``positions(i)`` maps window i to buffer indices and a padding mask."""

    def __init__(self, episode_ends: np.ndarray, horizon: int, pad_before: int = 0, pad_after: int = 0,
                 episode_mask: np.ndarray | None = None):
        if horizon < 1:
            raise VideoActionError(f"horizon must be >= 1, got {horizon}")
        episode_ends = np.asarray(episode_ends, dtype=np.int64)
        if episode_mask is None:
            episode_mask = np.ones(len(episode_ends), dtype=bool)
        if len(episode_mask) != len(episode_ends):
            raise VideoActionError(f"episode_mask has {len(episode_mask)} entries for {len(episode_ends)} episodes")
        self.horizon = horizon
        self.pad_before = min(max(pad_before, 0), horizon - 1)
        self.pad_after = min(max(pad_after, 0), horizon - 1)
        rows = []
        starts = np.concatenate([[0], episode_ends[:-1]])
        for ep in np.nonzero(episode_mask)[0]:
            s, e = int(starts[ep]), int(episode_ends[ep])
            length = e - s
            first, last = -self.pad_before, length - horizon + self.pad_after
            if last < first:
                continue  # episode shorter than the window allows
            idx = np.arange(first, last + 1)
            buf_start = np.maximum(idx, 0) + s
            buf_end = np.minimum(idx + horizon, length) + s
            sample_start = buf_start - (idx + s)
            sample_end = horizon - ((idx + horizon + s) - buf_end)
            rows.append(np.stack([buf_start, buf_end, sample_start, sample_end, np.full_like(idx, ep)], axis=1))
        self.indices = np.concatenate(rows) if rows else np.zeros((0, 5), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def positions(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(buffer index per window position (horizon,), is_pad (horizon,)) for window i (edge padding)."""
        buf_start, buf_end, sample_start, sample_end, _ = self.indices[i]
        pos = np.arange(self.horizon)
        rel = np.clip(pos - sample_start, 0, buf_end - buf_start - 1)
        return buf_start + rel, (pos < sample_start) | (pos >= sample_end)

    def episode(self, i: int) -> int:
        return int(self.indices[i, 4])

    def sample(self, arrays: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        """Padded window of every array (DP's ``sample_sequence``) plus ``is_pad``."""
        idx, is_pad = self.positions(i)
        out = {k: np.asarray(v[idx]) for k, v in arrays.items()}
        out["is_pad"] = is_pad
        return out


def frame_positions(cfg: FrameConfig, horizon: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Window positions of the history + future frames (UVA: [3, 7, 11, 15 | 19, 23, 27, 31]).

    With ``cfg.random_history`` and an ``rng`` (training), the history positions are a random non-decreasing
    tuple from ``{0..h_last}`` ending at ``h_last`` (UVA's ``different_history_freq``).
    """
    n = cfg.n_history + cfg.n_future
    pos = cfg.offset + cfg.stride * np.arange(n)
    if n == 0 or pos[-1] >= horizon or pos[0] < 0:
        raise VideoActionError(f"frame selection offset={cfg.offset} stride={cfg.stride} x {n} frames does not fit "
                               f"a window of {horizon} steps (positions {pos.tolist()})")
    if cfg.random_history and rng is not None and cfg.n_history > 1:
        h_last = int(pos[cfg.n_history - 1])
        draws = np.sort(rng.integers(0, h_last + 1, size=cfg.n_history - 1))
        pos = pos.copy()
        pos[: cfg.n_history] = np.concatenate([draws, [h_last]])
    return pos.astype(np.int64)

