"""VPP with several cameras (static + wrist, as on CALVIN): every camera's frame goes through the one frozen UNet
pass and the per-frame feature tokens are joined on the token axis (main camera first) before the Video Former."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videoaction.config import get_preset, parse_overrides
from videoaction.data.dataset import SequenceDataset
from videoaction.data.store import EpisodeStore
from videoaction.errors import VideoActionError
from videoaction.models.vpp.features import feature_layout
from videoaction.models.vpp.policy import VPPPolicy

INSTRUCTIONS = ("go right", "go left")
CAMS = ["--dataset.image-keys", "img", "wrist_image"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Main camera: a fixed box; wrist camera: a box whose position gives the action."""
    rng = np.random.default_rng(0)
    store = EpisodeStore.create(tmp_path_factory.mktemp("vpp_cams") / "two_cams.zarr")
    size, length = 32, 12
    for e in range(2):
        main = np.full((length, size, size, 3), 20, np.uint8)
        main[:, 4:10, 4:10] = (230, 180, 40)
        wrist = np.zeros((length, size, size, 3), np.uint8)
        pos = rng.integers(4, size - 4, (length, 2))
        for t, (x, y) in enumerate(pos):
            wrist[t, y - 3: y + 3, x - 3: x + 3] = 255
        store.add_episode({"img": main, "wrist_image": wrist, "state": pos.astype(np.float32),
                           "action": (pos / size * 2 - 1).astype(np.float32)},
                          meta={"language": INSTRUCTIONS[e], "seed": e, "success": True})
    return store.path


def _cfg(store, out="", cams=True):
    return parse_overrides(get_preset("vpp-tiny"), [
        "--data", str(store), "--out", str(out), "--steps", "2", "--save-every", "2", "--log-every", "1",
        "--optim.batch-size", "2", "--model.num-frames", "2", "--model.unet.num-frames", "2",
        "--model.obs-image-size", "32", *(CAMS if cams else [])])


def _obs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 255, (2, 1, 32, 32, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 255, (2, 1, 32, 32, 3), dtype=np.uint8), "language": list(INSTRUCTIONS)}


def _batch(cfg) -> dict:
    ds = SequenceDataset(cfg.data, cfg.dataset, split="train", seed=0)
    items = [ds[i] for i in (0, len(ds) - 1)]
    out = {k: torch.stack([it[k] for it in items]) for k in ("image", "wrist_image", "action")}
    out["language"] = [it["language"] for it in items]
    return out


def _former_io(policy, obs, seed: int = 0, call=None):
    """(Video Former input (B, F, n_cameras * N, C), its output (B, F * Q, D)) of one predict_action call (or of
    ``call(generator)``)."""
    seen = {}
    hook = policy.former.register_forward_hook(lambda mod, args, out: seen.update(feats=args[0], tokens=out))
    g = torch.Generator().manual_seed(seed)
    try:
        out = call(g) if call else policy.predict_action(obs, steps=2, generator=g)
    finally:
        hook.remove()
    return seen["feats"], seen["tokens"], out


def test_two_cameras_train_and_the_wrist_frames_reach_the_video_former(store, tmp_path):
    from videoaction.models.base import load_policy
    from videoaction.train.trainer import TrainOptions, train

    result = train(_cfg(store, tmp_path / "run"), TrainOptions(progress=False, val_batches=0, log=lambda m: None))
    assert result.step == 2 and np.isfinite(result.losses).all()
    policy = load_policy(tmp_path / "run").eval()
    assert policy.history_layout.cameras == ("image", "wrist_image")
    assert {k: v.shape for k, v in policy.observation_spec().items()} == {"image": (1, 32, 32, 3),
                                                                          "wrist_image": (1, 32, 32, 3)}
    obs = _obs()
    feats, tokens, _ = _former_io(policy, obs)
    n_tok, c_feat = feature_layout(policy.cfg.model, policy.latent_size)
    assert feats.shape == (2, 2, 2 * n_tok, c_feat)  # both cameras' tokens on the token axis, one Video Former

    changed = dict(obs, wrist_image=obs["wrist_image"][..., ::-1, :, :].copy())  # only the wrist frames change
    feats2, tokens2, _ = _former_io(policy, changed)
    assert torch.equal(feats[:, :, :n_tok], feats2[:, :, :n_tok])  # main camera's tokens first, untouched
    assert not torch.allclose(feats[:, :, n_tok:], feats2[:, :, n_tok:])
    assert not torch.allclose(tokens, tokens2)  # the action head's input changes
    out = policy.predict_action(obs, steps=2, generator=torch.Generator().manual_seed(0))
    assert out["action_pred"].shape == (2, policy.horizon, 2) and torch.isfinite(out["action_pred"]).all()

    from videoaction.models.vpp.latency import STAGES, stage_latency

    ms = stage_latency(policy, obs, repeats=1, warmup=0, steps=2)
    assert set(ms) == {*STAGES, "total"}
    with pytest.raises(VideoActionError, match="wrist_image"):
        stage_latency(policy, {"image": obs["image"], "language": obs["language"]}, repeats=1, warmup=0)


def test_missing_camera_is_named_and_latents_equal_frames(store):
    cfg = _cfg(store)
    torch.manual_seed(0)
    policy = VPPPolicy(cfg).eval()
    obs = _obs()
    with pytest.raises(VideoActionError, match="missing camera key 'wrist_image'"):
        policy.predict_action({"image": obs["image"], "language": obs["language"]})
    batch = _batch(cfg)
    with pytest.raises(VideoActionError, match="'wrist_image'"):
        policy.compute_loss({k: v for k, v in batch.items() if k != "wrist_image"})

    # a latent store's batch (latent / latent_wrist_image) gives the loss of the frames it was encoded from
    lat = {"latent": policy.encode(batch["image"]), "latent_wrist_image": policy.encode(batch["wrist_image"]),
           "action": batch["action"], "language": batch["language"]}
    feats, _, from_frames = _former_io(policy, None, 1, lambda g: policy.compute_loss(batch, g))
    feats_lat, _, from_latents = _former_io(policy, None, 1, lambda g: policy.compute_loss(lat, g))
    assert torch.allclose(feats, feats_lat, atol=1e-5) and torch.allclose(from_frames.loss, from_latents.loss)
    with pytest.raises(VideoActionError, match="latent_wrist_image"):
        policy.compute_loss({k: v for k, v in lat.items() if k != "latent_wrist_image"})


def test_one_camera_keeps_its_keys_and_its_computation(store):
    torch.manual_seed(0)
    one = VPPPolicy(_cfg(store, cams=False)).eval()
    torch.manual_seed(0)
    two = VPPPolicy(_cfg(store)).eval()
    assert one.history_layout.cameras == ("image",) and list(one.observation_spec()) == ["image"]
    sd1, sd2 = one.state_dict(), two.state_dict()
    assert {k: v.shape for k, v in sd1.items()} == {k: v.shape for k, v in sd2.items()}  # no camera adds a weight
    two.load_state_dict(sd1, strict=True)

    # one camera: exactly the single-camera path (encode -> one UNet pass -> Video Former -> head)
    from videoaction.models.vpp.features import extract_features

    obs = {k: v for k, v in _obs().items() if k != "wrist_image"}
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z0 = one.encode(one.preprocess(torch.as_tensor(obs["image"])), g)[:, 0]
        text, goal = one.text_states(obs["language"], 2)
        ctx = one.head.context(goal, one.former(extract_features(one.tvp, z0, text, generator=g)))
        expected = one.normalizer.unnormalize("action", one.head.sample(ctx, steps=2, generator=g))
        tokens = one.former(extract_features(one.tvp, z0, text, generator=torch.Generator().manual_seed(3)))
    _, got_tokens, got = _former_io(one, obs, 3)
    assert torch.allclose(got_tokens, tokens, atol=1e-6)  # the Video Former's output, as before
    assert torch.allclose(got["action_pred"], expected, atol=1e-6)
