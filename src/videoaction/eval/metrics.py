"""Evaluation metrics: success rate and per-task summaries, PSNR, SSIM, Frechet distance, and loaders for
LPIPS / FVD feature networks supplied by the user as local TorchScript files.

Environment-specific metrics (PushT's DP score and coverage) are defined by the environment's
:class:`~videoaction.envs.spec.MetricSpec` and merged in by :func:`summarize_episodes`.

Nothing here downloads anything: LPIPS and FVD need a weights file given by path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: F401 (FVD resizing)

from videoaction.errors import VideoActionError


class MetricError(VideoActionError):
    """Bad input to a metric (shapes, ranges) or a missing / unreadable feature-network file."""


# Environment-specific metrics live with their environment (its EnvSpec's MetricSpec); the PushT ones stay reachable
# here under their historical names.
_ENV_METRIC_ALIASES = {"pusht_coverage": ("videoaction.envs.pusht", "coverage"),
                       "PUSHT_GOAL_POSE": ("videoaction.envs.pusht", "GOAL_POSE"),
                       "PUSHT_SUCCESS_THRESHOLD": ("videoaction.envs.pusht", "SUCCESS_THRESHOLD"),
                       "coverage_reward": ("videoaction.envs.pusht", "coverage_reward"),
                       "dp_score": ("videoaction.envs.pusht", "dp_score")}


def __getattr__(name: str):
    if name in _ENV_METRIC_ALIASES:
        import importlib

        module, attr = _ENV_METRIC_ALIASES[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------------ success
def success_rate(successes: Iterable[bool]) -> float:
    """Fraction of episodes that succeeded at any step (LeRobot's ``pc_success`` / 100)."""
    s = np.asarray(list(successes), dtype=bool)
    if s.size == 0:
        raise MetricError("success_rate: no episodes")
    return float(s.mean())


def summarize_episodes(episodes: Sequence[dict],
                       extra: Callable[[Sequence[dict]], Mapping[str, float]] | None = None) -> dict:
    """Aggregate per-episode records (``success``, ``steps``, ``sum_reward``, ``max_reward``) of one task; ``extra``
    (an environment's ``MetricSpec.summarize``) adds its own metrics."""
    if not episodes:
        raise MetricError("summarize_episodes: no episodes")
    out = {
        "n_episodes": len(episodes),
        "success_rate": success_rate(e["success"] for e in episodes),
        "mean_steps": float(np.mean([e["steps"] for e in episodes])),
        "mean_sum_reward": float(np.mean([e["sum_reward"] for e in episodes])),
        "mean_max_reward": float(np.mean([e["max_reward"] for e in episodes])),
    }
    if extra is not None:
        out.update(extra(episodes))
    return out


# ------------------------------------------------------------------------------------------------ image metrics
def _as_float_images(x, name: str) -> torch.Tensor:
    """uint8 (..., H, W, 3) in [0, 255] or float in [0, 1] -> float64 tensor (N, 3, H, W) in [0, 1]."""
    t = torch.as_tensor(np.asarray(x))
    if t.ndim < 3 or t.shape[-1] not in (1, 3):
        raise MetricError(f"{name}: expected images (..., H, W, C) with C in (1, 3), found shape {tuple(t.shape)}")
    t = t.to(torch.float64) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float64)
    return t.reshape(-1, *t.shape[-3:]).permute(0, 3, 1, 2)


def _check_pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    ta, tb = _as_float_images(a, "prediction"), _as_float_images(b, "target")
    if ta.shape != tb.shape:
        raise MetricError(f"image metric: prediction shape {tuple(np.shape(a))} != target shape {tuple(np.shape(b))}")
    return ta, tb


def psnr(pred, target, reduce: bool = True):
    """PSNR in dB (data range 1 after scaling uint8 by 1/255), per image then averaged.

    ``pred``/``target``: uint8 (..., H, W, 3) or float in [0, 1]. Identical images give +inf.
    """
    a, b = _check_pair(pred, target)
    mse = ((a - b) ** 2).flatten(1).mean(1)  # (N,)
    vals = torch.where(mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))
    return float(vals.mean()) if reduce else vals.numpy()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _valid_filter_matrix(g: torch.Tensor, n: int) -> torch.Tensor:
    """Matrix M (n - k + 1, n) with (M @ x)[i] = sum_j g[j] x[i + j] (valid 1-D correlation)."""
    k = g.shape[0]
    m = torch.zeros(n - k + 1, n, dtype=torch.float64)
    for j in range(k):
        m[torch.arange(n - k + 1), torch.arange(n - k + 1) + j] = g[j]
    return m


def ssim(pred, target, reduce: bool = True, window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03):
    """SSIM (Wang et al. 2004): Gaussian window 11 / sigma 1.5, data range 1, per channel, valid region only,
    mean over pixels and channels (= skimage ``gaussian_weights=True, use_sample_covariance=False``).

    Images smaller than the window use a window of their size.
    """
    a, b = _check_pair(pred, target)
    n, c, h, w = a.shape
    size = min(window, h, w)
    g = _gaussian_window(size, sigma)
    gh, gw = _valid_filter_matrix(g, h), _valid_filter_matrix(g, w)  # (h-size+1, h), (w-size+1, w)

    def blur(x):  # separable "valid" Gaussian filter as two float64 matmuls (fast on CPU)
        return gh @ x @ gw.T

    c1, c2 = k1 ** 2, k2 ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    vals = s.flatten(1).mean(1)
    return float(vals.mean()) if reduce else vals.numpy()


# ------------------------------------------------------------------------------------------------ Frechet distance
def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D) (unbiased, N >= 2)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise MetricError(f"gaussian_stats: expected features (N >= 2, D), found shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians (FID / FVD formula)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise MetricError(f"frechet_distance: shapes do not match: mu {mu1.shape}/{mu2.shape}, "
                          f"sigma {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance_from_features(feats1, feats2) -> float:
    return frechet_distance(*gaussian_stats(feats1), *gaussian_stats(feats2))


# ------------------------------------------------------------------------------------------------ LPIPS / FVD
def _load_torchscript(path, what: str, how: str):
    if path is None:
        raise MetricError(f"{what} needs a local weights file ({how}); none given, so {what} is skipped. "
                          "Nothing is ever downloaded at run time.")
    p = Path(path).expanduser()
    if not p.is_file():
        raise MetricError(f"{what}: weights file {p} not found ({how}). Nothing is downloaded at run time.")
    try:
        return torch.jit.load(str(p), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - any load failure is a user-file problem
        raise MetricError(f"{what}: {p} is not a loadable TorchScript file ({exc})") from None


LPIPS_HOW = ("a TorchScript module taking two float images (N, 3, H, W) in [-1, 1] and returning distances "
             "(N,) or (N, 1, 1, 1), e.g. `torch.jit.script(lpips.LPIPS(net='alex'))` saved with `.save(path)`")
I3D_HOW = ("the standard I3D TorchScript `i3d_torchscript.pt` (StyleGAN-V / fvd-comparison, 400-d features), "
           "called as detector(videos (N, 3, T, 224, 224) in [-1, 1], rescale=False, resize=False, "
           "return_features=True)")


class LPIPS:
    """LPIPS from a user-supplied TorchScript file; ``__call__(pred, target)`` -> mean distance over frames."""

    def __init__(self, path, device: str | torch.device = "cpu"):
        self.net = _load_torchscript(path, "LPIPS", LPIPS_HOW).to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, pred, target, batch: int = 32) -> float:
        a, b = _check_pair(pred, target)
        vals = []
        for i in range(0, a.shape[0], batch):
            x = (a[i:i + batch].float() * 2 - 1).to(self.device)
            y = (b[i:i + batch].float() * 2 - 1).to(self.device)
            vals.append(self.net(x, y).reshape(-1).float().cpu())
        return float(torch.cat(vals).mean())


class FVD:
    """Frechet Video Distance with a user-supplied I3D TorchScript (see :data:`I3D_HOW`).

    Clips: uint8 (N, T, H, W, 3); frames are resized to 224x224 (bilinear) and scaled to [-1, 1]. Clips shorter
    than ``min_frames`` are tiled in time (UVA repeats 4 frames x4 to 16). FVD from few clips is biased and
    noisy; report the clip count and length next to it.
    """

    def __init__(self, path, device: str | torch.device = "cpu", min_frames: int = 16):
        self.net = _load_torchscript(path, "FVD", I3D_HOW).to(device)
        self.device = torch.device(device)
        self.min_frames = min_frames

    @torch.no_grad()
    def features(self, clips, batch: int = 8) -> np.ndarray:
        x = torch.as_tensor(np.asarray(clips))
        if x.ndim != 5 or x.shape[-1] != 3:
            raise MetricError(f"FVD: expected clips (N, T, H, W, 3), found shape {tuple(x.shape)}")
        if x.shape[1] < self.min_frames:
            x = x.repeat(1, math.ceil(self.min_frames / x.shape[1]), 1, 1, 1)[:, : self.min_frames]
        out = []
        for i in range(0, x.shape[0], batch):
            v = x[i:i + batch].to(self.device).float()
            v = v / 127.5 - 1.0 if x.dtype == torch.uint8 else v * 2 - 1
            n, t = v.shape[:2]
            v = F.interpolate(v.reshape(n * t, *v.shape[2:]).permute(0, 3, 1, 2), size=(224, 224),
                              mode="bilinear", align_corners=False)
            v = v.reshape(n, t, 3, 224, 224).permute(0, 2, 1, 3, 4).contiguous()  # (N, 3, T, 224, 224)
            out.append(self.net(v, rescale=False, resize=False, return_features=True).float().cpu().numpy())
        return np.concatenate(out)

    def __call__(self, pred_clips, real_clips) -> float:
        return frechet_distance_from_features(self.features(pred_clips), self.features(real_clips))
