"""`videoaction convert`: a reference-format UVA .ckpt (built here from the documented layout) converts with zero
missing / unexpected keys and loads as a policy; pickles need --allow-pickle; MAR init copies name+shape matches."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from videoaction.data.errors import VideoActionError
from videoaction.models.base import load_policy
from videoaction.models.convert import convert_uva, init_from_mar, main
from videoaction.models.uva.config import model_config
from videoaction.models.uva.network import UVANetwork
from videoaction.nn.diffusion import DiffusionHeadConfig
from videoaction.nn.tokenizer import KL16Autoencoder

torch.set_num_threads(1)
KEYS = Path("/work/shared/reference/keys")


def _small_reference_net(language: bool = False) -> UVANetwork:
    """The reference key layout (the same 444 / 449 names as the reference JSONs) at width 64 instead of 768."""
    head = dict(width=32, depth=6)
    cfg = model_config("tiny", width=64, num_heads=1, encoder_depth=12, decoder_depth=12,
                       video_head=DiffusionHeadConfig(**head), action_head=DiffusionHeadConfig(clip_denoised=True, **head),
                       action_dim=10 if language else 2, language=language, text_dim=16)
    return UVANetwork(cfg, 16, (4, 4), 4, 4)


def _fake_reference_ckpt(path: Path, language: bool = False, drop: str | None = None) -> UVANetwork:
    """Write {cfg (an OmegaConf-like object of an unimportable class), state_dicts {model, ema_model}, pickles}."""
    torch.manual_seed(0)
    net, vae = _small_reference_net(language), KL16Autoencoder(ch=32)
    mod = types.ModuleType("omegaconf_standin")

    class DictConfig:
        def __init__(self, content):
            self._content = content

        def __getstate__(self):
            return {"_content": self._content}

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf_standin", "DictConfig"
    mod.DictConfig = DictConfig
    sd = {f"model.{k}": v for k, v in net.state_dict().items()}
    sd.update({f"vae_model.{k}": v for k, v in vae.state_dict().items()})
    a = 10 if language else 2
    for leaf, val in (("scale", torch.full((a,), 2.0)), ("offset", torch.full((a,), -1.0)),
                      ("input_stats.min", torch.zeros(a)), ("input_stats.max", torch.ones(a)),
                      ("input_stats.mean", torch.full((a,), 0.5)), ("input_stats.std", torch.ones(a))):
        sd[f"normalizer.params_dict.action.{leaf}"] = val
    sd["normalizer.params_dict.agent_pos.scale"] = torch.ones(2)
    sd["text_model.text_projection.weight"] = torch.zeros(4, 4)
    if drop:
        sd.pop(drop)
    cfg = DictConfig({"policy": {"n_action_steps": 8, "shape_meta": {"obs": {"image": {"shape": [3, 96, 96]}}}}})
    ema = {k: v + 0.01 if k.startswith("model.") else v for k, v in sd.items()}
    sys.modules["omegaconf_standin"] = mod
    try:
        torch.save({"cfg": cfg, "state_dicts": {"model": sd, "ema_model": ema, "optimizer": {}},
                    "pickles": {"global_step": b"\x80\x04K\x05."}}, path)
    finally:
        del sys.modules["omegaconf_standin"]  # reading must work without the class (as without omegaconf)
    return net


def test_reference_key_names_are_the_documented_ones():
    if not (KEYS / "uva_pusht_keys.json").is_file():
        pytest.skip("reference key list not available")
    want = set(json.loads((KEYS / "uva_pusht_keys.json").read_text()))
    assert set(_small_reference_net().state_dict()) == want  # same 444 names, scaled-down shapes
    want = set(json.loads((KEYS / "uva_libero_keys.json").read_text()))
    assert set(_small_reference_net(language=True).state_dict()) == want


@pytest.mark.parametrize("language", [False, True], ids=["pusht", "libero"])
def test_convert_reference_ckpt_zero_missing_unexpected(tmp_path, language):
    net = _fake_reference_ckpt(tmp_path / "ref.ckpt", language)
    report = convert_uva(tmp_path / "ref.ckpt", tmp_path / "out", allow_pickle=True, log=lambda *_: None)
    for which in ("model", "ema_model"):
        assert report[which]["missing"] == [] and report[which]["unexpected"] == []
        assert report[which]["mis_shaped"] == []
    assert report["normalizer_skipped"] == ["agent_pos"] and report["n_dropped"] == 1  # text_model.* dropped
    assert report["config"]["language"] is language
    pol = load_policy(tmp_path / "out")  # EMA weights preferred
    assert torch.allclose(pol.model.z_proj.weight, net.z_proj.weight + 0.01)
    raw = load_policy(tmp_path / "out", prefer_ema=False)
    assert torch.equal(raw.model.z_proj.weight, net.z_proj.weight)
    assert torch.equal(pol.normalizer.fields["action"].scale, torch.full((10 if language else 2,), 2.0))
    assert pol.cfg.model.obs_image_size == 96 and pol.cfg.dataset.image_size == 64  # 4x4 tokens, stride 16
    if not language:
        o = {"image": torch.randint(0, 256, (1, 16, 96, 96, 3), dtype=torch.uint8)}
        assert pol.predict_action(o, num_steps=3)["action"].shape == (1, 8, 2)


def test_convert_refuses_pickle_without_flag_and_reports_layout_errors(tmp_path, capsys):
    _fake_reference_ckpt(tmp_path / "ref.ckpt")
    with pytest.raises(VideoActionError, match="--allow-pickle"):
        main([str(tmp_path / "ref.ckpt"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert main([str(tmp_path / "ref.ckpt"), str(tmp_path / "out2"), "--allow-pickle"]) == 0
    assert "missing 0, unexpected 0" in capsys.readouterr().out
    _fake_reference_ckpt(tmp_path / "bad.ckpt", drop="model.decoder_embed.bias")
    with pytest.raises(VideoActionError, match="1 missing"):
        convert_uva(tmp_path / "bad.ckpt", tmp_path / "out3", allow_pickle=True, log=lambda *_: None)


def test_init_from_mar_copies_matching_names_and_shapes(tmp_path):
    from tests.test_uva_modes import micro_cfg
    from videoaction.models.uva.policy import UVAPolicy

    p = UVAPolicy(micro_cfg(), allow_random_tokenizer=True)
    own = p.model.state_dict()
    mar = {k: torch.full_like(v, 0.5) for k, v in own.items() if k.startswith(("encoder_blocks", "z_proj_ln"))}
    mar["z_proj.weight"] = torch.zeros(7, 3)  # same name, other shape -> skipped
    mar["class_emb.weight"] = torch.zeros(1000, 64)  # MAR only -> skipped
    mar["mask_token"] = torch.zeros(1, 1, 64)
    torch.save({"model_ema": mar, "args": None}, tmp_path / "checkpoint-last.pth")
    with pytest.raises(VideoActionError, match="allow-pickle"):
        init_from_mar(p, tmp_path / "checkpoint-last.pth")
    assert main([str(tmp_path / "checkpoint-last.pth"), str(tmp_path / "mar"), "--kind", "mar", "--allow-pickle"]) == 0
    rep = init_from_mar(p, tmp_path / "mar" / "mar.safetensors", log=lambda *_: None)
    n_copied = sum(1 for k in own if k.startswith(("encoder_blocks", "z_proj_ln")))
    assert len(rep["copied"]) == n_copied
    assert rep["skipped"] == ["class_emb.weight", "mask_token", "z_proj.weight"]
    assert "fake_latent_x" in rep["fresh"] and "z_proj.weight" in rep["fresh"]
    assert torch.all(p.model.encoder_blocks[0].attn.qkv.weight == 0.5)


def test_kl16_layout_and_conversion(tmp_path):
    if (KEYS / "kl16_keys.json").is_file():
        want = json.loads((KEYS / "kl16_keys.json").read_text())
        with torch.device("meta"):
            got = {k: list(v.shape) for k, v in KL16Autoencoder().state_dict().items()}
        assert got == {k: list(v) for k, v in want.items()}
    vae = KL16Autoencoder(ch=32)
    torch.save({"model": vae.state_dict()}, tmp_path / "kl16.ckpt")
    with pytest.raises(VideoActionError):
        main([str(tmp_path / "kl16.ckpt"), str(tmp_path / "tok"), "--kind", "kl16"])
    assert main([str(tmp_path / "kl16.ckpt"), str(tmp_path / "tok"), "--kind", "kl16", "--allow-pickle"]) == 0
    assert (tmp_path / "tok" / "tokenizer.safetensors").is_file()
