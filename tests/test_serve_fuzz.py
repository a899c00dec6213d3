"""Malformed-input fuzzing (hypothesis) of the wire protocol and of a live server, plus openpi byte compatibility.

Every malformed request must get an error reply (a text frame naming the problem) — or, above the message size
limit, a close with code 1009 on that connection only — and the server keeps serving good requests.
"""

from __future__ import annotations

import math
from collections import Counter

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from videoaction.benchmarks.serve_load import tiny_policy
from videoaction.serve.protocol import RequestError, decode_request, packb, unpackb
from videoaction.serve.server import ServeConfig, ServerThread

LIMIT = 64 * 1024  # the fuzz server's max message size
SPEC = {"image": ((2, 32, 32, 3), "uint8"), "state": ((2, 2), "float32")}
RNG = np.random.default_rng(0)
GOOD = {"image": RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
        "state": RNG.uniform(0, 512, (2, 2)).astype(np.float32)}


def nd(arr: np.ndarray) -> dict:
    """openpi's ndarray map, built by hand (independent of the code under test)."""
    return {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": list(arr.shape)}


def enc(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, default=lambda o: nd(o) if isinstance(o, np.ndarray) else o)


GOOD_BYTES = enc(GOOD)

# ---------------------------------------------------------------- malformed requests, by kind
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=True),
                    st.text(max_size=20), st.binary(max_size=20))
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                    max_leaves=6)
keys = st.sampled_from(sorted(SPEC))
bad_dtypes = ["<f8", "<f2", "<i4", "<i8", "|i1", "|b1", "<u2", ">f4", "<U3", "|S2"]


def _with(key, value) -> bytes:
    obs = dict(GOOD)
    obs[key] = value
    return enc(obs)


def _wrong_dtype(key, dtype):
    if np.dtype(dtype) == np.dtype(SPEC[key][1]):
        dtype = "<f8"
    arr = np.zeros(SPEC[key][0], dtype=dtype)
    return _with(key, arr)


def _wrong_shape(key, shape):
    if tuple(shape) == SPEC[key][0]:
        shape = list(shape) + [1]
    return _with(key, np.zeros(shape, dtype=SPEC[key][1]))


def _non_finite(index, value):
    state = GOOD["state"].copy()
    state.flat[index] = value
    return _with("state", state)


def _corrupt_array(key, field, value):
    arr = nd(GOOD[key])
    if field == b"shape" and isinstance(value, list) and value == list(SPEC[key][0]):
        value = value + [1]  # keep it malformed
    if field == b"data" and isinstance(value, bytes) and len(value) == GOOD[key].nbytes:
        value = value + b"\x00"
    if value is None:
        del arr[field]
    else:
        arr[field] = value
    return _with(key, arr)


def _deep(depth):  # {"state": [[[...[nil]...]]] nested `depth` deep, "image": ...}, written byte by byte
    return b"\x82" + enc("state") + b"\x91" * depth + b"\xc0" + enc("image") + enc(GOOD["image"])


malformed = st.one_of(
    st.builds(lambda b: ("random_bytes", b), st.binary(max_size=300)),
    st.builds(lambda t: ("text_frame", t), st.text(max_size=80)),
    st.builds(lambda n: ("truncated", GOOD_BYTES[:n]), st.integers(0, len(GOOD_BYTES) - 1)),
    st.builds(lambda b: ("trailing_bytes", GOOD_BYTES + b), st.binary(min_size=1, max_size=16)),
    st.builds(lambda v: ("not_a_map", enc(v)), junk.filter(lambda v: not isinstance(v, dict)) | st.just({})),
    st.builds(lambda ks: ("missing_keys", enc({k: GOOD[k] for k in ks})),
              st.lists(keys, unique=True, max_size=1)),
    st.builds(lambda k, v: ("extra_key", enc(dict(GOOD, **{k: v}))),
              st.text(min_size=1, max_size=12).filter(lambda k: k not in SPEC), junk),
    st.builds(lambda k, v: ("wrong_type", _with(k, v)), keys, junk),
    st.builds(lambda k, d: ("wrong_dtype", _wrong_dtype(k, d)), keys, st.sampled_from(bad_dtypes)),
    st.builds(lambda k, s: ("wrong_shape", _wrong_shape(k, s)), keys, st.lists(st.integers(0, 6), max_size=5)),
    st.builds(lambda i, v: ("nan_inf", _non_finite(i, v)), st.integers(0, 3),
              st.sampled_from([math.nan, math.inf, -math.inf])),
    st.builds(lambda k, f, v: ("corrupt_array", _corrupt_array(k, f, v)), keys,
              st.sampled_from([b"data", b"dtype", b"shape"]),
              st.one_of(st.none(), junk, st.sampled_from(["|O", "O", "|V8", "<c8", "<c16", "object", "<M8[s]",
                                                          "(2,)f4", "{}", "f4,f4", "<U0"]),
                        st.lists(st.integers(-3, 2**40), max_size=10))),
    st.builds(lambda k, s: ("huge_declared_shape", _with(k, {**nd(GOOD[k]), b"shape": s})), keys,
              st.lists(st.integers(2**20, 2**31 - 1), min_size=2, max_size=4)),
    st.builds(lambda d, v: ("bad_npgeneric", _with("state", {b"__npgeneric__": True, b"dtype": d, b"data": v})),
              st.sampled_from(["<f4", "|O", "<c8", "|V4", "zz", "<i8"]), junk),
    st.builds(lambda d: ("deep_nesting", _deep(d)), st.integers(1, 5000)),
    st.builds(lambda c: ("ext_type", _with("state", msgpack.ExtType(c, b"\x00" * 8))), st.integers(0, 127)),
    st.builds(lambda k: ("non_str_key", enc({k: GOOD["state"], "image": GOOD["image"], "state": GOOD["state"]})),
              st.one_of(st.integers(-2**63, 2**63 - 1), st.binary(min_size=1, max_size=8))),
    st.builds(lambda n: ("over_size_limit", enc(dict(GOOD, image=np.zeros(n, np.uint8)))),
              st.integers(LIMIT + 1, 2 * LIMIT)),
)


# ---------------------------------------------------------------- protocol level
@settings(max_examples=1000, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(case=malformed)
def test_decoder_rejects_malformed_with_request_error(case):
    kind, payload = case
    with pytest.raises(RequestError):
        decode_request(payload, SPEC)


def test_decoder_accepts_openpi_encoding():
    obs = decode_request(GOOD_BYTES, SPEC)
    assert obs.keys() == GOOD.keys() and all(np.array_equal(obs[k], GOOD[k]) for k in GOOD)
    assert decode_request(enc({"image": GOOD["image"], "state": GOOD["state"]}), SPEC)["state"].dtype == np.float32


def test_encoding_is_byte_identical_to_openpi():
    reply = {"actions": np.arange(16, dtype=np.float32).reshape(8, 2), "server_timing": {"infer_ms": 1.5},
             "flags": np.array([True, False]), "scalar": np.float32(2.5), "ids": np.arange(3, dtype=np.int64)}
    reference = msgpack.Packer(default=lambda o: (
        nd(o) if isinstance(o, np.ndarray) else
        {b"__npgeneric__": True, b"data": o.item(), b"dtype": o.dtype.str} if isinstance(o, np.generic) else o)).pack(reply)
    assert packb(reply) == reference
    back = unpackb(reference)
    assert np.array_equal(back["actions"], reply["actions"]) and back["scalar"] == np.float32(2.5)
    assert back["server_timing"] == {"infer_ms": 1.5}


@pytest.mark.parametrize("bad", [np.array([1 + 2j]), np.array([object()], dtype=object),
                                 np.zeros(2, dtype=[("a", "<f4")])])
def test_packer_refuses_object_void_complex(bad):
    with pytest.raises(TypeError):
        packb({"x": bad})


# ---------------------------------------------------------------- live server: one server, one connection
@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    policy = tiny_policy(seed=0, directory=tmp_path_factory.mktemp("fuzz-ckpt"))
    with ServerThread(policy, ServeConfig(port=0, max_message_bytes=LIMIT, max_batch=1)) as srv:
        yield srv
    torch.set_num_threads(before)


def test_live_server_survives_1000_malformed_requests(fuzz_server):
    url = f"ws://127.0.0.1:{fuzz_server.port}"
    state = {"ws": connect(url, compression=None, max_size=None)}
    state["ws"].recv()  # metadata
    seen: Counter = Counter()

    def good_request_works():
        state["ws"].send(GOOD_BYTES)
        reply = state["ws"].recv(timeout=30)
        assert isinstance(reply, bytes), reply
        actions = unpackb(reply)["actions"]
        assert actions.shape == (8, 2) and np.isfinite(actions).all()

    @settings(max_examples=1100, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=malformed)
    def one_case(case):
        kind, payload = case
        ws = state["ws"]
        ws.send(payload)
        if len(payload) > LIMIT:  # any kind may get there (e.g. a wrong dtype with a bigger itemsize)
            kind = "over_size_limit"
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
            state["ws"] = connect(url, compression=None, max_size=None)
            state["ws"].recv()
        else:
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str) and reply.startswith("bad request: "), (kind, reply)
        seen[kind] += 1
        if sum(seen.values()) % 25 == 0:
            good_request_works()

    one_case()
    good_request_works()
    state["ws"].close()
    assert sum(seen.values()) >= 1000, seen
    assert len(seen) >= 15, seen  # every kind of malformation was exercised
    stats = fuzz_server.server.stats
    assert stats.bad_requests >= sum(seen.values()) - seen["over_size_limit"]
