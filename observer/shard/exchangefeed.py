"""An exchange feed inside a shard: one adapter, its session driver, and the segment it fills.

Why a module of its own: the adapter (observer/feeds/<exchange>.py) decides what is synced and
the session driver (observer/feeds/session.py) owns the sockets; neither knows the segment. This
is the sink between them and the shard's `ShardWriter`:

- `Publish` -> `writer.publish(..., lagging=...)`: only adapters' LIVE books arrive here (the
  adapter's rule), so a book is live in the segment exactly when it is synced. `Stale` ->
  `writer.mark_stale`: the visible copy is republished with the stale flag. Every book starts
  stale (an unpublished slot reads as stale), so nothing is live before its first sync.
- No flush here: the session calls `writer.flush()` (its `after_frame`) once per batch, the
  messages of one read from the network, or after any other call that published (C6).
- Lag (C11): each publish measures local receive time minus the exchange's event time of the
  last applied change. Past `lag_bound_ms` the book is published with the lagging flag, the
  condition is logged once and counted (`lagging_count`), and it clears when a publish is back
  within half the bound (so a feed hovering at the bound does not flap). `lag_ns` and `lag_max_ns` live in the book's stats.
- Counters: the adapter keeps plain ints per book (SymbolStats); a stats fiber copies them into
  the segment's per-book stats every `stats_period_s`, and at once when a book goes stale, so
  `obctl stats` shows gaps, resyncs, checksum errors, reconnects and snapshots without a store
  per message on the hot path.
- Unread bytes (C11's second measure): the same stats fiber samples, per connection, the bytes
  received and not yet parsed (`WebSocket.unread_bytes()`: the socket's kernel receive queue by
  FIONREAD, plus the TLS and WebSocket buffers) and stores it as `unread_bytes` of every book
  that connection carries; 0 while it is disconnected. The time lag says how old the data being
  parsed is; this says how much more is already waiting (a feed that has fallen behind shows
  both, and a stalled reader shows bytes before any late message can show its lag).

Discussion: a stalled connection publishes nothing, so its lag cannot be measured until the
held messages arrive; they then carry their old event times and the book shows as lagging
until the feed has caught up. A silent connection is the adapter's business (`silence_max_s`
turns it into a reconnect, and the book goes stale).
"""

from __future__ import annotations

import logging

from observer import loom
from observer.feeds.actions import Publish
from observer.feeds.clock import NS_PER_MS
from observer.telemetry.logs import log_event
from observer.feeds.session import Session, SessionLimits

log = logging.getLogger("observer.feeds")

STATS_PERIOD_S = 0.2
STATS_STOP_S = 2.0           # a stop waits this long for the stats fiber to end
LAG_BOUND_MS_DEFAULT = 1000.0
CATCH_UP_FRACTION = 0.5      # lagging clears once a publish is within half the bound

# segment stat <- adapter SymbolStats field (copied by the stats fiber)
STATS_COPIED = (("gaps", "gaps"), ("resyncs", "resyncs"), ("checksum_errors", "checksum_errors"),
                ("reconnects", "reconnects"), ("snapshots", "snapshots"), ("messages", "messages"))


class BookSlot:
    """What the sink keeps per book: its segment index, its stats record and its lag state,
    and its writer's hot path located once (`publish`, `flags`, the `lag_ns` word)."""

    __slots__ = ("index", "book", "sync", "stats", "lagging", "lag_max_ns", "live", "name",
                 "stale_reason", "base", "publish", "flags", "words", "lag_word")

    def __init__(self, index, book, sync, stats, name, writer):
        self.index = index
        self.book = book
        self.sync = sync
        self.stats = stats
        self.publish = writer.publisher(index)
        self.flags = writer.flags()
        self.words, self.lag_word = stats.word("lag_ns")
        self.lagging = False
        self.lag_max_ns = 0
        self.live = False              # published live since the last Stale (for the log)
        self.name = name
        self.stale_reason = "start"
        # The segment's counters when this process attached: a restarted shard
        # (observer/process/shardmanager.py) continues them instead of resetting them to its adapter's fresh zeros.
        self.base = tuple(getattr(stats, segment_name) for segment_name, _ in STATS_COPIED)


class ExchangeFeed:
    """One configured exchange feed: `adapter` plus how to run it. The shard calls
    `run_session(loop, writer, book_index_of)` and, to stop, `stop_session()`."""

    def __init__(self, adapter, *, book_exchange, ca_file=None, lag_bound_ms=LAG_BOUND_MS_DEFAULT,
                 session_limits=None, stats_period_s=STATS_PERIOD_S):
        assert lag_bound_ms > 0
        self.adapter = adapter
        self.exchange = book_exchange      # the `exchange` part of the book names (bybit-linear)
        self.books = adapter.books
        self.ca_file = ca_file
        self.lag_bound_ns = int(lag_bound_ms * NS_PER_MS)
        self.catch_up_ns = int(self.lag_bound_ns * CATCH_UP_FRACTION)
        self.session_limits = session_limits or SessionLimits()
        self.stats_period_s = stats_period_s
        self.writer = None
        self.slots: dict[str, BookSlot] = {}
        self.session: Session | None = None
        self._stats_fiber = None
        self._unread_by_conn: dict[int, int] = {}   # reused by sample_unread, one entry per conn

    def natives(self):
        """(normalised symbol, native symbol) per book, in the adapter's order."""
        return [(symbol, sync.native) for symbol, sync in self.adapter.syncs.items()]

    # -- lifetime ---------------------------------------------------------------------------

    def attach(self, writer, book_index_of) -> None:
        """Bind each book to its slot in the shard's segment (before anything is published)."""
        self.writer = writer
        for symbol, book in self.adapter.books.items():
            index = book_index_of[(self.exchange, symbol)]
            self.slots[symbol] = BookSlot(index, book, self.adapter.syncs[symbol],
                                          writer.book_stats(index), f"{self.exchange}:{symbol}",
                                          writer)

    def run_session(self, loop, writer, book_index_of) -> None:
        self.attach(writer, book_index_of)
        self.session = Session(self.adapter, self.sink, ca_file=self.ca_file,
                               on_frame=writer.wake_ahead, after_frame=writer.flush,
                               limits=self.session_limits)
        self.session.start(loop)
        self._stats_fiber = loop.spawn(self._copy_stats_forever, name=f"{self.exchange}-stats")

    def stop_session(self) -> None:
        """Stop the session and the stats fiber, waiting for both when called from a fiber (a
        cancel of the caller meanwhile is raised once both are stopped); the books are left
        stale for clients."""
        stats_fiber, self._stats_fiber = self._stats_fiber, None
        if stats_fiber is not None:
            stats_fiber.cancel()        # first: it samples the sockets the session closes
        try:
            if self.session is not None:
                self.session.stop()
        finally:
            if stats_fiber is not None:
                loom.join_all([stats_fiber], timeout_s=STATS_STOP_S)

    # -- the sink (hot path) ------------------------------------------------------------------

    def sink(self, actions, recv_ns) -> None:
        """Publish or mark stale what the adapter asked for (the session flushes after)."""
        slots = self.slots
        for action in actions:
            slot = slots[action.symbol]
            if type(action) is Publish:
                book = slot.book
                exch_ts_ns = book.exch_ts_ns
                if exch_ts_ns:
                    lag_ns = recv_ns - exch_ts_ns
                    slot.words[slot.lag_word] = lag_ns  # stats.lag_ns, one word store
                    if lag_ns > slot.lag_max_ns or lag_ns > self.catch_up_ns or slot.lagging:
                        self.measure_lag(slot, lag_ns)
                slot.publish(book, slot.flags, recv_ns)
                if not slot.live:
                    self.went_live(slot)
            else:
                self.writer.mark_stale(slot.index)
                self.copy_stats(slot)
                if slot.live:
                    self.went_stale(slot, action.reason)

    def went_live(self, slot) -> None:
        """Logged once per sync: the first after start, then each resync after a Stale."""
        slot.live = True
        log_event(log, "book_live" if slot.stale_reason == "start" else "book_resynced",
                  book=slot.name, after=slot.stale_reason, update_id=slot.book.update_id)

    def went_stale(self, slot, reason) -> None:
        """Logged once per live-to-stale change, with the adapter's reason (gap, checksum,
        reset, disconnect, ...); further Stale actions while it resyncs are counted only."""
        slot.live = False
        slot.stale_reason = reason
        log_event(log, "book_stale", level=logging.WARNING, book=slot.name, reason=reason)

    def measure_lag(self, slot, lag_ns) -> None:
        """The lag's maximum and the lagging flag; the sink calls it only when one of them
        may change (a new maximum, or a lag past half the bound, or while lagging)."""
        if lag_ns > slot.lag_max_ns:
            slot.lag_max_ns = lag_ns
            slot.stats.lag_max_ns = lag_ns
        # Hysteresis: a feed hovering at the bound must not flap (and log) on every message.
        lagging = lag_ns > (self.catch_up_ns if slot.lagging else self.lag_bound_ns)
        if lagging is not slot.lagging:
            self.lag_changed(slot, lagging, lag_ns)

    def lag_changed(self, slot, lagging, lag_ns) -> None:
        slot.lagging = lagging
        slot.flags = self.writer.flags(lagging=lagging)
        name = f"{self.exchange}:{slot.sync.symbol}"
        if lagging:
            slot.stats.lagging_count += 1
            log.warning("%s is lagging: %.0f ms behind the exchange (bound %.0f ms)", name,
                        lag_ns / NS_PER_MS, self.lag_bound_ns / NS_PER_MS)
        else:
            log.info("%s caught up: %.0f ms behind the exchange", name, lag_ns / NS_PER_MS)

    # -- counters -----------------------------------------------------------------------------

    def copy_stats(self, slot) -> None:
        stats, counters = slot.stats, slot.sync.stats
        for (segment_name, adapter_name), base in zip(STATS_COPIED, slot.base):
            value = base + getattr(counters, adapter_name)
            if getattr(stats, segment_name) != value:
                setattr(stats, segment_name, value)

    def sample_unread(self) -> None:
        """Each book's `unread_bytes`: its connection's backlog (one ioctl per connection)."""
        sockets = self.session.sockets if self.session is not None else {}
        unread_by_conn = self._unread_by_conn
        unread_by_conn.clear()
        for conn_id, ws in sockets.items():
            unread_by_conn[conn_id] = ws.unread_bytes()
        for slot in self.slots.values():
            unread_bytes = unread_by_conn.get(slot.sync.conn_id, 0)   # 0: not connected
            if slot.stats.unread_bytes != unread_bytes:
                slot.stats.unread_bytes = unread_bytes

    def _copy_stats_forever(self) -> None:
        while True:
            for slot in self.slots.values():
                self.copy_stats(slot)
            self.sample_unread()
            loom.sleep(self.stats_period_s)
