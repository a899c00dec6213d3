"""Build SVD's UNet and VAE from the config, or load them from a diffusers-format folder on disk.

The released VPP video models (``svd-robot``, ``svd-robot-calvin-ft``) are StableVideoDiffusionPipeline folders:
``model_index.json``, ``unet/``, ``vae/``, ``scheduler/``, ``image_encoder/`` (unused by VPP), ``feature_extractor/``.
Only ``unet/`` and ``vae/`` are read (``local_files_only``: nothing is downloaded). After loading, the folder's
architecture is written back into the config, so a checkpoint rebuilds the same modules without the folder.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

from videoaction.errors import VideoActionError
from videoaction.models.vpp.config import UNetConfig, VAEConfig

UNET_KEYS = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
             "layers_per_block", "num_attention_heads", "cross_attention_dim", "addition_time_embed_dim",
             "transformer_layers_per_block", "num_frames", "sample_size")
VAE_KEYS = ("block_out_channels", "layers_per_block", "latent_channels", "scaling_factor")


class SVDLoadError(VideoActionError):
    """A diffusers SVD folder that is missing, incomplete or not of the expected classes."""


def build_unet(cfg: UNetConfig) -> UNetSpatioTemporalConditionModel:
    """A fresh UNet of the configured layout (added time ids: 3 x ``addition_time_embed_dim``)."""
    return UNetSpatioTemporalConditionModel(
        sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=tuple(cfg.down_block_types), up_block_types=tuple(cfg.up_block_types),
        block_out_channels=tuple(cfg.block_out_channels), addition_time_embed_dim=cfg.addition_time_embed_dim,
        projection_class_embeddings_input_dim=3 * cfg.addition_time_embed_dim, layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim, transformer_layers_per_block=cfg.transformer_layers_per_block,
        num_attention_heads=tuple(cfg.num_attention_heads), num_frames=cfg.num_frames)


def build_vae(cfg: VAEConfig) -> AutoencoderKLTemporalDecoder:
    n = len(cfg.block_out_channels)
    return AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * n,
                                        block_out_channels=tuple(cfg.block_out_channels),
                                        layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
                                        scaling_factor=cfg.scaling_factor)


def _subfolder(root: Path, name: str) -> Path:
    sub = root / name
    if not (sub / "config.json").is_file():
        raise SVDLoadError(f"{root}: not a diffusers SVD folder: missing {name}/config.json (expected the "
                           f"StableVideoDiffusionPipeline layout with unet/ and vae/)")
    return sub


def _fill(cfg, source: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in source:
            continue
        value = source[key]
        if isinstance(value, list):
            value = tuple(value)
        if key in ("layers_per_block", "cross_attention_dim", "transformer_layers_per_block") and \
                isinstance(value, tuple):
            if len(set(value)) != 1:
                raise SVDLoadError(f"unet config {key}={list(value)}: per-block values are not supported")
            value = value[0]
        if key == "num_attention_heads" and isinstance(value, int):
            value = (value,) * len(source.get("down_block_types", (0,)))
        setattr(cfg, key, value)


def load_svd(path, unet_cfg: UNetConfig, vae_cfg: VAEConfig, weights: bool = True):
    """(unet, vae) from the folder ``path``; ``unet_cfg`` / ``vae_cfg`` are updated to the folder's layout.
    ``weights=False`` builds the same layout with fresh weights (a checkpoint's state dict follows)."""
    root = Path(path)
    if not root.is_dir():
        raise SVDLoadError(f"{root}: no such directory (model.svd_path; give the local diffusers SVD folder, "
                           f"e.g. svd-robot-calvin-ft; nothing is downloaded)")
    unet_dir, vae_dir = _subfolder(root, "unet"), _subfolder(root, "vae")
    try:
        if weights:
            unet = UNetSpatioTemporalConditionModel.from_pretrained(unet_dir, local_files_only=True)
            vae = AutoencoderKLTemporalDecoder.from_pretrained(vae_dir, local_files_only=True)
        else:
            unet = UNetSpatioTemporalConditionModel.from_config(UNetSpatioTemporalConditionModel.load_config(unet_dir))
            vae = AutoencoderKLTemporalDecoder.from_config(AutoencoderKLTemporalDecoder.load_config(vae_dir))
    except (OSError, ValueError, EnvironmentError) as exc:
        raise SVDLoadError(f"{root}: cannot load the SVD UNet / VAE ({type(exc).__name__}: {exc})") from None
    _fill(unet_cfg, dict(unet.config), UNET_KEYS)
    _fill(vae_cfg, dict(vae.config), VAE_KEYS)
    if unet.config.projection_class_embeddings_input_dim != 3 * unet.config.addition_time_embed_dim:
        raise SVDLoadError(f"{unet_dir}: projection_class_embeddings_input_dim "
                           f"{unet.config.projection_class_embeddings_input_dim} is not 3 x addition_time_embed_dim "
                           f"{unet.config.addition_time_embed_dim} (fps, motion bucket, noise-aug)")
    return unet, vae
