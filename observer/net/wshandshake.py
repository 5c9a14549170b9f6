"""The RFC 6455 opening handshake for a client, sans-IO.

`Handshake(url, ...)` builds the upgrade request; `receive_data()` collects the reply head, and
`check()` verifies it: status 101 (anything else is an `HttpError` carrying status, headers and
body start, so a 429 during a reconnect storm still shows its Retry-After), `Upgrade:
websocket`, `Connection: upgrade`, and `Sec-WebSocket-Accept` equal to base64(SHA-1(key + GUID))
for the key we sent (RFC 6455 4.2.2). Extensions and subprotocols the server names must be ones
we offered. Whatever arrived after the head belongs to the frame reader (`leftover`): a server
may send its first frame in the same TCP segment as the 101.

permessage-deflate (RFC 7692) is offered as `permessage-deflate; client_max_window_bits`; the
reply's parameters are validated and returned as `DeflateParams`. We inflate what the server
sends and send our own (small, rare) messages uncompressed, which RFC 7692 allows, so the
client_* parameters only have to be well-formed.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from observer.net.errors import HttpError, ProtocolError
from observer.net.httpparse import HEAD_BYTES_MAX, Response, find_head_end, parse_head

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DEFAULT_PORTS = {"ws": 80, "wss": 443}
_OFFER = "permessage-deflate; client_max_window_bits"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a ws:// or wss:// URL points."""

    secure: bool
    host: str
    port: int
    resource: str  # path and query, never empty

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = _DEFAULT_PORTS["wss" if self.secure else "ws"]
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    if not parts.hostname:
        raise ValueError(f"URL has no host: {url!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError(f"bad port in URL: {url!r}") from None
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return Target(parts.scheme == "wss", parts.hostname, port, resource)


def accept_for(key: str) -> str:
    """The Sec-WebSocket-Accept value a server must send for `key`."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class DeflateParams:
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15


class Handshake:
    """One opening handshake: `request()` bytes out, reply bytes in, `check()` the verdict."""

    def __init__(self, target: Target, *, compression: bool = True,
                 headers: dict[str, str] | None = None, key: str | None = None,
                 head_bytes_max: int = HEAD_BYTES_MAX) -> None:
        self.target = target
        self.compression = compression
        self.headers = dict(headers or {})
        self.key = key or base64.b64encode(os.urandom(16)).decode("ascii")
        self.head_bytes_max = head_bytes_max
        self.leftover = b""
        self._buf = bytearray()
        self._head_end = -1

    def request(self) -> bytes:
        lines = [
            f"GET {self.target.resource} HTTP/1.1",
            f"Host: {self.target.host_header}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.compression:
            lines.append(f"Sec-WebSocket-Extensions: {_OFFER}")
        for name, value in self.headers.items():
            if "\r" in name + value or "\n" in name + value:
                raise ValueError(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def receive_data(self, data: bytes | bytearray | memoryview) -> bool:
        """Collects reply bytes; True once the whole head has arrived."""
        if self._head_end >= 0:
            self.leftover += bytes(data)
            return True
        search_from = max(0, len(self._buf) - 3)
        self._buf += data
        end = find_head_end(self._buf, search_from)
        if end < 0:
            if len(self._buf) > self.head_bytes_max:
                raise ProtocolError(f"handshake reply over head_bytes_max={self.head_bytes_max}")
            return False
        self._head_end = end
        self.leftover = bytes(self._buf[end:])
        return True

    def check(self) -> tuple[Response, DeflateParams | None]:
        """Verifies the complete reply head; returns it and the negotiated deflate, if any."""
        assert self._head_end >= 0, "check() before the reply head arrived"
        head = parse_head(self._buf[:self._head_end])
        if head.status != 101:
            raise HttpError(f"websocket upgrade refused: HTTP {head.status} {head.reason}",
                            head.status, head.headers, self.leftover)
        hdrs = head.headers
        if hdrs.get("upgrade", "").strip().lower() != "websocket":
            raise ProtocolError(f"handshake reply Upgrade is {hdrs.get('upgrade')!r}")
        if "upgrade" not in _tokens(hdrs.get("connection", "")):
            raise ProtocolError(f"handshake reply Connection is {hdrs.get('connection')!r}")
        if hdrs.get("sec-websocket-accept", "").strip() != accept_for(self.key):
            raise ProtocolError("handshake reply has a wrong Sec-WebSocket-Accept")
        if hdrs.get("sec-websocket-protocol"):
            raise ProtocolError("server chose a subprotocol we did not offer")
        return head, self._negotiate(hdrs.get("sec-websocket-extensions", ""))

    def _negotiate(self, value: str) -> DeflateParams | None:
        extensions = [e.strip() for e in value.split(",") if e.strip()]
        if not extensions:
            return None
        if not self.compression:
            raise ProtocolError(f"server enabled extensions we did not offer: {value!r}")
        if len(extensions) > 1:
            raise ProtocolError(f"server enabled more than one extension: {value!r}")
        return parse_deflate_params(extensions[0])


def parse_deflate_params(extension: str) -> DeflateParams:
    """Validates a server's permessage-deflate response (RFC 7692 7.1)."""
    name, *params = [p.strip() for p in extension.split(";")]
    if name.lower() != "permessage-deflate":
        raise ProtocolError(f"server enabled an extension we did not offer: {name!r}")
    seen: dict[str, int | None] = {}
    for param in params:
        key, _, raw = param.partition("=")
        key = key.strip().lower()
        raw = raw.strip().strip('"')
        if key in seen:
            raise ProtocolError(f"permessage-deflate parameter {key} repeated")
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if raw:
                raise ProtocolError(f"permessage-deflate {key} takes no value")
            seen[key] = None
        elif key in ("server_max_window_bits", "client_max_window_bits"):
            if not (raw.isascii() and raw.isdigit()) or not 8 <= int(raw) <= 15:
                raise ProtocolError(f"permessage-deflate {key}={raw!r} is not 8..15")
            seen[key] = int(raw)
        else:
            raise ProtocolError(f"unknown permessage-deflate parameter {key!r}")
    return DeflateParams(
        server_no_context_takeover="server_no_context_takeover" in seen,
        client_no_context_takeover="client_no_context_takeover" in seen,
        server_max_window_bits=seen.get("server_max_window_bits") or 15,
        client_max_window_bits=seen.get("client_max_window_bits") or 15,
    )


def _tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",") if t.strip()]
