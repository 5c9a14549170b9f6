"""The `nats` feed: a remote observer mirrors the books an `obrelay` publishes to NATS.

Why a feed: strategies on a host without exchange connections use obclient unchanged. The
mirror's books are named as on the source (`binance:BTCUSDT`), sit in this observer's segment
and go through the one sink (observer/shard/feedsink.py) like any other feed's, with lag and counters.

    [[feed]]
    exchange = "nats"
    url = ["nats://h1:4222", "nats://h2:4222"]   # one server or a cluster's
    relay = "colo1"                               # the source observer's name
    symbols = ["binance:BTCUSDT", "kraken:BTCUSD"]  # the books to mirror; default: every book
                                                  # of the relay, listed at start-up (the
                                                  # segment is created once, C2)

Two sides. nats-py is asyncio and loom is not, so the NATS client runs in one thread with its
own asyncio loop (observer/shard/natsmirror.py): it subscribes to `<prefix>.<relay>.>`, decodes each
message (client/obproto/relay.py) and, on each (re)connect, fetches every book's last value from the
relay's JetStream stream. It hands what it got to this fiber through a `Mailbox`: a dict of the
latest item per book (latest wins when the fiber falls behind, counted as `coalesced`) and one
eventfd write per batch. The fiber applies, in order, client/obproto/relay.py's receiver rule:

- `BookSequencer`: a book message is applied iff its (incarnation, relay_seq) is past the last
  applied one; gaps (lost messages) are counted (`gaps`), a book is exact again with each whole
  message it applies.
- A book is live only while: the NATS link is up and the book was confirmed on this connection
  (a message or its stream value received since the last connect), its relay is alive (a
  heartbeat within HEARTBEATS_MISSED_MAX periods, not `stopping`), the heartbeat says its
  observer is up, the last message is not STALE, and its incarnation is the heartbeat's.
  Otherwise it is published stale. So no book is live across a gap in the link or the relay:
  after an outage it waits for its stream value (or a live message) on the new connection.
- A heartbeat naming a book further than what was applied (its last message was lost) asks the
  thread to fetch that book's stream value.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time

from observer.config import settings as cfg
from observer import loom
from observer.book.book import side_export
from observer.feeds.actions import Publish, Stale
from observer.feeds.sync import SymbolSync
from observer.shard.feedsink import LAG_BOUND_MS_DEFAULT, STATS_PERIOD_S, STATS_STOP_S, FeedSink
from observer.telemetry.logs import log_event
from obproto import relay as wire

log = logging.getLogger("observer.feeds")

LIVENESS_CHECK_S = 0.05      # how often relay heartbeats are checked for silence
STOP_THREAD_S = 5.0          # a stop waits this long for the NATS thread
HEARTBEAT_KEY = "_hb"        # the mailbox keys besides book names (never "exchange:SYMBOL")
LINK_KEY = "_link"
EVENTFD_READ_BYTES = 8


def mirrored_names(feed_cfg: cfg.FeedConfig, where: str) -> list:
    """(exchange, symbol, native) of each mirrored book: the names as the source has them."""
    if importlib.util.find_spec("nats") is None:
        raise cfg.ConfigError(f"{where}: needs nats-py: pip install 'observer[nats]'")
    if not feed_cfg.symbols:          # observer/shard/natsdiscover.py lists them first
        raise cfg.ConfigError(f"{where}: no books to mirror")
    out, seen = [], set()
    for name in feed_cfg.symbols:
        exchange, sep, symbol = name.partition(":")
        if not sep or not exchange or not symbol or ":" in symbol:
            raise cfg.ConfigError(f"{where}: symbols of a nats feed are book names "
                                  f"exchange:SYMBOL, not {name!r}")
        if name in seen:
            raise cfg.ConfigError(f"{where}: book {name} listed twice")
        seen.add(name)
        out.append((exchange, symbol, symbol))
    return out


class MirrorBook:
    """A book as the last applied relay message has it: whole, exact integers (C3).

    `top_lists` are Book's (observer/book/book.py: per side ascending towards the best level at
    the end, ask keys negated), so the compiled publisher reads them without the interpreter.
    They are updated in place: the lists live as long as the book."""

    __slots__ = ("name", "price_exp", "size_exp", "update_id", "exch_ts_ns", "top_lists")

    def __init__(self, name: str):
        self.name = name
        self.price_exp = 0
        self.size_exp = 0
        self.update_id = 0
        self.exch_ts_ns = 0
        self.top_lists = ([], [], [], [])

    def load(self, msg: wire.BookMessage) -> None:
        bid_keys, bid_sizes, ask_keys, ask_sizes = self.top_lists
        bid_keys[:] = msg.bid_px
        bid_keys.reverse()
        bid_sizes[:] = msg.bid_sz
        bid_sizes.reverse()
        ask_keys[:] = msg.ask_px
        ask_keys.reverse()
        for i, price in enumerate(ask_keys):
            ask_keys[i] = -price
        ask_sizes[:] = msg.ask_sz
        ask_sizes.reverse()
        self.price_exp, self.size_exp = msg.price_exp, msg.size_exp
        self.update_id, self.exch_ts_ns = msg.update_id, msg.exch_ts_ns

    def export_top(self, bid_px, bid_sz, ask_px, ask_sz):
        bid_keys, bid_sizes, ask_keys, ask_sizes = self.top_lists
        return (side_export(bid_keys, bid_sizes, False, bid_px, bid_sz),
                side_export(ask_keys, ask_sizes, True, ask_px, ask_sz))


class Mailbox:
    """NATS thread -> feed fiber: the latest item per key, one eventfd write per batch.

    Bounded by its keys (the mirrored books, the heartbeat, the link state): a fiber that falls
    behind sees each book's newest message once, the ones it replaced counted in `coalesced`.
    `put(key, item, order)` keeps the pending item if its `order` is greater (a stream value
    fetched late never replaces a newer live message). Two dicts swap between the sides, so a
    batch allocates nothing once warm."""

    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._pending: dict = {}
        self._spare: dict = {}
        self._armed = True          # the fiber is waiting: the next put writes the eventfd
        self._shut = False
        self.coalesced = 0

    def put(self, key: str, item, order) -> None:
        with self._lock:
            if self._shut:
                return
            old = self._pending.get(key)
            if old is not None:
                if old[0] > order:
                    return
                self.coalesced += 1
            self._pending[key] = (order, item)
            wake, self._armed = self._armed, False
            if wake:
                os.eventfd_write(self.fd, 1)   # under the lock: `shut` then close is safe

    def take(self) -> dict:
        """The pending items, {key: (order, item)}; give the dict back with `done`."""
        with self._lock:
            items, self._pending = self._pending, self._spare
            self._armed = True
        return items

    def done(self, items: dict) -> None:
        items.clear()
        self._spare = items

    def shut(self) -> None:
        """No put writes the eventfd from now on (its owner closes it next)."""
        with self._lock:
            self._shut = True

    def close(self) -> None:
        self.shut()
        os.close(self.fd)


class RelayState:
    """What the fiber knows of the relay: its last heartbeat and when it arrived (our clock)."""

    __slots__ = ("hb", "arrived_s", "alive")

    def __init__(self):
        self.hb: wire.Heartbeat | None = None
        self.arrived_s = 0.0
        self.alive = False

    def check(self, now_s: float) -> bool:
        hb = self.hb
        self.alive = (hb is not None and not hb.stopping and now_s - self.arrived_s
                      < wire.HEARTBEATS_MISSED_MAX * hb.period_ms / 1000)
        return self.alive


class NatsFeed(FeedSink):
    """One `[[feed]] exchange = "nats"`: its books, the NATS thread and the apply fiber."""

    def __init__(self, feed_cfg: cfg.FeedConfig, planned_books, *,
                 lag_bound_ms=LAG_BOUND_MS_DEFAULT, stats_period_s=STATS_PERIOD_S):
        names = [f"{exchange}:{symbol}" for exchange, symbol, _ in planned_books]
        books = {name: MirrorBook(name) for name in names}
        syncs = {name: SymbolSync(name, name, -1) for name in names}
        super().__init__(exchange="nats", books=books, syncs=syncs, lag_bound_ms=lag_bound_ms,
                         stats_period_s=stats_period_s)
        self.cfg = feed_cfg
        self.sequencer = wire.BookSequencer()
        self.relay = RelayState()
        self.link_up = False
        self.link_epoch = 0                   # +1 per (re)connect of the NATS thread
        self.confirmed = dict.fromkeys(names, -1)   # the link epoch each book was last seen on
        self.last_msg: dict[str, wire.BookMessage | None] = dict.fromkeys(names)
        self.live = dict.fromkeys(names, False)
        self.publish_actions = {name: Publish(name) for name in names}
        self.mailbox: Mailbox | None = None
        self.thread = None
        self._fibers: list = []
        self._actions: list = []              # reused per batch

    def book_key(self, symbol) -> tuple[str, str]:
        exchange, _, name_symbol = symbol.partition(":")
        return (exchange, name_symbol)

    # -- lifetime ---------------------------------------------------------------------------

    def run_session(self, loop, writer, book_index_of) -> None:
        from observer.shard.natsmirror import NatsThread

        self.attach(writer, book_index_of)
        self.mailbox = Mailbox()
        self.thread = NatsThread(self.cfg, list(self.books), self.mailbox)
        self.thread.start()
        self._fibers = [loop.spawn(self._apply_forever, name="nats-feed"),
                        loop.spawn(self._check_forever, name="nats-liveness")]
        self.start_stats(loop)

    def stop_session(self) -> None:
        self.stopping = True            # a clean stop: books go stale without a line each
        fibers, self._fibers = self._fibers, []
        try:
            self.stop_stats()
            loom.cancel_and_join(fibers, timeout_s=STATS_STOP_S)
        finally:
            if self.thread is not None:
                self.thread.stop()
                loom.run_in_thread(self.thread.join, STOP_THREAD_S)
                log_event(log, "nats_feed_stopped", relay=self.cfg.relay,
                          coalesced=self.mailbox.coalesced, rejected=self.thread.rejected,
                          gaps=self.sequencer.gaps, lost=self.sequencer.lost,
                          restarts=self.sequencer.restarts)
                self.thread = None
            if self.mailbox is not None:
                self.mailbox.shut()           # a thread that outlived its join writes nothing
                loom.close(self.mailbox.fd)
                self.mailbox = None

    def fibers(self) -> list:
        return [*self._fibers, *super().fibers()]

    # -- the apply fiber --------------------------------------------------------------------

    def _apply_forever(self) -> None:
        buf = bytearray(EVENTFD_READ_BYTES)
        mailbox = self.mailbox
        try:
            while True:
                loom.read(mailbox.fd, buf)
                items = mailbox.take()
                self._apply_batch(items)
                mailbox.done(items)
        except Exception:
            self.mark_all_stale("feed error")
            raise

    def _apply_batch(self, items: dict) -> None:
        recv_ns = time.time_ns()
        link = items.pop(LINK_KEY, None)
        if link is not None:
            self._link_changed(*link[1])
        hb = items.pop(HEARTBEAT_KEY, None)
        if hb is not None:
            self._heartbeat(hb[1])
        touched = self._actions
        for name, (_, (epoch, msg, fetched)) in items.items():
            self._book_message(name, epoch, msg, fetched)
            touched.append(name)
        if hb is not None or link is not None:
            touched = list(self.books)
        self._publish(touched, recv_ns)
        self._actions.clear()

    def _book_message(self, name: str, epoch: int, msg: wire.BookMessage, fetched: bool) -> None:
        verdict = self.sequencer.offer(msg)
        stats = self.syncs[name].stats
        if epoch == self.link_epoch:
            self.confirmed[name] = epoch      # seen on this connection: applied or older
        if verdict not in wire.APPLY:
            return
        if verdict == wire.GAP:
            stats.gaps += 1
        if fetched:
            stats.snapshots += 1
        stats.messages += 1
        self.books[name].load(msg)
        self.last_msg[name] = msg

    def _heartbeat(self, hb: wire.Heartbeat) -> None:
        relay = self.relay
        relay.hb, relay.arrived_s = hb, time.monotonic()
        relay.check(relay.arrived_s)
        behind = [name for name in self.sequencer.behind(hb) if name in self.books]
        if behind and self.thread is not None:
            self.thread.fetch(behind)

    def _link_changed(self, up: bool, epoch: int) -> None:
        if up and epoch != self.link_epoch:
            for sync in self.syncs.values():
                sync.stats.reconnects += 1 if self.link_epoch else 0
        self.link_up, self.link_epoch = up, epoch
        log_event(log, "nats_link", level=logging.INFO if up else logging.WARNING,
                  relay=self.cfg.relay, up=up, epoch=epoch)

    # -- live or stale ----------------------------------------------------------------------

    def book_is_live(self, name: str) -> bool:
        msg, hb = self.last_msg[name], self.relay.hb
        return (self.link_up and self.confirmed[name] == self.link_epoch and self.relay.alive
                and msg is not None and not msg.stale and hb.observer_up
                and msg.incarnation == hb.incarnation)

    def _publish(self, names, recv_ns: int) -> None:
        actions = []
        for name in names:
            live = self.book_is_live(name)
            if live:
                actions.append(self.publish_actions[name])
                if not self.live[name]:
                    self.syncs[name].stats.resyncs += self.slots[name].stale_reason != "start"
            elif self.live[name]:
                actions.append(Stale(name, self._why_stale(name)))
            self.live[name] = live
        if actions:
            self.sink(actions, recv_ns)
            self.writer.flush()

    def _why_stale(self, name: str) -> str:
        msg = self.last_msg[name]
        if not self.link_up:
            return "nats unreachable"
        if not self.relay.alive:
            return "relay silent"
        if self.confirmed[name] != self.link_epoch or msg is None:
            return "resync"
        return "source stale"

    def _check_forever(self) -> None:
        """Relay silence is an event nobody sends: look for it."""
        while True:
            loom.sleep(LIVENESS_CHECK_S)
            was = self.relay.alive
            if self.relay.check(time.monotonic()) != was:
                log_event(log, "relay_alive" if self.relay.alive else "relay_silent",
                          level=logging.INFO if self.relay.alive else logging.WARNING,
                          relay=self.cfg.relay)
                self._publish(list(self.books), time.time_ns())
