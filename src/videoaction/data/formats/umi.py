"""UMI replay buffers (``.zarr.zip``, zarr 2 ZipStore, Diffusion Policy layout) and weighted mixtures of them.

Keys (per robot ``i``): ``camera{j}_rgb`` (T, 224, 224, 3) uint8 in JPEG-XL chunks (imagecodecs' numcodecs codec
``imagecodecs_jpegxl``, registered here), ``robot{i}_eef_pos`` (T, 3), ``robot{i}_eef_rot_axis_angle`` (T, 3),
``robot{i}_gripper_width`` (T, 1), ``robot{i}_demo_start_pose`` / ``_demo_end_pose`` (T, 6); ``meta/episode_ends``.
Added keys: ``state`` = concat over robots of (eef_pos, eef_rot_axis_angle, gripper_width) (T, 7R), read
``obs_latency_steps`` later (aligns proprio recorded late with the camera frame), and ``action`` = the same pose
``action_latency_steps`` later inside the episode (absolute targets, UMI's action convention;
:mod:`videoaction.data.poses` turns windows of them into relative pose9 + gripper actions).

Reading is lazy: each process opens its own ZipStore and decompresses only the chunks a sample needs (no copy of a
dataset into memory or /dev/shm). A mixture is a JSON file ``{"datasets": [{"path": "a.zarr.zip", "weight": 2,
"language": "..."}, ...]}``: episodes are concatenated and :func:`mixture_weights` gives each training window a
sampling weight so that dataset ``d`` is drawn with probability ``weight_d / sum(weights)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from videoaction.data.formats.base import EpisodeSource, FormatError
from videoaction.data.poses import latency_shift

_REGISTERED = False


def register_codecs() -> None:
    """Make imagecodecs' numcodecs codecs (JPEG-XL, JPEG 2000, ...) known to zarr (idempotent)."""
    global _REGISTERED
    if not _REGISTERED:
        from imagecodecs.numcodecs import register_codecs as _register

        _register(verbose=False)
        _REGISTERED = True


def _is_zarr(path: Path) -> bool:
    if path.is_file() and path.name.endswith(".zip"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
        except zipfile.BadZipFile:
            return False
        return "data/robot0_eef_pos/.zarray" in names and "data/action/.zarray" not in names
    return path.is_dir() and (path / "data/robot0_eef_pos/.zarray").is_file() and not (path / "data/action").exists()


def detect(path: Path) -> bool:
    if path.is_file() and path.suffix == ".json":
        try:
            spec = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        return isinstance(spec, dict) and isinstance(spec.get("datasets"), list)
    return _is_zarr(path)


class _UmiFile:
    """One UMI replay buffer, opened lazily (again in each loader worker)."""

    def __init__(self, path: Path):
        self.path = path
        self._root, self._pid = None, os.getpid()
        root = self.root()
        for group in ("data", "meta"):
            if group not in root:
                raise FormatError(path, "missing group", key=group, expected="UMI replay buffer (data/, meta/)")
        if "episode_ends" not in root["meta"]:
            raise FormatError(path, "missing array", key="meta/episode_ends")
        ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64)
        if len(ends) == 0 or np.any(np.diff(np.concatenate([[0], ends])) <= 0):
            raise FormatError(path, "episode ends are empty or not increasing", key="meta/episode_ends")
        self.ends = ends
        self.arrays = {k: root["data"][k] for k in root["data"].array_keys()}
        self._keys = list(self.arrays)
        for k, arr in self.arrays.items():
            if arr.shape[0] < ends[-1]:
                raise FormatError(path, "array shorter than meta/episode_ends says (truncated?)", key=f"data/{k}",
                                  expected=f"{ends[-1]} steps", found=f"{arr.shape[0]}")
        self.robots = sorted({int(k[5:k.index("_")]) for k in self.arrays if k.startswith("robot")
                              and k.endswith("_eef_pos")})
        for r in self.robots:
            for suffix, dim in (("eef_pos", 3), ("eef_rot_axis_angle", 3), ("gripper_width", 1)):
                k = f"robot{r}_{suffix}"
                if k not in self.arrays:
                    raise FormatError(path, "missing key", key=f"data/{k}")
                if self.arrays[k].shape[1:] != (dim,):
                    raise FormatError(path, "wrong shape", key=f"data/{k}", expected=(dim,),
                                      found=self.arrays[k].shape[1:])

    def root(self):
        import zarr

        if self._root is not None and self._pid != os.getpid():
            # a forked loader worker: the inherited zip handle shares its file offset with the parent's
            self._root, self.arrays = None, None
        if self._root is None:
            self._pid = os.getpid()
            register_codecs()
            try:
                store = zarr.ZipStore(str(self.path), mode="r") if self.path.is_file() else \
                    zarr.DirectoryStore(str(self.path))
                self._root = zarr.open_group(store, mode="r")
            except Exception as exc:
                raise FormatError(self.path, f"not a readable zarr group ({type(exc).__name__}: {exc}); "
                                  "truncated zip?") from None
        return self._root

    def array(self, key: str):
        if self._root is None or self._pid != os.getpid():  # pickled or forked into a loader worker: reopen
            root = self.root()
            self.arrays = {k: root["data"][k] for k in self.keys}
        return self.arrays[key]

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def __getstate__(self):  # zip handles stay in their process; a worker reopens its own
        state = dict(self.__dict__)
        state["_root"], state["arrays"] = None, None
        return state


class UmiSource(EpisodeSource):
    format_name = "umi"

    def __init__(self, path, action_latency_steps: int = 0, obs_latency_steps: int = 0, **_):
        self.path = Path(path)
        entries = self._entries()
        self.files = [_UmiFile(Path(e["path"])) for e in entries]
        self.action_latency, self.obs_latency = int(action_latency_steps), int(obs_latency_steps)
        base = self.files[0]
        self.raw_keys = sorted(base.arrays)
        for f in self.files[1:]:
            if sorted(f.arrays) != self.raw_keys or f.robots != base.robots:
                raise FormatError(f.path, "mixed UMI datasets must have the same keys", expected=self.raw_keys,
                                  found=sorted(f.arrays))
        self.specs = {k: (tuple(base.arrays[k].shape[1:]), base.arrays[k].dtype) for k in self.raw_keys}
        pose_dim = 7 * len(base.robots)
        self.specs["state"] = ((pose_dim,), np.dtype(np.float32))
        self.specs["action"] = ((pose_dim,), np.dtype(np.float32))
        self.image_keys = tuple(k for k, (s, d) in self.specs.items() if len(s) == 3 and s[-1] == 3 and d == np.uint8)
        self._index = []  # (file, start, stop) per episode
        meta = {"dataset": [], "language": [], "dataset_weight": []}
        for e, f in zip(entries, self.files):
            starts = np.concatenate([[0], f.ends[:-1]])
            for s, t in zip(starts, f.ends):
                self._index.append((f, int(s), int(t)))
                meta["dataset"].append(e.get("name", f.path.name))
                meta["language"].append(e.get("language", ""))
                meta["dataset_weight"].append(float(e.get("weight", 1.0)))
        self.lengths = np.array([t - s for _, s, t in self._index], dtype=np.int64)
        self.meta = meta
        self.fps = float(entries[0].get("fps", 60.0 / 3))  # UMI's GoPro 60 fps with down_sample_steps 3
        self.attrs = {"datasets": [str(f.path) for f in self.files], "robots": len(base.robots)}
        if len(base.robots) == 1:  # absolute pose targets + gripper width (videoaction.envs.action_conventions)
            self.attrs["action_convention"] = "abs_axis_angle7"

    def _entries(self) -> list[dict]:
        if self.path.suffix != ".json":
            return [{"path": str(self.path), "weight": 1.0}]
        try:
            spec = json.loads(self.path.read_text())
            entries = list(spec["datasets"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise FormatError(self.path, "a UMI mixture needs {\"datasets\": [{\"path\": ..., \"weight\": ...}]}")
        out = []
        for e in entries:
            e = {"path": e} if isinstance(e, str) else dict(e)
            p = Path(e["path"])
            e["path"] = str(p if p.is_absolute() else self.path.parent / p)
            if float(e.get("weight", 1.0)) <= 0:
                raise FormatError(self.path, "mixture weights must be positive", key=e["path"], found=e.get("weight"))
            out.append(e)
        if not out:
            raise FormatError(self.path, "the mixture lists no datasets", key="datasets")
        return out

    def _pose(self, f: _UmiFile, s: int, t: int) -> np.ndarray:
        parts = []
        for r in f.robots:
            for suffix in ("eef_pos", "eef_rot_axis_angle", "gripper_width"):
                parts.append(np.asarray(f.array(f"robot{r}_{suffix}")[s:t], dtype=np.float32))
        return np.concatenate(parts, axis=-1)

    lazy_frames = True  # JPEG-XL chunks of one frame each: read only the frames a sample needs

    def read_rows(self, episode: int, key: str, rows: np.ndarray) -> np.ndarray:
        f, s, t = self._index[episode]
        if key in ("state", "action"):
            return self.read(episode, key)[rows]
        try:
            return f.array(key).get_orthogonal_selection((np.asarray(rows, dtype=np.int64) + s,))
        except Exception as exc:
            raise FormatError(f.path, f"could not read ({type(exc).__name__}: {exc}); corrupt chunk?",
                              key=f"data/{key}") from None

    def read(self, episode: int, key: str) -> np.ndarray:
        f, s, t = self._index[episode]
        if key == "state":
            return latency_shift(self._pose(f, s, t), self.obs_latency)
        if key == "action":
            return latency_shift(self._pose(f, s, t), self.action_latency)
        try:
            arr = f.array(key)[s:t]
        except Exception as exc:
            raise FormatError(f.path, f"could not read ({type(exc).__name__}: {exc}); corrupt chunk?",
                              key=f"data/{key}") from None
        return self.check_array(arr, key, f"data/{key}", t - s)


def mixture_weights(store, sampler) -> np.ndarray:
    """Per-window sampling weights so each dataset of a mixture is drawn in proportion to its weight.

    ``store`` is the training store (a :class:`SourceStore` over a :class:`UmiSource`), ``sampler`` the dataset's
    window sampler (``sampler.episode(i)``). Feed the result to ``torch.utils.data.WeightedRandomSampler``.
    """
    names = np.asarray(store.meta_column("dataset"))
    weights = np.asarray(store.meta_column("dataset_weight"), dtype=np.float64)
    episode = np.array([sampler.episode(i) for i in range(len(sampler))], dtype=np.int64)
    window_ds = names[episode]
    out = np.empty(len(episode))
    for name in np.unique(window_ds):
        mask = window_ds == name
        out[mask] = weights[episode[mask][0]] / mask.sum()
    return out / out.sum()
