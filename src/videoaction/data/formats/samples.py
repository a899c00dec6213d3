"""Small synthetic datasets written in each format's published layout (tests and the conversion benchmark).

Each writer uses the format's own library where it is installable (h5py, zarr 2 + imagecodecs, numpy) and the
published framing otherwise (TFRecord + tf.train.Example). Frames are smooth gradients that move over time so
that video codecs and JPEG behave as on camera images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def moving_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 gradients shifting one step per frame."""
    t = np.arange(n)[:, None, None]
    x, y = np.arange(size)[None, None, :], np.arange(size)[None, :, None]
    img = np.empty((n, size, size, 3), np.uint8)
    img[..., 0] = (x * 7 + t * 3 + seed * 11) % 255
    img[..., 1] = (y * 5 + 90) % 255
    img[..., 2] = ((x + y) * 3 + t) % 255
    return img


def write_robomimic(path, lengths=(5, 7, 6), size=8, image_key="agentview_image", libero=False, abs_actions=None,
                    problem_info=True, seed=0) -> Path:
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "ToolHang", "env_type": 1, "env_kwargs": {}})
        if libero and problem_info:
            data.attrs["problem_info"] = json.dumps({"problem_name": "libero_10", "domain_name": "kitchen",
                                                     "language_instruction": "put the bowl on the plate"})
        if libero:
            data.attrs["bddl_file_name"] = "x.bddl"
        for i, n in enumerate(lengths):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = n
            g.create_dataset("actions", data=abs_actions[i] if abs_actions is not None else rng.uniform(-1, 1, (n, 7)))
            g.create_dataset("states", data=rng.normal(size=(n, 10)))
            obs = g.create_group("obs")
            img = moving_frames(n, size, seed=i)
            img[:, : size // 2] = 200  # top half bright: a vertical flip is visible
            obs.create_dataset(image_key, data=img)
            obs.create_dataset("robot0_eef_pos", data=rng.normal(size=(n, 3)).astype(np.float32))
        data.attrs["total"] = int(sum(lengths))
        f.create_group("mask").create_dataset("train", data=np.array([b"demo_0", b"demo_2"]))
    return Path(path)


def write_umi(path, lengths=(12, 15), size=32, seed=0, drop: str | None = None,
              arrays: dict[str, np.ndarray] | None = None) -> tuple[Path, dict, np.ndarray]:
    """A UMI replay buffer as UMI's 07_generate_replay_buffer.py writes it: built in memory, saved to a ZipStore,
    frames in JPEG-XL chunks of one frame (``JpegXl(level=99, numthreads=1)``). ``arrays`` replaces generated
    data arrays (known poses: ``robot0_eef_pos``, ``robot0_eef_rot_axis_angle``, ... of ``sum(lengths)`` steps)."""
    import zarr
    from imagecodecs.numcodecs import Jpegxl

    from videoaction.data.formats.umi import register_codecs

    register_codecs()
    rng, arrays_in = np.random.default_rng(seed), arrays
    n = int(sum(lengths))
    mem = zarr.group(store=zarr.MemoryStore())
    data, meta = mem.require_group("data"), mem.require_group("meta")
    meta.array("episode_ends", np.cumsum(lengths).astype(np.int64), compressor=None)
    t = np.arange(n, dtype=np.float32)
    arrays = {
        "robot0_eef_pos": np.stack([np.sin(t / 5), np.cos(t / 5), t / 100], -1).astype(np.float32),
        "robot0_eef_rot_axis_angle": rng.normal(scale=0.3, size=(n, 3)).astype(np.float32),
        "robot0_gripper_width": (0.05 + 0.02 * np.sin(t / 3))[:, None].astype(np.float32),
        "robot0_demo_start_pose": np.zeros((n, 6)),
        "robot0_demo_end_pose": np.ones((n, 6)),
    }
    arrays.update({k: np.asarray(v, dtype=np.float32) for k, v in (arrays_in or {}).items()})
    for k, v in arrays.items():
        if k != drop:
            data.array(k, v, chunks=v.shape)
    img = moving_frames(n, size, seed)
    data.require_dataset("camera0_rgb", shape=img.shape, chunks=(1, size, size, 3), dtype=np.uint8,
                         compressor=Jpegxl(level=99, numthreads=1))
    data["camera0_rgb"][:] = img
    with zarr.ZipStore(str(path), mode="w") as zs:
        zarr.copy_store(mem.store, zs)
    return Path(path), arrays, img


def write_calvin(root, ranges=((0, 4), (5, 11)), with_language=True, size=16) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    frames = moving_frames(ranges[-1][1] + 1, size)
    for i in range(ranges[-1][1] + 1):
        np.savez(root / f"episode_{i:07d}.npz", actions=np.full(7, i, np.float64), rel_actions=rng.normal(size=7),
                 robot_obs=rng.normal(size=15), scene_obs=rng.normal(size=24), rgb_static=frames[i],
                 rgb_gripper=frames[i, ::2, ::2])
    np.save(root / "ep_start_end_ids.npy", np.array(ranges))
    if with_language:
        (root / "lang_annotations").mkdir(exist_ok=True)
        ann = {"language": {"ann": ["open the drawer", "push the button"], "task": ["open_drawer", "push"]},
               "info": {"episodes": [], "indx": [(ranges[0][0] + 1, ranges[0][0] + 3),
                                                 (ranges[1][0] + 1, ranges[1][0] + 4)]}}
        np.save(root / "lang_annotations/auto_lang_ann.npy", ann, allow_pickle=True)
    return root


def rlds_features(size: int) -> dict:
    """A TFDS features.json tree (steps: image, state, action, is_first, language_instruction)."""
    def tensor(shape, dtype):
        return {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
                "tensor": {"shape": {"dimensions": [str(s) for s in shape]} if shape else {}, "dtype": dtype,
                           "encoding": "none"}}

    step = {"observation": {"featuresDict": {"features": {
        "image": {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
                  "image": {"shape": {"dimensions": [str(size), str(size), "3"]}, "dtype": "uint8",
                            "encodingFormat": "jpeg"}},
        "state": tensor([4], "float32")}}},
        "action": tensor([7], "float32"), "is_first": tensor([], "bool"),
        "language_instruction": {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text",
                                 "text": {}}}
    return {"featuresDict": {"features": {
        "steps": {"pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                  "sequence": {"feature": {"featuresDict": {"features": step}}, "length": "-1"}},
        "episode_metadata": {"featuresDict": {"features": {"file_path": {"text": {}}}}}}}}


def write_rlds(root, lengths=(4, 6), shards=2, size=16) -> tuple[Path, list]:
    import imagecodecs

    from videoaction.data.formats.tfrecord import build_example, write_records

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "features.json").write_text(json.dumps(rlds_features(size)))
    (root / "dataset_info.json").write_text(json.dumps({"name": "toy_ds", "version": "0.1.0", "fileFormat": "tfrecord",
                                                        "splits": [{"name": "train", "shardLengths": ["1"] * shards}]}))
    rng = np.random.default_rng(0)
    episodes = []
    for e, n in enumerate(lengths):
        img = moving_frames(n, size, seed=e)
        ep = {"steps/observation/image": [imagecodecs.jpeg8_encode(x, level=95) for x in img],
              "steps/observation/state": rng.normal(size=(n, 4)).astype(np.float32),
              "steps/action": rng.normal(size=(n, 7)).astype(np.float32),
              "steps/is_first": (np.arange(n) == 0).astype(np.int64),
              "steps/language_instruction": [f"task {e}".encode()] * n,
              "episode_metadata/file_path": [f"/data/ep{e}.npy".encode()]}
        episodes.append((ep, img))
    per = -(-len(episodes) // shards)
    for s in range(shards):
        write_records(root / f"toy_ds-train.tfrecord-{s:05d}-of-{shards:05d}",
                      [build_example(ep) for ep, _ in episodes[s * per:(s + 1) * per]])
    return root, episodes
