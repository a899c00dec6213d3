"""``videoaction convert``: reference checkpoints -> our formats; MAR initialisation of a UVA model.

* ``--kind uva``: a released UVA ``.ckpt`` (torch pickle of ``{cfg, state_dicts: {model, ema_model, ...},
  pickles}``) -> a checkpoint directory (``config.json`` + ``model.safetensors`` [+ ``ema.safetensors``]) that
  :func:`videoaction.models.base.load_policy` reads. MAR-module keys ``model.*`` map unchanged, ``vae_model.*`` ->
  ``tokenizer.*``, ``text_model.*`` (CLIP) is dropped (re-read from a local CLIP), DP's normaliser
  ``normalizer.params_dict.<field>.{scale, offset, input_stats.*}`` -> ``normalizer.fields.<field>.*``. Sizes are
  inferred from tensor shapes (and the stored config where readable). Missing / unexpected keys are reported and,
  for the MAR module, must be zero.
* ``--kind kl16``: MAR's ``kl16.ckpt`` -> tokenizer directory (``tokenizer.safetensors`` + ``tokenizer.json``).
* ``--kind mar``: MAR ``checkpoint-last.pth`` -> ``mar.safetensors`` (its ``model_ema``), for :func:`init_from_mar`.
* ``--kind vpp-dp-calvin``: VPP's released action checkpoint -> ``vpp_action.safetensors`` (Video Former + action
  head with ``reference_compat``); key map in :mod:`videoaction.models.vpp.convert_dp`.

Pickles can run code when read: they are opened only with ``--allow-pickle``. Unknown classes inside the pickle
(OmegaConf, dill) are replaced by inert placeholders, so neither package is needed.
"""

from __future__ import annotations

import argparse
import math
import pickle
import types
from pathlib import Path
from typing import Any, Mapping

import torch

from videoaction.errors import VideoActionError

_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
_MAR_HEADS = {"mar_tiny": 6, "mar_small": 6, "mar_base": 12, "mar_large": 16, "mar_huge": 16}


class ConvertError(VideoActionError):
    """A checkpoint that cannot be read or does not fit the target layout."""


# ------------------------------------------------------------------------------------------------ reading
class _Placeholder:
    """Stands in for any class the pickle names that is not importable (keeps args and state for inspection)."""

    def __init__(self, *args, **kwargs):
        self._args, self._kwargs, self._state = args, kwargs, None

    def __setstate__(self, state):
        self._state = state

    def __call__(self, *args, **kwargs):  # dill pickles functions/factories; calling them yields another stub
        return _Placeholder(*args, **kwargs)


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Placeholder,), {"__module__": "placeholder." + module})


_lenient = types.SimpleNamespace(Unpickler=_LenientUnpickler, load=lambda f, **kw: _LenientUnpickler(f, **kw).load(),
                                 __name__="videoaction_lenient_pickle")


def read_pickle(path, allow_pickle: bool) -> Any:
    """``torch.load`` a pickled checkpoint; refuses unless ``allow_pickle``."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: file not found")
    if not allow_pickle:
        raise ConvertError(f"{path}: this checkpoint is a Python pickle, which can run arbitrary code when read; "
                           f"pass --allow-pickle (allow_pickle=True) only if you trust its source")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_lenient)
    except Exception as exc:
        raise ConvertError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def plain(obj: Any, depth: int = 0) -> Any:
    """OmegaConf objects (real or placeholders) -> plain dicts/lists (best effort; unknown leaves -> None)."""
    if depth > 40:
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, depth + 1) for v in obj]
    try:  # a real OmegaConf container
        from omegaconf import OmegaConf  # type: ignore

        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=False)
    except Exception:
        pass
    state = getattr(obj, "_state", None) if isinstance(obj, _Placeholder) else getattr(obj, "__dict__", None)
    if isinstance(state, Mapping):
        if "_content" in state:
            return plain(state["_content"], depth + 1)
        if "_val" in state:
            return plain(state["_val"], depth + 1)
        inner = state.get("__dict__") if isinstance(state.get("__dict__"), Mapping) else None
        if inner is not None and ("_content" in inner or "_val" in inner):
            return plain(inner.get("_content", inner.get("_val")), depth + 1)
    if isinstance(state, tuple):
        for part in state:
            if isinstance(part, Mapping) and ("_content" in part or "_val" in part):
                return plain(part.get("_content", part.get("_val")), depth + 1)
    return None


def find_key(tree: Any, name: str) -> Any:
    """First value stored under ``name`` anywhere in a nested dict/list (None if absent)."""
    if isinstance(tree, Mapping):
        if name in tree and tree[name] is not None:
            return tree[name]
        for v in tree.values():
            found = find_key(v, name)
            if found is not None:
                return found
    elif isinstance(tree, list):
        for v in tree:
            found = find_key(v, name)
            if found is not None:
                return found
    return None


def _strip_module(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("module.", ""): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def split_reference_state(sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Reference policy state dict -> {"model", "tokenizer", "normalizer", "dropped"} parts (prefixes removed)."""
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "tokenizer": {}, "normalizer": {}, "dropped": {}}
    for k, v in _strip_module(sd).items():
        if k.startswith("model."):
            parts["model"][k[len("model."):]] = v
        elif k.startswith("vae_model."):
            parts["tokenizer"][k[len("vae_model."):]] = v
        elif k.startswith("normalizer.params_dict."):
            parts["normalizer"][k[len("normalizer.params_dict."):]] = v
        else:
            parts["dropped"][k] = v  # text_model.* (CLIP) and anything else
    return parts


# ------------------------------------------------------------------------------------------------ config inference
def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return 1 + max(idx) if idx else 0


def infer_run_config(model_sd: Mapping[str, torch.Tensor], ref_cfg: Any = None, obs_image_size: int | None = None,
                     num_heads: int | None = None):
    """A :class:`UVARunConfig` whose network has exactly the shapes of ``model_sd`` (the MAR module)."""
    from videoaction.models.uva.config import uva_base, uva_base_lang

    sd = model_sd
    try:
        d = int(sd["fake_latent_x"].shape[1])
        n_future = int(sd["temporal_pos_embed"].shape[1])
        seq = int(sd["spatial_pos_embed"].shape[1])
        latent_c = int(sd["z_proj.weight"].shape[1])
        a_dim = int(sd["action_proj_cond.weight"].shape[1])
        head_w = int(sd["diffloss.net.input_proj.weight"].shape[0])
    except KeyError as exc:
        raise ConvertError(f"not a UVA MAR-module state dict: missing {exc}") from None
    g = math.isqrt(seq)
    if g * g != seq:
        raise ConvertError(f"spatial_pos_embed has {seq} positions, not a square token grid")
    language = "text_proj_cond.weight" in sd
    run = uva_base_lang() if language else uva_base()
    m = run.model
    m.size = "converted"
    m.width, m.action_dim = d, a_dim
    m.encoder_depth, m.decoder_depth = _count(sd, "encoder_blocks."), _count(sd, "decoder_blocks.")
    m.mlp_ratio = sd["encoder_blocks.0.mlp.fc1.weight"].shape[0] / d if m.encoder_depth else 4.0
    model_size = find_key(ref_cfg, "model_size")
    m.num_heads = num_heads or _MAR_HEADS.get(str(model_size), max(1, d // 64))
    m.video_head.width, m.video_head.depth = head_w, _count(sd, "diffloss.net.res_blocks.")
    m.predict_action = any(k.startswith("diffactloss.") for k in sd)
    if m.predict_action:
        m.action_head.width = int(sd["diffactloss.net.input_proj.weight"].shape[0])
        m.action_head.depth = _count(sd, "diffactloss.net.res_blocks.")
        m.n_actions = int(sd["diffactloss.interpolate.weight"].shape[0])
        m.action_pool = math.isqrt(int(sd["diffactloss.fc.0.weight"].shape[1]) // d)
    else:
        m.task_modes = ("video_model",)
    if language:
        m.text_dim = int(sd["text_proj_cond.weight"].shape[1])
        m.text_tokens = int(sd["text_pos_embed"].shape[1])
    if "proprioception_proj_cond.weight" in sd:
        m.use_state, m.state_dim = True, int(sd["proprioception_proj_cond.weight"].shape[1])
    if "diffproploss.net.input_proj.weight" in sd:
        m.predict_state, m.state_dim = True, int(sd["diffproploss.net.input_proj.weight"].shape[1])
    if "history_action_proj_cond.weight" in sd:
        m.use_history_action = True
    for key, attr in (("n_action_steps", "n_action_steps"), ("shift_action", "shift_action"),
                      ("temperature", "temperature"), ("num_iter", "num_iter")):
        v = find_key(ref_cfg, key)
        if isinstance(v, (int, float, bool)) and not isinstance(v, str):
            setattr(m, attr, type(getattr(m, attr))(v))
    m.tokenizer.latent_channels = latent_c
    stride = m.tokenizer.stride
    run.dataset.image_size = g * stride
    run.dataset.frames.n_history = run.dataset.frames.n_future = n_future
    if obs_image_size:
        m.obs_image_size = obs_image_size
    else:
        shape = find_key(find_key(ref_cfg, "shape_meta"), "shape")
        if isinstance(shape, list) and len(shape) == 3:
            m.obs_image_size = int(shape[1])
    return run


# ------------------------------------------------------------------------------------------------ conversions
def convert_uva(src, dst, allow_pickle: bool = False, obs_image_size: int | None = None,
                num_heads: int | None = None, strict: bool = True, log=print) -> dict:
    """Released UVA ``.ckpt`` -> checkpoint directory; returns a report (missing / unexpected keys per part)."""
    from videoaction.config import to_dict
    from videoaction.models.base import EMA_FILE
    from videoaction.models.uva.policy import UVAPolicy
    from videoaction.nn.tokenizer import tokenizer_from_state
    from videoaction.utils.io import save_state_dict

    ckpt = read_pickle(src, allow_pickle)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dicts"), Mapping):
        raise ConvertError(f"{src}: expected a UVA checkpoint dict with 'state_dicts', found "
                           f"{sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__}")
    sds = ckpt["state_dicts"]
    names = [n for n in ("ema_model", "model") if isinstance(sds.get(n), Mapping)]
    if not names:
        raise ConvertError(f"{src}: state_dicts has neither 'ema_model' nor 'model' (found {sorted(sds)})")
    ref_cfg = plain(ckpt.get("cfg"))
    parts = {n: split_reference_state(sds[n]) for n in names}
    main = parts[names[0]]  # ema preferred for the inferred config
    run = infer_run_config(main["model"], ref_cfg, obs_image_size, num_heads)
    if not main["tokenizer"]:
        raise ConvertError(f"{src}: no vae_model.* weights (kl16); cannot build a self-contained checkpoint")
    tok = tokenizer_from_state(run.model.tokenizer, main["tokenizer"], str(src))
    policy = UVAPolicy(run, tokenizer=tok)
    report: dict[str, Any] = {"source": str(src), "weights": names, "dropped": sorted(main["dropped"])[:5],
                              "n_dropped": len(main["dropped"])}
    states = {}
    for n in names:
        p = parts[n]
        sd = {f"model.{k}": v for k, v in p["model"].items()}
        sd.update({f"tokenizer.{k}": v for k, v in p["tokenizer"].items()})
        sd.update(_map_normalizer(p["normalizer"], policy, report))
        own = policy.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        shapes = sorted(k for k in set(sd) & set(own) if tuple(sd[k].shape) != tuple(own[k].shape))
        report[n] = {"missing": missing, "unexpected": unexpected, "mis_shaped": shapes,
                     "model_keys": len(p["model"])}
        bad_model = [k for k in missing + unexpected + shapes if k.startswith(("model.", "tokenizer."))]
        if strict and bad_model:
            raise ConvertError(f"{src} [{n}]: the MAR/VAE weights do not fit the inferred layout: "
                               f"{len(missing)} missing {missing[:8]}, {len(unexpected)} unexpected "
                               f"{unexpected[:8]}, mis-shaped {shapes[:8]}")
        policy.load_state_dict({k: v for k, v in sd.items() if k in own and k not in shapes}, strict=False)
        states[n] = {k: v.clone() for k, v in policy.state_dict().items()}
    dst = Path(dst)
    policy.load_state_dict(states["model" if "model" in states else names[0]])
    cfg = to_dict(run)
    cfg["preset"] = "converted"
    policy.save_pretrained(dst, cfg)
    if "ema_model" in states:
        save_state_dict(states["ema_model"], dst / EMA_FILE)
    report["config"] = {k: cfg["model"][k] for k in ("width", "encoder_depth", "decoder_depth", "num_heads",
                                                     "action_dim", "n_actions", "language", "predict_action")}
    for n in names:
        r = report[n]
        log(f"{n}: {r['model_keys']} MAR keys; missing {len(r['missing'])}, unexpected {len(r['unexpected'])}, "
            f"mis-shaped {len(r['mis_shaped'])}" + (f" ({(r['missing'] + r['unexpected'])[:6]})"
                                                   if r["missing"] or r["unexpected"] else ""))
    log(f"dropped {report['n_dropped']} tensors (text_model.* etc.); wrote {dst}")
    return report


def _map_normalizer(sd: Mapping[str, torch.Tensor], policy, report: dict) -> dict[str, torch.Tensor]:
    """DP LinearNormalizer ``<field>.{scale,offset,input_stats.<s>}`` -> ``normalizer.fields.<ours>.*``."""
    rename = {"action": "action", "agent_pos": "state", "state": "state"}
    out, skipped = {}, set()
    fields = policy.normalizer.fields
    for k, v in sd.items():
        field, _, leaf = k.partition(".")
        ours = rename.get(field)
        if ours not in fields:
            skipped.add(field)
            continue
        leaf = leaf.replace("input_stats.", "")
        if leaf in ("scale", "offset", "min", "max", "mean", "std"):
            out[f"normalizer.fields.{ours}.{leaf}"] = v.reshape(-1).float()
    report["normalizer_skipped"] = sorted(skipped)
    return out


def init_from_mar(policy, path, allow_pickle: bool = False, log=print) -> dict[str, list[str]]:
    """Copy MAR(-B) weights whose name and shape match into ``policy.model``; report copied / skipped / fresh.

    ``path``: MAR ``checkpoint-last.pth`` (pickle; ``allow_pickle``; ``model_ema`` preferred) or a safetensors
    file written by ``videoaction convert --kind mar``.
    """
    from videoaction.utils.io import load_state_dict

    path = Path(path)
    if path.suffix == ".safetensors":
        sd = load_state_dict(path)
    else:
        obj = read_pickle(path, allow_pickle)
        sd = obj
        if isinstance(obj, Mapping):
            for key in ("model_ema", "model", "state_dict"):
                if isinstance(obj.get(key), Mapping):
                    sd = obj[key]
                    break
        if not isinstance(sd, Mapping):
            raise ConvertError(f"{path}: expected a MAR checkpoint dict with 'model_ema' or 'model'")
    sd = _strip_module(sd)
    own = policy.model.state_dict()
    copied = sorted(k for k in sd if k in own and tuple(sd[k].shape) == tuple(own[k].shape))
    skipped = sorted(k for k in sd if k not in copied)
    fresh = sorted(k for k in own if k not in copied)
    with torch.no_grad():
        for k in copied:
            own[k].copy_(sd[k].to(own[k].dtype))
    log(f"init from MAR {path}: copied {len(copied)} tensors, skipped {len(skipped)} "
        f"(not in UVA or other shape: {skipped[:6]}{'...' if len(skipped) > 6 else ''}), "
        f"{len(fresh)} UVA tensors keep their fresh initialisation")
    return {"copied": copied, "skipped": skipped, "fresh": fresh}


def convert_mar(src, dst, allow_pickle: bool = False, log=print) -> Path:
    """MAR ``checkpoint-last.pth`` -> ``DST/mar.safetensors`` (EMA weights when present)."""
    from videoaction.utils.io import save_state_dict

    obj = read_pickle(src, allow_pickle)
    which = next((k for k in ("model_ema", "model") if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)),
                 None)
    if which is None:
        raise ConvertError(f"{src}: expected a MAR checkpoint with 'model_ema' or 'model'")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / "mar.safetensors"
    save_state_dict(_strip_module(obj[which]), out)
    log(f"wrote {out} ({len(obj[which])} tensors from '{which}')")
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videoaction convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="reference checkpoint (UVA .ckpt, MAR checkpoint-last.pth, kl16.ckpt)")
    ap.add_argument("dst", help="output directory")
    ap.add_argument("--kind", choices=("uva", "mar", "kl16", "vpp-dp-calvin"), default="uva")
    ap.add_argument("--allow-pickle", action="store_true", help="permit reading pickled checkpoints (trusted only)")
    ap.add_argument("--obs-image-size", type=int, default=None, help="raw env frame size (default: stored cfg / 96)")
    ap.add_argument("--num-heads", type=int, default=None, help="attention heads (default: from model_size / D/64)")
    args = ap.parse_args(argv)
    if args.kind == "kl16":
        from videoaction.nn.tokenizer import convert_kl16

        if Path(args.src).suffix in _PICKLE_SUFFIXES and not args.allow_pickle:
            raise ConvertError(f"{args.src}: a pickle; pass --allow-pickle if you trust it")
        print(f"wrote {convert_kl16(args.src, args.dst, allow_pickle=args.allow_pickle)}")
    elif args.kind == "mar":
        convert_mar(args.src, args.dst, args.allow_pickle)
    elif args.kind == "vpp-dp-calvin":
        from videoaction.models.vpp.convert_dp import convert_dp_calvin

        convert_dp_calvin(args.src, args.dst, args.allow_pickle, heads=args.num_heads or 8)
    else:
        convert_uva(args.src, args.dst, args.allow_pickle, args.obs_image_size, args.num_heads)
    return 0
