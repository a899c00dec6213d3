"""UVA training objective and inference paths on a micro model: modes, information flow, sampling, CFG."""

from __future__ import annotations

import contextlib
import inspect
import math

import numpy as np
import pytest
import torch

from videoaction.models.uva.config import TASK_MODES, model_config, uva_tiny
from videoaction.models.uva.masking import (MODE_SPECS, cosine_mask_len, random_spatial_mask, sample_mask_ratio)
from videoaction.models.uva.policy import UVAPolicy
from videoaction.nn.diffusion import DiffusionHeadConfig
from videoaction.nn.tokenizer import TokenizerConfig

torch.set_num_threads(1)


def micro_cfg(**kw):
    cfg = uva_tiny()
    cfg.dataset.image_size = 32
    head = dict(width=64, depth=1, sample_steps=8)
    kw = {"history_drop_prob": 0.2, "video_head": DiffusionHeadConfig(**head),
          "action_head": DiffusionHeadConfig(clip_denoised=True, **head), **kw}
    cfg.model = model_config(
        "tiny", width=64, num_heads=2, encoder_depth=1, decoder_depth=1, attn_dropout=0.0, proj_dropout=0.0,
        tokenizer=TokenizerConfig(kind="small", latent_channels=4, stride=8, channels=(8, 16, 16)), **kw)
    return cfg


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return unzero_heads(UVAPolicy(micro_cfg(), allow_random_tokenizer=True)).eval()


def unzero_heads(p):
    """The heads start at exactly zero output (MAR init), so nothing upstream matters yet: perturb them."""
    with torch.no_grad():
        for name, q in p.model.named_parameters():
            if name.startswith(("diffloss.", "diffactloss.net.")) and q.abs().sum() == 0:
                q.normal_(0, 0.02)
    return p


def make_batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(b, 8, 3, 32, 32, generator=g) * 2 - 1, "action": torch.randn(b, 32, 2, generator=g),
            "state": torch.randn(b, 32, 2, generator=g), "is_pad": torch.zeros(b, 32, dtype=torch.bool),
            "frame_index": torch.tensor([[3, 7, 11, 15, 19, 23, 27, 31]] * b)}


def obs(b=1, seed=0, t=16):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (b, t, 40, 40, 3), generator=g, dtype=torch.uint8)}


def loss_in_mode(p, mode, batch, seed=1):
    """``compute_loss`` in one task mode (the ``mode`` argument where the policy takes one)."""
    g = torch.Generator().manual_seed(seed)
    if "mode" in inspect.signature(p.compute_loss).parameters:
        return p.compute_loss(batch, g, mode=mode)
    saved, p.cfg.model.task_modes = p.cfg.model.task_modes, (mode,)
    try:
        return p.compute_loss(batch, g)
    finally:
        p.cfg.model.task_modes = saved


# ----------------------------------------------------------------------------------------------- masking
def test_mask_ratio_truncated_normal_statistics():
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([sample_mask_ratio(g) for _ in range(4000)])
    assert r.min() >= 0.7 and r.max() <= 1.0
    assert abs(r.mean().item() - 0.867) < 0.01  # reference: mean 0.867, median 0.874
    assert abs(r.median().item() - 0.874) < 0.012


def test_spatial_mask_count_and_schedule():
    m = random_spatial_mask(3, 256, 0.8, torch.Generator().manual_seed(0))
    assert m.sum(1).tolist() == [math.ceil(256 * 0.8)] * 3
    assert not torch.equal(m[0], m[1])  # one permutation per sample
    assert [cosine_mask_len(s, 4, 256, 256) for s in range(3)] == [236, 181, 97]


# ----------------------------------------------------------------------------------------------- training modes
@pytest.mark.parametrize("mode", TASK_MODES)
def test_every_mode_trains(policy, mode):
    policy.train()
    out = loss_in_mode(policy, mode, make_batch())
    out.loss.backward()
    spec = MODE_SPECS[mode]
    assert torch.isfinite(out.loss)
    assert (out.terms["video_loss"] > 0) == spec.video_loss and (out.terms["action_loss"] > 0) == spec.action_loss
    grads = {n for n, q in policy.named_parameters() if q.grad is not None and q.grad.abs().sum() > 0}
    assert not any(n.startswith("tokenizer.") for n in grads)  # frozen
    assert any(n.startswith("model.encoder_blocks") for n in grads)
    assert ("model.action_proj_cond.weight" in grads) == spec.actions  # actions enter only in dynamic_model
    policy.zero_grad(set_to_none=True)
    policy.eval()


def test_compute_loss_deterministic_given_generator(policy):
    b = make_batch()
    a, c = policy.compute_loss(b, torch.Generator().manual_seed(3)), policy.compute_loss(b, torch.Generator().manual_seed(3))
    assert a.terms == c.terms


def _future_changed(batch):
    out = dict(batch)
    out["image"] = batch["image"].clone()
    out["image"][:, 4:] = -batch["image"][:, 4:]
    return out


def _history_changed(batch):
    out = dict(batch)
    out["image"] = batch["image"].clone()
    out["image"][:, :4] = torch.flip(batch["image"][:, :4], dims=[-1])
    return out


def _actions_changed(batch):
    return dict(batch, action=batch["action"] + 0.7)


def test_information_flow_per_mode(policy):
    b = make_batch()
    base = {m: loss_in_mode(policy, m, b).terms["loss"] for m in TASK_MODES}
    fut, hist = _future_changed(b), _history_changed(b)
    # policy_model never sees future frames; inverse_model never sees history frames
    assert loss_in_mode(policy, "policy_model", fut).terms["loss"] == base["policy_model"]
    assert loss_in_mode(policy, "inverse_model", hist).terms["loss"] == base["inverse_model"]
    assert loss_in_mode(policy, "inverse_model", fut).terms["loss"] != base["inverse_model"]
    assert loss_in_mode(policy, "policy_model", hist).terms["loss"] != base["policy_model"]
    # actions are an input only in dynamic_model (video_model's loss ignores them entirely)
    act = _actions_changed(b)
    assert loss_in_mode(policy, "dynamic_model", act).terms["loss"] != base["dynamic_model"]
    assert loss_in_mode(policy, "video_model", act).terms["loss"] == base["video_model"]


def test_network_flow_policy_and_dynamics(policy):
    net = policy.model
    g = torch.Generator().manual_seed(0)
    hist = torch.randn(2, 4, 4, 4, 4, generator=g)
    fut = torch.randn(2, 4, 4, 4, 4, generator=g)
    acts = torch.randn(2, 16, 2, generator=g)
    with torch.no_grad():
        z_pol = net(None, hist)
        all_masked = torch.ones(2, 16, dtype=torch.bool)
        assert torch.allclose(net(fut, hist, future_mask=all_masked), z_pol, atol=1e-6)  # fake everywhere
        z_dyn = net(fut, hist, future_mask=all_masked, actions=acts)
        assert not torch.allclose(z_dyn, net(fut, hist, future_mask=all_masked, actions=acts + 1), atol=1e-4)
        # masked positions carry no information about the future latents there
        half = torch.zeros(2, 16, dtype=torch.bool)
        half[:, 8:] = True
        fut2 = fut.clone().flatten(3)
        fut2[..., 8:] += 5.0
        z1 = net(fut, hist, future_mask=half)
        z2 = net(fut2.reshape_as(fut), hist, future_mask=half)
        assert torch.allclose(z1, z2, atol=1e-6)


# ----------------------------------------------------------------------------------------------- inference
def _count_calls(module: torch.nn.Module, counts: dict, key: str) -> list:
    """Forward pre-hooks on the module and every submodule (samplers call submodules, not net.forward)."""
    def hook(*_):
        counts[key] += 1
    return [m.register_forward_pre_hook(hook) for m in module.modules()]


def test_predict_action_never_runs_video_head_or_decoder(policy):
    calls = {"video_head": 0, "decoder": 0, "action_head": 0, "encoder": 0}
    hooks = (_count_calls(policy.model.diffloss, calls, "video_head")
             + _count_calls(policy.tokenizer.decoder, calls, "decoder")
             + _count_calls(policy.tokenizer.encoder, calls, "encoder")
             + _count_calls(policy.model.diffactloss.net, calls, "action_head"))
    try:
        for sampler, steps in (("ddpm", 8), ("ddim", 4), ("dpm", 3)):
            out = policy.predict_action(obs(b=2), sampler=sampler, num_steps=steps,
                                        generator=torch.Generator().manual_seed(0))
            assert out["action"].shape == (2, 8, 2) and out["action_pred"].shape == (2, 16, 2)
        assert calls["video_head"] == 0 and calls["decoder"] == 0
        assert calls["action_head"] > 0 and calls["encoder"] > 0
        vid = policy.predict_video(obs(), num_iter=1, generator=torch.Generator().manual_seed(0))
    finally:
        for h in hooks:
            h.remove()
    assert vid["frames"].dtype == torch.uint8 and vid["frames"].shape == (1, 4, 32, 32, 3)
    assert calls["video_head"] > 0 and calls["decoder"] > 0  # the same counters fire when the video path runs


def test_seeded_sampling_is_deterministic(policy):
    o = obs(b=2, seed=4)
    a1 = policy.predict_action(o, generator=torch.Generator().manual_seed(7))["action_pred"]
    a2 = policy.predict_action(o, generator=torch.Generator().manual_seed(7))["action_pred"]
    a3 = policy.predict_action(o, generator=torch.Generator().manual_seed(8))["action_pred"]
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    v1 = policy.predict_video(o, num_iter=3, generator=torch.Generator().manual_seed(7), decode=False)["latent"]
    v2 = policy.predict_video(o, num_iter=3, generator=torch.Generator().manual_seed(7), decode=False)["latent"]
    assert torch.equal(v1, v2)


def test_cfg_one_equals_unguided(policy):
    cond = policy.condition(obs(seed=2))
    kw = dict(num_iter=2, temperature=1.0)
    plain = policy.sample_video(cond, None, cfg=1.0, generator=torch.Generator().manual_seed(0), **kw)["latent"]
    doubled = policy.sample_video(cond, None, cfg=1.0, force_guidance=True, generator=torch.Generator().manual_seed(0),
                                  **kw)["latent"]
    assert torch.allclose(plain, doubled, atol=1e-5)


@pytest.fixture(scope="module")
def flow_policy():
    """Flow heads sampled in one Euler step without clipping: a sample is noise - v, affine in the (guided)
    velocity, so guidance must give exactly uncond + s (cond - uncond) of the unguided samples."""
    torch.manual_seed(0)
    head = dict(objective="flow", width=64, depth=1, sample_steps=1)
    cfg = micro_cfg(video_head=DiffusionHeadConfig(**head), action_head=DiffusionHeadConfig(**head),
                    cfg_schedule="constant", act_cfg=3.0)  # act_cfg != 1: action guidance is trained
    return unzero_heads(UVAPolicy(cfg, allow_random_tokenizer=True)).eval()


@pytest.mark.parametrize("what", ["actions", "video"])
def test_guidance_combines_cond_and_uncond_by_hand(flow_policy, what):
    p = flow_policy

    def sample(o, s):
        g = torch.Generator().manual_seed(0)
        if what == "actions":
            return p.predict_action(o, cfg=s, generator=g)["action_pred"]
        return p.predict_video(o, num_iter=1, cfg=s, generator=g, decode=False)["latent"]

    oa, ob = obs(seed=2), obs(seed=6)
    cond, uncond, guided = sample(oa, 1.0), sample(oa, 0.0), sample(oa, 3.0)  # cfg 1: unguided; 0: uncond alone
    assert torch.allclose(uncond, sample(ob, 0.0), atol=1e-6)  # the unconditional half never sees the history
    assert not torch.allclose(cond, sample(ob, 1.0), atol=1e-3)  # the conditional one does
    assert not torch.allclose(cond, uncond, atol=1e-3)
    assert torch.allclose(guided, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-4)
    # sampled per position from one shared order: guidance changes values, never which tokens are filled
    assert guided.shape == cond.shape


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _frames(b, n, seed, size=32):
    return torch.randint(0, 256, (b, n, size, size, 3), generator=_g(seed), dtype=torch.uint8)


@contextlib.contextmanager
def fitted_actions(p, lo=(-3.0, 100.0), hi=(5.0, 300.0)):
    """Temporarily a min-max action normaliser fitted on [lo, hi] (outputs are un-normalised into that range)."""
    from videoaction.data.normalizer import Normalizer

    field = p.normalizer.fields["action"]
    saved, mode = {k: v.clone() for k, v in field.state_dict().items()}, field.mode
    p.set_normalizer(Normalizer.fit_arrays({"action": np.array([lo, hi], np.float32)}, {"action": "minmax"}))
    try:
        yield torch.tensor(lo), torch.tensor(hi)
    finally:
        field.load_state_dict(saved)
        field.mode = mode


def test_forward_dynamics_uses_each_samples_actions(policy):
    o = obs(b=2, seed=1)
    acts = torch.randn(2, 16, 2, generator=_g(4))
    d1 = policy.predict_video(o, actions=acts, generator=_g(), decode=False)["latent"]
    assert d1.shape == (2, 4, 4, 4, 4)
    moved = acts.clone()
    moved[1] += 1.0  # only sample 1's actions
    d2 = policy.predict_video(o, actions=moved, generator=_g(), decode=False)["latent"]
    assert torch.equal(d1[0], d2[0]) and not torch.allclose(d1[1], d2[1], atol=1e-4)


def test_inverse_dynamics_reads_the_future_not_the_history(policy):
    fut = _frames(2, 4, seed=1)
    a = policy.inverse_dynamics(None, fut, generator=_g())["action_pred"]
    assert a.shape == (2, 16, 2)
    for hist in (_frames(2, 4, seed=2), _frames(2, 4, seed=3)):  # inverse_model hides the history (reference)
        assert torch.equal(policy.inverse_dynamics(hist, fut, generator=_g())["action_pred"], a)
    other = fut.clone()
    other[1] = _frames(1, 4, seed=9)[0]  # only sample 1's future video
    b = policy.inverse_dynamics(None, other, generator=_g())["action_pred"]
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1], atol=1e-4)
    with fitted_actions(policy) as (lo, hi):  # raw actions: the normalised ones mapped into the fitted range
        raw = policy.inverse_dynamics(None, fut, generator=_g())["action_pred"]
    assert torch.allclose(raw, lo + (a + 1) / 2 * (hi - lo), atol=1e-4)


def test_plan_is_the_video_model_then_the_policy_on_the_last_pass(policy):
    """plan's video is the video model's sample (same noise); with one iteration its last pass has every future
    token still masked, so its actions are the policy's actions drawn right after that video."""
    o = obs(b=2, seed=1)
    kw = dict(cfg=1.0, temperature=0.95)
    plan = policy.plan(o, num_iter=2, generator=_g(), **kw)
    video = policy.predict_video(o, num_iter=2, generator=_g(), **kw)
    assert torch.equal(plan["latent"], video["latent"]) and torch.equal(plan["frames"], video["frames"])
    assert plan["frames"].shape == (2, 4, 32, 32, 3) and plan["action_pred"].shape == (2, 16, 2)
    assert torch.equal(plan["action"], plan["action_pred"][:, : policy.n_action_steps])
    with fitted_actions(policy):  # both un-normalise with the fitted range
        one = policy.plan(o, num_iter=1, generator=_g(), decode=False, **kw)
        g = _g()
        policy.predict_video(o, num_iter=1, generator=g, decode=False, **kw)  # advances g past the video draw
        want = policy.predict_action(o, generator=g)["action_pred"]
    assert torch.allclose(one["action_pred"], want, atol=1e-4) and want[..., 1].min() >= 100.0
    # the planner's actions come from the pass that sees the planned video: not the policy's
    assert not torch.allclose(plan["action_pred"], policy.predict_action(o, generator=_g())["action_pred"], atol=1e-3)


def test_rollout_chunks_follow_their_actions_and_feed_predictions_back(policy):
    o = obs(b=1, seed=5)
    acts = torch.randn(1, 32, 2, generator=_g(7))
    seen = []

    def chunk_actions(k, history):
        seen.append(history.clone())
        return acts[:, 16 * k: 16 * (k + 1)]

    roll = policy.rollout_video(o, chunk_actions, n_chunks=2, num_iter=1, decode=False, generator=_g())
    lat = roll["latent"]
    assert lat.shape == (1, 8, 4, 4, 4) and torch.allclose(roll["action"], acts, atol=1e-6)
    assert torch.equal(seen[1], lat[:, :4])  # the second chunk's history is the first chunk's prediction
    first = policy.predict_video(o, actions=acts[:, :16], num_iter=1, generator=_g(), decode=False)["latent"]
    assert torch.equal(lat[:, :4], first)
    same = policy.rollout_video(o, acts, n_chunks=2, num_iter=1, decode=False, generator=_g())["latent"]
    assert torch.equal(same, lat)  # a given action sequence = the callable returning its chunks
    later = acts.clone()
    later[:, 16:] += 1.0  # the second chunk's actions move the second chunk only
    moved = policy.rollout_video(o, later, n_chunks=2, num_iter=1, decode=False, generator=_g())["latent"]
    assert torch.equal(moved[:, :4], lat[:, :4]) and not torch.allclose(moved[:, 4:], lat[:, 4:], atol=1e-4)
    with fitted_actions(policy):  # raw actions in, raw actions out, whatever the normaliser
        assert torch.allclose(policy.rollout_video(o, acts * 4 + 1, n_chunks=2, num_iter=1, decode=False,
                                                   generator=_g())["action"], acts * 4 + 1, atol=1e-4)
        pol = policy.rollout_video(o, "policy", n_chunks=2, num_iter=1, generator=_g())
        first_policy_chunk = policy.predict_action(o, generator=_g())["action_pred"]
    assert pol["frames"].shape == (1, 8, 32, 32, 3) and pol["action"].shape == (1, 32, 2)
    assert torch.allclose(pol["action"][:, :16], first_policy_chunk, atol=1e-4)
    assert pol["action"][..., 1].min() >= 100.0  # un-normalised into the fitted range
    assert policy.rollout_video(o, torch.zeros(1, 48, 2), n_chunks=3, decode=False)["latent"].shape == (1, 12, 4, 4, 4)


def test_plan_with_dynamics_picks_the_goal_matching_candidate(policy):
    o = obs(b=1, seed=3)
    cands = torch.randn(1, 3, 16, 2)
    g = torch.Generator().manual_seed(0)
    res = policy.plan_with_dynamics(o, cands, goal=lambda lat: -lat.flatten(1).abs().mean(1), generator=g)
    assert res["scores"].shape == (1, 3) and res["latent"].shape == (1, 3, 4, 4, 4, 4)
    assert torch.equal(res["action"][0], cands[0, res["index"][0]])
    # a goal equal to candidate 1's own predicted last frame must select candidate 1
    target = res["latent"][:, 1, -1]
    res2 = policy.plan_with_dynamics(o, cands, goal=target, generator=torch.Generator().manual_seed(0))
    assert res2["index"].tolist() == [1]
    res3 = policy.plan_with_dynamics(o, lambda ob, k: torch.zeros(1, k, 16, 2), n_candidates=2,
                                     goal=torch.randint(0, 256, (1, 40, 40, 3), dtype=torch.uint8))
    assert res3["scores"].shape == (1, 2)


def test_observation_errors_are_clear(policy):
    from videoaction.errors import VideoActionError

    with pytest.raises(VideoActionError, match="expected \\(B, 16, H, W, 3"):
        policy.predict_action(obs(t=8))
    with pytest.raises(VideoActionError, match="actions: expected shape"):
        policy.predict_video(obs(), actions=torch.zeros(1, 5, 2))


def test_language_condition_dropout_and_guidance():
    from videoaction.nn.text import TextEncoderConfig

    torch.manual_seed(0)
    cfg = micro_cfg(language=True, text=TextEncoderConfig(kind="task_embedding", dim=16, vocabulary=("push", "pull")),
                    text_tokens=4, label_drop_prob=0.0)
    p = unzero_heads(UVAPolicy(cfg, allow_random_tokenizer=True)).eval()
    assert p.model.text_proj_cond.weight.shape == (64, 16) and p.model.text_pos_embed.shape == (1, 4, 64)
    assert any(k.startswith("text_encoder.") for k in p.state_dict())  # learned text weights are saved
    b = make_batch(2)
    la = loss_in_mode(p, "policy_model", dict(b, language=["push", "push"])).terms["loss"]
    lb = loss_in_mode(p, "policy_model", dict(b, language=["pull", "pull"])).terms["loss"]
    assert la != lb
    p.cfg.model.label_drop_prob = 1.0  # every text dropped -> the instruction cannot matter
    la = loss_in_mode(p, "policy_model", dict(b, language=["push", "push"])).terms["loss"]
    lb = loss_in_mode(p, "policy_model", dict(b, language=["pull", "pull"])).terms["loss"]
    assert la == lb
    o = dict(obs(b=1), language=["push"])
    a1 = p.predict_action(o, generator=torch.Generator().manual_seed(0))["action_pred"]
    a2 = p.predict_action(dict(o, language=["pull"]), generator=torch.Generator().manual_seed(0))["action_pred"]
    a3 = p.predict_action(o, cfg=2.5, generator=torch.Generator().manual_seed(0))["action_pred"]
    assert not torch.allclose(a1, a2) and not torch.allclose(a1, a3)


def test_rollout_feeds_predictions_back_as_history(policy):
    o = obs(b=1, seed=5)
    roll = policy.rollout_video(o, None, n_chunks=2, num_iter=2, decode=False,
                                generator=torch.Generator().manual_seed(3))["latent"]
    g = torch.Generator().manual_seed(3)
    cond = policy.condition(o)
    first = policy.sample_video(cond, None, num_iter=2, generator=g)["latent"]
    second = policy.sample_video(dict(cond, history=first), None, num_iter=2, generator=g)["latent"]
    assert torch.equal(roll, torch.cat([first, second], dim=1))


def test_latent_cache_reuses_shared_history_frames(policy):
    seq = torch.randint(0, 256, (1, 24, 40, 40, 3), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    first, second = {"image": seq[:, :16]}, {"image": seq[:, 8:24]}  # next call after executing 8 actions
    ref = [policy.condition(o)["history"] for o in (first, second)]
    n = {"enc": 0}
    hook = policy.tokenizer.encoder.register_forward_pre_hook(lambda _m, x: n.__setitem__("enc", n["enc"] + x[0].shape[0]))
    try:
        policy.enable_latent_cache(64)
        got = [policy.condition(o)["history"] for o in (first, second)]
    finally:
        hook.remove()
        policy.enable_latent_cache(0)
    assert n["enc"] == 4 + 2  # frames 11 and 15 of the first call are frames 3 and 7 of the second
    for r, c in zip(ref, got):
        assert torch.allclose(r, c, atol=1e-5)


def test_frame_counts_and_action_horizon_come_from_the_config():
    from videoaction.config import FrameConfig

    cfg = micro_cfg(n_actions=9, n_action_steps=4)
    cfg.dataset.horizon = 16
    cfg.dataset.frames = FrameConfig(n_history=2, n_future=3, offset=1, stride=3)  # [1, 4 | 7, 10, 13]
    p = UVAPolicy(cfg, allow_random_tokenizer=True).eval()
    assert p.model.n_tokens == 3 * 16 and p.n_obs_steps == 5 and p.action_start == 4
    batch = make_batch(2)
    batch = {"image": batch["image"][:, :5], "action": batch["action"][:, :16], "state": batch["state"][:, :16]}
    for mode in TASK_MODES:
        assert torch.isfinite(loss_in_mode(p, mode, batch).loss)
    o = obs(b=2, t=5)
    assert p.predict_action(o)["action_pred"].shape == (2, 9, 2)
    assert p.predict_video(o, num_iter=2)["frames"].shape == (2, 3, 32, 32, 3)
    assert p.rollout_video(o, None, n_chunks=2, decode=False)["latent"].shape == (2, 6, 4, 4, 4)
