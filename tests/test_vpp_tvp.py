"""VPP stage 1: the text-guided video predictor (TVP) on a tiny store, the SVD / CLIP folder loaders, presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoaction.config import get_preset
from videoaction.data.store import EpisodeStore

INSTRUCTIONS = ("go right", "go left")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_lang_store(path, n_episodes: int = 6, length: int = 24, size: int = 32, seed: int = 0):
    """A box that moves right or left as its episode's instruction says; action = next x, y (normalised)."""
    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, overwrite=True)
    box = 6
    for e in range(n_episodes):
        direction = 1.0 if e % 2 == 0 else -1.0
        x0 = size / 2 - direction * 8 + rng.uniform(-2, 2)
        y = rng.uniform(10, size - 10)
        xs = np.clip(x0 + direction * 0.8 * np.arange(length + 1), 4, size - 4)
        img = np.full((length, size, size, 3), 20, np.uint8)
        yy, xx = np.mgrid[0:size, 0:size]
        for t in range(length):
            inside = (np.abs(xx - xs[t]) <= box / 2) & (np.abs(yy - y) <= box / 2)
            img[t][inside] = (230, 180, 40)
        action = np.stack([xs[1:], np.full(length, y)], 1).astype(np.float32)
        state = np.stack([xs[:-1], np.full(length, y)], 1).astype(np.float32)
        store.add_episode({"img": img, "state": state, "action": action},
                          meta={"language": INSTRUCTIONS[e % 2], "seed": e, "success": True})
    return path


def tiny_video_cfg(store, out=""):
    """``vpp-tiny-video`` made smaller still (seconds per step on one CPU thread)."""
    cfg = get_preset("vpp-tiny-video")
    cfg.data, cfg.out = str(store), str(out)
    m = cfg.model
    m.num_frames = 4
    cfg.dataset.frames.n_future = 3
    cfg.dataset.horizon = 7
    cfg.dataset.pad_after = 6
    m.unet.num_frames = 4
    return cfg


def _batches(cfg, n: int, batch_size: int, seed: int = 0):
    from videoaction.data.dataset import SequenceDataset

    ds = SequenceDataset(cfg.data, cfg.dataset, split="train", seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        items = [ds[int(i)] for i in rng.choice(len(ds), batch_size, replace=False)]
        yield {"image": torch.stack([it["image"] for it in items]), "language": [it["language"] for it in items],
               "action": torch.stack([it["action"] for it in items])}


def test_presets_are_registered_and_consistent():
    from videoaction.models.base import family_class
    from videoaction.models.vpp.policy import VPPPolicy

    assert family_class("vpp") is VPPPolicy
    base = get_preset("vpp-base-video").model
    assert (base.unet.in_channels, base.unet.cross_attention_dim, base.text.max_length) == (8, 1024, 20)
    assert (base.fps, base.motion_bucket_id, base.noise_aug_strength, base.num_frames) == (7, 127, 0.0, 16)
    pol = get_preset("vpp-base")
    assert (pol.model.head.sample_steps, pol.model.head.sample_sigma_min, pol.model.head.sample_sigma_max) == \
        (10, 1.0, 80.0)
    assert (pol.model.former.queries * base.num_frames, pol.model.n_actions) == (224, 10)
    for name in ("vpp-tiny-video", "vpp-tiny"):
        get_preset(name).model.validate()
    # paper sizes: SVD's UNet, features 2560 x 256 per frame, Video Former ~18 M and action model ~21 M (vpp.md)
    from accelerate import init_empty_weights

    from videoaction.models.vpp.action_head import ActionHead
    from videoaction.models.vpp.features import feature_layout
    from videoaction.models.vpp.loading import build_unet
    from videoaction.models.vpp.video_former import VideoFormer

    m = pol.model
    with init_empty_weights():
        unet = build_unet(m.unet)
        former = VideoFormer(m.former, 2560, 16)
        head = ActionHead(m.head, 7, 10, 512, former.n_tokens)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(unet) == 1_524_623_082 and feature_layout(m, 32) == (256, 2560)
    assert 18e6 < count(former) < 20e6 and 20e6 < count(head) < 23e6


def test_tvp_loss_falls_on_a_tiny_store(tmp_path):
    from videoaction.models.vpp.policy import VPPPolicy

    cfg = tiny_video_cfg(make_lang_store(tmp_path / "s.zarr"))
    cfg.model.vae.train = False  # a fixed autoencoder: the held-out loss then measures the TVP alone
    torch.manual_seed(0)
    policy = VPPPolicy(cfg)
    assert policy.text.cfg.vocabulary == ("go left", "go right")  # from the store's language column
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    fixed = next(_batches(cfg, 1, 4, seed=5))

    def held_loss():
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return np.mean([policy.compute_loss(fixed, generator=g).terms["video_loss"] for _ in range(3)])

    before = held_loss()
    g = torch.Generator().manual_seed(0)
    for batch in _batches(cfg, 8, 4):
        out = policy.compute_loss(batch, generator=g)
        assert set(out.terms) == {"video_loss", "loss"}
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = held_loss()
    assert after < 0.75 * before, (before, after)  # measured: 0.46 -> 0.25 after 10 steps


def test_conditioning_frame_zero_text_and_time_ids():
    from videoaction.models.vpp.policy import VPPPolicy
    from videoaction.models.vpp.text_tokens import text_dropout

    cfg = get_preset("vpp-tiny-video")
    cfg.model.text.vocabulary = INSTRUCTIONS
    torch.manual_seed(0)
    p = VPPPolicy(cfg).eval()
    m = cfg.model
    assert p.tvp.unet.conv_in.in_channels == 8 == 2 * m.vae.latent_channels
    tok, goal = p.text(["go left", "go right"])
    assert tok.shape == (2, m.text.max_length, m.unet.cross_attention_dim) and goal.shape == (2, m.text.goal_dim)
    d = m.text.dim
    assert torch.equal(tok[..., :d], tok[..., d:])  # tokens concatenated with themselves to the cross width
    raw, _ = p.text.raw(["go left"])
    assert torch.allclose(tok[0, :, :d], raw[0] + p.text.pos)  # sin-cos positions (on in the tiny preset)
    dropped = text_dropout(tok.repeat(50, 1, 1), 0.5, torch.Generator().manual_seed(0))
    zero = (dropped.flatten(1).abs().sum(1) == 0).float().mean()
    assert 0.3 < zero < 0.7
    ids = p.tvp.added_time_ids(2, "cpu")
    assert ids.tolist() == [[m.fps, m.motion_bucket_id, m.noise_aug_strength]] * 2
    x = torch.randn(1, m.num_frames, 4, 8, 8)
    cond = torch.randn(1, 4, 8, 8)
    base = p.tvp.unet_out(x, torch.tensor([0.3]), cond, tok[:1])
    assert not torch.allclose(base, p.tvp.unet_out(x, torch.tensor([0.3]), cond * 0, tok[:1]))  # frame 0 used
    m.fps = 3
    assert not torch.allclose(base, p.tvp.unet_out(x, torch.tensor([0.3]), cond, tok[:1]))  # time ids used
    m.fps = 7
    # CFG sampling: frame 0 is the given latent, instructions matter, a fixed generator reproduces the video
    z0 = torch.randn(2, 4, 8, 8)
    v1 = p.tvp.sample(z0, tok, num_steps=3, generator=torch.Generator().manual_seed(1))
    v2 = p.tvp.sample(z0, tok, num_steps=3, generator=torch.Generator().manual_seed(1))
    v3 = p.tvp.sample(z0, tok.flip(0), num_steps=3, generator=torch.Generator().manual_seed(1))
    assert v1.shape == (2, m.num_frames, 4, 8, 8) and torch.equal(v1, v2) and torch.equal(v1[:, 0], z0)
    assert not torch.allclose(v1, v3)


def test_edm_preconditioning_matches_the_reference_formulas():
    from videoaction.models.vpp.tvp import edm_sigma_weights, svd_scheduler

    c_in, c_skip, c_out = edm_sigma_weights(2.0)
    assert (c_in, c_skip, c_out) == pytest.approx((1 / 5 ** 0.5, 1 / 5, -2 / 5 ** 0.5))
    cfg = get_preset("vpp-base-video").model
    s = svd_scheduler(cfg)
    s.set_timesteps(20)
    assert float(s.sigmas[0]) == pytest.approx(700.0, rel=1e-4)
    assert float(s.sigmas[-2]) == pytest.approx(0.002, rel=1e-3)
    assert float(s.timesteps[0]) == pytest.approx(np.log(700.0) / 4, rel=1e-4)  # c_noise = ln(sigma) / 4


def test_edm_loss_known_answer():
    """The loss's inputs and weighting, with the UNet replaced by a recorder that outputs a fixed F."""
    from videoaction.models.vpp.tvp import TVP

    from types import SimpleNamespace

    m = get_preset("vpp-tiny-video").model
    seen = {}

    class Recorder(TVP):
        def unet_out(self, x_in, c_noise, cond, text):
            seen.update(x_in=x_in, c_noise=c_noise, cond=cond, text=text)
            return torch.full_like(x_in, 0.3)

    tvp = Recorder(m, unet=None, vae=SimpleNamespace(config=SimpleNamespace(scaling_factor=0.5)))  # scale only
    x0 = torch.randn(3, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(3, 8, 64)
    loss = tvp.edm_loss(x0, text, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    sigma = (torch.randn(3, generator=g) * 1.6 + 0.7).exp().view(3, 1, 1, 1, 1)
    x_sigma = x0 + torch.randn(x0.shape, generator=g) * sigma
    assert torch.allclose(seen["x_in"], x_sigma / (sigma ** 2 + 1).sqrt(), atol=1e-6)
    assert torch.allclose(seen["c_noise"], sigma.flatten().log() / 4, atol=1e-6)
    assert torch.allclose(seen["cond"], x0[:, 0] / 0.5) and seen["text"] is text
    x_hat = -sigma / (sigma ** 2 + 1).sqrt() * 0.3 + x_sigma / (sigma ** 2 + 1)
    expected = ((sigma ** 2 + 1) / sigma ** 2 * (x_hat - x0) ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def _save_tiny_svd(root):
    from videoaction.models.vpp.loading import build_unet, build_vae

    cfg = get_preset("vpp-tiny-video").model
    torch.manual_seed(3)
    unet, vae = build_unet(cfg.unet), build_vae(cfg.vae)
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableVideoDiffusionPipeline"}))
    return unet, vae


def test_loads_a_diffusers_svd_folder(tmp_path):
    from videoaction.models.vpp.config import UNetConfig, VAEConfig
    from videoaction.models.vpp.loading import SVDLoadError, load_svd

    unet, vae = _save_tiny_svd(tmp_path / "svd")
    ucfg, vcfg = UNetConfig(), VAEConfig()  # SVD defaults, overwritten by the folder's layout
    u2, v2 = load_svd(tmp_path / "svd", ucfg, vcfg)
    assert ucfg.block_out_channels == (32, 64, 64) and ucfg.cross_attention_dim == 64
    assert vcfg.block_out_channels == (32, 32, 64)
    for a, b in ((unet, u2), (vae, v2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    fresh, _ = load_svd(tmp_path / "svd", UNetConfig(), VAEConfig(), weights=False)
    assert fresh.state_dict().keys() == unet.state_dict().keys()
    assert not torch.equal(fresh.conv_in.weight, unet.conv_in.weight)
    with pytest.raises(SVDLoadError, match="no such directory"):
        load_svd(tmp_path / "missing", UNetConfig(), VAEConfig())
    (tmp_path / "half").mkdir()
    with pytest.raises(SVDLoadError, match="missing unet/config.json"):
        load_svd(tmp_path / "half", UNetConfig(), VAEConfig())
    # a policy on the folder: its weights are the folder's, and the config now describes the folder's layout
    from videoaction.models.vpp.policy import VPPPolicy

    cfg = get_preset("vpp-base-video")
    cfg.model.svd_path = str(tmp_path / "svd")
    cfg.model.text = get_preset("vpp-tiny-video").model.text
    cfg.model.text.vocabulary = INSTRUCTIONS
    cfg.model.num_frames, cfg.dataset.frames.n_future = 8, 7
    cfg.dataset.image_size = 32
    p = VPPPolicy(cfg)
    assert torch.equal(p.tvp.unet.conv_in.weight, unet.conv_in.weight)
    assert cfg.model.unet.block_out_channels == (32, 64, 64)
    # its checkpoint loads without the folder (the layout is in the saved config)
    import shutil

    from videoaction.models.base import load_policy

    p.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "svd")
    q = load_policy(tmp_path / "ckpt")
    assert torch.equal(q.tvp.unet.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(q.tvp.vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)


def test_clip_text_tokens_from_a_local_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tests.test_text import _tiny_vocab
    from videoaction.models.vpp.config import TextConfig
    from videoaction.models.vpp.text_tokens import TextTokens

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
    tcfg = TextConfig(kind="clip", path=str(tmp_path), max_length=20, pos_encoding=False)
    text = TextTokens(tcfg, cross_dim=64)
    assert (tcfg.dim, tcfg.goal_dim) == (32, 16)  # taken from the model
    t, goal = text(["push the t", "open the drawer"])
    assert t.shape == (2, 20, 64) and goal.shape == (2, 16)
    assert torch.equal(t[..., :32], t[..., 32:]) and not torch.allclose(t[0], t[1])
    ref = transformers.CLIPModel.from_pretrained(tmp_path)  # the whole model, as saved
    ids = tok(["push the t"], padding="max_length", max_length=20, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = ref.text_model(**ids)
        emb = ref.text_projection(out.pooler_output)
    assert torch.allclose(t[0, :, :32], out.last_hidden_state[0], atol=1e-5)
    assert torch.allclose(goal[0], emb[0], atol=1e-5)
    assert len(text.state_dict()) == 0  # frozen CLIP stays out of checkpoints
    pe = TextTokens(TextConfig(kind="clip", path=str(tmp_path), max_length=20, pos_encoding=True), cross_dim=64)
    assert not torch.allclose(pe(["push the t"])[0], t[:1])
