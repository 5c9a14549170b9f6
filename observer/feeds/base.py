"""What every exchange adapter shares: books, sync table, action queue, keepalive, limits.

An adapter is one feed (exchange + symbols + config), sans-IO (no sockets, no loom): the session
driver owns the sockets and calls `on_open`, `on_message`, `on_snapshot`, `on_close` and `on_tick`
with the time; each returns the actions to perform (actions.py). An exchange module subclasses
`Adapter` and fills in four things: how symbols map onto connections and URLs, what to send on open
and to resubscribe, how to read one message, and how to recover a book (resubscribe, or for Binance
refetch a REST snapshot).

Why the queue: a message can fail half-way (a bad level after two good ones). The adapter then
marks the book for resync, queuing the actions, and raises FeedProtocolError; the driver counts
the error and calls `drain()` to collect what was queued. Nothing is lost and nothing is
applied twice. Any other exception out of a message is a bug: `on_message` resyncs every book
of that connection (which one it touched is not known), queuing the same actions, and lets it
propagate; the driver counts and logs it, drains, and goes on.

Keepalive and liveness live here, for every exchange: `ping_message()` is sent when the
connection has been quiet for `ping_idle_s` (OKX's fixed text `ping` is its `ping_text`; Bybit
and Kraken number their pings, so they build the text per send), and a Reconnect when nothing
at all arrived for `silence_max_s`. A book still unsynced
`sync_timeout_s` after it was asked for is asked for again, whatever was lost on the way.
"""

import abc

import orjson

from observer.book import Book, BookCrossed
from observer.feeds.actions import (ConnSpec, FeedProtocolError, Invalid, Publish, Reconnect, Send,
                                    Stale)
from observer.feeds.clock import NS_PER_S
from observer.feeds.scheduler import SendLimiter
from observer.feeds.sync import Kind, State, SymbolSync
from obproto import symbols as symbol_names

# The bad shapes a JSON message can take; each is a FeedProtocolError, never a crash.
MESSAGE_ERRORS = (KeyError, IndexError, TypeError, AttributeError, ValueError)

STAT_BY_REASON = {
    "gap": "gaps",
    "checksum": "checksum_errors",
    "crossed": "crossed",
    "reset": "resets",
    "bad_message": "bad_messages",
    "overflow": "overflows",
    "disconnect": "disconnects",
    "thin": "thin",
    "timeout": "sync_timeouts",
}


class Adapter(abc.ABC):
    """Base of the six exchange adapters; see the module essay."""

    exchange = ""
    ws_url_default = ""
    rest_url_default = ""
    symbols_per_conn_max = 200
    send_rate_per_s = 5.0
    send_burst = 5
    send_limit_per_ip = False  # True: one bucket for all connections (the exchange counts per IP)
    ping_text = None
    ping_idle_s = 20.0
    silence_max_s = 60.0  # 0: the exchange may stay silent (its pings are below us, in net)
    sync_timeout_s = 20.0  # a book not live this long after (re)subscribing is asked for again
    # New connections per second, about half what the exchange tolerates per IP (Binance: 300
    # attempts per 5 minutes); spaces the first attempts, backoff spaces the rest.
    connects_per_s = 0.5
    message_levels_max = 200_000  # levels in one message (Coinbase BTC-USD snapshot fits)

    def __init__(self, symbols, *, ws_url=None, rest_url=None, depth=0, levels_max=100_000,
                 paranoid=False):
        if not symbols:
            raise ValueError(f"{self.exchange}: no symbols")
        self.ws_url = (ws_url or self.ws_url_default).rstrip("/")
        self.rest_url = (rest_url or self.rest_url_default).rstrip("/")
        self.depth = depth
        self.books = {}
        self.syncs = {}
        self.by_native = {}
        for given in symbols:
            native = symbol_names.native(self.exchange, given)
            symbol = symbol_names.normalise(native)
            if symbol in self.books:
                raise ValueError(f"{self.exchange}: symbol {given!r} listed twice")
            self.books[symbol] = Book(f"{self.exchange}:{symbol}", levels_max=levels_max,
                                      depth_max=self.book_depth_max(), paranoid=paranoid)
            self.by_native[native] = symbol
            self.syncs[symbol] = SymbolSync(symbol, native, -1)
        self.publish_actions = {symbol: Publish(symbol) for symbol in self.books}
        self.conns = self.plan_connections()
        for conn in self.conns:
            for symbol in conn.symbols:
                self.syncs[symbol].conn_id = conn.conn_id
        self.limiter = SendLimiter(rate_per_s=self.send_rate_per_s, burst=self.send_burst,
                                   shared=self.send_limit_per_ip)
        self.now_ns = 0
        self.open_conns = set()
        self.last_recv_ns = {}
        self.last_send_ns = {}
        self.protocol_errors = 0
        self.reconnects = 0
        self.queue = []

    # ------------------------------------------------------------------ for subclasses

    def book_depth_max(self):
        """Truncation depth for the books (0: none). Depth-limited channels override."""
        return 0

    def plan_connections(self):
        """The symbols in order, `symbols_per_conn_max` per connection, all on `ws_url`.
        Exchanges that name the streams in the URL (Binance) override it."""
        symbols = list(self.books)
        return [
            ConnSpec(i, self.ws_url, tuple(symbols[start : start + self.symbols_per_conn_max]))
            for i, start in enumerate(range(0, len(symbols), self.symbols_per_conn_max))
        ]

    def ping_message(self):
        """The keepalive text sent to a quiet connection, None for none: `ping_text`, or one
        built per send where the exchange numbers its pings (Bybit, Kraken)."""
        return self.ping_text

    @abc.abstractmethod
    def subscribe_conn(self, conn_id):
        """Queue what a fresh connection must send (may be nothing: Binance URL streams)."""
        raise NotImplementedError

    @abc.abstractmethod
    def handle(self, conn_id, data, recv_ns):
        raise NotImplementedError

    @abc.abstractmethod
    def recover(self, sync):
        """Get a fresh snapshot for one book after a resync (resubscribe, or REST refetch)."""
        raise NotImplementedError

    def pump(self):
        """Called at the end of every input: release what waits on time (REST snapshots)."""

    # ---------------------------------------------------------------------- the inputs

    def connections(self):
        return list(self.conns)

    def on_open(self, conn_id, now_ns):
        self.now_ns = now_ns
        self.open_conns.add(conn_id)
        self.last_recv_ns[conn_id] = now_ns
        self.last_send_ns[conn_id] = now_ns
        self.limiter.reset(conn_id, now_ns)
        for sync in self.conn_syncs(conn_id):
            if sync.state is not State.DOWN:
                self.close_sync(sync)
            sync.on(Kind.OPEN)
        self.subscribe_conn(conn_id)
        self.flush_sends(conn_id)
        self.pump()
        return self.drain()

    def on_message(self, conn_id, data, recv_ns):
        if conn_id not in self.open_conns:
            raise FeedProtocolError(f"{self.exchange}: message on connection {conn_id} not open")
        self.now_ns = recv_ns
        self.last_recv_ns[conn_id] = recv_ns
        try:
            self.handle(conn_id, data, recv_ns)
        except FeedProtocolError:
            self.protocol_errors += 1
            raise
        except MESSAGE_ERRORS as exc:
            self.protocol_errors += 1
            raise FeedProtocolError(f"{self.exchange}: bad message: {exc!r}"[:300]) from exc
        except Exception:
            self.resync_conn(conn_id)
            raise
        finally:
            if self.limiter.queues.get(conn_id):  # flush_sends' own first test, without a call
                self.flush_sends(conn_id)
            self.pump()
        actions = self.queue  # drain(), inline: once per message
        self.queue = []
        return actions

    def on_snapshot(self, symbol, status, headers, body, recv_ns):
        raise FeedProtocolError(f"{self.exchange}: takes no REST snapshots")

    def on_catch_up(self, symbol, now_ns):
        raise FeedProtocolError(f"{self.exchange}: buffers no backlog")

    def on_close(self, conn_id, reason):
        self.open_conns.discard(conn_id)
        for sync in self.conn_syncs(conn_id):
            self.close_sync(sync)
        return self.drain()

    def on_tick(self, now_ns):
        self.now_ns = now_ns
        silent = set()
        for conn_id in sorted(self.open_conns):
            quiet_ns = now_ns - self.last_recv_ns[conn_id]
            if (self.silence_max_s and quiet_ns > self.silence_max_s * NS_PER_S
                    and self.conn_syncs(conn_id)):    # a connection of refused books only is quiet
                self.reconnects += 1
                self.queue.append(Reconnect(conn_id, f"silent for {quiet_ns // NS_PER_S} s"))
                silent.add(conn_id)
                continue
            idle_ns = now_ns - max(self.last_recv_ns[conn_id], self.last_send_ns[conn_id])
            if idle_ns > self.ping_idle_s * NS_PER_S:
                ping = self.ping_message()
                if ping is not None:
                    self.send(conn_id, ping)
        self.check_sync_deadlines(now_ns)
        for conn_id in sorted(self.open_conns - silent):
            self.flush_sends(conn_id)
        self.pump()
        return self.drain()

    def check_sync_deadlines(self, now_ns):
        """A book that stays unsynced for `sync_timeout_s` is asked for again (the safety net
        under every lost ack, refused request or snapshot that never came)."""
        for sync in self.syncs.values():
            if (sync.state is State.LIVE or sync.state is State.DOWN or sync.state is State.INVALID
                    or sync.conn_id not in self.open_conns):
                sync.waiting_since_ns = None
            elif sync.waiting_since_ns is None:
                sync.waiting_since_ns = now_ns
            elif now_ns - sync.waiting_since_ns > self.sync_timeout_s * NS_PER_S:
                sync.waiting_since_ns = now_ns
                self.resync(sync, "timeout")

    def drain(self):
        actions = self.queue
        self.queue = []
        return actions

    # ----------------------------------------------------------------------- helpers

    def conn_syncs(self, conn_id):
        """The books a connection carries, less those the exchange refused (never asked again)."""
        return [sync for sync in self.syncs.values()
                if sync.conn_id == conn_id and sync.state is not State.INVALID]

    def resync_conn(self, conn_id):
        """A bug (not bad input) interrupted a message: the book it was applied to may be
        half-updated and which one is not known here, so every book of the connection that is
        subscribed is resynced, and none of them is published from what the message queued
        (the queue holds only this message's actions). The driver counts, logs and goes on."""
        resynced = set()
        for sync in self.conn_syncs(conn_id):
            if sync.state is not State.DOWN:
                self.resync(sync, "bad_message")
                resynced.add(sync.symbol)
        self.queue = [action for action in self.queue
                      if type(action) is not Publish or action.symbol not in resynced]

    def resync_symbol(self, symbol):
        """A bug interrupted `on_snapshot` for `symbol`: the book is started afresh, and
        not published from what the snapshot queued (as `resync_conn` for a message)."""
        sync = self.syncs.get(symbol)
        if sync is not None and sync.state is not State.DOWN and sync.conn_id in self.open_conns:
            self.resync(sync, "bad_message")
            self.queue = [action for action in self.queue
                          if type(action) is not Publish or action.symbol != symbol]

    def abandon_conn(self, conn_id):
        """A bug interrupted `on_close`: whatever state its books were left in, the connection
        is gone; each book is emptied (stale if it was live) and `on_open` starts it afresh."""
        self.open_conns.discard(conn_id)
        for sync in self.conn_syncs(conn_id):
            if sync.state is State.LIVE:
                self.mark_stale(sync, "disconnect")
            self.books[sync.symbol].clear()
        self.queue = [action for action in self.queue if type(action) is not Publish]

    def sync_for_native(self, native):
        symbol = self.by_native.get(native)
        if symbol is None:
            raise FeedProtocolError(f"{self.exchange}: message for unsubscribed symbol {native!r}"[:200])
        return self.syncs[symbol]

    def close_sync(self, sync):
        if sync.state is State.LIVE:
            self.mark_stale(sync, "disconnect")
        sync.on(Kind.CLOSE)
        sync.buffer.clear()
        sync.buffer_bytes = 0
        sync.seq = None
        sync.bridged = False
        self.books[sync.symbol].clear()

    def send(self, conn_id, text):
        """Queue a text behind the rate limit. A full queue means resyncs outrun the limit:
        start the connection afresh instead (on_open resubscribes everything at once)."""
        try:
            self.limiter.push(conn_id, text)
        except OverflowError as exc:
            self.limiter.queues[conn_id].clear()
            self.reconnects += 1
            self.queue.append(Reconnect(conn_id, str(exc)))

    def flush_sends(self, conn_id):
        if conn_id not in self.open_conns or not self.limiter.queues.get(conn_id):
            return
        for text in self.limiter.ready(conn_id, self.now_ns):
            self.last_send_ns[conn_id] = self.now_ns
            self.queue.append(Send(conn_id, text))

    def loads(self, data):
        """Parse one JSON message; anything unparseable is a FeedProtocolError."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise FeedProtocolError(f"{self.exchange}: not JSON: {exc}"[:200]) from None

    def apply(self, sync, update, book=None):
        """Apply one update to a book (`book`: the caller has it already). A crossed result
        resyncs the book and returns False; an unreadable level resyncs it and raises
        FeedProtocolError."""
        if book is None:
            book = self.books[sync.symbol]
        if len(update.bids) + len(update.asks) > self.message_levels_max:
            raise FeedProtocolError(f"{book.name}: more than message_levels_max="
                                    f"{self.message_levels_max} levels in one message")
        try:
            book.apply(update)
        except BookCrossed:
            self.resync(sync, "crossed")
            return False
        except MESSAGE_ERRORS as exc:
            self.resync(sync, "bad_message")
            raise FeedProtocolError(f"{book.name}: bad level: {exc}"[:300]) from exc
        sync.stats.messages += 1
        return True

    def publish(self, sync):
        """Ask the driver to publish the book, only if it is synced (LIVE)."""
        if sync.state is State.LIVE:
            self.queue.append(self.publish_actions[sync.symbol])  # frozen: made once per book

    def mark_stale(self, sync, reason):
        setattr(sync.stats, STAT_BY_REASON[reason], getattr(sync.stats, STAT_BY_REASON[reason]) + 1)
        self.queue.append(Stale(sync.symbol, reason))

    def refuse(self, sync, reason):
        """The exchange refused the symbol (`reason`: its words). The book is published invalid
        once and left out of everything after: no resubscribe, no deadline, no reconnect."""
        if sync.state is State.INVALID:
            return
        sync.state = State.INVALID
        sync.waiting_since_ns = None
        sync.seq = None
        sync.buffer.clear()
        self.books[sync.symbol].clear()
        self.queue.append(Invalid(sync.symbol, str(reason)[:200]))

    def native_sync(self, native, conn_id):
        """The book of `native` carried by `conn_id`, or None (a refusal naming someone else)."""
        symbol = self.by_native.get(native)
        sync = self.syncs.get(symbol) if symbol is not None else None
        return sync if sync is not None and sync.conn_id == conn_id else None

    def resync(self, sync, reason):
        """The book cannot be trusted: count why, publish it stale, get a fresh snapshot."""
        if sync.state is State.INVALID:
            return                      # refused by the exchange: nothing to get again
        if sync.state is State.LIVE:
            self.mark_stale(sync, reason)
        else:
            stat = STAT_BY_REASON[reason]
            setattr(sync.stats, stat, getattr(sync.stats, stat) + 1)
        sync.stats.resyncs += 1
        sync.seq = None
        sync.bridged = False
        sync.buffer.clear()
        sync.buffer_bytes = 0
        self.books[sync.symbol].clear()
        self.recover(sync)
