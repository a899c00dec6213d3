"""Everything before the first training step: stage 0, data/model fit checks, model construction, --init.

* Stage 0: a model config whose tokenizer is the project's ``small`` autoencoder without weights (``path=None``)
  gets one trained on the run's own frames (``videoaction.train.tokenizer.train_tokenizer``), saved to
  ``DIR/tokenizer/`` and written into the config. Training from a latent store instead takes the tokenizer the
  store was encoded with (recorded in its attrs) and checks that it matches the model's.
* Sizes: ``model.action_dim`` / ``model.state_dim`` / ``model.obs_image_size`` are filled from the data (and
  reported when they change), so a preset works on any store; anything that cannot fit is a clear error here.
* ``--init DIR``: copy every tensor of a checkpoint whose name and shape match; the report lists what loaded,
  what stayed fresh, what the checkpoint had in excess and every shape mismatch (an error unless partial).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from videoaction.errors import VideoActionError
from videoaction.data.store import EpisodeStore, is_image_array

LATENT_ATTR = "latent_cache"
Log = Callable[[str], None]


class TrainSetupError(VideoActionError):
    """The dataset, the model config and the checkpoints of a run do not fit together."""


# ------------------------------------------------------------------------------------------ tokenizer identity
def weights_fingerprint(path) -> str | None:
    """sha256 (first 16 hex) of a tokenizer's weights file (a directory: its tokenizer.safetensors)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.safetensors"
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def latent_cache_info(store: EpisodeStore) -> dict | None:
    return store.attrs.get(LATENT_ATTR)


def uses_latents(store: EpisodeStore, cfg) -> bool:
    from videoaction.config import store_image_keys

    keys = store.keys
    return cfg.dataset.latent_key in keys and store_image_keys(cfg.dataset)[0] not in keys


def _tokenizer_cfg(cfg):
    return getattr(cfg.model, "tokenizer", None) if cfg.model is not None else None


# ------------------------------------------------------------------------------------------ stage 0 / latents
def prepare_tokenizer(cfg, run_dir: Path, store: EpisodeStore, steps: int, batch_size: int, log: Log,
                      is_main: bool, wait: Callable[[], None], progress: bool = True) -> dict | None:
    """Stage 0 or latent-cache match; mutates ``cfg.model.tokenizer``. Returns a report dict (or None)."""
    tok = _tokenizer_cfg(cfg)
    if tok is None:
        return None
    if uses_latents(store, cfg):
        return _match_latent_store(cfg, tok, store, log)
    if tok.path is None and cfg.init:  # stage 2: the tokenizer stage 1 was trained with
        inherited = _init_tokenizer(cfg.init, tok.kind)
        if inherited:
            tok.path = inherited
            log(f"tokenizer: using the one of --init {cfg.init} ({inherited})")
            return {"inherited_from": str(cfg.init), "path": inherited}
    if tok.kind != "small" or tok.path is not None:
        return None
    out = run_dir / "tokenizer"
    report = {"stage": 0, "path": str(out)}
    wait()  # every rank sees the same state of DIR/tokenizer before deciding
    if (out / "tokenizer.json").is_file():
        log(f"stage 0: reusing the tokenizer already trained for this run at {out}")
        report["reused"] = True
    else:
        if is_main:
            from videoaction.train.tokenizer import train_tokenizer

            log(f"stage 0: preset {cfg.preset!r} uses the small autoencoder and none was given "
                f"(--model.tokenizer.path); training it on {cfg.data} for {steps} steps")
            results: list = []
            train_tokenizer(cfg.data, out, dataclasses.replace(tok, path=None), steps=steps, batch_size=batch_size,
                            image_key=cfg.dataset.image_key, image_size=cfg.dataset.image_size, seed=cfg.seed,
                            log=log, result=results, progress=progress)
            if results:
                r = results[0]
                report.update(psnr_val=r.psnr_val, psnr_init=r.psnr_init, scale=r.scale,
                              train_time_s=r.train_time_s)
        wait()
    tok.path = str(out.resolve())
    report["path"] = tok.path
    return report


LATENT_CACHE_DIR = "latents.zarr"  # the run's own latent cache (``TrainOptions.latent_cache="auto"``)


def latent_cache_blocker(cfg, store: EpisodeStore) -> str | None:
    """Why training on ``store`` cannot use a latent cache of its frames (None = it can).

    A cache holds one latent per frame: valid when the tokenizer is frozen and deterministic (posterior mean) and
    the training transform of the frames is too (no random crop / shift / colour jitter)."""
    tok, ds = _tokenizer_cfg(cfg), cfg.dataset
    if tok is None:
        return f"the {cfg.family} model has no tokenizer"
    if uses_latents(store, cfg):
        return "the store already holds latents"
    from videoaction.config import store_image_keys

    missing = [k for k in store_image_keys(ds) if k not in store.keys]
    if missing:
        return f"the store has no image key '{missing[0]}'"
    if tok.path is None:
        return "the tokenizer has no weights (model.tokenizer.path)"
    if not getattr(tok, "frozen", True):
        return "the tokenizer is trained with the model (model.tokenizer.frozen False)"
    if getattr(cfg.model, "sample_latents", False):
        return "model.sample_latents draws a new posterior sample every step"
    random = [f"{k}={getattr(ds, k)}" for k, off in (("crop_ratio", 1.0), ("random_shift", 0), ("color_jitter", 0.0))
              if getattr(ds, k, off) != off]
    if random:
        return f"the training transform is random ({', '.join(random)})"
    return None


def _cache_matches(path: Path, cfg, tok) -> bool:
    try:
        info = latent_cache_info(EpisodeStore.open(path)) or {}
    except VideoActionError:
        return False
    ds = cfg.dataset
    want = {"source": str(Path(cfg.data).resolve()), "fingerprint": weights_fingerprint(tok.path),
            "image_size": ds.image_size, "crop_ratio": ds.crop_ratio, "image_key": ds.image_key}
    if len(ds.image_keys) > 1:
        from videoaction.config import camera_keys

        want.update(image_key=ds.image_keys[0], image_keys=list(ds.image_keys), camera_names=list(camera_keys(ds)))
    elif ds.image_keys:  # one camera named by image_keys
        want["image_key"] = ds.image_keys[0]
    return all(info.get(k) == v for k, v in want.items())


def auto_latent_cache(cfg, store: EpisodeStore, run_dir: Path, log: Log, wait: Callable[[], None],
                      device: str = "auto", progress: bool = True) -> EpisodeStore | None:
    """The run's latent cache ``DIR/latents.zarr`` of the image store ``store``, encoded once by the frozen
    tokenizer (``videoaction encode``'s code: sharded over processes, resumable after a kill, reused on --resume
    when the source, tokenizer weights and transform are unchanged). None (and why, in the log) when the run
    cannot use one (:func:`latent_cache_blocker`). Call on every process."""
    why = latent_cache_blocker(cfg, store)
    if why is not None:
        if _tokenizer_cfg(cfg) is not None and not uses_latents(store, cfg):
            log(f"latent cache: off ({why}); the tokenizer encodes the frames at every step")
        return None
    from videoaction.train.encode import encode_store

    tok, ds = _tokenizer_cfg(cfg), cfg.dataset
    out = run_dir / LATENT_CACHE_DIR
    wait()  # every process sees the same state of DIR/latents.zarr before deciding
    if out.exists() and _cache_matches(out, cfg, tok):
        log(f"latent cache: reusing {out}")
    else:
        log(f"latent cache: encoding the frames of {cfg.data} once with the frozen {tok.kind} tokenizer into {out} "
            f"(resumable; TrainOptions.latent_cache='off' / --latent-cache off trains from images)")
        import os

        encode_store(cfg.data, out, tok, shards=max(1, int(os.environ.get("WORLD_SIZE", 1))),
                     image_size=ds.image_size, crop_ratio=ds.crop_ratio, image_key=ds.image_key, device=device,
                     image_keys=ds.image_keys, camera_names=ds.camera_names,
                     overwrite=out.exists(), restart_stale=True, progress=progress, log=log)
        wait()
    return EpisodeStore.open(out)


def _init_tokenizer(init, kind: str) -> str | None:
    """Weights path of the tokenizer in the run config of checkpoint ``init`` (same kind, still on disk)."""
    import json

    from videoaction.train.checkpoint import resolve_checkpoint

    try:
        saved = json.loads((resolve_checkpoint(init) / "config.json").read_text())
    except (VideoActionError, OSError, ValueError):
        return None
    tok = (saved.get("model") or {}).get("tokenizer") or {}
    path = tok.get("path")
    return path if tok.get("kind") == kind and path and Path(path).exists() else None


def _match_latent_store(cfg, tok, store: EpisodeStore, log: Log) -> dict:
    info = latent_cache_info(store)
    if info is None:
        raise TrainSetupError(f"{store.path}: holds '{cfg.dataset.latent_key}' but no '{LATENT_ATTR}' attrs; "
                              f"write latent stores with `videoaction encode`")
    stored = info["tokenizer"]
    if tok.path is None:
        if not stored.get("path") or not Path(stored["path"]).exists():
            raise TrainSetupError(f"{store.path}: encoded with the tokenizer at {stored.get('path')!r}, which no "
                                  f"longer exists; pass --model.tokenizer.path (the model decodes with it)")
        tok.path = stored["path"]
        log(f"latent cache: using the tokenizer the store was encoded with ({tok.path})")
    fp = weights_fingerprint(tok.path)
    if info.get("fingerprint") and fp and fp != info["fingerprint"]:
        raise TrainSetupError(f"{store.path}: latents were encoded with other tokenizer weights (sha256 "
                              f"{info['fingerprint']}) than --model.tokenizer.path {tok.path} (sha256 {fp}); "
                              f"re-encode with `videoaction encode --tokenizer {tok.path}`")
    for key in ("image_size", "crop_ratio"):
        if key in info and info[key] != getattr(cfg.dataset, key):
            raise TrainSetupError(f"{store.path}: latents were encoded at dataset.{key}={info[key]} but the run "
                                  f"uses dataset.{key}={getattr(cfg.dataset, key)}")
    return {"latent_cache": str(store.path), "tokenizer": tok.path}


def check_latent_fit(cfg, dataset) -> None:
    """After the model resolved its tokenizer: the latent store's tokenizer and latent shape match it."""
    if not dataset.use_latents:
        return
    tok, path = _tokenizer_cfg(cfg), dataset.store.path
    if tok is None:
        raise TrainSetupError(f"{path} is a latent store, but the {cfg.family} model reads images; train it on the "
                              f"image store")
    stored = (latent_cache_info(dataset.store) or {}).get("tokenizer", {})
    for key in ("kind", "latent_channels", "stride"):
        if stored.get(key) != getattr(tok, key):
            raise TrainSetupError(f"{path}: latents were encoded by a {stored.get('kind')} tokenizer with {key}="
                                  f"{stored.get(key)!r} but the model's tokenizer has {key}={getattr(tok, key)!r}; "
                                  f"re-encode with the run's tokenizer")
    scale = stored.get("scale")
    if scale is not None and tok.scale is not None and abs(scale - tok.scale) > 1e-6 * abs(tok.scale):
        raise TrainSetupError(f"{path}: latents were scaled by {stored['scale']} but the model's tokenizer scale is "
                              f"{tok.scale}; re-encode with the run's tokenizer")
    c, h, w = dataset.frame_shape
    s = cfg.dataset.image_size // tok.stride
    if (c, h, w) != (tok.latent_channels, s, s):
        raise TrainSetupError(f"{path}: latents are ({c}, {h}, {w}) per frame but the model expects "
                              f"({tok.latent_channels}, {s}, {s}) at dataset.image_size {cfg.dataset.image_size}")


# ------------------------------------------------------------------------------------------ sizes
def fill_model_sizes(cfg, dataset, log: Log) -> None:
    """Set the model's data-dependent sizes from the training dataset (reported when they change)."""
    m = cfg.model
    if m is None:
        return
    found = {"action_dim": dataset.action_dim}
    if dataset.state is not None:
        found["state_dim"] = dataset.state_dim
    elif getattr(m, "state_dim", 0) and (getattr(m, "use_state", True)):
        raise TrainSetupError(f"the model uses proprioception (model.state_dim={m.state_dim}) but the dataset has "
                              f"no state (dataset.state_key=None); set dataset.state_key or model.state_dim 0")
    if not dataset.use_latents:
        shape = dataset.frame_shape  # (H, W, 3)
        if shape[0] == shape[1]:
            found["obs_image_size"] = int(shape[0])
    else:
        info = latent_cache_info(dataset.store) or {}
        if info.get("source_image_shape"):
            h, w = info["source_image_shape"][:2]
            if h == w:
                found["obs_image_size"] = int(h)
    for name, value in found.items():
        if hasattr(m, name) and getattr(m, name) != value:
            log(f"model.{name}: {getattr(m, name)} -> {value} (from the data)")
            setattr(m, name, value)
    if hasattr(m, "state_dim") and dataset.state is not None and cfg.dataset.state_dims is None:
        cfg.dataset.state_dims = dataset.state_dim
    store_attrs = getattr(getattr(dataset, "store", None), "attrs", None) or {}
    if not getattr(cfg.dataset, "action_convention", "x") and store_attrs.get("action_convention"):
        cfg.dataset.action_convention = str(store_attrs["action_convention"])  # saved with the checkpoint
        log(f"dataset.action_convention: {cfg.dataset.action_convention} (from the data)")
    text = getattr(m, "text", None)  # a learned per-instruction embedding: its vocabulary is the data's instructions
    if text is not None and text.kind == "task_embedding" and not text.vocabulary and dataset.language is not None:
        text.vocabulary = tuple(sorted({v.strip() for v in dataset.language}))
        log(f"model.text.vocabulary: {len(text.vocabulary)} instructions (from the data)")


def check_policy_fits(policy, dataset, log: Log | None = None) -> None:
    if policy.action_dim != dataset.action_dim:
        raise TrainSetupError(f"the model predicts {policy.action_dim}-D actions but {dataset.store.path} key "
                              f"'data/{dataset.cfg.action_key}' holds {dataset.action_dim}-D actions")
    need = policy.aligned_padding() if hasattr(policy, "aligned_padding") else None
    have = (dataset.cfg.pad_before, dataset.cfg.pad_after)
    if log is not None and need is not None and (have[0] < need[0] or have[1] < need[1]):
        log(f"note: dataset.pad_before / pad_after = {have[0]} / {have[1]}, but {need[0]} / {need[1]} make the "
            f"training windows cover every step a rollout reaches (episode start included); steps outside are "
            f"never trained")


# ------------------------------------------------------------------------------------------ init
def load_init(policy: nn.Module, path, partial: bool, log: Log) -> dict[str, Any]:
    """Copy matching tensors of checkpoint ``path`` (EMA weights when present) into ``policy``; report."""
    from videoaction.train.checkpoint import resolve_checkpoint
    from videoaction.utils.io import load_state_dict

    ckpt = resolve_checkpoint(path)
    weights = ckpt / ("ema.safetensors" if (ckpt / "ema.safetensors").is_file() else "model.safetensors")
    source = load_state_dict(weights)
    own = policy.state_dict()
    loaded, mismatched, kept = [], [], []
    new_state = {}
    for name, tensor in source.items():
        if name.startswith("normalizer."):
            kept.append(name)  # statistics fitted on this run's data win
        elif name in own and own[name].shape == tensor.shape:
            new_state[name] = tensor
            loaded.append(name)
        elif name in own:
            mismatched.append(f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(own[name].shape)}")
    unexpected = sorted(n for n in source if n not in own)
    fresh = sorted(n for n in own if n not in source and not n.startswith("normalizer."))
    report = {"source": str(weights), "loaded": len(loaded), "fresh": fresh, "unexpected": unexpected,
              "shape_mismatch": mismatched, "normalizer_kept_from_data": len(kept)}
    if not loaded:
        raise TrainSetupError(f"--init {path}: no tensor of {weights} matches the model (is it another family or "
                              f"size?); {len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
    if mismatched and not partial:
        raise TrainSetupError(f"--init {path}: {len(mismatched)} tensors have other shapes than the model: "
                              f"{mismatched[:8]}; fix the config or pass --init-partial to skip them")
    policy.load_state_dict(new_state, strict=False)
    log(f"init from {weights}: loaded {len(loaded)}/{len(own)} tensors; fresh {len(fresh)} "
        f"({_prefixes(fresh)}); unexpected {len(unexpected)} ({_prefixes(unexpected)}); "
        f"shape mismatches {len(mismatched)}{' (skipped)' if mismatched else ''}")
    return report


def _prefixes(names: list[str], depth: int = 2) -> str:
    groups: dict[str, int] = {}
    for n in names:
        key = ".".join(n.split(".")[:depth])
        groups[key] = groups.get(key, 0) + 1
    items = sorted(groups.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} x{v}" for k, v in items[:6]) + (" ..." if len(items) > 6 else "") if items else "-"


def init_from_mar_weights(policy: nn.Module, path, allow_pickle: bool, log: Log) -> dict:
    """``--init-mar``: MAR(-B) tensors whose name and shape match (``models.convert.init_from_mar`` logs them)."""
    if not hasattr(policy, "model") or getattr(policy, "family", "") != "uva":
        raise TrainSetupError("--init-mar initialises UVA models only")
    from videoaction.models.convert import init_from_mar

    report = init_from_mar(policy, path, allow_pickle=allow_pickle, log=log)
    if not report.get("copied"):
        raise TrainSetupError(f"--init-mar {path}: no tensor matched the UVA model (wrong file or model size?)")
    return {"source": str(path), "loaded": len(report["copied"]), **report}


# ------------------------------------------------------------------------------------------ optimizer
def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on >= 2-D weights; none on 1-D parameters (norms, biases, embeddings of dim 1)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def copy_low_dim_keys(store: EpisodeStore) -> list[str]:
    """Data keys of a store that are not images (copied into latent stores)."""
    out = []
    for key in store.keys:
        shape, _ = store.spec(key)
        if not is_image_array((0, *shape)):
            out.append(key)
    return out


def count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def batch_shapes(batch: dict) -> dict:
    return {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__) for k, v in batch.items()}
