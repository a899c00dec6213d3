"""robosuite's ToolHang (robomimic's hardest task; Diffusion Policy / UVA evaluate it from images with absolute
actions) and what the robosuite-based environments share: the headless OpenGL choice, missing-extra errors, pose
helpers. Spec string: ``robomimic:tool_hang``.

ToolHang is built with robosuite directly (``robosuite.make("ToolHang", ...)``): robomimic's env utilities import
``mujoco_py`` and fail on current systems. It needs robosuite 1.5 (1.4 has no ToolHang), installed by the
``robosuite`` extra (see docs/evaluation.md, "LIBERO and ToolHang").

Protocol (Diffusion Policy's ``tool_hang`` ``image_abs`` task, the one UVA reports): cameras ``sideview`` (returned as
``image``) and ``robot0_eye_in_hand`` (``wrist_image``), 240 x 240, as robosuite renders them (the orientation the
robomimic hdf5 files hold); ``state`` = ``robot0_eef_pos`` (3) + ``robot0_eef_quat`` (4, x y z w) +
``robot0_gripper_qpos`` (2), UVA's 9-d ToolHang proprio; actions are 7-d **absolute** end-effector targets (DP's
``abs_action``: the OSC_POSE controller with ``control_delta=False``; robosuite 1.5's ``input_type="absolute"``):
position (3, world frame) + axis-angle orientation (3) + gripper (-1 open, 1 closed). A policy trained on 10-d
rot6d actions converts rot6d -> axis-angle before stepping, as DP's runner does. Success = the env's
``_check_success()``; an episode lasts at most 700 steps (DP's ``max_steps``); seed ``s`` seeds numpy's global RNG
before the reset (DP's ``RobomimicImageWrapper.seed``) and robosuite 1.5's ``env.rng`` (its placement samplers draw
from it), from 100000
(DP's test seeds; 50 of them in DP / UVA).
"""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np

from videoaction.envs.spec import EnvSpec, MetricSpec, ObservationProtocol, register_env
from videoaction.errors import VideoActionError

TOOL_HANG_MAX_STEPS = 700


class SimulatorMissingError(VideoActionError):
    """An environment whose optional simulator packages (a pyproject extra) are not installed."""


INSTALL = {  # extra -> the command that installs it (robosuite 1.5 goes in without its deps: see docs/evaluation.md)
    "libero": "bash scripts/setup.sh --libero  (= pip install -e '.[libero]')",
    "robosuite": "bash scripts/setup.sh --robosuite  (= pip install -e '.[robosuite]' && "
                 "pip install --no-deps robosuite==1.5.2)",
}


def require(module: str, extra: str, what: str):
    """Import ``module`` or raise :class:`SimulatorMissingError` naming the extra and its install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SimulatorMissingError(
            f"{what} needs the optional '{extra}' extra ({type(exc).__name__}: {exc}). Install it with "
            f"`{INSTALL[extra]}`; the 'libero' and 'robosuite' extras pin different robosuite versions, so they go "
            "in separate environments (docs/evaluation.md, 'LIBERO and ToolHang')") from None


def ensure_gl() -> None:
    """Pick MuJoCo's headless OpenGL backend before robosuite / mujoco is imported: EGL where an NVIDIA GPU is
    visible, OSMesa (CPU) otherwise; a MUJOCO_GL the user set wins. robosuite otherwise forces EGL on Linux."""
    if "MUJOCO_GL" in os.environ:
        return
    gpu = Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()
    os.environ["MUJOCO_GL"] = "egl" if gpu else "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(..., 4) quaternion x y z w (robosuite's order) -> (..., 3) axis * angle, angle in [0, pi]."""
    q = np.asarray(quat, dtype=np.float64)
    q = q * np.where(q[..., 3:4] < 0, -1.0, 1.0)  # same rotation, w >= 0 -> angle <= pi
    w = np.clip(q[..., 3:4], -1.0, 1.0)
    s = np.sqrt(np.maximum(1.0 - w * w, 0.0))
    angle = 2.0 * np.arccos(w)
    scale = np.where(s > 1e-8, angle / np.maximum(s, 1e-8), 2.0)  # small angles: axis*angle ~ 2 * xyz
    return (q[..., :3] * scale).astype(np.float32)


def flip_image(img: np.ndarray, flip: str) -> np.ndarray:
    """robosuite renders upside down (the datasets store it so): ``none`` keeps that, ``vertical`` turns it upright
    (UVA's LIBERO convention), ``rotate180`` flips both axes (OpenVLA / openpi's LIBERO convention)."""
    if flip == "none":
        return np.ascontiguousarray(img)
    if flip == "vertical":
        return np.ascontiguousarray(img[::-1])
    if flip == "rotate180":
        return np.ascontiguousarray(img[::-1, ::-1])
    raise VideoActionError(f"image flip must be 'none', 'vertical' or 'rotate180', got {flip!r}")


def action_box(abs_action: bool, z_range: tuple[float, float]) -> gym.spaces.Box:
    """7-d OSC_POSE action space. Delta: [-1, 1] (the controller's input range). Absolute: a workspace box (world
    x, y in [-0.5, 0.5], z in ``z_range``, axis-angle in [-pi, pi], gripper [-1, 1]) that bounds random baselines;
    actions are not clipped to it."""
    if not abs_action:
        return gym.spaces.Box(-1, 1, (7,), np.float32)
    pi = np.pi
    low = np.array([-0.5, -0.5, z_range[0], -pi, -pi, -pi, -1], np.float32)
    high = np.array([0.5, 0.5, z_range[1], pi, pi, pi, 1], np.float32)
    return gym.spaces.Box(low, high, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ ToolHang
class ToolHangEnv(gym.Env):
    """robosuite ToolHang (Panda, OSC_POSE absolute), dict observations ``image`` / ``wrist_image`` / ``state``."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, image_size: int = 240, max_steps: int = TOOL_HANG_MAX_STEPS, abs_action: bool = True,
                 camera: str = "sideview", flip: str = "none"):
        ensure_gl()
        suite = require("robosuite", "robosuite", "robomimic:tool_hang")
        if "ToolHang" not in suite.ALL_ENVIRONMENTS:
            raise SimulatorMissingError(
                f"robosuite {suite.__version__} has no ToolHang (added in robosuite 1.5; the 'libero' extra brings "
                f"1.4): install the 'robosuite' extra in an environment without the 'libero' extra: "
                f"`{INSTALL['robosuite']}`")
        from robosuite.controllers import load_composite_controller_config

        cfg = load_composite_controller_config(controller="BASIC", robot="Panda")
        for part in cfg["body_parts"].values():  # the arm's OSC_POSE: absolute targets (DP's abs_action)
            if part.get("type") == "OSC_POSE":
                part["input_type"] = "absolute" if abs_action else "delta"
                part["input_ref_frame"] = "world" if abs_action else part.get("input_ref_frame", "base")
        h = w = int(image_size)
        self.cameras = (camera, "robot0_eye_in_hand")
        self.env = suite.make("ToolHang", robots=["Panda"], controller_configs=cfg, has_renderer=False,
                              has_offscreen_renderer=True, use_camera_obs=True, use_object_obs=False,
                              camera_names=list(self.cameras), camera_heights=h, camera_widths=w,
                              reward_shaping=False, control_freq=20, ignore_done=True, hard_reset=False)
        self.max_steps, self.abs_action, self.flip, self._t = int(max_steps), abs_action, flip, 0
        self.action_convention = "abs_axis_angle7" if abs_action else "delta_axis_angle7"
        self.language = "Hang the tool on the frame."
        self.action_space = action_box(abs_action, z_range=(0.8, 1.4))
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (h, w, 3), np.uint8),
            "wrist_image": gym.spaces.Box(0, 255, (h, w, 3), np.uint8),
            "state": gym.spaces.Box(-np.inf, np.inf, (9,), np.float32)})

    def _obs(self, raw: dict) -> dict:
        self.last_raw_obs = raw
        state = np.concatenate([raw["robot0_eef_pos"], raw["robot0_eef_quat"], raw["robot0_gripper_qpos"]])
        return {"image": flip_image(raw[f"{self.cameras[0]}_image"], self.flip),
                "wrist_image": flip_image(raw[f"{self.cameras[1]}_image"], self.flip),
                "state": state.astype(np.float32)}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # DP seeds numpy's global RNG (robosuite <= 1.4 drew from it); robosuite 1.5 draws
            np.random.seed(int(seed))  # placements from env.rng, shared by its samplers: reseed it in place
            self.env.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
        raw = self.env.reset()
        self._t = 0
        return self._obs(raw), {"is_success": False, "language": self.language}

    def step(self, action):
        raw, reward, _, info = self.env.step(np.asarray(action, dtype=np.float64))
        self._t += 1
        ok = bool(self.env._check_success())
        info = {"is_success": ok}
        return self._obs(raw), float(reward), ok, self._t >= self.max_steps, info

    def hold_action(self) -> np.ndarray:
        """The 7-d action that keeps the gripper where it is (open): the arm controller's current site pose in the
        action convention (absolute: world position + axis-angle; delta: zeros)."""
        if not self.abs_action:
            return np.array([0, 0, 0, 0, 0, 0, -1], np.float32)
        from scipy.spatial.transform import Rotation

        ctrl = self.env.robots[0].part_controllers["right"]
        ctrl.update(force=True)
        rotvec = Rotation.from_matrix(np.asarray(ctrl.ref_ori_mat)).as_rotvec()
        return np.concatenate([np.asarray(ctrl.ref_pos), rotvec, [-1.0]]).astype(np.float32)

    def render(self) -> np.ndarray:
        return flip_image(self.last_raw_obs[f"{self.cameras[0]}_image"], self.flip)

    def close(self):
        self.env.close()


def build_tool_hang(variant: str = "tool_hang", **kw) -> ToolHangEnv:
    """kw: ``image_size`` (240), ``max_steps`` (700), ``abs_action`` (True), ``camera`` ("sideview"; DP's
    ``image_abs`` also has ``agentview``), ``flip`` ("none")."""
    if variant not in ("", "tool_hang"):
        raise VideoActionError(f"unknown robomimic task {variant!r}; valid: robomimic:tool_hang")
    return ToolHangEnv(**kw)


SPEC = register_env(EnvSpec(
    name="robomimic", gym_id="videoaction/RobomimicToolHang-v0", build=build_tool_hang,
    description="robomimic ToolHang through robosuite 1.5 (Panda; 7-d absolute OSC_POSE actions, as DP's abs_action)",
    variants=("tool_hang",), variant_hint="<task>",
    instruction=lambda variant: "Hang the tool on the frame.",
    observation=ObservationProtocol(
        image_keys=("image", "wrist_image"), state_key="state", proprio_dims=9,
        proprio_doc="robot0_eef_pos (3) + robot0_eef_quat (4, x y z w) + robot0_gripper_qpos (2)",
        privileged_state_dims=9,
        key_aliases={"sideview_image": "image", "agentview_image": "image", "robot0_eye_in_hand_image": "wrist_image"}),
    action_convention="abs_axis_angle7",
    ee_pose=lambda obs: np.concatenate([obs["state"][..., :3], quat_to_axis_angle(obs["state"][..., 3:7])], -1),
    max_steps=TOOL_HANG_MAX_STEPS, seed_start=100_000,
    metrics=MetricSpec(definitions={
        "success_rate": "fraction of episodes where ToolHang's _check_success() holds at any step (robomimic)",
        "action_convention": ("7-d absolute end-effector target: world position (3) + axis-angle (3) + gripper; "
                              "OSC_POSE with control_delta=False (DP abs_action)"),
        "seeds_note": "seed s -> numpy.random.seed(s) before reset (DP's RobomimicImageWrapper); DP tests 100000+"}),
    render_backend="robosuite offscreen renderer: EGL on a GPU, OSMesa (CPU) otherwise; sideview + eye-in-hand",
    setup=ensure_gl, packages=("robosuite", "mujoco")))
