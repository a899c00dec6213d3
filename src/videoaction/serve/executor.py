"""Latency-aware action-chunk execution for the robot loop.

A chunk predicted from the observation taken at time ``t_obs`` holds actions meant for ``t_obs + k / control_hz``
(k = 0..H-1). The executor hands out one action per control tick and

* asks for the next chunk *in time*: as soon as the actions left cover no more than the expected request latency
  (a running average of measured latencies) plus ``margin_steps`` ticks, it sends the current observation in the
  background and keeps executing the current chunk meanwhile;
* is latency-aware: when a chunk arrives, its actions whose time has already passed are dropped, and the new chunk
  replaces what is left of the old one (fresher prediction); a loop that falls behind drops stale actions too;
* optionally smooths chunk boundaries: the first ``smoothing - 1`` actions of a new chunk are replaced by the
  trailing ``smoothing``-step moving average of the stitched sequence (executed actions, then the new chunk), so a
  jump between chunks is spread over ``smoothing`` ticks (UVA's reference uses a 3-step moving average).

The request function returns a future (``done()``, ``result()``); :meth:`ChunkExecutor.from_client` wraps a
:class:`~videoaction.serve.client.PolicyClient` in a one-thread pool. Time comes from an injectable ``clock`` so the
executor can be tested (and simulated) with a fake clock.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np


class ChunkFuture(Protocol):
    def done(self) -> bool: ...

    def result(self) -> Any: ...


@dataclass
class ExecutorStats:
    executed: int = 0  # actions handed out
    requests: int = 0  # chunks asked for
    chunks: int = 0  # chunks received
    dropped: int = 0  # actions skipped because their time had passed (on a chunk's arrival or a late tick)
    superseded: int = 0  # actions of an old chunk replaced by a newer chunk
    stalls: int = 0  # ticks that had to wait for a chunk (nothing left to execute), the first chunk excepted
    overruns: int = 0  # ticks missed because the loop fell behind
    latency_s: float = 0.0  # running estimate of the request latency


class ChunkExecutor:
    """Hands out one action per control tick from server-predicted chunks (see the module docstring)."""

    def __init__(self, request: Callable[[Any], ChunkFuture], control_hz: float, *,
                 clock: Callable[[], float] = time.monotonic, smoothing: int = 0, margin_steps: int = 1,
                 latency_init: float = 0.0, latency_ema: float = 0.3):
        if control_hz <= 0:
            raise ValueError(f"control_hz must be > 0, found {control_hz}")
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0 (0 or 1 = off, 3 = reference), found {smoothing}")
        self.request, self.dt, self.clock = request, 1.0 / control_hz, clock
        self.smoothing, self.margin_steps, self.latency_ema = smoothing, margin_steps, latency_ema
        self.latency_init = latency_init
        self.reset()

    @classmethod
    def from_client(cls, client, control_hz: float | None = None, **kwargs) -> "ChunkExecutor":
        """Executor fed by a :class:`PolicyClient` (requests run on one background thread)."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-request")
        hz = control_hz or float(client.metadata.get("control_hz", 10.0))
        executor = cls(lambda obs: pool.submit(client.infer, obs), hz, **kwargs)
        executor._pool = pool
        return executor

    def close(self) -> None:
        """Stop the background request thread of :meth:`from_client` (waits for a request in flight)."""
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)

    def reset(self) -> None:
        """Forget the current chunk (e.g. between episodes); a pending request's answer is ignored."""
        self._queue: deque[tuple[float, np.ndarray]] = deque()  # (time the action is meant for, action (A,))
        self._pending: tuple[ChunkFuture, float] | None = None  # (future, observation time)
        self._raw_history: deque[np.ndarray] = deque(maxlen=max(1, self.smoothing - 1))
        self._blend_left = 0
        self.stalled = False  # whether the last step had to wait for a chunk
        self.stats = ExecutorStats(latency_s=self.latency_init)

    # ---- chunk bookkeeping
    def _accept(self, now: float) -> None:
        future, t_obs = self._pending
        self._pending = None
        result = future.result()
        actions = np.asarray(result["actions"] if isinstance(result, dict) else result, dtype=np.float32)
        if actions.ndim != 2 or len(actions) == 0:
            raise ValueError(f"a chunk must be an (H, A) array with H >= 1, found shape {actions.shape}")
        latency = max(0.0, now - t_obs)
        s = self.stats
        s.latency_s = latency if s.chunks == 0 and not self.latency_init else (
            (1 - self.latency_ema) * s.latency_s + self.latency_ema * latency)
        s.chunks += 1
        s.superseded += len(self._queue)
        self._queue = deque((t_obs + k * self.dt, a) for k, a in enumerate(actions))
        self._drop_passed(now, keep_last=True)
        self._blend_left = self.smoothing - 1 if self.smoothing > 1 and s.executed > 0 else 0

    def _drop_passed(self, now: float, keep_last: bool = False) -> None:
        while self._queue and self._queue[0][0] < now - 0.5 * self.dt and (len(self._queue) > 1 or not keep_last):
            self._queue.popleft()
            self.stats.dropped += 1

    def _maybe_request(self, obs_fn: Callable[[], Any]) -> None:
        left_s = len(self._queue) * self.dt
        if self._pending is None and left_s <= self.stats.latency_s + self.margin_steps * self.dt:
            obs = obs_fn()
            t_obs = self.clock()
            self._pending = (self.request(obs), t_obs)
            self.stats.requests += 1

    # ---- the control loop
    def step(self, obs_fn: Callable[[], Any]) -> np.ndarray:
        """The action for the current tick; ``obs_fn()`` is called only when a new chunk is requested."""
        now = self.clock()
        if self._pending is not None and self._pending[0].done():
            self._accept(now)
        self._drop_passed(now)
        self._maybe_request(obs_fn)
        self.stalled = not self._queue
        if self.stalled:
            self.stats.stalls += self.stats.executed > 0  # the very first chunk is always waited for
            self._pending[0].result()  # wait for the chunk in flight
            now = self.clock()
            self._accept(now)
            self._maybe_request(obs_fn)  # a slow server: already ask for the one after
        _, raw = self._queue.popleft()
        action = raw
        if self._blend_left > 0 and self._raw_history:
            window = list(self._raw_history)[-(self.smoothing - 1):] + [raw]
            action = np.mean(window, axis=0).astype(np.float32)
            self._blend_left -= 1
        self._raw_history.append(raw)
        self.stats.executed += 1
        return action

    def run(self, n_steps: int, obs_fn: Callable[[], Any], act_fn: Callable[[np.ndarray], None],
            sleep: Callable[[float], None] = time.sleep) -> ExecutorStats:
        """Run ``n_steps`` ticks at the control rate: ``act_fn(step(obs_fn))`` once per tick."""
        next_tick = self.clock()
        for _ in range(n_steps):
            now = self.clock()
            if now < next_tick:
                sleep(next_tick - now)
            elif now - next_tick > self.dt:  # fell behind by more than a tick: skip the missed ticks
                self.stats.overruns += int((now - next_tick) // self.dt)
                next_tick = now
            act_fn(self.step(obs_fn))
            # after waiting for a chunk the action went out late: the next tick is one period after it
            next_tick = self.clock() + self.dt if self.stalled else next_tick + self.dt
        return self.stats
