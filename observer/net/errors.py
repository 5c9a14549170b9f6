"""The failures of observer/net, as one small hierarchy a feed can act on.

A feed driver does one of three things with a network failure: reconnect at once, back off and
reconnect, or give up and report. So every failure here is a `NetError`, and the subclass says
which kind it was: the name could not be resolved (`DnsError`), nobody accepted the connection
(`ConnectError`), the peer's certificate or the TLS exchange failed (`TlsError`), a deadline
passed (`NetTimeout`), the peer broke the protocol (`ProtocolError`, carrying the WebSocket close
code we sent it), the WebSocket was closed (`ConnectionClosed(code, reason)`), or an HTTP reply
was not the one a protocol step needed (`HttpError`, carrying the status and headers, so that a
429 during a WebSocket upgrade still shows its Retry-After).

`NetTimeout` is also a `TimeoutError`, so code that already catches the built-in keeps working.
"""

from __future__ import annotations

__all__ = [
    "NetError",
    "DnsError",
    "ConnectError",
    "TlsError",
    "NetTimeout",
    "ProtocolError",
    "ConnectionClosed",
    "HttpError",
]


class NetError(Exception):
    """Base of every failure raised by observer/net."""


class DnsError(NetError):
    """The host name did not resolve."""


class ConnectError(NetError):
    """The TCP connection could not be made (refused, unreachable, reset during connect)."""


class TlsError(NetError):
    """The TLS handshake or a TLS record failed; certificate verification failures land here."""


class NetTimeout(NetError, TimeoutError):
    """A deadline passed: connect, handshake, a read, or a close that was never answered."""


class ProtocolError(NetError):
    """The peer sent bytes that break HTTP/1.1 or RFC 6455.

    `close_code` is the WebSocket status code the violation calls for (1002 protocol error,
    1007 invalid payload, 1009 message too big, ...); HTTP parse errors use 1002 as well.
    """

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


class ConnectionClosed(NetError):
    """The WebSocket is closed. `code` 1006 means it ended without a close frame."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"websocket closed: code {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason


class HttpError(NetError):
    """An HTTP reply that a protocol step could not accept (e.g. a WebSocket upgrade refused).

    Plain `HttpClient.get` returns every status to the caller; this is raised only where a
    specific status was required.
    """

    def __init__(self, message: str, status: int = 0, headers: dict | None = None,
                 body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers if headers is not None else {}
        self.body = body
