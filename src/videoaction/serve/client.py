"""Robot-side client of the policy server (openpi protocol; no torch needed).

>>> client = PolicyClient("127.0.0.1", 8000)            # waits for the server (backoff) and reads its metadata
>>> client.metadata["observation"]                        # {key: {"shape": [...], "dtype": "..."}}
>>> out = client.infer({"image": img_u8, "state": s_f32}) # out["actions"]: (n_action_steps, A) float32

Errors: :class:`ServerError` when the server answers with an error (text frame) — the connection stays usable;
:class:`AuthenticationError` when the API key is refused (401); :class:`ServerUnavailable` when the server cannot
be reached within ``connect_timeout``. A dropped connection is re-opened with exponential backoff and the request
is sent once more (inference is a pure function of the observation, so a retry is safe).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from videoaction.errors import VideoActionError
from videoaction.serve.protocol import RequestError, ServerError, packb, unpackb

__all__ = ["PolicyClient", "ServerError", "AuthenticationError", "ServerUnavailable"]

MESSAGE_TOO_BIG = 1009


class AuthenticationError(VideoActionError):
    """The server refused the API key (HTTP 401 at the websocket handshake)."""


class ServerUnavailable(VideoActionError):
    """No server answered at the address within the connect timeout."""


class PolicyClient:
    """Synchronous websocket client: ``metadata``, ``infer(obs) -> dict``, automatic reconnect."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = 8000, api_key: str | None = None, *,
                 timeout: float = 60.0, connect_timeout: float = 30.0, backoff: float = 0.05,
                 max_backoff: float = 2.0, max_reply_bytes: int = 64 * 2**20):
        self.uri = host if host.startswith("ws") else f"ws://{host}"
        if port is not None:
            self.uri += f":{port}"
        self.api_key, self.timeout, self.connect_timeout = api_key, timeout, connect_timeout
        self.backoff, self.max_backoff, self.max_reply_bytes = backoff, max_backoff, max_reply_bytes
        self._ws: ClientConnection | None = None
        self._metadata: dict = {}
        self.reconnects = 0
        self._connect()

    # ---- connection management
    def _connect(self) -> None:
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        deadline = time.monotonic() + self.connect_timeout
        delay, last = self.backoff, None
        while True:
            try:
                ws = connect(self.uri, compression=None, max_size=self.max_reply_bytes, additional_headers=headers,
                             open_timeout=max(1.0, min(10.0, self.connect_timeout)), close_timeout=2.0)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status == 401:
                    raise AuthenticationError(f"{self.uri}: the server refused the API key (HTTP 401)") from None
                last = exc
                if status < 500:
                    raise ServerUnavailable(f"{self.uri}: websocket handshake refused with HTTP {status}") from None
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                last = exc
            else:
                try:
                    first = ws.recv(timeout=self.timeout)
                    if isinstance(first, str):
                        raise ServerError(f"{self.uri}: server sent an error instead of its metadata: {first}")
                    metadata = unpackb(first)
                    if not isinstance(metadata, dict):
                        raise ServerError(f"{self.uri}: metadata must be a map, found {type(metadata).__name__}")
                except (ServerError, RequestError):
                    ws.close()
                    raise
                except (ConnectionClosed, OSError, TimeoutError) as exc:
                    ws.close()
                    last = exc
                else:
                    self._ws, self._metadata = ws, metadata
                    return
            if time.monotonic() + delay > deadline:
                raise ServerUnavailable(f"{self.uri}: no policy server answered within {self.connect_timeout:.1f} s "
                                        f"(last error: {last!r})")
            time.sleep(delay)
            delay = min(delay * 2.0, self.max_backoff)

    def _drop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
        self._ws = None

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def metadata(self) -> dict:
        """The server's metadata: observation spec, action_dim, chunk_length, control_hz, model_family, ..."""
        return self._metadata

    # ---- inference
    def infer(self, obs: Mapping[str, Any]) -> dict:
        """Send one (unbatched) observation; return ``{"actions": (H, A), "server_timing", "policy_timing"}``."""
        data = packb(dict(obs))
        for attempt in (0, 1):
            if self._ws is None:
                self._connect()
                self.reconnects += 1
            try:
                self._ws.send(data)
                reply = self._ws.recv(timeout=self.timeout)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                reason = exc.rcvd.reason if exc.rcvd is not None else ""
                self._drop()
                if code == MESSAGE_TOO_BIG:
                    raise ServerError(f"request of {len(data)} bytes is larger than the server accepts "
                                      f"({self._metadata.get('max_message_bytes')} bytes): {reason}") from None
                if attempt == 1:
                    raise ServerUnavailable(f"{self.uri}: connection lost during the request ({exc})") from None
                continue  # reconnect (with backoff) and send once more
            except TimeoutError:
                self._drop()  # a late reply must not be read as the answer to the next request
                raise ServerUnavailable(f"{self.uri}: no reply within {self.timeout:.1f} s") from None
            if isinstance(reply, str):
                raise ServerError(f"policy server error: {reply}")
            try:
                result = unpackb(reply)
            except RequestError as exc:
                raise ServerError(f"malformed reply from the server: {exc}") from None
            if not isinstance(result, dict) or "actions" not in result:
                raise ServerError(f"malformed reply from the server: {type(result).__name__}")
            return result
        raise AssertionError("unreachable")
