"""What adapters ask the session driver to do, and the one error they raise.

Adapters are sans-IO (h11, wsproto): they never send, fetch or sleep. Every input method
returns a list of these small frozen records and the driver performs them in order. Symbols in
actions are the normalised names (`BTCUSDT`, `BTCUSD`), the part after `exchange:` in a book's
name; the adapter alone knows the exchange's spelling.
"""

from dataclasses import dataclass


class FeedProtocolError(ValueError):
    """A message the adapter cannot accept: malformed, unknown, or impossible in this state.

    The adapter's books are unchanged, or (if the bad part came mid-message) already marked
    for resync with the actions queued; the driver counts it, calls `adapter.drain()` and goes
    on. Never a reason to stop the process.
    """


@dataclass(frozen=True, slots=True)
class ConnSpec:
    """One WebSocket connection the adapter wants open, and the books it carries."""

    conn_id: int
    url: str
    symbols: tuple


@dataclass(frozen=True, slots=True)
class Send:
    """Send one text message on a connection (already rate limited by the adapter)."""

    conn_id: int
    text: str


@dataclass(frozen=True, slots=True)
class FetchSnapshot:
    """GET a REST snapshot; answer with `adapter.on_snapshot(symbol, ...)`.

    Status 0 in the answer means the fetch failed below HTTP (connect, TLS, timeout).
    """

    symbol: str
    url: str


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Buffered frames of this book are still to be applied: after letting the loop run,
    call `adapter.on_catch_up(symbol, now_ns)` (a backlog is applied a chunk per turn)."""

    symbol: str


@dataclass(frozen=True, slots=True)
class Publish:
    """The book changed and is synced: publish it live."""

    symbol: str


@dataclass(frozen=True, slots=True)
class Stale:
    """The book can no longer be vouched for; publish it stale. Reasons are counted."""

    symbol: str
    reason: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """The exchange refused the symbol (it does not list it): publish the book invalid, with the
    exchange's own words as `reason`. Terminal: the book is never asked for again."""

    symbol: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Close this connection and open it again (with the driver's backoff)."""

    conn_id: int
    reason: str


# The reasons a book goes stale; each has a counter in SymbolStats.
STALE_REASONS = ("gap", "checksum", "crossed", "reset", "disconnect", "bad_message", "overflow",
                 "thin", "timeout")
