"""One video-prediction protocol for world models of different families (UVA, HMA) and copy-last-frame.

Every model sees the same clips of a store's held-out episodes: ``n_prompt`` real frames ``stride`` steps apart,
then predicts the next ``n_future`` frames at the same spacing from the true actions of the steps between them.
Predictions are scored against the **real** frames (not a tokenizer's reconstruction of them) at one resolution
(the evaluation transform: centre square crop, antialiased resize to ``image_size``):

* PSNR (per frame, capped at 100 dB so identical frames stay finite, then averaged) and SSIM, per future frame too;
* controllability ΔPSNR = PSNR(true actions) − PSNR(the actions after the last prompt frame taken from another
  clip); ~0 for a model that ignores actions;
* seconds per predicted frame (the whole batch's prediction call divided by the frames it predicts);
* the tokenizer ceiling: PSNR of the tokenizer's own reconstruction of the real future frames, the best a model
  predicting that tokenizer's tokens can reach.

The clip (episode e, start s) holds store steps ``s + offset + stride * k`` for k < n_prompt + n_future, the frame
positions of UVA's window, so UVA's own observation builder (:func:`~videoaction.eval.video_eval.prepare_clips`)
gives its inputs; HMA reads the same steps from its token dataset (episode e of the dataset must be episode e of
the store, which ``encode --format hma`` keeps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from videoaction.errors import VideoActionError
from videoaction.eval import metrics as M
from videoaction.eval.video_eval import shuffle_order

MAX_PSNR = 100.0


@dataclass(frozen=True)
class ClipProtocol:
    n_prompt: int = 4
    n_future: int = 4
    stride: int = 4  # store steps between frames
    offset: int = 3  # step of the first prompt frame inside a window (UVA: window positions 3, 7, ..., 31)
    image_size: int = 64

    @property
    def positions(self) -> np.ndarray:
        return self.offset + self.stride * np.arange(self.n_prompt + self.n_future)

    @property
    def span(self) -> int:
        """Steps a clip needs: up to the last frame plus that frame's actions (HMA reads them with the frame)."""
        return int(self.positions[-1]) + self.stride


def clip_windows(store, episodes, proto: ClipProtocol, n_windows: int) -> list[tuple[int, int]]:
    from videoaction.eval.video_eval import _windows

    return _windows(store.episode_lengths, list(episodes), proto.span, n_windows)


def ground_truth(store, wins, proto: ClipProtocol, image_key: str = "img") -> np.ndarray:
    """Real frames of the clips at the protocol resolution: uint8 (N, n_prompt + n_future, S, S, 3)."""
    from videoaction.config import DatasetConfig
    from videoaction.eval.video_eval import _to_model_frames

    dcfg = DatasetConfig(image_key=image_key, image_size=proto.image_size, crop_ratio=1.0)
    frames = []
    for e, s in wins:
        ep = store.get_episode(e, [image_key])[image_key]
        frames.append(np.asarray(ep[s + proto.positions]))
    return _to_model_frames(np.stack(frames), dcfg)


def psnr_capped(pred: np.ndarray, real: np.ndarray) -> float:
    return float(np.minimum(M.psnr(pred, real, reduce=False), MAX_PSNR).mean())


def score(pred: np.ndarray, pred_shuffled: np.ndarray | None, real: np.ndarray) -> dict:
    """pred / real: uint8 (N, n_future, S, S, 3)."""
    out = {"psnr": psnr_capped(pred, real), "ssim": M.ssim(pred, real),
           "psnr_per_future_frame": [psnr_capped(pred[:, k], real[:, k]) for k in range(real.shape[1])]}
    if pred_shuffled is not None:
        out["psnr_shuffled_actions"] = psnr_capped(pred_shuffled, real)
        out["delta_psnr"] = out["psnr"] - out["psnr_shuffled_actions"]
    return out


def copy_last(real: np.ndarray, proto: ClipProtocol) -> dict:
    pred = np.repeat(real[:, proto.n_prompt - 1: proto.n_prompt], proto.n_future, axis=1)
    return {**score(pred, None, real[:, proto.n_prompt:]), "delta_psnr": 0.0, "s_per_frame": 0.0}


@torch.no_grad()
def uva_clips(policy, store, wins, proto: ClipProtocol, real: np.ndarray, seed: int = 0, batch_size: int = 8) -> dict:
    """UVA (``predict_video`` with the true / shuffled future actions) on the clips; ``real`` from ground_truth."""
    from videoaction.data.sampler import frame_positions
    from videoaction.eval.video_eval import predict_clips, prepare_clips

    ds = policy.cfg.dataset
    pos = frame_positions(ds.frames, ds.horizon)
    if pos.tolist() != proto.positions.tolist() or ds.frames.n_history != proto.n_prompt:
        raise VideoActionError(f"UVA frames at window positions {pos.tolist()} ({ds.frames.n_history} history), "
                               f"the protocol's at {proto.positions.tolist()} ({proto.n_prompt} prompt)")
    c = prepare_clips(policy, store, wins)
    if c["real"].shape[2] != proto.image_size:
        raise VideoActionError(f"UVA predicts {c['real'].shape[2]} px frames, the protocol scores {proto.image_size}")
    gen = torch.Generator(device=policy.device).manual_seed(int(seed))
    t0 = time.perf_counter()
    pred = predict_clips(policy, c, c["true_actions"], batch_size=batch_size, generator=gen)
    seconds = time.perf_counter() - t0
    shuf = predict_clips(policy, c, c["true_actions"][c["perm"]], batch_size=batch_size,
                         generator=gen)
    future = real[:, proto.n_prompt:]
    return {**score(pred, shuf, future), "s_per_frame": seconds / pred.shape[0] / pred.shape[1], "frames": pred}


def hma_clip_inputs(token_ds, wins, proto: ClipProtocol, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (N, window, ...) and per-frame actions (N, window, A * stride) of the clips, read from an HMA token
    dataset whose episode e is the store's episode e."""
    seg = np.asarray(token_ds.segment_ids)
    first = np.searchsorted(seg, np.arange(int(seg.max()) + 1))  # first frame of every dataset episode
    toks, acts = [], []
    for e, s in wins:
        g = int(first[e]) + s + proto.offset if e < len(first) else len(seg)
        last = g + proto.span - proto.offset - 1
        if last >= len(seg) or seg[g] != e or seg[last] != e:
            raise VideoActionError(f"{token_ds.root}: episode {e} step {s + proto.offset} is not in the dataset's "
                                   f"episode {e}; encode the whole store in order (encode --format hma)")
        t, a = token_ds.window(g, window, proto.stride)
        toks.append(t)
        acts.append(a)
    tokens = torch.from_numpy(np.stack(toks).astype(np.int64 if token_ds.layout.quantized else np.float32))
    return tokens, torch.from_numpy(np.stack(acts).astype(np.float32))


@torch.no_grad()
def hma_clips(policy, token_ds, domain: str, wins, proto: ClipProtocol, real: np.ndarray, decode, seed: int = 0,
              batch_size: int = 8) -> dict:
    """HMA (autoregressive ``generate`` from the prompt frames' tokens) on the clips; ``decode`` maps its tokens to
    uint8 frames (:func:`videoaction.generate.build_decoder`)."""
    m = policy.mcfg
    dom = m.domain(domain)
    if (dom.stride, m.window, m.num_prompt_frames) != (proto.stride, proto.n_prompt + proto.n_future, proto.n_prompt):
        raise VideoActionError(f"HMA embodiment {domain!r}: stride {dom.stride}, window {m.window}, "
                               f"{m.num_prompt_frames} prompt frames; the protocol needs {proto.stride}, "
                               f"{proto.n_prompt + proto.n_future}, {proto.n_prompt}")
    tokens, actions = hma_clip_inputs(token_ds, wins, proto, m.window)
    if not token_ds.layout.quantized:
        tokens = tokens * m.latent_scale
    shuffled = actions.clone()  # the actions after the last prompt frame from another clip, as UVA's
    shuffled[:, proto.n_prompt - 1:] = actions[shuffle_order(len(wins)), proto.n_prompt - 1:]
    n_p = proto.n_prompt

    def run(a: torch.Tensor) -> tuple[np.ndarray, float]:
        gen = torch.Generator().manual_seed(int(seed))
        out, t0 = [], time.perf_counter()
        for i in range(0, len(wins), batch_size):
            out.append(policy.generate(tokens[i:i + batch_size], a[i:i + batch_size], domain, n_p, generator=gen))
        seconds = time.perf_counter() - t0
        return decode(torch.cat(out))[:, n_p:], seconds

    pred, seconds = run(actions)
    shuf, _ = run(shuffled)
    return {**score(pred, shuf, real[:, n_p:]), "s_per_frame": seconds / pred.shape[0] / pred.shape[1],
            "frames": pred}


@torch.no_grad()
def tokenizer_ceiling(spec: str, real: np.ndarray, proto: ClipProtocol) -> float:
    """PSNR of the tokenizer's reconstruction of the real future frames (the best its tokens can give)."""
    from videoaction.data.hma_tokens import FrameEncoder
    from videoaction.generate import build_decoder

    enc = FrameEncoder(spec)
    future = real[:, proto.n_prompt:]
    x = torch.from_numpy(future.reshape(-1, *future.shape[2:])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    tokens = torch.from_numpy(enc(x).astype(np.int64 if enc.discrete else np.float32))
    rec = build_decoder(spec, enc.discrete, 1.0)(tokens.unsqueeze(1))[:, 0]
    return psnr_capped(rec.reshape(future.shape), future)
