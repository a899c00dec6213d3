"""``videoaction eval`` environment options: ``--env`` help from the registry, repeatable ``--env-kwarg KEY=VALUE``
reaching the environment's constructor, and video file names that stay in ``videos/`` for task strings with '/'."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from videoaction.envs.spec import EnvSpec, ObservationProtocol, register_env, unregister_env
from videoaction.errors import VideoActionError
from videoaction.eval.cli import build_parser, main, parse_env_kwargs

BUILT: list[dict] = []


class KwargEnv(gym.Env):
    def __init__(self, image_size: int = 8, **options):
        self.size = image_size
        self.observation_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (image_size, image_size, 3),
                                                                          np.uint8)})
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return {"image": np.full((self.size, self.size, 3), 9, np.uint8)}, {}

    def step(self, action):
        return {"image": np.full((self.size, self.size, 3), 90, np.uint8)}, 0.0, False, False, {"is_success": False}


def _build(variant, **kw):
    BUILT.append({"variant": variant, **kw})
    return KwargEnv(**kw)


@pytest.fixture()
def kwtoy():
    BUILT.clear()
    register_env(EnvSpec(name="kwtoy", gym_id="videoaction-test/KwToy-v0", build=_build, variant_hint="<suite>/<id>",
                         observation=ObservationProtocol(image_keys=("image",), state_key=None),
                         max_steps=3, seed_start=0, render_backend="numpy", packages=("pytest",)))
    yield
    unregister_env("kwtoy")


def test_env_help_lists_the_registry(kwtoy):
    text = " ".join(build_parser().format_help().split())
    for name in ("kwtoy:<suite>/<id>", "pusht-m", "libero:libero_10", "robomimic:tool_hang", "--env-kwarg"):
        assert name in text
    args = build_parser().parse_args(["--env", "kwtoy:a/0", "--action-convention", "abs_rot6d10", "--out", "x"])
    assert args.action_convention == "abs_rot6d10"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--env", "kwtoy:a/0", "--action-convention", "quat8", "--out", "x"])


def test_env_kwargs_parse_json_values_or_text():
    assert parse_env_kwargs(["abs_action=true", "flip=vertical", "hard_reset=False", "image_size=128",
                             "scale=0.5"]) == {"abs_action": True, "flip": "vertical", "hard_reset": False,
                                               "image_size": 128, "scale": 0.5}
    for bad in ("abs_action", "=1", "not a key=1"):
        with pytest.raises(VideoActionError, match="KEY=VALUE"):
            parse_env_kwargs([bad])


def test_env_kwargs_reach_the_env_and_videos_stay_flat(kwtoy, tmp_path):
    main(["--policy", "random", "--env", "kwtoy:libero_10/0", "--env-kwarg", "flip=vertical", "--env-kwarg",
          "hard_reset=false", "--image-size", "16", "--episodes", "1", "--n-envs", "1", "--max-steps", "2",
          "--record", "1", "--out", str(tmp_path), "--no-report", "--quiet"])
    assert BUILT and all(b == {"variant": "libero_10/0", "flip": "vertical", "hard_reset": False,
                               "image_size": 16} for b in BUILT)
    videos = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "videos").rglob("*.mp4"))
    assert videos == ["videos/kwtoy_libero_10_0_seed0.mp4"]
