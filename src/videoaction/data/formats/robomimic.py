"""robomimic hdf5 (also Diffusion Policy's ``image_abs.hdf5`` for ToolHang), read with h5py.

Layout: ``data`` (attrs ``env_args`` JSON, ``total``), ``data/demo_<i>/actions`` (T, A),
``data/demo_<i>/obs/<key>`` (T, ...), images uint8 (T, H, W, 3), optional ``mask/<filter_key>`` (demo names).
Store keys: ``action`` plus every ``obs/<key>`` under its own name (``agentview_image``, ``robot0_eef_pos`` ...).
``action_rot6d=True`` turns absolute pose actions (per arm: position 3, axis-angle 3, gripper 1) into
Diffusion Policy's 10-d form (position, 6-d rotation, gripper), as its ``abs_action`` loaders do.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from videoaction.data import poses
from videoaction.data.formats.base import EpisodeSource, FormatError

HDF5_SUFFIXES = (".hdf5", ".h5", ".he5")


def is_hdf5(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


def detect(path: Path) -> bool:
    if not is_hdf5(path):
        return False
    import h5py

    with h5py.File(path, "r") as f:
        return "data" in f and isinstance(f["data"], h5py.Group)


def _demo_order(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else -1, name)


def rot6d_actions(actions: np.ndarray, where) -> np.ndarray:
    """(T, 7k) absolute pose actions (pos3, axis-angle3, gripper1 per arm) -> (T, 10k)."""
    if actions.shape[-1] % 7:
        raise FormatError(where, "absolute pose actions must have 7 values per arm (pos 3, axis-angle 3, gripper 1)",
                          key="actions", found=actions.shape)
    arms = actions.reshape(len(actions), -1, 7)
    rot = poses.matrix_to_rot6d(poses.axis_angle_to_matrix(arms[..., 3:6]))
    out = np.concatenate([arms[..., :3], rot, arms[..., 6:7]], axis=-1)
    return out.reshape(len(actions), -1).astype(np.float32)


class RobomimicSource(EpisodeSource):
    format_name = "robomimic"

    def __init__(self, path, filter_key: str | None = None, action_rot6d: bool = False, **_):
        import h5py

        self.path = Path(path)
        self.action_rot6d = action_rot6d
        self._file, self._pid = None, os.getpid()
        try:
            f = self._h5()
        except OSError as exc:
            raise FormatError(self.path, f"not a readable hdf5 file ({exc}); truncated?") from None
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise FormatError(self.path, "missing group", key="data", expected="robomimic layout data/demo_<i>")
        data = f["data"]
        names = sorted((k for k in data.keys() if isinstance(data[k], h5py.Group)), key=_demo_order)
        if filter_key is not None:
            if f"mask/{filter_key}" not in f:
                raise FormatError(self.path, "missing filter key", key=f"mask/{filter_key}",
                                  expected=sorted(f["mask"].keys()) if "mask" in f else "a mask group")
            wanted = {v.decode() if isinstance(v, bytes) else str(v) for v in f[f"mask/{filter_key}"][()]}
            names = [n for n in names if n in wanted]
        if not names:
            raise FormatError(self.path, "no demonstrations", key="data", expected="groups data/demo_<i>")
        self.demos = names
        first = data[names[0]]
        for need in ("actions", "obs"):
            if need not in first:
                raise FormatError(self.path, "missing key", key=f"data/{names[0]}/{need}")
        self.obs_keys = sorted(first["obs"].keys())
        self.specs = {"action": self._action_spec(first["actions"])}
        for k in self.obs_keys:
            ds = first["obs"][k]
            self.specs[k] = (tuple(ds.shape[1:]), ds.dtype)
        self.image_keys = tuple(k for k, (s, d) in self.specs.items() if len(s) == 3 and s[-1] == 3 and d == np.uint8)
        lengths = []
        for n in names:
            g = data[n]
            if "actions" not in g:
                raise FormatError(self.path, "missing key", key=f"data/{n}/actions")
            lengths.append(int(g.attrs.get("num_samples", g["actions"].shape[0])))
        self.lengths = np.array(lengths, dtype=np.int64)
        env_args = data.attrs.get("env_args")
        self.attrs = {"env_args": env_args.decode() if isinstance(env_args, bytes) else env_args}
        if self.attrs["env_args"]:
            try:
                self.attrs["env_name"] = json.loads(self.attrs["env_args"]).get("env_name")
            except (json.JSONDecodeError, AttributeError):
                raise FormatError(self.path, "env_args is not JSON", key="data.attrs['env_args']") from None
        if action_rot6d:  # otherwise undeclared: robomimic files hold delta or absolute actions
            self.attrs["action_convention"] = "abs_rot6d10"
        self.meta = {"demo": list(names)}
        self.fps = 20.0

    def _action_spec(self, ds) -> tuple[tuple[int, ...], np.dtype]:
        if ds.ndim != 2:
            raise FormatError(self.path, "actions must be (T, A)", key="actions", found=ds.shape)
        if self.action_rot6d:
            return (ds.shape[1] // 7 * 10,), np.dtype(np.float32)
        return (ds.shape[1],), ds.dtype

    def _h5(self):
        import h5py

        if self._file is not None and self._pid != os.getpid():  # forked loader worker: its own handle
            self._file = None
        if self._file is None:
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getstate__(self):  # h5py handles do not cross process boundaries; each worker reopens
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, episode: int, key: str) -> np.ndarray:
        name = self.demos[episode]
        where = f"data/{name}/" + ("actions" if key == "action" else f"obs/{key}")
        f = self._h5()
        if where not in f:
            raise FormatError(self.path, "missing key", key=where)
        try:
            arr = f[where][()]
        except (OSError, RuntimeError) as exc:
            raise FormatError(self.path, f"could not read ({exc}); truncated file?", key=where) from None
        if key == "action" and self.action_rot6d:
            arr = rot6d_actions(arr, self.path)
        return self.check_array(arr, key, where, int(self.lengths[episode]))
