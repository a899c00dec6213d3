"""`videoaction eval --video` for HMA checkpoints: held-out windows of token datasets, decoded by their tokenizer.

HMA declares :func:`evaluate_hma_video` as its :meth:`~videoaction.models.base.Policy.video_eval_entry`. ``--data``
takes the token datasets as training does (``DIR`` or ``NAME=DIR,...``). Per embodiment, ``n_windows`` windows,
evenly spaced over the windows of the held-out episodes (the project's split, ``dataset.val_ratio`` and
``dataset.split_seed``, as ``videoaction train`` used), are generated autoregressively from
``model.num_prompt_frames`` prompt frames. Metrics (evaluate.py): PSNR / SSIM next to copy-last-frame, Delta-PSNR
(true minus random actions), token accuracy for the discrete variant, and seconds per generated frame next to the
time copy-last-frame takes. For a comparison with other families on the real frames, see
:mod:`videoaction.eval.world_model_compare`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from videoaction.errors import VideoActionError

from .evaluate import delta_psnr, teacher_forced_ce, video_metrics
from .run import resolve_datasets
from .training import MultiEmbodimentSampler

TRIALS = 3  # random-action generations per window for Delta-PSNR


def _windows(policy, name, ds, n_windows: int, seed: int) -> tuple[MultiEmbodimentSampler, np.ndarray]:
    cfg = policy.cfg
    ratio = float(cfg.dataset.val_ratio)
    sampler = MultiEmbodimentSampler({name: ds}, cfg, seed=seed, split="val" if ratio > 0 else "all",
                                     val_ratio=ratio)
    starts = sampler.starts[name]
    idx = np.unique(np.linspace(0, len(starts) - 1, min(n_windows, len(starts))).round().astype(int))
    return sampler, starts[idx]


def _copy_last_s_per_frame(real: np.ndarray, n_prompt: int) -> float:
    t0 = time.perf_counter()
    np.repeat(real[:, n_prompt - 1: n_prompt], real.shape[1] - n_prompt, axis=1)
    return (time.perf_counter() - t0) / max(1, real.shape[0] * (real.shape[1] - n_prompt))


def _table(m: dict, label: str = "") -> list[dict]:
    suffix = f" [{label}]" if label else ""
    copy = "copy last frame"
    rows = [{"metric": f"PSNR (dB) ↑{suffix}", "model": m["psnr"], "baseline": m["psnr_copy_last"],
             "baseline is": copy},
            {"metric": f"SSIM ↑{suffix}", "model": m["ssim"], "baseline": m["ssim_copy_last"], "baseline is": copy},
            {"metric": f"controllability ΔPSNR (true − random actions, dB) ↑{suffix}", "model": m["delta_psnr"],
             "baseline": 0.0, "baseline is": "a model ignoring actions"},
            {"metric": f"generation time per frame (s) ↓{suffix}", "model": m["gen_s_per_frame"],
             "baseline": m["copy_last_s_per_frame"], "baseline is": copy}]
    if "token_acc" in m:
        rows.append({"metric": f"token accuracy ↑{suffix}", "model": m["token_acc"],
                     "baseline": m["token_acc_copy_last"], "baseline is": copy})
    if "tf_ce" in m:
        rows.append({"metric": f"teacher-forced cross-entropy (nats / token) ↓{suffix}", "model": m["tf_ce"],
                     "baseline": m["ce_uniform"], "baseline is": "uniform over the vocabulary"})
        rows.append({"metric": f"teacher-forced token accuracy ↑{suffix}", "model": m["tf_token_acc"],
                     "baseline": m["token_acc_copy_last"], "baseline is": copy})
    for key, name in (("lpips", "LPIPS ↓"), ("fvd", "FVD ↓")):
        if key in m:
            rows.append({"metric": f"{name}{suffix}", "model": m[key], "baseline": m[f"{key}_copy_last"],
                         "baseline is": copy})
    return rows


@torch.no_grad()
def evaluate_hma_video(policy, data, out_dir=None, n_windows: int = 16, seed: int = 0, progress: bool = True,
                       num_iter: int = 1, tokenizer: str | None = None, lpips_path=None, i3d_path=None,
                       allow_pickle: bool = False, **_unused) -> dict:
    """Video metrics of an HMA ``policy`` on held-out windows of the token datasets ``data``; writes
    ``video_results.json`` under ``out_dir`` when given. ``num_iter`` > 1 overrides ``model.decode_steps``."""
    from tqdm.auto import tqdm

    from videoaction.eval.video_eval import feature_metrics
    from videoaction.generate import build_decoder
    from videoaction.utils.io import atomic_write_json

    t0 = time.perf_counter()
    m = policy.mcfg
    n_prompt = m.num_prompt_frames
    steps = num_iter if num_iter > 1 else None
    datasets = resolve_datasets(policy.cfg, data)
    per: dict[str, dict] = {}
    feature_notes: list[str] = []
    windows: dict[str, list[int]] = {}
    for name, ds in tqdm(datasets.items(), disable=not progress, desc="hma video eval", unit="embodiment"):
        spec = tokenizer or m.tokenizer or (ds.manifest.get("encoder") or {}).get("path")
        if not spec:
            raise VideoActionError(f"{ds.root}: no tokenizer recorded in its manifest (encoder.path) or the model "
                                   f"config (model.tokenizer); frames cannot be decoded")
        decode = build_decoder(spec, ds.layout.quantized, m.latent_scale, allow_pickle)
        sampler, starts = _windows(policy, name, ds, n_windows, seed)
        batch = sampler.batch(len(starts), name=name, starts=starts)
        frames: dict = {}
        res = video_metrics(policy, decode, batch["tokens"], batch["action"], name, n_prompt, seed=seed, steps=steps,
                            frames_out=frames)
        if m.variant == "discrete":
            res.update(teacher_forced_ce(policy, batch["tokens"], batch["action"], name, n_prompt))
        feature_notes = []  # the same for every embodiment
        feature_metrics(frames["pred"], frames["target"], frames["copy_last"], lpips_path, i3d_path, res,
                        feature_notes, policy.device)
        res.update(delta_psnr(policy, decode, batch["tokens"], batch["action"], name, n_prompt, trials=TRIALS,
                              seed=seed, steps=steps))
        res["copy_last_s_per_frame"] = _copy_last_s_per_frame(decode(batch["tokens"]), n_prompt)
        res["n_windows"] = int(len(starts))
        per[name], windows[name] = res, [int(s) for s in starts]
    total = sum(r["n_windows"] for r in per.values())
    keys = [k for k, v in next(iter(per.values())).items() if k != "n_windows" and isinstance(v, (int, float))]
    overall = {k: float(sum(r[k] * r["n_windows"] for r in per.values()) / total) for k in keys}
    table = _table(overall)
    if len(per) > 1:
        for name, r in per.items():
            table += _table(r, name)
    notes = [f"{total} windows of {m.window} frames ({n_prompt} prompt frames, {m.window - n_prompt} generated "
             f"autoregressively) from the held-out {policy.cfg.dataset.val_ratio:g} of the episodes of "
             f"{', '.join(per)}; decode steps {steps or m.decode_steps}; Delta-PSNR over {TRIALS} random-action "
             f"trials; PSNR (capped at 100 dB per frame), SSIM, LPIPS and FVD are against the tokenizer's "
             f"reconstruction of the ground truth; teacher-forced cross-entropy predicts each frame in one pass "
             f"from the true frames before it.",
             "Metrics are window-weighted means over the embodiments; per-embodiment rows follow when there are "
             "several."] + feature_notes
    out = {"data": str(data), "family": "hma", "n_windows": total, "windows": windows, "metrics": overall,
           "embodiments": per, "table": table, "notes": notes, "wall_s": time.perf_counter() - t0}
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "video_results.json", out)
    return out
