"""Metaworld 3.x tasks as image + state environments, reproducible per seed, with one instruction per task.

``make_metaworld("reach", seed, image_size=96, camera="corner2")`` builds the task's Sawyer env directly (goal
observable, so the 39-d state holds the goal as Metaworld's scripted experts expect), with ``reset(seed=s)``
controlling the object and goal positions (``seeded_rand_vec``, as LeRobot does). Observations are
``{"image": uint8 (S, S, 3) from the chosen camera, "state": float32 (39,)}``; ``info["is_success"]`` is
Metaworld's ``success`` flag. Rendering needs an OpenGL backend: ``MUJOCO_GL=osmesa`` on CPUs (default here when
unset; ``apt-get install libosmesa6``), ``MUJOCO_GL=egl`` on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from videoaction.data.errors import VideoActionError

CAMERAS = ("topview", "corner", "corner2", "corner3", "behindGripper", "gripperPOV", "corner4")

# One instruction per task (language conditioning); derived from Metaworld's task descriptions.
INSTRUCTIONS: dict[str, str] = {
    "assembly": "Pick up the nut and place it onto the peg.",
    "basketball": "Dunk the basketball into the basket.",
    "bin-picking": "Grasp the puck from one bin and place it into the other bin.",
    "box-close": "Grasp the cover and close the box with it.",
    "button-press-topdown": "Press the button from the top.",
    "button-press-topdown-wall": "Press the button from the top, behind the wall.",
    "button-press": "Press the button.",
    "button-press-wall": "Press the button behind the wall.",
    "coffee-button": "Push the button on the coffee machine.",
    "coffee-pull": "Pull the mug from the coffee machine.",
    "coffee-push": "Push the mug under the coffee machine.",
    "dial-turn": "Rotate the dial 180 degrees.",
    "disassemble": "Pick the nut off the peg.",
    "door-close": "Close the door.",
    "door-lock": "Lock the door by rotating the lock clockwise.",
    "door-open": "Open the door.",
    "door-unlock": "Unlock the door by rotating the lock counter-clockwise.",
    "hand-insert": "Insert the gripper into the hole.",
    "drawer-close": "Push and close the drawer.",
    "drawer-open": "Open the drawer.",
    "faucet-open": "Rotate the faucet counter-clockwise.",
    "faucet-close": "Rotate the faucet clockwise.",
    "hammer": "Hammer the screw on the wall.",
    "handle-press-side": "Press the handle down sideways.",
    "handle-press": "Press the handle down.",
    "handle-pull-side": "Pull the handle up sideways.",
    "handle-pull": "Pull the handle up.",
    "lever-pull": "Pull the lever down 90 degrees.",
    "peg-insert-side": "Insert the peg sideways into the hole.",
    "pick-place-wall": "Pick up the puck, go around the wall and place it at the goal.",
    "pick-out-of-hole": "Pick up the peg out of the hole.",
    "reach": "Reach the goal position.",
    "push-back": "Push the puck back to the goal.",
    "push": "Push the puck to the goal.",
    "pick-place": "Pick up the puck and place it at the goal.",
    "plate-slide": "Slide the plate into the cabinet.",
    "plate-slide-side": "Slide the plate sideways into the cabinet.",
    "plate-slide-back": "Get the plate out of the cabinet.",
    "plate-slide-back-side": "Get the plate out of the cabinet sideways.",
    "peg-unplug-side": "Unplug the peg sideways.",
    "soccer": "Kick the soccer ball into the goal.",
    "stick-push": "Grasp the stick and push the box with it.",
    "stick-pull": "Grasp the stick and pull the box with it.",
    "push-wall": "Push the puck around the wall to the goal.",
    "reach-wall": "Reach the goal position behind the wall.",
    "shelf-place": "Pick up the puck and place it onto the shelf.",
    "sweep-into": "Sweep the puck into the hole.",
    "sweep": "Sweep the puck off the table.",
    "window-open": "Push and open the window.",
    "window-close": "Push and close the window.",
}


@dataclass
class MetaworldConfig:
    task: str = "reach"
    image_size: int = 96
    camera: str = "corner2"
    max_episode_steps: int = 500  # Metaworld's max_path_length; stepping past it raises


def _task_lists() -> tuple[list[str], list[str]]:
    import metaworld.env_dict as d

    strip = lambda n: n[:-3] if n.endswith("-v3") else n  # noqa: E731
    return [strip(n) for n in d.MT10_V3], [strip(n) for n in d.MT50_V3]


def task_names(task_set: str = "mt50") -> list[str]:
    """Task names of ``mt10`` or ``mt50`` (without the ``-v3`` suffix)."""
    mt10, mt50 = _task_lists()
    sets = {"mt10": mt10, "mt50": mt50}
    if task_set.lower() not in sets:
        raise VideoActionError(f"unknown Metaworld task set {task_set!r}; valid: {sorted(sets)}")
    return sets[task_set.lower()]


def resolve_tasks(names: list[str] | str) -> list[str]:
    """Expand ``mt10`` / ``mt50`` and check task names (``reach`` or ``reach-v3``); unknown names list valid ones."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    valid = task_names("mt50")
    out: list[str] = []
    for name in names:
        name = name.strip()
        if name.lower() in ("mt10", "mt50"):
            out += task_names(name)
            continue
        base = name[:-3] if name.endswith("-v3") else name
        if base not in valid:
            raise VideoActionError(f"unknown Metaworld task {name!r}; valid tasks: {', '.join(valid)} "
                                   "(or the sets mt10, mt50)")
        out.append(base)
    return out


def check_rendering() -> None:
    """Fail early, with the fix, when MuJoCo has no usable OpenGL backend."""
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    backend = os.environ["MUJOCO_GL"]
    if backend == "osmesa":
        import ctypes.util

        if ctypes.util.find_library("OSMesa") is None:
            raise VideoActionError("MuJoCo rendering needs OSMesa on a CPU machine: install it with "
                                   "`apt-get install libosmesa6` (and keep MUJOCO_GL=osmesa), or on a GPU machine "
                                   "set MUJOCO_GL=egl")


class MetaworldEnv(gym.Env):
    """One Metaworld task with image + state observations and per-seed reproducible resets."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, config: MetaworldConfig):
        check_rendering()
        import metaworld

        self.config = config
        [task] = resolve_tasks([config.task])
        if config.camera not in CAMERAS:
            raise VideoActionError(f"unknown Metaworld camera {config.camera!r}; valid: {CAMERAS}")
        self.task = task
        self.language = INSTRUCTIONS.get(task, task.replace("-", " "))
        benchmark = metaworld.MT1(f"{task}-v3", seed=0)
        try:
            self._env = benchmark.train_classes[f"{task}-v3"](render_mode="rgb_array", camera_name=config.camera,
                                                             width=config.image_size, height=config.image_size)
        except Exception as exc:  # MuJoCo raises on a missing GL backend
            raise VideoActionError(f"could not create the MuJoCo renderer ({exc}); on a CPU install OSMesa "
                                   "(`apt-get install libosmesa6`) and set MUJOCO_GL=osmesa; on a GPU set "
                                   "MUJOCO_GL=egl") from None
        self._env.set_task(benchmark.train_tasks[0])
        # MuJoCo's default 4096 shadow map and 4x multisampling cost ~0.3 s per frame under OSMesa; without them
        # a frame takes ~10 ms. Demonstrations and evaluation share this setting, so their images agree.
        self._env.model.vis.quality.shadowsize = 0
        self._env.model.vis.quality.offsamples = 0
        self._env._partially_observable = False  # goal in the state (experts read it)
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True  # reset(seed) decides object / goal positions
        self._env.max_path_length = max(config.max_episode_steps, 1)
        size = config.image_size
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (size, size, 3), dtype=np.uint8),
            "state": gym.spaces.Box(-np.inf, np.inf, (39,), dtype=np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)
        self._steps = 0

    def _image(self) -> np.ndarray:
        img = self._env.render()
        return np.ascontiguousarray(img[::-1, ::-1])  # MuJoCo's offscreen buffer is upside down (LeRobot flips too)

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        self._env.seed(int(seed) if seed is not None else int(self.np_random.integers(2**31)))
        obs, info = self._env.reset()
        self._steps = 0
        info = {"is_success": False, "language": self.language, "task": self.task}
        return {"image": self._image(), "state": obs.astype(np.float32)}, info

    def step(self, action):
        obs, reward, _, truncated, info = self._env.step(np.clip(np.asarray(action, np.float32), -1, 1))
        self._steps += 1
        success = bool(info.get("success", 0.0) > 0.5)
        info = dict(info, is_success=success, language=self.language, task=self.task)
        truncated = bool(truncated) or self._steps >= self.config.max_episode_steps
        return {"image": self._image(), "state": obs.astype(np.float32)}, float(reward), success, truncated, info

    def render(self):
        return self._image()

    def close(self):
        self._env.close()

    @property
    def unwrapped_metaworld(self):
        """The underlying Metaworld env (the scripted experts read its 39-d observation)."""
        return self._env
