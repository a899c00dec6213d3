"""LeRobot v3.0 / v2.1: the published layout, round trips both ways, named errors, training from the folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from videoaction.data.formats import FormatError, SourceStore
from videoaction.data.formats.convert import convert
from videoaction.data.store import EpisodeStore
from videoaction.train.synthetic import make_store

torch.set_num_threads(1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr")
    path = make_store(root / "src.zarr", n_episodes=4, length=24, image_size=64)
    s = EpisodeStore.open(path, mode="a")
    s.update_attrs({"fps": 10})
    return path


@pytest.fixture(scope="module")
def v3(store, tmp_path_factory):
    dst = tmp_path_factory.mktemp("lr3") / "ds"
    convert(store, dst, to="lerobot", progress=False)
    return dst


def test_v3_layout_follows_the_published_format(v3):
    info = json.loads((v3 / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert info["total_episodes"] == 4 and info["total_frames"] == 96 and info["total_tasks"] == 1
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feats = info["features"]
    img = feats["observation.images.img"]
    assert img["dtype"] == "video" and img["shape"] == [64, 64, 3] and img["names"] == ["height", "width", "channels"]
    assert img["info"]["video.codec"] == "av1" and img["info"]["video.fps"] == 10
    assert feats["observation.state"] == {"dtype": "float32", "shape": [2], "names": None}
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert name in feats
    frames = pq.read_table(v3 / "data/chunk-000/file-000.parquet")  # all four episodes in one file
    assert frames.num_rows == 96
    state_type = frames.schema.field("observation.state").type  # HF datasets' Sequence(float32, length=2)
    assert pa.types.is_fixed_size_list(state_type) and state_type.list_size == 2
    assert state_type.value_type == pa.float32()
    assert str(frames.schema.field("timestamp").type) == "float"
    np.testing.assert_array_equal(frames["index"].to_numpy(), np.arange(96))
    np.testing.assert_allclose(frames["timestamp"].to_numpy()[:3], [0.0, 0.1, 0.2], atol=1e-6)
    eps = pq.read_table(v3 / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert eps["dataset_from_index"] == [0, 24, 48, 72] and eps["dataset_to_index"] == [24, 48, 72, 96]
    # one mp4 holds the four episodes back to back: episode k starts at 2.4 s * k
    assert eps["videos/observation.images.img/file_index"] == [0, 0, 0, 0]
    np.testing.assert_allclose(eps["videos/observation.images.img/from_timestamp"], [0.0, 2.4, 4.8, 7.2], atol=1e-6)
    np.testing.assert_allclose(eps["videos/observation.images.img/to_timestamp"], [2.4, 4.8, 7.2, 9.6], atol=1e-6)
    assert sorted(p.name for p in (v3 / "videos/observation.images.img/chunk-000").iterdir()) == ["file-000.mp4"]
    assert np.array(eps["stats/observation.images.img/mean"][0]).shape == (3, 1, 1)
    assert "stats/action/q99" in eps
    tasks = pq.read_table(v3 / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((v3 / "meta/stats.json").read_text())
    assert stats["action"]["count"] == [96] and np.array(stats["observation.images.img"]["std"]).shape == (3, 1, 1)
    assert not (v3 / ".staging").exists()


def test_store_to_lerobot_to_store_is_exact_for_lowdim_and_close_for_video(store, v3):
    src = EpisodeStore.open(store)
    back = EpisodeStore.open(v3)  # dispatches to the LeRobot reader
    assert isinstance(back, SourceStore) and back.keys == src.keys
    np.testing.assert_array_equal(back.episode_ends, src.episode_ends)
    for key in ("action", "state"):
        np.testing.assert_array_equal(back.to_numpy([key])[key], src.to_numpy([key])[key])
    img_a, img_b = src.to_numpy(["img"])["img"], back.to_numpy(["img"])["img"]
    assert psnr(img_a, img_b) > 30.0
    # random access through the lazy array matches whole-episode decoding
    idx = np.array([70, 3, 25, 25])
    np.testing.assert_array_equal(back.array("img").oindex[idx], img_b[idx])


def test_lerobot_to_store_to_lerobot_v21(v3, tmp_path):
    # a dataset LeRobot wrote has no key map: keys are LeRobot's feature names
    foreign = tmp_path / "foreign"
    shutil.copytree(v3, foreign)
    (foreign / "meta/videoaction.json").unlink()
    summary = convert(foreign, tmp_path / "conv.zarr", to="store", progress=False)
    assert summary["episodes"] == 4 and summary["frames"] == 96
    conv = EpisodeStore.open(tmp_path / "conv.zarr")
    assert set(conv.keys) == {"action", "observation.state", "observation.images.img"}
    lr = EpisodeStore.open(foreign)
    np.testing.assert_array_equal(conv.to_numpy(["action"])["action"], lr.to_numpy(["action"])["action"])
    np.testing.assert_array_equal(conv.to_numpy(["observation.images.img"])["observation.images.img"],
                                  lr.to_numpy(["observation.images.img"])["observation.images.img"])
    convert(tmp_path / "conv.zarr", tmp_path / "v21", to="lerobot", progress=False,
            target_options={"version": "v2.1", "vcodec": "h264"})
    info = json.loads((tmp_path / "v21/meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_videos"] == 4 and info["total_chunks"] == 1
    assert (tmp_path / "v21/data/chunk-000/episode_000003.parquet").is_file()
    assert (tmp_path / "v21/videos/chunk-000/observation.images.img/episode_000000.mp4").is_file()
    rows = [json.loads(line) for line in (tmp_path / "v21/meta/episodes.jsonl").read_text().splitlines()]
    assert [r["length"] for r in rows] == [24] * 4
    again = EpisodeStore.open(tmp_path / "v21")
    np.testing.assert_array_equal(again.to_numpy(["observation.state"])["observation.state"],
                                  lr.to_numpy(["observation.state"])["observation.state"])
    assert psnr(again.to_numpy(["observation.images.img"])["observation.images.img"],
                lr.to_numpy(["observation.images.img"])["observation.images.img"]) > 30.0


def test_conversion_resumes_after_an_interruption(store, tmp_path):
    dst = tmp_path / "part.zarr"
    convert(store, dst, to="store", episodes=[0, 1], progress=False)
    # an interrupted run left an uncommitted tail: data longer than episode_ends
    part = EpisodeStore.open(dst, mode="a")
    part.root["data"]["action"].resize((part.n_steps + 5, 2))
    summary = convert(store, dst, to="store", progress=False)
    assert summary["resumed_at"] == 2 and EpisodeStore.open(dst).n_episodes == 4
    np.testing.assert_array_equal(EpisodeStore.open(dst).to_numpy(["action"])["action"],
                                  EpisodeStore.open(store).to_numpy(["action"])["action"])
    staged = tmp_path / "lr"
    from videoaction.data.formats.lerobot_write import LeRobotWriter

    src = EpisodeStore.open(store)
    w = LeRobotWriter(staged, 10, ["img"], {k: src.spec(k) for k in src.keys}, vcodec="h264")
    w.add_episode(0, src.get_episode(0), ["t"])
    (staged / ".staging/.tmp_episode_000001").mkdir()  # a half-written episode is ignored
    with pytest.raises(FormatError, match="other settings"):  # resuming with another codec would mix them
        convert(store, staged, to="lerobot", progress=False, target_options={"vcodec": "libsvtav1"})
    assert convert(store, staged, to="lerobot", progress=False,
                   target_options={"vcodec": "h264"})["resumed_at"] == 1
    assert json.loads((staged / "meta/info.json").read_text())["total_episodes"] == 4


def test_bad_lerobot_folders_give_named_errors(v3, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(v3, bad)
    info = json.loads((bad / "meta/info.json").read_text())
    info["features"]["action"] = {"dtype": "float32"}
    (bad / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(FormatError, match="features.action"):
        EpisodeStore.open(bad)
    shutil.rmtree(bad)
    shutil.copytree(v3, bad)
    data = bad / "data/chunk-000/file-000.parquet"
    data.write_bytes(data.read_bytes()[:200])
    with pytest.raises(FormatError, match="truncated"):
        EpisodeStore.open(bad).get_slice("action", 0, 5)
    shutil.rmtree(bad)
    shutil.copytree(v3, bad)
    video = bad / "videos/observation.images.img/chunk-000/file-000.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.raises(FormatError, match="video"):
        EpisodeStore.open(bad).get_episode(3, ["img"])
    info = json.loads((v3 / "meta/info.json").read_text())
    info["features"]["action"]["shape"] = [3]
    shutil.rmtree(bad)
    shutil.copytree(v3, bad)
    (bad / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(FormatError, match="action"):
        EpisodeStore.open(bad).get_slice("action", 0, 5)


def test_training_runs_directly_from_a_lerobot_folder(v3, tmp_path):
    from videoaction.config import get_preset, parse_overrides
    from videoaction.train.metrics import read_metrics
    from videoaction.train.synthetic import TINY_DP
    from videoaction.train.trainer import TrainOptions, train

    cfg = parse_overrides(get_preset("dp-tiny"), ["--data", str(v3), "--out", str(tmp_path / "run"), "--steps", "2",
                                                  "--log-every", "1", *TINY_DP])
    result = train(cfg, TrainOptions(progress=False, log=lambda msg: None))
    assert result.step == 2 and len(read_metrics(tmp_path / "run")) == 2
    assert all(np.isfinite(m["loss"]) for m in read_metrics(tmp_path / "run"))


def test_two_cameras_and_language_tasks_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    src = EpisodeStore.create(tmp_path / "two.zarr", attrs={"fps": 20})
    tasks = ["pick the cup", "fold the towel", "pick the cup"]
    for e, task in enumerate(tasks):
        n = 6 + e
        t = np.arange(n)[:, None, None, None]
        src.add_episode({"front": ((t * 9 + np.arange(32)[None, None, :, None] * 4) % 255).repeat(32, 1).repeat(3, 3)
                         .astype(np.uint8),
                         "wrist": np.full((n, 16, 16, 3), 40 * e, np.uint8),
                         "action": rng.normal(size=(n, 3)).astype(np.float32)}, {"language": task})
    convert(tmp_path / "two.zarr", tmp_path / "lr", to="lerobot", progress=False, target_options={"vcodec": "h264"})
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["fps"] == 20 and info["total_tasks"] == 2
    assert {k for k, v in info["features"].items() if v["dtype"] == "video"} == {"observation.images.front",
                                                                                    "observation.images.wrist"}
    eps = pq.read_table(tmp_path / "lr/meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert eps["tasks"] == [[t] for t in tasks]
    frames = pq.read_table(tmp_path / "lr/data/chunk-000/file-000.parquet")
    assert frames["task_index"].to_pylist() == [0] * 6 + [1] * 7 + [0] * 8
    back = EpisodeStore.open(tmp_path / "lr")
    assert back.meta_column("language").tolist() == tasks
    for key in ("front", "wrist"):
        a, b = src.to_numpy([key])[key], back.to_numpy([key])[key]
        assert a.shape == b.shape and psnr(a, b) > 30.0
    np.testing.assert_array_equal(back.to_numpy(["action"])["action"], src.to_numpy(["action"])["action"])


def test_reads_a_hand_written_v21_dataset_with_image_bool_and_string_features(tmp_path):
    """A dataset as LeRobot v2.1 writes it (images embedded as PNG structs, bool and string columns), no key map."""
    import io

    from PIL import Image

    root = tmp_path / "hand"
    (root / "meta").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    features = {
        "observation.image": {"dtype": "image", "shape": [3, 8, 8], "names": ["channels", "height", "width"]},
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        "language_instruction": {"dtype": "string", "shape": [1], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    info = {"codebase_version": "v2.1", "robot_type": "koch", "total_episodes": 2, "total_frames": 7,
            "total_tasks": 1, "total_videos": 0, "total_chunks": 1, "chunks_size": 1000, "fps": 30,
            "splits": {"train": "0:2"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": None, "features": features}
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "grasp"}) + "\n")
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps({"episode_index": e, "tasks": ["grasp"], "length": n})
                                                      + "\n" for e, n in ((0, 3), (1, 4))))
    images = {}
    for e, n in ((0, 3), (1, 4)):
        imgs = [np.full((8, 8, 3), 30 * e + i, np.uint8) for i in range(n)]
        images[e] = np.stack(imgs)
        pngs = []
        for img in imgs:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            pngs.append({"bytes": buf.getvalue(), "path": None})
        table = pa.table({
            "observation.image": pa.array(pngs, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "observation.state": pa.array([[float(i), -float(i)] for i in range(n)], pa.list_(pa.float32(), 2)),
            "next.done": pa.array([i == n - 1 for i in range(n)]),
            "language_instruction": pa.array(["grasp"] * n),
            "timestamp": pa.array(np.arange(n, dtype=np.float32) / 30),
            "frame_index": pa.array(np.arange(n)), "episode_index": pa.array([e] * n),
            "index": pa.array(np.arange(n) + 3 * e), "task_index": pa.array([0] * n)})
        pq.write_table(table, root / f"data/chunk-000/episode_{e:06d}.parquet")
    store = EpisodeStore.open(root)
    assert store.keys == ["next.done", "observation.image", "observation.state"]
    assert store.spec("observation.image") == ((8, 8, 3), np.dtype(np.uint8))
    np.testing.assert_array_equal(store.get_episode(1)["observation.image"], images[1])
    np.testing.assert_array_equal(store.get_episode(1)["next.done"][:, 0], [False, False, False, True])
    np.testing.assert_array_equal(store.get_episode(0)["observation.state"][:, 1], [0.0, -1.0, -2.0])
    assert store.meta_column("language").tolist() == ["grasp", "grasp"]
    assert store.attrs["robot_type"] == "koch" and store.attrs["fps"] == 30
