"""``videoaction predict``: a VPP video prediction next to the ground truth, with PSNR / SSIM against copy-last-frame.

    videoaction predict --checkpoint runs/vpp-video --data demos.zarr --episode 3 [--instruction "open the drawer"]

From step ``--start`` of episode N, the model's ``num_frames`` frames at the training stride (clamped at the episode
end) are the ground truth; the prediction starts from the first of them and the instruction (the episode's language
by default). Writes ``OUT/episode_N.mp4`` ([ground truth | prediction], upscaled) and ``OUT/episode_N.json`` with
PSNR / SSIM of the predicted future frames, of copy-last-frame (frame 0 repeated) and of the autoencoder's
reconstruction (the ceiling the prediction can reach), and prints them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from videoaction.errors import VideoActionError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="videoaction predict", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--checkpoint", required=True, help="a VPP checkpoint or run directory (stage 1 or 2)")
    p.add_argument("--data", required=True, help="episode store with the frames")
    p.add_argument("--episode", type=int, required=True)
    p.add_argument("--start", type=int, default=0, help="first step of the clip")
    p.add_argument("--instruction", help="instruction (default: the episode's language metadata)")
    p.add_argument("--stride", type=int, help="steps between frames (default: the training stride; stage-2 runs: 2)")
    p.add_argument("--steps", type=int, help="sampling steps (default: model.sample_steps)")
    p.add_argument("--guidance", type=float, help="max classifier-free guidance (default: model.guidance_max)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="predictions", help="output directory")
    p.add_argument("--scale", type=int, default=4, help="upscaling of the mp4 (nearest neighbour)")
    p.add_argument("--device", default="cpu")
    return p


def clip_frames(store, episode: int, key: str, start: int, n: int, stride: int) -> np.ndarray:
    """uint8 (n, H, W, 3): frames start, start + stride, ... of an episode, clamped at its last step."""
    if not 0 <= episode < store.n_episodes:
        raise VideoActionError(f"{store.path}: episode {episode} out of range (0..{store.n_episodes - 1})")
    frames = store.get_episode(episode, [key])[key]
    if not 0 <= start < len(frames):
        raise VideoActionError(f"--start {start} outside episode {episode} of {len(frames)} steps")
    idx = np.minimum(start + stride * np.arange(n), len(frames) - 1)
    return np.asarray(frames[idx])


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, F, 3, S, S) in [-1, 1] -> uint8 (B, F, S, S, 3)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2)


def predict_episode(policy, store, episode: int, start: int = 0, instruction: str | None = None,
                    steps: int | None = None, guidance: float | None = None, seed: int = 0,
                    stride: int | None = None) -> dict:
    """Prediction, ground truth (model resolution) and metrics of one clip; see the module docstring."""
    from videoaction.eval.metrics import psnr, ssim

    if not hasattr(policy, "predict_video") or getattr(policy, "family", "") != "vpp":
        raise VideoActionError(f"predict needs a VPP checkpoint (family vpp), found {getattr(policy, 'family', '?')}")
    cfg, m = policy.cfg, policy.cfg.model
    ds = cfg.dataset
    if not 0 <= episode < store.n_episodes:
        raise VideoActionError(f"{store.path}: episode {episode} out of range (0..{store.n_episodes - 1})")
    if ds.image_key not in store.keys:
        raise VideoActionError(f"{store.path}: no image key {ds.image_key!r} (keys: {store.keys})")
    if instruction is None:
        if m.text.kind != "none":
            if not ds.language_key or ds.language_key not in store.meta_keys:
                raise VideoActionError(f"{store.path}: no language metadata {ds.language_key!r}; pass --instruction")
            instruction = str(store.episode_meta(episode)[ds.language_key])
        else:
            instruction = ""
    stride = stride or (ds.frames.stride if ds.frames.n_future else 2)
    raw = clip_frames(store, episode, ds.image_key, start, m.num_frames, stride)
    gt = policy.preprocess(torch.from_numpy(raw)[None])  # (1, F, 3, S, S) in [-1, 1]
    t0 = time.perf_counter()
    out = policy.predict_video(raw[None, :1], [instruction], steps=steps, guidance_max=guidance,
                               generator=torch.Generator(policy.device).manual_seed(seed))
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        recon = to_uint8(policy.tvp.decode(policy.encode(gt)))[0].cpu().numpy()
    truth, pred = to_uint8(gt)[0].cpu().numpy(), out["frames"][0].cpu().numpy()
    copy_last = np.repeat(truth[:1], len(truth), 0)
    fut = slice(1, None)
    metrics = {"episode": episode, "start": start, "instruction": instruction, "frames": int(len(truth)),
               "stride": int(stride), "seconds": round(seconds, 3)}
    for name, video in (("prediction", pred), ("copy_last_frame", copy_last), ("autoencoder", recon)):
        metrics[f"psnr_{name}"] = round(psnr(video[fut], truth[fut]), 3)
        metrics[f"ssim_{name}"] = round(ssim(video[fut], truth[fut]), 4)
    return {"prediction": pred, "truth": truth, "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    from videoaction.data.store import EpisodeStore
    from videoaction.eval.video import upscale, video_grid, write_mp4
    from videoaction.models.base import load_policy
    from videoaction.utils.io import atomic_write_json

    args = build_parser().parse_args(argv)
    policy = load_policy(args.checkpoint, map_location=args.device)
    store = EpisodeStore.open(args.data)
    res = predict_episode(policy, store, args.episode, args.start, args.instruction, args.steps, args.guidance,
                          args.seed, args.stride)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    video = video_grid([upscale(res["truth"], args.scale), upscale(res["prediction"], args.scale)], n_cols=2)
    mp4 = write_mp4(out / f"episode_{args.episode}.mp4", video, fps=4)
    atomic_write_json(out / f"episode_{args.episode}.json", res["metrics"])
    m = res["metrics"]
    print(f"episode {args.episode} ({m['instruction']!r}), {m['frames']} frames: PSNR prediction "
          f"{m['psnr_prediction']:.2f} dB vs copy-last-frame {m['psnr_copy_last_frame']:.2f} dB (autoencoder "
          f"{m['psnr_autoencoder']:.2f} dB); SSIM {m['ssim_prediction']:.3f} vs {m['ssim_copy_last_frame']:.3f}; "
          f"{m['seconds']:.1f} s\nwrote {mp4} ([ground truth | prediction]) and {out / f'episode_{args.episode}.json'}")
    return 0
