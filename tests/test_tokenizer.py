"""Tokenizers: kl16 layout vs MAR's key list, checkpoint loading/conversion and its errors, diffusers equivalence,
small-autoencoder shapes and a short stage-0 training on synthetic frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from videoaction.data.store import EpisodeStore
from videoaction.nn.tokenizer import (KL16_SCALE, KL16Autoencoder, SmallAutoencoder, TokenizerConfig,
                                      TokenizerError, build_tokenizer, convert_kl16, load_kl16)
from videoaction.nn.tokenizer.kl16 import to_diffusers


def test_kl16_state_dict_is_mars_key_list(reference_keys):
    ref = reference_keys("kl16_keys.json")
    with torch.device("meta"):
        m = KL16Autoencoder()
    sd = m.state_dict()
    assert len(ref) == 312 and len(sd) == 312
    assert list(sd) == list(ref)  # same names in the same order
    assert {k: list(v.shape) for k, v in sd.items()} == ref
    assert sum(p.numel() for p in m.parameters()) == 66_456_019
    assert (m.latent_channels, m.stride, m.scale) == (16, 16, KL16_SCALE)


@pytest.fixture(scope="module")
def narrow():
    """kl16 with ch 32 (every key of the real layout, 1/16 of the weights) and non-trivial random weights."""
    torch.manual_seed(0)
    m = KL16Autoencoder(ch=32).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m


def test_full_size_kl16_ckpt_round_trip(tmp_path):
    """MAR's exact file format: torch.save({"model": state_dict}) of the real 66M-parameter module."""
    torch.manual_seed(1)
    m = KL16Autoencoder()
    ckpt = tmp_path / "kl16.ckpt"
    torch.save({"model": m.state_dict()}, ckpt)
    with pytest.raises(TokenizerError, match="allow_pickle"):
        load_kl16(ckpt)
    out = convert_kl16(ckpt, tmp_path / "kl16", allow_pickle=True)
    cfg = json.loads((out / "tokenizer.json").read_text())
    assert cfg["kind"] == "kl16" and cfg["n_params"] == 66_456_019 and cfg["scale"] == KL16_SCALE
    back = build_tokenizer(TokenizerConfig(kind="kl16", path=str(out)))
    a, b = m.state_dict(), back.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.requires_grad for p in back.parameters())  # frozen by default


def test_narrow_round_trip_outputs_and_formats(tmp_path, narrow):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = narrow.encode(x)
        y = narrow.decode(z)
    assert z.shape == (2, 16, 2, 2) and y.shape == (2, 3, 32, 32)
    torch.save({"model": narrow.state_dict()}, tmp_path / "n.ckpt")
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in narrow.state_dict().items()}, str(tmp_path / "n.safetensors"))
    for m in (load_kl16(tmp_path / "n.ckpt", allow_pickle=True), load_kl16(tmp_path / "n.safetensors"),
              load_kl16(convert_kl16(tmp_path / "n.safetensors", tmp_path / "conv"))):
        with torch.no_grad():
            assert torch.equal(m.encode(x), z) and torch.equal(m.decode(z), y)


def test_uva_prefix_is_accepted(tmp_path, narrow):
    torch.save({"model": {f"vae_model.{k}": v for k, v in narrow.state_dict().items()}}, tmp_path / "u.ckpt")
    m = load_kl16(tmp_path / "u.ckpt", allow_pickle=True)
    assert torch.equal(m.quant_conv.weight, narrow.quant_conv.weight)


def test_mismatched_checkpoint_names_the_keys(tmp_path, narrow):
    sd = dict(narrow.state_dict())
    del sd["encoder.mid.attn_1.q.weight"]
    sd["encoder.extra.weight"] = torch.zeros(3)
    sd["decoder.conv_out.bias"] = torch.zeros(4)
    torch.save({"model": sd}, tmp_path / "bad.ckpt")
    with pytest.raises(TokenizerError) as err:
        load_kl16(tmp_path / "bad.ckpt", allow_pickle=True)
    msg = str(err.value)
    assert "missing: encoder.mid.attn_1.q.weight" in msg
    assert "unexpected: encoder.extra.weight" in msg
    assert "decoder.conv_out.bias: checkpoint (4,) vs model (3,)" in msg
    with pytest.raises(TokenizerError, match="not found"):
        load_kl16(tmp_path / "nothing.ckpt", allow_pickle=True)


def test_encode_is_deterministic_by_default_and_scaled(narrow):
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z1, z2 = narrow.encode(x), narrow.encode(x)
        zs = narrow.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
        mean = narrow.posterior(x).mean
        y = narrow.decode(z1 * 50)
    assert torch.equal(z1, z2) and not torch.equal(z1, zs)
    torch.testing.assert_close(z1, mean * KL16_SCALE)
    assert y.min() >= -1 and y.max() <= 1  # clamped
    with pytest.raises(TokenizerError, match="multiple of the stride"):
        narrow.encode(torch.zeros(1, 3, 40, 40))


def test_same_network_as_diffusers_autoencoderkl(narrow):
    """The decision in kl16.py: diffusers expresses the computation; weights map with renames + reshapes."""
    vae = to_diffusers(narrow).eval()
    x, z = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 16, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(x).latent_dist.mean, narrow.posterior(x).mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(vae.decode(z).sample, narrow.decode_raw(z), atol=1e-5, rtol=1e-4)


def test_build_refuses_random_weights(tmp_path):
    for kind in ("small", "kl16"):
        with pytest.raises(TokenizerError, match="refusing to build random weights"):
            build_tokenizer(TokenizerConfig(kind=kind))
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        build_tokenizer(TokenizerConfig(kind="small", path=str(tmp_path)))
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        build_tokenizer(TokenizerConfig(kind="vqgan"))


@pytest.mark.parametrize("stride", [4, 8, 16])
def test_small_autoencoder_shapes(stride):
    m = build_tokenizer(TokenizerConfig(kind="small", stride=stride, latent_channels=6), allow_random=True)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = m.encode(x)
        y = m.decode(z)
    assert z.shape == (2, 6, 64 // stride, 64 // stride) and y.shape == x.shape
    assert (m.latent_channels, m.stride) == (6, stride)
    with pytest.raises(TokenizerError, match="stride must be"):
        SmallAutoencoder(stride=2)


def _synthetic_store(path: Path, n_ep: int = 6, T: int = 40) -> None:
    """PushT-like frames: grey floor, a green target square, a moving blue block and a moving dark disc."""
    rng = np.random.default_rng(0)
    store = EpisodeStore.create(path)
    yy, xx = np.mgrid[0:48, 0:48]
    for e in range(n_ep):
        img = np.empty((T, 48, 48, 3), np.uint8)
        p, q = rng.uniform(8, 40, 2), rng.uniform(8, 40, 2)
        for t in range(T):
            f = np.full((48, 48, 3), 220, np.uint8)
            f[30:40, 6:16] = (120, 200, 120)
            p = np.clip(p + rng.normal(0, 1.5, 2), 6, 42)
            q = np.clip(q + rng.normal(0, 1.5, 2), 6, 42)
            f[(abs(yy - p[0]) < 6) & (abs(xx - p[1]) < 4)] = (60, 80, 200)
            f[(yy - q[0]) ** 2 + (xx - q[1]) ** 2 < 12] = (40, 40, 40)
            img[t] = f
        store.add_episode({"img": img, "action": rng.normal(size=(T, 2)).astype(np.float32)}, {"seed": e})


def test_train_small_tokenizer_on_a_store(tmp_path, one_torch_thread):
    from videoaction.train.tokenizer import train_tokenizer
    from videoaction.train.tokenizer_cli import main

    _synthetic_store(tmp_path / "store")
    res: list = []
    cfg = TokenizerConfig(kind="small", stride=8, latent_channels=4, channels=(16, 32, 32))
    out = train_tokenizer(tmp_path / "store", tmp_path / "tok", cfg, steps=150, batch_size=16, image_size=32,
                          lr=3e-3, progress=False, log=None, result=res)
    r = res[0]
    # held-out reconstruction error falls at least 5x (PSNR +7 dB) in 150 steps
    assert r.mse_val < 0.2 * 10 ** (-r.psnr_init / 10), (r.psnr_init, r.psnr_val)
    assert r.n_val > 0 and r.n_train > 0
    tok = build_tokenizer(TokenizerConfig(kind="small", path=str(out)))
    assert (tok.latent_channels, tok.stride, tok.scale) == (4, 8, pytest.approx(r.scale))
    from videoaction.train.tokenizer import load_frames
    train, _ = load_frames(tmp_path / "store", image_size=32)
    with torch.no_grad():
        z = tok.encode(train.float() / 127.5 - 1)
    assert z.shape[1:] == (4, 4, 4) and 0.9 < float(z.std()) < 1.1  # scale gives unit-std latents
    # the command-line entry point writes the same files
    assert main(["--data", str(tmp_path / "store"), "--out", str(tmp_path / "cli"), "--steps", "3",
                 "--image-size", "32", "--latent-channels", "4", "--stride", "8", "--no-progress"]) == 0
    saved = json.loads((tmp_path / "cli" / "tokenizer.json").read_text())
    assert saved["kind"] == "small" and saved["train_steps"] == 3 and saved["scale"] > 0


def test_one_tokenizer_for_several_stores_and_the_lfq_kind(tmp_path, one_torch_thread):
    from videoaction.nn.tokenizer.lfq import load_lfq
    from videoaction.train.lfq_tokenizer import code_usage
    from videoaction.train.tokenizer import load_frames, load_frames_many
    from videoaction.train.tokenizer_cli import main

    _synthetic_store(tmp_path / "a", n_ep=4, T=20)
    _synthetic_store(tmp_path / "b", n_ep=4, T=20)
    both = f"{tmp_path / 'a'},{tmp_path / 'b'}"
    train, val, n_val = load_frames_many(both, image_size=32, val_fraction=0.25)
    ta, va = load_frames(tmp_path / "a", image_size=32, val_fraction=0.25)
    assert n_val == [len(va), len(va)] and len(train) == 2 * len(ta)  # each store split by its own episodes
    assert torch.equal(train[: len(ta)], ta)
    assert main(["--data", both, "--out", str(tmp_path / "ae"), "--steps", "2", "--image-size", "32",
                 "--latent-channels", "4", "--stride", "8", "--no-progress"]) == 0
    assert json.loads((tmp_path / "ae" / "tokenizer.json").read_text())["store"] == both
    # --kind lfq: LFQ ids (stride 8, 2^6 vocabulary) with a held-out report per store
    assert main(["--kind", "lfq", "--data", both, "--out", str(tmp_path / "lfq"), "--steps", "20", "--image-size",
                 "32", "--z-channels", "6", "--channels", "8", "--no-progress"]) == 0
    saved = json.loads((tmp_path / "lfq" / "lfq.json").read_text())
    report = saved["report"]
    assert saved["z_channels"] == 6 and list(report["stores"]) == both.split(",")
    for r in report["stores"].values():
        assert r["n_val_frames"] == len(va) and 0 < r["psnr_val"] < 100 and 1 <= r["distinct_ids"] <= 64
    tok = load_lfq(tmp_path / "lfq")
    assert tok.encode_ids(val[:2].float() / 127.5 - 1).shape == (2, 4, 4)
    # the collapse check: constant ids have no varying position and perplexity 1
    flat = code_usage(torch.full((5, 4, 4), 7))
    assert flat == {"distinct_ids": 1, "varying_positions": 0.0, "perplexity": pytest.approx(1.0)}
    assert code_usage(torch.arange(32).view(2, 4, 4))["varying_positions"] == 1.0
