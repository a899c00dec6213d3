"""Training-step speed work keeps the maths: fused / foreach AdamW and multi-tensor clipping equal torch's reference
implementations; the EMA's cached tensor lists follow the model; the trainer's latent cache is built automatically
(only when the frames' encoding is deterministic), reused on resume, and yields the tokenizer's own latents."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from videoaction.config import get_preset, parse_overrides
from videoaction.nn.tokenizer import SmallAutoencoder, save_tokenizer
from videoaction.train.ema import EMA
from videoaction.train.optim import clip_gradients, make_adamw, optimizer_kind
from videoaction.train.setup import LATENT_CACHE_DIR, latent_cache_blocker
from videoaction.train.synthetic import make_store
from videoaction.train.trainer import Trainer, TrainOptions


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Linear(16, 3))


def _grads(model: nn.Module, scale: float = 1.0) -> None:
    torch.manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale


@pytest.mark.parametrize("max_norm", [0.0, 0.5, 1e6])
def test_clip_gradients_matches_torch(max_norm):
    a, b = _net(), _net()
    _grads(a, 3.0)
    _grads(b, 3.0)
    ours = clip_gradients(a.parameters(), max_norm)
    ref = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm if max_norm > 0 else float("inf"))
    assert ours == pytest.approx(float(ref), rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    if max_norm == 0.5:
        assert clip_gradients(a.parameters(), 0.0) == pytest.approx(0.5, rel=1e-4)  # clipped to the bound


def test_clip_gradients_leaves_non_finite_gradients_for_the_guard():
    a = _net()
    _grads(a)
    next(a.parameters()).grad[0, 0] = float("nan")
    before = [p.grad.clone() for p in a.parameters()]
    assert clip_gradients(a.parameters(), 1.0) != clip_gradients(a.parameters(), 1.0)  # nan
    for p, g in zip(a.parameters(), before):
        torch.testing.assert_close(p.grad, g, equal_nan=True)


def test_fused_adamw_takes_the_same_steps_as_the_per_tensor_loop():
    a, b = _net(), _net()
    groups = lambda m: [{"params": [p for p in m.parameters() if p.ndim > 1], "weight_decay": 0.02},  # noqa: E731
                        {"params": [p for p in m.parameters() if p.ndim == 1], "weight_decay": 0.0}]
    fast = make_adamw(groups(a), 1e-2, (0.9, 0.95))
    slow = torch.optim.AdamW(groups(b), lr=1e-2, betas=(0.9, 0.95), foreach=False)
    assert optimizer_kind(fast) == "fused" and optimizer_kind(slow) == "for-loop"
    for step in range(5):
        _grads(a, 1.0 + step)
        _grads(b, 1.0 + step)
        fast.step()
        slow.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    restored = make_adamw(groups(copy.deepcopy(a)), 1e-2, (0.9, 0.95))
    restored.load_state_dict(slow.state_dict())  # checkpoints move between implementations


def test_ema_follows_the_formula_and_new_models():
    model = _net()
    ema = EMA(model, power=0.75)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # first update: decay 0 -> a copy
    for p, q in zip(ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(p, q)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    d = ema.update(model)
    assert 0 < d < 1
    for e, s in zip(ema.module.parameters(), start):
        torch.testing.assert_close(e, s + 1.0 + (1.0 - d))
    other = _net()  # another source model: the cached tensor lists are rebuilt for it
    ema.update(other)
    d3 = ema.last_decay
    for e, s, o in zip(ema.module.parameters(), start, other.parameters()):
        torch.testing.assert_close(e, (s + 2.0 - d) * d3 + o.detach() * (1 - d3))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    store = make_store(root / "store.zarr", n_episodes=2, length=30, image_size=64)
    torch.manual_seed(0)
    tok = save_tokenizer(SmallAutoencoder(16, 16, (), True, 1.0), root / "tok",
                         extra={"image_size": 64, "image_key": "img"})
    return root, store, tok


def _setup(data, out: str, extra=(), **opts) -> tuple[Trainer, list[str]]:
    root, store, tok = data
    cfg = parse_overrides(get_preset("uva-tiny"), ["--data", str(store), "--out", str(root / out), "--steps", "4",
                                                    "--optim.batch-size", "2", "--model.tokenizer.path", str(tok),
                                                    *extra])
    logs: list[str] = []
    trainer = Trainer(cfg, TrainOptions(progress=False, log=logs.append, val_batches=0, **opts))
    trainer._setup()
    return trainer, logs


def test_latent_cache_is_the_default_and_holds_the_tokenizers_latents(data):
    trainer, logs = _setup(data, "auto")
    cache = trainer.run_dir / LATENT_CACHE_DIR
    assert trainer.dataset.use_latents and trainer.dataset.store.path == cache and cache.is_dir()
    assert trainer.reports["latent_cache"] == str(cache)
    assert any("latent cache: encoding" in m for m in logs)
    off, _ = _setup(data, "off", latent_cache="off")
    assert not off.dataset.use_latents
    item, image_item = trainer.dataset[5], off.dataset[5]
    with torch.no_grad():
        want = trainer.policy.encode_frames(image_item["image"][None])[0]
    torch.testing.assert_close(item["latent"], want, rtol=2e-3, atol=2e-3)  # float16 storage
    again, logs2 = _setup(data, "auto", ["--resume"])
    assert again.dataset.use_latents and any("reusing" in m for m in logs2)


def test_no_latent_cache_when_the_frames_change_every_step(data):
    trainer, logs = _setup(data, "shift", ["--dataset.random-shift", "2"])
    assert not trainer.dataset.use_latents and not (trainer.run_dir / LATENT_CACHE_DIR).exists()
    assert any("latent cache: off (the training transform is random (random_shift=2))" in m for m in logs)
    cfg = copy.deepcopy(trainer.cfg)
    cfg.dataset.random_shift, cfg.model.sample_latents = 0, True
    assert "sample_latents" in latent_cache_blocker(cfg, trainer.dataset.store)
    cfg.model.sample_latents = False
    assert latent_cache_blocker(cfg, trainer.dataset.store) is None
    cfg.dataset.image_keys = ("img", "wrist")  # several cameras: the cache encodes each one, so each must exist
    assert "no image key 'wrist'" in latent_cache_blocker(cfg, trainer.dataset.store)
    with pytest.raises(Exception, match="latent_cache"):
        _setup(data, "bad", latent_cache="maybe")


def test_optim_compile_compiles_the_policys_targets_in_place_and_keeps_the_ema_and_keys_eager(data, monkeypatch):
    from videoaction.errors import VideoActionError
    from videoaction.models.uva.policy import UVAPolicy

    plain, _ = _setup(data, "eager")
    trainer, logs = _setup(data, "compiled", ["--optim.compile"])
    targets = trainer.policy.compile_targets()
    net = trainer.policy.model
    assert len(targets) == len(net.encoder_blocks) + len(net.decoder_blocks) + 2  # blocks + both heads' MLPs
    assert all(m._compiled_call_impl is not None for m in targets)  # compiled on their first call, in place
    assert all(m._compiled_call_impl is None for m in plain.policy.compile_targets())
    assert all(m._compiled_call_impl is None for m in trainer.ema.module.modules())  # the EMA copy stays eager
    assert list(trainer.policy.state_dict()) == list(plain.policy.state_dict())  # checkpoints keep their keys
    assert any("optim.compile: " in m for m in logs)
    monkeypatch.setattr(UVAPolicy, "compile_targets", lambda self: [])
    with pytest.raises(VideoActionError, match="names no modules to compile"):
        _setup(data, "none", ["--optim.compile"])
