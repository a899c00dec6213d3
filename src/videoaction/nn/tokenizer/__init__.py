"""Image tokenizers: MAR's kl16 KL-VAE and the project-trained small autoencoder (see ``docs/interfaces.md``).

``build_tokenizer(TokenizerConfig(kind, path)) -> Tokenizer`` with ``encode(x, sample=False)`` (scaled latents),
``decode(z)`` (pixels in [-1, 1]), ``latent_channels``, ``stride``, ``scale``.
"""

from .base import DiagonalGaussian, Tokenizer
from .config import KL16_SCALE, TokenizerConfig, TokenizerError
from .kl16 import KL16Autoencoder, check_state_dict
from .loading import (CONFIG_NAME, WEIGHTS_NAME, build_tokenizer, convert_kl16, kl16_arch, load_kl16, load_small,
                      read_weights, resolved_config, save_tokenizer, tokenizer_from_state)
from .small import SmallAutoencoder

__all__ = [
    "KL16_SCALE", "CONFIG_NAME", "WEIGHTS_NAME", "DiagonalGaussian", "KL16Autoencoder", "SmallAutoencoder",
    "Tokenizer", "TokenizerConfig", "TokenizerError", "build_tokenizer", "check_state_dict", "convert_kl16",
    "kl16_arch", "load_kl16", "load_small", "read_weights", "resolved_config", "save_tokenizer", "tokenizer_from_state",
]
