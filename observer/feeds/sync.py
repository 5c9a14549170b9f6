"""The sync state of one book, as one table shared by all six exchanges.

Every exchange walks the same four states; they differ only in which message kinds they feed
in and in how they recover:

    DOWN --open--> SUBSCRIBING --ack--> AWAITING_SNAPSHOT --snapshot--> LIVE
                       ^                        ^    |                   |  |
                       +------ resubscribe -----+----+---- resubscribe --+  |
                                                +--------- refetch ---------+

- `refetch` (Binance): the WebSocket stays, a REST snapshot is fetched again.
- `resubscribe` (Coinbase, Kraken, OKX, Bybit): unsubscribe + subscribe for a new WS snapshot.
- Deltas in SUBSCRIBING or AWAITING_SNAPSHOT are the tail of an old subscription or the buffer
  before a REST snapshot: allowed, and the adapter decides whether to buffer or drop them.
- INVALID: the exchange refused the symbol (it does not list it). Terminal and outside the
  table: `base.Adapter.refuse` sets it, and a book in it is left out of every connection's
  subscriptions, deadlines and resyncs, so a misspelled symbol costs one refusal, not a storm.
- Only LIVE books are published live. Any pair not in TRANSITIONS raises FeedProtocolError
  naming the state, so a message the protocol does not allow is loud, never silently applied.

Counters live beside the state (SymbolStats): every transition out of LIVE names its reason and
bumps one counter, which the driver copies into the segment's per-book stats.
"""

import enum
from collections import deque

from observer.feeds.actions import FeedProtocolError


class State(enum.Enum):
    # Members are singletons: identity hashing keeps the per-message TRANSITIONS lookup in C
    # (Enum's own __hash__ is Python code, two calls per lookup).
    __hash__ = object.__hash__

    DOWN = "down"
    SUBSCRIBING = "subscribing"
    AWAITING_SNAPSHOT = "awaiting_snapshot"
    LIVE = "live"
    INVALID = "invalid"


class Kind(enum.Enum):
    __hash__ = object.__hash__

    OPEN = "open"
    ACK = "ack"
    SNAPSHOT = "snapshot"
    DELTA = "delta"
    REFETCH = "refetch"
    RESUBSCRIBE = "resubscribe"
    CLOSE = "close"


S = State
K = Kind
TRANSITIONS = {
    (S.DOWN, K.OPEN): S.SUBSCRIBING,
    (S.DOWN, K.CLOSE): S.DOWN,
    (S.SUBSCRIBING, K.ACK): S.AWAITING_SNAPSHOT,
    (S.SUBSCRIBING, K.SNAPSHOT): S.LIVE,
    (S.SUBSCRIBING, K.DELTA): S.SUBSCRIBING,
    (S.SUBSCRIBING, K.RESUBSCRIBE): S.SUBSCRIBING,
    (S.SUBSCRIBING, K.CLOSE): S.DOWN,
    (S.AWAITING_SNAPSHOT, K.ACK): S.AWAITING_SNAPSHOT,
    (S.AWAITING_SNAPSHOT, K.SNAPSHOT): S.LIVE,
    (S.AWAITING_SNAPSHOT, K.DELTA): S.AWAITING_SNAPSHOT,
    (S.AWAITING_SNAPSHOT, K.REFETCH): S.AWAITING_SNAPSHOT,
    (S.AWAITING_SNAPSHOT, K.RESUBSCRIBE): S.SUBSCRIBING,
    (S.AWAITING_SNAPSHOT, K.CLOSE): S.DOWN,
    (S.LIVE, K.ACK): S.LIVE,
    (S.LIVE, K.SNAPSHOT): S.LIVE,
    (S.LIVE, K.DELTA): S.LIVE,
    (S.LIVE, K.REFETCH): S.AWAITING_SNAPSHOT,
    (S.LIVE, K.RESUBSCRIBE): S.SUBSCRIBING,
    (S.LIVE, K.CLOSE): S.DOWN,
}
del S, K


class SymbolStats:
    """Counters for one book. Plain ints; the driver copies them into the segment.
    `messages`: updates applied to the book (a snapshot counts as one); `snapshots`: snapshots
    applied, from REST (Binance) or the exchange's WebSocket (the others)."""

    __slots__ = (
        "messages", "snapshots", "snapshots_old", "gaps", "resyncs", "checksum_errors",
        "checksums_ok", "crossed", "resets", "bad_messages", "overflows", "disconnects",
        "stale_dropped", "keepalives", "reconnects", "thin", "sync_timeouts",
    )

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}


class SymbolSync:
    """State, counters and the per-exchange sequence memory of one book."""

    __slots__ = ("symbol", "native", "conn_id", "state", "stats", "seq", "bridged", "buffer",
                 "buffer_bytes", "catching_up", "caught_up_to_bytes", "vouched", "waiting_since_ns")

    def __init__(self, symbol, native, conn_id):
        self.symbol = symbol
        self.native = native
        self.conn_id = conn_id
        self.state = State.DOWN
        self.stats = SymbolStats()
        self.seq = None  # the exchange's last applied sequence id (u, seqId, ...)
        self.bridged = False  # the first delta after a snapshot passed its bridging rule
        self.buffer = deque()  # frames (bytes) held while a REST snapshot is fetched (Binance)
        self.buffer_bytes = 0
        self.catching_up = False  # the snapshot is in, buffered frames are being applied
        self.caught_up_to_bytes = 0  # buffer_bytes when the last catch-up chunk ended
        self.vouched = None  # (worst bid, worst ask) a depth-limited REST snapshot covered
        self.waiting_since_ns = None  # first tick that saw the book unsynced (base.on_tick)

    def on(self, kind):
        """Take one transition; raise FeedProtocolError if the table has no such pair."""
        next_state = TRANSITIONS.get((self.state, kind))
        if next_state is None:
            raise FeedProtocolError(
                f"{self.symbol}: {kind.value} is not expected in state {self.state.value}"
            )
        self.state = next_state
        return next_state

    @property
    def live(self):
        return self.state is State.LIVE
