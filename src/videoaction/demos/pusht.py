"""Record one scripted PushT / PushT-M demonstration (the planning expert of :mod:`videoaction.demos.pusht_expert`).

Named by the ``pusht`` / ``pusht-m`` EnvSpecs (``demo="videoaction.demos.pusht:record_episode"``).
Per step: the observation the action was chosen from (``img``, ``state``), the T's 9 ``keypoint`` s of that state,
the ``action``, and after it ``n_contacts`` and ``coverage``.
"""

from __future__ import annotations

import numpy as np

from videoaction.demos.generate import DemoConfig, cached


def record_episode(cfg: DemoConfig, task: str, seed: int) -> tuple[dict, dict]:
    from videoaction.demos.pusht_expert import PushTExpert, run_expert_episode
    from videoaction.envs import get_env_spec, make_env

    env, expert = cached(("pusht", cfg.kind, cfg.image_size),
                         lambda: (make_env(cfg.kind, image_size=cfg.image_size), PushTExpert()))
    spec = get_env_spec(cfg.kind)
    rec: dict[str, list] = {k: [] for k in ("img", "state", "keypoint", "action", "n_contacts", "coverage")}
    kp = {"v": None}

    def on_step(obs, action, reward, info):  # obs is the observation the action was chosen from
        rec["img"].append(obs["image"])
        rec["state"].append(obs["state"])
        rec["keypoint"].append(kp["v"])
        rec["action"].append(action)
        rec["n_contacts"].append([float(info.get("n_contacts", 0))])
        rec["coverage"].append([float(info["coverage"])])  # after this step's action (like the reward)
        kp["v"] = env.unwrapped.keypoints9()

    # keypoints/coverage of the *pre-action* state: seed them after reset via a wrapper around reset
    orig_reset = env.reset

    def reset(**kw):
        out = orig_reset(**kw)
        kp["v"] = env.unwrapped.keypoints9()
        return out

    env.reset = reset
    try:
        res = run_expert_episode(env, seed, expert, max_steps=cfg.max_steps or spec.max_steps, on_step=on_step)
    finally:
        env.reset = orig_reset
    data = {"img": np.asarray(rec["img"], np.uint8), "state": np.asarray(rec["state"], np.float32),
            "keypoint": np.asarray(rec["keypoint"], np.float32), "action": np.asarray(rec["action"], np.float32),
            "n_contacts": np.asarray(rec["n_contacts"], np.float32), "coverage": np.asarray(rec["coverage"], np.float32)}
    goal = env.unwrapped.goal_pose
    meta = {"success": bool(res["success"]), "seed": int(seed), "task": cfg.kind, "language": spec.instruction(""),
            "length": len(rec["action"]), "goal_x": float(goal[0]), "goal_y": float(goal[1]),
            "goal_theta": float(goal[2])}
    return data, meta
