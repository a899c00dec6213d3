"""Episode subsets (UVA's used_episode_indices_file) for conversion and training, and the convert command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videoaction.config import DatasetConfig, FrameConfig
from videoaction.data.cli import main as data_main
from videoaction.data.dataset import SequenceDataset
from videoaction.data.formats import FormatError, read_episode_list
from videoaction.data.formats.base import split_subset
from videoaction.data.store import EpisodeStore
from videoaction.train.synthetic import make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("eps") / "s.zarr", n_episodes=6, length=12, image_size=16)


def test_episode_list_files_json_and_text(tmp_path):
    (tmp_path / "a.json").write_text("[4, 1, 3]")
    (tmp_path / "b.txt").write_text("4\n1\n3\n")
    (tmp_path / "c.json").write_text(json.dumps({"used_episode_indices": [2]}))
    assert read_episode_list(tmp_path / "a.json") == read_episode_list(tmp_path / "b.txt") == [4, 1, 3]
    assert read_episode_list(tmp_path / "c.json") == [2]
    (tmp_path / "d.txt").write_text("1\nx\n")
    with pytest.raises(FormatError, match="could not parse"):
        read_episode_list(tmp_path / "d.txt")
    (tmp_path / "e.json").write_text("[1, 1]")
    with pytest.raises(FormatError, match="repeat"):
        read_episode_list(tmp_path / "e.json")


def test_split_subset_uses_only_listed_episodes():
    train, val = split_subset([0, 2, 5, 4], 6, val_ratio=0.25, seed=0)
    assert not (train & val).any() and set(np.nonzero(train | val)[0]) == {0, 2, 4, 5} and val.sum() == 1
    with pytest.raises(FormatError, match="out of range"):
        split_subset([0, 6], 6, 0.1)


def test_training_dataset_samples_only_the_listed_episodes(store, tmp_path):
    (tmp_path / "used.json").write_text("[1, 4, 5]")
    cfg = DatasetConfig(image_key="img", horizon=4, pad_before=0, pad_after=0, image_size=16, val_ratio=0.0,
                        frames=FrameConfig(n_history=2, n_future=0, offset=0, stride=1),
                        episodes_file=str(tmp_path / "used.json"))
    ds = SequenceDataset(store, cfg, split="train")
    assert {ds.sampler.episode(i) for i in range(len(ds))} == {1, 4, 5}
    assert len(ds) == 3 * (12 - 4 + 1)


def test_convert_command_with_an_episode_subset(store, tmp_path, capsys):
    (tmp_path / "eps.txt").write_text("5\n0\n")
    code = data_main(["convert", str(store), str(tmp_path / "out.zarr"), "--episodes", str(tmp_path / "eps.txt"),
                      "--no-progress"])
    assert code == 0 and "2 episodes" in capsys.readouterr().out
    out, src = EpisodeStore.open(tmp_path / "out.zarr"), EpisodeStore.open(store)
    assert out.meta_column("source_episode").tolist() == [5, 0]
    np.testing.assert_array_equal(out.get_episode(0)["action"], src.get_episode(5)["action"])
    np.testing.assert_array_equal(out.get_episode(1)["img"], src.get_episode(0)["img"])
    with pytest.raises(FormatError, match="options not understood"):
        data_main(["convert", str(store), str(tmp_path / "x.zarr"), "--from", "robomimic", "--allow-pickle"])
