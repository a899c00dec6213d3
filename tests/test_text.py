"""Text encoders: task embeddings (offline default), none, CLIP and sentence encoders from a local directory."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from videoaction.nn.text import TextEncoderConfig, TextEncoderError, build_text_encoder


def test_task_embedding_shapes_and_unknown_instruction():
    enc = build_text_encoder(TextEncoderConfig(kind="task_embedding", dim=24,
                                               vocabulary=("push the T", "open the drawer ", "push the T")))
    assert enc.dim == 24 and enc.vocabulary == ("open the drawer", "push the T")
    e = enc.encode(["push the T", " open the drawer", "push the T"])
    assert e.shape == (3, 24) and torch.equal(e[0], e[2]) and not torch.equal(e[0], e[1])
    e.sum().backward()  # learned: gradients reach the table
    assert enc.embedding.weight.grad is not None
    assert list(enc.state_dict()) == ["embedding.weight"]
    with pytest.raises(TextEncoderError, match="unknown instruction 'close the door'.*'open the drawer'; 'push the T'"):
        enc.encode(["close the door"])
    with pytest.raises(TextEncoderError, match="empty vocabulary"):
        build_text_encoder(TextEncoderConfig(kind="task_embedding"))


def test_none_and_unknown_kind():
    enc = build_text_encoder(TextEncoderConfig(kind="none"))
    assert enc.dim == 0 and enc.encode(["a", "b"]).shape == (2, 0)
    with pytest.raises(TextEncoderError, match="unknown text encoder kind 't5'"):
        build_text_encoder(TextEncoderConfig(kind="t5"))


def test_clear_error_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(TextEncoderError, match=r"videoaction\[lang\]"):
        build_text_encoder(TextEncoderConfig(kind="clip", path="/nonexistent"))


def _tiny_vocab(d) -> dict:
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return vocab


def test_clip_from_a_local_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = _tiny_vocab(tmp_path)
    tok = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    eos = vocab["<|endoftext|>"]
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=40, bos_token_id=eos - 1,
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = build_text_encoder(TextEncoderConfig(kind="clip", path=str(tmp_path)))
    assert enc.dim == 16 and enc.max_length == 30
    e = enc.encode(["push the t", "open the drawer", "push the t"])
    assert e.shape == (3, 16) and torch.equal(e[0], e[2]) and not torch.allclose(e[0], e[1])
    ids = enc._tokens(["a much longer instruction " * 5])["input_ids"]
    assert ids.shape == (1, 30)  # pad / truncate to 30 tokens, as the reference
    assert len(enc.state_dict()) == 0 and not any(p.requires_grad for p in enc.hf_model.parameters())
    with pytest.raises(TextEncoderError, match="no such directory"):
        build_text_encoder(TextEncoderConfig(kind="clip", path=str(tmp_path / "missing")))
    with pytest.raises(TextEncoderError, match="no path given"):
        build_text_encoder(TextEncoderConfig(kind="clip"))


def test_sentence_encoder_mean_pools_and_normalises(tmp_path):
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "push", "the", "t", "open", "drawer"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(vocab_size=len(words), hidden_size=24, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=48)).save_pretrained(tmp_path)
    enc = build_text_encoder(TextEncoderConfig(kind="sentence", path=str(tmp_path)))
    e = enc.encode(["push the t", "open the drawer"])
    assert enc.dim == 24 and e.shape == (2, 24)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))
