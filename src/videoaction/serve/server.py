"""Websocket policy server speaking openpi's protocol (msgpack + numpy arrays), safe under bad input and load.

Per connection: the server first sends the policy metadata (one msgpack map), then answers each binary request
(one unbatched observation) with ``{"actions": (n_action_steps, A) float32, "server_timing": {...},
"policy_timing": {...}}``. A bad request gets a *text* frame naming the problem (how openpi's client recognises
an error) and the connection stays open. ``GET /healthz`` answers 200. With an API key, the websocket handshake
must carry ``Authorization: Api-Key <token>`` or it is refused with 401. Messages above ``max_message_bytes``
close that connection with code 1009 (message too big); everyone else is unaffected.

Inference runs in one worker thread (the event loop stays responsive) under ``torch.inference_mode``; requests
that are queued while the model is busy (or arrive within ``batch_window_ms`` while other clients are connected)
are stacked into one forward pass of at most ``max_batch`` observations.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import ipaddress
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import websockets
from websockets.asyncio.server import ServerConnection, serve

from videoaction.errors import VideoActionError
from videoaction.models.base import Policy
from videoaction.serve.protocol import STRING_DTYPES, RequestError, decode_request, packb, spec_from_metadata

logger = logging.getLogger("videoaction.serve")

PROTOCOL = "openpi-msgpack-numpy"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0 = any free port (tests)
    api_key: str | None = None
    max_message_bytes: int = 8 * 2**20
    max_batch: int = 8  # 1 disables batching
    batch_window_ms: float = 2.0  # extra wait for more requests, only while other clients are connected
    control_hz: float | None = None  # advertised control rate; default: the policy's metadata, else 10 Hz
    warmup: bool = True
    torch_threads: int | None = None  # torch intra-op threads (None: leave torch's default)


@dataclass
class ServerStats:
    requests: int = 0
    bad_requests: int = 0
    failed: int = 0
    batches: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class PolicyRunner:
    """Runs batches of validated observations through the policy; clips actions to the data's range."""

    def __init__(self, policy: Policy):
        self.policy = policy.eval()
        self.metadata = policy.metadata()
        if self.metadata.get("language") and "language" not in self.metadata["observation"]:
            # language-conditioned models take one instruction string per observation ("prompt" also accepted)
            self.metadata["observation"]["language"] = {"shape": [], "dtype": "str"}
        self.spec = spec_from_metadata(self.metadata["observation"])
        self.low = self.high = None
        normalizer = getattr(policy, "normalizer", None)
        try:
            lo, hi = normalizer.data_range("action")
            self.low = lo.detach().float().cpu().numpy()
            self.high = np.maximum(hi.detach().float().cpu().numpy(), self.low)
        except (AttributeError, VideoActionError):
            logger.warning("policy has no fitted action range: served actions are not clipped")

    def dummy_observation(self) -> dict[str, Any]:
        text = _first_instruction(self.policy)
        return {k: (text if dt in STRING_DTYPES else np.zeros(shape, dtype=dt)) for k, (shape, dt) in self.spec.items()}

    def infer_batch(self, observations: list[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, float]:
        """-> (actions (B, n, A) float32 clipped, finite (B,) bool, model milliseconds)."""
        t0 = time.perf_counter()
        device = self.policy.device
        batch: dict[str, Any] = {}
        for key, (_, dtype) in self.spec.items():
            values = [o[key] for o in observations]
            batch[key] = values if dtype in STRING_DTYPES else torch.from_numpy(np.stack(values)).to(device)
        with torch.inference_mode():
            out = self.policy.predict_action(batch)
        actions = out["action"].detach().float().cpu().numpy()  # (B, n_action_steps, A)
        finite = np.isfinite(actions).all(axis=tuple(range(1, actions.ndim)))
        if self.low is not None:
            actions = np.clip(actions, self.low, self.high)
        actions = np.where(finite[:, None, None], actions, 0.0).astype(np.float32)
        return actions, finite, (time.perf_counter() - t0) * 1000.0


class _Batcher:
    """Collects queued requests into batches and runs them on one worker thread."""

    def __init__(self, runner: PolicyRunner, max_batch: int, window_s: float, n_clients, threads: int | None = None):
        self.runner, self.max_batch, self.window_s, self.n_clients = runner, max(1, max_batch), window_s, n_clients
        self.queue: asyncio.Queue = asyncio.Queue()
        init = (lambda: torch.set_num_threads(threads)) if threads else None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-infer", initializer=init)
        self.stats = ServerStats()

    async def submit(self, obs: Mapping[str, Any]) -> tuple[np.ndarray, bool, dict]:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((obs, fut, time.perf_counter()))
        return await fut

    async def _collect(self) -> list:
        batch = [await self.queue.get()]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            # wait a little for requests that are on their way, only if someone else could send one
            if self.window_s <= 0 or self.n_clients() <= len(batch) or time.perf_counter() >= deadline:
                break
            await asyncio.sleep(min(0.0005, max(0.0, deadline - time.perf_counter())))
        return [b for b in batch if not b[1].done()]  # skip requests whose client is gone

    async def _run(self, batch: list) -> None:
        t_start = time.perf_counter()
        try:
            actions, finite, model_ms = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.runner.infer_batch, [b[0] for b in batch])
        except Exception as exc:  # a model failure answers the request, it does not stop the server
            if len(batch) > 1:  # one bad observation (e.g. an unknown instruction) must not fail the others
                for item in batch:
                    await self._run([item])
                return
            logger.warning("inference failed: %s: %s", type(exc).__name__, exc)
            self.stats.failed += 1
            if not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.batch_sizes[len(batch)] = self.stats.batch_sizes.get(len(batch), 0) + 1
        for i, (_, fut, t_enq) in enumerate(batch):
            if not fut.done():
                fut.set_result((actions[i], bool(finite[i]), {
                    "model_ms": model_ms, "queue_ms": (t_start - t_enq) * 1000.0, "batch_size": len(batch)}))

    async def run(self) -> None:
        while True:
            batch = await self._collect()
            if batch:
                await self._run(batch)


def _first_instruction(policy: Policy) -> str:
    """A valid instruction for the warm-up pass (task-embedding models only know their vocabulary)."""
    vocabulary = getattr(getattr(getattr(getattr(policy, "cfg", None), "model", None), "text", None), "vocabulary", ())
    return str(vocabulary[0]) if vocabulary else "do the task"


class PolicyServer:
    """Serves one loaded policy. ``await server.serve(stop_event)`` runs until the event is set."""

    def __init__(self, policy: Policy, config: ServeConfig | None = None):
        self.config = config or ServeConfig()
        self.runner = PolicyRunner(policy)
        md = dict(self.runner.metadata)
        md.setdefault("chunk_length", md.get("n_action_steps"))
        md["control_hz"] = float(self.config.control_hz or md.get("control_hz") or 10.0)
        if self.runner.low is not None:
            md["action_range"] = {"min": self.runner.low.tolist(), "max": self.runner.high.tolist()}
        md.update(protocol=PROTOCOL, max_message_bytes=self.config.max_message_bytes, max_batch=self.config.max_batch)
        self.metadata = md
        self._metadata_bytes = packb(md)
        self._n_clients = 0
        self._batcher: _Batcher | None = None
        self.port: int | None = None
        if self.config.warmup:  # on the caller's thread, with the worker's thread count, restored afterwards
            before = torch.get_num_threads()
            if self.config.torch_threads:
                torch.set_num_threads(self.config.torch_threads)
            try:
                t0 = time.perf_counter()
                self.runner.infer_batch([self.runner.dummy_observation()])
                logger.info("warm-up forward pass: %.1f ms", (time.perf_counter() - t0) * 1000)
            finally:
                torch.set_num_threads(before)

    @property
    def stats(self) -> ServerStats:
        return self._batcher.stats if self._batcher else ServerStats()

    # ---- HTTP side of the handshake: health check and authentication
    def _process_request(self, connection: ServerConnection, request):
        if request.path.split("?", 1)[0] == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.config.api_key:
            got = request.headers.get("Authorization", "")
            want = f"Api-Key {self.config.api_key}"
            if not hmac.compare_digest(got.encode("utf-8", "replace"), want.encode()):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong 'Authorization: Api-Key <token>' header\n")
        return None

    # ---- one websocket connection
    async def _handle(self, ws: ServerConnection) -> None:
        self._n_clients += 1
        prev_total_ms = None
        try:
            await ws.send(self._metadata_bytes)
            async for message in ws:
                t0 = time.perf_counter()
                try:
                    obs = decode_request(message, self.runner.spec)
                except RequestError as exc:
                    self._batcher.stats.bad_requests += 1
                    await ws.send(_clip(f"bad request: {exc}"))
                    continue
                t_decoded = time.perf_counter()
                try:
                    actions, finite, timing = await self._batcher.submit(obs)
                except Exception as exc:
                    await ws.send(_clip(f"inference failed: {type(exc).__name__}: {exc}"))
                    continue
                if not finite:
                    self._batcher.stats.failed += 1
                    await ws.send("inference failed: the model produced NaN/Inf actions for this observation")
                    continue
                self._batcher.stats.requests += 1
                server_timing = {"infer_ms": (time.perf_counter() - t_decoded) * 1000.0,
                                 "decode_ms": (t_decoded - t0) * 1000.0,
                                 "queue_ms": timing["queue_ms"], "batch_size": timing["batch_size"]}
                if prev_total_ms is not None:
                    server_timing["prev_total_ms"] = prev_total_ms
                await ws.send(packb({"actions": actions, "server_timing": server_timing,
                                     "policy_timing": {"infer_ms": timing["model_ms"]}}))
                prev_total_ms = (time.perf_counter() - t0) * 1000.0
        except websockets.exceptions.ConnectionClosed:
            pass  # client went away (possibly mid-request): nothing to answer
        finally:
            self._n_clients -= 1

    async def serve(self, stop: asyncio.Event | None = None, ready: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set (forever if None)."""
        cfg = self.config
        _warn_if_exposed(cfg)
        self._batcher = _Batcher(self.runner, cfg.max_batch, cfg.batch_window_ms / 1000.0, lambda: self._n_clients,
                                 cfg.torch_threads)
        worker = asyncio.create_task(self._batcher.run())
        try:
            async with serve(self._handle, cfg.host, cfg.port, process_request=self._process_request,
                             max_size=cfg.max_message_bytes, max_queue=4, compression=None, ping_interval=20,
                             ping_timeout=60) as server:
                self.port = server.sockets[0].getsockname()[1]
                logger.info("serving %s policy on ws://%s:%d (healthz: http://%s:%d/healthz)",
                            self.metadata.get("model_family"), cfg.host, self.port, cfg.host, self.port)
                if ready is not None:
                    ready.set()
                await (stop.wait() if stop is not None else asyncio.Future())
        finally:
            worker.cancel()
            self._batcher.pool.shutdown(wait=True, cancel_futures=True)


def _clip(text: str, limit: int = 2000) -> str:
    """Error replies stay short even when they quote what the client sent."""
    return text if len(text) <= limit else text[: limit - 15] + " ...(truncated)"


def _warn_if_exposed(cfg: ServeConfig) -> None:
    try:
        loopback = ipaddress.ip_address(cfg.host).is_loopback
    except ValueError:
        loopback = cfg.host == "localhost"
    if not loopback and not cfg.api_key:
        logger.warning("serving on %s without an API key: anyone who can reach this port can drive the robot", cfg.host)


class ServerThread:
    """Run a :class:`PolicyServer` on its own event loop in a background thread (tests, benchmarks, notebooks).

    >>> with ServerThread(policy, ServeConfig(port=0)) as srv: client = PolicyClient("127.0.0.1", srv.port)
    """

    def __init__(self, policy_or_server: Policy | PolicyServer, config: ServeConfig | None = None):
        self.server = (policy_or_server if isinstance(policy_or_server, PolicyServer)
                       else PolicyServer(policy_or_server, config))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="policy-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    def _main(self) -> None:
        async def body():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.serve(self._stop, self._ready)

        try:
            asyncio.run(body())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise VideoActionError(f"policy server did not start: {self._error!r}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
