"""Reading, converting and building tokenizers. Weights never silently fall back to random values."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch

from videoaction.utils.io import atomic_write_json, load_state_dict, save_state_dict

from .base import Tokenizer
from .config import KL16_SCALE, TokenizerConfig, TokenizerError
from .kl16 import KL16Autoencoder, check_state_dict
from .small import SmallAutoencoder

WEIGHTS_NAME, CONFIG_NAME = "tokenizer.safetensors", "tokenizer.json"
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def read_weights(path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and JSON config (``{}`` if none) from a directory, a ``.safetensors`` file or a torch pickle.

    A pickle (MAR's ``kl16.ckpt`` is ``{"model": state_dict}``) is read only with ``allow_pickle=True``; it is
    first tried with torch's restricted ``weights_only`` unpickler and only then with the full one.
    """
    path = Path(path)
    if path.is_dir():
        wfile, cfile = path / WEIGHTS_NAME, path / CONFIG_NAME
        if not wfile.is_file():
            raise TokenizerError(f"{path}: no {WEIGHTS_NAME} in this directory (train one with `videoaction "
                                 f"tokenizer` or convert kl16 with `videoaction convert`)")
        cfg = json.loads(cfile.read_text()) if cfile.is_file() else {}
        return load_state_dict(wfile), cfg
    if not path.is_file():
        raise TokenizerError(f"{path}: tokenizer weights not found")
    if path.suffix == ".safetensors":
        side = path.with_suffix(".json")
        return load_state_dict(path), (json.loads(side.read_text()) if side.is_file() else {})
    if not allow_pickle:
        raise TokenizerError(f"{path}: a pickled checkpoint can run arbitrary code when read; pass allow_pickle=True "
                             f"(CLI: --allow-pickle) if you trust it, or convert it once to safetensors")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise TokenizerError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TokenizerError(f"{path}: expected a state dict or {{'model': state_dict}}, found {type(obj).__name__}")
    return dict(obj), {}


def kl16_arch(sd: Mapping[str, torch.Tensor]) -> dict:
    """kl16 architecture ``{ch, ch_mult, embed_dim}`` inferred from its state-dict shapes (narrow test copies too)."""
    try:
        ch = int(sd["encoder.conv_in.weight"].shape[0])
        n_levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down."))
        mult = [int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in range(n_levels)]
        return {"ch": ch, "ch_mult": mult, "embed_dim": int(sd["post_quant_conv.weight"].shape[0])}
    except (KeyError, ValueError) as exc:
        raise TokenizerError(f"kl16 weights: cannot infer the architecture (missing {exc})") from None


def _kl16_arch(sd: dict[str, torch.Tensor], cfg: dict) -> dict:
    """Architecture from the saved JSON, else inferred from tensor shapes."""
    if "arch" in cfg:
        return dict(cfg["arch"])
    try:
        return kl16_arch(sd)
    except TokenizerError:
        return {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "embed_dim": 16}  # let the key check report the gaps


def tokenizer_from_state(cfg: TokenizerConfig, sd: Mapping[str, torch.Tensor], source: str) -> Tokenizer:
    """The (untrained) tokenizer module a checkpoint's tokenizer tensors ``sd`` fit; load them into it afterwards."""
    if not sd:
        raise TokenizerError(f"{source}: no tokenizer weights in this checkpoint")
    if cfg.kind == "kl16":
        a = kl16_arch(sd)
        return KL16Autoencoder(a["ch"], tuple(a["ch_mult"]), a["embed_dim"],
                               cfg.scale if cfg.scale is not None else KL16_SCALE)
    return SmallAutoencoder.from_config(cfg)


def load_kl16(path, allow_pickle: bool = False, scale: float | None = None) -> KL16Autoencoder:
    """MAR's kl16 VAE from ``kl16.ckpt`` (pickle: ``allow_pickle=True``), a safetensors file or a converted dir.

    Raises ``TokenizerError`` naming every missing, unexpected and mis-shaped key unless the weights fit exactly.
    """
    sd, cfg = read_weights(path, allow_pickle)
    if cfg.get("kind", "kl16") != "kl16":
        raise TokenizerError(f"{path}: holds a '{cfg['kind']}' tokenizer, not kl16")
    sd = {k[len("vae_model."):] if k.startswith("vae_model.") else k: v for k, v in sd.items()}  # UVA prefix
    arch = _kl16_arch(sd, cfg)
    model = KL16Autoencoder(arch["ch"], tuple(arch["ch_mult"]), arch["embed_dim"],
                            scale if scale is not None else cfg.get("scale", KL16_SCALE))
    check_state_dict(model, sd, str(path))
    model.load_state_dict(sd, strict=True)
    return model.eval()


def convert_kl16(src, dst, allow_pickle: bool = False) -> Path:
    """MAR ``kl16.ckpt`` (or safetensors) -> directory ``dst`` with tokenizer.safetensors + tokenizer.json."""
    model = load_kl16(src, allow_pickle=allow_pickle)
    return save_tokenizer(model, dst, extra={"source": str(src)})


def save_tokenizer(model: Tokenizer, out_dir, extra: dict | None = None) -> Path:
    """Write ``out_dir/tokenizer.safetensors`` and ``tokenizer.json`` atomically; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, KL16Autoencoder):
        cfg = {"kind": "kl16", "latent_channels": model.latent_channels, "stride": model.stride,
               "scale": model.scale, "arch": model.arch}
    elif isinstance(model, SmallAutoencoder):
        cfg = model.config_dict()
    else:
        raise TypeError(f"cannot save a {type(model).__name__}")
    cfg["n_params"] = sum(p.numel() for p in model.parameters())
    cfg.update(extra or {})
    (out / CONFIG_NAME).unlink(missing_ok=True)  # no JSON = incomplete: a kill below never pairs new/old files
    save_state_dict(model.state_dict(), out / WEIGHTS_NAME, metadata={"format": "pt", "kind": cfg["kind"]})
    atomic_write_json(out / CONFIG_NAME, cfg)  # written last: its presence marks a complete save
    return out


def load_small(path) -> SmallAutoencoder:
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise TokenizerError(f"{path}: no {CONFIG_NAME}; expected a directory written by `videoaction tokenizer`")
    sd, cfg = read_weights(path)
    if cfg.get("kind") != "small":
        raise TokenizerError(f"{path}: holds a '{cfg.get('kind')}' tokenizer, not small")
    if cfg.get("scale") is None:
        raise TokenizerError(f"{path}/{CONFIG_NAME}: no latent 'scale' (training did not finish?)")
    model = SmallAutoencoder(cfg["latent_channels"], cfg["stride"], tuple(cfg["channels"]), cfg["kl"], cfg["scale"])
    check_state_dict(model, sd, str(path))
    model.load_state_dict(sd, strict=True)
    return model.eval()


def build_tokenizer(cfg: TokenizerConfig, allow_random: bool = False) -> Tokenizer:
    """The tokenizer ``cfg`` names, with its weights. ``cfg.path=None`` is an error unless ``allow_random=True``
    (a fresh, untrained module -- for training it, or for shape tests)."""
    if cfg.kind not in ("kl16", "small"):
        raise TokenizerError(f"unknown tokenizer kind '{cfg.kind}' (expected 'kl16' or 'small')")
    if cfg.path is None:
        if not allow_random:
            raise TokenizerError(f"{cfg.kind} tokenizer: no weights path given (TokenizerConfig.path); refusing to "
                                 f"build random weights. Train one with `videoaction tokenizer --data STORE --out DIR`"
                                 f" (small) or convert MAR's kl16.ckpt (kl16); pass allow_random=True only to train")
        if cfg.kind == "kl16":
            model: Tokenizer = KL16Autoencoder(scale=cfg.scale if cfg.scale is not None else KL16_SCALE)
        else:
            model = SmallAutoencoder.from_config(cfg)
    elif cfg.kind == "kl16":
        model = load_kl16(cfg.path, allow_pickle=cfg.allow_pickle, scale=cfg.scale)
    else:
        model = load_small(cfg.path)
    if cfg.frozen:
        model.requires_grad_(False).eval()
    return model


def resolved_config(model: Tokenizer, cfg: TokenizerConfig) -> TokenizerConfig:
    """``cfg`` with the loaded model's latent_channels / stride / scale filled in (for saving in run configs)."""
    return replace(cfg, latent_channels=model.latent_channels, stride=model.stride, scale=model.scale)
