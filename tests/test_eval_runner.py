"""Simulator evaluation through ``videoaction.envs.make_env``: a few short episodes per environment."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "osmesa")

pytest.importorskip("gym_pusht")
envs = pytest.importorskip("videoaction.envs")
if not hasattr(envs, "make_env"):
    pytest.skip("videoaction.envs.make_env is not available", allow_module_level=True)

from videoaction.eval import metrics as M  # noqa: E402
from videoaction.eval.baselines import MeanActionPolicy, RandomPolicy  # noqa: E402
from videoaction.eval.runner import evaluate_policy  # noqa: E402
from videoaction.eval.video import read_mp4  # noqa: E402


class TowardBlock:
    """A deterministic function of the observation (so results cannot depend on batching): push toward the block,
    with a history of 3 and chunks of 4; records every history it is given."""

    n_obs_steps, n_action_steps = 3, 4

    def __init__(self):
        self.calls = []

    def __call__(self, obs):
        st = obs["state"]  # (B, 3, D)
        self.calls.append({k: np.array(v) for k, v in obs.items()})
        agent, block = st[:, -1, :2], st[:, -1, 2:4]
        steps = np.linspace(0.25, 1.0, self.n_action_steps)[None, :, None]
        return (agent[:, None] + steps * (block - agent)[:, None]).astype(np.float32)  # (B, 4, 2)


def test_random_policy_pusht(tmp_path):
    seeds = [100000, 100001, 100002]
    res = evaluate_policy(RandomPolicy(seed=0), "pusht", seeds=seeds, n_envs=2, max_steps=12, out_dir=tmp_path,
                          record_video=1, progress=False)
    eps = res["tasks"]["pusht"]["episodes"]
    assert [e["seed"] for e in eps] == seeds and res["seeds"] == seeds
    for e in eps:
        assert e["steps"] <= 12 and 0.0 <= e["max_coverage"] <= 1.0 and e["final_coverage"] <= e["max_coverage"] + 1e-12
        assert e["success"] == (e["max_coverage"] > 0.95)
    m = res["metrics"]
    assert m["dp_score"] == pytest.approx(np.mean([min(e["max_coverage"] / 0.95, 1.0) for e in eps]))
    assert m["success_rate"] == pytest.approx(np.mean([e["success"] for e in eps]))
    assert res["versions"]["gym-pusht"] == "0.1.8" and res["versions"]["torch"]
    assert res["timing"]["env_steps"] >= sum(e["steps"] for e in eps) and res["timing"]["env_steps_per_s"] > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"] == pytest.approx(m) and saved["seeds"] == seeds
    assert eps[0]["video"] and eps[1]["video"] is None
    assert (tmp_path / eps[0]["video"].replace(".mp4", ".png")).is_file()  # poster
    frames = read_mp4(tmp_path / eps[0]["video"])
    assert frames.shape[0] == eps[0]["steps"] + 1 and frames.shape[-1] == 3  # first obs + one per step


def test_history_stacking_chunks_and_batching_independence():
    seeds = [100000, 100001, 100002]
    pol3 = TowardBlock()
    r3 = evaluate_policy(pol3, "pusht", seeds=seeds, n_envs=3, max_steps=10, progress=False)
    pol2 = TowardBlock()
    r2 = evaluate_policy(pol2, "pusht", seeds=seeds, n_envs=2, max_steps=10, progress=False)
    e3, e2 = r3["tasks"]["pusht"]["episodes"], r2["tasks"]["pusht"]["episodes"]
    assert [e["max_coverage"] for e in e3] == [e["max_coverage"] for e in e2]  # same seeds -> same episodes
    assert all(e["steps"] == 10 for e in e3)
    # first call: the first observation repeated to fill the history; chunks of 4 -> calls at steps 0, 4, 8
    first = pol3.calls[0]["state"]  # (3 envs, 3, D)
    assert np.array_equal(first[:, 0], first[:, 1]) and np.array_equal(first[:, 1], first[:, 2])
    assert len(pol3.calls) == 3 and all(c["state"].shape[0] == 3 for c in pol3.calls)
    # replay seed 100000 by hand with the same actions: the history at the 2nd call = observations after steps 2, 3, 4
    env = envs.make_env("pusht", 100000)
    try:
        obs, _ = env.reset(seed=100000)
        seen = [obs["state"]]
        for call in pol3.calls[:2]:
            chunk = pol3(dict((k, v[:1]) for k, v in call.items()))[0]
            for a in chunk:
                obs, *_ = env.step(a)
                seen.append(obs["state"])
        assert np.allclose(pol3.calls[1]["state"][0], np.stack(seen[2:5]), atol=1e-5)
        assert np.allclose(pol3.calls[2]["state"][0], np.stack(seen[6:9]), atol=1e-5)
        assert pol3.calls[0]["image"].shape[1:] == (3, *obs["image"].shape)
    finally:
        env.close()


def test_pusht_m_and_mean_action(tmp_path):
    res = evaluate_policy(MeanActionPolicy([256.0, 256.0], n_action_steps=4), "pusht-m", seeds=[100000, 100001],
                          n_envs=2, max_steps=6, progress=False)
    m = res["metrics"]
    assert m["n_episodes"] == 2 and 0.0 <= m["dp_score"] <= 1.0 and "success_rate" in m
    assert res["env_family"] == "pusht"
    for variant in ("pusht-bg-color", "pusht-goal-color"):  # visual-robustness variants run through the same path
        r = evaluate_policy(RandomPolicy(seed=1), variant, seeds=[100000], n_envs=1, max_steps=3, progress=False)
        assert r["tasks"][variant]["episodes"][0]["steps"] == 3 and "dp_score" in r["metrics"]


def test_env_spec_expansion():
    from videoaction.errors import VideoActionError
    from videoaction.eval.runner import expand_env_spec

    assert expand_env_spec("pusht") == ["pusht"]
    assert expand_env_spec("metaworld:reach,drawer-open-v3") == ["metaworld:reach", "metaworld:drawer-open"]
    assert len(expand_env_spec("metaworld:MT10")) == 10 and len(expand_env_spec("metaworld:mt50")) == 50
    with pytest.raises(VideoActionError, match="unknown Metaworld task"):
        expand_env_spec("metaworld:not-a-task")


def test_metaworld_two_tasks_small_images(tmp_path):
    pytest.importorskip("metaworld")
    res = evaluate_policy(RandomPolicy(seed=0), "metaworld:reach,drawer-open", seeds=[100000], n_envs=1, max_steps=4,
                          out_dir=tmp_path, record_video=1, env_kwargs={"image_size": 32}, progress=False)
    assert set(res["tasks"]) == {"metaworld:reach", "metaworld:drawer-open"}
    m = res["metrics"]
    assert set(m["per_task_success"]) == set(res["tasks"]) and "dp_score" not in m
    assert m["success_rate"] == pytest.approx(np.mean(list(m["per_task_success"].values())))
    for t in res["tasks"].values():
        ep = t["episodes"][0]
        assert ep["steps"] <= 4 and "max_coverage" not in ep  # Metaworld tracks no coverage
        assert read_mp4(tmp_path / ep["video"]).shape[1:3] == (32, 32)
    assert res["versions"]["metaworld"] and res["versions"]["mujoco"]


class _Recorder:
    """env factory: make_env(spec) wrapped to record what the runner does to each sub-env (actions stepped,
    observations and infos returned), per seed."""

    def __init__(self):
        self.log = {}

    def __call__(self, spec, seed, **kw):
        import gymnasium as gym

        log = self.log

        class Record(gym.Wrapper):
            def reset(self, *, seed=None, options=None):
                obs, info = self.env.reset(seed=seed, options=options)
                self.rec = log[seed] = {"obs": [obs], "actions": [], "infos": [info]}
                return obs, info

            def step(self, action):
                obs, r, term, trunc, info = self.env.step(action)
                self.rec["actions"].append(np.array(action, np.float32))
                self.rec["obs"].append(obs)
                self.rec["infos"].append(info)
                return obs, r, term, trunc, info

        return Record(envs.make_env(spec, seed, **kw))


def test_model_policy_in_pusht():
    """A real (tiny, untrained) UVA policy: its history window and chunks, executed in order, and the score from
    the coverages the environment reported."""
    from tests.test_eval_video import _tiny_cfg
    from videoaction.models.uva.policy import UVAPolicy

    class RecordingUVA(UVAPolicy):
        def predict_action(self, obs, *, num_steps=None, generator=None):
            out = super().predict_action(obs, num_steps=num_steps, generator=generator)
            self.calls.append(({k: np.array(v) for k, v in obs.items()}, out["action"].numpy().copy()))
            return out

    torch.manual_seed(0)
    policy = RecordingUVA(_tiny_cfg(image_size=32, obs_size=96), allow_random_tokenizer=True).eval()
    policy.calls = []
    rec = _Recorder()
    res = evaluate_policy(policy, "pusht", seeds=[100000], n_envs=1, max_steps=6, progress=False, env_fn=rec,
                          predict_kwargs={"num_steps": 2})
    ep = res["tasks"]["pusht"]["episodes"][0]
    log = rec.log[100000]
    assert ep["steps"] == 6 and res["protocol"]["n_obs_steps"] == policy.n_obs_steps == 8
    assert res["protocol"]["n_action_steps"] == 4 and res["timing"]["policy_calls"] == len(policy.calls) == 2
    # chunks of 4 executed in order: the first call's 4 actions, then the second call's first 2
    chunks = np.concatenate([a[0] for _, a in policy.calls])
    assert np.allclose(np.stack(log["actions"]), chunks[:6], atol=1e-5)
    # the second call sees the last 8 frames: the first observation repeated to fill, then the 4 after each step
    frames = [o["image"] for o in log["obs"]]
    want = np.stack([frames[0]] * 4 + frames[1:5])
    assert np.array_equal(policy.calls[1][0]["image"][0], want)
    assert np.array_equal(policy.calls[0][0]["image"][0], np.stack([frames[0]] * 8))
    cov = [i["coverage"] for i in log["infos"][1:]]
    assert ep["max_coverage"] == pytest.approx(max(cov)) and ep["final_coverage"] == pytest.approx(cov[-1])
    assert res["metrics"]["dp_score"] == pytest.approx(min(max(cov) / 0.95, 1.0))


def test_standing_still_scores_the_coverage_the_env_reports():
    """Commanding the agent's own position (barely) moves nothing: the score is the coverage of the start, as
    replayed here step by step in fresh environments."""

    def stay(obs):
        return obs["state"][:, None, :2].astype(np.float32)  # (B, 1, 2): target = where the agent is

    seeds = [100000, 100001, 100002]
    res = evaluate_policy(stay, "pusht", seeds=seeds, n_envs=2, max_steps=5, progress=False)
    best, start = [], []
    for s in seeds:
        env = envs.make_env("pusht", s)
        try:
            obs, info = env.reset(seed=s)
            start.append(M.pusht_coverage(info["block_pose"]))
            cov = []
            for _ in range(5):
                obs, _, _, _, info = env.step(obs["state"][:2].astype(np.float32))
                cov.append(info["coverage"])
            best.append(max(cov))
        finally:
            env.close()
    eps = res["tasks"]["pusht"]["episodes"]
    assert start[0] > 0.5 and best == pytest.approx(start, abs=2e-3)  # seed 100000 starts half on the goal
    assert [e["max_coverage"] for e in eps] == pytest.approx(best, abs=1e-9)
    assert all(e["steps"] == 5 and not e["success"] for e in eps)
    assert res["metrics"]["dp_score"] == pytest.approx(np.mean([min(c / 0.95, 1.0) for c in best]), abs=1e-9)


def test_dp_policy_in_pusht_gets_sliced_state():
    """Diffusion Policy (history 2, proprio = first 2 state dims of the env's 5) through the same adapter."""
    import torch

    from videoaction.models.dp.config import dp_tiny
    from videoaction.models.dp.policy import DiffusionPolicy

    torch.manual_seed(0)
    policy = DiffusionPolicy(dp_tiny()).eval()
    assert policy.observation_spec()["state"].shape == (2, 2)
    res = evaluate_policy(policy, "pusht", seeds=[100000, 100001], n_envs=2, max_steps=10, progress=False,
                          predict_kwargs={"sampler": "ddim", "num_steps": 2})
    assert res["protocol"]["n_obs_steps"] == 2 and res["timing"]["policy_calls"] == 2  # chunks of 8: steps 0, 8
    assert all(e["steps"] == 10 for e in res["tasks"]["pusht"]["episodes"])


def test_eval_cli_checkpoint_and_report(tmp_path):
    from tests.test_eval_video import _store, _tiny_uva

    from videoaction.eval.cli import main

    policy = _tiny_uva(image_size=32, obs_size=96)
    policy.save_pretrained(tmp_path / "ckpt")
    data = _store(tmp_path / "demo.zarr")
    out = tmp_path / "eval"
    code = main(["--checkpoint", str(tmp_path / "ckpt"), "--env", "pusht", "--episodes", "1", "--max-steps", "4",
                 "--n-envs", "1", "--record", "1", "--sampler", "ddpm:2", "--video", "--data", str(data),
                 "--baselines", "--out", str(out), "--quiet"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["checkpoint"] == str(tmp_path / "ckpt") and res["protocol"]["predict_kwargs"] == {
        "sampler": "ddpm", "num_steps": 2}
    assert (out / "video_results.json").is_file()
    html = (out / "report.html").read_text()
    assert "<video" in html and "video_grids/" in html and "Config" in html
    assert ">random<" in html and ">mean-action<" in html  # baseline rows in the headline table
    assert (out / "baselines" / "mean-action" / "results.json").is_file()


def test_known_coverage_state_through_make_env():
    """Block placed exactly on the goal through the env -> coverage ~ 1 and success; far away -> 0."""
    env = envs.make_env("pusht", 0)
    try:
        env.reset(seed=0, options={"reset_to_state": [60.0, 60.0, 256.0, 256.0, np.pi / 4]})
        _, _, _, _, info = env.step(np.array([60.0, 60.0], np.float32))
        off = np.asarray(info["block_pose"][:2]) - 256.0  # the legacy setter rotates about the centre of mass
        env.reset(seed=0, options={"reset_to_state": [60.0, 60.0, 256.0 - off[0], 256.0 - off[1], np.pi / 4]})
        _, _, _, _, info = env.step(np.array([60.0, 60.0], np.float32))
        assert info["coverage"] == pytest.approx(1.0, abs=1e-3) and info["is_success"]
        env.reset(seed=0, options={"reset_to_state": [400.0, 400.0, 120.0, 120.0, 0.0]})
        _, _, _, _, info = env.step(np.array([400.0, 400.0], np.float32))
        assert info["coverage"] == 0.0 and not info["is_success"]
        assert M.pusht_coverage(info["block_pose"]) == 0.0
    finally:
        env.close()


def test_async_vector_env_matches_sync():
    seeds = [100000, 100001, 100002]
    sync = evaluate_policy(TowardBlock(), "pusht", seeds=seeds, n_envs=2, max_steps=6, progress=False)
    asyn = evaluate_policy(TowardBlock(), "pusht", seeds=seeds, n_envs=2, max_steps=6, vector="async", progress=False)
    key = [(e["seed"], e["steps"], e["max_coverage"]) for e in sync["tasks"]["pusht"]["episodes"]]
    assert key == [(e["seed"], e["steps"], e["max_coverage"]) for e in asyn["tasks"]["pusht"]["episodes"]]


class _SeedLimit:
    """env factory: make_env('pusht') whose episodes are truncated after 3 + seed % 4 steps (staggered ends)."""

    def __call__(self, spec, seed, **kw):
        import gymnasium as gym

        class Limit(gym.Wrapper):
            def reset(self, *, seed=None, options=None):
                self.left = 3 + (seed or 0) % 4
                return self.env.reset(seed=seed, options=options)

            def step(self, action):
                obs, r, term, trunc, info = self.env.step(action)
                self.left -= 1
                return obs, r, term, trunc or self.left <= 0, info

        return Limit(envs.make_env(spec, seed, **kw))


def test_staggered_episode_ends_share_policy_calls():
    seeds = [100000, 100001, 100002, 100003, 100004]  # limits 3, 4, 5, 6, 3 steps
    runs = {}
    for sync in (True, False):
        pol = TowardBlock()
        runs[sync] = (evaluate_policy(pol, "pusht", seeds=seeds, n_envs=3, max_steps=50, env_fn=_SeedLimit(),
                                      sync_chunks=sync, progress=False), pol)
    for sync, (res, _) in runs.items():
        assert [e["steps"] for e in res["tasks"]["pusht"]["episodes"]] == [3 + s % 4 for s in seeds]
    same = [[(e["seed"], e["max_coverage"]) for e in r["tasks"]["pusht"]["episodes"]] for r, _ in runs.values()]
    assert same[0] == same[1]  # identical episodes either way
    # synchronised: one call per chunk boundary for all running sub-envs -> fewer, larger calls
    assert len(runs[True][1].calls) < len(runs[False][1].calls)
    assert runs[True][0]["timing"]["policy_calls"] == len(runs[True][1].calls)
