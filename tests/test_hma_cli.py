"""HMA through the shared commands: `videoaction train --preset hma-tiny-disc --data TOKENS` (project checkpoints,
exact resume) and `videoaction eval --video` on the trained checkpoint, both dispatched through the family's
declared entries (``Policy.train_entry`` / ``Policy.video_eval_entry``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoaction.cli import main as cli
from videoaction.data.hma_tokens import encode_store
from videoaction.models.base import load_policy
from videoaction.nn.tokenizer.lfq import LFQTokenizer, save_lfq, tiny_lfq_config
from videoaction.train.synthetic import make_store

torch.set_num_threads(1)
# hma-tiny-disc shrunk for a CPU test: the preset's grid (4 x 4) and vocabulary (2^10) are kept
SMALL = ["--model.d-model", "32", "--model.num-layers", "1", "--model.num-heads", "2", "--model.n-action-tokens", "2",
         "--optim.batch-size", "4", "--optim.warmup-steps", "2", "--log-every", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """A PushT-like token dataset (2-d actions, 4 x 4 LFQ ids of 32 px frames) named after a preset embodiment."""
    root = tmp_path_factory.mktemp("hma_cli")
    store = make_store(root / "store.zarr", n_episodes=3, length=12, image_size=32)
    torch.manual_seed(0)
    lfq = save_lfq(LFQTokenizer(tiny_lfq_config(z_channels=10)), root / "lfq")
    data = encode_store(store, root / "tokens", str(lfq), image_size=32, name="pusht", progress=False,
                        log=lambda m: None)
    return root, data


def _train(out, data, steps, *extra):
    return cli(["train", "--preset", "hma-tiny-disc", "--data", str(data), "--out", str(out), "--steps", str(steps),
                "--save-every", "2", *SMALL, *extra])


def _weights(path):
    return {k: v.clone() for k, v in load_policy(path).state_dict().items()}


def test_train_cli_writes_project_checkpoints_and_resumes_exactly(tokens):
    root, data = tokens
    assert _train(root / "full", data, 4) == 0
    ckpt = root / "full" / "checkpoints" / "step_0000004"
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["family"] == "hma" and cfg["preset"] == "hma-tiny-disc" and (ckpt / "model.safetensors").is_file()
    records = [json.loads(line) for line in (root / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(np.isfinite(r["loss/pusht"]) for r in records)
    full = _weights(root / "full")
    start = load_policy(ckpt)  # the checkpoint holds the dataset's action statistics for the embodiment
    assert float(start.net.stems["pusht"].std.abs().sum()) > 0 and not torch.allclose(
        start.net.stems["pusht"].std, torch.ones_like(start.net.stems["pusht"].std))

    assert _train(root / "part", data, 2) == 0
    assert _train(root / "part", data, 2) == 1  # an existing run is not overwritten without --resume
    assert _train(root / "part", data, 4, "--resume") == 0
    resumed = _weights(root / "part")
    assert (root / "part" / "checkpoints" / "step_0000004").is_dir()
    assert [json.loads(x)["step"] for x in (root / "part" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    for name, tensor in full.items():  # 2 + 2 resumed steps == 4 uninterrupted steps, bit for bit
        assert torch.equal(tensor, resumed[name]), name


def test_train_cli_keeps_an_ema_that_resumes_exactly(tokens):
    """`--optim.ema True`: the checkpoint holds the averaged weights beside the trained ones, load_policy prefers
    them, and 2 + 2 resumed steps give the same EMA, bit for bit, as 4 uninterrupted ones."""
    root, data = tokens
    assert _train(root / "ema_full", data, 4, "--optim.ema") == 0
    ckpt = root / "ema_full" / "checkpoints" / "step_0000004"
    assert (ckpt / "ema.safetensors").is_file()
    trained = {k: v for k, v in load_policy(ckpt, prefer_ema=False).state_dict().items()}
    averaged = _weights(ckpt)
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained)  # the average lags the trained weights
    assert _train(root / "ema_part", data, 2, "--optim.ema") == 0
    assert _train(root / "ema_part", data, 4, "--optim.ema", "--resume") == 0
    resumed = _weights(root / "ema_part")
    assert all(torch.equal(v, resumed[k]) for k, v in averaged.items())
    assert _train(root / "part_no_ema", data, 2) == 0
    assert _train(root / "part_no_ema", data, 4, "--optim.ema", "--resume") == 1  # no EMA to resume


def test_train_cli_bf16_autocast_trains_and_fp16_is_refused(tokens, capsys):
    root, data = tokens
    assert _train(root / "bf16", data, 3, "--optim.mixed-precision", "bf16") == 0
    records = [json.loads(x) for x in (root / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(np.isfinite(r["loss"]) for r in records)
    weights = load_policy(root / "bf16").state_dict()
    assert all(v.dtype != torch.bfloat16 for v in weights.values())  # float32 master weights
    assert _train(root / "fp32", data, 3) == 0
    fp32 = load_policy(root / "fp32").state_dict()
    assert set(fp32) == set(weights) and any(not torch.equal(fp32[k], weights[k]) for k in fp32)  # autocast ran
    capsys.readouterr()
    assert _train(root / "fp16", data, 2, "--optim.mixed-precision", "fp16") == 1
    assert "loss scaling" in capsys.readouterr().err and not (root / "fp16" / "checkpoints").exists()


def test_train_cli_names_unknown_embodiment(tokens, capsys):
    root, data = tokens
    assert _train(root / "bad", f"robot-x={data}", 1) == 1
    assert "robot-x" in capsys.readouterr().err


def test_eval_video_cli_reports_hma_metrics_next_to_copy_last(tokens, capsys):
    from videoaction.data.hma_tokens import TokenDataset
    from videoaction.eval.metrics import psnr
    from videoaction.generate import build_decoder

    root, data = tokens
    if not (root / "full" / "checkpoints").is_dir():
        assert _train(root / "full", data, 4) == 0
    out = root / "eval"
    assert cli(["eval", "--video", "--checkpoint", str(root / "full"), "--data", str(data), "--out", str(out),
                "--episodes", "3", "--quiet", "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "copy last frame" in printed and "generation time per frame" in printed
    res = json.loads((out / "video_results.json").read_text())
    m = res["metrics"]
    assert res["family"] == "hma" and res["n_windows"] == len(res["windows"]["pusht"]) > 0
    for key in ("psnr", "ssim", "delta_psnr", "psnr_random", "gen_s_per_frame", "token_acc"):
        assert np.isfinite(m[key]), key
    assert m["gen_s_per_frame"] > 0 and 0 <= m["token_acc"] <= 1
    assert m["delta_psnr"] == pytest.approx(m["psnr"] - m["psnr_random"])
    # copy-last PSNR recomputed here from the same held-out windows: those of the episode the project's split holds
    # out (the one UVA would hold out of the same store)
    from videoaction.data.sampler import split_episodes

    ds = TokenDataset(data)
    policy = load_policy(root / "full")
    _, val = split_episodes(int(ds.segment_ids.max()) + 1, policy.cfg.dataset.val_ratio, policy.cfg.dataset.split_seed)
    assert val.sum() == 1
    assert all(val[ds.segment_ids[s]] for s in res["windows"]["pusht"])
    decode = build_decoder(json.loads((data / "manifest.json").read_text())["encoder"]["path"], True, 1.0)
    ids = np.stack([ds.window(s, policy.mcfg.window)[0] for s in res["windows"]["pusht"]]).astype(np.int64)
    real = decode(torch.from_numpy(ids))
    n = policy.mcfg.num_prompt_frames
    copy = np.repeat(real[:, n - 1: n], real.shape[1] - n, axis=1)
    expect = float(np.minimum(psnr(copy, real[:, n:], reduce=False), 100).mean())
    assert m["psnr_copy_last"] == pytest.approx(expect, rel=1e-5)


def test_token_layout_is_taken_from_the_datasets(tokens):
    from videoaction.config import get_preset
    from videoaction.errors import VideoActionError
    from videoaction.models.hma.run import fit_token_layout, resolve_datasets

    root, data = tokens
    ds = resolve_datasets(get_preset("hma-tiny-disc"), str(data))
    lay = next(iter(ds.values())).layout
    cfg = get_preset("hma-tiny-disc")
    cfg.model.grid, cfg.model.vocab_size = 99, 4
    fit_token_layout(cfg, ds)
    assert (cfg.model.grid, cfg.model.vocab_size) == (lay.frame_shape[-1], lay.vocab_size)
    cont = get_preset("hma-tiny-cont")
    with pytest.raises(VideoActionError, match="holds token ids, the model is continuous"):
        fit_token_layout(cont, ds)


def test_eval_video_teacher_forced_ce_and_user_lpips_fvd(tokens, tmp_path):
    """Discrete HMA: teacher-forced CE / accuracy rows; LPIPS and FVD from user TorchScript files (stand-ins with
    the real calling conventions), next to copy-last-frame."""

    class MeanAbs(torch.nn.Module):  # LPIPS convention: two images (N, 3, H, W) in [-1, 1] -> (N,)
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return (x - y).abs().mean((1, 2, 3))

    class Feat(torch.nn.Module):  # I3D convention
        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                    return_features: bool = True) -> torch.Tensor:
            return torch.stack([x.mean((1, 2, 3, 4)), x.std((1, 2, 3, 4)), x[:, 0].mean((1, 2, 3))], 1)

    torch.jit.script(MeanAbs()).save(str(tmp_path / "lpips.pt"))
    torch.jit.script(Feat()).save(str(tmp_path / "i3d.pt"))
    root, data = tokens
    if not (root / "full" / "checkpoints").is_dir():
        assert _train(root / "full", data, 4) == 0
    out = tmp_path / "eval"
    assert cli(["eval", "--video", "--checkpoint", str(root / "full"), "--data", str(data), "--out", str(out),
                "--episodes", "3", "--quiet", "--no-report", "--lpips", str(tmp_path / "lpips.pt"),
                "--i3d", str(tmp_path / "i3d.pt")]) == 0
    res = json.loads((out / "video_results.json").read_text())
    m = res["metrics"]
    assert 0 < m["tf_ce"] and m["ce_uniform"] == pytest.approx(2 * np.log(32)) and 0 <= m["tf_token_acc"] <= 1
    assert m["lpips"] >= 0 and m["lpips_copy_last"] > 0 and m["fvd"] >= 0 and m["fvd_copy_last"] >= 0
    metrics = [row["metric"] for row in res["table"]]
    for name in ("teacher-forced cross-entropy", "teacher-forced token accuracy", "LPIPS", "FVD"):
        assert any(name in r for r in metrics), name
    assert not any("not computed" in n for n in res["notes"])
