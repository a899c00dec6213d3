"""The shared policy API: forced training modes, observation validation, latent cache, text life cycle, vocabulary
from the training setup, tokenizer shapes from weights, the [cond; uncond] layout, observation specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_uva_modes import make_batch, micro_cfg
from videoaction.config import get_preset
from videoaction.errors import VideoActionError
from videoaction.models.dp.policy import DiffusionPolicy
from videoaction.models.text_condition import TextConditioning
from videoaction.models.uva.masking import MODE_SPECS
from videoaction.models.uva.policy import UVAPolicy
from videoaction.nn.guidance import doubled, per_half, uncond_flags
from videoaction.nn.latent_cache import LatentCache
from videoaction.nn.text import TextEncoderConfig, TextEncoderError
from videoaction.nn.tokenizer import KL16Autoencoder, TokenizerConfig, kl16_arch, tokenizer_from_state
from videoaction.train.loader import batch_mode
from videoaction.train.setup import fill_model_sizes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def uva():
    torch.manual_seed(0)
    return UVAPolicy(micro_cfg(use_state=True, state_dim=2, use_history_action=True), allow_random_tokenizer=True)


def test_compute_loss_mode_is_an_argument_not_config_state(uva):
    batch = dict(make_batch(2), history_action=torch.zeros(2, 4, 2))
    modes = tuple(uva.cfg.model.task_modes)
    assert batch_mode(True) == "video_model" and batch_mode(False) is None
    for mode in ("video_model", "policy_model"):
        terms = uva.compute_loss(batch, torch.Generator().manual_seed(0), mode=mode).terms
        assert terms["mode"] == list(MODE_SPECS).index(mode)
        video_only = mode == "video_model"
        assert (terms["action_loss"] == 0) == video_only and (terms["video_loss"] == 0) == (not video_only)
    assert tuple(uva.cfg.model.task_modes) == modes  # nothing mutated
    with pytest.raises(VideoActionError, match="unknown task mode 'walk'"):
        uva.compute_loss(batch, mode="walk")
    dp = DiffusionPolicy(get_preset("dp-tiny"))
    with pytest.raises(VideoActionError, match="no training modes"):
        dp.compute_loss({"image": torch.zeros(1, 2, 3, 64, 64), "action": torch.zeros(1, 16, 2),
                         "state": torch.zeros(1, 16, 2)}, mode="video_model")


def test_observation_spec_and_errors_come_from_the_layout(uva):
    spec = uva.observation_spec()
    assert {k: v.shape for k, v in spec.items()} == {"image": (16, 96, 96, 3), "state": (16, 2),
                                                     "history_action": (16, 2)}
    assert uva.n_obs_steps == 16 and uva.execute_from == 0 and uva.history_layout.positions == (3, 7, 11, 15)
    obs = {"image": np.zeros((1, 16, 40, 40, 3), np.uint8), "state": np.zeros((1, 16, 5), np.float32),
           "history_action": np.full((1, 16, 2), np.nan, np.float32)}
    inp = uva.history_inputs(obs)  # extra state dims are dropped (datasets keep the first state_dims)
    assert inp["image"].shape == (1, 4, 3, 32, 32) and inp["state"].shape == (1, 4, 2)
    assert torch.isnan(inp["history_action"]).all()
    with pytest.raises(VideoActionError, match="'history_action'.*ObservationHistory"):
        uva.history_inputs({k: v for k, v in obs.items() if k != "history_action"})
    with pytest.raises(VideoActionError, match=r"'state': expected \(B, 16, 2 float32\).*\(1, 8, 2\)"):
        uva.history_inputs(dict(obs, state=np.zeros((1, 8, 2), np.float32)))
    with pytest.raises(VideoActionError, match="batch size 2, 'image' has 1"):
        uva.history_inputs(dict(obs, state=np.zeros((2, 16, 2), np.float32)))


def test_latent_cache_encodes_only_unseen_frames_and_evicts_oldest():
    calls = []

    def enc(new):  # (1, N, H, W, 3) -> (1, N, 1): the frame's mean as its "latent"
        calls.append(new.shape[1])
        return torch.from_numpy(new.reshape(1, new.shape[1], -1).mean(-1, keepdims=True).astype(np.float32))

    frames = np.arange(6 * 4, dtype=np.uint8).reshape(1, 6, 2, 2, 1).repeat(3, -1)
    cache = LatentCache(max_frames=4)
    a = cache.encode(frames[:, :4], enc)
    b = cache.encode(frames[:, 2:6], enc)  # frames 2, 3 are known
    assert calls == [4, 2] and len(cache) == 4
    assert torch.equal(a[:, 2:], b[:, :2]) and a.shape == (1, 4, 1)
    cache.encode(frames[:, :1], enc)  # frame 0 was evicted (least recently used)
    assert calls == [4, 2, 1]


def test_text_life_cycle_and_vocabulary_from_the_training_setup():
    learned = TextConditioning(TextEncoderConfig(kind="task_embedding", dim=8, vocabulary=("a", "b")))
    assert learned.dim == 8 and learned.encode(["b", "a"], torch.device("cpu"), 8).shape == (2, 8)
    with pytest.raises(VideoActionError, match="non-empty list"):
        learned.encode("a", torch.device("cpu"), 8)
    cfg = micro_cfg(language=True, text=TextEncoderConfig(kind="task_embedding", dim=8), text_tokens=2)
    with pytest.raises(TextEncoderError, match="empty vocabulary"):  # the model opens no store to find one
        UVAPolicy(cfg, allow_random_tokenizer=True)

    class Data:  # what fill_model_sizes reads from a SequenceDataset
        action_dim, state, use_latents, frame_shape = 2, None, False, (40, 40, 3)
        language = ["push the T ", "open", "push the T"]

    cfg.model.use_state = False
    logs = []
    fill_model_sizes(cfg, Data(), logs.append)
    assert cfg.model.text.vocabulary == ("open", "push the T") and any("vocabulary" in line for line in logs)
    p = UVAPolicy(cfg, allow_random_tokenizer=True)
    assert any(k.startswith("text_encoder.") for k in p.state_dict()) and p.cfg.model.text_dim == 8


def test_tokenizer_shapes_from_weights():
    tok = KL16Autoencoder(ch=32, ch_mult=(1, 2), embed_dim=4)
    sd = tok.state_dict()
    assert kl16_arch(sd) == {"ch": 32, "ch_mult": [1, 2], "embed_dim": 4}
    built = tokenizer_from_state(TokenizerConfig(kind="kl16", latent_channels=4, stride=2), sd, "test")
    assert built.load_state_dict(sd) is not None and built.stride == tok.stride
    with pytest.raises(VideoActionError, match="no tokenizer weights"):
        tokenizer_from_state(TokenizerConfig(kind="kl16"), {}, "ckpt")


def test_guidance_layout():
    x = torch.arange(6).view(3, 2)
    assert torch.equal(doubled(x), torch.cat([x, x])) and doubled(None) is None
    assert uncond_flags(3).tolist() == [False] * 3 + [True] * 3
    z = torch.arange(8).view(4, 2)  # rows 0, 1 cond; 2, 3 uncond
    assert per_half(z, lambda h: h[:, 1]).tolist() == [1, 3, 5, 7]
    assert per_half(z, lambda h: h[[1]]).tolist() == [[2, 3], [6, 7]]
