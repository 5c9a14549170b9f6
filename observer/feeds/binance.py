"""Binance spot: diff depth stream + REST snapshot (PROTOCOLS.md section 1).

The book comes from two sources that race: the WebSocket diff stream (`U`..`u` per event) and
a REST snapshot (`lastUpdateId`). Per symbol:

1. On open (streams are in the URL, so nothing is sent) the book waits for a snapshot; every
   event is buffered (at most `buffer_events_max`, else the buffer restarts: overflow).
2. The snapshot is requested through the SnapshotScheduler (staggered, Retry-After honoured).
3. A snapshot older than the first buffered event (`lastUpdateId + 1 < U`) is fetched again.
4. Buffered events with `u <= lastUpdateId` are dropped; the rest are applied by the live rule.
5. Live rule: `u <= book.update_id` is stale (dropped, counted); `U > book.update_id + 1` is a
   gap: the book goes stale and is fetched again while the WebSocket stays open and the event
   starts the new buffer. Otherwise the levels are applied and `update_id := u`.

USD-M futures (binance_futures.py) differ only in the bridging and chain rules, which is why
they are the two methods `accepts_first` and `continues`.

Limits honoured: no message is sent on the connection (5 msgs/s inbound), at most
`symbols_per_conn_max` streams per connection, REST snapshots at most `snapshot_limit` levels
and spaced by the scheduler. Binance pings below the WebSocket layer, which net answers, so the
adapter has no silence deadline of its own.
"""

from orjson import JSONDecodeError, loads

from observer.book import ASK, BID, BookCrossed, BookUpdate
from observer.book import book as book_module
from observer.feeds.actions import ConnSpec, FeedProtocolError, FetchSnapshot, Reconnect
from observer.feeds.base import MESSAGE_ERRORS, Adapter
from observer.feeds.scheduler import SnapshotScheduler
from observer.feeds.sync import TRANSITIONS, Kind, State

try:  # the hot path's scanner (observer/feeds/_binance_c.c); `handle`'s orjson path is its reference
    from observer.feeds._binance_c import scan_diff
except ImportError:  # built without a C compiler: every message takes the parsed path
    scan_diff = None

NS_PER_MS = 1_000_000
SCAN_LEVELS_MAX = 5000  # a diff that may hold more levels takes the parsed path (and its limits)

# A delta leaves a live book live: on_depth skips the table lookup for that one pair.
assert TRANSITIONS[(State.LIVE, Kind.DELTA)] is State.LIVE


class BinanceAdapter(Adapter):
    exchange = "binance"
    ws_url_default = "wss://stream.binance.com:9443"
    rest_url_default = "https://api.binance.com"
    depth_path = "/api/v3/depth"
    symbols_per_conn_max = 200
    silence_max_s = 0
    buffer_events_max = 2000

    weight_per_minute = 6000  # REQUEST_WEIGHT per IP; a 1000-level snapshot costs 50

    def __init__(self, symbols, *, snapshot_limit=1000, stream_suffix="@depth@100ms",
                 snapshot_interval_s=1.0, **options):
        self.snapshot_limit = snapshot_limit
        self.stream_suffix = stream_suffix
        super().__init__(symbols, **options)
        # At most one snapshot a second (half the spot budget at limit 1000), and a pause once
        # 80 % of the minute's weight is used, whoever used it.
        self.scheduler = SnapshotScheduler(
            interval_s=snapshot_interval_s, weight_header="x-mbx-used-weight-1m",
            weight_soft_max=int(self.weight_per_minute * 0.8))
        # The scanned hot path (`on_scanned_depth`) holds spot's rules: a subclass that
        # changes them (futures' `pu` chain) parses every message.
        cls = type(self)
        spot_rules = all(getattr(cls, name) is getattr(BinanceAdapter, name)
                         for name in ("handle", "on_depth", "apply_event", "continues"))
        self.scan = scan_diff if spot_rules and book_module.COMPILED else None

    # ------------------------------------------------------------------ subclass hooks

    def plan_connections(self):
        symbols = list(self.books)
        conns = []
        for start in range(0, len(symbols), self.symbols_per_conn_max):
            chunk = tuple(symbols[start : start + self.symbols_per_conn_max])
            streams = "/".join(self.syncs[s].native.lower() + self.stream_suffix for s in chunk)
            conns.append(ConnSpec(len(conns), f"{self.ws_url}/stream?streams={streams}", chunk))
        return conns

    def subscribe_conn(self, conn_id):
        for sync in self.conn_syncs(conn_id):
            sync.on(Kind.ACK)  # the URL subscribed it
            self.scheduler.request(sync.symbol)

    def recover(self, sync):
        sync.on(Kind.REFETCH)
        self.scheduler.request(sync.symbol)

    def pump(self):
        if not self.scheduler.queue:
            return
        for symbol in self.scheduler.due(self.now_ns):
            native = self.syncs[symbol].native
            url = f"{self.rest_url}{self.depth_path}?symbol={native}&limit={self.snapshot_limit}"
            self.queue.append(FetchSnapshot(symbol, url))

    def close_sync(self, sync):
        self.scheduler.cancel(sync.symbol)
        super().close_sync(sync)

    # ------------------------------------------------------------------------ messages

    def handle(self, conn_id, data, recv_ns):
        scan = self.scan
        if scan is not None:
            fields = scan(data, SCAN_LEVELS_MAX)
            if fields is not None and self.on_scanned_depth(conn_id, data, fields):
                return
        try:
            msg = loads(data)  # self.loads, without its frame: once per message
        except JSONDecodeError as exc:
            raise FeedProtocolError(f"binance: not JSON: {exc}"[:200]) from None
        if not isinstance(msg, dict):
            raise FeedProtocolError("binance: message is not an object")
        payload = msg["data"] if "stream" in msg else msg
        if not isinstance(payload, dict):
            raise FeedProtocolError("binance: payload is not an object")
        kind = payload.get("e")
        if kind == "depthUpdate":
            self.on_depth(conn_id, payload)
        elif kind == "serverShutdown":
            self.reconnects += 1
            self.queue.append(Reconnect(conn_id, "serverShutdown"))
        elif "id" in msg and "result" in msg:
            return  # reply to a control request
        else:
            raise FeedProtocolError(f"binance: unexpected message kind {kind!r}"[:200])

    def on_depth(self, conn_id, event):
        sync = self.sync_for_native(event["s"])
        check_event(event)
        if sync.conn_id != conn_id:
            raise FeedProtocolError(f"binance: {sync.symbol} arrived on connection {conn_id}")
        if sync.state is State.LIVE:  # (LIVE, DELTA) -> LIVE: the hot path, no transition
            self.apply_event(sync, event)
            self.publish(sync)
            return
        sync.on(Kind.DELTA)
        if sync.state is State.AWAITING_SNAPSHOT:
            self.buffer(sync, event)

    def on_scanned_depth(self, conn_id, data, fields):
        """The hot path: the next diff of a live, bridged book, its levels read from the bytes
        (`scan_diff` found them). It does what on_depth + apply_event do in that case; any
        other case returns False having done nothing, and `handle` parses the message.

        Discussion: parsing a diff into a dict of lists of strings (orjson) and reading them
        back was the largest cost left per message; this path makes no object per level.
        tests/feeds/test_binance_scan.py feeds recorded and random streams, and broken
        messages, to this path and to the parsed one and compares books, actions and errors.
        """
        native, exch_ms, first_id, last_id, b0, b1, a0, a1 = fields
        symbol = self.by_native.get(native)
        if symbol is None:
            return False
        sync = self.syncs[symbol]
        book = self.books[symbol]
        if (sync.state is not State.LIVE or not sync.bridged or sync.conn_id != conn_id
                or not first_id <= book.update_id + 1 <= last_id):  # spot's `continues`
            return False
        try:
            if not book.apply_text_diff(data, b0, b1, a0, a1, last_id, exch_ms * NS_PER_MS):
                return False  # a level that is not plain: untouched, the parsed path decides
        except BookCrossed:  # as Adapter.apply
            self.resync(sync, "crossed")
            return True
        sync.stats.updates += 1
        if sync.vouched is not None and self.too_thin(book, sync.vouched):
            self.resync(sync, "thin")
        if sync.state is State.LIVE:  # self.publish(sync), without its frame
            self.queue.append(self.publish_actions[symbol])
        return True

    def buffer(self, sync, event):
        if len(sync.buffer) >= self.buffer_events_max:
            self.resync(sync, "overflow")
        sync.buffer.append(event)

    def apply_event(self, sync, event):
        """The live rule (step 5). On a gap the event starts the new buffer."""
        book = self.books[sync.symbol]
        if not sync.bridged:
            if event["u"] < self.first_u_min(book):
                sync.stats.stale_dropped += 1
                return
            if not self.accepts_first(book.update_id, event):
                self.resync(sync, "gap")
                sync.buffer.append(event)
                return
        elif not self.continues(book.update_id, event):
            if event["u"] <= book.update_id:
                sync.stats.stale_dropped += 1
                return
            self.resync(sync, "gap")
            sync.buffer.append(event)
            return
        update = BookUpdate(False, event["b"], event["a"], event["u"], event["E"] * NS_PER_MS)
        if self.apply(sync, update, book):
            sync.bridged = True
            if sync.vouched is not None and self.too_thin(book, sync.vouched):
                self.resync(sync, "thin")

    def too_thin(self, book, vouched):
        """Fewer than `depth` levels left inside the range the snapshot covered.

        Discussion: a REST snapshot holds at most `snapshot_limit` levels per side; a level
        beyond it that never changes is never sent, so once the price walks far enough the
        book's published depth would include levels nobody vouched for (cryptofeed #604).
        Levels that changed since are known, so counting only the covered range is safe.
        """
        worst_bid, worst_ask = vouched
        return ((worst_bid and book.count_at_least(BID, worst_bid) < self.depth)
                or (worst_ask and book.count_at_least(ASK, worst_ask) < self.depth))

    def vouched_range(self, book, n_bids, n_asks):
        if not self.depth:
            return None
        vouched = vouched_range_of(book, n_bids, n_asks, self.snapshot_limit)
        return vouched if any(vouched) else None

    # Spot rules; futures override these four.
    def first_u_min(self, book):
        return book.update_id + 1  # drop u <= lastUpdateId

    def accepts_first(self, update_id, event):
        return event["U"] <= update_id + 1 <= event["u"]

    def continues(self, update_id, event):
        return event["U"] <= update_id + 1 < event["u"] + 1

    def snapshot_too_old(self, last_update_id, first_event):
        return last_update_id + 1 < first_event["U"]

    # ----------------------------------------------------------------------- snapshots

    def on_snapshot(self, symbol, status, headers, body, recv_ns):
        self.now_ns = recv_ns
        sync = self.syncs.get(symbol)
        if sync is None:
            raise FeedProtocolError(f"binance: snapshot for unknown symbol {symbol!r}"[:200])
        try:
            if self.scheduler.on_reply(symbol, status, headers, recv_ns):
                self.take_snapshot(sync, body)
        finally:
            self.pump()
        return self.drain()

    def take_snapshot(self, sync, body):
        if sync.state is not State.AWAITING_SNAPSHOT:
            return  # the connection closed or the book resynced meanwhile
        try:
            snap = self.loads(body)
            last_update_id = snap["lastUpdateId"]
            bids = snap["bids"]
            asks = snap["asks"]
            if type(last_update_id) is not int or not isinstance(bids, list) or not isinstance(asks, list):
                raise FeedProtocolError("binance: snapshot fields of the wrong type")
        except (FeedProtocolError, *MESSAGE_ERRORS) as exc:
            sync.stats.bad_messages += 1
            self.scheduler.on_reply(sync.symbol, 0, None, self.now_ns)  # retry after a pause
            raise FeedProtocolError(f"binance: bad snapshot for {sync.symbol}: {exc}"[:300]) from None
        if sync.buffer and self.snapshot_too_old(last_update_id, sync.buffer[0]):
            sync.stats.snapshots_old += 1
            self.scheduler.request(sync.symbol)
            return
        exch_ts_ns = snap.get("E", 0) * NS_PER_MS if type(snap.get("E", 0)) is int else 0
        if not self.apply(sync, BookUpdate(True, bids, asks, last_update_id, exch_ts_ns)):
            return
        sync.on(Kind.SNAPSHOT)
        sync.stats.snapshots += 1
        sync.bridged = False
        sync.vouched = self.vouched_range(self.books[sync.symbol], len(bids), len(asks))
        pending = sync.buffer
        sync.buffer = []
        for event in pending:
            if sync.state is State.LIVE:
                self.apply_event(sync, event)
            else:
                sync.buffer.append(event)
        self.publish(sync)


def vouched_range_of(book, n_bids, n_asks, limit):
    """(worst bid, worst ask) of a snapshot that may have been cut at `limit` levels; 0 for
    a side the snapshot returned whole (fewer levels than asked for)."""
    worst_bid = book.levels(BID)[-1][0] if n_bids >= limit and book.depth(BID) else 0
    worst_ask = book.levels(ASK)[-1][0] if n_asks >= limit and book.depth(ASK) else 0
    return worst_bid, worst_ask


def check_event(event):
    """Types of the fields the sync rule reads; anything else is malformed."""
    if type(event["U"]) is not int or type(event["u"]) is not int or type(event["E"]) is not int:
        key = next(k for k in ("U", "u", "E") if type(event[k]) is not int)
        raise FeedProtocolError(f"binance: field {key} is not an integer")
    if event["U"] > event["u"]:
        raise FeedProtocolError("binance: U > u")
    if not isinstance(event["b"], list) or not isinstance(event["a"], list):
        raise FeedProtocolError("binance: b/a are not lists")
