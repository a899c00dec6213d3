"""Sampler padding, frame selection, normaliser inverse, transforms and the training dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videoaction.config import DatasetConfig, FrameConfig
from videoaction.data.dataset import SequenceDataset
from videoaction.errors import StoreError, VideoActionError
from videoaction.data.normalizer import Normalizer
from videoaction.data.sampler import SequenceSampler, frame_positions, split_episodes
from videoaction.data.store import EpisodeStore
from videoaction.data.transforms import preprocess_frames, transform_frames

from tests.test_store import write_dp_store, write_store


def test_sampler_padding_and_is_pad_exact():
    # one episode of length 6 with values 0..5, horizon 4, pad 1 before / 2 after
    sampler = SequenceSampler(np.array([6]), horizon=4, pad_before=1, pad_after=2)
    data = {"x": np.arange(6)}
    windows = [sampler.sample(data, i) for i in range(len(sampler))]
    starts = [w["x"].tolist() for w in windows]
    assert starts[0] == [0, 0, 1, 2]  # first window: one step of edge padding at the start
    assert windows[0]["is_pad"].tolist() == [True, False, False, False]
    assert starts[-1] == [4, 5, 5, 5]  # last window: two steps of edge padding at the end
    assert windows[-1]["is_pad"].tolist() == [False, False, True, True]
    assert len(sampler) == 6 - 4 + 1 + 2 + 1  # starts -1 .. 4
    assert not any(w["is_pad"].any() for w in windows[1:-2])


def test_sampler_never_crosses_episodes_and_respects_mask():
    ends = np.array([5, 9, 15])
    sampler = SequenceSampler(ends, horizon=3, pad_before=1, pad_after=1, episode_mask=np.array([True, False, True]))
    data = {"ep": np.repeat([0, 1, 2], [5, 4, 6])}
    seen = set()
    for i in range(len(sampler)):
        window = sampler.sample(data, i)["ep"]
        assert len(set(window.tolist())) == 1
        seen.add(int(window[0]))
    assert seen == {0, 2}


def test_split_is_seeded_and_disjoint():
    train, val = split_episodes(50, 0.1, seed=3)
    assert val.sum() == 5 and not (train & val).any() and (train | val).all()
    assert (split_episodes(50, 0.1, seed=3)[1] == val).all()
    assert split_episodes(2, 0.01)[1].sum() == 1  # at least one validation episode
    train, _ = split_episodes(50, 0.1, seed=3, max_train_episodes=10)
    assert train.sum() == 10


def test_uva_frame_selection_and_random_history():
    cfg = FrameConfig(n_history=4, n_future=4, offset=3, stride=4)
    assert frame_positions(cfg, 32).tolist() == [3, 7, 11, 15, 19, 23, 27, 31]
    assert cfg.n_obs_steps == 16 and cfg.last_history == 15
    rnd = FrameConfig(n_history=4, n_future=4, offset=3, stride=4, random_history=True)
    rng = np.random.default_rng(0)
    draws = [frame_positions(rnd, 32, rng) for _ in range(50)]
    for pos in draws:
        hist = pos[:4]
        assert hist[-1] == 15 and (np.diff(hist) >= 0).all() and hist.min() >= 0
        assert pos[4:].tolist() == [19, 23, 27, 31]
    assert len({tuple(p[:4]) for p in draws}) > 10
    with pytest.raises(VideoActionError, match="does not fit"):
        frame_positions(cfg, 16)


def test_normalizer_inverse_and_constant_dims(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 7, size=(200, 4)).astype(np.float32)
    x[:, 2] = 1.5  # constant dimension
    for mode in ("minmax", "meanstd", "identity"):
        norm = Normalizer.fit_arrays({"action": x}, {"action": mode})
        y = norm.normalize("action", torch.from_numpy(x))
        assert torch.isfinite(y).all()
        torch.testing.assert_close(norm.unnormalize("action", y), torch.from_numpy(x), atol=1e-5, rtol=1e-5)
        if mode == "minmax":
            assert torch.allclose(y[:, [0, 1, 3]].min(0).values, torch.tensor(-1.0), atol=1e-6)
            assert torch.allclose(y[:, [0, 1, 3]].max(0).values, torch.tensor(1.0), atol=1e-6)
            assert torch.all(y[:, 2] == 0)
    norm.save(tmp_path / "n")
    loaded = Normalizer.load(tmp_path / "n")
    assert loaded.modes() == {"action": "identity"}
    with pytest.raises(VideoActionError, match="expected last dimension 4"):
        norm.normalize("action", torch.zeros(3, 2))
    with pytest.raises(VideoActionError, match="NaN"):
        Normalizer.fit_arrays({"a": np.array([[np.nan]])}, {"a": "minmax"})


def test_crop_identical_across_frames_and_eval_deterministic():
    cfg = DatasetConfig(image_size=32, crop_ratio=0.8, random_shift=2, color_jitter=0.2)
    frame = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    frames = np.stack([frame] * 5)
    out = transform_frames(frames, cfg, np.random.default_rng(7))
    assert out.shape == (5, 3, 32, 32) and out.min() >= -1 and out.max() <= 1
    for f in range(1, 5):
        torch.testing.assert_close(out[f], out[0])  # the same crop/shift/jitter for every frame
    other = transform_frames(frames, cfg, np.random.default_rng(8))
    assert not torch.allclose(other, out)
    eval_a = transform_frames(frames, cfg, None)
    batch = preprocess_frames(frames[None], cfg)
    torch.testing.assert_close(batch[0], eval_a)  # policies see the training eval transform


def test_dataset_items_and_latents(tmp_path):
    write_store(tmp_path / "s.zarr", [40, 36, 50], seed=1)
    cfg = DatasetConfig(image_size=16, val_ratio=0.34, language_key="language", horizon=32)
    train = SequenceDataset(tmp_path / "s.zarr", cfg, split="train", seed=0)
    val = SequenceDataset(tmp_path / "s.zarr", cfg, split="val")
    assert not (train.episode_mask & val.episode_mask).any()
    item = train[0]
    assert item["image"].shape == (8, 3, 16, 16)
    assert item["action"].shape == (32, 2) and item["state"].shape == (32, 2)
    assert item["is_pad"].shape == (32,) and item["is_pad"][0]  # first window is padded at the start
    assert item["language"] == "push the T onto the target"
    train.set_epoch(0)
    a = train[3]["image"]
    torch.testing.assert_close(train[3]["image"], a)  # same (seed, epoch, index) -> same augmentation
    normalizer = train.fit_normalizer()
    assert set(normalizer.fields) == {"action", "state"}


def test_dataset_on_diffusion_policy_store(tmp_path):
    write_dp_store(tmp_path / "pusht.zarr", [40, 50, 45])
    cfg = DatasetConfig(horizon=16, pad_before=1, pad_after=7, image_size=84,
                        frames=FrameConfig(n_history=2, n_future=0, offset=0, stride=1))
    ds = SequenceDataset(tmp_path / "pusht.zarr", cfg, split="all")
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 2, 3, 84, 84)
    assert batch["state"].shape == (4, 16, 2) and batch["action"].shape == (4, 16, 2)


def test_dataset_config_mismatch_errors(tmp_path):
    write_store(tmp_path / "s.zarr", [40])
    with pytest.raises(StoreError, match=r"data/rgb.*missing data key"):
        SequenceDataset(tmp_path / "s.zarr", DatasetConfig(image_key="rgb"))
    with pytest.raises(StoreError, match=r"data/state.*state_dims=9"):
        SequenceDataset(tmp_path / "s.zarr", DatasetConfig(state_dims=9))
    with pytest.raises(StoreError, match=r"data/state.*images must be"):
        SequenceDataset(tmp_path / "s.zarr", DatasetConfig(image_key="state", state_key=None))
