"""Action-chunk executor with a fake clock and a scripted chunk source (the executor is the unit under test).

The scripted source encodes time in the actions: the chunk for an observation taken at ``t_obs`` holds
``action[k] = t_obs + k * dt`` (the time the action is meant for), so "latency-aware" is checkable exactly:
each executed action must be meant for (within half a tick of) the moment it is handed out.
"""

from __future__ import annotations

import numpy as np
import pytest

from videoaction.serve.executor import ChunkExecutor

HZ, DT, H = 10.0, 0.1, 8


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.t += seconds


class FakeFuture:
    def __init__(self, clock: FakeClock, ready_at: float, value):
        self.clock, self.ready_at, self.value = clock, ready_at, value

    def done(self) -> bool:
        return self.clock.t >= self.ready_at - 1e-12

    def result(self):
        self.clock.t = max(self.clock.t, self.ready_at)  # a blocking wait advances time
        return self.value


class TimedSource:
    """Answers after ``latency`` seconds with ``{"actions": [[t_obs + k dt]]}`` (H, 1)."""

    def __init__(self, clock: FakeClock, latency: float):
        self.clock, self.latency, self.requests = clock, latency, []

    def __call__(self, obs):
        t_obs = float(obs)
        self.requests.append(t_obs)
        chunk = (t_obs + DT * np.arange(H, dtype=np.float64))[:, None]
        return FakeFuture(self.clock, self.clock.t + self.latency, {"actions": chunk})


def _run(latency: float, steps: int = 60, **kw):
    clock = FakeClock()
    source = TimedSource(clock, latency)
    ex = ChunkExecutor(source, HZ, clock=clock, **kw)
    log = []  # (time handed out, action)
    ex.run(steps, obs_fn=clock, act_fn=lambda a: log.append((clock.t, float(a[0]))), sleep=clock.sleep)
    return ex, source, log


def _assert_aligned(log):
    for t, meant_for in log:
        assert abs(meant_for - t) <= DT / 2 + 1e-6, (t, meant_for)


def test_zero_latency_executes_chunks_in_order():
    ex, source, log = _run(0.0, steps=40)
    assert [round(t, 6) for t, _ in log] == [round(i * DT, 6) for i in range(40)]  # one action per tick
    _assert_aligned(log)
    assert ex.stats.executed == 40 and ex.stats.stalls == 0
    assert ex.stats.requests == ex.stats.chunks >= 40 // H


@pytest.mark.parametrize("latency", [0.05, 0.15, 0.25])  # one request in flight: < half a chunk
def test_latency_aware_requests_in_time_and_drops_passed_actions(latency):
    ex, source, log = _run(latency, steps=80)
    _assert_aligned(log)  # every action handed out is the one meant for now
    assert ex.stats.stalls == 0  # after the first chunk, the next one is always asked for in time
    assert ex.stats.dropped >= 1  # the first actions of each arriving chunk are already in the past
    assert ex.stats.latency_s == pytest.approx(latency, abs=DT)
    # requests go out while the current chunk still has actions left (not when it has run dry)
    gaps = np.diff(source.requests)
    assert (gaps < H * DT).all()
    ticks = np.diff([t for t, _ in log])[2:]
    assert np.allclose(ticks, DT)  # the control rate holds once running


def test_slow_server_stalls_but_stays_time_aligned():
    ex, source, log = _run(0.6, steps=40)  # more than half a chunk (0.8 s): the loop has to wait at times
    assert ex.stats.stalls >= 1
    _assert_aligned(log)
    assert ex.stats.dropped > 0
    # slower than a whole chunk: every action is stale on arrival; the latest one (the chunk's last) is used
    ex, source, log = _run(1.3, steps=10)
    assert ex.stats.stalls == 9 and ex.stats.dropped == 10 * (H - 1)
    assert [round(a, 6) for _, a in log] == [round(t_obs + (H - 1) * DT, 6) for t_obs in source.requests[:10]]


def test_late_control_loop_drops_stale_actions():
    clock = FakeClock()
    ex = ChunkExecutor(TimedSource(clock, 0.0), HZ, clock=clock, margin_steps=0)
    log = []

    def act(a):
        log.append((clock.t, float(a[0])))
        if len(log) == 3:
            clock.t += 0.35  # the robot stalls for 3.5 ticks once

    ex.run(12, obs_fn=clock, act_fn=act, sleep=clock.sleep)
    _assert_aligned(log)
    assert ex.stats.overruns >= 2 and ex.stats.dropped >= 2


class StepSource:
    """Zero latency; chunk i is constant: 0, 9, 0, 9, ... (worst-case jumps at every boundary)."""

    def __init__(self, clock):
        self.clock, self.i = clock, 0

    def __call__(self, obs):
        value = 9.0 * (self.i % 2)
        self.i += 1
        return FakeFuture(self.clock, self.clock.t, np.full((H, 2), value, np.float32))


@pytest.mark.parametrize("smoothing", [0, 3])
def test_moving_average_smooths_chunk_boundaries(smoothing):
    clock = FakeClock()
    ex = ChunkExecutor(StepSource(clock), HZ, clock=clock, smoothing=smoothing, margin_steps=0)
    out = []
    for _ in range(40):
        out.append(ex.step(clock)[0])
        clock.sleep(DT)
    out = np.array(out)
    jumps = np.abs(np.diff(out))
    if smoothing == 0:
        assert jumps.max() == pytest.approx(9.0)
    else:
        assert jumps.max() == pytest.approx(3.0)  # the 9-step is spread over 3 ticks
        first_boundary = int(np.argmax(out > 0))
        assert out[first_boundary:first_boundary + 3] == pytest.approx([3.0, 6.0, 9.0])
    assert set(np.round(out[:5], 6)) == {0.0}  # the first chunk is not smoothed against nothing


def test_reset_ignores_the_pending_answer_and_bad_chunks_are_errors():
    clock = FakeClock()
    source = TimedSource(clock, 0.3)
    ex = ChunkExecutor(source, HZ, clock=clock)
    ex.step(clock)
    ex.reset()
    assert ex.stats.executed == 0 and ex._pending is None
    bad = ChunkExecutor(lambda obs: FakeFuture(clock, clock.t, np.zeros((0, 2))), HZ, clock=clock)
    with pytest.raises(ValueError, match=r"\(H, A\) array"):
        bad.step(clock)
    with pytest.raises(ValueError):
        ChunkExecutor(source, 0.0)
