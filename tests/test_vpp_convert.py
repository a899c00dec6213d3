"""`videoaction convert --kind vpp-dp-calvin`: a small checkpoint in the reference's key layout (VPP_Policy:
``model.inner_model.*`` MDT DiffusionTransformer, ``Video_Former.*`` Video_Former_3D; shapes scaled down) converts with
zero missing / unexpected keys, lands the tensors where the reference uses them, and refuses without --allow-pickle."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from videoaction.models.convert import ConvertError
from videoaction.models.convert import main as convert_main
from videoaction.models.vpp.action_head import ActionHead
from videoaction.models.vpp.config import ActionHeadConfig
from videoaction.models.vpp.convert_dp import convert_dp_calvin, load_converted

D, HEADS, INNER, FRAMES, QUERIES, C_FEAT, GOAL, ACT, N_ACT = 16, 2, 16, 2, 3, 12, 10, 7, 4
FORMER_DEPTH, ENC, DEC = 2, 2, 2


def reference_shapes(FRAMES=FRAMES, C_FEAT=C_FEAT, GOAL=GOAL, ACT=ACT, N_ACT=N_ACT) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of VPP_Policy's trained parts as the reference constructs them (bias=False
    DiffusionTransformer with use_mlp_goal, proprio_dim 8; Video_Former_3D with use_temporal), scaled down; the
    sizes a model must share with it can be set."""
    s: dict[str, tuple[int, ...]] = {}
    f = "Video_Former."
    s.update({f + "goal_emb.0.weight": (2 * D, C_FEAT), f + "goal_emb.0.bias": (2 * D,),
              f + "goal_emb.2.weight": (D, 2 * D), f + "goal_emb.2.bias": (D,),
              f + "latents": (FRAMES, QUERIES, D), f + "time_pos_emb": (FRAMES, 1, D),
              f + "norm.weight": (D,), f + "norm.bias": (D,)})
    for i in range(FORMER_DEPTH):
        p = f"{f}layers.{i}."
        for n in ("norm_media", "norm_latents"):
            s[f"{p}0.{n}.weight"] = s[f"{p}0.{n}.bias"] = (D,)
        s.update({f"{p}0.to_q.weight": (INNER, D), f"{p}0.to_k.weight": (INNER, D), f"{p}0.to_v.weight": (INNER, D),
                  f"{p}0.to_out.weight": (D, INNER), f"{p}1.qkv.weight": (3 * D, D), f"{p}1.qkv.bias": (3 * D,),
                  f"{p}1.proj.weight": (D, D), f"{p}1.proj.bias": (D,), f"{p}2.0.weight": (D,), f"{p}2.0.bias": (D,),
                  f"{p}2.1.weight": (4 * D, D), f"{p}2.3.weight": (D, 4 * D)})
    h = "model.inner_model."
    s.update({h + "tok_emb.weight": (D, D), h + "tok_emb.bias": (D,),
              h + "pos_emb": (1, 1 + FRAMES * QUERIES + N_ACT, D),
              h + "sigma_emb.1.weight": (2 * D, D), h + "sigma_emb.1.bias": (2 * D,),
              h + "sigma_emb.3.weight": (D, 2 * D), h + "sigma_emb.3.bias": (D,),
              h + "action_emb.weight": (D, ACT), h + "action_emb.bias": (D,),
              h + "action_pred.weight": (ACT, D), h + "action_pred.bias": (ACT,),
              h + "encoder.ln.weight": (D,), h + "decoder.ln.weight": (D,)})
    for name, d_in in (("goal_emb", GOAL), ("lang_emb", GOAL), ("proprio_emb", 8)):
        s.update({f"{h}{name}.0.weight": (2 * D, d_in), f"{h}{name}.0.bias": (2 * D,),
                  f"{h}{name}.2.weight": (D, 2 * D), f"{h}{name}.2.bias": (D,)})
    for part, n, film in (("encoder", ENC, False), ("decoder", DEC, True)):
        for i in range(n):
            p = f"{h}{part}.blocks.{i}."
            atts = ("attn", "cross_att") if film else ("attn",)
            for a in atts:
                for qkv in ("key", "query", "value"):
                    s[f"{p}{a}.{qkv}.weight"], s[f"{p}{a}.{qkv}.bias"] = (D, D), (D,)
                s[f"{p}{a}.c_proj.weight"] = (D, D)
            s.update({p + "ln_1.weight": (D,), p + "ln_2.weight": (D,), p + "mlp.c_fc.weight": (4 * D, D),
                      p + "mlp.c_proj.weight": (D, 4 * D)})
            if film:
                s.update({p + "ln3.weight": (D,), p + "ln3.bias": (D,),
                          p + "adaLN_zero.modulation.1.weight": (6 * D, D), p + "adaLN_zero.modulation.1.bias": (6 * D,)})
    return s


def write_reference(path, extra: dict | None = None, **sizes) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) * 0.3 for k, shape in reference_shapes(**sizes).items()}
    sd["TVP_encoder.text_encoder.text_model.embeddings.position_embedding.weight"] = torch.zeros(20, 8)
    sd["language_goal.clip_rn50.positional_embedding"] = torch.zeros(77, 8)
    sd.update(extra or {})
    torch.save({"model": sd, "args": {"use_Former": "3d"}}, path)
    return sd


def test_convert_dp_calvin(tmp_path):
    src = tmp_path / "dp-calvin.pt"
    ref = write_reference(src)
    with pytest.raises(ConvertError, match="allow-pickle"):
        convert_main([str(src), str(tmp_path / "refused"), "--kind", "vpp-dp-calvin"])
    assert not (tmp_path / "refused").exists()
    assert convert_main([str(src), str(tmp_path / "out"), "--kind", "vpp-dp-calvin", "--allow-pickle",
                         "--num-heads", str(HEADS)]) == 0
    rep = json.loads((tmp_path / "out" / "vpp_action.json").read_text())
    assert rep["missing"] == [] and rep["unexpected"] == []
    assert rep["sizes"] == {"num_frames": FRAMES, "feature_channels": C_FEAT, "goal_dim": GOAL, "action_dim": ACT,
                            "n_context_tokens": FRAMES * QUERIES, "n_actions": N_ACT}
    assert rep["dropped"] == 2 + 8 + 1  # TVP / CLIP tensors, unused goal_emb + proprio_emb, pos_emb
    m = load_converted(tmp_path / "out")
    assert m.head.cfg.reference_compat and m.former.cfg.reference_compat and m.head.n_actions == N_ACT
    sd = m.state_dict()
    f, h = "Video_Former.layers.1.", "model.inner_model."
    assert torch.equal(sd["former.layers.1.perceiver.to_kv.weight"],
                       torch.cat([ref[f + "0.to_k.weight"], ref[f + "0.to_v.weight"]]))
    assert torch.equal(sd["head.net.decoder.blocks.1.cross_att.query.bias"], ref[h + "decoder.blocks.1.cross_att.query.bias"])
    assert torch.equal(sd["former.queries"], ref["Video_Former.latents"])

    # the temporal attention equals the reference's (fused qkv with biases, head width D / heads, no pre-norm)
    layer = m.former.layers[1]
    x = torch.randn(5, FRAMES, D)
    qkv = F.linear(x, ref[f + "1.qkv.weight"], ref[f + "1.qkv.bias"]).view(5, FRAMES, 3, HEADS, D // HEADS)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    want = F.linear(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(5, FRAMES, D),
                    ref[f + "1.proj.weight"], ref[f + "1.proj.bias"])
    with torch.no_grad():
        got = layer.time_attn(layer.norm_time(x), layer.norm_time(x))
    assert torch.allclose(got, want, atol=1e-5)


def test_convert_refuses_unknown_and_missing_keys(tmp_path):
    src = tmp_path / "odd.pt"
    write_reference(src, {"Video_Former.extra_thing": torch.zeros(3)})
    with pytest.raises(ConvertError, match="unexpected.*extra_thing"):
        convert_dp_calvin(src, tmp_path / "out", allow_pickle=True, heads=HEADS, log=lambda *_: None)
    sd = write_reference(src)
    del sd["model.inner_model.decoder.blocks.0.ln3.bias"]
    torch.save({"model": sd}, src)
    with pytest.raises(ConvertError, match="1 missing.*ln3.bias"):
        convert_dp_calvin(src, tmp_path / "out2", allow_pickle=True, heads=HEADS, log=lambda *_: None)


def _first_action_token_change(head: ActionHead) -> float:
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(1, 1 + FRAMES * QUERIES, D, generator=g)
    x, c_noise = torch.randn(1, N_ACT, ACT, generator=g), torch.full((1,), 0.3)
    ctx2 = ctx.clone()
    ctx2[:, -1] += 3.0  # the last context token
    with torch.no_grad():
        return float((head(x, c_noise, ctx)[:, 0] - head(x, c_noise, ctx2)[:, 0]).abs().max())


def test_reference_compat_reproduces_the_causal_cross_attention():
    torch.manual_seed(0)
    kw = dict(dim=D, encoder_depth=1, decoder_depth=2, heads=HEADS, goal_hidden=2 * D)
    ref = ActionHead(ActionHeadConfig(**kw, reference_compat=True), ACT, N_ACT, GOAL, FRAMES * QUERIES).eval()
    fixed = ActionHead(ActionHeadConfig(**kw), ACT, N_ACT, GOAL, FRAMES * QUERIES).eval()
    for p in fixed.parameters():  # leave the zero-init so the output depends on the context at all
        torch.nn.init.normal_(p, std=0.2)
    assert _first_action_token_change(ref) == 0.0  # action token 0 reads context token 0 only (the reference)
    assert _first_action_token_change(fixed) > 1e-4  # ours reads every context token
    assert not any(k.startswith("net.") for k in fixed.state_dict())
    assert set(ref.state_dict()) == {k for k in ref.state_dict() if k.startswith("net.")}


def test_reference_compat_adaln_has_no_one_plus():
    """Modulation fixed to shift 0, scale 1, gate 1: the reference block is then a plain pre-LN block
    (x + attn(ln x); + cross; + mlp(ln x)); with "1 +" the normalised input would be doubled."""
    torch.manual_seed(0)
    cfg = ActionHeadConfig(dim=D, encoder_depth=1, decoder_depth=1, heads=HEADS, goal_hidden=2 * D,
                           attn_dropout=0.0, resid_dropout=0.0, reference_compat=True)
    head = ActionHead(cfg, ACT, N_ACT, GOAL, FRAMES * QUERIES).eval()
    block = head.net.decoder.blocks[0]
    lin = block.adaLN_zero.modulation[1]
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.cat([torch.zeros(D), torch.ones(D), torch.ones(D)] * 2))
    x, ctx, emb = torch.randn(2, N_ACT, D), torch.randn(2, 5, D), torch.randn(2, 1, D)
    with torch.no_grad():
        want = x + block.attn(block.ln_1(x))
        want = want + block.cross_att(block.ln3(want), ctx)
        want = want + block._mlp(block.ln_2(want))
        assert torch.allclose(block(x, emb, ctx), want, atol=1e-5)
        # the compat head samples chunks of the right shape and its loss is finite
        c = head.context(torch.randn(2, GOAL), torch.randn(2, FRAMES * QUERIES, D))
        assert head.sample(c, steps=3).shape == (2, N_ACT, ACT)
        assert torch.isfinite(head.loss(torch.randn(2, N_ACT, ACT), c))


def _stage2_cfg(**model):
    from videoaction.config import get_preset

    cfg = get_preset("vpp-tiny")
    cfg.model.text.vocabulary = ("open the drawer",)
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def test_stage2_policy_takes_converted_weights_and_refuses_other_sizes(tmp_path):
    """`model.action_weights`: a vpp-tiny stage-2 policy built on a converted folder carries its Video Former and
    action head (reference_compat, the converted tensors) and still predicts; sizes that differ are named."""
    from videoaction.models.vpp.features import feature_layout
    from videoaction.models.vpp.policy import VPPPolicy

    probe = _stage2_cfg()
    m = probe.model
    _, c_feat = feature_layout(m, probe.dataset.image_size // 2 ** (len(m.vae.block_out_channels) - 1))
    sizes = dict(FRAMES=m.num_frames, C_FEAT=c_feat, GOAL=m.text.goal_dim, ACT=m.action_dim, N_ACT=m.n_actions)
    write_reference(tmp_path / "dp.pt", **sizes)
    convert_dp_calvin(tmp_path / "dp.pt", tmp_path / "conv", allow_pickle=True, heads=HEADS, log=lambda s: None)
    policy = VPPPolicy(_stage2_cfg(action_weights=str(tmp_path / "conv"))).eval()
    want = load_converted(tmp_path / "conv").state_dict()
    got = {**{f"former.{k}": v for k, v in policy.former.state_dict().items()},
           **{f"head.{k}": v for k, v in policy.head.state_dict().items()}}
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert policy.cfg.model.head.reference_compat and policy.cfg.model.former.reference_compat
    fresh = VPPPolicy(_stage2_cfg()).eval()
    assert not fresh.cfg.model.head.reference_compat  # without the folder: the fixed head, fresh weights
    obs = {"image": torch.randint(0, 256, (1, 1, m.obs_image_size, m.obs_image_size, 3), dtype=torch.uint8),
           "language": ["open the drawer"]}
    with torch.no_grad():
        out = policy.predict_action(obs)
    assert out["action"].shape == (1, m.n_action_steps, m.action_dim) and torch.isfinite(out["action"]).all()
    with pytest.raises(ConvertError, match=r"n_actions: converted \d+ vs model 3"):
        VPPPolicy(_stage2_cfg(action_weights=str(tmp_path / "conv"), n_actions=3, n_action_steps=3))
    with pytest.raises(ConvertError, match="vpp_action.json"):
        VPPPolicy(_stage2_cfg(action_weights=str(tmp_path / "nothing")))
