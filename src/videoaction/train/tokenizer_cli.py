"""``videoaction tokenizer``: train an image tokenizer on the frames of one or several stores: the small
autoencoder of the CPU presets (continuous latents) or, with ``--kind lfq``, the LFQ tokenizer of HMA's discrete
variant (token ids)."""

from __future__ import annotations

import argparse

from videoaction.nn.tokenizer import TokenizerConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="videoaction tokenizer", description=__doc__)
    p.add_argument("--data", required=True,
                   help="episode store (zarr directory), or several separated by commas: one tokenizer for all")
    p.add_argument("--out", required=True, help="output directory (tokenizer.safetensors + tokenizer.json, or "
                   "model.safetensors + lfq.json)")
    p.add_argument("--kind", default="small", choices=("small", "lfq"),
                   help="small: the KL autoencoder; lfq: lookup-free quantisation (2^z ids, HMA's discrete tokens)")
    p.add_argument("--steps", type=int, default=None, help="default 600 (small: ~32 dB held-out PSNR on PushT "
                   "frames), 1500 (lfq)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (small), 16 (lfq)")
    p.add_argument("--z-channels", type=int, default=10, help="lfq: bits per token (vocabulary 2^z)")
    p.add_argument("--entropy-weight", type=float, default=0.5, help="lfq: weight of the code-use entropy term")
    p.add_argument("--image-size", type=int, default=64, help="frames are centre-cropped square and resized to this")
    p.add_argument("--image-key", default="img")
    p.add_argument("--latent-channels", type=int, default=8)
    p.add_argument("--stride", type=int, default=8, choices=(4, 8, 16))
    p.add_argument("--channels", type=int, nargs="*", default=None,
                   help="widths per level (default 32 64 128 ...; lfq: the first is the base width)")
    p.add_argument("--plain", action="store_true", help="plain autoencoder (no KL posterior)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--kl-weight", type=float, default=1e-5)
    p.add_argument("--l1-weight", type=float, default=0.0)
    p.add_argument("--max-frames", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is often fastest on a busy shared machine)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.kind == "lfq":
        from videoaction.nn.tokenizer.lfq import tiny_lfq_config
        from videoaction.train.lfq_tokenizer import train_lfq

        base = (a.channels or [32])[0]
        train_lfq(a.data, a.out, tiny_lfq_config(a.z_channels, a.stride, base), steps=a.steps or 1500,
                  batch_size=a.batch_size or 16, image_key=a.image_key, image_size=a.image_size, lr=a.lr,
                  entropy_weight=a.entropy_weight, max_frames=a.max_frames, seed=a.seed, progress=not a.no_progress)
        return 0
    from videoaction.train.tokenizer import train_tokenizer  # torch import only when the command runs

    cfg = TokenizerConfig(kind="small", latent_channels=a.latent_channels, stride=a.stride,
                          channels=tuple(a.channels or ()), kl=not a.plain)
    train_tokenizer(a.data, a.out, cfg, steps=a.steps or 600, batch_size=a.batch_size or 32, image_key=a.image_key,
                    image_size=a.image_size, seed=a.seed, lr=a.lr, kl_weight=a.kl_weight, l1_weight=a.l1_weight,
                    max_frames=a.max_frames, progress=not a.no_progress)
    return 0
