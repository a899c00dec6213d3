"""Deterministic, resumable, rank-sharded order of training samples.

The sample stream is the concatenation of seeded permutations of the dataset, one per epoch. Each micro-batch
step takes the next ``batch_size * world_size`` positions of the stream; rank ``r`` gets the ``r``-th block of
``batch_size``. The whole state is ``(epoch, position)`` (position = samples consumed in that epoch), so a
resumed run continues with exactly the samples it would have seen, on any number of loader workers.
A batch may straddle two epochs (small datasets); every item carries its own epoch, which the dataset uses for
its augmentation seed (``SequenceDataset.set_epoch``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from videoaction.data.errors import VideoActionError


@dataclass
class OrderState:
    epoch: int = 0
    position: int = 0


class BatchOrder:
    """The stream of (epoch, index) pairs of one rank, from a given state onwards."""

    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 state: OrderState | None = None):
        if n <= 0:
            raise VideoActionError("the training split has no samples (episodes shorter than the window?)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.batch_size, self.world_size, self.rank, self.seed = n, batch_size, world_size, rank, seed
        self.state = OrderState(**vars(state)) if state is not None else OrderState()
        self._perm_epoch, self._perm = -1, np.zeros(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.n)
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
                out.append((epoch, int(self.permutation(epoch)[pos])))
            pos += 1
        if pos >= self.n:
            epoch, pos = epoch + 1, 0
        self.state = OrderState(epoch, pos)
        return out

    def clone(self) -> "BatchOrder":
        return BatchOrder(self.n, self.batch_size, self.world_size, self.rank, self.seed, self.state)


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


def make_loader(dataset, order: BatchOrder, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """An endless loader that yields this rank's batches in ``order`` (``order`` itself is not advanced)."""
    return DataLoader(EpochIndexed(dataset), batch_sampler=_InfiniteBatches(order), num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      prefetch_factor=2 if num_workers > 0 else None)


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
