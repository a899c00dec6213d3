"""Vectorised simulator rollouts of a policy (or a plain callable) with fixed, documented seeds.

Protocol (Diffusion Policy's runner / MultiStepWrapper, LeRobot's success definition):

* one episode per seed; ``n_envs`` sub-environments in a gymnasium vector env with ``autoreset_mode=DISABLED``:
  a finished sub-env is reset explicitly (``reset_mask``) with the next seed, so no observation of a new episode
  is ever mixed into the previous one;
* the policy sees the last ``T_obs`` observations (its ``observation_spec()`` leading dim); at an episode start the
  first observation is repeated to fill the history;
* each policy call returns a chunk; its first ``n_action_steps`` actions are executed, one env step each, then the
  policy is queried again (per sub-env, so episodes that end mid-chunk never reuse stale actions); a sub-env whose
  episode ended waits for the next chunk boundary to start its next seed, so all sub-envs share one policy call;
* an episode ends on ``terminated`` / ``truncated``, on success (``info["is_success"]``), or after ``max_steps``;
* per episode: success at any step, max and summed reward, steps, and ``initial_/max_/final_<key>`` of the info
  keys the environment's :class:`~videoaction.envs.spec.MetricSpec` tracks (PushT: coverage).

Everything environment-specific (max steps, seeds, metrics, the observation protocol, versions to record) comes
from the environment's :class:`~videoaction.envs.spec.EnvSpec`. Seeds (see :func:`default_seeds`) start at the
spec's ``seed_start`` (100000 for PushT, Diffusion Policy's test seeds, and for Metaworld, away from the demo seeds
0..N); the PushT spec's ``seeds_note`` says why gym-pusht 0.1.8 seeds are not DP's start states.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from videoaction.errors import VideoActionError
from videoaction.eval import metrics as M
from videoaction.eval.adapter import PolicyAdapter
from videoaction.eval.history import ObservationHistory

VERSION_PACKAGES = ("videoaction", "gymnasium", "torch", "numpy")  # + the environment's EnvSpec.packages
PRIVILEGED_LABEL = "privileged_state"  # a preset whose name contains this may condition on the full state


# ------------------------------------------------------------------------------------------------ specs and seeds
def expand_env_spec(spec: str) -> list[str]:
    """One spec string per task (the EnvSpec's ``expand``): ``metaworld:a,b`` -> [``metaworld:a``,
    ``metaworld:b``]; ``metaworld:MT10`` -> its ten tasks; single-task specs unchanged."""
    from videoaction.envs.spec import expand_env

    return expand_env(spec)


def default_seeds(spec: str, n_episodes: int, start: int | None = None) -> list[int]:
    """The documented fixed evaluation seeds: ``start, start + 1, ...``, from the EnvSpec's ``seed_start``."""
    from videoaction.envs.spec import get_env_spec

    return get_env_spec(spec).default_seeds(n_episodes, start)


def package_versions(names: Sequence[str] = VERSION_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def _default_env_fn(spec: str, seed: int, **kw):
    from videoaction.envs import make_env

    return make_env(spec, seed, **kw)


# ------------------------------------------------------------------------------------------------ rollouts
def _env_language(venv) -> list[str | None]:
    """Task instruction per sub-env from the env attribute ``language`` / ``instruction`` (in-process envs only;
    any env may also report ``info["language"]`` at reset, which takes precedence)."""
    out: list[str | None] = [None] * venv.num_envs
    for i, env in enumerate(getattr(venv, "envs", []) or []):
        for name in ("language", "instruction"):
            try:
                v = env.get_wrapper_attr(name)
            except AttributeError:
                continue
            if isinstance(v, str):
                out[i] = v
                break
    return out


def _info_at(info: Mapping[str, Any], key: str, i: int, default=None):
    if key in info and (f"_{key}" not in info or bool(info[f"_{key}"][i])):
        return info[key][i]
    return default


def _make_vector_env(spec: str, n_envs: int, seed: int, env_fn: Callable, env_kwargs: dict, vector: str):
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    fns = [functools.partial(env_fn, spec, seed + i, **env_kwargs) for i in range(n_envs)]
    if vector == "async":
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED, shared_memory=False)
    if vector != "sync":
        raise VideoActionError(f"vector must be 'sync' or 'async', got {vector!r}")
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED)


def run_episodes(adapter: PolicyAdapter, spec: str, seeds: Sequence[int], n_envs: int, max_steps: int,
                 record_video: int = 0, env_fn: Callable | None = None, env_kwargs: dict | None = None,
                 vector: str = "sync", stop_on_success: bool = True, progress: bool = True,
                 sync_chunks: bool = True, tracked_info: Sequence[str] = (), key_map: Mapping[str, str] | None = None,
                 action_convention: str | None = None) -> dict:
    """Roll out one episode per seed in ``spec``. Returns ``{"episodes": [...], "frames": {seed: (T,H,W,3)},
    "env_steps": int, "policy_calls": int, "policy_s": float, "wall_s": float}`` (episodes in seed order).

    ``sync_chunks``: a sub-env whose episode ends mid-chunk waits for the others' chunk boundary before starting its
    next episode, so the policy is always called once per chunk for all sub-envs (a few idle env steps are far
    cheaper than extra model calls); False starts it at once. ``tracked_info``: per-step ``info`` keys recorded per
    episode as ``initial_<k>`` (at reset), ``max_<k>`` and ``final_<k>`` (over the steps; the EnvSpec's metrics).
    ``key_map``: {policy key: env key} for observations the env names differently (the EnvSpec's
    ``key_aliases``); ``action_convention``: the policy's, converted to the env's
    (:func:`videoaction.envs.action_conventions.chunk_converter`) before stepping.
    """
    from tqdm.auto import tqdm

    env_fn = env_fn or _default_env_fn
    env_kwargs = dict(env_kwargs or {})
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise VideoActionError("no seeds to evaluate")
    n_envs = max(1, min(int(n_envs), len(seeds)))
    t0 = time.perf_counter()
    venv = _make_vector_env(spec, n_envs, seeds[0], env_fn, env_kwargs, vector)
    try:
        adapter.bind(venv.single_action_space)
        convert = _action_converter(venv, spec, action_convention)
        language = _env_language(venv)  # instruction per slot (language-conditioned envs) or None
        queue = deque(enumerate(seeds))  # (episode index, seed)
        pending = [queue.popleft() for _ in range(n_envs)]
        obs, info = venv.reset(seed=[s for _, s in pending])
        slot_ep: list[int | None] = [e for e, _ in pending]  # episode index per slot (None = idle)
        slot_seed = [s for _, s in pending]
        stats: list[dict | None] = [None] * n_envs
        histories: list[ObservationHistory | None] = [None] * n_envs
        actions_q: list[deque] = [deque() for _ in range(n_envs)]
        frames: dict[int, list[np.ndarray]] = {}
        results: dict[int, dict] = {}
        last_action = np.zeros((n_envs, *venv.single_action_space.shape), np.float32)
        env_steps, policy_calls, policy_s = 0, 0, 0.0
        T = adapter.n_obs_steps
        history_action_dim = (int(np.prod(venv.single_action_space.shape)) if adapter.wants_history_action
                              else None)
        policy_history = convert is not None and history_action_dim is not None  # in the policy's convention
        if policy_history:
            history_action_dim = int(adapter.spec["history_action"][-1])
        last_hist = np.zeros((n_envs, history_action_dim or 1), np.float32)
        pbar = tqdm(total=len(seeds), desc=f"eval {spec}", unit="ep", disable=not progress, leave=False)

        def start(i: int, obs_i: dict, info_i: dict) -> None:
            if isinstance(info_i.get("language"), str):
                language[i] = info_i["language"]
            histories[i] = ObservationHistory(T, action_dim=history_action_dim)
            histories[i].reset(obs_i)
            actions_q[i].clear()
            stats[i] = {"seed": slot_seed[i], "task": spec, "success": False, "steps": 0, "sum_reward": 0.0,
                        "max_reward": -np.inf}
            # max / final values count the steps only (DP's score is the max of per-step rewards): a start that
            # happens to overlap the goal must not score by itself
            for key in tracked_info:
                v = info_i.get(key)
                stats[i].update({f"initial_{key}": float(v) if v is not None else None, f"max_{key}": None,
                                 f"final_{key}": None})
            if slot_ep[i] is not None and slot_ep[i] < record_video:
                frames[slot_ep[i]] = [np.asarray(obs_i["image"]).copy()] if "image" in obs_i else []

        def slot_obs(o, i):
            return {k: v[i] for k, v in o.items()}

        def slot_info(inf, i):
            return {k: _info_at(inf, k, i) for k in ("is_success", "success", "language", *tracked_info)
                    if _info_at(inf, k, i) is not None}

        for i in range(n_envs):
            start(i, slot_obs(obs, i), slot_info(info, i))

        while True:
            active = [i for i in range(n_envs) if slot_ep[i] is not None]
            need = [i for i in active if not actions_q[i]]
            idle = [i for i in range(n_envs) if slot_ep[i] is None]
            if queue and idle and len(need) == len(active):  # chunk boundary: start waiting slots' episodes
                mask, new_seeds = np.zeros(n_envs, dtype=bool), [None] * n_envs
                for i in idle[: len(queue)]:
                    slot_ep[i], slot_seed[i] = queue.popleft()
                    mask[i], new_seeds[i] = True, slot_seed[i]
                obs_r, info_r = venv.reset(seed=new_seeds, options={"reset_mask": mask})
                for i in np.nonzero(mask)[0]:
                    start(int(i), slot_obs(obs_r, i), slot_info(info_r, i))
                    need.append(int(i))
            if not need and not active:
                break
            if need:
                stacked = [histories[i].stacked() for i in need]
                batch = {k: np.stack([s[k] for s in stacked]) for k in stacked[0]}
                for policy_key, env_key in (key_map or {}).items():
                    if env_key in batch:
                        batch[policy_key] = batch[env_key]
                if all(language[i] is not None for i in need):
                    batch["language"] = [language[i] for i in need]
                tp = time.perf_counter()
                chunk = raw = adapter.act(batch)  # (len(need), Ta, A)
                policy_s += time.perf_counter() - tp
                policy_calls += 1
                if convert is not None:  # the policy's action convention -> the env's, at the chunk start
                    chunk = convert(chunk, {k: v[:, -1] for k, v in batch.items() if isinstance(v, np.ndarray)})
                if chunk.shape[0] != len(need):
                    raise VideoActionError(f"policy returned {chunk.shape[0]} action chunks for {len(need)} "
                                           "observations")
                for j, i in enumerate(need):  # (env action, the same action as the policy predicted it)
                    actions_q[i].extend(zip(chunk[j], raw[j]))
            act, hist = last_action.copy(), last_hist.copy()
            for i in range(n_envs):
                if slot_ep[i] is not None:
                    a_env, a_policy = actions_q[i].popleft()
                    act[i] = a_env
                    if policy_history:
                        hist[i] = a_policy
            last_action, last_hist = act, hist
            obs, reward, terminated, truncated, info = venv.step(act)
            env_steps += n_envs
            reset_mask = np.zeros(n_envs, dtype=bool)
            reset_seeds: list[int | None] = [None] * n_envs
            for i in range(n_envs):
                o_i = slot_obs(obs, i)
                if slot_ep[i] is None:  # idle slot: keep it valid (unseeded reset), ignore its results
                    if terminated[i] or truncated[i]:
                        reset_mask[i] = True
                    continue
                st = stats[i]
                inf = slot_info(info, i)
                st["steps"] += 1
                st["sum_reward"] += float(reward[i])
                st["max_reward"] = max(st["max_reward"], float(reward[i]))
                ok = bool(inf.get("is_success", inf.get("success", False)))
                st["success"] = st["success"] or ok
                for key in tracked_info:
                    if key in inf:
                        c, mk = float(inf[key]), f"max_{key}"
                        st[f"final_{key}"] = c
                        st[mk] = c if st[mk] is None else max(st[mk], c)
                histories[i].append(o_i, hist[i] if policy_history else act[i])
                if slot_ep[i] in frames and "image" in o_i:
                    frames[slot_ep[i]].append(np.asarray(o_i["image"]).copy())
                if terminated[i] or truncated[i] or st["steps"] >= max_steps or (stop_on_success and ok):
                    results[slot_ep[i]] = st
                    pbar.update(1)
                    if queue and not sync_chunks:  # start the next episode right away
                        slot_ep[i], slot_seed[i] = queue.popleft()
                    else:  # wait (reset to stay valid, unseeded: no episode runs) for a chunk boundary or the end
                        slot_ep[i] = None
                    reset_mask[i] = True
                    reset_seeds[i] = slot_seed[i] if slot_ep[i] is not None else None
            if reset_mask.any():
                obs_r, info_r = venv.reset(seed=reset_seeds, options={"reset_mask": reset_mask})
                for i in np.nonzero(reset_mask)[0]:
                    if slot_ep[i] is not None:
                        start(i, slot_obs(obs_r, i), slot_info(info_r, i))
        pbar.close()
    finally:
        venv.close()
    episodes = [results[e] for e in range(len(seeds))]
    return {"episodes": episodes, "frames": {seeds[e]: np.stack(f) for e, f in frames.items() if f},
            "env_steps_active": int(sum(e["steps"] for e in episodes)), "env_steps": env_steps,
            "policy_calls": policy_calls, "policy_s": policy_s, "wall_s": time.perf_counter() - t0,
            "action_conversion": getattr(convert, "description", None)}


def _action_converter(venv, spec: str, policy_convention: str | None):
    """The chunk converter from the policy's action convention to the env's (the env instance's
    ``action_convention`` attribute, else its EnvSpec's), or None."""
    from videoaction.envs.action_conventions import chunk_converter
    from videoaction.envs.spec import get_env_spec

    if policy_convention is None:  # nothing to convert (also for envs built by a custom env_fn, not registered)
        return None
    env_spec = get_env_spec(spec)
    env_convention = env_spec.action_convention
    envs = getattr(venv, "envs", None)  # in-process envs: read the attribute where it exists
    if envs:
        env_convention = getattr(envs[0].unwrapped, "action_convention", None) or env_convention
    elif env_convention:  # subprocess envs: a spec that declares a convention has instances that carry it
        env_convention = venv.get_attr("action_convention")[0] or env_convention
    return chunk_converter(policy_convention, env_convention, env_spec.ee_pose)


# ------------------------------------------------------------------------------------------------ public entry
def evaluate_policy(policy: Any, env_spec: str, seeds: Sequence[int] | None = None, n_envs: int = 8,
                    max_steps: int | None = None, out_dir=None, record_video: int = 0, n_episodes: int = 10,
                    seed: int | None = None,
                    env_fn: Callable | None = None, env_kwargs: dict | None = None, vector: str = "sync",
                    sync_chunks: bool = True,
                    stop_on_success: bool = True, progress: bool = True, torch_seed: int = 0,
                    video_fps: int = 10, video_upscale: int = 1, predict_kwargs: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None, results_file: str = "results.json",
                    privileged_state: bool | None = None, action_convention: str | None = None) -> dict:
    """Evaluate ``policy`` (a videoaction Policy, a checkpoint directory, or a callable ``obs -> (B, Ta, A)``;
    callables with ``n_obs_steps == 1`` get unstacked ``(B, ...)`` observations) in ``env_spec``.

    ``env_spec``: any registered environment's spec string (``pusht``, ``pusht-m``, a PushT robustness variant,
    ``metaworld:<task>[,<task>...]``, ``metaworld:MT10`` / ``MT50``; multi-task specs give each task the same seed
    list). ``seeds`` default to :func:`default_seeds` (``n_episodes`` of them, from ``seed``, default the spec's
    ``seed_start``); ``max_steps`` defaults to the spec's. The first ``record_video`` episodes of each task are written
    as mp4 under ``out_dir/videos``. With ``out_dir`` the results are also written to ``out_dir/<results_file>``
    (atomically). ``privileged_state``: allow a policy to condition on state beyond the spec's standard
    observation (default: only when its preset name contains ``privileged_state``); see
    :func:`videoaction.envs.spec.check_observation_protocol`. Returns the results dict (``metrics`` = headline
    numbers; ``tasks`` = per-task metrics and per-episode records; ``observation``; ``versions``; ``seeds``;
    ``timing``). ``action_convention``: what the policy's actions mean (default: the policy's
    ``action_convention`` or its run config's ``dataset.action_convention``); chunks are converted to the
    environment's convention (:mod:`videoaction.envs.action_conventions`), and observations the environment names
    differently reach the policy under its own keys (the spec's ``key_aliases``).
    """
    from videoaction.envs.action_conventions import policy_action_convention
    from videoaction.envs.spec import check_observation_protocol, get_env_spec, observation_key_map
    from videoaction.eval.video import save_png, upscale, write_mp4
    from videoaction.utils.io import atomic_write_json

    spec = get_env_spec(env_spec)
    if seeds is None:
        seeds = spec.default_seeds(n_episodes, seed)
    seeds = [int(s) for s in seeds]
    max_steps = int(max_steps or spec.max_steps)
    if isinstance(policy, (str, Path)):  # a checkpoint (or run) directory
        from videoaction.models.base import load_policy

        policy = load_policy(policy)
    adapter = policy if isinstance(policy, PolicyAdapter) else PolicyAdapter(policy, predict_kwargs, seed=torch_seed)
    if privileged_state is None:
        privileged_state = PRIVILEGED_LABEL in str(getattr(getattr(adapter.policy, "cfg", None), "preset", "") or "")
    observation = check_observation_protocol(spec, adapter.spec, privileged=bool(privileged_state))
    key_map = observation_key_map(spec, list(adapter.spec or {}))
    if key_map:
        observation["key_map"] = key_map
    action_convention = action_convention or policy_action_convention(adapter.policy)
    conversions: set = set()
    out = Path(out_dir) if out_dir is not None else None
    torch.manual_seed(torch_seed)
    tasks: dict[str, dict] = {}
    timing = {"wall_s": 0.0, "env_steps": 0, "env_steps_active": 0, "policy_calls": 0, "policy_s": 0.0}
    ms = spec.metrics
    for task in expand_env_spec(env_spec):
        run = run_episodes(adapter, task, seeds, n_envs, max_steps, record_video=record_video, env_fn=env_fn,
                           env_kwargs=env_kwargs, vector=vector, stop_on_success=stop_on_success, progress=progress,
                           sync_chunks=sync_chunks, tracked_info=ms.tracked_info, key_map=key_map,
                           action_convention=action_convention)
        conversions.add(run["action_conversion"])
        for k in timing:
            timing[k] += run[k]
        for ep in run["episodes"]:
            ep["video"] = None
        if out is not None:
            for seed, fr in run["frames"].items():
                name = f"videos/{video_slug(task)}_seed{seed}.mp4"
                write_mp4(out / name, upscale(fr, video_upscale), fps=video_fps)
                save_png(out / name.replace(".mp4", ".png"), upscale(fr[-1], video_upscale))  # poster: last frame
                next(e for e in run["episodes"] if e["seed"] == seed)["video"] = name
        for ep in run["episodes"]:
            if ep["max_reward"] == -np.inf:
                ep["max_reward"] = 0.0
        tasks[task] = {"metrics": M.summarize_episodes(run["episodes"], extra=ms.summarize),
                       "episodes": run["episodes"]}
    metrics: dict[str, Any] = {
        "success_rate": float(np.mean([t["metrics"]["success_rate"] for t in tasks.values()])),
        "n_episodes": int(sum(t["metrics"]["n_episodes"] for t in tasks.values())),
    }
    if ms.headline and ms.summarize is not None:  # the env's own metrics over every task's episodes
        overall = ms.summarize([e for t in tasks.values() for e in t["episodes"]])
        metrics.update({k: overall[k] for k in ms.headline})
    if len(tasks) > 1:
        metrics["per_task_success"] = {k: t["metrics"]["success_rate"] for k, t in tasks.items()}
    timing["env_steps_per_s"] = timing["env_steps"] / max(timing["wall_s"], 1e-9)
    timing["active_env_steps_per_s"] = timing["env_steps_active"] / max(timing["wall_s"], 1e-9)
    results = {
        "env": env_spec,
        "env_family": spec.env_family,
        "policy": adapter.description,
        "metric_definitions": _metric_definitions(spec),
        "metric_labels": dict(ms.labels),
        "episode_columns": dict(ms.episode_columns),
        "metrics": metrics,
        "tasks": tasks,
        "seeds": seeds,
        "observation": observation,
        "protocol": {"n_envs": min(n_envs, len(seeds)), "max_steps": max_steps, "n_obs_steps": adapter.n_obs_steps,
                     "n_action_steps": adapter.n_action_steps, "stop_on_success": stop_on_success,
                     "vector": vector, "sync_chunks": sync_chunks, "torch_seed": torch_seed,
                     "env_kwargs": dict(env_kwargs or {}), "render_backend": spec.render_backend,
                     "predict_kwargs": dict(adapter.predict_kwargs), "action_convention": action_convention,
                     "action_conversion": sorted(c for c in conversions if c) or None},
        "versions": package_versions((*VERSION_PACKAGES, *spec.packages)),
        "timing": timing,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if extra:
        results.update(dict(extra))
    if out is not None:
        atomic_write_json(out / results_file, results)
    return results


def video_slug(task: str) -> str:
    """A task spec string as one file name: ``libero:libero_10/0`` -> ``libero_libero_10_0`` (no sub-folders)."""
    return "".join("_" if c in ":,/\\" else c for c in task)


def _metric_definitions(spec) -> dict[str, str]:
    d = {"success_rate": "fraction of episodes with success (info is_success) at any step (LeRobot pc_success/100)"}
    d.update(spec.metrics.definitions)
    return d


__all__ = ["PolicyAdapter", "default_seeds", "evaluate_policy", "expand_env_spec", "package_versions", "run_episodes"]
