"""UVA network layout: reference state-dict names/shapes (meta device, no memory), every size and preset builds."""

from __future__ import annotations

import math

import pytest
import torch

from videoaction.models.uva.config import PRESETS, SIZES, model_config
from videoaction.models.uva.network import UVANetwork

REF_PUSHT = {"file": "uva_pusht_keys.json", "kw": {"action_dim": 2}, "n_keys": 444, "n_params": 261_079_156}
REF_LIBERO = {"file": "uva_libero_keys.json", "kw": {"action_dim": 10, "language": True, "text_dim": 512},
              "n_keys": 449, "n_params": 261_602_948}


def _meta_net(size: str, grid=(16, 16), latent=16, frames=4, **kw) -> UVANetwork:
    with torch.device("meta"):
        return UVANetwork(model_config(size, **kw), latent, grid, frames, frames)


def _shapes(net) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("ref", [REF_PUSHT, REF_LIBERO], ids=["pusht", "libero"])
def test_base_matches_reference_state_dict(ref, reference_keys):
    want = {k: tuple(v) for k, v in reference_keys(ref["file"]).items()}
    got = _shapes(_meta_net("base", **ref["kw"]))
    assert sorted(set(want) - set(got)) == []  # missing
    assert sorted(set(got) - set(want)) == []  # unexpected
    assert {k: got[k] for k in want if got[k] != want[k]} == {}
    assert len(got) == ref["n_keys"]
    assert sum(math.prod(s) for s in got.values()) == ref["n_params"]


def test_stage1_layout_has_no_action_head():
    got = _shapes(_meta_net("base", predict_action=False, task_modes=("video_model",)))
    assert len(got) == 444 - 72 and not any(k.startswith("diffactloss.") for k in got)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_size_forward_shape_on_meta(size):
    net = _meta_net(size, grid=(8, 8), latent=8)
    b, n = 2, 4 * 64
    with torch.device("meta"):
        fut, hist = torch.empty(b, 4, 8, 8, 8), torch.empty(b, 4, 8, 8, 8)
        mask = torch.zeros(b, 64, dtype=torch.bool)
        z = net(fut, hist, future_mask=mask, actions=torch.empty(b, 16, 2))
        assert z.shape == (b, n, SIZES[size][0])
        cond = net.diffactloss.aggregate(z)
    assert cond.shape == (b, 16, SIZES[size][0])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_on_meta(name):
    from videoaction.models.uva.policy import UVAPolicy

    cfg = PRESETS[name]()
    if cfg.model.language:
        cfg.model.text.kind = "task_embedding"  # CLIP needs a local model directory; layout is the same
        cfg.model.text.vocabulary = ("push the block",)
    with torch.device("meta"):
        p = UVAPolicy(cfg, allow_random_tokenizer=True)
    spec = p.observation_spec()
    assert spec["image"].shape == (16, cfg.model.obs_image_size, cfg.model.obs_image_size, 3)
    assert p.horizon == 16 and p.n_action_steps == 8
    assert hasattr(p.model, "diffactloss") == cfg.model.predict_action
    # checkpoints are self-contained: the tokenizer's weights are in the state dict, the frozen flag holds
    assert any(k.startswith("tokenizer.") for k in p.state_dict())
    assert not any(q.requires_grad for q in p.tokenizer.parameters())


def test_uneven_streams_map_tokens_to_items():
    from videoaction.models.uva.network import _stream_index

    idx = _stream_index(16, 1024)
    assert idx.tolist() == torch.arange(16).repeat_interleave(64).tolist()  # reference: 64x repeat
    idx = _stream_index(3, 8)
    assert idx.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
