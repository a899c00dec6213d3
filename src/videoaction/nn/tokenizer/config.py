"""Typed config of the image tokenizers (kl16 KL-VAE of MAR, project-trained small autoencoder)."""

from __future__ import annotations

from dataclasses import dataclass

from videoaction.errors import VideoActionError

KL16_SCALE = 0.2325  # MAR's "normalise latent std to 1" factor for kl16 (uva.md §3)


class TokenizerError(VideoActionError):
    """Missing, unreadable or mismatched tokenizer weights, or an input the tokenizer cannot encode."""


@dataclass
class TokenizerConfig:
    """Which image tokenizer to build and where its weights are.

    kind: ``"kl16"`` (MAR's KL-16 VAE, 16 latent channels, stride 16, scale 0.2325) or ``"small"``
        (the project-trained CPU autoencoder; its sizes and scale are read from ``<path>/tokenizer.json``).
    path: kl16: a ``kl16.ckpt`` (torch pickle, needs ``allow_pickle``), a ``.safetensors`` file, or a directory
        written by ``convert_kl16``; small: the directory written by ``train_tokenizer``. ``None`` = no weights
        (only with ``build_tokenizer(cfg, allow_random=True)``, e.g. to train a fresh one).
    latent_channels, stride, scale: for ``small`` without a path (fresh model); ignored when weights are loaded
        (the saved JSON wins). ``scale=None`` means "not yet measured" (1.0 until training sets it).
    channels: small AE widths per resolution level (len = log2(stride); () = 32, 64, 128, 128, ...);
        ``kl``: KL posterior with a small KL weight (else a plain deterministic autoencoder).
    allow_pickle: permit reading a pickled ``kl16.ckpt`` (arbitrary-code risk; convert once to safetensors instead).
    frozen: ``build_tokenizer`` returns the module with ``requires_grad=False`` (the policies never train it).
    """

    kind: str = "small"
    path: str | None = None
    latent_channels: int = 8
    stride: int = 8
    scale: float | None = None
    channels: tuple[int, ...] = ()
    kl: bool = True
    allow_pickle: bool = False
    frozen: bool = True
