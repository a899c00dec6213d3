"""VPP stage 2: predictive features, Video Former, the diffusion-transformer action head, the policy end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.test_vpp_tvp import INSTRUCTIONS, make_lang_store
from videoaction.config import get_preset, parse_overrides
from videoaction.models.vpp.action_head import ActionHead
from videoaction.models.vpp.config import ActionHeadConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tvp(num_frames: int = 4):
    from videoaction.models.vpp.loading import build_unet, build_vae
    from videoaction.models.vpp.tvp import TVP

    m = get_preset("vpp-tiny-video").model
    m.num_frames = m.unet.num_frames = num_frames
    torch.manual_seed(0)
    return m, TVP(m, build_unet(m.unet), build_vae(m.vae)).eval()


def test_features_are_the_up_block_outputs_of_one_unet_pass():
    from videoaction.models.vpp.features import extract_features, feature_layout

    m, tvp = _tvp()
    z0, text = torch.randn(2, 4, 8, 8), torch.randn(2, 8, 64)
    feats = extract_features(tvp, z0, text, generator=torch.Generator().manual_seed(0))
    # tiny UNet on 8 x 8 latents: up block 0 (64 ch, 4 x 4) upsampled, up block 1 (64 ch, 8 x 8) -> 128 ch, 64 tokens
    assert feats.shape == (2, m.num_frames, 64, 128) and feature_layout(m, 8) == (64, 128)

    # the same tensors inside a full UNet forward at the highest-noise step of the 20-step schedule
    from videoaction.models.vpp.tvp import svd_scheduler

    sched = svd_scheduler(m)
    sched.set_timesteps(20)
    t, sigma = sched.timesteps[0], float(sched.sigmas[0])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, m.num_frames, 4, 8, 8, generator=g) * sched.init_noise_sigma / (sigma ** 2 + 1) ** 0.5
    seen = {}
    hooks = [tvp.unet.up_blocks[i].register_forward_hook(lambda mod, a, out, i=i: seen.__setitem__(i, out))
             for i in (0, 1)]
    with torch.no_grad():
        tvp.unet_out(x, t.reshape(1), z0 / tvp.scaling, text)
    for h in hooks:
        h.remove()
    up0 = torch.nn.functional.interpolate(seen[0], size=(8, 8), mode="nearest")
    ref = torch.cat([up0, seen[1]], 1).flatten(2).transpose(1, 2).reshape(2, m.num_frames, 64, 128)
    assert torch.allclose(feats, ref, atol=1e-5)

    m.features.all_layers, m.features.up_block = False, 0
    assert extract_features(tvp, z0, text).shape == (2, m.num_frames, 16, 64) == (2, m.num_frames,
                                                                                  *feature_layout(m, 8))


def test_video_former_shapes_and_temporal_mixing():
    from videoaction.models.vpp.video_former import VideoFormer

    cfg = get_preset("vpp-tiny").model.former
    torch.manual_seed(0)
    vf = VideoFormer(cfg, in_dim=128, n_frames=4).eval()
    feats = torch.randn(2, 4, 64, 128)
    out = vf(feats)
    assert out.shape == (2, 4 * cfg.queries, cfg.dim)
    changed = feats.clone()
    changed[:, 3] += 1.0  # the last frame only
    out2 = vf(changed)
    assert not torch.allclose(out[:, : cfg.queries], out2[:, : cfg.queries])  # frame 0's queries see frame 3
    cfg.temporal_attention = False
    vf2d = VideoFormer(cfg, in_dim=128, n_frames=4).eval()
    assert torch.allclose(vf2d(feats)[:, : cfg.queries], vf2d(changed)[:, : cfg.queries])  # '2d': no mixing


def _head(**kw) -> ActionHead:
    cfg = ActionHeadConfig(dim=32, encoder_depth=1, decoder_depth=2, heads=4, attn_dropout=0.0, resid_dropout=0.0,
                           goal_hidden=32, **kw)
    torch.manual_seed(0)
    return ActionHead(cfg, action_dim=3, n_actions=6, goal_dim=8, n_context=12)


def test_cross_attention_reads_every_context_token():
    head = _head()
    for p in head.parameters():  # leave zero-init: perturb everything so every path carries signal
        torch.nn.init.normal_(p, std=0.2)
    head.eval()
    ctx = torch.randn(1, 13, 32)
    x = torch.randn(1, 6, 3)
    c = torch.tensor([0.1])
    base = head(x, c, ctx)
    late = ctx.clone()
    late[:, -1] += 3.0  # the last context token
    # action token 0 reads the last context token (the reference's causal mask hid tokens 1.. from it)
    assert not torch.allclose(base[:, 0], head(x, c, late)[:, 0], atol=1e-6)
    # the reference's defect, for contrast: a causal cross-attention leaves token 0 blind to it
    block = head.decoder[0]
    h = torch.randn(1, 6, 32)
    causal = block.cross_attn(h, ctx, causal=True)
    assert torch.allclose(causal[:, 0], block.cross_attn(h, late, causal=True)[:, 0])
    assert not torch.allclose(block.cross_attn(h, ctx)[:, 0], block.cross_attn(h, late)[:, 0])


def test_adaln_zero_init_and_action_positions():
    head = _head()
    for block in head.decoder:
        assert torch.count_nonzero(block.adaln[1].weight) == 0 and torch.count_nonzero(block.adaln[1].bias) == 0
    ctx, x = torch.randn(2, 13, 32), torch.randn(2, 6, 3)
    assert torch.count_nonzero(head(x, torch.tensor([0.1, 2.0]), ctx)) == 0  # zero-init output layer
    torch.nn.init.normal_(head.action_out.weight, std=0.5)
    torch.nn.init.normal_(head.final_adaln[1].weight, std=0.5)
    same = torch.randn(1, 1, 3).expand(2, 6, 3)  # identical action inputs at every position
    out = head(same, torch.tensor([0.1, 0.1]), ctx[:1].expand(2, -1, -1))
    assert not torch.allclose(out[:, 0], out[:, 5])  # learned action-token positions tell them apart


def test_action_head_overfits_and_samples_chunks():
    head = _head()
    head.train()
    g = torch.Generator().manual_seed(0)
    goal, tokens = torch.randn(4, 8, generator=g), torch.randn(4, 12, 32, generator=g)
    target = torch.rand(4, 6, 3, generator=g) * 2 - 1
    opt = torch.optim.Adam(head.parameters(), lr=5e-3)
    losses = []
    for _ in range(200):
        loss = head.loss(target, head.context(goal, tokens), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # measured: 0.98 -> 0.18; sampled chunks 0.03 mean squared error against 0.27 for predicting zeros
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:20]), (np.mean(losses[:20]), np.mean(losses[-20:]))
    head.eval()
    with torch.no_grad():
        ctx = head.context(goal, tokens)
        a = head.sample(ctx, steps=10, sigma_min=0.01, generator=torch.Generator().manual_seed(1))
        b = head.sample(ctx, steps=10, sampler="dpmpp_2m", sigma_min=0.01, generator=torch.Generator().manual_seed(1))
    assert a.shape == b.shape == (4, 6, 3)
    assert float(((a - target) ** 2).mean()) < 0.25 * float((target ** 2).mean())  # memorised chunks
    assert float(((b - target) ** 2).mean()) < 0.25 * float((target ** 2).mean())


def test_sampler_sigmas_are_explicit_parameters():
    s = ActionHead.sigmas(10, 1.0, 80.0)
    assert len(s) == 11 and float(s[0]) == pytest.approx(80.0) and float(s[9]) == pytest.approx(1.0) and s[10] == 0
    assert torch.allclose(s[1:10].log() - s[:9].log(), (s[1] / s[0]).log().expand(9))  # exponential
    head = _head()
    torch.nn.init.normal_(head.action_out.weight, std=0.5)
    ctx = torch.randn(1, 13, 32)
    run = lambda **kw: head.sample(ctx, generator=torch.Generator().manual_seed(0), **kw)  # noqa: E731
    assert torch.equal(run(), run(sigma_min=1.0, sigma_max=80.0, steps=10, sampler="ddim"))  # config defaults
    assert not torch.allclose(run(), run(sigma_min=0.001))
    from videoaction.errors import ConfigError

    with pytest.raises(ConfigError, match="sigma_min"):
        run(sigma_min=0.0)
    with pytest.raises(ConfigError, match="ddim or dpmpp_2m"):
        run(sampler="euler")


# ------------------------------------------------------------------------------------------------ end to end
def _overrides(store, out, frames: int = 4) -> list[str]:
    return ["--data", str(store), "--out", str(out), "--steps", "2", "--save-every", "2", "--log-every", "1",
            "--optim.batch-size", "4", "--model.num-frames", str(frames), "--model.unet.num-frames", str(frames)]


def test_train_both_stages_then_predict(tmp_path):
    from videoaction.models.base import load_policy
    from videoaction.train.trainer import TrainOptions, train

    store = make_lang_store(tmp_path / "s.zarr", n_episodes=4, length=16)
    from videoaction.cli import main

    assert main(["train", "--preset", "vpp-tiny-video", "--no-progress", "--val-batches", "0"]
                + _overrides(store, tmp_path / "s1")
                + ["--dataset.frames.n-future", "3", "--dataset.horizon", "7", "--dataset.pad-after", "6"]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "s1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "video_loss" in r] == [1, 2]
    assert all(np.isfinite(r["video_loss"]) and np.isfinite(r["vae_loss"]) for r in metrics if "video_loss" in r)
    s2 = parse_overrides(get_preset("vpp-tiny"), _overrides(store, tmp_path / "s2") + ["--init", str(tmp_path / "s1")])
    r2 = train(s2, TrainOptions(progress=False, val_batches=0))
    assert r2.step == 2 and np.isfinite(r2.losses).all()

    policy = load_policy(tmp_path / "s2")
    stage1 = load_policy(tmp_path / "s1")
    sd1, sd2 = stage1.state_dict(), policy.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1 if k.startswith(("tvp.", "text.")))  # frozen in stage 2
    assert policy.observation_spec()["image"].shape == (1, 32, 32, 3) and policy.metadata()["language"]
    assert (policy.n_obs_steps, policy.action_chunk_start, policy.execute_from) == (1, 0, 0)
    obs = {"image": np.random.default_rng(0).integers(0, 255, (2, 1, 32, 32, 3), dtype=np.uint8),
           "language": list(INSTRUCTIONS)}
    out = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    again = load_policy(tmp_path / "s2").predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (2, 8, 2) and out["action_pred"].shape == (2, 8, 2)
    assert torch.allclose(out["action_pred"], again["action_pred"])  # save / load round trip
    with pytest.raises(Exception, match="language"):
        policy.predict_action({"image": obs["image"]})
    with pytest.raises(Exception, match="not action-conditioned"):
        policy.predict_video(obs, actions=None)
    from videoaction.models.vpp.latency import STAGES, stage_latency

    ms = stage_latency(policy, obs, repeats=1, warmup=0, steps=2)
    assert set(ms) == {*STAGES, "total"} and all(v > 0 for v in ms.values())
    assert ms["total"] >= sum(ms[k] for k in STAGES) - 0.05
    # served to the existing client: one instruction per observation
    from videoaction.serve.client import PolicyClient
    from videoaction.serve.server import ServeConfig, ServerThread

    with ServerThread(policy, ServeConfig(port=0, max_batch=2)) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        assert client.metadata["model_family"] == "vpp" and "language" in client.metadata["observation"]
        reply = client.infer({"image": obs["image"][0], "language": "go left"})
        assert reply["actions"].shape == (8, 2) and np.isfinite(reply["actions"]).all()
    video = stage1.predict_video(obs["image"][:, 0], list(INSTRUCTIONS), steps=2)
    assert video["frames"].shape == (2, 4, 32, 32, 3) and video["frames"].dtype == torch.uint8

    # stage 2 must keep stage 1's conditioning
    bad = parse_overrides(get_preset("vpp-tiny"), _overrides(store, tmp_path / "bad") + [
        "--init", str(tmp_path / "s1"), "--model.fps", "4"])
    from videoaction.errors import ConfigError
    from videoaction.models.vpp.policy import VPPPolicy

    with pytest.raises(ConfigError, match="fps: 7 .checkpoint. vs 4"):
        VPPPolicy(bad)


def test_action_edm_loss_and_sampler_known_answers():
    class Fixed(ActionHead):
        def forward(self, x_in, c_noise, context):
            self.seen = (x_in, c_noise)
            return torch.full_like(x_in, 0.2)

    cfg = ActionHeadConfig(dim=32, encoder_depth=1, decoder_depth=1, heads=4, goal_hidden=32)
    head = Fixed(cfg, action_dim=3, n_actions=6, goal_dim=8, n_context=12)
    a = torch.rand(4, 6, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = head.loss(a, torch.zeros(4, 13, 32), generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    lo, hi = (torch.sigmoid(torch.tensor((np.log(v) - np.log(0.5)) / 0.5)) for v in (0.001, 80.0))
    sigma = (torch.logit(torch.rand(4, generator=g) * (hi - lo) + lo) * 0.5 + np.log(0.5)).exp().view(4, 1, 1)
    x = a + torch.randn(a.shape, generator=g) * sigma
    sd = 0.5
    c_skip, c_out, c_in = sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / (sigma ** 2 + sd ** 2).sqrt(), \
        1 / (sigma ** 2 + sd ** 2).sqrt()
    assert torch.allclose(head.seen[0], x * c_in, atol=1e-5)
    assert torch.allclose(head.seen[1], sigma.flatten().log() / 4, atol=1e-6)
    assert float(loss) == pytest.approx(float(((0.2 - (a - c_skip * x) / c_out) ** 2).mean()), rel=1e-4)

    # a denoiser that always answers `target` ends exactly there, with either sampler
    target = torch.randn(2, 6, 3)
    inputs = []
    head.denoise = lambda x, s, ctx: inputs.append(x.clone()) or target.clone()
    for sampler in ("ddim", "dpmpp_2m"):
        inputs.clear()
        out = head.sample(torch.zeros(2, 13, 32), steps=3, sigma_min=1.0, sigma_max=20.0, sampler=sampler,
                          generator=torch.Generator().manual_seed(5))
        assert torch.allclose(out, target)
        s = ActionHead.sigmas(3, 1.0, 20.0)
        x0 = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(5)) * 20.0
        r = s[1] / s[0]  # DDIM (DPM-Solver-1): x' = (s'/s) x + (1 - s'/s) D; 2M equals it when D is constant
        assert torch.allclose(inputs[0], x0) and torch.allclose(inputs[1], r * x0 + (1 - r) * target, atol=1e-5)
