"""``uva-tiny-fast``: the uva-tiny network at width 128 — same blocks, tokens and state-dict names, a quarter of the
training FLOPs per sample (counted with FlopCounterMode over every task mode), and it trains."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from videoaction.config import get_preset
from videoaction.models.uva.masking import MODE_SPECS
from videoaction.models.uva.policy import UVAPolicy

torch.set_num_threads(1)
CLAIMED_FLOP_FACTOR = 3.9  # uva-tiny / uva-tiny-fast FLOPs per training sample (measured 3.95-3.99 by mode)


def _policy(preset: str) -> UVAPolicy:
    torch.manual_seed(0)
    return UVAPolicy(get_preset(preset), allow_random_tokenizer=True).train()


def _latent_batch(b: int = 2, seed: int = 0) -> dict:
    """A latent-store batch at uva-tiny's grid: 4 + 4 frames of 16 x 4 x 4 latents, a 32-step action window."""
    g = torch.Generator().manual_seed(seed)
    return {"latent": torch.randn(b, 8, 16, 4, 4, generator=g), "action": torch.randn(b, 32, 2, generator=g),
            "is_pad": torch.zeros(b, 32, dtype=torch.bool),
            "frame_index": torch.tensor([[3, 7, 11, 15, 19, 23, 27, 31]] * b)}


def _step_flops(p: UVAPolicy, mode: str, batch: dict) -> int:
    """FLOPs of one training step (forward + backward) in ``mode``."""
    counter = FlopCounterMode(display=False)
    with counter:
        p.compute_loss(batch, torch.Generator().manual_seed(0), mode=mode).loss.backward()
    p.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def test_fast_preset_is_uva_tiny_at_width_128():
    tiny, fast = get_preset("uva-tiny"), get_preset("uva-tiny-fast")
    assert get_preset("uva-tiny").model.width == 256  # the reference-sized tiny preset is untouched
    assert (fast.model.width, fast.model.video_head.width, fast.model.action_head.width) == (128, 128, 128)
    for name in ("encoder_depth", "decoder_depth", "num_heads", "mlp_ratio", "task_modes", "action_pool"):
        assert getattr(fast.model, name) == getattr(tiny.model, name), name
    assert fast.model.video_head.depth == tiny.model.video_head.depth
    assert fast.dataset == tiny.dataset and fast.optim == tiny.optim
    a, b = _policy("uva-tiny").model.state_dict(), _policy("uva-tiny-fast").model.state_dict()
    assert list(a) == list(b)  # same modules, same names: only widths differ


def test_fast_preset_flops_per_sample_below_uva_tiny():
    batch = _latent_batch()
    tiny, fast = _policy("uva-tiny"), _policy("uva-tiny-fast")
    for mode in MODE_SPECS:
        ft, ff = _step_flops(tiny, mode, batch), _step_flops(fast, mode, batch)
        assert ft == _step_flops(tiny, mode, batch)  # deterministic count
        assert ft / ff >= CLAIMED_FLOP_FACTOR, (mode, ft, ff)


def test_fast_preset_trains():
    """AdamW on one fixed latent batch: the joint loss at fixed evaluation noise falls by a third in 40 steps."""
    p = _policy("uva-tiny-fast")
    batch = _latent_batch(4, seed=1)

    def eval_loss() -> float:
        with torch.no_grad():
            return sum(p.compute_loss(batch, torch.Generator().manual_seed(100 + i), mode="full_dynamic_model")
                       .loss.item() for i in range(4)) / 4

    before = eval_loss()
    opt = torch.optim.AdamW([q for q in p.parameters() if q.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = p.compute_loss(batch, g, mode="full_dynamic_model").loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < before * 2 / 3, (before, after)
