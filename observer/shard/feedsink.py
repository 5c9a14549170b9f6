"""The one sink of every feed: actions in, the shard's segment out, with lag and counters.

Why a module of its own: every feed (an exchange's session, the synthetic walk, a NATS mirror)
ends the same way. Its adapter keeps `Book`s and says, per book, `Publish` (the book is synced:
publish it live) or `Stale` (it is not: say so to clients). `FeedSink` turns those actions into
the shard's `ShardWriter` calls, so a book looks and is measured the same whatever fed it:

- `Publish` -> `writer.publish(..., lagging=...)`: only adapters' LIVE books arrive here (the
  adapter's rule), so a book is live in the segment exactly when it is synced. `Stale` ->
  `writer.mark_stale`: the visible copy is republished with the stale flag. Every book starts
  stale (an unpublished slot reads as stale), so nothing is live before its first sync.
  `Invalid` (the exchange refused the symbol) -> `writer.mark_invalid` with the exchange's
  reason, logged once as `symbol_refused` (an ERROR: the configuration names a symbol the
  exchange does not list; the book stays empty until the configuration is fixed).
- No flush here: the feed's driver calls `writer.flush()` once per batch (C6).
- Lag (C11): each publish measures local receive time minus the source's event time of the
  last applied change. Past `lag_bound_ms` the book is published with the lagging flag, the
  condition is logged once and counted (`lagging_count`), and it clears when a publish is back
  within half the bound (so a feed hovering at the bound does not flap). `lag_ns` and
  `lag_max_ns` live in the book's stats.
- Counters: the adapter keeps plain ints per book (a `SymbolStats` on each book's sync); a
  stats fiber copies them into the segment's per-book stats every `stats_period_s`, and at once
  when a book goes stale, so `obctl stats` shows gaps, resyncs, checksum errors, reconnects and
  snapshots without a store per message on the hot path. `sample()` is the feed's own hook on
  that fiber (the exchange feed samples its sockets' unread bytes there).

A feed is a `FeedSink` subclass with `run_session(loop, writer, book_index_of)` and
`stop_session()`: the shard calls only those (observer/shard/runner.py).
"""

from __future__ import annotations

import logging

from observer import loom
from observer.feeds.actions import Invalid, Publish
from observer.feeds.clock import NS_PER_MS
from observer.telemetry.logs import log_event

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
        # The segment's counters when this process attached: a restarted shard (observer/
        # shards.py) continues them instead of resetting them to its adapter's fresh zeros.
        self.base = tuple(getattr(stats, segment_name) for segment_name, _ in STATS_COPIED)


class FeedSink:
    """Publishes one feed's books into a shard's segment. `books[symbol]` is the adapter's
    `Book`, `syncs[symbol]` its per-book state (`.stats`: a SymbolStats, `.conn_id`)."""

    def __init__(self, *, exchange, books, syncs, lag_bound_ms=LAG_BOUND_MS_DEFAULT,
                 stats_period_s=STATS_PERIOD_S):
        assert lag_bound_ms > 0
        assert set(books) == set(syncs)
        self.exchange = exchange           # the `exchange` part of the book names
        self.books = books
        self.syncs = syncs
        self.lag_bound_ns = int(lag_bound_ms * NS_PER_MS)
        self.catch_up_ns = int(self.lag_bound_ns * CATCH_UP_FRACTION)
        self.stats_period_s = stats_period_s
        self.writer = None
        self.slots: dict[str, BookSlot] = {}
        self._stats_fiber = None
        self.stopping = False              # a clean stop: its disconnects are not news

    def natives(self):
        """(normalised symbol, native symbol) per book, in the adapter's order."""
        return [(symbol, sync.native) for symbol, sync in self.syncs.items()]

    def book_key(self, symbol) -> tuple[str, str]:
        """(exchange, symbol) of the book the adapter calls `symbol`: its name in the segment."""
        return (self.exchange, symbol)

    def book_keys(self) -> list:
        return [self.book_key(symbol) for symbol in self.books]

    def attach(self, writer, book_index_of) -> None:
        """Bind each book to its slot in the shard's segment (before anything is published)."""
        self.writer = writer
        for symbol, book in self.books.items():
            key = self.book_key(symbol)
            index = book_index_of[key]
            self.slots[symbol] = BookSlot(index, book, self.syncs[symbol],
                                          writer.book_stats(index), "%s:%s" % key, writer)

    def fibers(self) -> list:
        """The fibers this feed runs itself (its driver's own are the driver's)."""
        return [self._stats_fiber] if self._stats_fiber is not None else []

    def start_stats(self, loop) -> None:
        self._stats_fiber = loop.spawn(self._copy_stats_forever, name=f"{self.exchange}-stats")

    def stop_stats(self) -> None:
        """Cancel the stats fiber and wait for it (from a fiber)."""
        stats_fiber, self._stats_fiber = self._stats_fiber, None
        if stats_fiber is not None:
            stats_fiber.cancel()
            loom.join_all([stats_fiber], timeout_s=STATS_STOP_S)

    def mark_all_stale(self, reason) -> None:
        """Every book stale now (a feed's driver failed or stopped), then one flush."""
        for slot in self.slots.values():
            self.writer.mark_stale(slot.index)
            if slot.live:
                self.went_stale(slot, reason)
        self.writer.flush()

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
            elif type(action) is Invalid:
                self.refused(slot, action.reason)
            else:
                self.writer.mark_stale(slot.index)
                self.copy_stats(slot)
                if slot.live:
                    self.went_stale(slot, action.reason)

    def refused(self, slot, reason) -> None:
        """Once per book (the adapter never asks again): publish it invalid, say why."""
        slot.live = False
        slot.stale_reason = "refused"
        self.writer.mark_invalid(slot.index, reason)
        self.copy_stats(slot)
        log_event(log, "symbol_refused", level=logging.ERROR, book=slot.name,
                  native=slot.sync.native, reason=reason)

    def went_live(self, slot) -> None:
        """Logged once per sync: the first after start, then each resync after a Stale."""
        slot.live = True
        log_event(log, "book_live" if slot.stale_reason == "start" else "book_resynced",
                  book=slot.name, after=slot.stale_reason, update_id=slot.book.update_id)

    def went_stale(self, slot, reason) -> None:
        """Logged once per live-to-stale change, with the adapter's reason (gap, checksum,
        reset, disconnect, ...); further Stale actions while it resyncs are counted only. Not
        during a clean stop: every book goes stale then by design (`observer_stopping` says so),
        and a WARNING per book would tell an operator that something went wrong."""
        slot.live = False
        slot.stale_reason = reason
        if self.stopping:
            return
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
        if lagging:
            slot.stats.lagging_count += 1
            log_event(log, "book_lagging", level=logging.WARNING, book=slot.name,
                      lag_ms=round(lag_ns / NS_PER_MS), bound_ms=round(self.lag_bound_ns / NS_PER_MS))
        else:
            log_event(log, "book_caught_up", book=slot.name, lag_ms=round(lag_ns / NS_PER_MS))

    # -- counters -----------------------------------------------------------------------------

    def copy_stats(self, slot) -> None:
        stats, counters = slot.stats, slot.sync.stats
        for (segment_name, adapter_name), base in zip(STATS_COPIED, slot.base):
            value = base + getattr(counters, adapter_name)
            if getattr(stats, segment_name) != value:
                setattr(stats, segment_name, value)

    def sample(self) -> None:
        """The feed's own sampling, on the stats fiber (nothing by default)."""

    def _copy_stats_forever(self) -> None:
        while True:
            for slot in self.slots.values():
                self.copy_stats(slot)
            self.sample()
            loom.sleep(self.stats_period_s)
