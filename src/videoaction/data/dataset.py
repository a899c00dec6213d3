"""Torch dataset of training windows cut from an episode store (or from its latent cache).

Each item (see docs/interfaces.md) holds canonical keys whatever the store calls them:
``image`` (F, 3, S, S) in [-1, 1] *or* ``latent`` (F, C, h, w) (with several cameras, one such key per camera:
``image`` for the main camera and the camera's name for the others, e.g. ``wrist_image``; latents as
``latent_<name>``; see :func:`videoaction.config.camera_keys`), ``action`` (T, A), ``state`` (T, Ds),
``is_pad`` (T,), ``frame_index`` (F,), ``history_action`` (F_history, A) (the action executed right before each
history frame, NaN at the episode start), ``episode`` and optionally ``language``.
With ``cfg.pose_repr == "relative"`` state, action and history_action are end-effector poses relative to the pose
at the window's last history step (10 dims per robot, :mod:`videoaction.data.relative`).
Augmentation randomness is a pure function of (seed, epoch, item index), so results do not depend on the
number of loader workers and a resumed run sees exactly the same samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from videoaction.config import DatasetConfig, camera_keys, camera_latent_key, store_image_keys
from videoaction.errors import ConfigError, StoreError, VideoActionError
from videoaction.data.normalizer import Normalizer
from videoaction.data.relative import ABS_DIM, REL_DIM, RELATIVE_CONVENTION, check_pose_repr, n_robots, \
    relative_to_current
from videoaction.data.sampler import SequenceSampler, frame_positions, split_episodes
from videoaction.data.store import EpisodeStore
from videoaction.data.transforms import transform_frames

IN_MEMORY_LIMIT_BYTES = 4 << 30  # frames below this size are decompressed once into RAM
RELATIVE_STAT_WINDOWS = 20_000  # relative windows (evenly spaced) the normalizer statistics are fitted on


class SequenceDataset(Dataset):
    def __init__(self, store: EpisodeStore | str | Path, cfg: DatasetConfig, split: str = "train",
                 augment: bool | None = None, seed: int = 0):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, got {split!r}")
        self.store = store if isinstance(store, EpisodeStore) else EpisodeStore.open(store)
        self.cfg, self.split, self.seed, self.epoch = cfg, split, seed, 0
        self.augment = (split == "train") if augment is None else augment
        self.relative = check_pose_repr(getattr(cfg, "pose_repr", "abs"))
        keys = self.store.keys
        self.cameras = camera_keys(cfg)  # batch keys, main camera first
        stores = store_image_keys(cfg)
        self.use_latents = cfg.latent_key in keys and stores[0] not in keys
        self.frame_keys = ([camera_latent_key(c, cfg.latent_key) for c in self.cameras] if self.use_latents
                           else list(stores))  # store key of each camera
        self.frame_key = self.frame_keys[0]
        required = [*self.frame_keys, cfg.action_key] + ([cfg.state_key] if cfg.state_key else [])
        for key in required:
            if key not in keys:
                raise StoreError(self.store.path, "missing data key required by the dataset config",
                                 key=f"data/{key}", expected=f"keys {required}", found=keys)
        self._check_shapes()
        if self.store.n_episodes == 0:
            raise StoreError(self.store.path, "store has no episodes")
        if getattr(cfg, "episodes_file", None):  # only the listed episodes, split among themselves
            from videoaction.data.formats.base import read_episode_list, split_subset

            train, val = split_subset(read_episode_list(cfg.episodes_file), self.store.n_episodes, cfg.val_ratio,
                                      cfg.split_seed, cfg.max_train_episodes)
        else:
            train, val = split_episodes(self.store.n_episodes, cfg.val_ratio, cfg.split_seed, cfg.max_train_episodes)
        self.episode_mask = {"train": train, "val": val, "all": np.ones_like(train)}[split]
        self.sampler = SequenceSampler(self.store.episode_ends, cfg.horizon, cfg.pad_before, cfg.pad_after,
                                       self.episode_mask)
        self.frame_pos = frame_positions(cfg.frames, cfg.horizon)  # validates the selection fits the window
        self.action = self.store.to_numpy([cfg.action_key])[cfg.action_key].astype(np.float32)
        self.state = None
        if cfg.state_key:
            state = self.store.to_numpy([cfg.state_key])[cfg.state_key].astype(np.float32)
            self.state = state if self.relative or not cfg.state_dims else state[:, : cfg.state_dims]
        if self.relative:
            self._check_relative()
        nbytes = 0
        for key in self.frame_keys:
            arr = self.store.array(key)
            nbytes += self.store.n_steps * int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
        in_memory = nbytes <= IN_MEMORY_LIMIT_BYTES and not getattr(self.store, "lazy_frames", False)
        self.frames = self.store.to_numpy(self.frame_keys) if in_memory else None  # store key -> all frames
        self.language = None
        if cfg.language_key:
            self.language = [str(v) for v in self.store.meta_column(cfg.language_key)]

    def _check_shapes(self) -> None:
        cfg, path = self.cfg, self.store.path
        for frame_key in self.frame_keys:
            self._check_frames(frame_key)
        a_shape, a_dtype = self.store.spec(cfg.action_key)
        if len(a_shape) != 1 or a_dtype.kind not in "fiu":
            raise StoreError(path, "actions must be a numeric vector per step", key=f"data/{cfg.action_key}",
                             expected="(A,) float", found=f"{a_shape} {a_dtype}")
        if cfg.state_key:
            s_shape, s_dtype = self.store.spec(cfg.state_key)
            if len(s_shape) != 1 or s_dtype.kind not in "fiu":
                raise StoreError(path, "state must be a numeric vector per step", key=f"data/{cfg.state_key}",
                                 expected="(D,) float", found=f"{s_shape} {s_dtype}")
            if cfg.state_dims and cfg.state_dims > s_shape[0] and not self.relative:
                raise StoreError(path, f"dataset.state_dims={cfg.state_dims} exceeds the state size",
                                 key=f"data/{cfg.state_key}", expected=f">= {cfg.state_dims} dims", found=s_shape)

    def _check_frames(self, frame_key: str) -> None:
        path = self.store.path
        shape, dtype = self.store.spec(frame_key)
        if self.use_latents:
            if len(shape) != 3:
                raise StoreError(path, "latent frames must be (C, h, w) per step", key=f"data/{frame_key}",
                                 found=shape)
        elif len(shape) != 3 or shape[-1] not in (1, 3, 4):
            raise StoreError(path, "images must be (H, W, 3) per step", key=f"data/{frame_key}",
                             expected="(H, W, 3) uint8", found=f"{shape} {dtype}")
        elif dtype != np.uint8 and dtype.kind != "f":
            raise StoreError(path, "images must be uint8 (or float 0-255)", key=f"data/{frame_key}",
                             expected="uint8", found=str(dtype))

    def _check_relative(self) -> None:
        """Relative windows need (7 per robot) state and action; they yield 10 per robot and, for one robot, the
        ``rel_rot6d10`` action convention (written into the run's config so evaluation converts back)."""
        cfg, path = self.cfg, self.store.path
        if self.state is None:
            raise StoreError(path, "dataset.pose_repr=relative needs the observed end-effector pose: set "
                             "dataset.state_key", key="dataset.state_key", expected="a (7 per robot) state key")
        for key, arr in ((cfg.state_key, self.state), (cfg.action_key, self.action)):
            try:
                n_robots(arr.shape[-1], f"data/{key}")
            except VideoActionError:
                raise StoreError(path, "dataset.pose_repr=relative needs per robot position (3) + axis-angle (3) + "
                                 "gripper (1)", key=f"data/{key}", expected=f"a multiple of {ABS_DIM} dims",
                                 found=arr.shape[1:]) from None
        if self.action.shape[-1] != self.state.shape[-1]:
            raise StoreError(path, "dataset.pose_repr=relative needs actions laid out like the state (pose targets "
                             "of the same robots)", key=f"data/{cfg.action_key}", expected=self.state.shape[1:],
                             found=self.action.shape[1:])
        robots = self.state.shape[-1] // ABS_DIM
        if cfg.state_dims not in (None, REL_DIM * robots):
            raise ConfigError(f"dataset.pose_repr=relative yields {REL_DIM * robots}-d proprio ({robots} robot(s)); "
                              f"dataset.state_dims={cfg.state_dims} would cut it: set it to {REL_DIM * robots} or None")
        if robots == 1:
            if cfg.action_convention not in ("", RELATIVE_CONVENTION):
                raise ConfigError(f"dataset.pose_repr=relative trains {RELATIVE_CONVENTION} actions, but "
                                  f"dataset.action_convention={cfg.action_convention!r}")
            cfg.action_convention = RELATIVE_CONVENTION  # saved with the checkpoint: evaluation converts back

    def _relative_windows(self, buf_idx: np.ndarray, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
        """(..., T) window positions -> relative (state, action, *extra) (..., T, 10R) about the last history step."""
        return relative_to_current(self.state[buf_idx], self.cfg.frames.last_history, self.action[buf_idx], *extra)

    # ------------------------------------------------------------------------------------------ sizes
    @property
    def action_dim(self) -> int:
        a = int(self.action.shape[-1])
        return a // ABS_DIM * REL_DIM if self.relative else a

    @property
    def state_dim(self) -> int:
        if self.state is None:
            return 0
        d = int(self.state.shape[-1])
        return d // ABS_DIM * REL_DIM if self.relative else d

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(self.store.spec(self.frame_key)[0])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def fit_normalizer(self) -> Normalizer:
        """Statistics of every step of this split's episodes (fit on the training split); relative windows: of
        the windows themselves (actions at every step, proprio at the history steps), as UMI does."""
        if self.relative:
            return self._fit_relative_normalizer()
        steps = np.zeros(self.store.n_steps, dtype=bool)
        starts = self.store.episode_starts
        for ep in np.nonzero(self.episode_mask)[0]:
            steps[starts[ep]: self.store.episode_ends[ep]] = True
        arrays = {"action": self.action[steps]}
        modes = {"action": self.cfg.action_norm}
        if self.state is not None:
            arrays["state"], modes["state"] = self.state[steps], self.cfg.state_norm
        return Normalizer.fit_arrays(arrays, modes)

    def _fit_relative_normalizer(self) -> Normalizer:
        n = len(self.sampler)
        if n == 0:
            raise StoreError(self.store.path, f"the {self.split} split has no windows to fit statistics on")
        pick = np.unique(np.linspace(0, n - 1, min(n, RELATIVE_STAT_WINDOWS)).round().astype(np.int64))
        states, actions = [], []
        for chunk in np.array_split(pick, max(1, len(pick) // 1024)):
            idx = np.stack([self.sampler.positions(int(i))[0] for i in chunk])  # (N, T)
            state, action = self._relative_windows(idx)
            states.append(state[:, : self.cfg.frames.last_history + 1].reshape(-1, state.shape[-1]))
            actions.append(action.reshape(-1, action.shape[-1]))
        return Normalizer.fit_arrays({"action": np.concatenate(actions), "state": np.concatenate(states)},
                                     {"action": self.cfg.action_norm, "state": self.cfg.state_norm})

    # ------------------------------------------------------------------------------------------ items
    def _read_frames(self, idx: np.ndarray, frame_key: str | None = None) -> np.ndarray:
        frame_key = frame_key or self.frame_key
        if self.frames is not None:
            return self.frames[frame_key][idx]
        uniq, inverse = np.unique(idx, return_inverse=True)
        return self.store.array(frame_key).oindex[uniq][inverse]

    def _history_action(self, i: int, buf_idx: np.ndarray, is_pad: np.ndarray, frame_pos: np.ndarray) -> np.ndarray:
        """(n_history, A): the action executed right before each history frame, NaN where none was (the frame is
        the episode's first, or an edge-padded copy of it) -- what a rollout's ``ObservationHistory`` reports."""
        hist = frame_pos[: self.cfg.frames.n_history]
        prev = buf_idx[hist] - 1
        known = ~is_pad[hist] & (prev >= self.store.episode_starts[self.sampler.episode(i)])
        return np.where(known[:, None], self.action[np.maximum(prev, 0)], np.float32(np.nan)).astype(np.float32)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.augment else None
        buf_idx, is_pad = self.sampler.positions(i)
        frame_pos = frame_positions(self.cfg.frames, self.cfg.horizon, rng) if rng is not None else self.frame_pos
        history = self._history_action(i, buf_idx, is_pad, frame_pos)
        if self.relative:
            state, action, history = self._relative_windows(buf_idx, history)
        else:
            state, action = (None if self.state is None else self.state[buf_idx]), self.action[buf_idx]
        item = {
            "action": torch.from_numpy(action),
            "history_action": torch.from_numpy(history),
            "is_pad": torch.from_numpy(is_pad),
            "frame_index": torch.from_numpy(frame_pos),
            "episode": self.sampler.episode(i),
        }
        for camera, frame_key in zip(self.cameras, self.frame_keys):
            frames = self._read_frames(buf_idx[frame_pos], frame_key)
            if self.use_latents:
                item[camera_latent_key(camera)] = torch.from_numpy(np.asarray(frames, dtype=np.float32))
            else:  # each camera draws its own augmentation from the item's generator, in camera order
                item[camera] = transform_frames(frames, self.cfg, rng)
        if state is not None:
            item["state"] = torch.from_numpy(state)
        if self.language is not None:
            item["language"] = self.language[self.sampler.episode(i)]
        return item
