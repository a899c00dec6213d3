"""`videoaction encode`: pre-encode every frame of a store with the tokenizer into a latent store (latent cache).

The latent store has the source's ``episode_ends``, ``data/latent`` (N, C, h, w) (float16 by default), copies of
every non-image key (action, state, ...) and the per-episode metadata, so ``SequenceDataset`` reads latents
(``dataset.latent_key``) and training never runs the encoder. Frames get the evaluation transform of the run
(centre crop ``crop_ratio``, resize to ``image_size``) and the tokenizer's deterministic encoding (posterior mean).

Work is split into ``--shards K`` contiguous episode ranges, each written to its own temporary store under
``OUT.shards/``; a killed run resumes (finished shards are kept, a partial shard continues after its last complete
episode). Shards run one after another in this process, or in parallel: under ``accelerate launch`` / ``torchrun``
rank r takes shards r, r+W, ... (one GPU each) and rank 0 merges; or launch ``--shard-index I`` jobs yourself and
finish with ``--merge-only``. The tokenizer (kind, sizes, scale, weights fingerprint) and the transform are
recorded in the store's attrs and checked against the model at train time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from videoaction.errors import VideoActionError
from videoaction.data.store import EpisodeStore
from videoaction.train.setup import LATENT_ATTR, copy_low_dim_keys, weights_fingerprint


class EncodeError(VideoActionError):
    """Bad arguments or inputs of `videoaction encode`."""


def resolve_tokenizer(spec) -> tuple[object, dict]:
    """``--tokenizer``: a tokenizer dir, a weights file (kl16), or a run/checkpoint dir -> (TokenizerConfig, defaults).

    ``defaults`` holds the transform the tokenizer / run used (image_size, crop_ratio, image_key) when known.
    A :class:`TokenizerConfig` (a run's own, e.g. the trainer's latent cache) is used as it is.
    """
    from videoaction.nn.tokenizer import TokenizerConfig

    if isinstance(spec, TokenizerConfig):
        return spec, {}
    path = Path(spec)
    if (path / "tokenizer.json").is_file():
        info = json.loads((path / "tokenizer.json").read_text())
        defaults = {k: info[k] for k in ("image_size", "image_key") if k in info}
        return TokenizerConfig(kind=info.get("kind", "small"), path=str(path.resolve())), defaults
    if path.is_file():
        return TokenizerConfig(kind="kl16", path=str(path.resolve()), latent_channels=16, stride=16,
                               allow_pickle=path.suffix != ".safetensors"), {}
    from videoaction.models.base import resolve_checkpoint_dir

    cfg_file = resolve_checkpoint_dir(path) / "config.json"
    if not cfg_file.is_file():
        cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise EncodeError(f"--tokenizer {spec}: not a tokenizer directory (tokenizer.json), a weights file or a run "
                          f"/ checkpoint directory (config.json)")
    run = json.loads(cfg_file.read_text())
    tok = (run.get("model") or {}).get("tokenizer")
    if not tok or not tok.get("path"):
        raise EncodeError(f"{cfg_file}: the run's model has no tokenizer with a weights path")
    from videoaction.config import from_dict

    ds = run.get("dataset", {})
    defaults = {k: ds[k] for k in ("image_size", "crop_ratio", "image_key") if k in ds}
    return from_dict(TokenizerConfig, tok, where=f"{cfg_file}:model.tokenizer"), defaults


def shard_ranges(n_episodes: int, n_shards: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n_episodes, max(1, min(n_shards, n_episodes)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _frames_to_input(frames: np.ndarray, dcfg) -> torch.Tensor:
    from videoaction.data.transforms import transform_frames

    return transform_frames(frames, dcfg, None)  # (T, 3, S, S) in [-1, 1]


@torch.no_grad()
def encode_shard(source: EpisodeStore, shard_path: Path, episodes: tuple[int, int], tokenizer, dcfg, attrs: dict,
                 batch_size: int, dtype: np.dtype, device: torch.device, progress=None) -> None:
    """Encode episodes [a, b) into ``shard_path`` (resumes after the last complete episode)."""
    if not shard_path.exists():  # create beside and rename: a kill mid-create leaves no half-made store
        tmp = shard_path.with_name(shard_path.name + ".creating")
        EpisodeStore.create(tmp, overwrite=True, attrs={"shard": list(episodes), **attrs})
        os.replace(tmp, shard_path)
    shard = EpisodeStore.open(shard_path, mode="a")
    if shard.attrs.get("complete"):
        return
    from videoaction.config import camera_keys, camera_latent_key, store_image_keys

    low_dim = copy_low_dim_keys(source)
    cams = list(zip(camera_keys(dcfg), store_image_keys(dcfg)))  # (camera, store key): "latent", "latent_<camera>"
    a, b = episodes
    for ep in range(a + shard.n_episodes, b):
        data = source.get_episode(ep, [key for _, key in cams] + low_dim)
        for camera, key in cams:
            frames = data.pop(key)
            latents = []
            for s in range(0, len(frames), batch_size):
                x = _frames_to_input(frames[s: s + batch_size], dcfg).to(device)
                latents.append(tokenizer.encode(x, sample=False).float().cpu().numpy())
            data[camera_latent_key(camera)] = np.concatenate(latents).astype(dtype)
        shard.add_episode(data, source.episode_meta(ep))
        if progress is not None:
            progress.update(len(frames))
    shard.update_attrs({"complete": True})


def merge_shards(shards: list[Path], out: Path, attrs: dict) -> EpisodeStore:
    """Concatenate complete shard stores into ``out`` (written beside it, then renamed into place)."""
    tmp = out.parent / f".{out.name}.merging"
    merged = EpisodeStore.create(tmp, overwrite=True, attrs=attrs)
    for path in shards:
        shard = EpisodeStore.open(path)
        for ep in range(shard.n_episodes):
            merged.add_episode(shard.get_episode(ep), shard.episode_meta(ep))
    os.replace(tmp, out)
    return EpisodeStore.open(out)


def encode_store(data, out, tokenizer_spec, shards: int = 1, batch_size: int = 64, dtype: str = "float16",
                 image_size: int | None = None, crop_ratio: float | None = None, image_key: str | None = None,
                 device: str = "auto", shard_index: int | None = None, merge_only: bool = False,
                 overwrite: bool = False, progress: bool = True, log=print,
                 restart_stale: bool = False, image_keys: tuple[str, ...] = (),
                 camera_names: tuple[str, ...] = ()) -> Path | None:
    """Encode ``data`` into the latent store ``out``; returns ``out`` once merged (None for a lone shard job).

    ``tokenizer_spec``: as ``--tokenizer``, or a ``TokenizerConfig``. ``restart_stale``: partial shards of another
    job (other tokenizer / transform / shards) are deleted instead of being an error. ``image_keys`` /
    ``camera_names``: several cameras (as ``DatasetConfig``), each encoded into ``latent`` / ``latent_<camera>``."""
    from videoaction.config import DatasetConfig
    from videoaction.nn.tokenizer import build_tokenizer, resolved_config

    out = Path(out)
    if out.exists() and not overwrite:
        raise EncodeError(f"{out}: already exists; pass --overwrite to replace it")
    if dtype not in ("float16", "float32"):
        raise EncodeError(f"--dtype must be float16 or float32, found {dtype!r}")
    source = EpisodeStore.open(data)
    tok_cfg, defaults = resolve_tokenizer(tokenizer_spec)
    dcfg = DatasetConfig(image_key=image_key or defaults.get("image_key", "img"),
                         image_size=image_size or defaults.get("image_size", 64),
                         crop_ratio=crop_ratio if crop_ratio is not None else defaults.get("crop_ratio", 1.0),
                         image_keys=tuple(image_keys), camera_names=tuple(camera_names))
    if image_keys:
        dcfg.image_key = image_keys[0]
    for key in dcfg.image_keys or (dcfg.image_key,):
        if key not in source.keys:
            raise EncodeError(f"{data}: no image key '{key}' (keys: {source.keys}); pass --image-key")
    tokenizer = build_tokenizer(tok_cfg)
    tok_cfg = resolved_config(tokenizer, tok_cfg)
    if dcfg.image_size % tokenizer.stride:
        raise EncodeError(f"--image-size {dcfg.image_size} is not a multiple of the tokenizer stride "
                          f"{tokenizer.stride}")
    info = {"tokenizer": {"kind": tok_cfg.kind, "path": tok_cfg.path, "latent_channels": tokenizer.latent_channels,
                          "stride": tokenizer.stride, "scale": float(tokenizer.scale)},
            "fingerprint": weights_fingerprint(tok_cfg.path), "image_size": dcfg.image_size,
            "crop_ratio": dcfg.crop_ratio, "image_key": dcfg.image_key, "source": str(Path(data).resolve()),
            "source_image_shape": list(source.spec(dcfg.image_key)[0]), "dtype": dtype}
    if len(dcfg.image_keys) > 1:  # several cameras (single-camera caches keep their exact record)
        from videoaction.config import camera_keys

        info["image_keys"], info["camera_names"] = list(dcfg.image_keys), list(camera_keys(dcfg))
    attrs = {**{k: v for k, v in source.attrs.items() if k != LATENT_ATTR}, LATENT_ATTR: info}
    ranges = shard_ranges(source.n_episodes, shards)
    shard_dir = out.parent / f"{out.name}.shards"
    paths = [shard_dir / f"shard_{i:04d}" for i in range(len(ranges))]
    if shard_dir.is_dir():
        recorded = shard_dir / "job.json"
        job = json.loads(json.dumps({"ranges": ranges, "info": info}))
        stale = recorded.is_file() and json.loads(recorded.read_text()) != job
        if stale and restart_stale and int(os.environ.get("RANK", 0)) == 0:
            log(f"{shard_dir}: partial shards of another encode job; starting over")
            shutil.rmtree(shard_dir)
        elif stale and not restart_stale:
            raise EncodeError(f"{shard_dir}: partial shards of a different encode job (other shards/tokenizer/"
                              f"transform); delete it or repeat the original command")
    shard_dir.mkdir(parents=True, exist_ok=True)
    from videoaction.utils.io import atomic_write_json

    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if rank == 0:
        atomic_write_json(shard_dir / "job.json", {"ranges": ranges, "info": info})
    if device == "auto":
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    tokenizer.to(dev).eval()
    mine = [shard_index] if shard_index is not None else [i for i in range(len(ranges)) if i % world == rank]
    if not merge_only:
        from tqdm.auto import tqdm

        todo = [i for i in mine if not _complete(paths[i])]
        n_frames = sum(int(source.episode_ends[b - 1] - (source.episode_ends[a - 1] if a else 0))
                       for a, b in (ranges[i] for i in todo))
        t0 = time.perf_counter()
        with tqdm(total=n_frames, unit="frame", desc="encode", disable=not progress) as bar:
            for i in todo:
                encode_shard(source, paths[i], ranges[i], tokenizer, dcfg, {LATENT_ATTR: info}, batch_size,
                             np.dtype(dtype), dev, bar)
        if todo:
            log(f"encoded {n_frames} frames in {len(todo)} shard(s) in {time.perf_counter() - t0:.1f} s "
                f"({len(mine) - len(todo)} already complete)")
    if shard_index is not None and not merge_only:
        return None
    if rank != 0:
        return None
    if world > 1:
        _wait_for(paths)
    missing = [str(p) for p in paths if not _complete(p)]
    if missing:
        raise EncodeError(f"cannot merge: shards not complete: {missing}")
    if out.exists() and overwrite:
        shutil.rmtree(out)
    merged = merge_shards(paths, out, attrs)
    shutil.rmtree(shard_dir, ignore_errors=True)
    c, h, w = merged.spec("latent")[0]
    log(f"latent store {out}: {merged.n_episodes} episodes, {merged.n_steps} frames, latent ({c}, {h}, {w}) "
        f"{dtype}; keys {merged.keys}")
    return out


def _complete(path: Path) -> bool:
    try:
        return bool(EpisodeStore.open(path).attrs.get("complete"))
    except VideoActionError:
        return False


def _wait_for(paths: list[Path], timeout_s: float = 24 * 3600) -> None:
    t0 = time.time()
    while not all(_complete(p) for p in paths):
        if time.time() - t0 > timeout_s:
            raise EncodeError(f"timed out waiting for shards {[str(p) for p in paths if not _complete(p)]}")
        time.sleep(2.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="videoaction encode", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="episode store with images")
    p.add_argument("--out", required=True, help="latent store to write")
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer dir (tokenizer.json), kl16 weights file, or a run / checkpoint dir (its tokenizer "
                        "and image transform)")
    p.add_argument("--shards", type=int, default=1, help="split the episodes into K shards (resumable units)")
    p.add_argument("--shard-index", type=int, help="encode only this shard (for jobs you launch yourself)")
    p.add_argument("--merge-only", action="store_true", help="merge complete shards into --out")
    p.add_argument("--batch-size", type=int, default=64, help="frames per encoder call")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--image-size", type=int, help="model input size (default: the tokenizer's / run's)")
    p.add_argument("--crop-ratio", type=float, help="centre-crop fraction before resizing (default: the run's, else 1)")
    p.add_argument("--image-key", help="image key of the store (default: the run's, else img)")
    p.add_argument("--image-keys", nargs="+", default=(), help="several cameras: their store keys, main camera "
                   "first (written as latent, latent_<key>; as the run's dataset.image_keys)")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--format", default="store", choices=["store", "hma"],
                   help="store: a latent episode store; hma: HMA's token layout (video.bin, actions/, segment_ids.bin, "
                        "metadata.json + manifest.json; --tokenizer may be an LFQ folder for discrete ids)")
    p.add_argument("--shard-rank", type=int, help="hma: encode only shard R of --shards (join with merge-shards)")
    p.add_argument("--hz", type=float, help="hma: native frame rate recorded in the metadata (default: store attrs)")
    p.add_argument("--frame-stride", type=int, default=1, help="hma: frame stride to the common rate (manifest)")
    p.add_argument("--name", help="hma: dataset (embodiment) name (default: the store's file name)")
    p.add_argument("--action-key", default="action", help="hma: action key of the store")
    p.add_argument("--allow-pickle", action="store_true", help="hma: read a pickled LFQ .ckpt (runs code from it)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.format == "hma":
        from videoaction.data.hma_tokens import encode_store as encode_hma

        encode_hma(args.data, args.out, args.tokenizer, args.shards, args.shard_rank, args.batch_size, args.image_size,
                   args.crop_ratio, args.image_key, args.action_key, args.hz, args.frame_stride, args.name, args.dtype,
                   args.allow_pickle, not args.no_progress)
        return 0
    encode_store(args.data, args.out, args.tokenizer, args.shards, args.batch_size, args.dtype, args.image_size,
                 args.crop_ratio, args.image_key, args.device, args.shard_index, args.merge_only, args.overwrite,
                 not args.no_progress, image_keys=tuple(args.image_keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
