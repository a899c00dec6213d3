"""LFQ tokenizer: Open-MAGVIT2 key names, the id bit convention, loading a reference-format folder, a tiny fit."""

from __future__ import annotations

import json

import pytest
import torch

from videoaction.nn.tokenizer import TokenizerError
from videoaction.nn.tokenizer.lfq import LFQConfig, LFQTokenizer, fit_lfq, load_lfq, save_lfq, tiny_lfq_config
from videoaction.train.synthetic import render

torch.set_num_threads(1)


def test_reference_module_names_and_sizes():
    sd = LFQTokenizer(LFQConfig()).state_dict()  # the reference's 2^18 model: stride 16, 18 channels
    for key, shape in {"encoder.conv_in.weight": (128, 3, 3, 3), "encoder.down.0.downsample.weight": (128, 128, 3, 3),
                       "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
                       "encoder.mid_block.1.conv2.weight": (512, 512, 3, 3), "encoder.conv_out.weight": (18, 512, 1, 1),
                       "decoder.conv_in.weight": (512, 18, 3, 3), "decoder.up.4.upsample.conv1.weight": (2048, 512, 3, 3),
                       "decoder.up.0.block.1.norm2.weight": (128,), "decoder.conv_out.weight": (3, 128, 3, 3)}.items():
        assert tuple(sd[key].shape) == shape, key
    assert "encoder.conv_in.bias" not in sd and "encoder.down.4.downsample.weight" not in sd
    assert "decoder.up.0.upsample.conv1.weight" not in sd
    assert LFQConfig().stride == 16 and LFQConfig().vocab_size == 2 ** 18


def test_ids_follow_the_flip_convention_and_round_trip():
    torch.manual_seed(0)
    tok = LFQTokenizer(tiny_lfq_config(z_channels=6)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ids = tok.encode_ids(x)
    z = tok.encoder(x)
    assert ids.shape == (2, 4, 4) and int(ids.max()) < 64
    expected = sum(((z[:, i] > 0).long() << i) for i in range(6))  # bit i <- channel i
    assert torch.equal(ids, expected)
    assert torch.equal(tok.codes_to_ids(tok.ids_to_codes(ids)), ids)
    assert torch.allclose(tok.decode_ids(ids), tok.decoder(torch.sign(z)).clamp(-1, 1), atol=1e-6)


def test_loads_a_reference_lightning_checkpoint_from_a_local_folder(tmp_path):
    cfg = tiny_lfq_config(z_channels=8)
    torch.manual_seed(1)
    src = LFQTokenizer(cfg)
    sd = dict(src.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)  # training-only entries are ignored
    sd["model_ema.encoderconv_inweight"] = torch.zeros(1)
    folder = tmp_path / "magvit2"
    folder.mkdir()
    torch.save({"state_dict": sd, "global_step": 7}, folder / "magvit2.ckpt")
    (folder / "lfq.json").write_text(json.dumps({"kind": "lfq", **{k: list(v) if isinstance(v, tuple) else v
                                                                   for k, v in vars(cfg).items()}}))
    with pytest.raises(TokenizerError, match="pickled"):
        load_lfq(folder)
    tok = load_lfq(folder, allow_pickle=True)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(tok.encode_ids(x), src.eval().encode_ids(x))
    del sd["decoder.conv_out.weight"]
    torch.save({"state_dict": sd}, folder / "magvit2.ckpt")
    with pytest.raises(TokenizerError, match="missing"):
        load_lfq(folder, allow_pickle=True)
    save_lfq(src, tmp_path / "ours")  # safetensors round trip
    assert torch.equal(load_lfq(tmp_path / "ours").encode_ids(x), src.encode_ids(x))


def test_tiny_lfq_trains():
    pos = torch.rand(64, 2).numpy() * 20 + 6
    frames = torch.from_numpy(render(pos, 32, 6)).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.manual_seed(0)
    tok = LFQTokenizer(tiny_lfq_config(z_channels=8))
    curve = fit_lfq(tok, frames, steps=60, batch_size=16, lr=2e-3)
    assert sum(curve[-10:]) / 10 < 0.5 * sum(curve[:5]) / 5
    ids = tok.encode_ids(frames)  # the codes carry the frame: no collapse to one id pattern per position
    assert (ids != ids[:1]).any(0).float().mean() > 0.5 and len(ids.unique()) > 16
