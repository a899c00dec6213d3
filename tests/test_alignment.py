"""Training windows equal what a rollout feeds, at every step of an episode (episode start included).

For an episode of a small store with a distinct frame, state and action per step, the observation is built the way
the runner builds it (``ObservationHistory``: reset with o0, append each new observation with the action that
produced it, the demo's own actions) at steps 0..40; at each step t the model-level inputs (preprocessed frames at
the history positions, normalised state, normalised history actions) must equal those of the training window whose
newest history frame is step t, and the actions executed at t must be the ones that window trains on.
Also: shift_action=False is refused for execution, history actions never hold the target and NaN maps to a learned
token, the action clip range follows the normaliser, and action guidance is trained or refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from videoaction.config import get_preset
from videoaction.data.dataset import SequenceDataset
from videoaction.data.store import EpisodeStore
from videoaction.errors import ConfigError, VideoActionError
from videoaction.eval.history import ObservationHistory
from videoaction.models.base import family_class
from videoaction.nn.diffusion import DiffusionHeadConfig
from videoaction.nn.tokenizer import TokenizerConfig

torch.set_num_threads(1)
LENGTHS = (30, 64)  # the rollout replays episode 1 (its store index starts at 30, not 0)
EP, A = 1, 2


def _episode(length: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    img = rng.integers(0, 256, (length, 20, 20, 3), dtype=np.uint8)
    img[:, 0, 0, 0] = t % 256  # distinct per step even if the random draws collided
    state = np.stack([t, -t], 1) + rng.normal(size=(length, 2))
    return {"img": img, "state": state.astype(np.float32), "action": rng.uniform(-3, 5, (length, A)).astype(np.float32)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = EpisodeStore.create(tmp_path_factory.mktemp("align") / "demo.zarr")
    for i, n in enumerate(LENGTHS):
        s.add_episode(_episode(n, i))
    return s


def _cfg(preset: str, **model):
    cfg = get_preset(preset)
    cfg.dataset.val_ratio = 0.0
    if cfg.family == "uva":
        m = cfg.model
        m.width, m.num_heads, m.encoder_depth, m.decoder_depth = 32, 2, 1, 1
        m.tokenizer = TokenizerConfig(kind="small", latent_channels=4, stride=16, channels=(8, 8, 8, 8))
        cfg.dataset.image_size = 32
        m.video_head = DiffusionHeadConfig(width=32, depth=1, sample_steps=4)
        m.action_head = DiffusionHeadConfig(width=32, depth=1, sample_steps=4, clip_denoised=True)
        m.use_state, m.state_dim, m.use_history_action = True, 2, True
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def _policy(cfg, dataset):
    cls = family_class(cfg.family)
    p = cls(cfg, allow_random_tokenizer=True) if cfg.family == "uva" else cls(cfg)
    p.set_normalizer(dataset.fit_normalizer())
    return p.eval()


def _window_at(ds: SequenceDataset, episode: int, step: int, h_last: int) -> int:
    """The training window whose newest history frame is ``step`` of ``episode``."""
    start = ds.store.episode_starts[episode]
    for i in range(len(ds)):
        idx, pad = ds.sampler.positions(i)
        if ds.sampler.episode(i) == episode and idx[h_last] == start + step and not pad[h_last]:
            return i
    raise AssertionError(f"no training window has its newest history frame at step {step}")


def _same(a, b, what):
    a, b = a.detach().cpu(), b.detach().cpu()
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert torch.equal(torch.isnan(a), torch.isnan(b)), what
    assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)), what


@pytest.mark.parametrize("preset", ["uva-tiny", "dp-tiny"])
def test_rollout_observation_equals_training_window(store, preset):
    cfg = _cfg(preset)
    ds = SequenceDataset(store, cfg.dataset, split="all", augment=False)
    p = _policy(cfg, ds)
    layout = p.history_layout
    h_last, n_exec = layout.positions[-1], p.n_action_steps
    assert p.action_chunk_start + p.execute_from == h_last  # the first executed action is for the newest frame
    ep = store.get_episode(EP)
    obs_at = lambda t: {"image": ep["img"][t], "state": ep["state"][t]}  # noqa: E731
    hist = ObservationHistory(p.n_obs_steps, action_dim=A)
    hist.reset(obs_at(0))
    for t in range(41):
        obs = {k: v[None] for k, v in hist.stacked().items()}  # batch of one, as the runner stacks them
        live = p.history_inputs(obs)
        batch = default_collate([ds[_window_at(ds, EP, t, h_last)]])
        train = p.batch_history_inputs(batch)
        for key in ("image", "state", "history_action") if cfg.family == "uva" else ("image", "state"):
            _same(live[key], train[key], f"{preset} step {t} {key}")
        # known answers, independent of both paths: the frames and actions of the demo at the expected steps
        steps = [max(0, t - h_last + q) for q in layout.positions]
        _same(live["image"][0], p.preprocess(torch.from_numpy(ep["img"][steps])[None])[0], f"frames at {t}")
        if cfg.family == "uva":
            frame_steps = [t - h_last + q for q in layout.positions]  # < 0: edge-padded copies of o0
            raw = torch.stack([torch.from_numpy(ep["action"][s - 1]) if s >= 1 else torch.full((A,), float("nan"))
                               for s in frame_steps])
            _same(live["history_action"][0], p.normalizer.normalize("action", raw), f"history actions at {t}")
            assert torch.isnan(live["history_action"]).any() == (t - h_last + layout.positions[0] < 1)
        # the actions executed at step t are the demo's a_t .. a_{t+Ta-1}: trained at these window positions
        first = p.action_chunk_start + p.execute_from
        _same(batch["action"][0, first: first + n_exec], torch.from_numpy(ep["action"][t: t + n_exec]),
              f"executed targets at {t}")
        hist.append(obs_at(t + 1), ep["action"][t])
    out = p.predict_action(obs, generator=torch.Generator().manual_seed(0))
    _same(out["action"], out["action_pred"][:, p.execute_from: p.execute_from + n_exec], "executed slice")


def test_first_window_is_the_episode_start(store):
    """pad_before = last history position: the first window's history is [o0, o0, o0, o0] (runner at step 0)."""
    cfg = _cfg("uva-tiny")
    assert (cfg.dataset.pad_before, cfg.dataset.pad_after) == (15, 9)
    ds = SequenceDataset(store, cfg.dataset, split="all", augment=False)
    idx, pad = ds.sampler.positions(_window_at(ds, EP, 0, 15))
    start = store.episode_starts[EP]
    assert idx[[3, 7, 11, 15]].tolist() == [start] * 4 and pad[:15].all() and not pad[15]


def test_shift_action_false_is_not_executed(store):
    cfg = _cfg("uva-tiny", shift_action=False)
    ds = SequenceDataset(store, cfg.dataset, split="all", augment=False)
    p = _policy(cfg, ds)
    assert p.action_chunk_start == 16 and p.execute_from == -1  # targets start one step after the newest frame
    hist = ObservationHistory(p.n_obs_steps, action_dim=A)
    hist.reset({"image": store.get_episode(EP)["img"][0], "state": np.zeros(2, np.float32)})
    obs = {k: v[None] for k, v in hist.stacked().items()}
    for fn in (p.predict_action, p.plan):
        with pytest.raises(VideoActionError, match="shift_action"):
            fn(obs)
    # it trains on the actions after the newest frame: a_t (window position 15) is no target, a_{t+1} is
    with torch.no_grad():
        for q in p.model.diffactloss.net.parameters():
            q.add_(torch.randn_like(q) * 0.05)
    batch = default_collate([ds[_window_at(ds, EP, 20, 15)]])

    def loss(pos=None):
        b = dict(batch, action=batch["action"].clone())
        if pos is not None:
            b["action"][:, pos] += 1.0
        return float(p.compute_loss(b, torch.Generator().manual_seed(0), mode="policy_model").loss.detach())

    assert loss(15) == loss() != loss(16)


def test_history_actions_exclude_the_target_and_map_unknown_to_a_token(store):
    cfg = _cfg("uva-tiny")
    ds = SequenceDataset(store, cfg.dataset, split="all", augment=False)
    p = _policy(cfg, ds)
    ep = store.get_episode(EP)
    batch = default_collate([ds[_window_at(ds, EP, t, 15)] for t in (2, 30)])
    ha = batch["history_action"]  # (2, 4, A) raw
    # the newest history frame is step t: its history action is a_{t-1}, never the first target a_t
    _same(ha[1, -1], torch.from_numpy(ep["action"][29]), "a_{t-1}")
    assert not torch.equal(ha[1, -1], batch["action"][1, p.action_start])
    assert torch.isnan(ha[0, :3]).all() and not torch.isnan(ha[0, 3]).any()  # steps -10, -6, -2 | 2
    # NaN rows -> the learned fake_action_latent (train and eval use the same network path)
    net = p.model
    lat = torch.randn(2, 4, 4, 2, 2)
    nrm = p.normalizer.normalize("action", ha)
    st, act = torch.zeros(2, 4, 2), torch.zeros(2, 16, A)  # actions given: the action stream is not the token
    z0 = net(None, lat, actions=act, state=st, history_actions=nrm, batch_size=2)
    assert torch.isfinite(z0).all()
    with torch.no_grad():
        net.fake_action_latent.add_(1.0)
    z1 = net(None, lat, actions=act, state=st, history_actions=nrm, batch_size=2)
    assert not torch.allclose(z0[0], z1[0])  # sample 0 has unknown history actions: reads the token
    assert torch.allclose(z0[1], z1[1])  # sample 1 has all four: the token does not enter


@pytest.mark.parametrize("mode", ["minmax", "meanstd", "identity"])
def test_action_clip_range_follows_the_normaliser(store, mode):
    cfg = _cfg("uva-tiny", use_state=False, use_history_action=False)
    cfg.dataset.action_norm = mode
    ds = SequenceDataset(store, cfg.dataset, split="all", augment=False)
    p = _policy(cfg, ds)
    data = torch.from_numpy(ds.action)
    normed = p.normalizer.normalize("action", data)
    bound = p.action_clip_range()
    expected = normed.abs().max(0).values
    assert torch.allclose(bound, expected, atol=1e-5)
    if mode == "minmax":
        assert torch.allclose(bound, torch.ones(A), atol=1e-5)
    if mode == "meanstd":
        assert (bound > 1.2).all()  # +-1 sigma would cut off real actions
    # a head pushed far outside the data: every sampled action is clipped into the data's (normalised) range
    with torch.no_grad():
        p.model.diffactloss.net.final_layer.linear.bias[:A].fill_(-50.0)
    cond = {"history": torch.randn(3, 4, 4, 2, 2)}
    a = p.sample_actions(cond, generator=torch.Generator().manual_seed(0))
    assert (a.abs() <= bound + 1e-5).all() and (a.abs() >= 0.5 * bound).any()
    raw = p.normalizer.unnormalize("action", a)
    assert (raw >= data.min(0).values - 1e-3).any() or (raw <= data.max(0).values + 1e-3).any()


@pytest.mark.parametrize("mode", ["minmax", "meanstd"])
def test_dp_clip_range_follows_the_normaliser(store, mode):
    cfg = _cfg("dp-tiny")
    cfg.dataset.action_norm = mode
    ds = SequenceDataset(store, cfg.dataset, split="all", augment=False)
    p = _policy(cfg, ds)
    bound = float(p.normalizer.normalize("action", torch.from_numpy(ds.action)).abs().max())
    for sampler in ("ddpm", "ddim"):
        assert p._scheduler(sampler).config.clip_sample_range == pytest.approx(bound, rel=1e-5)
    assert (bound == pytest.approx(1.0)) == (mode == "minmax")


def test_action_guidance_without_language_is_trained_or_refused(store):
    with pytest.raises(ConfigError, match="history_drop_prob"):
        _cfg("uva-tiny", act_cfg=2.0, history_drop_prob=0.0).model.validate()
    cfg = _cfg("uva-tiny", use_state=False, use_history_action=False)
    ds = SequenceDataset(store, cfg.dataset, split="all", augment=False)
    p = _policy(cfg, ds)  # trained with act_cfg 1: policy mode never dropped the history
    cond = {"history": torch.randn(1, 4, 4, 2, 2)}
    with pytest.raises(VideoActionError, match="untrained"):
        p.sample_actions(cond, cfg=2.0)
    # act_cfg != 1: policy-mode training drops the history (probability 1 here: the loss ignores the frames)
    losses = {}
    for act_cfg in (1.0, 2.0):
        cfg = _cfg("uva-tiny", use_state=False, use_history_action=False, act_cfg=act_cfg, history_drop_prob=1.0)
        torch.manual_seed(0)
        p = _policy(cfg, ds)
        with torch.no_grad():  # the heads start at exactly zero output (MAR init): let z matter
            for name, q in p.model.diffactloss.net.named_parameters():
                q.add_(torch.randn_like(q) * 0.05)
        batch = default_collate([ds[i] for i in (3, 9)])
        other = dict(batch, image=batch["image"].clone())
        other["image"][:, :4] = -batch["image"][:, :4]
        losses[act_cfg] = [float(p.compute_loss(b, torch.Generator().manual_seed(1), mode="policy_model").loss.detach())
                           for b in (batch, other)]
    assert losses[1.0][0] != losses[1.0][1]
    assert losses[2.0][0] == losses[2.0][1]
    assert p.sample_actions(cond, cfg=2.0, generator=torch.Generator().manual_seed(0)).shape == (1, 16, A)


def test_every_uva_and_dp_preset_pads_for_alignment():
    from videoaction.config import aligned_padding, all_presets

    checked = 0
    for name, make in all_presets().items():
        cfg = make()
        if cfg.family not in ("uva", "dp"):
            continue
        ds = cfg.dataset
        want = aligned_padding(ds.frames, ds.horizon, ds.frames.last_history, cfg.model.n_action_steps)
        assert (ds.pad_before, ds.pad_after) == want, name
        checked += 1
    assert checked >= 4


def test_policy_reports_the_padding_alignment_needs():
    from videoaction.models.dp.policy import DiffusionPolicy
    from videoaction.models.uva.policy import UVAPolicy

    assert DiffusionPolicy(_cfg("dp-tiny")).aligned_padding() == (1, 7)
    assert UVAPolicy(_cfg("uva-tiny"), allow_random_tokenizer=True).aligned_padding() == (15, 9)


def test_training_setup_notes_misaligned_padding(store):
    from videoaction.train.setup import check_policy_fits

    cfg = _cfg("dp-tiny")
    cfg.dataset.pad_before = 0
    logs: list[str] = []
    ds = SequenceDataset(store, cfg.dataset, split="all")
    check_policy_fits(_policy(cfg, ds), ds, logs.append)
    assert len(logs) == 1 and "0 / 7" in logs[0] and "1 / 7" in logs[0]
    cfg = _cfg("dp-tiny")
    ds = SequenceDataset(store, cfg.dataset, split="all")
    check_policy_fits(_policy(cfg, ds), ds, logs.append)
    assert len(logs) == 1  # aligned: nothing to note
