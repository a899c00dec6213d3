"""A small, learnable synthetic episode store for tests and benchmarks (no simulator needed).

A square moves on a dark background under a smooth random velocity; ``state`` is its (x, y) position in pixels,
``action`` the next position (PushT-like absolute targets), ``img`` the rendered frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from videoaction.data.store import EpisodeStore


def render(pos: np.ndarray, size: int, box: int) -> np.ndarray:
    """(T, 2) positions -> (T, size, size, 3) uint8 frames with a box centred at each position."""
    t = len(pos)
    img = np.full((t, size, size, 3), 20, dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for i, (x, y) in enumerate(pos):
        inside = (np.abs(xx - x) <= box / 2) & (np.abs(yy - y) <= box / 2)
        img[i][inside] = (230, 180, 40)
        img[i, :, :2] = (60, 60, 200)  # a fixed landmark stripe
    return img


def make_store(path, n_episodes: int = 8, length: int = 40, image_size: int = 32, seed: int = 0,
               overwrite: bool = True, action_dim: int = 2, nan_episode: int | None = None,
               float_images: bool = False, action_free: tuple[int, ...] = ()) -> Path:
    """Write ``n_episodes`` episodes of ``length`` steps; returns the store path.

    ``nan_episode``: that episode's frames are NaN (needs ``float_images``), to exercise the non-finite guard.
    ``action_free``: these episodes get meta ``has_action=False`` and NaN actions (video-only data).
    """
    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, overwrite=overwrite, attrs={"synthetic": True})
    box = max(3, image_size // 6)
    lo, hi = box, image_size - box
    for e in range(n_episodes):
        pos = np.zeros((length + 1, 2), dtype=np.float32)
        pos[0] = rng.uniform(lo, hi, size=2)
        vel = rng.normal(0, 1.0, size=2)
        for t in range(length):
            vel = 0.8 * vel + rng.normal(0, 0.6, size=2)
            pos[t + 1] = np.clip(pos[t] + vel, lo, hi)
        img = render(pos[:length], image_size, box)
        action = pos[1:].copy()
        if action_dim > 2:
            action = np.concatenate([action, np.zeros((length, action_dim - 2), np.float32)], axis=1)
        frames = img.astype(np.float32) if float_images else img
        if nan_episode is not None and e == nan_episode:
            frames = np.full(img.shape, np.nan, dtype=np.float32)
        meta = {"seed": e, "success": True}
        if action_free:
            meta["has_action"] = e not in action_free
            if e in action_free:
                action = np.full_like(action, np.nan)
        store.add_episode({"img": frames, "state": pos[:length].copy(), "action": action[:, :action_dim]}, meta=meta)
    return Path(path)


# Overrides that make ``uva-tiny`` really tiny (a few seconds per dozen steps on a CPU), for tests/benchmarks.
TINY_UVA = ["--dataset.image-size", "32", "--model.width", "32", "--model.encoder-depth", "1",
            "--model.decoder-depth", "1", "--model.num-heads", "2", "--model.video-head.width", "32",
            "--model.video-head.depth", "1", "--model.action-head.width", "32", "--model.action-head.depth", "1",
            "--optim.batch-size", "8", "--optim.warmup-steps", "5"]
TINY_DP = ["--dataset.image-size", "32", "--model.backbone-width", "8", "--model.down-dims", "16", "32",
           "--model.step-embed-dim", "16", "--model.num-keypoints", "8", "--model.image-feature-dim", "16",
           "--optim.batch-size", "8", "--optim.warmup-steps", "5"]


def tiny_tokenizer(store_path, out_dir, image_size: int = 32, steps: int = 0, seed: int = 0) -> Path:
    """A small autoencoder (widths 8/16/32) for tests: ``steps=0`` saves seeded untrained weights with scale 1
    (the policies only need a fixed, frozen encoder), otherwise it is trained for ``steps`` on ``store_path``."""
    from videoaction.nn.tokenizer import SmallAutoencoder, TokenizerConfig, save_tokenizer
    from videoaction.train.tokenizer import train_tokenizer

    cfg = TokenizerConfig(kind="small", channels=(8, 16, 32))
    if steps == 0:
        import torch

        torch.manual_seed(seed)
        model = SmallAutoencoder(cfg.latent_channels, cfg.stride, tuple(cfg.channels), cfg.kl, 1.0)
        return Path(save_tokenizer(model, out_dir, extra={"image_size": image_size, "image_key": "img",
                                                          "train_steps": 0}))
    return Path(train_tokenizer(store_path, out_dir, cfg, steps=steps, batch_size=16, image_size=image_size,
                                seed=seed, progress=False, log=None))
