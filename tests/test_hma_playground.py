"""The playground: world model + PushT stepped together; the page in headless chromium reacts to arrow keys."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch

from videoaction.data.store import EpisodeStore
from videoaction.envs import make_env
from videoaction.models.hma.config import DomainConfig, HMAConfig, HMARunConfig
from videoaction.models.hma.policy import HMAPolicy
from videoaction.nn.tokenizer.lfq import LFQTokenizer, save_lfq, tiny_lfq_config
from videoaction.playground import Playground, make_server

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    root = tmp_path_factory.mktemp("playground")
    env = make_env("pusht", seed=0)
    obs, _ = env.reset(seed=0)
    data = {"img": [], "state": [], "action": []}
    for _ in range(8):
        a = (obs["state"][:2] + np.array([10.0, 0.0])).astype(np.float32)
        data["img"].append(obs["image"]), data["state"].append(obs["state"]), data["action"].append(a)
        obs, *_ = env.step(a)
    store = EpisodeStore.create(root / "s.zarr")
    store.add_episode({k: np.stack(v) for k, v in data.items()})
    torch.manual_seed(0)
    lfq = save_lfq(LFQTokenizer(tiny_lfq_config(z_channels=8)), root / "lfq")
    model = HMAConfig(d_model=32, num_layers=1, num_heads=2, window=4, grid=4, vocab_size=256, n_action_tokens=2,
                      num_prompt_frames=2, domains=(DomainConfig("pusht", 2, 1),), tokenizer=str(lfq))
    policy = HMAPolicy(HMARunConfig(model=model)).eval()
    policy.set_action_stats("pusht", [256.0, 256.0], [100.0, 100.0])
    return Playground(policy, root / "s.zarr", episode=0, frame=3), root


def test_steps_move_the_simulator_and_the_model_keeps_a_sliding_window(playground):
    pg, root = playground
    start = pg.reset()
    assert start["step"] == 0 and start["pred"].startswith("data:image/png;base64,")
    x0 = start["agent"][0]
    t0 = time.perf_counter()
    for _ in range(6):  # longer than the model's 4-frame window
        view = pg.step("ArrowRight")
    fps = 6 / (time.perf_counter() - t0)
    assert view["step"] == 6 and view["agent"][0] > x0 + 30 and 0 < view["psnr"] <= 100
    assert len(pg.tokens) == 2 + 6 and fps > 1
    assert pg.step("ArrowUp")["agent"][1] < view["agent"][1]
    mp4 = pg.record(root / "rec.mp4")
    from videoaction.eval.video import read_mp4

    assert read_mp4(mp4).shape[0] == 1 + 7
    assert pg.reset()["agent"][0] == pytest.approx(x0, abs=1e-3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_arrow_keys_in_headless_chromium_change_the_frame_and_the_agent(playground, tmp_path):
    from websockets.sync.client import connect

    pg, _ = playground
    pg.reset()
    server = make_server(pg, port=0, interval_ms=50)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    port = _free_port()
    proc = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
                             f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        targets = None
        for _ in range(100):
            try:
                targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=1).read())
                if any(t["type"] == "page" for t in targets):
                    break
            except OSError:
                time.sleep(0.2)
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        with connect(ws_url, max_size=None, open_timeout=20) as ws:
            ids = iter(range(1, 10 ** 6))

            def cdp(method, **params):
                i = next(ids)
                ws.send(json.dumps({"id": i, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=30))
                    if msg.get("id") == i:
                        return msg.get("result", {})

            def js(expr):
                return cdp("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

            cdp("Page.navigate", url=url)
            for _ in range(100):
                if js("document.getElementById('pred') && document.getElementById('pred').src.length > 100"):
                    break
                time.sleep(0.1)
            before = js("[document.getElementById('pred').src, document.getElementById('agent').textContent]")
            key = dict(key="ArrowRight", code="ArrowRight", windowsVirtualKeyCode=39, nativeVirtualKeyCode=39)
            cdp("Input.dispatchKeyEvent", type="rawKeyDown", **key)
            deadline = time.time() + 20
            while time.time() < deadline and int(js("document.getElementById('step').textContent") or 0) < 3:
                time.sleep(0.1)
            cdp("Input.dispatchKeyEvent", type="keyUp", **key)
            after = js("[document.getElementById('pred').src, document.getElementById('agent').textContent, "
                       "document.getElementById('step').textContent]")
        assert int(after[2]) >= 3
        assert after[0] != before[0]  # the shown predicted frame changed
        assert float(after[1].split(",")[0]) > float(before[1].split(",")[0])  # the agent moved right
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.shutdown()
        server.server_close()
