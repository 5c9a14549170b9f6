"""What obclient raises, in one module below the client and its update stream (both raise them).

`ObserverUnavailable` (no observer answers, or it went away: retry later), its subclasses
`IncompatibleObserver` (a segment layout this client does not know: upgrade one side) and
`ServerRefused` (the observer refused the connection, with its reason), `BookNotFound` (a name
that matches no book) and its subclass `AmbiguousBook` (several: `choices` lists them),
`RequestFailed` (an error reply to a request).
"""

from __future__ import annotations

from obproto import messages as m


class ObserverUnavailable(ConnectionError):
    """No observer answers on the socket (or it went away and has not come back yet)."""


class IncompatibleObserver(ObserverUnavailable):
    """The observer's segment has a layout (magic, version, hash) this client does not know."""


class BookNotFound(LookupError):
    """The name matches no book (`unknown book 'DOGEUSD'`), or several (`AmbiguousBook`)."""

    def __init__(self, message: str, choices=()):
        super().__init__(message)
        self.choices = tuple(choices)   # for AmbiguousBook: every matching `exchange:SYMBOL`


class AmbiguousBook(BookNotFound):
    """The name matches several books, e.g. `BTCUSD is ambiguous: binance:BTCUSD,
    kraken:BTCUSD`; `choices` holds them. Say `exchange:SYMBOL`."""


def book_error(exc: m.BookNameError) -> BookNotFound:
    """The obclient exception for a name the resolver refused."""
    if exc.code == m.ErrorCode.AMBIGUOUS_BOOK:
        return AmbiguousBook(str(exc), exc.choices)
    return BookNotFound(str(exc))


class ServerRefused(ObserverUnavailable):
    """The observer refused this connection; `code` (obproto.messages.ErrorCode), `code_name`
    (e.g. "BUSY") and `reason` are the server's own, e.g. `clients_max=256 reached`."""

    def __init__(self, socket_path: str, code: int, reason: str):
        self.code = code
        self.code_name = m.ErrorCode.NAMES.get(code, str(code))
        self.reason = reason
        super().__init__(f"observer at {socket_path} refused the connection: "
                         f"{self.code_name}: {reason}")


class RequestFailed(RuntimeError):
    """The observer answered a request with an error reply."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{m.ErrorCode.NAMES.get(code, code)}: {message}")
        self.code = code
