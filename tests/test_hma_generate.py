"""`videoaction generate`: store -> LFQ tokens -> HMA checkpoint -> mp4 [prompt | prediction | ground truth]."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoaction.cli import main as cli
from videoaction.data.hma_tokens import encode_store
from videoaction.eval.video import read_mp4
from videoaction.models.hma.config import DomainConfig, HMAConfig, HMARunConfig
from videoaction.models.hma.policy import HMAPolicy
from videoaction.nn.tokenizer.lfq import LFQTokenizer, save_lfq, tiny_lfq_config
from videoaction.train.synthetic import make_store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hma_gen")
    store = make_store(root / "store.zarr", n_episodes=2, length=12, image_size=32)
    torch.manual_seed(0)
    lfq = save_lfq(LFQTokenizer(tiny_lfq_config(z_channels=8)), root / "lfq")
    data = encode_store(store, root / "tokens", str(lfq), image_size=32, name="toy", progress=False,
                        log=lambda m: None)
    model = HMAConfig(d_model=32, num_layers=1, num_heads=2, window=5, grid=4, vocab_size=256, n_action_tokens=2,
                      domains=(DomainConfig("toy", 2, 2),))
    policy = HMAPolicy(HMARunConfig(model=model))
    policy.save_pretrained(root / "ckpt")
    return root, data


def test_generate_writes_side_by_side_video_and_summary(world):
    root, data = world
    out = root / "pred.mp4"
    assert cli(["generate", "--checkpoint", str(root / "ckpt"), "--data", str(data), "--out", str(out),
                "--prompt", "2", "--upscale", "2"]) == 0
    frames = read_mp4(out)
    assert frames.shape == (5, 64, 3 * 64 + 2 * 2 * 2, 3)  # 5 frames of [prompt | prediction | ground truth]
    left, mid, right = frames[..., :64, :], frames[..., 68:132, :], frames[..., 136:, :]
    diff = lambda a, b: float(np.abs(a.astype(float) - b.astype(float)).mean())  # noqa: E731
    assert diff(mid[:2], right[:2]) < 6 and diff(left[:2], right[:2]) < 6  # the prompt is the ground truth
    assert diff(left[4], right[1]) < 6  # the prompt column holds the last prompt frame
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n_prompt"] == 2 and len(summary["psnr_per_frame"]) == 3 and summary["gen_s_per_frame"] > 0
    assert summary["mode"] == "autoregressive" and summary["domain"] == "toy"


def test_generate_rejects_a_window_outside_the_dataset(world, capsys):
    root, data = world
    assert cli(["generate", "--checkpoint", str(root / "ckpt"), "--data", str(data), "--window-index", "99",
                "--out", str(root / "x.mp4")]) == 1
    assert "--window-index 99" in capsys.readouterr().err
