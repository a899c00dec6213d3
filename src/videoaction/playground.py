"""`videoaction playground`: drive an HMA world model from the keyboard in a local web page, beside the simulator.

    videoaction playground --checkpoint runs/hma --store pusht.zarr --episode 3 --frame 20 --domain pusht

The page (http://127.0.0.1:PORT) sends the held arrow key (or on-screen button) every ``--interval-ms``; each step
moves PushT's commanded target by ``--step-px`` from the agent, the simulator takes the action, and the world model
predicts the next frame from its own history (a sliding window of the model's frames) and the same action. The page
shows both frames, the per-step PSNR between them (at the model's resolution), the agent position and the frame
rate; Reset restarts from the chosen store frame, Record writes the played steps as an mp4 [prediction | simulator].
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from videoaction.errors import VideoActionError

KEYS = {"ArrowUp": (0.0, -1.0), "ArrowDown": (0.0, 1.0), "ArrowLeft": (-1.0, 0.0), "ArrowRight": (1.0, 0.0),
        "none": (0.0, 0.0)}


def png_b64(frame: np.ndarray, scale: int = 4) -> str:
    from PIL import Image

    img = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Playground:
    """World model + simulator stepped with the same actions (PushT-style absolute target actions)."""

    def __init__(self, policy, store, episode: int = 0, frame: int | None = None, domain: str = "pusht",
                 env: str = "pusht", tokenizer: str | None = None, step_px: float = 20.0, decode_steps: int = 1,
                 allow_pickle: bool = False):
        from videoaction.config import DatasetConfig
        from videoaction.data.store import EpisodeStore
        from videoaction.envs import make_env
        from videoaction.generate import build_decoder
        from videoaction.nn.tokenizer.lfq import load_lfq

        self.policy, self.m = policy, policy.mcfg
        self.domain, self.dom = domain, self.m.domain(domain)
        if self.m.variant != "discrete":
            raise VideoActionError("the playground runs the discrete (LFQ) HMA variant")
        spec = tokenizer or self.m.tokenizer
        if not spec:
            raise VideoActionError("the checkpoint records no tokenizer (model.tokenizer); pass --tokenizer")
        self.tok = load_lfq(spec, allow_pickle=allow_pickle)
        self.decode = build_decoder(spec, True, 1.0, allow_pickle)
        self.size = self.m.grid * self.tok.stride
        self.dcfg = DatasetConfig(image_size=self.size)
        self.store = EpisodeStore.open(store)
        ep = self.store.get_episode(episode, ["img", "state", "action"])
        stride, n_prompt = self.dom.stride, max(1, self.m.num_prompt_frames)
        first = (n_prompt - 1) * stride
        self.frame = first if frame is None else int(frame)
        if not first <= self.frame < len(ep["img"]):
            raise VideoActionError(f"--frame {self.frame}: must be in [{first}, {len(ep['img'])}) for a prompt of "
                                   f"{n_prompt} frames at stride {stride}")
        idx = list(range(self.frame - first, self.frame + 1, stride))
        self.prompt_tokens = self._encode(ep["img"][idx])  # (P, h, w)
        acts = [ep["action"][i: i + stride].reshape(-1) for i in idx[:-1]]
        self.prompt_actions = acts  # actions between the prompt frames
        self.start_state = ep["state"][self.frame]
        self.env = make_env(env, seed=0)
        self.step_px, self.decode_steps = float(step_px), int(decode_steps)
        self.lock = threading.Lock()
        self.reset()

    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        from videoaction.data.transforms import transform_frames

        return self.tok.encode_ids(transform_frames(frames, self.dcfg, None))

    def _small(self, frame: np.ndarray) -> np.ndarray:
        from videoaction.data.transforms import transform_frames

        x = transform_frames(frame[None], self.dcfg, None)[0]
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()

    def reset(self) -> dict:
        with self.lock:
            obs, _ = self.env.reset(seed=0, options={"reset_to_state": np.asarray(self.start_state, np.float64)})
            self.state = obs["state"]
            self.tokens = list(self.prompt_tokens)
            self.actions = list(self.prompt_actions)
            first = self.decode(self.prompt_tokens[-1][None, None])[0, 0]
            self.sim_frame, self.pred_frame = self._small(obs["image"]), first
            self.recorded = [(first, self.sim_frame)]
            self.steps, self.last_ms = 0, 0.0
            return self.view()

    def step(self, key: str) -> dict:
        if key not in KEYS:
            raise VideoActionError(f"unknown key {key!r}; expected one of {sorted(KEYS)}")
        with self.lock:
            t0 = time.perf_counter()
            dx, dy = KEYS[key]
            target = np.clip(self.state[:2] + self.step_px * np.array([dx, dy]), 0, 512).astype(np.float32)
            for _ in range(self.dom.stride):  # one model frame = `stride` simulator steps of the same action
                obs, *_ = self.env.step(target)
            self.state = obs["state"]
            self.actions.append(np.tile(target, self.dom.stride))
            ctx = self.tokens[-(self.m.window - 1):]
            acts = self.actions[-len(ctx):]
            x = torch.stack(ctx + [torch.zeros_like(ctx[0])])[None]  # (1, n + 1, h, w), the last frame to predict
            a = torch.from_numpy(np.stack(acts + [np.zeros_like(acts[0])]).astype(np.float32))[None]
            pred = self.policy.generate(x, a, self.domain, n_prompt=len(ctx), steps=self.decode_steps,
                                        generator=torch.Generator().manual_seed(self.steps))
            self.tokens.append(pred[0, -1])
            self.pred_frame = self.decode(pred[:, -1:])[0, 0]
            self.sim_frame = self._small(obs["image"])
            self.recorded.append((self.pred_frame, self.sim_frame))
            self.steps += 1
            self.last_ms = (time.perf_counter() - t0) * 1000
            return self.view()

    def view(self) -> dict:
        from videoaction.eval.metrics import psnr

        return {"pred": png_b64(self.pred_frame), "sim": png_b64(self.sim_frame), "step": self.steps,
                "psnr": float(min(psnr(self.pred_frame, self.sim_frame), 100.0)),
                "agent": [round(float(v), 1) for v in self.state[:2]], "ms": round(self.last_ms, 1)}

    def record(self, path) -> str:
        from videoaction.eval.video import upscale, write_mp4

        with self.lock:
            frames = np.stack([np.concatenate([p, np.full((p.shape[0], 2, 3), 255, np.uint8), s], axis=1)
                               for p, s in self.recorded])
        return str(write_mp4(path, upscale(frames, 4), fps=10))


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>videoaction playground</title>
<style>body{font-family:sans-serif;margin:16px} img{image-rendering:pixelated;width:256px;height:256px;margin:4px;
border:1px solid #888} button{font-size:18px;width:48px;height:40px;margin:2px}</style></head><body>
<h3>HMA world model (left) vs simulator (right)</h3>
<div><img id="pred"><img id="sim"></div>
<div>step <span id="step">0</span> | PSNR <span id="psnr">-</span> dB | agent <span id="agent">-</span> |
<span id="fps">-</span> predicted frames / s | model step <span id="ms">-</span> ms</div>
<div><button data-k="ArrowUp">&uarr;</button><button data-k="ArrowLeft">&larr;</button>
<button data-k="ArrowDown">&darr;</button><button data-k="ArrowRight">&rarr;</button>
<button id="reset" style="width:80px">Reset</button><button id="record" style="width:80px">Record</button>
<span id="saved"></span></div>
<script>
let key = null, busy = false, times = [];
function show(v){pred.src=v.pred; sim.src=v.sim; step.textContent=v.step; psnr.textContent=v.psnr.toFixed(2);
  agent.textContent=v.agent.join(', '); ms.textContent=v.ms;}
async function post(url, body){const r = await fetch(url, {method:'POST', body: JSON.stringify(body||{})});
  return r.json();}
document.addEventListener('keydown', e => { if (e.key.startsWith('Arrow')) { key = e.key; e.preventDefault(); } });
document.addEventListener('keyup', e => { if (e.key === key) key = null; });
for (const b of document.querySelectorAll('button[data-k]')) {
  b.onmousedown = () => key = b.dataset.k; b.onmouseup = b.onmouseleave = () => key = null; }
document.getElementById('reset').onclick = async () => show(await post('/reset'));
document.getElementById('record').onclick = async () => saved.textContent = (await post('/record')).path;
async function tick(){ if (busy || key === null) return; busy = true;
  try { show(await post('/step', {key})); const t = performance.now(); times.push(t);
    times = times.filter(s => t - s < 2000); fps.textContent = (times.length / 2).toFixed(1); } finally { busy = false; } }
setInterval(tick, INTERVAL);
post('/view').then(show);
</script></body></html>"""


def make_server(pg: Playground, port: int = 0, interval_ms: int = 50, record_dir=".") -> ThreadingHTTPServer:
    """HTTP server on 127.0.0.1 (``port`` 0 = any free port): GET / the page; POST /step {key}, /reset, /view,
    /record -> JSON."""
    page = PAGE.replace("INTERVAL", str(int(interval_ms))).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path in ("/", "/index.html"):
                return self._send(200, page, "text/html; charset=utf-8")
            self._send(404, b"not found", "text/plain")

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(n) or b"{}")
                if self.path == "/step":
                    out = pg.step(str(body.get("key", "none")))
                elif self.path == "/reset":
                    out = pg.reset()
                elif self.path == "/view":
                    with pg.lock:
                        out = pg.view()
                elif self.path == "/record":
                    out = {"path": pg.record(Path(record_dir) / f"playground_{int(time.time())}.mp4")}
                else:
                    return self._send(404, b"{}", "application/json")
                self._send(200, json.dumps(out).encode(), "application/json")
            except VideoActionError as exc:
                self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main(argv: list[str] | None = None) -> int:
    from videoaction.models.base import load_policy

    p = argparse.ArgumentParser(prog="videoaction playground", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="HMA (discrete) checkpoint directory")
    p.add_argument("--store", required=True, help="episode store to start from (PushT: img, state, action)")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--frame", type=int, help="start frame (default: the first with a full prompt)")
    p.add_argument("--domain", default="pusht", help="embodiment of the model")
    p.add_argument("--env", default="pusht", help="simulator spec")
    p.add_argument("--tokenizer", help="LFQ tokenizer folder (default: the checkpoint's model.tokenizer)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--step-px", type=float, default=20.0, help="target displacement per key step")
    p.add_argument("--decode-steps", type=int, default=1, help="MaskGIT iterations per predicted frame")
    p.add_argument("--interval-ms", type=int, default=50, help="page step interval while a key is held")
    p.add_argument("--record-dir", default=".")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    pg = Playground(load_policy(args.checkpoint), args.store, args.episode, args.frame, args.domain, args.env,
                    args.tokenizer, args.step_px, args.decode_steps)
    server = make_server(pg, args.port, args.interval_ms, args.record_dir)
    print(f"playground on http://127.0.0.1:{server.server_address[1]} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
