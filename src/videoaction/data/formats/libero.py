"""LIBERO hdf5: the robomimic layout plus the task's language instruction (one ``<task>_demo.hdf5`` per task).

Language: ``data.attrs['problem_info']['language_instruction']``; without it, the file name minus ``_demo.hdf5``
with underscores as spaces (what UVA derives). Obs keys: ``agentview_rgb``, ``eye_in_hand_rgb`` (128x128x3),
``gripper_states``, ``joint_states``, ``ee_states`` ... ; ``actions`` (T, 7). Added key ``state`` (8) =
``ee_states`` + ``gripper_states`` when both exist: the ``libero`` environment's state. The environment declares
the camera names of these files as its key aliases (``agentview_rgb`` -> ``image``, ``eye_in_hand_rgb`` ->
``wrist_image``), so a policy trained on a LIBERO store is evaluated in ``libero:...`` with no renaming.

``absolute_actions=True`` follows UVA's LIBERO-10 convention (its files hold absolute end-effector actions):
actions become (T, 10) = position, 6-d rotation, gripper, and images are flipped vertically (robosuite renders
upside down; UVA rotates 180 degrees then mirrors, a net vertical flip).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from videoaction.data.formats.base import FormatError
from videoaction.data.formats.robomimic import RobomimicSource, is_hdf5


def detect(path: Path) -> bool:
    if not is_hdf5(path):
        return False
    import h5py

    with h5py.File(path, "r") as f:
        return "data" in f and ("problem_info" in f["data"].attrs or "bddl_file_name" in f["data"].attrs)


def language_of(path: Path, attrs) -> str:
    info = attrs.get("problem_info")
    if info is not None:
        try:
            text = json.loads(info.decode() if isinstance(info, bytes) else info).get("language_instruction")
        except (json.JSONDecodeError, AttributeError):
            raise FormatError(path, "problem_info is not JSON", key="data.attrs['problem_info']") from None
        if text:
            return " ".join(text) if isinstance(text, list) else str(text)
    name = path.name
    for suffix in ("_demo.hdf5", ".hdf5", ".h5"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("_", " ")


# ``state`` = ee_states (position + axis-angle, LIBERO's create_dataset.py) + gripper_states (finger qpos): the
# ``libero`` environment's 8-d state, so a policy trained on ``state`` reads the env's state unchanged
STATE_PARTS = ("ee_states", "gripper_states")


class LiberoSource(RobomimicSource):
    format_name = "libero"

    def __init__(self, path, absolute_actions: bool = False, **options):
        super().__init__(path, action_rot6d=absolute_actions, **options)
        self.absolute_actions = absolute_actions
        # LIBERO's files hold delta OSC commands; UVA's LIBERO-10 files absolute targets, turned into rot6d
        self.attrs["action_convention"] = "abs_rot6d10" if absolute_actions else "delta_axis_angle7"
        attrs = self._h5()["data"].attrs
        language = language_of(self.path, attrs)
        self.meta["language"] = [language] * len(self.demos)
        self.attrs["language"] = language
        if "bddl_file_name" in attrs:
            value = attrs["bddl_file_name"]
            self.attrs["bddl_file_name"] = value.decode() if isinstance(value, bytes) else str(value)
        self.fps = 20.0
        if all(k in self.specs for k in STATE_PARTS) and "state" not in self.specs:
            dims = sum(int(np.prod(self.specs[k][0])) for k in STATE_PARTS)
            self.specs["state"] = ((dims,), np.dtype(np.float32))

    def read(self, episode: int, key: str) -> np.ndarray:
        if key == "state" and "state" not in self.obs_keys:  # the LIBERO env's 8-d state, as LIBERO recorded it
            parts = [super(LiberoSource, self).read(episode, k).reshape(int(self.lengths[episode]), -1)
                     for k in STATE_PARTS]
            return np.concatenate(parts, -1).astype(np.float32)
        arr = super().read(episode, key)
        if self.absolute_actions and key in self.image_keys:
            arr = np.ascontiguousarray(arr[:, ::-1])
        return arr
