"""Metric functions on cases with known answers; mp4 / PNG round trips; baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from videoaction.errors import VideoActionError
from videoaction.eval import metrics as M
from videoaction.eval.baselines import MeanActionPolicy, RandomPolicy
from videoaction.eval.video import image_grid, prediction_strip, read_mp4, save_png, video_grid, write_mp4


# ---------------------------------------------------------------------------------------------- PushT coverage
def test_pusht_coverage_known_poses():
    pytest.importorskip("gym_pusht")
    P = pytest.importorskip("videoaction.envs.pusht")
    assert M.pusht_coverage is P.coverage and M.PUSHT_GOAL_POSE == P.GOAL_POSE  # historical names still work
    goal = P.GOAL_POSE
    assert M.pusht_coverage(goal) == pytest.approx(1.0, abs=1e-12)
    assert M.pusht_coverage((60.0, 60.0, 0.0)) == 0.0  # far away
    # shifted along the bar by half its length (bar 120 x 30, stem 30 x 90): a known partial overlap
    cov = M.pusht_coverage((goal[0] + 1.0, goal[1], goal[2]))
    assert 0.95 < cov < 1.0
    # rotated by pi about the origin of the body: only the part of the bar shared... strictly less than 1
    assert M.pusht_coverage((goal[0], goal[1], goal[2] + math.pi)) < 0.5


def test_pusht_coverage_matches_gym_pusht():
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("gym_pusht")
    env = gym.make("gym_pusht/PushT-v0")
    try:
        env.reset(seed=3)
        # the legacy setter rotates about the centre of gravity: find the state whose pose lands on the goal
        env.reset(options={"reset_to_state": [60.0, 60.0, 256.0, 256.0, math.pi / 4]})
        _, _, _, _, info = env.step(np.array([60.0, 60.0], np.float32))
        offset = info["block_pose"][:2] - np.array([256.0, 256.0])
        state = [60.0, 60.0, 256.0 - offset[0], 256.0 - offset[1], math.pi / 4]
        env.reset(options={"reset_to_state": state})
        _, reward, terminated, _, info = env.step(np.array([60.0, 60.0], np.float32))
        assert info["coverage"] == pytest.approx(1.0, abs=1e-3)
        assert terminated and info["is_success"] and reward == pytest.approx(1.0)
        assert M.pusht_coverage(info["block_pose"]) == pytest.approx(info["coverage"], abs=1e-9)
        rng = np.random.default_rng(0)
        for _ in range(4):  # random poses: our formula == the env's
            env.reset(seed=int(rng.integers(1000)))
            _, _, _, _, info = env.step(rng.uniform(100, 400, 2).astype(np.float32))
            assert M.pusht_coverage(info["block_pose"]) == pytest.approx(info["coverage"], abs=1e-9)
    finally:
        env.close()


def test_dp_score_and_success_rate():
    pytest.importorskip("gym_pusht")
    from videoaction.envs import get_env_spec

    spec = get_env_spec("pusht")
    cov = [1.0, 0.95, 0.475, 0.0, 0.96]
    # clip(cov / 0.95): 1, 1, 0.5, 0, 1
    assert M.dp_score(cov) == pytest.approx((1 + 1 + 0.5 + 0 + 1) / 5)
    assert M.success_rate([c > 0.95 for c in cov]) == pytest.approx(2 / 5)  # 0.95 itself is not a success
    eps = [{"success": c > 0.95, "max_coverage": c, "final_coverage": c / 2, "steps": 10, "sum_reward": 1.0,
            "max_reward": min(c / 0.95, 1)} for c in cov]
    s = M.summarize_episodes(eps, extra=spec.metrics.summarize)
    assert s["dp_score"] == pytest.approx(0.7) and s["success_rate"] == pytest.approx(0.4)
    assert s["mean_max_coverage"] == pytest.approx(np.mean(cov)) and s["mean_final_coverage"] == pytest.approx(
        np.mean(cov) / 2)
    assert s["mean_max_reward"] == pytest.approx(0.7)  # PushT's reward is clip(cov / 0.95): its max is the DP score
    plain = M.summarize_episodes(eps)
    assert plain["n_episodes"] == 5 and "dp_score" not in plain and plain["mean_steps"] == 10
    assert get_env_spec("metaworld").metrics.summarize is None
    with pytest.raises(VideoActionError):
        M.dp_score([])
    with pytest.raises(M.MetricError):
        M.summarize_episodes([])


# ---------------------------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_known_values():
    a = np.full((2, 8, 8, 3), 100, np.uint8)
    assert M.psnr(a, a) == math.inf
    b = a + np.uint8(10)  # MSE = (10/255)^2
    assert M.psnr(a, b) == pytest.approx(20 * math.log10(255 / 10), rel=1e-9)
    # float input in [0, 1] gives the same number
    assert M.psnr(a / 255.0, b / 255.0) == pytest.approx(M.psnr(a, b), rel=1e-9)
    with pytest.raises(M.MetricError):
        M.psnr(a, b[:, :4])


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert M.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    # constant images a, b (in [0,1]): variances are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly
    a, b = 0.2, 0.6
    c1 = 0.01 ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert M.ssim(np.full((1, 16, 16, 3), a), np.full((1, 16, 16, 3), b)) == pytest.approx(expected, rel=1e-9)
    noisy = np.clip(x.astype(int) + rng.integers(-40, 41, x.shape), 0, 255).astype(np.uint8)
    s = M.ssim(noisy, x)
    assert 0.5 < s < 0.99  # noise lowers SSIM
    assert s == pytest.approx(_ssim_reference(noisy, x), abs=1e-9)
    smooth = np.repeat(np.repeat(x[:, ::4, ::4], 4, 1), 4, 2)
    assert M.ssim(smooth, 255 - smooth) < 0  # inverted structure


def _ssim_reference(a, b):
    """Independent SSIM (scikit-image's recipe): scipy Gaussian filter (sigma 1.5, truncate 3.5 -> 11 taps) over
    the whole image, statistics with population covariance, border of 5 pixels cropped, mean over pixels/channels."""
    from scipy.ndimage import gaussian_filter

    vals = []
    for x, y in zip(a.astype(np.float64) / 255, b.astype(np.float64) / 255):
        for ch in range(x.shape[-1]):
            X, Y = x[..., ch], y[..., ch]

            def f(z):
                return gaussian_filter(z, sigma=1.5, truncate=3.5)

            ux, uy = f(X), f(Y)
            vx, vy, vxy = f(X * X) - ux * ux, f(Y * Y) - uy * uy, f(X * Y) - ux * uy
            c1, c2 = 0.01 ** 2, 0.03 ** 2
            s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
            vals.append(s[5:-5, 5:-5].mean())
    return float(np.mean(vals))


# ---------------------------------------------------------------------------------------------- Frechet
def test_frechet_distance_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    # diagonal covariances: ||mu1-mu2||^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    assert M.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)
    # a rotated (non-diagonal) pair with the same spectra: FD between N(0, S) and N(0, R S R^T)
    th = 0.3
    r = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    s = np.diag([4.0, 1.0])
    fd = M.frechet_distance(np.zeros(2), s, np.zeros(2), r @ s @ r.T)
    # closed form for 2x2: tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)),
    # with tr((S1 S2)^(1/2)) = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2)))
    m = s @ r @ s @ r.T
    expected2 = 2 * np.trace(s) - 2 * math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    assert fd == pytest.approx(expected2, rel=1e-6)
    assert M.frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(0.0, abs=1e-9)


def test_frechet_from_samples_approaches_closed_form():
    rng = np.random.default_rng(1)
    f1 = rng.normal(0.0, 1.0, (20000, 2))
    f2 = rng.normal([2.0, 0.0], [1.0, 2.0], (20000, 2))
    expected = 4.0 + (1 + 4 - 2 * 2)  # mean term + variance term (dim 2: 1 + 4 - 2*sqrt(4))
    assert M.frechet_distance_from_features(f1, f2) == pytest.approx(expected, abs=0.1)


def test_feature_networks_need_a_local_file(tmp_path):
    with pytest.raises(M.MetricError, match="nothing is ever downloaded|Nothing is ever downloaded"):
        M.FVD(None)
    with pytest.raises(M.MetricError, match="not found"):
        M.LPIPS(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(M.MetricError, match="TorchScript"):
        M.FVD(bad)


def test_fvd_pipeline_with_a_user_torchscript(tmp_path):
    """FVD wiring with a stand-in TorchScript feature net of the I3D calling convention (a real file the user
    could supply); checks input layout/range and that identical clip sets give ~0."""

    class Feat(torch.nn.Module):
        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                    return_features: bool = True) -> torch.Tensor:
            assert x.shape[1] == 3 and x.shape[-1] == 224 and x.shape[2] >= 16
            return torch.stack([x.mean((1, 2, 3, 4)), x.std((1, 2, 3, 4)), x[:, 0].mean((1, 2, 3))], 1)

    path = tmp_path / "feat.pt"
    torch.jit.script(Feat()).save(str(path))
    fvd = M.FVD(path)
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (6, 4, 16, 16, 3), dtype=np.uint8)
    feats = fvd.features(clips)
    assert feats.shape == (6, 3) and np.all(np.abs(feats[:, 0]) < 0.2)  # [-1, 1] input, mean ~0
    assert fvd(clips, clips) == pytest.approx(0.0, abs=1e-6)
    assert fvd(clips, np.clip(clips.astype(int) + 60, 0, 255).astype(np.uint8)) > 0.1


# ---------------------------------------------------------------------------------------------- video files
def test_mp4_round_trip_and_grids(tmp_path):
    t, h, w = 6, 33, 47  # odd sizes are padded to even for yuv420p
    frames = np.zeros((t, h, w, 3), np.uint8)
    for k in range(t):
        frames[k, :, : (k + 1) * 7] = (40 * k, 200, 90)
    path = write_mp4(tmp_path / "a.mp4", frames, fps=10)
    back = read_mp4(path)
    assert back.shape == (t, h + 1, w + 1, 3)
    assert M.psnr(back[:, :h, :w], frames) > 25  # lossy but close (crf 22)
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and int(s.average_rate) == 10
    grid = video_grid([frames, frames[:3]], n_cols=2, pad=2)
    assert grid.shape == (t, h + 4, 2 * w + 6, 3)
    assert np.array_equal(grid[-1, 2:2 + h, 4 + w:4 + 2 * w], frames[2])  # shorter video holds its last frame
    strip = prediction_strip(frames[:2], frames[2:4], [frames[4:6]])
    assert strip.shape == (2 * h + 3 * 2, 5 * w + 6 * 2, 3)
    png = save_png(tmp_path / "g.png", image_grid([[frames[0], frames[1]]]))
    from PIL import Image

    assert Image.open(png).size == (2 * w + 6, h + 4)


# ---------------------------------------------------------------------------------------------- baselines
def test_baselines():
    class Box:
        low, high, shape = np.array([0.0, -1.0]), np.array([512.0, 1.0]), (2,)

    rp = RandomPolicy(n_action_steps=4, seed=0)
    rp.bind_action_space(Box)
    a = rp({"state": np.zeros((3, 5), np.float32)})
    assert a.shape == (3, 4, 2) and (a[..., 0] >= 0).all() and (a[..., 0] <= 512).all() and (a[..., 1] <= 1).all()
    b = RandomPolicy(n_action_steps=4, seed=0)
    b.bind_action_space(Box)
    assert np.array_equal(a, b({"state": np.zeros((3, 5), np.float32)}))  # deterministic
    class Box4:
        low, high, shape = -np.ones(4), np.ones(4), (4,)

    rp.bind_action_space(Box4)  # the same baseline reused in another environment takes its bounds
    assert rp({"state": np.zeros((1, 5))}).shape == (1, 4, 4)
    mp = MeanActionPolicy([1.0, 2.0], n_action_steps=3)
    out = mp({"image": np.zeros((2, 4, 4, 3), np.uint8)})
    assert out.shape == (2, 3, 2) and np.all(out == np.array([1.0, 2.0]))
