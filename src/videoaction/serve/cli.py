"""``videoaction serve --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--api-key TOKEN] ...``"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from videoaction.errors import VideoActionError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="videoaction serve",
        description="Serve a policy checkpoint over websocket + msgpack (openpi's protocol). "
                    "GET /healthz answers 200; clients receive the metadata on connect.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; use 0.0.0.0 only on a trusted network, with --api-key)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("VIDEOACTION_API_KEY"),
                   help="require 'Authorization: Api-Key TOKEN' (default: $VIDEOACTION_API_KEY, else no auth; prefer the "
                        "variable: a flag is visible to other users in the process list)")
    p.add_argument("--max-message-bytes", type=int, default=8 * 2**20, help="largest request accepted (bytes)")
    p.add_argument("--max-batch", type=int, default=8, help="most requests stacked into one forward pass (1 = off)")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="how long to wait for more requests while other clients are connected")
    p.add_argument("--control-hz", type=float, default=None, help="control rate advertised to clients (default 10)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for inference (default: torch's)")
    p.add_argument("--no-ema", action="store_true", help="load model.safetensors even when EMA weights exist")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))  # no line per connection
    if args.max_message_bytes < 1024:
        raise VideoActionError(f"--max-message-bytes must be at least 1024, found {args.max_message_bytes}")
    if args.max_batch < 1:
        raise VideoActionError(f"--max-batch must be >= 1, found {args.max_batch}")
    if not 0 <= args.port < 65536:
        raise VideoActionError(f"--port must be in 0..65535, found {args.port}")

    import torch

    from videoaction.models.base import load_policy
    from videoaction.serve.server import PolicyServer, ServeConfig

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = load_policy(args.checkpoint, prefer_ema=not args.no_ema, map_location=device)
    server = PolicyServer(policy, ServeConfig(
        host=args.host, port=args.port, api_key=args.api_key or None, max_message_bytes=args.max_message_bytes,
        max_batch=args.max_batch, batch_window_ms=args.batch_window_ms, control_hz=args.control_hz,
        torch_threads=args.threads))
    try:
        asyncio.run(_serve_until_signal(server))
    except OSError as exc:
        raise VideoActionError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    logging.getLogger("videoaction.serve").info("server stopped")
    return 0


async def _serve_until_signal(server) -> None:
    """Serve until SIGINT / SIGTERM, then close every connection cleanly (code 1001, going away)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.serve(stop)
