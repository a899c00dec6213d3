"""ToolHang (robosuite 1.5) spec: protocol, missing-extra errors, and, where the 'robosuite' extra is installed, a
few random-policy steps through the evaluation runner, the absolute-action convention and seeded resets."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys

import numpy as np
import pytest

from videoaction.envs import get_env_spec, make_env
from videoaction.envs.robosuite_tasks import SimulatorMissingError, action_box, flip_image
from videoaction.errors import VideoActionError


def _robosuite_major_minor() -> tuple[int, int] | None:
    if importlib.util.find_spec("robosuite") is None:
        return None
    return tuple(int(x) for x in importlib.metadata.version("robosuite").split(".")[:2])


HAS_TOOLHANG = (_robosuite_major_minor() or (0, 0)) >= (1, 5)
needs_robosuite = pytest.mark.skipif(not HAS_TOOLHANG, reason="the 'robosuite' extra (robosuite 1.5) is not "
                                     "installed (bash scripts/setup.sh --robosuite)")


def test_spec_describes_dp_protocol():
    spec = get_env_spec("robomimic:tool_hang")
    assert spec.max_steps == 700 and spec.seed_start == 100_000  # DP's ToolHang max_steps and test seeds
    assert spec.observation.image_keys == ("image", "wrist_image") and spec.observation.proprio_dims == 9
    assert "absolute" in spec.metrics.definitions["action_convention"]
    with pytest.raises(VideoActionError, match="tool_hang"):
        make_env("robomimic:square")


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "robosuite", None)
    with pytest.raises(SimulatorMissingError, match=r"setup\.sh --robosuite.*--no-deps robosuite==1\.5\.2"):
        make_env("robomimic:tool_hang")


def test_action_spaces_and_flips():
    assert action_box(False, (0.8, 1.4)).shape == (7,) and action_box(False, (0.8, 1.4)).high.max() == 1
    box = action_box(True, (0.8, 1.4))
    assert np.isfinite(box.low).all() and box.low[2] == pytest.approx(0.8) and box.high[3] == pytest.approx(np.pi)
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(flip_image(img, "vertical"), img[::-1])
    np.testing.assert_array_equal(flip_image(img, "rotate180"), img[::-1, ::-1])
    np.testing.assert_array_equal(flip_image(img, "none"), img)
    with pytest.raises(VideoActionError, match="rotate180"):
        flip_image(img, "mirror")


@needs_robosuite
def test_tool_hang_steps_with_a_random_policy():
    from videoaction.eval.baselines import RandomPolicy
    from videoaction.eval.runner import evaluate_policy

    seen = []

    class Recording(RandomPolicy):
        def __call__(self, obs):
            seen.append({k: np.asarray(v) for k, v in obs.items() if k != "language"})
            return super().__call__(obs)

    res = evaluate_policy(Recording(n_action_steps=2), "robomimic:tool_hang", seeds=[100000], n_envs=1, max_steps=3,
                          progress=False, env_kwargs={"image_size": 64})
    ep = res["tasks"]["robomimic:tool_hang"]["episodes"][0]
    assert ep["steps"] == 3 and ep["success"] is False and res["metrics"]["success_rate"] == 0.0
    assert res["versions"]["robosuite"].startswith("1.5")
    assert seen[0]["image"].shape == seen[0]["wrist_image"].shape == (1, 64, 64, 3)
    assert seen[0]["state"].shape == (1, 9)


@needs_robosuite
def test_absolute_actions_hold_the_pose_and_seeds_fix_the_start():
    env = make_env("robomimic:tool_hang", image_size=48)
    try:
        a, _ = env.reset(seed=100000)
        hold = env.hold_action()
        for _ in range(3):
            o, _, term, trunc, info = env.step(hold)
        np.testing.assert_allclose(o["state"][:7], a["state"][:7], atol=5e-3)  # absolute target = stay put
        assert info["is_success"] is False and not term and not trunc
        b, _ = env.reset(seed=100000)
        c, _ = env.reset(seed=100001)
        np.testing.assert_array_equal(a["image"], b["image"])
        assert np.abs(a["image"].astype(int) - c["image"]).max() > 0
    finally:
        env.close()
