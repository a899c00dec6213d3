"""Held-out video prediction and dynamics metrics (``videoaction eval --video``), each next to a trivial baseline.

On windows cut from the held-out (validation) episodes of a store — the same split the trainer used
(``dataset.val_ratio`` / ``split_seed``) unless episodes are given:

* PSNR / SSIM of predicted future frames (``policy.predict_video(obs, true actions)``) vs the real frames, both at the
  model's resolution (the dataset's evaluation transform); baseline: copy the last history frame;
* controllability ΔPSNR = PSNR(true actions) − PSNR(shuffled actions: the actions of another window) (HMA / Genie
  style); a model that ignores actions scores 0;
* inverse-dynamics action error: ``policy.inverse_dynamics(history, real future)`` vs the true actions (MSE in raw
  units and in normalised units); baseline: the mean training action;
* LPIPS / FVD only with user-supplied TorchScript weights (never downloaded); otherwise a note says why not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from videoaction.errors import VideoActionError
from videoaction.eval import metrics as M


def _windows(ep_lengths: np.ndarray, episodes: Sequence[int], horizon: int, n_windows: int) -> list[tuple[int, int]]:
    """(episode, start) pairs, evenly spaced inside each episode, round-robin over episodes, no padding."""
    per_ep = []
    for e in episodes:
        n_valid = int(ep_lengths[e]) - horizon + 1
        if n_valid >= 1:
            per_ep.append((e, n_valid))
    if not per_ep:
        raise VideoActionError(f"no held-out episode is long enough for a window of {horizon} steps "
                               f"(lengths {[int(ep_lengths[e]) for e in episodes]})")
    k = max(1, int(np.ceil(n_windows / len(per_ep))))
    out: list[tuple[int, int]] = []
    for j in range(k):
        for e, n_valid in per_ep:
            starts = np.linspace(0, n_valid - 1, num=min(k, n_valid)).round().astype(int)
            if j < len(starts):
                out.append((e, int(starts[j])))
    return out[:n_windows]


def held_out_episodes(n_episodes: int, dataset_cfg) -> list[int]:
    from videoaction.data.sampler import split_episodes

    _, val = split_episodes(n_episodes, dataset_cfg.val_ratio, dataset_cfg.split_seed, dataset_cfg.max_train_episodes)
    return [int(i) for i in np.nonzero(val)[0]]


def _to_model_frames(frames: np.ndarray, dataset_cfg) -> np.ndarray:
    """uint8 (B, F, H, W, 3) -> uint8 (B, F, S, S, 3) through the dataset's evaluation transform."""
    from videoaction.data.transforms import preprocess_frames, to_uint8_frames

    return to_uint8_frames(preprocess_frames(frames, dataset_cfg))


def prepare_clips(policy, store, wins: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """What a video-action policy is given and scored against on windows ``wins`` ((episode, start) pairs) of
    ``store``: ``obs`` (the policy's observation arrays, raw), ``language``, ``true_actions`` (N, n_actions, A),
    ``img`` (raw window frames), ``hist`` / ``real`` (history / future frames at the model resolution, uint8
    (N, T, S, S, 3)), ``pos`` (their window positions) and ``perm`` (the window whose actions are the shuffled ones)."""
    from videoaction.data.sampler import frame_positions

    ds = policy.cfg.dataset
    for key in [ds.image_key, ds.action_key] + ([ds.state_key] if ds.state_key else []):
        if key not in store.keys:
            raise VideoActionError(f"{store.path}: the model's dataset config needs key {key!r}; the store has "
                                   f"{store.keys}")
    horizon = ds.horizon
    pos = frame_positions(ds.frames, horizon)
    nh = ds.frames.n_history
    h_last, t_obs = ds.frames.last_history, ds.frames.n_obs_steps
    n_actions = int(policy.horizon)
    a_start = int(getattr(policy, "action_start", h_last))
    if a_start + n_actions > horizon:
        raise VideoActionError(f"actions {a_start}..{a_start + n_actions} do not fit the window of {horizon}")
    spec = policy.observation_spec()
    keys = [ds.image_key, ds.action_key] + ([ds.state_key] if ds.state_key else [])
    cache: dict[int, dict] = {}

    def window(e: int, s: int) -> dict:
        if e not in cache:
            cache[e] = store.get_episode(e, keys)
        ep = cache[e]
        w = {"img": np.asarray(ep[ds.image_key][s:s + horizon]), "action": np.asarray(ep[ds.action_key][s:s + horizon],
                                                                                        np.float32)}
        if ds.state_key:
            w["state"] = np.asarray(ep[ds.state_key][s:s + horizon], np.float32)
        # the action executed before each step (what a rollout's ObservationHistory reports), NaN before step 0
        before = np.asarray(ep[ds.action_key][max(s - 1, 0):s], np.float32).reshape(-1, w["action"].shape[-1])
        nan = np.full((1 - len(before), w["action"].shape[-1]), np.nan, np.float32)
        w["history_action"] = np.concatenate([nan, before, w["action"][:-1]])
        return w

    W = [window(e, s) for e, s in wins]
    img = np.stack([w["img"] for w in W])  # (N, horizon, H, W, 3)
    if img.dtype != np.uint8:
        img = np.clip(img if img.max() > 1.5 else img * 255, 0, 255).round().astype(np.uint8)
    acts = np.stack([w["action"] for w in W])  # (N, horizon, A)
    n = len(W)
    obs_all: dict[str, np.ndarray] = {"image": img[:, :t_obs]}
    if "state" in spec:
        obs_all["state"] = np.stack([w["state"] for w in W])[:, :t_obs, : spec["state"].shape[-1]]
    if "history_action" in spec:
        obs_all["history_action"] = np.stack([w["history_action"] for w in W])[:, :t_obs]
    language = None
    if ds.language_key:
        col = store.meta_column(ds.language_key)
        language = [str(col[e]) for e, _ in wins]
    return {"obs": obs_all, "language": language, "true_actions": acts[:, a_start:a_start + n_actions], "img": img,
            "pos": pos, "real": _to_model_frames(img[:, pos[nh:]], ds), "hist": _to_model_frames(img[:, pos[:nh]], ds),
            "perm": shuffle_order(n)}


def shuffle_order(n: int) -> np.ndarray:
    """For ΔPSNR, window i takes the actions of window ``shuffle_order(n)[i]`` (another one when n > 1)."""
    return np.roll(np.arange(n), max(1, n // 2)) if n > 1 else np.arange(n)


def predict_clips(policy, clips: dict, actions: np.ndarray, batch_size: int = 8, num_iter: int = 1,
                  cfg: float = 1.0, temperature: float = 0.95, generator: torch.Generator | None = None,
                  bar=None) -> np.ndarray:
    """``policy.predict_video`` of :func:`prepare_clips`' observations with raw ``actions`` (N, n_actions, A) ->
    uint8 frames (N, Tf, S, S, 3)."""
    out_frames = []
    n = actions.shape[0]
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        obs = {k: torch.from_numpy(np.ascontiguousarray(v[sl])) for k, v in clips["obs"].items()}
        if clips["language"] is not None:
            obs["language"] = clips["language"][sl]
        out = policy.predict_video(obs, actions=torch.from_numpy(np.ascontiguousarray(actions[sl])),
                                   num_iter=num_iter, cfg=cfg, temperature=temperature, generator=generator)
        f = out["frames"]
        out_frames.append(np.asarray(f.cpu() if isinstance(f, torch.Tensor) else f))
        if bar is not None:
            bar.update(actions[sl].shape[0])
    return np.concatenate(out_frames)


def evaluate_video(policy, data, out_dir=None, episodes: Sequence[int] | None = None, n_windows: int = 16,
                   batch_size: int = 8, n_grids: int = 4, num_iter: int = 1, cfg: float = 1.0,
                   temperature: float = 0.95, seed: int = 0, lpips_path=None, i3d_path=None,
                   progress: bool = True) -> dict:
    """Video metrics of ``policy`` (needs ``predict_video``; ``inverse_dynamics`` optional) on held-out windows of
    the store ``data``. Writes grids (PNG) and ``video_results.json`` under ``out_dir`` when given."""
    from tqdm.auto import tqdm

    from videoaction.data.store import EpisodeStore
    from videoaction.eval.video import prediction_strip, save_png, upscale
    from videoaction.utils.io import atomic_write_json

    if not hasattr(policy, "predict_video"):
        raise VideoActionError(f"{type(policy).__name__} has no video prediction (predict_video); --video needs a "
                               "video-action model such as UVA")
    t0 = time.perf_counter()
    ds = policy.cfg.dataset
    store = EpisodeStore.open(data)
    eps = list(episodes) if episodes is not None else held_out_episodes(store.n_episodes, ds)
    if not eps:
        raise VideoActionError(f"{data}: no held-out episodes (store has {store.n_episodes}, dataset.val_ratio "
                               f"{ds.val_ratio}); pass explicit episodes")
    wins = _windows(store.episode_lengths, eps, ds.horizon, n_windows)
    c = prepare_clips(policy, store, wins)
    horizon, pos, nh, n = ds.horizon, c["pos"], ds.frames.n_history, len(wins)
    img, true_a, obs_all, language = c["img"], c["true_actions"], c["obs"], c["language"]
    real, hist, perm = c["real"], c["hist"], c["perm"]
    copy_last = np.repeat(hist[:, -1:], real.shape[1], axis=1)
    gen = torch.Generator(device=policy.device).manual_seed(int(seed))
    bar = tqdm(total=2 * n, desc="video prediction", unit="clip", disable=not progress, leave=False)
    kw = dict(batch_size=batch_size, num_iter=num_iter, cfg=cfg, temperature=temperature, generator=gen, bar=bar)
    pred, pred_shuf = predict_clips(policy, c, true_a, **kw), predict_clips(policy, c, true_a[perm], **kw)
    bar.close()
    if pred.shape != real.shape:
        raise VideoActionError(f"predict_video returned frames {pred.shape}, real future frames are {real.shape}")
    m: dict[str, Any] = {
        "psnr": M.psnr(pred, real), "psnr_copy_last": M.psnr(copy_last, real),
        "ssim": M.ssim(pred, real), "ssim_copy_last": M.ssim(copy_last, real),
        "psnr_shuffled_actions": M.psnr(pred_shuf, real),
        "psnr_per_future_frame": [M.psnr(pred[:, k], real[:, k]) for k in range(real.shape[1])],
        "psnr_copy_last_per_future_frame": [M.psnr(copy_last[:, k], real[:, k]) for k in range(real.shape[1])],
    }
    m["delta_psnr"] = m["psnr"] - m["psnr_shuffled_actions"]
    notes = [f"{n} windows of {horizon} steps from {len(eps)} held-out episodes; history frames at window positions "
             f"{pos[:nh].tolist()}, future {pos[nh:].tolist()}; frames at the model resolution {real.shape[2:4]}; "
             f"predict_video num_iter={num_iter}, cfg={cfg}, temperature={temperature}, seed={seed}."]
    _action_errors(policy, store, ds, eps, img[:, pos[:nh]], img[:, pos[nh:]], true_a, language, gen, batch_size,
                      m, notes, obs_all=obs_all)
    feature_metrics(pred, real, copy_last, lpips_path, i3d_path, m, notes, policy.device)
    table = _table(m)
    grids = []
    if out_dir is not None:
        out = Path(out_dir)
        for g in range(min(n_grids, n)):
            rel = f"video_grids/window{g}_ep{wins[g][0]}_t{wins[g][1]}.png"
            strip = prediction_strip(hist[g], real[g], [pred[g], pred_shuf[g], copy_last[g]])
            save_png(out / rel, upscale(strip, 2 if strip.shape[0] < 400 else 1))
            grids.append({"path": rel, "caption": f"episode {wins[g][0]}, window start {wins[g][1]}"})
    res = {"data": str(data), "episodes": eps, "windows": [list(w) for w in wins], "n_windows": n,
           "metrics": m, "table": table, "grids": grids, "notes": notes, "wall_s": time.perf_counter() - t0}
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "video_results.json", res)
    return res


def _action_errors(policy, store, ds, eps, hist, real, true_a, language, gen, batch_size, m, notes,
                      obs_all=None) -> None:
    """Action errors next to the mean-action baseline: the policy (``predict_action`` from the history only) and
    inverse dynamics (history + real future frames). hist / real: raw store frames uint8 (N, Th|Tf, H, W, 3)."""
    from videoaction.data.sampler import split_episodes

    train, _ = split_episodes(store.n_episodes, ds.val_ratio, ds.split_seed, ds.max_train_episodes)
    train_eps = [int(i) for i in np.nonzero(train)[0] if int(i) not in set(eps)] or list(range(store.n_episodes))
    mean_a = np.concatenate([store.get_episode(e, [ds.action_key])[ds.action_key] for e in train_eps]).mean(0)
    base = np.broadcast_to(mean_a.astype(np.float32), true_a.shape)
    m["action_mse_mean_action"] = float(((base - true_a) ** 2).mean())
    norm = getattr(policy, "normalizer", None)

    def nz(x):
        with torch.no_grad():
            return norm.normalize("action", torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(
                policy.device)).cpu().numpy()

    has_norm = norm is not None and hasattr(norm, "normalize")
    tn = nz(true_a) if has_norm else None
    if has_norm:
        m["action_mse_norm_mean_action"] = float(((nz(base) - tn) ** 2).mean())

    def record(prefix: str, chunks: list) -> None:
        pa = np.concatenate(chunks)[:, : true_a.shape[1]]
        m[f"{prefix}_mse"] = float(((pa - true_a) ** 2).mean())
        if has_norm:
            m[f"{prefix}_mse_norm"] = float(((nz(pa) - tn) ** 2).mean())

    def as_np(a):
        return a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)

    if obs_all is not None and hasattr(policy, "predict_action"):
        preds = []
        for i in range(0, true_a.shape[0], batch_size):
            sl = slice(i, i + batch_size)
            obs = {k: torch.from_numpy(np.ascontiguousarray(v[sl])) for k, v in obs_all.items()}
            if language is not None:
                obs["language"] = language[sl]
            preds.append(as_np(policy.predict_action(obs, generator=gen)["action_pred"]))
        record("policy", preds)
    if not hasattr(policy, "inverse_dynamics"):
        notes.append("inverse dynamics: this model family has none")
        return
    preds = []
    try:
        for i in range(0, hist.shape[0], batch_size):
            sl = slice(i, i + batch_size)
            kw = {"language": language[sl]} if language is not None else {}
            out = policy.inverse_dynamics(torch.from_numpy(hist[sl]), torch.from_numpy(real[sl]), generator=gen, **kw)
            preds.append(as_np(out["action_pred"] if isinstance(out, dict) else out))
    except VideoActionError as exc:
        notes.append(f"inverse dynamics skipped: {exc}")
        return
    record("inverse_dynamics", preds)


def feature_metrics(pred, real, copy_last, lpips_path, i3d_path, m, notes, device) -> None:
    """LPIPS / FVD of ``pred`` and ``copy_last`` against ``real`` (uint8 (N, T, S, S, 3)) into ``m`` when the user
    gave the TorchScript files, else a note saying how to get them."""
    if lpips_path is None:
        notes.append("LPIPS not computed: pass --lpips PATH (" + M.LPIPS_HOW + "); nothing is downloaded.")
    else:
        lp = M.LPIPS(lpips_path, device=device)
        m["lpips"], m["lpips_copy_last"] = lp(pred, real), lp(copy_last, real)
    if i3d_path is None:
        notes.append("FVD not computed: pass --i3d PATH (" + M.I3D_HOW + "); nothing is downloaded.")
    else:
        fvd = M.FVD(i3d_path, device=device)
        m["fvd"], m["fvd_copy_last"] = fvd(pred, real), fvd(copy_last, real)
        notes.append(f"FVD from {pred.shape[0]} clips of {pred.shape[1]} frames tiled to {fvd.min_frames} "
                     "(few clips: biased and noisy, compare only like with like).")


def _table(m: dict) -> list[dict]:
    rows = [
        {"metric": "PSNR (dB) ↑", "model": m["psnr"], "baseline": m["psnr_copy_last"],
         "baseline is": "copy last frame"},
        {"metric": "SSIM ↑", "model": m["ssim"], "baseline": m["ssim_copy_last"], "baseline is": "copy last frame"},
        {"metric": "controllability ΔPSNR (true − shuffled actions, dB) ↑", "model": m["delta_psnr"],
         "baseline": 0.0, "baseline is": "a model ignoring actions"},
    ]
    labels = {"policy": "policy action MSE (from the history only, {}) ↓",
              "inverse_dynamics": "inverse-dynamics action MSE ({}) ↓"}
    for key, label in labels.items():
        for suffix, units in (("_mse", "raw units"), ("_mse_norm", "normalised")):
            if key + suffix in m:
                rows.append({"metric": label.format(units), "model": m[key + suffix],
                             "baseline": m[f"action{suffix}_mean_action"], "baseline is": "mean training action"})
    if "lpips" in m:
        rows.append({"metric": "LPIPS ↓", "model": m["lpips"], "baseline": m["lpips_copy_last"],
                     "baseline is": "copy last frame"})
    if "fvd" in m:
        rows.append({"metric": "FVD ↓", "model": m["fvd"], "baseline": m["fvd_copy_last"],
                     "baseline is": "copy last frame"})
    return rows
