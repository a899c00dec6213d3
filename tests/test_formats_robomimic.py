"""robomimic / Diffusion Policy image_abs hdf5 and LIBERO hdf5 readers on files written with h5py."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from videoaction.data.formats import FormatError, detect_format, open_source
from videoaction.data.formats.convert import convert
from videoaction.data.formats.samples import write_robomimic
from videoaction.data.store import EpisodeStore

LENGTHS = (5, 7, 6)


def test_robomimic_reads_demos_in_numeric_order_with_filter_keys(tmp_path):
    path = write_robomimic(tmp_path / "image_abs.hdf5")
    assert detect_format(path) == "robomimic"
    store = EpisodeStore.open(path)
    assert store.keys == ["action", "agentview_image", "robot0_eef_pos"]
    np.testing.assert_array_equal(store.episode_lengths, LENGTHS)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(store.get_episode(1)["action"], f["data/demo_1/actions"][()])
        np.testing.assert_array_equal(store.get_episode(2)["agentview_image"], f["data/demo_2/obs/agentview_image"][()])
    assert json.loads(store.attrs["env_args"])["env_name"] == "ToolHang"
    train = open_source(path, "robomimic", filter_key="train")
    assert train.meta["demo"] == ["demo_0", "demo_2"]
    with pytest.raises(FormatError, match="mask/valid"):
        open_source(path, "robomimic", filter_key="valid")


def test_abs_actions_become_pos_rot6d_gripper(tmp_path):
    rot = Rotation.random(7, random_state=1)
    acts = [np.concatenate([np.full((n, 3), 0.5), rot[:n].as_rotvec(), np.ones((n, 1))], -1) for n in LENGTHS]
    path = write_robomimic(tmp_path / "abs.hdf5", abs_actions=acts)
    src = open_source(path, "robomimic", action_rot6d=True)
    a = src.read(0, "action")
    assert a.shape == (5, 10)
    np.testing.assert_allclose(a[:, 3:9], rot[:5].as_matrix()[:, :2, :].reshape(5, 6), atol=1e-6)
    np.testing.assert_allclose(a[:, -1], 1.0)


def test_libero_language_and_uva_absolute_convention(tmp_path):
    path = write_robomimic(tmp_path / "KITCHEN_SCENE3_put_the_bowl_demo.hdf5", image_key="agentview_rgb", libero=True)
    assert detect_format(path) == "libero"
    store = EpisodeStore.open(path)
    assert store.meta_column("language").tolist() == ["put the bowl on the plate"] * 3
    plain = open_source(path).read(0, "agentview_rgb")
    uva = open_source(path, absolute_actions=True)
    np.testing.assert_array_equal(uva.read(0, "agentview_rgb"), plain[:, ::-1])  # vertical flip
    assert uva.read(0, "action").shape == (5, 10)
    out = convert(path, tmp_path / "libero.zarr", progress=False, absolute_actions=True)
    conv = EpisodeStore.open(tmp_path / "libero.zarr")
    assert out["frames"] == sum(LENGTHS) and conv.spec("action")[0] == (10,)
    assert conv.episode_meta(0)["language"] == "put the bowl on the plate"
    # without problem_info the instruction comes from the file name, as UVA derives it
    other = write_robomimic(tmp_path / "LIVING_ROOM_pick_it_demo.hdf5", image_key="agentview_rgb", libero=True,
                            problem_info=False)
    assert open_source(other).meta["language"][0] == "LIVING ROOM pick it"


def test_bad_hdf5_files_give_named_errors(tmp_path):
    path = write_robomimic(tmp_path / "bad.hdf5")
    with h5py.File(path, "a") as f:
        del f["data/demo_1/obs/robot0_eef_pos"]
        f["data/demo_2/obs"].create_dataset("x", data=np.zeros(1))
        del f["data/demo_2/obs/agentview_image"]
        f["data/demo_2/obs"].create_dataset("agentview_image", data=np.zeros((6, 8, 8, 3), np.float32))
    store = EpisodeStore.open(path)
    with pytest.raises(FormatError, match="data/demo_1/obs/robot0_eef_pos"):
        store.get_episode(1)
    with pytest.raises(FormatError, match="wrong dtype"):
        store.get_episode(2, ["agentview_image"])
    trunc = tmp_path / "trunc.hdf5"
    raw = write_robomimic(tmp_path / "ok.hdf5").read_bytes()
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError):
        open_source(trunc, "robomimic")
