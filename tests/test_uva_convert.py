"""`videoaction convert`: a reference-format UVA .ckpt whose MAR-module and kl16 tensors carry exactly the names of
the published key lists (shared/reference/keys/, in their order, shapes scaled down) converts with zero missing /
unexpected keys, loads as a policy and fuses its token streams in the reference's order (uva.md section 5); pickles
need --allow-pickle; MAR init copies name + shape matches."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import load_reference_keys
from videoaction.errors import VideoActionError
from videoaction.models.base import load_policy
from videoaction.models.convert import convert_uva, init_from_mar, main
from videoaction.models.uva.config import model_config
from videoaction.models.uva.network import UVANetwork
from videoaction.nn.diffusion import DiffusionHeadConfig
from videoaction.nn.tokenizer import KL16Autoencoder

torch.set_num_threads(1)

# Published sizes -> test sizes. MAR module: width 768 -> 64 (qkv / fused 3 x 768 -> 192, MLP 4 x 768 -> 256, the
# action head's pooled 768 x 4 x 4 -> 64 x 16), 16 x 16 -> 4 x 4 tokens; diffusion MLPs: width 1024 -> 32
# (adaLN 3 x / 2 x 1024 -> 96 / 64); channel counts (16 latent, A actions, 256 time frequencies, 512 CLIP) unchanged.
D, HEAD_W, GRID = 64, 32, 4
_BODY = {768: D, 2304: 3 * D, 3072: 4 * D, 12288: 16 * D}
_HEAD = {1024: HEAD_W, 3072: 3 * HEAD_W, 2048: 2 * HEAD_W, 768: D}
_KL16 = {128: 32, 256: 64, 512: 128}  # kl16 ch 128 -> 32


def _scaled(name: str, shape: list[int]) -> list[int]:
    if ".net." in name and name.startswith(("diffloss.", "diffactloss.")):
        return [_HEAD.get(n, n) for n in shape]
    if name.endswith("spatial_pos_embed") or name == "diffusion_spatial_embed":
        return [1, GRID * GRID, D]
    return [_BODY.get(n, n) for n in shape]


def reference_state(language: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """A reference policy state dict: every published MAR-module key under ``model.``, every kl16 key under
    ``vae_model.``, in the published order, random values."""
    g = torch.Generator().manual_seed(seed)
    keys = load_reference_keys("uva_libero_keys.json" if language else "uva_pusht_keys.json")
    sd = {f"model.{k}": torch.randn(_scaled(k, v), generator=g) * 0.02 for k, v in keys.items()}
    for k, v in load_reference_keys("kl16_keys.json").items():
        sd[f"vae_model.{k}"] = torch.randn([_KL16.get(n, n) for n in v], generator=g) * 0.02
    return sd


def _small_reference_net(language: bool = False) -> UVANetwork:
    """Our network at the scaled sizes above (depths 12 / 12 and 6 as published)."""
    head = dict(width=HEAD_W, depth=6)
    cfg = model_config("tiny", width=D, num_heads=1, encoder_depth=12, decoder_depth=12,
                       video_head=DiffusionHeadConfig(**head), action_head=DiffusionHeadConfig(clip_denoised=True, **head),
                       action_dim=10 if language else 2, language=language, text_dim=512, text_tokens=64)
    return UVANetwork(cfg, 16, (GRID, GRID), 4, 4)


def _fake_reference_ckpt(path: Path, language: bool = False, drop: str | None = None) -> dict[str, torch.Tensor]:
    """Write {cfg (an OmegaConf-like object of an unimportable class), state_dicts {model, ema_model}, pickles}."""
    mod = types.ModuleType("omegaconf_standin")

    class DictConfig:
        def __init__(self, content):
            self._content = content

        def __getstate__(self):
            return {"_content": self._content}

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf_standin", "DictConfig"
    mod.DictConfig = DictConfig
    sd = reference_state(language)
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
    return sd


@pytest.mark.parametrize("language", [False, True], ids=["pusht", "libero"])
def test_scaled_reference_layout_is_our_network_at_that_size(language):
    want = {k[len("model."):]: tuple(v.shape) for k, v in reference_state(language).items() if k.startswith("model.")}
    assert len(want) == (449 if language else 444)
    got = {k: tuple(v.shape) for k, v in _small_reference_net(language).state_dict().items()}
    assert got == want


def _check_fused_stream_order(net: torch.nn.Module, sd: dict[str, torch.Tensor], a_dim: int) -> None:
    """uva.md section 5: ``proj_cond_x_layer`` reads concat(future video, aligned history, action) per token,
    token t * L + s; action k repeated over tokens [k N / 16, (k + 1) N / 16). Expected values from the reference
    tensors themselves."""
    g = torch.Generator().manual_seed(1)
    fut, hist = torch.randn(1, 4, 16, GRID, GRID, generator=g), torch.randn(1, 4, 16, GRID, GRID, generator=g)
    acts = torch.randn(1, 16, a_dim, generator=g)
    n = 4 * GRID * GRID

    def lin(name, x):
        return x @ sd[f"model.{name}.weight"].T + sd[f"model.{name}.bias"]

    def tokens(x):  # (1, T, C, h, w) -> (1, T * h * w, C), index t * L + s
        return x.flatten(3).transpose(2, 3).reshape(1, n, -1)

    seen = []
    hook = net.proj_cond_x_layer.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
    try:
        with torch.no_grad():
            net(fut, hist, actions=acts)
    finally:
        hook.remove()
    fused = seen[0]
    assert fused.shape == (1, n, 3 * D)
    assert torch.allclose(fused[..., :D], lin("z_proj", tokens(fut)), atol=1e-6)
    assert torch.allclose(fused[..., D:2 * D], lin("z_proj_cond", tokens(hist)), atol=1e-6)
    assert torch.allclose(fused[..., 2 * D:], lin("action_proj_cond", acts)[:, torch.arange(n) * 16 // n], atol=1e-6)


@pytest.mark.parametrize("language", [False, True], ids=["pusht", "libero"])
def test_convert_reference_ckpt_zero_missing_unexpected(tmp_path, language):
    sd = _fake_reference_ckpt(tmp_path / "ref.ckpt", language)
    report = convert_uva(tmp_path / "ref.ckpt", tmp_path / "out", allow_pickle=True, log=lambda *_: None)
    for which in ("model", "ema_model"):
        assert report[which]["missing"] == [] and report[which]["unexpected"] == []
        assert report[which]["mis_shaped"] == []
    assert report["normalizer_skipped"] == ["agent_pos"] and report["n_dropped"] == 1  # text_model.* dropped
    assert report["config"]["language"] is language
    pol = load_policy(tmp_path / "out")  # EMA weights preferred
    assert torch.allclose(pol.model.z_proj.weight, sd["model.z_proj.weight"] + 0.01)
    raw = load_policy(tmp_path / "out", prefer_ema=False)
    ours = raw.state_dict()
    for k, v in sd.items():  # every reference tensor lands, unchanged, under its mapped name
        if k.startswith("model."):
            assert torch.equal(ours[k], v), k
        elif k.startswith("vae_model."):
            assert torch.equal(ours["tokenizer." + k[len("vae_model."):]], v), k
    _check_fused_stream_order(raw.model, sd, 10 if language else 2)
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


def test_kl16_layout_and_conversion(tmp_path, reference_keys):
    want = reference_keys("kl16_keys.json")
    with torch.device("meta"):
        got = {k: list(v.shape) for k, v in KL16Autoencoder().state_dict().items()}
    assert got == {k: list(v) for k, v in want.items()}
    vae = KL16Autoencoder(ch=32)
    torch.save({"model": vae.state_dict()}, tmp_path / "kl16.ckpt")
    with pytest.raises(VideoActionError):
        main([str(tmp_path / "kl16.ckpt"), str(tmp_path / "tok"), "--kind", "kl16"])
    assert main([str(tmp_path / "kl16.ckpt"), str(tmp_path / "tok"), "--kind", "kl16", "--allow-pickle"]) == 0
    assert (tmp_path / "tok" / "tokenizer.safetensors").is_file()
