"""Deterministic, resumable, rank-sharded order of training samples.

The sample stream is the concatenation of seeded permutations of the dataset, one per epoch. Each micro-batch
step takes the next ``batch_size * world_size`` positions of the stream; rank ``r`` gets the ``r``-th block of
``batch_size``. The whole state is ``(epoch, position)`` (position = samples consumed in that epoch), so a
resumed run continues with exactly the samples it would have seen, on any number of loader workers.
A batch may straddle two epochs (small datasets); every item carries its own epoch, which the dataset uses for
its augmentation seed (``SequenceDataset.set_epoch``).
Weighted sampling (a dataset mixture's ``dataset_weight``, :func:`window_weights`): each epoch is ``n`` seeded
draws with replacement in proportion to the windows' weights instead of a permutation; the state is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from videoaction.errors import VideoActionError


@dataclass
class OrderState:
    epoch: int = 0
    position: int = 0


class BatchOrder:
    """The stream of (epoch, index) pairs of one rank, from a given state onwards."""

    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 state: OrderState | None = None, index_map: np.ndarray | None = None,
                 weights: np.ndarray | None = None):
        if n <= 0:
            raise VideoActionError("the training split has no samples (episodes shorter than the window?)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.batch_size, self.world_size, self.rank, self.seed = n, batch_size, world_size, rank, seed
        self.state = OrderState(**vars(state)) if state is not None else OrderState()
        self._perm_epoch, self._perm = -1, np.zeros(0, dtype=np.int64)
        self.index_map = index_map  # pool position -> dataset index (a subset of the dataset), None = identity
        self.weights = None  # per pool position: draw epochs with replacement in proportion (None = permutations)
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64).reshape(-1)
            if len(w) != n or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
                raise VideoActionError(f"sampling weights: need {n} finite, non-negative weights with a positive "
                                       f"sum, got {len(w)} (sum {w.sum() if len(w) else 0})")
            self.weights = w / w.sum()

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch, 0x5EED])
            self._perm = (rng.permutation(self.n) if self.weights is None
                          else rng.choice(self.n, size=self.n, replace=True, p=self.weights))
            self._perm_epoch = epoch
        return self._perm

    def next_batch(self) -> list[tuple[int, int]]:
        """This rank's (epoch, index) pairs of the next global batch; advances the state."""
        start = self.rank * self.batch_size
        out, epoch, pos = [], self.state.epoch, self.state.position
        global_size = self.batch_size * self.world_size
        for k in range(global_size):
            if pos >= self.n:
                epoch, pos = epoch + 1, 0
            if start <= k < start + self.batch_size:
                i = int(self.permutation(epoch)[pos])
                out.append((epoch, int(self.index_map[i]) if self.index_map is not None else i))
            pos += 1
        if pos >= self.n:
            epoch, pos = epoch + 1, 0
        self.state = OrderState(epoch, pos)
        return out

    def clone(self) -> "BatchOrder":
        return BatchOrder(self.n, self.batch_size, self.world_size, self.rank, self.seed, self.state, self.index_map,
                          self.weights)

    def next_is_video(self) -> bool:
        return False

    def state_dict(self) -> dict:
        return vars(self.state).copy()

    def load_state_dict(self, state: dict) -> None:
        self.state = OrderState(int(state["epoch"]), int(state["position"]))


class MixedOrder:
    """Action-labelled windows, with every ``every``-th micro-batch drawn from action-free (video-only) windows.

    Both pools are :class:`BatchOrder` streams; the schedule depends only on the micro-batch counter, so every rank
    draws a video-only batch at the same step and a resumed run continues the same schedule.
    """

    def __init__(self, action: BatchOrder, video: BatchOrder, every: int, count: int = 0):
        if every < 2:
            raise VideoActionError(f"action-free batches every {every} micro-batches: need >= 2")
        self.action, self.video, self.every, self.count = action, video, every, count

    def next_is_video(self) -> bool:
        return self.count % self.every == self.every - 1

    def next_batch(self) -> list[tuple[int, int]]:
        order = self.video if self.next_is_video() else self.action
        self.count += 1
        return order.next_batch()

    def clone(self) -> "MixedOrder":
        return MixedOrder(self.action.clone(), self.video.clone(), self.every, self.count)

    @property
    def state(self) -> OrderState:
        return self.action.state

    def state_dict(self) -> dict:
        return {**self.action.state_dict(), "video": self.video.state_dict(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.action.load_state_dict(state)
        if "video" in state:
            self.video.load_state_dict(state["video"])
        self.count = int(state.get("count", 0))


class _InfiniteBatches(Sampler):
    def __init__(self, order: BatchOrder):
        self.order = order

    def __iter__(self):
        order = self.order.clone()
        while True:
            yield order.next_batch()


class EpochIndexed(Dataset):
    """``ds[(epoch, i)]`` = ``ds.set_epoch(epoch); ds[i]`` (works inside loader workers, which hold copies)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key
        if getattr(self.dataset, "epoch", None) != epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[i]


def split_action_free(dataset, store, task_modes, every: int, log) -> tuple:
    """Windows of episodes whose meta ``has_action`` is False are kept apart from the action-labelled ones.

    Returns (normaliser fitted on action-labelled episodes only, has_action per episode or None, pools) where
    pools = (action window indices, action-free window indices or None when the model has no video-only mode).
    """
    if "has_action" not in store.meta_keys:
        return dataset.fit_normalizer(), None, None
    has_action = np.asarray(store.meta_column("has_action")).astype(bool)
    episode = dataset.sampler.indices[:, 4]
    act, vid = np.nonzero(has_action[episode])[0], np.nonzero(~has_action[episode])[0]
    if len(act) == 0:
        raise VideoActionError(f"{store.path}: every training episode has has_action=False; nothing to learn "
                               f"actions from")
    video_ok = "video_model" in tuple(task_modes or ()) and every >= 2
    pools = (act, vid if video_ok and len(vid) else None)
    if len(vid):
        log(f"{len(vid)} of {len(episode)} training windows come from action-free episodes: "
            + (f"every {every}th batch uses them with video-only modes" if pools[1] is not None
               else "left out (the model has no video-only task mode)"))
    mask = dataset.episode_mask
    dataset.episode_mask = mask & has_action  # action / state statistics from action-labelled episodes only
    try:
        return dataset.fit_normalizer(), has_action, pools
    finally:
        dataset.episode_mask = mask


def make_order(n: int, batch_size: int, world_size: int, rank: int, seed: int, pools=None, every: int = 4,
               weights: np.ndarray | None = None):
    """The sample order of one rank: all windows, or action windows mixed with action-free ones (``pools``);
    ``weights`` (one per window, e.g. :func:`window_weights`) draws the (action) windows in proportion to them."""
    if pools is None:
        return BatchOrder(n, batch_size, world_size, rank, seed, weights=weights)
    act, vid = pools
    main = BatchOrder(len(act), batch_size, world_size, rank, seed, index_map=act,
                      weights=None if weights is None else np.asarray(weights)[act])
    if vid is None:
        return main
    return MixedOrder(main, BatchOrder(len(vid), batch_size, world_size, rank, seed + 1, index_map=vid), every)


def window_weights(dataset, store) -> np.ndarray | None:
    """Per-window sampling weights of a weighted dataset mixture (episodes with ``dataset_weight`` metadata, UMI
    mixtures: each dataset drawn with probability weight / sum of weights, whatever its size), None otherwise."""
    meta = getattr(store, "meta_keys", ())
    if "dataset_weight" not in meta or "dataset" not in meta or len(set(store.meta_column("dataset"))) < 2:
        return None  # one dataset: plain permutations
    from videoaction.data.formats.umi import mixture_weights

    return mixture_weights(store, dataset.sampler)


def batch_mode(video_only: bool) -> str | None:
    """The task mode ``compute_loss(batch, mode=...)`` must use for a batch: ``video_model`` for an action-free
    batch (it has no action targets), None (the model's own choice) otherwise."""
    return "video_model" if video_only else None


def make_loader(dataset, order: "BatchOrder | MixedOrder", num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """An endless loader that yields this rank's batches in ``order`` (``order`` itself is not advanced)."""
    return DataLoader(EpochIndexed(dataset), batch_sampler=_InfiniteBatches(order), num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      prefetch_factor=2 if num_workers > 0 else None)


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
