"""DP-C (Diffusion Policy, CNN) family: encoder structure, U-Net shapes, training, sampling, overfitting, persistence.

Runs single-threaded (restored afterwards): on the shared 2-core machine two OpenMP threads are ~10x slower.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from videoaction.config import from_dict, to_dict
from videoaction.errors import ConfigError
from videoaction.data.normalizer import Normalizer
from videoaction.data.transforms import preprocess_frames
from videoaction.models.base import load_policy
from videoaction.models.dp.config import PRESETS, DPConfig, DPRunConfig, dp_tiny
from videoaction.models.dp.policy import DiffusionPolicy
from videoaction.models.dp.unet1d import ConditionalUnet1D
from videoaction.models.dp.vision import ImageEncoder, ResNet18GN, SpatialSoftmax


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def micro_cfg() -> DPRunConfig:
    """dp-tiny's layout shrunk further (32 px, width 8, U-Net [32, 64]) so that training fits a unit test."""
    cfg = dp_tiny()
    cfg.dataset.image_size, cfg.dataset.crop_ratio = 32, 1.0
    cfg.model = DPConfig(backbone_width=8, num_keypoints=8, image_feature_dim=16, down_dims=(32, 64),
                         step_embed_dim=32, obs_image_size=32)
    return cfg


def synthetic(n: int, size: int = 32, seed: int = 1):
    """A bright square at a per-sample position; proprio = that position * 16; actions = line to a random goal."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 2, generator=g) * (size - 12) + 6  # pixel centre (x, y)
    frames = torch.zeros(n, 2, size, size, 3, dtype=torch.uint8)
    for i in range(n):
        x, y = int(pos[i, 0]), int(pos[i, 1])
        frames[i, :, y - 3: y + 3, x - 3: x + 3] = 255
    state = (pos * 16)[:, None].expand(n, 16, 2).clone()  # (n, 16, 2) in [0, 512]
    goal = torch.rand(n, 2, generator=g) * 512
    s = torch.linspace(0, 1, 16)[None, :, None]
    action = state * (1 - s) + goal[:, None] * s  # (n, 16, 2)
    return frames, state, action


def fitted_normalizer(state, action) -> Normalizer:
    return Normalizer.fit_arrays({"action": action.reshape(-1, 2).numpy(), "state": state.reshape(-1, 2).numpy()}, {})


# ------------------------------------------------------------------------------------------------ encoder
def test_resnet18_groupnorm_structure():
    net = ResNet18GN(width=64)
    assert n_params(net) == 11_176_512  # torchvision resnet18 (11,689,512) minus fc (513,000)
    kinds = {type(m) for m in net.modules()}
    assert nn.GroupNorm in kinds
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 20 and all(m.num_groups == m.num_channels // 16 for m in norms)
    names = set(dict(net.named_parameters()))
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.bias",
            "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight"} <= names
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 84, 84))
    assert out.shape == (2, 512, 3, 3)


def test_spatial_softmax_shape_and_bright_spot():
    ss = SpatialSoftmax(in_channels=3, num_keypoints=None)
    fmap = torch.zeros(2, 3, 9, 13)
    fmap[0, 0, 2, 10] = 50.0  # row 2, col 10
    fmap[0, 1, 8, 0] = 50.0
    fmap[1, 2, 4, 6] = 50.0  # the centre
    kp = ss(fmap)
    assert kp.shape == (2, 3, 2)
    xs, ys = torch.linspace(-1, 1, 13), torch.linspace(-1, 1, 9)
    torch.testing.assert_close(kp[0, 0], torch.stack([xs[10], ys[2]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(kp[0, 1], torch.stack([xs[0], ys[8]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(kp[1, 2], torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(kp[0, 2], torch.zeros(2), atol=1e-4, rtol=0)  # uniform map -> centre
    enc = ImageEncoder(width=8, num_keypoints=8, feature_dim=16)
    assert enc.pool.nets.out_channels == 8 and enc(torch.zeros(5, 3, 32, 32)).shape == (5, 16)


def test_unet_shapes_and_conditioning():
    torch.manual_seed(0)
    net = ConditionalUnet1D(input_dim=3, global_cond_dim=10, step_embed_dim=16, down_dims=(16, 32, 64))
    x, cond = torch.randn(4, 16, 3), torch.randn(4, 10)
    out = net(x, torch.tensor([0, 5, 50, 99]), cond)
    assert out.shape == (4, 16, 3)
    assert net(x, 7, cond).shape == (4, 16, 3)  # scalar step broadcast over the batch
    assert not torch.allclose(net(x, 7, cond), net(x, 7, cond + 1.0))  # FiLM uses the condition
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 10, 3), 0, cond[:1])


# ------------------------------------------------------------------------------------------------ policy
def test_presets_and_config_round_trip():
    for name, make in PRESETS.items():
        cfg = make()
        assert cfg.family == "dp" and cfg.preset == name
        assert cfg.dataset.horizon == 16 and cfg.dataset.frames.n_history == 2 and cfg.dataset.frames.n_future == 0
        assert (cfg.dataset.pad_before, cfg.dataset.pad_after) == (1, 7)
        again = from_dict(DPRunConfig, to_dict(cfg))
        assert again == cfg
    assert dp_tiny().model.down_dims == (64, 128, 256) and PRESETS["dp-base"]().model.down_dims == (512, 1024, 2048)
    bad = dp_tiny()
    bad.dataset.frames.n_history = 3
    with pytest.raises(ConfigError, match="n_history"):
        DiffusionPolicy(bad)


def test_dp_tiny_trains_and_predicts_chunks():
    torch.manual_seed(0)
    policy = DiffusionPolicy(dp_tiny())
    assert 4_000_000 < n_params(policy) < 7_000_000
    b, s = 3, policy.cfg.dataset.image_size
    frames, state, action = synthetic(b, size=96)
    policy.set_normalizer(fitted_normalizer(state, action))
    batch = {"image": preprocess_frames(frames, policy.cfg.dataset), "state": state, "action": action,
             "is_pad": torch.zeros(b, 16, dtype=torch.bool), "frame_index": torch.tensor([[0, 1]] * b)}
    assert batch["image"].shape == (b, 2, 3, s, s)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    before = copy.deepcopy(policy.state_dict())
    for _ in range(3):
        out = policy.compute_loss(batch)
        assert torch.isfinite(out.loss) and set(out.terms) == {"action_loss"}
        opt.zero_grad()
        out.loss.backward()
        assert all(p.grad is not None for p in policy.obs_encoder.parameters())  # image path is trained
        opt.step()
    after = policy.state_dict()
    assert not torch.equal(before["obs_encoder.backbone.conv1.weight"], after["obs_encoder.backbone.conv1.weight"])
    assert torch.equal(before["normalizer.fields.action.scale"], after["normalizer.fields.action.scale"])

    policy.eval()
    obs = {"image": frames[:2].numpy(), "state": state[:2, :2].numpy()}  # numpy in, raw 96x96 frames
    with torch.inference_mode():
        ddim = policy.predict_action(obs, sampler="ddim")  # per-call sampler, its default 16 steps
        assert len(policy._scheduler("ddim").timesteps) == 16
        ddpm = policy.predict_action(obs)  # config default: DDPM, 100 steps
    assert len(policy.noise_scheduler.timesteps) == 100
    for res in (ddim, ddpm):
        assert res["action"].shape == (2, 8, 2) and res["action_pred"].shape == (2, 16, 2)
        torch.testing.assert_close(res["action"], res["action_pred"][:, 1:9])  # DP: [To-1 : To-1+Ta]
        assert torch.isfinite(res["action_pred"]).all()
        # clip_sample keeps normalised samples in [-1, 1] -> actions inside the fitted range
        assert res["action_pred"].min() >= action.min() - 1e-3 and res["action_pred"].max() <= action.max() + 1e-3
    spec = policy.observation_spec()
    assert spec["image"].shape == (2, 96, 96, 3) and spec["state"].shape == (2, 2)
    meta = policy.metadata()
    assert meta["action_horizon"] == 16 and meta["n_action_steps"] == 8 and meta["model_family"] == "dp"


def test_overfits_single_sample_and_ddim_reproduces_it():
    """Loss falls >= 15x in 350 steps; DDIM-16 then reproduces the memorised chunk within 6 % (mean) / 15 % (max)
    of the action range (seen on 2 seeds: 52-57x, mean 2.7-3.0 %, max 6-10 %; DDPM-100 ~1 % / 4-5 %; an untrained
    model is off by ~50 %)."""
    torch.manual_seed(0)
    cfg = micro_cfg()
    policy = DiffusionPolicy(cfg)
    frames, state, action = synthetic(1)
    policy.set_normalizer(fitted_normalizer(state, action))
    image = preprocess_frames(frames, cfg.dataset)
    steps, bsz, warmup = 350, 16, 20
    opt = torch.optim.AdamW(policy.parameters(), lr=5e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * (1 - i / steps))
    gen = torch.Generator().manual_seed(0)
    batch = {"image": image.expand(bsz, -1, -1, -1, -1), "state": state.expand(bsz, -1, -1),
             "action": action.expand(bsz, -1, -1), "frame_index": torch.tensor([[0, 1]] * bsz)}
    losses = []
    for _ in range(steps):
        out = policy.compute_loss(batch, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
        losses.append(out.loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-25:]) / 25
    assert first / last >= 15, (first, last)
    policy.eval()
    with torch.inference_mode():
        res = policy.predict_action({"image": frames, "state": state[:, :2]}, sampler="ddim", num_steps=16,
                                    generator=torch.Generator().manual_seed(0))
    err = (res["action_pred"] - action).abs() / (action.max() - action.min())
    assert err.mean() < 0.06 and err.max() < 0.15, (float(err.mean()), float(err.max()))


def test_seeded_sampling_is_deterministic():
    torch.manual_seed(0)
    policy = DiffusionPolicy(micro_cfg()).eval()
    frames, state, _ = synthetic(2)
    obs = {"image": frames, "state": state[:, :2]}
    with torch.inference_mode():
        for sampler, k in (("ddpm", 10), ("ddim", 4)):
            a = policy.predict_action(obs, sampler=sampler, num_steps=k, generator=torch.Generator().manual_seed(3))
            b = policy.predict_action(obs, sampler=sampler, num_steps=k, generator=torch.Generator().manual_seed(3))
            c = policy.predict_action(obs, sampler=sampler, num_steps=k, generator=torch.Generator().manual_seed(4))
            assert torch.equal(a["action_pred"], b["action_pred"])
            assert not torch.allclose(a["action_pred"], c["action_pred"])
    with pytest.raises(ConfigError, match="sampler"):
        policy.predict_action(obs, sampler="euler")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_predicts_on_cuda():
    policy = DiffusionPolicy(micro_cfg()).cuda().eval()
    frames, state, _ = synthetic(2)
    with torch.inference_mode():
        res = policy.predict_action({"image": frames, "state": state[:, :2]}, sampler="ddim",
                                    generator=torch.Generator().manual_seed(0))
    assert res["action"].shape == (2, 8, 2) and res["action"].is_cuda


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = micro_cfg()
    cfg.model.sampler = "ddim"
    policy = DiffusionPolicy(cfg)
    frames, state, action = synthetic(2)
    policy.set_normalizer(fitted_normalizer(state, action))
    ema = copy.deepcopy(policy)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    policy.save_pretrained(tmp_path / "ckpt", ema=ema)
    assert {f.name for f in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors", "ema.safetensors"}
    loaded = load_policy(tmp_path / "ckpt", prefer_ema=False)
    loaded_ema = load_policy(tmp_path / "ckpt")
    assert isinstance(loaded, DiffusionPolicy) and loaded.cfg == cfg and not loaded.training
    obs = {"image": frames, "state": state[:, :2]}
    policy.eval()
    ema.eval()
    with torch.inference_mode():
        want = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
        got = loaded.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
        got_ema = loaded_ema.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
        want_ema = ema.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(got_ema, want_ema, atol=0, rtol=0)
    torch.testing.assert_close(loaded.normalizer.fields["action"].scale, policy.normalizer.fields["action"].scale)
