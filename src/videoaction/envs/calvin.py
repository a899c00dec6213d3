"""CALVIN (ABC -> D long-horizon protocol) behind an environment adapter: the ``calvin`` EnvSpec.

CALVIN is evaluated in chains (``videoaction.eval.calvin_chains``): the scene is reset to a chain's initial state, then
5 instructions follow one another, 360 steps each, success by CALVIN's task oracle. :class:`CalvinChainEnv` gives
that evaluator CALVIN's simulator (``calvin_env``) and oracle with the framework's observation names:

* ``image`` = ``rgb_static`` (200 x 200), ``wrist_image`` = ``rgb_gripper`` (84 x 84), uint8 HWC;
* ``state`` (15) = CALVIN's ``robot_obs`` (tcp position 3, euler orientation 3, gripper width 1, joints 7, gripper
  action 1); VPP uses no proprioception on CALVIN.
* actions: CALVIN's 7-d ``rel_actions`` (clipped to [-1, 1]); the gripper dimension is sent as its sign (-1 close, 1
  open), as CALVIN's evaluation does.

``calvin_env`` is not on the package registries; :func:`require_calvin` explains how to install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from videoaction.envs.spec import EnvSpec, ObservationProtocol, register_env
from videoaction.errors import VideoActionError

INSTALL = """\
CALVIN's simulator (calvin_env) is not on the package registries and is not installed. Install it yourself (this
needs network access; nothing is downloaded by videoaction):

    git clone --recurse-submodules https://github.com/mees/calvin.git
    pip install -e calvin/calvin_env/tacto
    pip install -e calvin/calvin_env
    pip install -e calvin/calvin_models            # task oracle, validation instructions, get_sequences
    cd calvin/dataset && sh download_data.sh D     # or ABC / ABCD; the evaluation scene is task_D_D/validation

Then build the env with dataset_path=<.../task_ABC_D> and calvin_root=<the clone>, and export the 1000 evaluation
chains once (see videoaction.eval.calvin_chains: a JSON sequences file from CALVIN's get_sequences)."""


class CalvinNotInstalled(VideoActionError):
    """calvin_env / calvin_agent are missing; the message says how to install them."""


def require_calvin():
    """Import CALVIN's simulator and evaluation helpers or raise :class:`CalvinNotInstalled`."""
    try:
        from calvin_agent.evaluation.utils import get_env_state_for_initial_condition
        from calvin_env.envs.play_table_env import get_env
    except ImportError as exc:
        raise CalvinNotInstalled(f"{INSTALL}\n(import failed: {type(exc).__name__}: {exc})") from None
    return get_env, get_env_state_for_initial_condition


class CalvinChainEnv(gym.Env):
    """CALVIN's play-table env in the validation scene of ``dataset_path`` plus its task oracle and instructions
    (the :class:`~videoaction.eval.calvin_chains.ChainEnv` interface)."""

    metadata = {"render_modes": []}

    def __init__(self, dataset_path, calvin_root, show_gui: bool = False):
        get_env, self._initial_condition = require_calvin()
        import hydra
        from omegaconf import OmegaConf

        root, data = Path(calvin_root), Path(dataset_path)
        conf = root / "calvin_models" / "conf"
        tasks_yaml = conf / "callbacks" / "rollout" / "tasks" / "new_playtable_tasks.yaml"
        ann_yaml = conf / "annotations" / "new_playtable_validation.yaml"
        for p in (tasks_yaml, ann_yaml, data / "validation"):
            if not p.exists():
                raise VideoActionError(f"CALVIN: {p} not found (calvin_root = the CALVIN clone, dataset_path = the "
                                       "task_ABC_D folder with validation/)")
        self._env = get_env(data / "validation", show_gui=show_gui)
        self._oracle = hydra.utils.instantiate(OmegaConf.load(tasks_yaml))
        self._instructions = {k: v[0] for k, v in OmegaConf.to_container(OmegaConf.load(ann_yaml)).items()}

    @staticmethod
    def _obs(raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        rgb = raw["rgb_obs"]
        return {"image": np.asarray(rgb["rgb_static"], dtype=np.uint8),
                "wrist_image": np.asarray(rgb["rgb_gripper"], dtype=np.uint8),
                "state": np.asarray(raw["robot_obs"], dtype=np.float32)}

    def reset_to(self, initial_state: Mapping[str, Any]) -> dict[str, np.ndarray]:
        robot_obs, scene_obs = self._initial_condition(dict(initial_state))
        return self._obs(self._env.reset(robot_obs=robot_obs, scene_obs=scene_obs))

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if a.shape != (7,):
            raise VideoActionError(f"CALVIN takes 7-d relative actions, got shape {np.shape(action)}")
        a[-1] = 1.0 if a[-1] > 0 else -1.0
        raw, reward, done, info = self._env.step(a)
        return self._obs(raw), float(reward), bool(done), info

    def get_info(self):
        return self._env.get_info()

    def get_task_info_for_set(self, start_info, current_info, tasks):
        return set(self._oracle.get_task_info_for_set(start_info, current_info, set(tasks)))

    def instruction(self, task: str) -> str:
        if task not in self._instructions:
            raise VideoActionError(f"CALVIN has no validation instruction for task {task!r}")
        return self._instructions[task]


def build(variant: str = "", **kw) -> CalvinChainEnv:
    if variant not in ("", "abc_d"):
        raise VideoActionError(f"unknown CALVIN variant {variant!r}; valid: abc_d (the default)")
    require_calvin()
    missing = [k for k in ("dataset_path", "calvin_root") if k not in kw]
    if missing:
        raise VideoActionError(f"the calvin env needs {missing} (the task_ABC_D dataset folder and the CALVIN clone)")
    return CalvinChainEnv(**kw)


SPEC = register_env(EnvSpec(
    name="calvin", build=build, gym_id="videoaction/Calvin-v0",
    description="CALVIN ABC->D long-horizon chains (videoaction.eval.calvin_chains); needs calvin_env, installed "
                "by the user",
    variants=("abc_d",),
    observation=ObservationProtocol(image_keys=("image", "wrist_image"), state_key="state", proprio_dims=15,
                                    proprio_doc="CALVIN robot_obs: tcp pos 3, euler 3, gripper width 1, joints 7, "
                                                "gripper action 1",
                                    privileged_state_dims=15),
    max_steps=360, seed_start=0, packages=("calvin_env",),
))

__all__ = ["INSTALL", "SPEC", "CalvinChainEnv", "CalvinNotInstalled", "build", "require_calvin"]
