"""Metaworld 3.x single-task env with dict observations (camera image + 39-d state), language instructions, and
the ``metaworld`` :class:`~videoaction.envs.spec.EnvSpec` (``metaworld:reach``, ``metaworld:a,b``, ``metaworld:MT10``).

The 39-d state is Metaworld's own observation (``SawyerXYZEnv._get_obs``, metaworld 3.1): ``[0:3]`` end-effector
(hand) position, ``[3]`` gripper opening (finger distance / 0.1, clipped to [0, 1]), ``[4:18]`` object positions +
quaternions (padded), ``[18:36]`` the same 18 values of the previous step, ``[36:39]`` goal position (zeros when the
goal is not observable). The standard low-dim observation is ``state[:4]`` (hand xyz + gripper); the rest holds
object and goal poses and is privileged.

A second camera: ``wrist_camera="gripperPOV"`` (any MuJoCo camera of the scene: topview, corner, corner2, corner3,
corner4, behindGripper, gripperPOV) adds ``wrist_image`` to every observation, rendered at the same size
(``make_env("metaworld:reach", wrist_camera="gripperPOV")``; ``videoaction demos metaworld --wrist-camera
gripperPOV`` stores it as ``wrist_image`` next to ``img``).
"""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np

from videoaction.envs.spec import EnvSpec, MetricSpec, ObservationProtocol, register_env
from videoaction.errors import VideoActionError

WRIST_KEY = "wrist_image"  # observation (and demo store) key of the second camera
MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]


def ensure_headless_gl() -> None:
    """Without a display and without a user choice, render MuJoCo with OSMesa (CPU). Must run before the first
    ``import mujoco`` of the process: MuJoCo picks its GL backend once, at import."""
    if "MUJOCO_GL" not in os.environ and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ["MUJOCO_GL"] = "osmesa"


def _task_names() -> list[str]:
    ensure_headless_gl()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS.keys())


def instruction(task: str) -> str:
    """A one-sentence instruction for language conditioning, e.g. 'Open the drawer.'"""
    special = {"reach-v3": "Reach the goal position.", "push-v3": "Push the puck to the goal.",
               "pick-place-v3": "Pick up the puck and place it at the goal.", "peg-insert-side-v3":
               "Insert the peg into the hole from the side.", "button-press-topdown-v3": "Press the button from the top.",
               "sweep-into-v3": "Sweep the puck into the hole.", "basketball-v3": "Dunk the ball into the basket.",
               "shelf-place-v3": "Place the puck on the shelf.", "bin-picking-v3": "Move the puck from one bin to the other.",
               "hand-insert-v3": "Insert the gripper into the hole.", "pick-out-of-hole-v3": "Pick the peg out of the hole.",
               "peg-unplug-side-v3": "Unplug the peg sideways.", "disassemble-v3": "Pick the nut off the peg.",
               "assembly-v3": "Put the nut onto the peg.", "pick-place-wall-v3": "Pick up the puck and place it behind the wall.",
               "push-back-v3": "Push the puck back to the goal.", "push-wall-v3": "Push the puck past the wall to the goal.",
               "reach-wall-v3": "Reach the goal position behind the wall.", "button-press-wall-v3":
               "Press the button behind the wall.", "button-press-topdown-wall-v3": "Press the button behind the wall from the top."}
    if task in special:
        return special[task]
    words = task.removesuffix("-v3").split("-")
    verbs = {"open", "close", "press", "pull", "push", "turn", "lock", "unlock", "slide", "place", "sweep", "insert"}
    verb = next((w for w in words if w in verbs), words[-1])
    rest = " ".join(w for w in words if w != verb)
    return f"{verb.capitalize()} the {rest}.".replace("  ", " ")


def _gl_help(exc: BaseException) -> str:
    return (f"MuJoCo could not open an offscreen OpenGL context (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: "
            f"{type(exc).__name__}: {exc}). Install OSMesa (`apt-get install libosmesa6`) and set "
            "MUJOCO_GL=osmesa, or MUJOCO_GL=egl on a GPU machine.")


def mt50() -> list[str]:
    return _task_names()


def resolve_tasks(names) -> list[str]:
    """Short task names (``reach``) from a list or comma-separated string of names (``reach`` / ``reach-v3``) and
    the sets ``mt10`` / ``mt50``; an unknown name is an error listing the valid ones."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    valid = _task_names()
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if name.lower() in ("mt10", "mt50"):
            out += [t.removesuffix("-v3") for t in (MT10 if name.lower() == "mt10" else valid)]
            continue
        full = name if name.endswith("-v3") else f"{name}-v3"
        if full not in valid:
            raise VideoActionError(f"unknown Metaworld task {name!r}; valid: mt10, mt50, "
                                   f"{', '.join(t.removesuffix('-v3') for t in valid)}")
        out.append(full.removesuffix("-v3"))
    return list(dict.fromkeys(out))


class MetaworldEnv(gym.Env):
    """One Metaworld task; ``reset(seed)`` draws the object/goal positions from that seed."""

    metadata = {"render_modes": ["rgb_array"]}
    action_convention = "mw4"  # hand delta (3) + gripper (videoaction.envs.action_conventions)

    def __init__(self, task: str, image_size: int | tuple[int, int] = 96, camera: str = "corner2",
                 max_steps: int = 500, goal_observable: bool = True, wrist_camera: str = ""):
        ensure_headless_gl()
        try:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        except (RuntimeError, ImportError) as exc:
            raise VideoActionError(_gl_help(exc)) from None

        if task not in ALL_V3_ENVIRONMENTS and f"{task}-v3" in ALL_V3_ENVIRONMENTS:
            task = f"{task}-v3"  # short names as stored in demo metadata ("reach")
        if task not in ALL_V3_ENVIRONMENTS:
            raise VideoActionError(f"unknown Metaworld task {task!r}; valid: {', '.join(sorted(ALL_V3_ENVIRONMENTS))}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        env = ALL_V3_ENVIRONMENTS[task]()
        env._partially_observable = not goal_observable
        if "sawyer_observation_space" in env.__dict__:
            del env.sawyer_observation_space
        env._freeze_rand_vec, env.seeded_rand_vec, env._set_task_called = False, True, True
        env.max_path_length = max_steps
        self.env, self.task, self.camera, self.max_steps = env, task, camera, max_steps
        self.wrist_camera = wrist_camera
        self.language = instruction(task)
        try:
            import mujoco

            self._renderer = mujoco.Renderer(env.model, h, w)
        except Exception as exc:  # no OpenGL backend
            raise VideoActionError(_gl_help(exc)) from None
        names = [mujoco.mj_id2name(env.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(env.model.ncam)]
        for cam in (camera, wrist_camera):
            if cam and cam not in names:
                raise VideoActionError(f"Metaworld {task}: no camera {cam!r}; cameras of the scene: {names}")
        self.action_space = gym.spaces.Box(-1, 1, (4,), np.float32)
        spaces = {"image": gym.spaces.Box(0, 255, (h, w, 3), np.uint8),
                  "state": gym.spaces.Box(-np.inf, np.inf, (39,), np.float32)}
        if wrist_camera:
            spaces[WRIST_KEY] = spaces["image"]
        self.observation_space = gym.spaces.Dict(spaces)
        self._t = 0
        self.last_raw_obs = None

    def render(self, camera: str | None = None) -> np.ndarray:
        """The frame of ``camera`` (default: the main camera) as uint8 (H, W, 3)."""
        import mujoco

        r = self._renderer
        r.update_scene(self.env.data, camera=camera or self.camera)
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0  # 2-5x faster on OSMesa, same content
        r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return np.ascontiguousarray(r.render()[::-1, ::-1])  # MuJoCo images are upside down (as LeRobot flips)

    def _obs(self, raw):
        self.last_raw_obs = raw
        obs = {"image": self.render(), "state": np.asarray(raw, dtype=np.float32)}
        if self.wrist_camera:
            obs[WRIST_KEY] = self.render(self.wrist_camera)
        return obs

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.env.seed(int(seed))
        raw, info = self.env.reset()
        self._t = 0
        return self._obs(raw), {"is_success": False, "task": self.task, "language": self.language}

    def step(self, action):
        raw, reward, term, trunc, info = self.env.step(np.clip(np.asarray(action, dtype=np.float32), -1, 1))
        self._t += 1
        info = dict(info)
        info["is_success"] = bool(info.get("success", 0) > 0.5)
        trunc = bool(trunc) or self._t >= self.max_steps
        return self._obs(raw), float(reward), False, trunc, info

    def close(self):
        self._renderer.close()
        self.env.close()


# ------------------------------------------------------------------------------------------------ spec
def build(variant: str, **kw) -> MetaworldEnv:
    """kw: ``image_size`` (96), ``camera`` ("corner2"), ``max_steps`` (500), ``goal_observable`` (True),
    ``wrist_camera`` ("" = none; e.g. "gripperPOV": adds ``wrist_image``)."""
    if not variant:
        raise VideoActionError(f"metaworld spec needs a task, e.g. 'metaworld:reach-v3'; valid: {mt50()}")
    return MetaworldEnv(variant, **kw)


def _instruction(variant: str) -> str:
    return instruction(variant if variant.endswith("-v3") else f"{variant}-v3")


SPEC = register_env(EnvSpec(
    name="metaworld", gym_id="videoaction/Metaworld-v0", build=build,
    description="Metaworld 3.x single tasks (sawyer arm, 4-d actions: hand dx, dy, dz, gripper)",
    variant_hint="<task>[,<task>...] | MT10 | MT50",
    expand=resolve_tasks, instruction=_instruction,
    observation=ObservationProtocol(image_keys=("image", WRIST_KEY), state_key="state", proprio_dims=4,
                                    proprio_doc="hand x, y, z + gripper opening (Metaworld state[0:4])",
                                    privileged_state_dims=39),
    max_steps=500, seed_start=100_000, metrics=MetricSpec(),
    action_convention=MetaworldEnv.action_convention,
    render_backend="MuJoCo offscreen renderer: OSMesa (CPU) when headless, EGL on a GPU; shadows and reflections off",
    setup=ensure_headless_gl, packages=("metaworld", "mujoco"),
    demo="videoaction.demos.metaworld:record_episode",
    demo_tasks=lambda names: resolve_tasks(list(names or ["mt10"]))))
