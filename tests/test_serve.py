"""Policy server end to end against a tiny real Diffusion Policy: our client, an independent openpi-protocol
client, auth, healthz, batching, oversize messages, disconnect mid-request, server restart + reconnect, CLI."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import socket
import threading
import time

import msgpack
import numpy as np
import pytest
import torch
import websockets
from websockets.sync.client import connect

from videoaction.benchmarks.serve_load import random_observation, tiny_policy
from videoaction.serve.client import AuthenticationError, PolicyClient, ServerError, ServerUnavailable
from videoaction.serve.server import ServeConfig, ServerThread


# ---------------------------------------------------------------- an openpi-protocol client written independently
# (from the protocol description: ndarray -> {b"__ndarray__": True, b"data", b"dtype": dtype.str, b"shape"})
def _openpi_default(obj):
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _openpi_hook(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def openpi_pack(obj) -> bytes:
    return msgpack.Packer(default=_openpi_default).pack(obj)


def openpi_unpack(data: bytes):
    return msgpack.unpackb(data, object_hook=_openpi_hook)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine; the tiny model does not need more
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return tiny_policy(seed=0, directory=tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def server(policy):
    with ServerThread(policy, ServeConfig(port=0, max_message_bytes=256 * 1024, max_batch=8)) as srv:
        yield srv


@pytest.fixture()
def obs(server):
    return random_observation(server.server.metadata, np.random.default_rng(0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- tests
def test_round_trip_with_our_client(server, policy, obs):
    with PolicyClient("127.0.0.1", server.port) as client:
        md = client.metadata
        assert md["model_family"] == "dp"
        assert md["observation"] == {"image": {"shape": [2, 32, 32, 3], "dtype": "uint8"},
                                     "state": {"shape": [2, 2], "dtype": "float32"}}
        assert md["action_dim"] == 2 and md["chunk_length"] == 8 and md["control_hz"] == 10.0
        assert md["protocol"] == "openpi-msgpack-numpy"
        reply = client.infer(obs)
        actions = reply["actions"]
        assert actions.shape == (8, 2) and actions.dtype == np.float32
        assert np.isfinite(actions).all()
        lo, hi = (t.numpy() for t in policy.normalizer.data_range("action"))
        assert (actions >= lo).all() and (actions <= hi).all()
        assert reply["policy_timing"]["infer_ms"] > 0
        assert reply["server_timing"]["infer_ms"] >= reply["policy_timing"]["infer_ms"] * 0.5
        # the same observation through the policy directly gives actions of the same kind (stochastic sampler)
        second = client.infer(obs)
        assert "prev_total_ms" in second["server_timing"]


def test_actions_clipped_to_dataset_range(tmp_path):
    """A policy whose raw outputs leave the data range: replies are clipped to normalizer.data_range('action')."""
    pol = tiny_policy(seed=1, directory=tmp_path)
    field = pol.normalizer.fields["action"]
    field.scale.mul_(1e-3)  # unnormalize divides by scale -> outputs far outside [min, max]
    lo, hi = field.min.numpy().copy(), field.max.numpy().copy()
    with ServerThread(pol, ServeConfig(port=0)) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        with torch.no_grad():
            raw = pol.predict_action({k: torch.from_numpy(v[None]) for k, v in
                                      random_observation(client.metadata, np.random.default_rng(1)).items()})["action"]
        assert (raw.numpy() < lo).any() or (raw.numpy() > hi).any()  # the model really leaves the range
        actions = client.infer(random_observation(client.metadata, np.random.default_rng(1)))["actions"]
        assert (actions >= lo).all() and (actions <= hi).all()
        assert client.metadata["action_range"] == {"min": lo.tolist(), "max": hi.tolist()}


def test_independent_openpi_protocol_client(server, obs):
    with connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None) as ws:
        metadata = openpi_unpack(ws.recv())  # handshake: metadata first
        assert metadata["observation"]["image"]["shape"] == [2, 32, 32, 3]
        ws.send(openpi_pack(obs))
        reply = ws.recv()
        assert isinstance(reply, bytes)
        out = openpi_unpack(reply)
        assert out["actions"].shape == (8, 2) and np.isfinite(out["actions"]).all()
        assert set(out) >= {"actions", "server_timing", "policy_timing"}
        # an error is a text frame and the same connection keeps working
        ws.send(openpi_pack({"image": obs["image"]}))
        err = ws.recv()
        assert isinstance(err, str) and "missing key(s) ['state']" in err
        ws.send(openpi_pack(obs))
        assert openpi_unpack(ws.recv())["actions"].shape == (8, 2)


def test_bad_requests_named_and_connection_survives(server, obs):
    with PolicyClient("127.0.0.1", server.port) as client:
        cases = {
            "expected dtype float32": dict(obs, state=obs["state"].astype(np.float64)),
            "expected shape (2, 32, 32, 3)": dict(obs, image=obs["image"][:1]),
            "NaN/Inf": dict(obs, state=np.full((2, 2), np.nan, np.float32)),
            "unexpected key(s) ['prompt']": dict(obs, prompt="push the T"),
            "expected an array": dict(obs, state={"nested": obs["state"]}),
        }
        for expected, bad in cases.items():
            with pytest.raises(ServerError, match=re.escape(expected)):
                client.infer(bad)
        assert client.infer(obs)["actions"].shape == (8, 2)
        assert client.reconnects == 0


def test_oversize_message_closes_only_that_connection(server, obs):
    with PolicyClient("127.0.0.1", server.port) as client, PolicyClient("127.0.0.1", server.port) as other:
        with pytest.raises(ServerError, match="larger than the server accepts"):
            client.infer(dict(obs, image=np.zeros((300, 32, 32, 3), np.uint8)))  # ~900 KiB > 256 KiB
        assert other.infer(obs)["actions"].shape == (8, 2)  # others unaffected
        assert client.infer(obs)["actions"].shape == (8, 2)  # and this client reconnects
        assert client.reconnects == 1


def test_healthz(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read().strip() == b"OK"
    conn.close()


def test_auth_accepted_and_rejected(policy, obs):
    with ServerThread(policy, ServeConfig(port=0, api_key="s3cret", warmup=False)) as srv:
        with PolicyClient("127.0.0.1", srv.port, api_key="s3cret") as client:
            assert client.infer(obs)["actions"].shape == (8, 2)
        for key in (None, "wrong"):
            with pytest.raises(AuthenticationError):
                PolicyClient("127.0.0.1", srv.port, api_key=key, connect_timeout=2)
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:  # raw client: HTTP 401 at handshake
            connect(f"ws://127.0.0.1:{srv.port}", additional_headers={"Authorization": "Api-Key nope"})
        assert info.value.response.status_code == 401
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)  # health check needs no key
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()


def test_client_disconnect_mid_request(server, obs):
    for _ in range(3):  # send a request and vanish before the reply
        ws = connect(f"ws://127.0.0.1:{server.port}", compression=None)
        ws.recv()
        ws.send(openpi_pack(obs))
        ws.close()
    raw = socket.create_connection(("127.0.0.1", server.port))  # and a half-open TCP connection dropped hard
    raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
    raw.close()
    with PolicyClient("127.0.0.1", server.port) as client:
        assert client.infer(obs)["actions"].shape == (8, 2)


def test_concurrent_clients_are_batched(server, obs):
    before = dict(server.server.stats.batch_sizes)
    errors, replies = [], []
    barrier = threading.Barrier(6)

    def worker():
        try:
            with PolicyClient("127.0.0.1", server.port) as client:
                barrier.wait()
                for _ in range(5):
                    replies.append(client.infer(obs)["actions"])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(replies) == 30
    assert all(r.shape == (8, 2) and np.isfinite(r).all() for r in replies)
    after = server.server.stats.batch_sizes
    new_multi = sum(n for size, n in after.items() if size > 1) - sum(n for size, n in before.items() if size > 1)
    assert new_multi >= 1  # some requests shared a forward pass


def test_server_restart_and_client_reconnect(policy, obs):
    port = _free_port()
    cfg = ServeConfig(port=port, warmup=False)
    first = ServerThread(policy, cfg).start()
    client = PolicyClient("127.0.0.1", port, connect_timeout=10)
    assert client.infer(obs)["actions"].shape == (8, 2)
    first.stop()
    restarted: list[ServerThread] = []
    timer = threading.Timer(0.3, lambda: restarted.append(ServerThread(policy, cfg).start()))
    timer.start()  # comes back while the client is retrying with backoff
    try:
        assert client.infer(obs)["actions"].shape == (8, 2)
        assert client.reconnects == 1
    finally:
        timer.join()
        client.close()
        for srv in restarted:
            srv.stop()


def test_client_gives_up_with_clear_error():
    with pytest.raises(ServerUnavailable, match="no policy server answered"):
        PolicyClient("127.0.0.1", _free_port(), connect_timeout=0.3)


def test_cli_rejects_bad_arguments_and_serves(tmp_path, policy):
    from videoaction.cli import main as top_main

    assert top_main(["serve", "--checkpoint", str(tmp_path / "nope")]) == 1  # not a checkpoint: one-line error
    assert top_main(["serve", "--checkpoint", str(tmp_path), "--max-batch", "0"]) == 1
    # the real command serves a checkpoint on disk until terminated
    ckpt = tmp_path / "ckpt"
    policy.save_pretrained(ckpt)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "videoaction.cli", "serve", "--checkpoint", str(ckpt),
                             "--port", str(port), "--threads", "1", "--api-key", "k"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with PolicyClient("127.0.0.1", port, api_key="k", connect_timeout=60) as client:
            assert client.metadata["model_family"] == "dp"
            assert client.infer(random_observation(client.metadata, np.random.default_rng(2)))["actions"].shape == (8, 2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert b"serving dp policy on ws://127.0.0.1" in err
    assert b"server stopped" in err and proc.returncode == 0  # SIGTERM: clean shutdown


def test_chunk_executor_drives_from_a_real_server(server, obs, policy):
    from videoaction.serve.executor import ChunkExecutor

    with PolicyClient("127.0.0.1", server.port) as client:
        ex = ChunkExecutor.from_client(client, control_hz=50.0, smoothing=3)
        actions = []
        stats = ex.run(20, obs_fn=lambda: obs, act_fn=actions.append)
        ex.close()
    lo, hi = (t.numpy() for t in policy.normalizer.data_range("action"))
    assert len(actions) == 20 and all(a.shape == (2,) and (a >= lo).all() and (a <= hi).all() for a in actions)
    assert stats.executed == 20 and stats.chunks >= 2 and stats.latency_s > 0


def _tiny_language_uva(directory):
    """A tiny real UVA with a learned task-embedding language input, saved and loaded like a checkpoint."""
    from videoaction.models.base import load_policy
    from videoaction.models.uva.config import uva_tiny
    from videoaction.models.uva.policy import UVAPolicy
    from videoaction.nn.diffusion import DiffusionHeadConfig

    cfg = uva_tiny()
    cfg.dataset.image_size, cfg.dataset.horizon = 32, 16
    cfg.dataset.frames.offset, cfg.dataset.frames.stride = 1, 2
    m = cfg.model
    m.width, m.encoder_depth, m.decoder_depth, m.num_heads = 32, 1, 1, 2
    m.video_head = DiffusionHeadConfig(width=32, depth=1, sample_steps=2)
    m.action_head = DiffusionHeadConfig(width=32, depth=1, sample_steps=2, clip_denoised=True)
    m.n_actions, m.n_action_steps, m.obs_image_size = 8, 4, 32
    m.tokenizer.channels, m.tokenizer.stride = (8, 8, 8), 8  # 4 x 4 tokens at 32 px
    m.language, m.text.kind, m.text.vocabulary, m.text.dim, m.text_dim = True, "task_embedding", ("push", "pull"), 16, 16
    torch.manual_seed(0)
    UVAPolicy(cfg, allow_random_tokenizer=True).save_pretrained(directory)
    return load_policy(directory)


def test_language_uva_policy_served(tmp_path):
    policy = _tiny_language_uva(tmp_path)
    with ServerThread(policy, ServeConfig(port=0, max_batch=4)) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        md = client.metadata
        assert md["model_family"] == "uva" and md["language"] is True
        assert md["observation"]["language"] == {"shape": [], "dtype": "str"}
        obs = random_observation({"observation": {k: v for k, v in md["observation"].items() if k != "language"}},
                                 np.random.default_rng(0))
        a = client.infer(dict(obs, language="push"))["actions"]
        assert a.shape == (md["n_action_steps"], md["action_dim"]) and np.isfinite(a).all()
        assert client.infer(dict(obs, prompt="pull"))["actions"].shape == a.shape  # openpi's key for the instruction
        with pytest.raises(ServerError, match="unknown instruction 'fly'"):  # the model's own error, one frame
            client.infer(dict(obs, language="fly"))
        with pytest.raises(ServerError, match="key 'language': expected a string"):
            client.infer(dict(obs, language=np.zeros(3, np.float32)))
        # a batch holding one bad instruction: only that request fails
        errors, oks = [], []

        def one(text):
            with PolicyClient("127.0.0.1", srv.port) as c:
                try:
                    oks.append(c.infer(dict(obs, language=text))["actions"])
                except ServerError as exc:
                    errors.append(str(exc))

        threads = [threading.Thread(target=one, args=(t,)) for t in ("push", "fly", "pull", "push")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(oks) == 3 and len(errors) == 1 and "fly" in errors[0]


def test_non_finite_model_output_is_an_error_not_a_reply(tmp_path):
    pol = tiny_policy(seed=2, directory=tmp_path)
    pol.normalizer.fields["action"].scale.zero_()  # unnormalize divides by zero -> Inf/NaN actions
    with ServerThread(pol, ServeConfig(port=0, warmup=False)) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        obs = random_observation(client.metadata, np.random.default_rng(0))
        with pytest.raises(ServerError, match="NaN/Inf actions"):
            client.infer(obs)
        assert srv.server.stats.failed == 1


def test_event_loop_stays_responsive_during_inference(tmp_path):
    """Inference runs on a worker thread: health checks and new connections are served while the model works."""
    # the unshrunk dp-tiny with 100 sampling steps: ~1 s per forward pass on 2 idle cores
    slow = tiny_policy(seed=3, directory=tmp_path, sample_steps=100, shrink=False)
    with ServerThread(slow, ServeConfig(port=0, warmup=False)) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        obs = random_observation(client.metadata, np.random.default_rng(0))
        done = {}
        worker = threading.Thread(target=lambda: done.setdefault("reply", client.infer(obs)))
        t0 = time.perf_counter()
        worker.start()
        time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        with PolicyClient("127.0.0.1", srv.port) as other:  # handshake + metadata while the model runs
            assert other.metadata["model_family"] == "dp"
        t_side = time.perf_counter() - t0
        worker.join()
        t_total = time.perf_counter() - t0
        model_s = done["reply"]["policy_timing"]["infer_ms"] / 1000.0
        assert model_s > 0.2 and t_total >= model_s
        assert t_side - 0.05 < model_s / 2  # served well before the forward pass could have finished
