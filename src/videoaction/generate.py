"""`videoaction generate`: a world model predicts frames from prompt frames and actions; mp4 of
[prompt | prediction | ground truth] and a JSON summary (PSNR per predicted frame, copy-last-frame, time per frame).

    videoaction generate --checkpoint runs/hma --data tokens/pusht --prompt 2 --out pred.mp4
    videoaction generate --checkpoint runs/hma --data tokens/pusht --teacher-forced --window-index 3 --cfg 2

The window (the model's frame count, at the embodiment's stride) comes from the token dataset; its frames are
decoded with the tokenizer that made the dataset (``--tokenizer``, else the dataset manifest's encoder path).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from videoaction.errors import VideoActionError


def build_decoder(spec: str, discrete: bool, latent_scale: float, allow_pickle: bool = False):
    """tokens (B, T, ...) as the model reads them -> uint8 frames (B, T, H, W, 3)."""
    if discrete:
        from videoaction.nn.tokenizer.lfq import load_lfq

        tok = load_lfq(spec, allow_pickle=allow_pickle)
        fn = lambda x: tok.decode_ids(x.long())  # noqa: E731
    else:
        from videoaction.nn.tokenizer import build_tokenizer
        from videoaction.train.encode import resolve_tokenizer

        tok = build_tokenizer(resolve_tokenizer(spec)[0])
        fn = lambda x: tok.decode(x.float() / latent_scale)  # noqa: E731

    @torch.no_grad()
    def decode(tokens: torch.Tensor) -> np.ndarray:
        b, t = tokens.shape[:2]
        img = fn(tokens.flatten(0, 1).cpu())  # (B T, 3, H, W) in [-1, 1]
        img = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return img.reshape(b, t, *img.shape[1:])

    return decode


def side_by_side(pred: np.ndarray, truth: np.ndarray, n_prompt: int, pad: int = 2) -> np.ndarray:
    """(T, H, W, 3) prediction and ground truth -> (T, H, 3 W + 2 pad, 3) [prompt | prediction | ground truth];
    the prompt column holds the last prompt frame once the prompt is over."""
    prompt = np.concatenate([truth[:n_prompt], np.repeat(truth[n_prompt - 1: n_prompt], len(truth) - n_prompt, 0)])
    gap = np.full((*truth.shape[:2], pad, 3), 255, np.uint8)
    return np.concatenate([prompt, gap, pred, gap, truth], axis=2)


def generate(checkpoint, data, out, domain: str | None = None, tokenizer: str | None = None, window_index: int = 0,
             prompt: int | None = None, teacher_forced: bool = False, steps: int | None = None,
             temperature: float | None = None, cfg: float | None = None, seed: int = 0, upscale: int = 4,
             fps: int = 4, allow_pickle: bool = False, log=print) -> dict:
    from videoaction.data.hma_tokens import TokenDataset
    from videoaction.eval.metrics import psnr
    from videoaction.eval.video import upscale as upscale_frames, write_mp4
    from videoaction.models.base import load_policy
    from videoaction.utils.io import atomic_write_json

    policy = load_policy(checkpoint)
    if policy.family != "hma":
        raise VideoActionError(f"{checkpoint}: a {policy.family!r} checkpoint; generate needs a world model (hma)")
    m = policy.mcfg
    ds = TokenDataset(data)
    domain = domain or ds.name
    dom = m.domain(domain)
    starts = ds.window_starts(m.window, dom.stride)
    if not 0 <= window_index < len(starts):
        raise VideoActionError(f"{data}: --window-index {window_index} outside [0, {len(starts)}) windows of "
                               f"{m.window} frames at stride {dom.stride}")
    tokens, actions = ds.window(int(starts[window_index]), m.window, dom.stride)
    x = torch.from_numpy(tokens.astype(np.int64 if ds.layout.quantized else np.float32))[None]
    if not ds.layout.quantized:
        x = x * m.latent_scale
    a = torch.from_numpy(actions.astype(np.float32))[None]
    n_prompt = prompt if prompt is not None else m.num_prompt_frames
    if not 1 <= n_prompt < m.window:
        raise VideoActionError(f"--prompt {n_prompt}: must be in [1, {m.window - 1}]")
    spec = tokenizer or m.tokenizer or (ds.manifest.get("encoder") or {}).get("path")
    if not spec:
        raise VideoActionError(f"{data}: no tokenizer recorded in its manifest; pass --tokenizer")
    decode = build_decoder(spec, ds.layout.quantized, m.latent_scale, allow_pickle)
    t0 = time.perf_counter()
    pred = policy.generate(x, a, domain, n_prompt, teacher_forced=teacher_forced, steps=steps,
                           temperature=temperature, cfg=cfg, generator=torch.Generator().manual_seed(seed))
    gen_s = (time.perf_counter() - t0) / (m.window - n_prompt)
    t1 = time.perf_counter()
    frames, truth = decode(pred)[0], decode(x)[0]
    dec_s = (time.perf_counter() - t1) / (2 * m.window)
    video = side_by_side(frames, truth, n_prompt)
    write_mp4(out, upscale_frames(video, upscale), fps=fps)
    per_frame = psnr(frames[n_prompt:], truth[n_prompt:], reduce=False)
    copy = psnr(np.repeat(truth[n_prompt - 1: n_prompt], m.window - n_prompt, 0), truth[n_prompt:], reduce=False)
    summary = {"checkpoint": str(checkpoint), "data": str(data), "domain": domain, "window_start": int(starts[window_index]),
               "n_prompt": n_prompt, "frames": m.window, "mode": "teacher_forced" if teacher_forced else "autoregressive",
               "psnr_per_frame": [float(v) for v in per_frame], "psnr": float(np.mean(np.minimum(per_frame, 100))),
               "psnr_copy_last": float(np.mean(np.minimum(copy, 100))), "gen_s_per_frame": gen_s,
               "decode_s_per_frame": dec_s, "video": str(out)}
    atomic_write_json(Path(out).with_suffix(".json"), summary)
    log(json.dumps({k: v for k, v in summary.items() if k != "psnr_per_frame"}))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="videoaction generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="world-model checkpoint (or run) directory")
    p.add_argument("--data", required=True, help="token dataset (`videoaction encode --format hma`)")
    p.add_argument("--out", default="generate.mp4", help="mp4 to write (a .json summary is written beside it)")
    p.add_argument("--domain", help="embodiment (default: the dataset's name)")
    p.add_argument("--tokenizer", help="tokenizer to decode frames (default: the dataset manifest's encoder)")
    p.add_argument("--window-index", type=int, default=0, help="which window of the dataset")
    p.add_argument("--prompt", type=int, help="prompt frames (default: the model's num_prompt_frames)")
    p.add_argument("--teacher-forced", action="store_true", help="condition each frame on the ground truth before it")
    p.add_argument("--steps", type=int, help="decoding iterations per frame (default: the model's)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale on the actions (1 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--upscale", type=int, default=4)
    p.add_argument("--fps", type=int, default=4)
    p.add_argument("--allow-pickle", action="store_true", help="read a pickled tokenizer checkpoint")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    generate(args.checkpoint, args.data, args.out, args.domain, args.tokenizer, args.window_index, args.prompt,
             args.teacher_forced, args.steps, args.temperature, args.cfg, args.seed, args.upscale, args.fps,
             args.allow_pickle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
