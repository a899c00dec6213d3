"""Several cameras per observation: store -> dataset -> DP-C / UVA training -> rollout runner -> server.

A two-camera store (``img`` main camera, ``wrist_image`` second camera) is made here; the second camera's frames
carry information the first lacks, and each model's output must change when only camera 2 changes.
"""

from __future__ import annotations

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from videoaction.benchmarks.serve_load import random_observation
from videoaction.config import DatasetConfig, FrameConfig, camera_keys, get_preset, parse_overrides
from videoaction.data.dataset import SequenceDataset
from videoaction.data.store import EpisodeStore
from videoaction.envs.spec import EnvSpec, ObservationProtocol, register_env, unregister_env
from videoaction.errors import ConfigError, VideoActionError
from videoaction.models.base import load_policy
from videoaction.models.dp.config import DPConfig, dp_tiny
from videoaction.models.dp.policy import DiffusionPolicy
from videoaction.serve.client import PolicyClient, ServerError
from videoaction.serve.server import ServeConfig, ServerThread
from videoaction.train.synthetic import TINY_DP, TINY_UVA, tiny_tokenizer
from videoaction.train.trainer import TrainOptions, train

torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "osmesa")  # before anything imports mujoco (its GL backend is fixed at import)

CAMS = ["--dataset.image-keys", "img", "wrist_image"]
QUIET = TrainOptions(progress=False, log=lambda m: None, val_batches=0)


def _episode(length: int, seed: int, size: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    main = np.zeros((length, size, size, 3), np.uint8)
    wrist = np.zeros((length, size, size, 3), np.uint8)
    pos = rng.integers(4, size - 4, (length, 2))
    for t, (x, y) in enumerate(pos):
        main[t, 2:6, 2:6] = 200  # the main camera sees nothing that moves
        wrist[t, y - 3: y + 3, x - 3: x + 3] = 255  # the wrist camera sees the target
    action = (pos / size * 2 - 1).astype(np.float32)
    state = np.stack([np.arange(length), -np.arange(length)], 1).astype(np.float32)
    return {"img": main, "wrist_image": wrist, "state": state, "action": action}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multicam")
    store = EpisodeStore.create(root / "two_cams.zarr")
    for i in range(3):
        store.add_episode(_episode(24, i))
    return root, store.path, tiny_tokenizer(store.path, root / "tok")


def _other_wrist(obs: dict) -> dict:
    changed = dict(obs)
    changed["wrist_image"] = torch.flip(obs["wrist_image"], dims=[-2])  # only camera 2 changes
    return changed


def _predict(policy, obs, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return policy.predict_action(obs, generator=torch.Generator().manual_seed(seed))["action_pred"]


def _uva_features(policy, obs, seed: int = 0) -> torch.Tensor:
    """What UVA's action head reads: the decoder tokens of one policy pass (B, n_future * L, width). The heads
    start at zero output (MAR init), so after a few steps the sampled actions barely move; these features do."""
    with torch.no_grad():
        return policy.model(None, policy.condition(obs)["history"], batch_size=obs["image"].shape[0])


def _check_second_camera_matters(policy, store_path, output=_predict) -> None:
    spec = policy.observation_spec()
    assert list(spec)[:2] == ["image", "wrist_image"]
    ep = EpisodeStore.open(store_path).get_episode(0, ["img", "wrist_image", "state"])
    t = spec["image"].shape[0]
    obs = {"image": torch.from_numpy(ep["img"][None, :t]), "wrist_image": torch.from_numpy(ep["wrist_image"][None, :t])}
    if "state" in spec:
        obs["state"] = torch.from_numpy(ep["state"][None, :t, : spec["state"].shape[-1]])
    a = output(policy, obs)
    torch.testing.assert_close(a, output(policy, obs))  # deterministic for a fixed generator
    assert (a - output(policy, _other_wrist(obs))).abs().max() > 1e-3
    with pytest.raises(VideoActionError, match="wrist_image"):
        policy.predict_action({k: v for k, v in obs.items() if k != "wrist_image"})


def _ds(**kw) -> DatasetConfig:
    return DatasetConfig(horizon=8, pad_before=1, pad_after=3, image_size=16, val_ratio=0.0,
                         frames=FrameConfig(n_history=2, n_future=1, offset=0, stride=1), **kw)


def test_dataset_yields_one_key_per_camera(data):
    _, store, _ = data
    cfg = _ds(image_keys=("img", "wrist_image"))
    assert camera_keys(cfg) == ("image", "wrist_image")
    item = SequenceDataset(store, cfg, split="all", augment=False)[3]
    n = cfg.frames.n_history + cfg.frames.n_future
    assert item["image"].shape == item["wrist_image"].shape == (n, 3, 16, 16)
    assert not torch.equal(item["image"], item["wrist_image"])
    single = SequenceDataset(store, _ds(), split="all", augment=False)[3]
    assert "wrist_image" not in single and torch.equal(single["image"], item["image"])  # main camera unchanged
    with pytest.raises(ConfigError, match="camera_names"):
        camera_keys(DatasetConfig(image_keys=("img", "wrist_image"), camera_names=("image",)))
    with pytest.raises(VideoActionError, match="missing_cam"):
        SequenceDataset(store, _ds(image_keys=("img", "missing_cam")), split="all")


def test_dp_trains_on_two_cameras_and_uses_the_second(data):
    root, store, _ = data
    cfg = parse_overrides(get_preset("dp-tiny"), ["--data", str(store), "--out", str(root / "dp"), "--steps", "3",
                                                  "--optim.batch-size", "4", *TINY_DP, *CAMS,
                                                  "--dataset.image-size", "64"])  # 32 px: a 1x1 keypoint map
    result = train(cfg, QUIET)
    assert np.isfinite(result.losses).all()
    policy = load_policy(root / "dp").eval()
    names = [k for k, _ in policy.named_parameters()]
    assert any(k.startswith("camera_encoders.0.") for k in names)  # one encoder per camera (DP's default)
    assert policy.global_cond_dim == 2 * (2 * 16 + 2)
    _check_second_camera_matters(policy, store)


def test_dp_shared_encoder_has_single_camera_parameters():
    one = dp_tiny()
    one.model = DPConfig(backbone_width=8, num_keypoints=8, image_feature_dim=16, down_dims=(16, 32),
                         step_embed_dim=16, obs_image_size=32)
    shared = parse_overrides(one, ["--dataset.image-keys", "img", "wrist_image", "--model.share-rgb-model"])
    p1, p2 = DiffusionPolicy(one), DiffusionPolicy(shared)
    assert not any(k.startswith("camera_encoders") for k in p1.state_dict())
    enc = {k: v.shape for k, v in p1.state_dict().items() if k.startswith("obs_encoder.")}
    assert enc == {k: v.shape for k, v in p2.state_dict().items() if k.startswith("obs_encoder.")}
    assert not any(k.startswith("camera_encoders") for k in p2.state_dict())


def test_single_camera_checkpoint_without_the_new_fields_loads(data, tmp_path):
    one = dp_tiny()
    one.model = DPConfig(backbone_width=8, num_keypoints=8, image_feature_dim=16, down_dims=(16, 32),
                         step_embed_dim=16, obs_image_size=32)
    policy = DiffusionPolicy(one).eval()
    policy.save_pretrained(tmp_path / "ckpt")
    cfg_path = next(p for p in (tmp_path / "ckpt").glob("*.json") if "image_key" in p.read_text())
    raw = json.loads(cfg_path.read_text())
    for key in ("image_keys", "camera_names"):  # a checkpoint written before several cameras existed
        raw["dataset"].pop(key)
    raw["model"].pop("share_rgb_model")
    cfg_path.write_text(json.dumps(raw))
    loaded = load_policy(tmp_path / "ckpt").eval()
    assert list(loaded.observation_spec()) == ["image", "state"]
    obs = random_observation(loaded.metadata(), np.random.default_rng(0))
    obs = {k: torch.from_numpy(v[None]) for k, v in obs.items()}
    torch.testing.assert_close(_predict(policy, obs), _predict(loaded, obs))


def test_uva_trains_on_two_cameras_and_uses_the_second(data):
    root, store, tok = data
    cfg = parse_overrides(get_preset("uva-tiny"), ["--data", str(store), "--out", str(root / "uva"), "--steps", "3",
                                                   "--model.tokenizer.path", str(tok), *TINY_UVA,
                                                   "--optim.batch-size", "2", "--optim.lr", "1e-2",
                                                   "--model.task-modes", "policy_model", *CAMS])
    result = train(cfg, QUIET)  # through the run's latent cache: one latent key per camera
    assert np.isfinite(result.losses).all()
    cache = SequenceDataset(root / "uva" / "latents.zarr", cfg.dataset, split="all")
    assert cache.use_latents and cache.frame_keys == ["latent", "latent_wrist_image"]
    assert cache[0]["latent"].shape == cache[0]["latent_wrist_image"].shape
    policy = load_policy(root / "uva").eval()
    images = SequenceDataset(store, cfg.dataset, split="all", augment=False)[0]
    with torch.no_grad():
        for cam in ("image", "wrist_image"):  # each camera's cached latents are its own frames' encoding
            want = policy.encode_frames(images[cam][None])[0]
            got = cache[0]["latent" if cam == "image" else "latent_wrist_image"]
            torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)  # float16 storage
    single = parse_overrides(get_preset("uva-tiny"), ["--model.tokenizer.path", str(tok), *TINY_UVA])
    s = policy.tokenizer.stride
    h = single.dataset.image_size // s
    assert policy.model.grid == (2 * h, h) and policy.model.seq_len == 2 * h * h
    ep = EpisodeStore.open(store).get_episode(0, ["img", "wrist_image"])
    obs = {"image": torch.from_numpy(ep["img"][None, :16]), "wrist_image": torch.from_numpy(ep["wrist_image"][None, :16])}
    hist = policy.condition(obs)["history"]  # (B, n_history, C, 2h, w): camera 0's grid above camera 1's
    torch.testing.assert_close(hist[..., :h, :], policy.encode_observed(obs["image"][:, [3, 7, 11, 15]]))
    torch.testing.assert_close(hist[..., h:, :], policy.encode_observed(obs["wrist_image"][:, [3, 7, 11, 15]]))
    _check_second_camera_matters(policy, store, _uva_features)
    assert _predict(policy, obs).shape == (1, policy.horizon, 2)


# ------------------------------------------------------------------------------------------ runner and server
class TwoCameraEnv(gym.Env):
    """Agent at x on a line; the main camera is blank, the wrist camera shows x."""

    def __init__(self, image_size: int = 32):
        self.size = image_size
        box = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict({"image": box, "wrist_image": box,
                                                  "state": gym.spaces.Box(-100, 100, (2,), np.float32)})
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def _obs(self):
        wrist = np.zeros((self.size, self.size, 3), np.uint8)
        wrist[:, int(np.clip(self.x, 0, self.size - 1))] = 255
        return {"image": np.full((self.size, self.size, 3), 40, np.uint8), "wrist_image": wrist,
                "state": np.array([self.x, 0.0], np.float32)}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.integers(0, self.size))
        return self._obs(), {}

    def step(self, action):
        self.x += float(np.clip(np.asarray(action).reshape(-1)[0], -1, 1))
        return self._obs(), 0.0, False, False, {"is_success": False}


TWO_CAMS = EnvSpec(name="twocams", gym_id="videoaction-test/TwoCams-v0", build=lambda variant, **kw: TwoCameraEnv(**kw),
                   observation=ObservationProtocol(image_keys=("image", "wrist_image"), state_key="state",
                                                   proprio_dims=2, privileged_state_dims=2),
                   max_steps=10, seed_start=0, render_backend="numpy", packages=("pytest",))


def test_two_camera_policy_runs_in_an_env_and_through_the_server():
    cfg = parse_overrides(dp_tiny(), CAMS)
    cfg.model = DPConfig(backbone_width=8, num_keypoints=8, image_feature_dim=16, down_dims=(16, 32),
                         step_embed_dim=16, obs_image_size=32, num_train_steps=4)
    policy = DiffusionPolicy(cfg).eval()
    register_env(TWO_CAMS)
    try:
        res = evaluate_policy_quietly(policy)
    finally:
        unregister_env("twocams")
    assert res["observation"]["keys"][:2] == ["image", "wrist_image"]
    assert sum(len(t["episodes"]) for t in res["tasks"].values()) == 2

    with ServerThread(policy, ServeConfig(port=0, warmup=False)) as srv, PolicyClient("127.0.0.1", srv.port) as cl:
        assert sorted(cl.metadata["observation"]) == ["image", "state", "wrist_image"]
        obs = random_observation(cl.metadata, np.random.default_rng(0))
        assert cl.infer(obs)["actions"].shape == (8, 2)
        with pytest.raises(ServerError, match="wrist_image"):
            cl.infer({k: v for k, v in obs.items() if k != "wrist_image"})


def evaluate_policy_quietly(policy) -> dict:
    from videoaction.eval.runner import evaluate_policy

    return evaluate_policy(policy, "twocams", seeds=[0, 1], n_envs=2, max_steps=10, progress=False)


# ------------------------------------------------------------------------------------------ Metaworld second camera
def test_metaworld_renders_and_records_a_wrist_camera(tmp_path):
    pytest.importorskip("metaworld")
    from videoaction.demos.generate import close_cached_envs, generate, jobs_for
    from videoaction.envs.spec import make_env

    env = make_env("metaworld:reach", seed=0, image_size=24, max_steps=5, wrist_camera="gripperPOV")
    try:
        obs, _ = env.reset(seed=0)
        assert obs["image"].shape == obs["wrist_image"].shape == (24, 24, 3)
        assert not np.array_equal(obs["image"], obs["wrist_image"])  # another viewpoint
        assert "wrist_image" in env.observation_space.spaces
    finally:
        env.close()
    plain = make_env("metaworld:reach", seed=0, image_size=24, max_steps=5)
    try:
        assert "wrist_image" not in plain.reset(seed=0)[0]  # only when asked
    finally:
        plain.close()
    with pytest.raises(VideoActionError, match="no camera 'nope'"):
        make_env("metaworld:reach", image_size=24, wrist_camera="nope")

    out = tmp_path / "mw.zarr"
    try:
        generate(jobs_for("metaworld", 1, 0, ["reach"], image_size=24, max_steps=6, wrist_camera="gripperPOV"),
                 out, keep_failed=True, progress=False)
    finally:
        close_cached_envs()
    store = EpisodeStore.open(out)
    ep = store.get_episode(0, ["img", "wrist_image"])
    assert ep["wrist_image"].shape == ep["img"].shape and ep["wrist_image"].dtype == np.uint8


def test_encode_cli_writes_one_latent_key_per_camera(data, tmp_path):
    from videoaction.train.encode import main

    _, store, tok = data
    out = tmp_path / "lat.zarr"
    assert main(["--data", str(store), "--out", str(out), "--tokenizer", str(tok), "--image-size", "32",
                 "--image-keys", "img", "wrist_image", "--no-progress", "--device", "cpu"]) == 0
    lat = EpisodeStore.open(out)
    assert {"latent", "latent_wrist_image", "action", "state"} <= set(lat.keys) and "img" not in lat.keys
    assert not np.array_equal(lat.get_episode(0, ["latent"])["latent"],
                              lat.get_episode(0, ["latent_wrist_image"])["latent_wrist_image"])
