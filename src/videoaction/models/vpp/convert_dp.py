"""Released VPP action checkpoint (``dp-calvin``, ref ``step2_train_action_calvin.py``: ``torch.save({"model":
state_dict, "args": ...})`` of ``VPP_Policy``) -> safetensors for our Video Former + action head in
``reference_compat`` mode (``videoaction convert --kind vpp-dp-calvin``).

Key map (reference -> ours):

* ``model.inner_model.<k>`` (MDT ``DiffusionTransformer``) -> ``head.net.<k>`` unchanged
  (:class:`~videoaction.models.vpp.action_head.ReferenceNet` keeps its names); its unused ``goal_emb.*``,
  ``proprio_emb.*`` (frozen, never in the CALVIN forward) and ``pos_emb`` (never added) are dropped.
* ``Video_Former.goal_emb.{0,2}`` -> ``former.proj.{0,2}``; ``latents`` -> ``queries``; ``time_pos_emb`` ->
  ``time_embed``; ``norm`` -> ``norm``; per layer i: ``layers.i.0`` (perceiver) ``norm_media``, ``norm_latents``,
  ``to_q``, ``to_out`` -> ``layers.i.{norm_media, norm_latents, perceiver.to_q, perceiver.to_out}``, ``to_k`` ⊕
  ``to_v`` -> ``perceiver.to_kv``; ``layers.i.1`` (temporal) ``qkv`` -> ``time_attn.to_q`` (rows :D) and
  ``time_attn.to_kv`` (rows D:), ``proj`` -> ``time_attn.to_out``; ``layers.i.2.<k>`` (feed-forward) -> ``ff.<k>``.
* ``TVP_encoder.*`` (the SVD pipeline's CLIP text tower) and ``language_goal.*`` (OpenAI CLIP) are dropped: the TVP
  comes from the ``svd-robot-calvin-ft`` folder and the text from ``model.text.path``.

Sizes are read from tensor shapes (heads are not: ``heads``, 8 as released). Any other key is an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from videoaction.models.convert import ConvertError, read_pickle
from videoaction.models.vpp.action_head import ActionHead
from videoaction.models.vpp.config import ActionHeadConfig, VideoFormerConfig
from videoaction.models.vpp.video_former import VideoFormer

HEAD_PREFIX, FORMER_PREFIX = "model.inner_model.", "Video_Former."
DROPPED_PREFIXES = ("TVP_encoder.", "language_goal.")
UNUSED_HEAD = ("goal_emb.", "proprio_emb.", "pos_emb")
OUT_WEIGHTS, OUT_CONFIG = "vpp_action.safetensors", "vpp_action.json"


def state_dict_of(obj: Any, src) -> dict[str, torch.Tensor]:
    """The VPP_Policy state dict inside a loaded checkpoint (``{"model": sd}``, ``{"state_dict": sd}`` or sd)."""
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not any(str(k).startswith(HEAD_PREFIX) for k in obj):
        found = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ConvertError(f"{src}: not a VPP action checkpoint (no '{HEAD_PREFIX}*' keys; found {found})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()
            if isinstance(v, torch.Tensor)}


def _map_former(k: str, v: torch.Tensor, out: dict) -> bool:
    simple = {"latents": "queries", "time_pos_emb": "time_embed"}
    if k in simple:
        out[f"former.{simple[k]}"] = v
        return True
    m = re.fullmatch(r"(goal_emb\.[02]|norm)\.(weight|bias)", k)
    if m:
        out[f"former.{m.group(1).replace('goal_emb', 'proj')}.{m.group(2)}"] = v
        return True
    m = re.fullmatch(r"layers\.(\d+)\.([012])\.(.+)", k)
    if not m:
        return False
    i, part, rest = m.groups()
    p = f"former.layers.{i}."
    if part == "0":
        names = {"norm_media.weight", "norm_media.bias", "norm_latents.weight", "norm_latents.bias"}
        if rest in names:
            out[p + rest] = v
        elif rest in ("to_q.weight", "to_out.weight"):
            out[p + "perceiver." + rest] = v
        elif rest in ("to_k.weight", "to_v.weight"):
            out.setdefault(p + "perceiver._kv", {})[rest[3]] = v  # joined below
        else:
            return False
    elif part == "1":
        leaf = rest.rpartition(".")[2]
        if rest in ("qkv.weight", "qkv.bias"):
            d = v.shape[0] // 3
            out[p + f"time_attn.to_q.{leaf}"], out[p + f"time_attn.to_kv.{leaf}"] = v[:d], v[d:]
        elif rest in ("proj.weight", "proj.bias"):
            out[p + f"time_attn.to_out.{leaf}"] = v
        else:
            return False
    else:
        out[p + "ff." + rest] = v
    return True


def map_dp_calvin(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Reference state dict -> (our ``former.*`` / ``head.net.*`` tensors, dropped keys, keys that fit nowhere)."""
    out: dict[str, Any] = {}
    dropped, unknown = [], []
    for k, v in sd.items():
        if k.startswith(DROPPED_PREFIXES):
            dropped.append(k)
        elif k.startswith(HEAD_PREFIX):
            rest = k[len(HEAD_PREFIX):]
            if rest.startswith(UNUSED_HEAD):
                dropped.append(k)
            else:
                out["head.net." + rest] = v
        elif not (k.startswith(FORMER_PREFIX) and _map_former(k[len(FORMER_PREFIX):], v, out)):
            unknown.append(k)
    for name in [n for n in out if n.endswith("._kv")]:
        parts = out.pop(name)
        if set(parts) != {"k", "v"}:
            unknown.append(f"{name} (to_k / to_v incomplete)")
            continue
        out[name.replace("._kv", ".to_kv.weight")] = torch.cat([parts["k"], parts["v"]], dim=0)
    return out, sorted(dropped), sorted(unknown)


def infer_configs(sd: Mapping[str, torch.Tensor], heads: int = 8) -> tuple[VideoFormerConfig, ActionHeadConfig, dict]:
    """Video Former / action-head configs (reference_compat) and sizes from the reference tensors' shapes."""
    def t(name):
        if name not in sd:
            raise ConvertError(f"the checkpoint lacks {name!r}, needed to infer the layout")
        return sd[name]

    f, h = FORMER_PREFIX, HEAD_PREFIX
    frames, queries, dim = t(f + "latents").shape
    depth = len({k.split(".")[2] for k in sd if k.startswith(f + "layers.")})
    inner = t(f + "layers.0.0.to_q.weight").shape[0]
    temporal = f + "layers.0.1.qkv.weight" in sd
    former = VideoFormerConfig(dim=dim, hidden=t(f + "goal_emb.0.weight").shape[0], queries=queries, depth=depth,
                               heads=heads, dim_head=inner // heads, temporal_attention=temporal,
                               reference_compat=True)
    hd = t(h + "action_emb.weight").shape[0]
    n_blocks = {p: len({k.split(".")[4] for k in sd if k.startswith(f"{h}{p}.blocks.")})
                for p in ("encoder", "decoder")}
    n_tokens = frames * queries
    head = ActionHeadConfig(dim=hd, encoder_depth=n_blocks["encoder"], decoder_depth=n_blocks["decoder"],
                            heads=heads, mlp_ratio=t(h + "encoder.blocks.0.mlp.c_fc.weight").shape[0] / hd,
                            goal_hidden=t(h + "lang_emb.0.weight").shape[0], reference_compat=True)
    sizes = {"num_frames": int(frames), "feature_channels": int(t(f + "goal_emb.0.weight").shape[1]),
             "goal_dim": int(t(h + "lang_emb.0.weight").shape[1]), "action_dim": int(t(h + "action_emb.weight").shape[1]),
             "n_context_tokens": int(n_tokens)}
    if h + "pos_emb" in sd:  # seq = goal (1) + tokens + actions: the only place the chunk length is stored
        sizes["n_actions"] = int(sd[h + "pos_emb"].shape[1] - 1 - n_tokens)
    return former, head, sizes


class ConvertedAction(nn.Module):
    """What the converted file holds: ``former`` (Video Former) and ``head`` (action head), reference_compat."""

    def __init__(self, former: VideoFormerConfig, head: ActionHeadConfig, sizes: Mapping[str, int]):
        super().__init__()
        self.former = VideoFormer(former, sizes["feature_channels"], sizes["num_frames"])
        self.head = ActionHead(head, sizes["action_dim"], sizes.get("n_actions", 10), sizes["goal_dim"],
                               self.former.n_tokens)


def convert_dp_calvin(src, dst, allow_pickle: bool = False, heads: int = 8, log=print) -> dict:
    """``dp-calvin`` checkpoint -> ``dst/vpp_action.safetensors`` + ``dst/vpp_action.json`` (configs and sizes);
    returns the report. Refuses a pickle unless ``allow_pickle``; any missing / unexpected / mis-shaped key is an
    error."""
    from dataclasses import asdict

    from videoaction.utils.io import atomic_write_json, save_state_dict

    sd = state_dict_of(read_pickle(src, allow_pickle), src)
    mapped, dropped, unknown = map_dp_calvin(sd)
    former, head, sizes = infer_configs(sd, heads)
    model = ConvertedAction(former, head, sizes)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(mapped)), sorted(set(mapped) - set(own)) + unknown
    shapes = sorted(k for k in set(own) & set(mapped) if tuple(own[k].shape) != tuple(mapped[k].shape))
    if missing or unexpected or shapes:
        raise ConvertError(f"{src}: the weights do not fit the inferred layout: {len(missing)} missing "
                           f"{missing[:8]}, {len(unexpected)} unexpected {unexpected[:8]}, mis-shaped {shapes[:8]}")
    model.load_state_dict(mapped)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    save_state_dict({k: v.contiguous() for k, v in model.state_dict().items()}, dst / OUT_WEIGHTS)
    report = {"source": str(src), "former": asdict(former), "head": asdict(head), "sizes": sizes,
              "tensors": len(own), "dropped": len(dropped), "dropped_prefixes": sorted({k.split(".")[0]
                                                                                      for k in dropped}),
              "missing": missing, "unexpected": unexpected}
    atomic_write_json(dst / OUT_CONFIG, report)
    log(f"{len(own)} tensors converted (0 missing, 0 unexpected), {len(dropped)} dropped "
        f"({', '.join(report['dropped_prefixes'])}); wrote {dst / OUT_WEIGHTS}")
    return report


def load_converted(directory) -> ConvertedAction:
    """The converted Video Former + action head (``reference_compat``), ready for ``head.context`` / ``sample``."""
    import json

    from safetensors.torch import load_file

    directory = Path(directory)
    rep = json.loads((directory / OUT_CONFIG).read_text())
    model = ConvertedAction(VideoFormerConfig(**rep["former"]), ActionHeadConfig(**rep["head"]), rep["sizes"])
    model.load_state_dict(load_file(str(directory / OUT_WEIGHTS)))
    return model.eval()


def adopt_converted(m, feature_channels: int, directory) -> dict:
    """Point a stage-2 model config ``m`` (VPPConfig) at a converted folder: its Video Former and head configs
    replace ``m.former`` / ``m.head`` after every size is checked against the model's; returns the ``former.*`` /
    ``head.*`` tensors to load. A size that differs is an error naming it."""
    import json

    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / OUT_CONFIG).is_file() or not (directory / OUT_WEIGHTS).is_file():
        raise ConvertError(f"model.action_weights {directory}: expected {OUT_CONFIG} and {OUT_WEIGHTS} there "
                           f"(written by `videoaction convert --kind vpp-dp-calvin`)")
    rep = json.loads((directory / OUT_CONFIG).read_text())
    sizes = rep["sizes"]
    own = {"feature_channels": feature_channels, "num_frames": m.num_frames, "goal_dim": m.text.goal_dim,
           "action_dim": m.action_dim, "n_actions": m.n_actions}
    wrong = [f"{k}: converted {sizes.get(k)} vs model {v}" for k, v in own.items() if sizes.get(k) != v]
    if wrong:
        raise ConvertError(f"model.action_weights {directory}: the converted weights do not fit this model "
                           f"({'; '.join(wrong)})")
    m.former, m.head = VideoFormerConfig(**rep["former"]), ActionHeadConfig(**rep["head"])
    return load_file(str(directory / OUT_WEIGHTS))
