"""One demonstration episode per seed (runs in worker processes; the parent writes the store)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class DemoConfig:
    kind: str = "pusht"  # pusht | pusht-m | metaworld
    image_size: int = 96
    max_steps: int = 0  # 0 = the env default (PushT 300, Metaworld 500)
    tasks: list[str] = field(default_factory=lambda: ["mt10"])
    camera: str = "corner2"


_CACHE: dict = {}


def _pusht_episode(cfg: DemoConfig, seed: int) -> tuple[dict, dict]:
    from videoaction.demos.pusht_expert import PushTExpert, run_expert_episode
    from videoaction.envs import make_env

    key = ("pusht", cfg.kind, cfg.image_size)
    if key not in _CACHE:
        _CACHE[key] = (make_env(cfg.kind, image_size=cfg.image_size), PushTExpert())
    env, expert = _CACHE[key]
    rec: dict[str, list] = {k: [] for k in ("img", "state", "keypoint", "action", "n_contacts", "coverage")}
    kp = {"v": None, "cov": 0.0}

    def on_step(obs, action, reward, info):  # obs is the observation the action was chosen from
        rec["img"].append(obs["image"])
        rec["state"].append(obs["state"])
        rec["keypoint"].append(kp["v"])
        rec["action"].append(action)
        rec["n_contacts"].append([float(info.get("n_contacts", 0))])
        rec["coverage"].append([kp["cov"]])
        kp["v"], kp["cov"] = env.unwrapped.keypoints9(), float(info["coverage"])

    # keypoints/coverage of the *pre-action* state: seed them after reset via a wrapper around reset
    orig_reset = env.reset

    def reset(**kw):
        out = orig_reset(**kw)
        kp["v"], kp["cov"] = env.unwrapped.keypoints9(), float(out[1]["coverage"])
        return out

    env.reset = reset
    try:
        res = run_expert_episode(env, seed, expert, max_steps=cfg.max_steps or 300, on_step=on_step)
    finally:
        env.reset = orig_reset
    data = {"img": np.asarray(rec["img"], np.uint8), "state": np.asarray(rec["state"], np.float32),
            "keypoint": np.asarray(rec["keypoint"], np.float32), "action": np.asarray(rec["action"], np.float32),
            "n_contacts": np.asarray(rec["n_contacts"], np.float32), "coverage": np.asarray(rec["coverage"], np.float32)}
    lang = "Push the T block onto the green target." if cfg.kind == "pusht" else \
        "Push the T block onto the green target pose shown in the image."
    meta = {"success": bool(res["success"]), "seed": int(seed), "task": cfg.kind, "language": lang}
    return data, meta


def _metaworld_episode(cfg: DemoConfig, task: str, seed: int) -> tuple[dict, dict]:
    from metaworld.policies import ENV_POLICY_MAP

    from videoaction.envs import make_env

    key = ("mw", task, cfg.image_size)
    if key not in _CACHE:
        _CACHE[key] = (make_env(f"metaworld:{task}", image_size=cfg.image_size, camera=cfg.camera,
                                max_steps=cfg.max_steps or 500), ENV_POLICY_MAP[task]())
    env, policy = _CACHE[key]
    obs, _ = env.reset(seed=seed)
    rec: dict[str, list] = {"img": [], "state": [], "action": []}
    success, done = False, False
    import warnings

    while not done:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            action = np.clip(policy.get_action(env.last_raw_obs), -1, 1).astype(np.float32)
        rec["img"].append(obs["image"])
        rec["state"].append(obs["state"])
        rec["action"].append(action)
        obs, _, term, trunc, info = env.step(action)
        success = info["is_success"]
        done = success or term or trunc
    data = {"img": np.asarray(rec["img"], np.uint8), "state": np.asarray(rec["state"], np.float32),
            "action": np.asarray(rec["action"], np.float32)}
    meta = {"success": bool(success), "seed": int(seed), "task": task, "language": env.language}
    return data, meta


def run_job(job: tuple) -> tuple:
    """``job = (cfg, task, seed)`` -> ``(task, seed, data, meta, seconds)``."""
    cfg, task, seed = job
    t0 = time.time()
    if cfg.kind == "metaworld":
        data, meta = _metaworld_episode(cfg, task, seed)
    else:
        data, meta = _pusht_episode(cfg, seed)
    return task, seed, data, meta, time.time() - t0


def init_worker() -> None:
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:
        pass
