"""Weighted sampling of training windows (dataset mixtures): draw counts follow the weights, the order stays
seeded and resumable, ranks split each global batch, and a UMI mixture's dataset weights reach the order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videoaction.config import DatasetConfig, FrameConfig
from videoaction.data.dataset import SequenceDataset
from videoaction.data.formats.samples import write_umi
from videoaction.data.store import EpisodeStore
from videoaction.errors import VideoActionError
from videoaction.train.loader import BatchOrder, make_order, window_weights


def _draws(order, batches: int) -> np.ndarray:
    return np.array([i for _ in range(batches) for _, i in order.next_batch()])


def test_draw_counts_follow_the_weights():
    group_b = np.arange(100) >= 80  # 80 windows of dataset A, 20 of dataset B; B should be drawn 3 times as often
    w = np.where(group_b, 0.75 / 20, 0.25 / 80)
    drawn = _draws(BatchOrder(100, 64, seed=1, weights=w), 40)  # 2560 draws
    share_b = group_b[drawn].mean()
    assert abs(share_b - 0.75) < 0.03, share_b  # binomial std ~0.009
    plain = _draws(BatchOrder(100, 64, seed=1), 40)
    assert abs(group_b[plain].mean() - 0.2) < 0.03  # without weights: by window count
    # within dataset B every window is drawn about equally often (weights are per window)
    counts = np.bincount(drawn, minlength=100)[80:]
    assert counts.min() > 0.5 * counts.mean()


def test_weighted_order_is_seeded_resumable_and_split_across_ranks():
    w = np.linspace(1, 5, 30)
    a = BatchOrder(30, 4, seed=7, weights=w)
    for _ in range(9):  # past one epoch (30 draws)
        a.next_batch()
    resumed = BatchOrder(30, 4, seed=7, weights=w)
    resumed.load_state_dict(a.state_dict())
    assert [a.next_batch() for _ in range(5)] == [resumed.next_batch() for _ in range(5)]
    one = BatchOrder(30, 8, seed=3, weights=w)
    ranks = [BatchOrder(30, 4, world_size=2, rank=r, seed=3, weights=w) for r in range(2)]
    for _ in range(6):
        assert one.next_batch() == ranks[0].next_batch() + ranks[1].next_batch()
    pools = (np.arange(0, 30, 2), None)  # a pool subset keeps its windows' weights
    sub = make_order(30, 8, 1, 0, 3, pools=pools, weights=np.where(np.arange(30) < 10, 1.0, 0.0))
    assert {i for _ in range(10) for _, i in sub.next_batch()} <= {0, 2, 4, 6, 8}
    with pytest.raises(VideoActionError, match="weights"):
        BatchOrder(30, 4, weights=np.ones(29))
    with pytest.raises(VideoActionError, match="weights"):
        BatchOrder(30, 4, weights=-np.ones(30))


def test_umi_mixture_weights_reach_the_order(tmp_path):
    write_umi(tmp_path / "cup.zarr.zip", lengths=(12, 15))
    write_umi(tmp_path / "towel.zarr.zip", lengths=(10, 10, 10, 10, 10), seed=1)
    mix = tmp_path / "mix.json"  # the towel dataset has more windows but a third of the cup's weight
    mix.write_text(json.dumps({"datasets": [{"path": "cup.zarr.zip", "weight": 3},
                                            {"path": "towel.zarr.zip", "weight": 1}]}))
    store = EpisodeStore.open(mix)
    assert store.attrs["action_convention"] == "abs_axis_angle7"  # one robot: absolute pose + gripper width
    cfg = DatasetConfig(image_key="camera0_rgb", state_key="state", state_dims=None, horizon=4, pad_before=0,
                        pad_after=0, image_size=32, val_ratio=0.0,
                        frames=FrameConfig(n_history=2, n_future=0, offset=0, stride=1))
    ds = SequenceDataset(store, cfg, split="train", augment=False)
    names = store.meta_column("dataset")[[ds.sampler.episode(i) for i in range(len(ds))]]
    assert (names == "towel.zarr.zip").mean() > 0.5  # by count the towel windows dominate
    w = window_weights(ds, store)
    assert w is not None and len(w) == len(ds)
    drawn = _draws(make_order(len(ds), 50, 1, 0, 0, weights=w), 40)
    assert abs((names[drawn] == "cup.zarr.zip").mean() - 0.75) < 0.03
    single = EpisodeStore.open(tmp_path / "cup.zarr.zip")  # not a mixture: no weights, plain permutations
    assert window_weights(SequenceDataset(single, cfg, split="train", augment=False), single) is None
