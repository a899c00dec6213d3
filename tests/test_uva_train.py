"""UVA learns (a micro model overfits one batch), latent-cache batches, normaliser use, checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_uva_modes import loss_in_mode, make_batch, micro_cfg, obs, unzero_heads
from videoaction.data.normalizer import Normalizer
from videoaction.models.base import load_policy
from videoaction.models.uva.policy import UVAPolicy

torch.set_num_threads(1)


def _eval_loss(p, batch, n=4):
    p.eval()
    with torch.no_grad():
        terms = [p.compute_loss(batch, torch.Generator().manual_seed(100 + i)).terms for i in range(n)]
    p.train()
    return {k: sum(t[k] for t in terms) / n for k in ("loss", "video_loss", "action_loss")}


def test_micro_model_overfits_one_batch():
    """Joint (full_dynamic_model) loss on a fixed batch, same evaluation noise: drops >= 3x in 100 AdamW steps."""
    torch.manual_seed(0)
    cfg = micro_cfg(task_modes=("full_dynamic_model",), history_drop_prob=0.0)
    p = UVAPolicy(cfg, allow_random_tokenizer=True)
    batch = make_batch(4)
    before = _eval_loss(p, batch)
    opt = torch.optim.AdamW([q for q in p.parameters() if q.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    p.train()
    for _ in range(100):
        out = p.compute_loss(batch, g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = _eval_loss(p, batch)
    assert after["loss"] < before["loss"] / 3, (before, after)
    assert after["video_loss"] < before["video_loss"] / 3
    assert after["action_loss"] < before["action_loss"] / 1.5


def test_latent_cache_batch_equals_image_batch():
    torch.manual_seed(0)
    p = UVAPolicy(micro_cfg(), allow_random_tokenizer=True).eval()
    batch = make_batch(2)
    lat = p.encode_frames(batch["image"])
    assert lat.shape == (2, 8, 4, 4, 4)
    cached = {k: v for k, v in batch.items() if k != "image"}
    cached["latent"] = lat
    for seed in range(3):
        a = p.compute_loss(batch, torch.Generator().manual_seed(seed)).terms
        b = p.compute_loss(cached, torch.Generator().manual_seed(seed)).terms
        assert abs(a["loss"] - b["loss"]) < 1e-5


def test_action_window_positions():
    p = UVAPolicy(micro_cfg(), allow_random_tokenizer=True)
    assert (p.action_start, p.h_last, p.n_obs_steps) == (15, 15, 16)  # shift_action: action[:, 15:31]
    assert UVAPolicy(micro_cfg(shift_action=False), allow_random_tokenizer=True).action_start == 16


@pytest.mark.parametrize("shift, window", [(True, (15, 31)), (False, (16, 32))], ids=["shift", "no-shift"])
def test_action_loss_reads_exactly_the_action_window(shift, window):
    """policy_model: actions are targets only, so the loss moves iff an action inside [start, start + 16) moves."""
    torch.manual_seed(0)
    p = unzero_heads(UVAPolicy(micro_cfg(shift_action=shift), allow_random_tokenizer=True)).eval()
    b = make_batch(2)
    base = loss_in_mode(p, "policy_model", b).terms["action_loss"]
    lo, hi = window
    for t in (0, lo - 1, lo, hi - 1, hi, 31):
        if t >= 32:
            continue
        act = b["action"].clone()
        act[:, t] += 0.5
        changed = loss_in_mode(p, "policy_model", dict(b, action=act)).terms["action_loss"] != base
        assert changed == (lo <= t < hi), (t, window)


def test_normaliser_exact_round_trip():
    # dim 0 spans [-3, 5], dim 1 spans [0, 10]: minmax scale (0.25, 0.2), offset (-0.25, -1)
    acts = np.array([[-3.0, 0.0], [5.0, 10.0], [1.0, 2.5]], np.float32)
    norm = Normalizer.fit_arrays({"action": acts}, {"action": "minmax"})
    f = norm.fields["action"]
    assert torch.allclose(f.scale, torch.tensor([0.25, 0.2])) and torch.allclose(f.offset, torch.tensor([-0.25, -1.0]))
    x = torch.tensor([[-3.0, 0.0], [5.0, 10.0], [1.0, 5.0], [9.0, -5.0]])
    y = norm.normalize("action", x)
    assert torch.allclose(y, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [2.0, -2.0]]), atol=1e-6)
    assert torch.allclose(norm.unnormalize("action", y), x, atol=1e-5)


def _range_normaliser(lo, hi):
    return Normalizer.fit_arrays({"action": np.array([lo, hi], np.float32)}, {"action": "minmax"})


def test_predict_action_unnormalises_with_the_fitted_range():
    """Same noise, identity vs a fitted [lo, hi] normaliser: raw = lo + (y + 1) / 2 * (hi - lo) exactly."""
    torch.manual_seed(0)
    p = unzero_heads(UVAPolicy(micro_cfg(), allow_random_tokenizer=True)).eval()
    o = obs(seed=3)
    y = p.predict_action(o, generator=torch.Generator().manual_seed(0))["action_pred"]  # identity: normalised
    assert y.abs().max() <= 1.0 + 1e-6 and y.std() > 0.05  # the action head clips x0 to [-1, 1]
    lo, hi = np.array([-3.0, 100.0]), np.array([5.0, 300.0])
    p.set_normalizer(_range_normaliser(lo, hi))
    out = p.predict_action(o, generator=torch.Generator().manual_seed(0))
    want = torch.tensor(lo, dtype=torch.float32) + (y + 1) / 2 * torch.tensor(hi - lo, dtype=torch.float32)
    assert torch.allclose(out["action_pred"], want, atol=1e-4)
    assert torch.equal(out["action"], out["action_pred"][:, : p.n_action_steps])


def test_compute_loss_normalises_the_targets():
    """Actions a in [-1, 1] under the identity normaliser and lo + (a + 1) / 2 (hi - lo) under the normaliser
    fitted on [lo, hi] are the same normalised targets: identical losses (a skipped normalisation differs)."""
    torch.manual_seed(0)
    p = unzero_heads(UVAPolicy(micro_cfg(), allow_random_tokenizer=True)).eval()
    b = make_batch(2)
    a = torch.rand(2, 32, 2, generator=torch.Generator().manual_seed(5)) * 2 - 1
    ref = loss_in_mode(p, "policy_model", dict(b, action=a)).terms["action_loss"]
    lo, hi = np.array([-3.0, 100.0]), np.array([5.0, 300.0])
    p.set_normalizer(_range_normaliser(lo, hi))
    raw = torch.tensor(lo, dtype=torch.float32) + (a + 1) / 2 * torch.tensor(hi - lo, dtype=torch.float32)
    got = loss_in_mode(p, "policy_model", dict(b, action=raw)).terms["action_loss"]
    assert got == pytest.approx(ref, rel=1e-4)


def test_save_load_round_trip_is_self_contained(tmp_path):
    torch.manual_seed(0)
    p = UVAPolicy(micro_cfg(use_state=True, predict_state=True), allow_random_tokenizer=True).eval()
    p.set_normalizer(Normalizer.fit_arrays({"action": np.random.rand(50, 2) * 4, "state": np.random.rand(50, 2)},
                                           {"action": "minmax", "state": "minmax"}))
    p.save_pretrained(tmp_path / "ckpt")
    q = load_policy(tmp_path / "ckpt")
    assert isinstance(q, UVAPolicy)
    o = obs(b=2)
    o["state"] = np.random.rand(2, 16, 2).astype(np.float32)
    a = p.predict_action(o, generator=torch.Generator().manual_seed(1))["action"]
    b = q.predict_action(o, generator=torch.Generator().manual_seed(1))["action"]
    assert torch.equal(a, b)
    assert q.observation_spec()["state"].shape == (16, 2)
    assert q.predict_state(o, num_steps=4).shape == (2, 16, 2)
    terms = q.compute_loss(make_batch(2), torch.Generator().manual_seed(0)).terms
    assert terms["state_loss"] > 0 and abs(terms["loss"] - terms["video_loss"] - terms["action_loss"]
                                            - terms["state_loss"]) < 1e-4
    assert q.metadata()["observation"]["image"] == {"shape": [16, 96, 96, 3], "dtype": "uint8"}


def test_grad_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        p = UVAPolicy(micro_cfg(grad_checkpointing=ckpt, task_modes=("full_dynamic_model",)),
                      allow_random_tokenizer=True).train()
        out = p.compute_loss(make_batch(2), torch.Generator().manual_seed(0))
        out.loss.backward()
        grads.append(torch.cat([q.grad.flatten() for q in p.model.parameters() if q.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
