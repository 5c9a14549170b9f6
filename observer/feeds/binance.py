"""Binance spot: diff depth stream + REST snapshot (docs/EXCHANGES.md section 1).

The book comes from two sources that race: the WebSocket diff stream (`U`..`u` per event) and
a REST snapshot (`lastUpdateId`). Per symbol:

1. On open (streams are in the URL, so nothing is sent) the book waits for a snapshot; its
   frames are buffered as bytes: the last `buffer_queued_max` while its request waits for
   budget, then all of them up to `buffer_bytes_max` (else the buffer restarts: overflow).
2. The snapshot is requested through the SnapshotScheduler (the REST weight budget spent as it
   allows, the limit chosen from the published depth: `choose_limits`; Retry-After honoured).
3. A snapshot older than the first buffered event (`lastUpdateId + 1 < U`) is fetched again.
4. Buffered events with `u <= lastUpdateId` are dropped; the rest are applied by the live rule,
   `catch_up_bytes` of frames per loop turn plus what arrived since the last (`CatchUp`), and
   the book goes live once none is left.
5. Live rule: `u <= book.update_id` is stale (dropped, counted); `U > book.update_id + 1` is a
   gap: the book goes stale and is fetched again while the WebSocket stays open and the event
   starts the new buffer. Otherwise the levels are applied and `update_id := u`.

USD-M futures (binance_futures.py) differ only in the bridging and chain rules, which is why
they are the two methods `accepts_first` and `continues`.

Limits honoured: no message is sent on the connection (5 msgs/s inbound), at most
`symbols_per_conn_max` streams per connection, REST snapshot weight within the budget. Binance pings below the WebSocket layer, which net answers, so the
adapter has no silence deadline of its own.
"""

from collections import deque

from orjson import JSONDecodeError, loads

from observer.book import ASK, BID, BookCrossed, BookUpdate
from observer.book import book as book_module
from observer.feeds.actions import CatchUp, ConnSpec, FeedProtocolError, FetchSnapshot, Reconnect
from observer.feeds.base import MESSAGE_ERRORS, Adapter
from observer.feeds.clock import NS_PER_MS
from observer.feeds.scheduler import SnapshotScheduler, WeightBudget
from observer.feeds.sync import TRANSITIONS, Kind, State

try:  # the hot path's scanner (observer/feeds/_binance_c.c); `handle`'s orjson path is its reference
    from observer.feeds._binance_c import scan_diff
except ImportError:  # built without a C compiler: every message takes the parsed path
    scan_diff = None

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

    # REST budget per IP (docs/EXCHANGES.md): weight a minute, and what a depth snapshot costs by
    # its limit, as (largest limit, weight) per step: any limit up to 100 costs 5, and so on.
    weight_per_minute = 6000
    depth_tiers = ((100, 5), (500, 25), (1000, 50), (5000, 250))
    # Levels a snapshot should hold per published level: at least 2 (the small limit, under
    # budget pressure), 10 when the budget allows (the preferred one), never past 1000 unless
    # the depth needs it. binance.py's essay on `choose_limits` says what this trades.
    limit_margin_min = 2
    limit_margin_pref = 10
    limit_pref_cap = 1000
    # Frames kept for a book still waiting for its snapshot to be requested: only the last
    # ones can matter (the snapshot will be newer), a few seconds' worth cover a REST reply
    # that lags the stream. Once requested, every frame is kept, up to buffer_bytes_max.
    buffer_queued_max = 64
    buffer_bytes_max = 4 << 20
    catch_up_bytes = 16 << 10  # buffered frames applied per loop turn after a snapshot
    # Snapshots in flight at once: 4 keep the loop busy (a 500-level snapshot is ~2.5 ms of
    # parsing and applying); with 8, one loop pass of their turns kept the others ~20 ms.

    def __init__(self, symbols, *, snapshot_limit=None, stream_suffix="@depth@100ms",
                 rest_weight_max=None, rest_window_s=60.0, rest_weight_share=1.0,
                 rest_reserve=0.1, snapshot_inflight_max=4, **options):
        self.stream_suffix = stream_suffix
        super().__init__(symbols, **options)
        if snapshot_limit is None:
            limit_min, limit_pref = choose_limits(self.depth_tiers, self.depth, self.limit_margin_min,
                                                  self.limit_margin_pref, self.limit_pref_cap)
        else:
            limit_min = limit_pref = snapshot_limit
        tiers = dict(self.depth_tiers)
        tiers.setdefault(limit_pref, weight_of(self.depth_tiers, limit_pref))
        tiers.setdefault(limit_min, weight_of(self.depth_tiers, limit_min))
        budget = WeightBudget(weight_max=rest_weight_max or self.weight_per_minute,
                              window_s=rest_window_s, share=rest_weight_share, reserve=rest_reserve)
        self.scheduler = SnapshotScheduler(
            budget, tiers=tuple(tiers.items()), limit_pref=limit_pref, limit_min=limit_min,
            inflight_max=snapshot_inflight_max, weight_header="x-mbx-used-weight-1m",
            books_kept=len(self.books) if limit_min < limit_pref else 0)
        self.limit_of = {}  # symbol -> the limit its snapshot in flight was asked with
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
        sync.catching_up = False
        sync.on(Kind.REFETCH)
        self.scheduler.request(sync.symbol)

    def pump(self):
        if not self.scheduler.queue:
            return
        for symbol, limit in self.scheduler.due(self.now_ns):
            native = self.syncs[symbol].native
            self.limit_of[symbol] = limit
            url = f"{self.rest_url}{self.depth_path}?symbol={native}&limit={limit}"
            self.queue.append(FetchSnapshot(symbol, url))

    def close_sync(self, sync):
        self.scheduler.cancel(sync.symbol)
        sync.catching_up = False
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
            self.on_depth(conn_id, payload, data)
        elif kind == "serverShutdown":
            self.reconnects += 1
            self.queue.append(Reconnect(conn_id, "serverShutdown"))
        elif "id" in msg and "result" in msg:
            return  # reply to a control request
        else:
            raise FeedProtocolError(f"binance: unexpected message kind {kind!r}"[:200])

    def on_depth(self, conn_id, event, data):
        sync = self.sync_for_native(event["s"])
        check_event(event)
        if sync.conn_id != conn_id:
            raise FeedProtocolError(f"binance: {sync.symbol} arrived on connection {conn_id}")
        if sync.state is State.LIVE:  # (LIVE, DELTA) -> LIVE: the hot path, no transition
            self.apply_event(sync, event, data)
            self.publish(sync)
            return
        sync.on(Kind.DELTA)
        if sync.state is State.AWAITING_SNAPSHOT:
            self.buffer(sync, data)

    def buffer(self, sync, data):
        """Keep the frame's bytes (not the parsed event: a fifth of the memory) until the
        snapshot. A copy: `data` may be the connection's reused receive buffer."""
        frame = bytes(data)
        buffer = sync.buffer
        if sync.catching_up or sync.symbol in self.scheduler.inflight:
            if sync.buffer_bytes + len(frame) > self.buffer_bytes_max:
                self.resync(sync, "overflow")
        elif len(buffer) >= self.buffer_queued_max:
            sync.buffer_bytes -= len(buffer.popleft())  # still queued: only the last ones matter
        buffer.append(frame)
        sync.buffer_bytes += len(frame)

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
        sync.stats.messages += 1
        if sync.vouched is not None and self.too_thin(book, sync.vouched):
            self.resync(sync, "thin")
        if sync.state is State.LIVE:  # self.publish(sync), without its frame
            self.queue.append(self.publish_actions[symbol])
        return True


    def restart_buffer(self, sync, data):
        """A gap: resync, and the frame starts the new buffer, followed by the frames still
        waiting behind it (while catching up), so the buffer stays one unbroken run."""
        rest, rest_bytes = sync.buffer, sync.buffer_bytes
        sync.buffer = deque()
        self.resync(sync, "gap")
        rest.appendleft(bytes(data))
        sync.buffer, sync.buffer_bytes = rest, rest_bytes + len(data)

    def apply_event(self, sync, event, data):
        """The live rule (step 5). On a gap the event starts the new buffer."""
        book = self.books[sync.symbol]
        if not sync.bridged:
            if event["u"] < self.first_u_min(book):
                sync.stats.stale_dropped += 1
                return
            if not self.accepts_first(book.update_id, event):
                self.restart_buffer(sync, data)
                return
        elif not self.continues(book.update_id, event):
            if event["u"] <= book.update_id:
                sync.stats.stale_dropped += 1
                return
            self.restart_buffer(sync, data)
            return
        update = BookUpdate(False, event["b"], event["a"], event["u"], event["E"] * NS_PER_MS)
        if self.apply(sync, update, book):
            sync.bridged = True
            if sync.vouched is not None and self.too_thin(book, sync.vouched):
                self.resync(sync, "thin")

    def too_thin(self, book, vouched):
        """Fewer than `depth` levels left inside the range the snapshot covered.

        Discussion: a REST snapshot holds at most `limit` levels per side; a level
        beyond it that never changes is never sent, so once the price walks far enough the
        book's published depth would include levels nobody vouched for (cryptofeed #604).
        Levels that changed since are known, so counting only the covered range is safe.
        """
        worst_bid, worst_ask = vouched
        return ((worst_bid and book.count_at_least(BID, worst_bid) < self.depth)
                or (worst_ask and book.count_at_least(ASK, worst_ask) < self.depth))

    def vouched_range(self, book, n_bids, n_asks, limit):
        if not self.depth:
            return None
        vouched = vouched_range_of(book, n_bids, n_asks, limit)
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
            reason = refusal(status, body)
            if reason is not None:
                self.scheduler.on_refused(symbol, headers, recv_ns)   # never asked again
                self.refuse(sync, reason)
            elif self.scheduler.on_reply(symbol, status, headers, recv_ns):
                self.take_snapshot(sync, body)
        finally:
            self.pump()
        return self.drain()

    def take_snapshot(self, sync, body):
        if sync.state is not State.AWAITING_SNAPSHOT or sync.catching_up:
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
        if sync.buffer and self.snapshot_too_old(last_update_id, payload_of(sync.buffer[0])):
            sync.stats.snapshots_old += 1
            self.scheduler.request(sync.symbol)
            return
        exch_ts_ns = snap.get("E", 0) * NS_PER_MS if type(snap.get("E", 0)) is int else 0
        if not self.apply(sync, BookUpdate(True, bids, asks, last_update_id, exch_ts_ns)):
            return
        sync.bridged = False
        limit = self.limit_of.pop(sync.symbol, self.scheduler.limit_pref)
        sync.vouched = self.vouched_range(self.books[sync.symbol], len(bids), len(asks), limit)
        del snap, bids, asks  # the parsed body is the largest thing alive here: let it go
        sync.catching_up = True
        sync.caught_up_to_bytes = sync.buffer_bytes
        if sync.buffer:
            self.queue.append(CatchUp(sync.symbol))  # its own turn: a snapshot's is enough
        else:
            self.catch_up(sync)

    def on_catch_up(self, symbol, now_ns):
        self.now_ns = now_ns
        sync = self.syncs[symbol]
        if sync.catching_up:
            self.catch_up(sync)
        self.pump()
        return self.drain()

    def catch_up(self, sync):
        """Apply up to `catch_up_bytes` of the frames buffered while the snapshot was fetched
        (and those arriving meanwhile, appended behind them), then let the loop run: a
        backlog of hundreds of frames applied at once stalled every other book for 60-180 ms.
        The book goes live when the buffer is empty; until then it is not published.

        A chunk also takes what arrived since the last one, so the backlog shrinks by
        `catch_up_bytes` a turn however fast the stream is: a fixed chunk fell behind a stream
        bringing more than that a turn (at 108k msg/s the books never went live)."""
        buffer = sync.buffer
        budget = self.catch_up_bytes + max(0, sync.buffer_bytes - sync.caught_up_to_bytes)
        while buffer and budget > 0 and sync.catching_up:
            frame = buffer.popleft()
            sync.buffer_bytes -= len(frame)
            budget -= len(frame)
            self.apply_event(sync, payload_of(frame), frame)
            buffer = sync.buffer  # a gap may have started a new one
        if not sync.catching_up:
            return  # resynced on the way: it waits for a snapshot again
        if buffer:
            sync.caught_up_to_bytes = sync.buffer_bytes
            self.queue.append(CatchUp(sync.symbol))
            return
        sync.catching_up = False
        sync.buffer = deque()  # a fresh one: the old may have grown a large block
        sync.on(Kind.SNAPSHOT)
        sync.stats.snapshots += 1
        self.publish(sync)


def vouched_range_of(book, n_bids, n_asks, limit):
    """(worst bid, worst ask) of a snapshot that may have been cut at `limit` levels; 0 for
    a side the snapshot returned whole (fewer levels than asked for)."""
    worst_bid = book.worst(BID) if n_bids >= limit else 0  # O(1): no list of every level
    worst_ask = book.worst(ASK) if n_asks >= limit else 0
    return worst_bid, worst_ask


def payload_of(frame):
    """The event in a buffered frame (checked when it arrived)."""
    msg = loads(frame)
    return msg["data"] if "stream" in msg else msg


def check_event(event):
    """Types of the fields the sync rule reads; anything else is malformed."""
    if type(event["U"]) is not int or type(event["u"]) is not int or type(event["E"]) is not int:
        key = next(k for k in ("U", "u", "E") if type(event[k]) is not int)
        raise FeedProtocolError(f"binance: field {key} is not an integer")
    if event["U"] > event["u"]:
        raise FeedProtocolError("binance: U > u")
    if not isinstance(event["b"], list) or not isinstance(event["a"], list):
        raise FeedProtocolError("binance: b/a are not lists")


# Binance's answer to a depth request for a symbol it does not list (spot and USD-M futures):
# HTTP 400 {"code":-1121,"msg":"Invalid symbol."}. Any other 4xx is retried as before.
INVALID_SYMBOL_CODE = -1121


def refusal(status, body):
    """The exchange's reason when a snapshot reply refuses the symbol itself, else None."""
    if status != 400:
        return None
    try:
        error = loads(body)
    except JSONDecodeError:
        return None
    if isinstance(error, dict) and error.get("code") == INVALID_SYMBOL_CODE:
        return str(error.get("msg") or "Invalid symbol.")
    return None


def choose_limits(tiers, depth, margin_min, margin_pref, pref_cap):
    """(small, preferred) snapshot limits for a published depth, among the exchange's tiers
    (the largest limit of each weight step: a smaller one costs the same and vouches less).

    Discussion: a snapshot of `limit` levels vouches for the book down to its last level; past
    that, levels that never changed are unknown. Once the price walks far enough that fewer
    than `depth` levels remain inside that range the book is refetched and stale meanwhile
    (`too_thin`, cryptofeed #604). So the limit trades weight (start-up time, budget left for
    reconnects) against how often a walking book is refetched. The preferred limit keeps ten
    levels per published one (depth 50: 500 levels, weight 25; 1000 at weight 50 buys only
    twice the walk for twice the weight); the small one, used when the budget could not
    otherwise serve every waiting book now, keeps two (depth 50: 100, weight 5). depth 0 (a
    full book): 1000 both, as before.
    """
    limits = [limit for limit, _ in tiers]
    if not depth:
        chosen = min(pref_cap, limits[-1])
        return chosen, chosen

    def covering(levels):
        return next((limit for limit in limits if limit >= levels), limits[-1])

    limit_min = covering(margin_min * depth)
    limit_pref = max(limit_min, min(covering(margin_pref * depth), max(pref_cap, limit_min)))
    return limit_min, limit_pref


def weight_of(tiers, limit):
    """The weight of a snapshot of `limit` levels (an explicit limit outside the steps)."""
    return next((weight for top, weight in tiers if limit <= top), tiers[-1][1])
