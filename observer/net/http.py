"""An HTTP/1.1 client on loom for REST snapshots: GET, keep-alive, gzip, every status returned.

A feed asks for an order book snapshot every time it (re)synchronises, and exchanges meter
those calls (Binance: 6000 weight a minute per IP; a 5000-level snapshot costs 250). So the
client's jobs are few and strict: reuse one connection (`HttpClient` keeps the last idle one;
a TLS handshake per snapshot costs more than the snapshot), decode gzip (`Accept-Encoding`),
bound the body (`body_bytes_max`), bound the time (`timeout_s` for the whole request, and each
read's own deadline), and hand every status back intact: a 429 or 418 is a `Response` with its
Retry-After, never an exception, because backing off is the caller's decision.

A reused connection may have been closed by the server while idle; if it fails before any
byte of the reply arrived, the request is sent once more on a fresh connection (GET is
idempotent). Any other failure is a `NetError`: `DnsError`, `ConnectError`, `TlsError`,
`NetTimeout`, `ProtocolError` (a malformed reply), `ConnectionClosed` (cut mid-reply).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from observer.net import tcp, tls
from observer.net.errors import ConnectionClosed, NetTimeout
from observer.net.httpparse import BODY_BYTES_MAX, Response, ResponseParser

REQUEST_TIMEOUT_S = 10.0
READ_BYTES = 64 * 1024
USER_AGENT = "observer/0.1"

__all__ = ["HttpClient", "Response"]


class HttpClient:
    """GET requests against one origin (`base_url` like https://api.binance.com)."""

    def __init__(self, base_url: str, *, ca_file: str | None = None,
                 timeout_s: float = REQUEST_TIMEOUT_S, body_bytes_max: int = BODY_BYTES_MAX,
                 headers: dict[str, str] | None = None, ssl_context=None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        assert timeout_s > 0
        self.secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.secure else 80)
        self.prefix = parts.path.rstrip("/")
        self.ca_file = ca_file
        self.timeout_s = timeout_s
        self.body_bytes_max = body_bytes_max
        self.headers = dict(headers or {})
        self.ssl_context = ssl_context
        self.connections_made = 0
        self._stream = None  # the idle keep-alive connection, if any

    def get(self, path_and_query: str, headers: dict[str, str] | None = None) -> Response:
        """GET and return the Response, whatever its status. Raises NetError on failure."""
        request = self._request_bytes(path_and_query, headers)
        deadline_s = time.monotonic() + self.timeout_s
        reused = self._stream is not None
        try:
            return self._exchange(request, deadline_s)
        except _StaleConnection:
            if not reused:
                raise
        # The idle connection had died; one retry on a fresh one.
        return self._exchange(request, deadline_s)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _request_bytes(self, path_and_query: str, headers: dict[str, str] | None) -> bytes:
        if not path_and_query.startswith("/"):
            path_and_query = "/" + path_and_query
        default_port = 443 if self.secure else 80
        host = self.host if self.port == default_port else f"{self.host}:{self.port}"
        fields = {"Host": host, "User-Agent": USER_AGENT, "Accept": "*/*",
                  "Accept-Encoding": "gzip, deflate", "Connection": "keep-alive"}
        fields.update(self.headers)
        fields.update(headers or {})
        lines = [f"GET {self.prefix}{path_and_query} HTTP/1.1"]
        for name, value in fields.items():
            if any(c in f"{name}{value}" for c in "\r\n"):
                raise ValueError(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _connect(self, deadline_s: float):
        remaining_s = _remaining(deadline_s, f"{self.host}:{self.port}")
        if self.secure:
            stream = tls.connect(self.host, self.port, ca_file=self.ca_file,
                                 context=self.ssl_context, timeout_s=remaining_s,
                                 read_timeout_s=self.timeout_s)
        else:
            stream = tcp.connect(self.host, self.port, timeout_s=remaining_s,
                                 read_timeout_s=self.timeout_s)
        self.connections_made += 1
        return stream

    def _exchange(self, request: bytes, deadline_s: float) -> Response:
        stream = self._stream
        self._stream = None
        if stream is None:
            stream = self._connect(deadline_s)
        try:
            try:
                stream.sendall(request)
            except ConnectionClosed:  # EPIPE/ECONNRESET: the idle connection had died
                raise _StaleConnection() from None
            parser = ResponseParser(body_bytes_max=self.body_bytes_max)
            response = self._read_response(stream, parser, deadline_s)
        except BaseException:
            stream.close()
            raise
        if parser.keep_alive and self._stream is None:
            self._stream = stream
        else:  # not reusable, or another fiber's request already parked one
            stream.close()
        return response

    def _read_response(self, stream, parser: ResponseParser, deadline_s: float) -> Response:
        # A buffer per request, not per client: two fibers may GET at once, and with io_uring
        # the kernel writes into a parked read's buffer. A REST call is rare; 64 KiB is cheap.
        view = memoryview(bytearray(READ_BYTES))
        received_any = False
        while True:
            stream.read_timeout_s = _remaining(deadline_s, f"{self.host}:{self.port}")
            try:
                n = stream.recv_into(view)
            except ConnectionClosed:
                if not received_any:
                    raise _StaleConnection() from None
                raise
            except NetTimeout:
                raise NetTimeout(f"GET from {self.host}:{self.port} timed out after "
                                 f"{self.timeout_s} s") from None
            if n == 0:
                if not received_any:
                    raise _StaleConnection()
                return parser.feed_eof()
            received_any = True
            response = parser.feed(view[:n])
            if response is not None:
                return response


class _StaleConnection(ConnectionClosed):
    """The connection ended before any byte of the reply: safe to retry a GET once."""

    def __init__(self) -> None:
        super().__init__(1006, "connection closed before the reply")


def _remaining(deadline_s: float, peer: str) -> float:
    left_s = deadline_s - time.monotonic()
    if left_s <= 0:
        raise NetTimeout(f"request to {peer} ran past its deadline")
    return left_s
