"""The CUDA paths of training and inference, end to end, for a lent GPU (CI has none): a few steps of each family
through `videoaction train --device cuda` (bf16; UVA also with --optim.compile; VPP both stages), then each
checkpoint loaded onto the GPU and asked for actions (HMA, a world model, through its own loop: trained and
loaded). Prints one line per check and exits non-zero on the first failure. About a minute on an H100-class GPU.

    python benchmarks/cuda_smoke.py [WORK_DIR] [--device cpu]   (cpu: the same checks without a GPU)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from videoaction.cli import main as cli
from videoaction.data.hma_tokens import encode_store
from videoaction.data.store import EpisodeStore
from videoaction.models.base import load_policy
from videoaction.nn.tokenizer import SmallAutoencoder, save_tokenizer
from videoaction.nn.tokenizer.lfq import LFQTokenizer, save_lfq, tiny_lfq_config
from videoaction.train.synthetic import make_store

INSTRUCTIONS = ("push the box right", "push the box left")


def lang_store(path: Path, n_episodes: int = 4, length: int = 16, size: int = 32) -> Path:
    """Episodes of a box moving as its instruction says (VPP reads the instruction)."""
    store = EpisodeStore.create(path, overwrite=True)
    rng = np.random.default_rng(0)
    for e in range(n_episodes):
        img = rng.integers(0, 255, (length, size, size, 3), dtype=np.uint8)
        act = rng.normal(size=(length, 2)).astype(np.float32)
        store.add_episode({"img": img, "state": act.copy(), "action": act},
                          meta={"language": INSTRUCTIONS[e % 2], "seed": e, "success": True})
    return path


def check(name: str, argv: list[str], device: str, act: bool = True) -> Path:
    """Train with ``argv``, load the checkpoint onto ``device`` and (``act``) predict actions from a host-side
    observation, as an environment gives it."""
    t0 = time.perf_counter()
    if cli(argv) != 0:
        raise SystemExit(f"FAIL {name}: videoaction {' '.join(argv)}")
    out = Path(argv[argv.index("--out") + 1])
    policy = load_policy(out, map_location=device).eval()
    if policy.device.type != device:
        raise SystemExit(f"FAIL {name}: the loaded policy is on {policy.device}")
    if not act:
        print(f"ok   {name}: trained and loaded on {device} in {time.perf_counter() - t0:.1f} s", flush=True)
        return out
    rng = np.random.default_rng(0)
    obs = {"language": [INSTRUCTIONS[0]]} if policy.metadata().get("language") else {}
    for key, s in policy.observation_spec().items():
        if key == "language":
            continue
        if s.dtype == "uint8":
            obs[key] = rng.integers(0, 255, (1, *s.shape), dtype=np.uint8)
        else:
            obs[key] = rng.normal(size=(1, *s.shape)).astype(np.float32)
    with torch.inference_mode():
        action = policy.predict_action(obs)["action"]
    if action.device.type != device or not torch.isfinite(action).all():
        raise SystemExit(f"FAIL {name}: actions on {action.device}, finite: {bool(torch.isfinite(action).all())}")
    print(f"ok   {name}: trained and predicted {tuple(action.shape)} on {device} in {time.perf_counter() - t0:.1f} s",
          flush=True)
    return out


def main(work: Path, device: str = "cuda") -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("cuda_smoke: no CUDA device (--device cpu runs the same checks on the CPU)")
    store = make_store(work / "store.zarr", n_episodes=4, length=40, image_size=64)
    tok = save_tokenizer(SmallAutoencoder(16, 16, (), True, 1.0), work / "tok",
                         extra={"image_size": 64, "image_key": "img"})
    precision = ["--optim.mixed-precision", "bf16"] if device == "cuda" else []
    common = ["--device", device, "--steps", "6", "--save-every", "6", "--log-every", "2", "--no-progress",
              "--val-batches", "0", "--optim.batch-size", "8", *precision]
    uva = ["train", "--preset", "uva-tiny", "--data", str(store), "--model.tokenizer.path", str(tok), *common]
    check("uva-tiny, latent cache", [*uva, "--out", str(work / "uva")], device)
    if device == "cuda":  # compiling on a CPU takes minutes
        check("uva-tiny, --optim.compile", [*uva, "--optim.compile", "--out", str(work / "uva_compiled")], device)
    check("dp-tiny", ["train", "--preset", "dp-tiny", "--data", str(store), *common, "--out", str(work / "dp")],
          device)
    lang = lang_store(work / "lang.zarr")
    vpp = ["--data", str(lang), "--model.num-frames", "4", "--model.unet.num-frames", "4", *common]
    s1 = check("vpp-tiny-video (stage 1)", ["train", "--preset", "vpp-tiny-video", *vpp, "--dataset.frames.n-future",
                                            "3", "--dataset.horizon", "7", "--dataset.pad-after", "6",
                                            "--out", str(work / "vpp1")], device, act=False)
    check("vpp-tiny (stage 2 from stage 1)", ["train", "--preset", "vpp-tiny", *vpp, "--init", str(s1),
                                              "--out", str(work / "vpp2")], device)
    small = make_store(work / "small.zarr", n_episodes=3, length=12, image_size=32)
    lfq = save_lfq(LFQTokenizer(tiny_lfq_config(z_channels=10)), work / "lfq")
    tokens = encode_store(small, work / "tokens", str(lfq), image_size=32, name="pusht", progress=False,
                          log=lambda m: None)
    hma = ["train", "--preset", "hma-tiny-disc", "--data", str(tokens), "--device", device, "--steps", "4",
           "--save-every", "4", "--no-progress", "--optim.batch-size", "4", "--optim.ema", "--model.d-model", "32",
           "--model.num-layers", "1", "--model.num-heads", "2", "--model.n-action-tokens", "2"]
    check("hma-tiny-disc (its own loop, EMA)", [*hma, "--out", str(work / "hma")], device, act=False)
    print(f"cuda_smoke: all passed on {device}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    dev = "cuda"
    if "--device" in args:
        i = args.index("--device")
        dev = args[i + 1]
        del args[i: i + 2]
    if args:
        main(Path(args[0]), dev)
    else:
        with tempfile.TemporaryDirectory(prefix="cuda_smoke_") as tmp:
            main(Path(tmp), dev)
