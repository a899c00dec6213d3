"""Wire format: msgpack with openpi's numpy encoding, a strict decoder and request validation. No pickle.

Encoding (byte-compatible with ``openpi_client.msgpack_numpy``):

* ``np.ndarray`` -> map ``{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": dtype.str, b"shape": [...]}``
* ``np.generic`` -> map ``{b"__npgeneric__": True, b"data": <python scalar>, b"dtype": dtype.str}``
* object / void / complex dtypes are refused on both sides (they are where pickle would creep in).

The decoder is stricter than openpi's: only bool / int / uint / float / str-bytes dtypes, the data length must match
``shape`` x itemsize exactly, at most :data:`MAX_NDIM` dimensions. :func:`validate_observation` then checks one
(unbatched) observation against the policy's observation spec: keys, shapes, dtypes, finite values, no nesting.
Every problem is a :class:`RequestError` whose message names the key, what was expected and what was found.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import msgpack
import numpy as np

from videoaction.errors import VideoActionError

MAX_NDIM = 8
MAX_STR_LEN = 4096  # characters of a string observation (a language instruction)
ALLOWED_KINDS = "biufUS"  # bool, int, uint, float, unicode, bytes; never O (object), V (void), c (complex)
STRING_DTYPES = ("str", "string")  # ObsSpec dtype of a text observation (e.g. a language instruction)
ALIASES = {"prompt": "language"}  # openpi clients send the instruction as "prompt"


class RequestError(VideoActionError):
    """A request that is not a valid observation (bad msgpack, keys, shapes, dtypes, values)."""


class ServerError(VideoActionError):
    """The server answered with an error (a text frame) instead of a result."""


# ----------------------------------------------------------------------------------------------- encoding
def _pack_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise TypeError(f"cannot encode numpy dtype {obj.dtype} (object, void and complex are not allowed)")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode an object of type {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    """Encode a (nested) dict of numpy arrays / scalars / lists / strings like openpi does."""
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def _dtype(value: Any) -> np.dtype:
    if isinstance(value, bytes):
        value = value.decode("ascii", "strict")
    if not isinstance(value, str) or len(value) > 16:
        raise RequestError(f"array dtype must be a short numpy dtype string like '<f4', found {value!r:.60}")
    try:
        dt = np.dtype(value)
    except (TypeError, ValueError):
        raise RequestError(f"unknown numpy dtype {value!r}") from None
    if dt.kind not in ALLOWED_KINDS or dt.itemsize == 0 or dt.fields is not None or dt.subdtype is not None:
        raise RequestError(f"numpy dtype {dt.str!r} is not allowed (allowed kinds: bool, int, uint, float, str)")
    return dt


def _decode_ndarray(obj: Mapping) -> np.ndarray:
    data, shape = obj.get(b"data"), obj.get(b"shape")
    dt = _dtype(obj.get(b"dtype"))
    if not isinstance(data, bytes):
        raise RequestError(f"array 'data' must be binary, found {type(data).__name__}")
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in shape):
        raise RequestError(f"array 'shape' must be a list of at most {MAX_NDIM} non-negative ints, found {shape!r:.80}")
    n = math.prod(shape)
    if n * dt.itemsize != len(data):
        raise RequestError(f"array of shape {tuple(shape)} and dtype {dt.str} needs {n * dt.itemsize} bytes of data, "
                           f"found {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _decode_generic(obj: Mapping) -> np.generic:
    dt = _dtype(obj.get(b"dtype"))
    data = obj.get(b"data")
    if not isinstance(data, (bool, int, float, str, bytes)):
        raise RequestError(f"numpy scalar 'data' must be a plain scalar, found {type(data).__name__}")
    try:
        return dt.type(data)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RequestError(f"numpy scalar {data!r:.40} does not fit dtype {dt.str}: {exc}") from None


def _object_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        return _decode_ndarray(obj)
    if b"__npgeneric__" in obj:
        return _decode_generic(obj)
    return obj


def unpackb(data: bytes) -> Any:
    """Decode one message strictly; any malformation (truncated, trailing bytes, bad arrays) is a RequestError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RequestError(f"expected a binary msgpack frame, found {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_object_hook, raw=False, strict_map_key=True, use_list=True)
    except RequestError:
        raise
    except msgpack.ExtraData:
        raise RequestError("message holds trailing bytes after the msgpack object") from None
    except (ValueError, TypeError, msgpack.UnpackException, UnicodeDecodeError, RecursionError, OverflowError) as exc:
        raise RequestError(f"not a valid msgpack message ({type(exc).__name__}: {str(exc)[:120]})") from None


# ----------------------------------------------------------------------------------------------- validation
def spec_from_metadata(observation: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``metadata["observation"]`` -> {key: (shape, dtype)}."""
    return {k: (tuple(int(s) for s in v["shape"]), str(v["dtype"])) for k, v in observation.items()}


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__


def validate_observation(obs: Any, spec: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, Any]:
    """Check one unbatched observation against ``spec`` ({key: (shape, dtype)}); return {key: array | str}."""
    if not isinstance(obs, dict):
        raise RequestError(f"a request must be a map of observation keys to arrays, found {_describe(obs)}")
    bad_keys = [k for k in obs if not isinstance(k, str)]
    if bad_keys:
        raise RequestError(f"observation keys must be strings, found {bad_keys[0]!r:.40}")
    for alias, target in ALIASES.items():
        if alias in obs and target in spec and alias not in spec and target not in obs:
            obs = {(target if k == alias else k): v for k, v in obs.items()}
    missing = sorted(set(spec) - set(obs))
    extra = sorted(set(obs) - set(spec))
    if missing or extra:
        shown = [k if len(k) <= 40 else k[:37] + "..." for k in extra[:8]]
        parts = ([f"missing key(s) {missing}"] if missing else []) + ([f"unexpected key(s) {shown}"] if extra else [])
        raise RequestError(f"{'; '.join(parts)}; expected exactly {sorted(spec)}")
    out: dict[str, Any] = {}
    for key, (shape, dtype) in spec.items():
        value = obs[key]
        if dtype in STRING_DTYPES:
            if not isinstance(value, str) or len(value) > MAX_STR_LEN:
                raise RequestError(f"key {key!r}: expected a string of at most {MAX_STR_LEN} characters, "
                                   f"found {_describe(value)}")
            out[key] = value
            continue
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise RequestError(f"key {key!r}: expected an array of shape {shape} and dtype {dtype}, "
                               f"found {_describe(value)}")
        if value.dtype != np.dtype(dtype):
            raise RequestError(f"key {key!r}: expected dtype {dtype}, found {value.dtype.str} ({value.dtype})")
        if tuple(value.shape) != tuple(shape):
            raise RequestError(f"key {key!r}: expected shape {tuple(shape)}, found {tuple(value.shape)}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise RequestError(f"key {key!r}: holds {int((~np.isfinite(value)).sum())} NaN/Inf value(s)")
        out[key] = value
    return out


def decode_request(data: Any, spec: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, Any]:
    """Bytes of one request -> validated observation (raises :class:`RequestError`)."""
    if isinstance(data, str):
        raise RequestError("expected a binary msgpack frame, found a text frame")
    return validate_observation(unpackb(data), spec)
