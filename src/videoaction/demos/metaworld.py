"""Record one Metaworld demonstration with the task's scripted policy that metaworld ships
(``metaworld.policies.ENV_POLICY_MAP``).

Named by the ``metaworld`` EnvSpec (``demo="videoaction.demos.metaworld:record_episode"``); ``task`` is a short
task name (``reach``), as stored in the episode metadata. Per step: the observation the action was chosen from (``img``, ``state`` 39-d) and the ``action``;
with ``cfg.wrist_camera`` also ``wrist_image`` (the second camera's frame).
"""

from __future__ import annotations

import warnings

import numpy as np

from videoaction.demos.generate import DemoConfig, cached


def record_episode(cfg: DemoConfig, task: str, seed: int) -> tuple[dict, dict]:
    from metaworld.policies import ENV_POLICY_MAP

    from videoaction.envs import get_env_spec, make_env
    from videoaction.envs.metaworld import WRIST_KEY

    spec = get_env_spec(cfg.kind)
    full = task if task.endswith("-v3") else f"{task}-v3"
    wrist = getattr(cfg, "wrist_camera", "")
    env, policy = cached(("metaworld", full, cfg.image_size, cfg.camera, wrist, cfg.max_steps), lambda: (
        make_env(f"{spec.name}:{full}", image_size=cfg.image_size, max_steps=cfg.max_steps or spec.max_steps,
                 **({"camera": cfg.camera} if cfg.camera else {}), **({"wrist_camera": wrist} if wrist else {})),
        ENV_POLICY_MAP[full]()))
    obs, _ = env.reset(seed=seed)
    rec: dict[str, list] = {"img": [], "state": [], "action": [], **({WRIST_KEY: []} if wrist else {})}
    success, done = False, False
    while not done:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            action = np.clip(policy.get_action(env.last_raw_obs), -1, 1).astype(np.float32)
        rec["img"].append(obs["image"])
        if wrist:
            rec[WRIST_KEY].append(obs[WRIST_KEY])
        rec["state"].append(obs["state"])
        rec["action"].append(action)
        obs, _, term, trunc, info = env.step(action)
        success = info["is_success"]
        done = success or term or trunc
    data = {"img": np.asarray(rec["img"], np.uint8), "state": np.asarray(rec["state"], np.float32),
            "action": np.asarray(rec["action"], np.float32)}
    if wrist:
        data[WRIST_KEY] = np.asarray(rec[WRIST_KEY], np.uint8)
    meta = {"success": bool(success), "seed": int(seed), "task": full.removesuffix("-v3"), "language": env.language,
            "length": len(rec["action"])}
    return data, meta
