"""OKX v5 public `books` channel (docs/EXCHANGES.md section 4).

Continuity is a chain, not a counter: every update names the previous message's `seqId` in its
`prevSeqId`, and ids jump (7-93 apart). So the rule is `prevSeqId == last seqId`, and two cases
that look like gaps are not:
- the keepalive after ~60 s without changes: empty asks/bids with `seqId == prevSeqId`;
- the reset after maintenance: `seqId < prevSeqId` while `prevSeqId` still equals the last id
  (counted in `resets`, not a gap).
Anything else resubscribes (unsubscribe + subscribe gives a fresh snapshot).

The checksum (top 25 levels, bid:ask interleaved, the original strings, signed CRC32) is always
0 since 2026-06-23; a 0 means "absent", any other value is verified from the STORED book: the
strings are re-rendered from the integers in the shortest form, which is how OKX writes them
("30316", "5.16"). The 2022 recording (with real checksums and no seqId) passes through the same
code, so a chain is only checked when the exchange sends one.

Keepalive: OKX closes a connection quiet for 30 s; the adapter sends the text `ping` after
`ping_idle_s` of quiet, and asks for a reconnect after `silence_max_s` with nothing received.
Fewer than 30 channels per connection, as OKX advises, and at most OPS_PER_CONN_MAX subscribe
requests on one connection (OKX: 480 an hour): past it a resync reconnects instead.
"""

import zlib

import orjson

from observer.book import ASK, BID, BookUpdate
from observer.book.fixed import render_minimal
from observer.feeds.actions import FeedProtocolError, Reconnect
from observer.feeds.base import Adapter
from observer.feeds.clock import NS_PER_MS
from observer.feeds.sync import Kind, State

CHECKSUM_LEVELS = 25
# OKX allows 480 subscribe/unsubscribe/login requests per hour per connection; counting from
# the connection's start (not per hour) is stricter and needs no clock.
OPS_PER_CONN_MAX = 470
BOOKS_DEPTH = 400


# Rendered texts of recent (mantissa, exp) pairs: the top 25 levels barely change between
# messages, so most of the 100 renders per checksum are lookups. Bounded, emptied when full.
RENDER_CACHE_MAX = 16384
_rendered = {}


def render(mantissa, exp):
    key = (mantissa, exp)
    text = _rendered.get(key)
    if text is None:
        if len(_rendered) >= RENDER_CACHE_MAX:
            _rendered.clear()
        text = _rendered[key] = render_minimal(mantissa, exp)
    return text


def checksum(book):
    """OKX's legacy checksum of the stored book: signed CRC32 of bid:ask interleaved text."""
    bid_px, bid_sz = book.top(BID, CHECKSUM_LEVELS)
    ask_px, ask_sz = book.top(ASK, CHECKSUM_LEVELS)
    price_exp = book.price_exp
    size_exp = book.size_exp
    parts = []
    for rank in range(max(len(bid_px), len(ask_px))):
        if rank < len(bid_px):
            parts.append(render(bid_px[rank], price_exp))
            parts.append(render(bid_sz[rank], size_exp))
        if rank < len(ask_px):
            parts.append(render(ask_px[rank], price_exp))
            parts.append(render(ask_sz[rank], size_exp))
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


class OkxAdapter(Adapter):
    exchange = "okx"
    ws_url_default = "wss://ws.okx.com:8443/ws/v5/public"
    symbols_per_conn_max = 25
    send_rate_per_s = 5.0
    send_burst = 5
    connects_per_s = 1.5  # OKX: 3 connection attempts per second per IP
    ping_text = "ping"
    ping_idle_s = 20.0
    silence_max_s = 40.0

    def __init__(self, symbols, *, channel="books", **options):
        if channel != "books":
            raise ValueError(f"okx: only the 'books' channel keeps an L2 book, got {channel!r}")
        self.channel = channel
        super().__init__(symbols, **options)
        self.ops_on_conn = {}  # conn_id -> subscribe/unsubscribe requests sent on it
        self.reconnect_asked = set()

    def book_depth_max(self):
        return BOOKS_DEPTH

    def request_text(self, op, natives):
        args = [{"channel": self.channel, "instId": native} for native in natives]
        return orjson.dumps({"op": op, "args": args}).decode()

    def subscribe_conn(self, conn_id):
        self.ops_on_conn[conn_id] = 1
        self.send(conn_id, self.request_text("subscribe", [s.native for s in self.conn_syncs(conn_id)]))

    def recover(self, sync):
        """Unsubscribe + subscribe; past the connection's hourly op budget, a new connection
        (which starts a new budget and resubscribes everything in one request)."""
        sync.on(Kind.RESUBSCRIBE)
        conn_id = sync.conn_id
        if self.ops_on_conn.get(conn_id, 0) + 2 > OPS_PER_CONN_MAX:
            if conn_id not in self.reconnect_asked:
                self.reconnect_asked.add(conn_id)
                self.reconnects += 1
                self.queue.append(Reconnect(conn_id, f"{OPS_PER_CONN_MAX} subscribe ops on this connection"))
            return
        self.ops_on_conn[conn_id] = self.ops_on_conn.get(conn_id, 0) + 2
        self.send(conn_id, self.request_text("unsubscribe", [sync.native]))
        self.send(conn_id, self.request_text("subscribe", [sync.native]))

    def on_open(self, conn_id, now_ns):
        self.reconnect_asked.discard(conn_id)
        return super().on_open(conn_id, now_ns)

    # ------------------------------------------------------------------------ messages

    def handle(self, conn_id, data, recv_ns):
        if data == b"pong" or data == "pong":
            return
        msg = self.loads(data)
        if not isinstance(msg, dict):
            raise FeedProtocolError("okx: message is not an object")
        if "event" in msg:
            self.on_event(msg)
        elif msg["arg"]["channel"] == self.channel:
            self.on_books(conn_id, msg)
        else:
            raise FeedProtocolError(f"okx: unexpected channel {msg['arg']['channel']!r}"[:200])

    def on_event(self, msg):
        event = msg["event"]
        if event == "subscribe":
            self.sync_for_native(msg["arg"]["instId"]).on(Kind.ACK)
        elif event in ("unsubscribe", "notice", "channel-conn-count"):
            return  # notice: maintenance ahead (the reset it brings is handled); conn-count: info
        elif event == "error":
            raise FeedProtocolError(f"okx: error {msg.get('code')}: {msg.get('msg')}"[:300])
        else:
            raise FeedProtocolError(f"okx: unexpected event {event!r}"[:200])

    def on_books(self, conn_id, msg):
        sync = self.sync_for_native(msg["arg"]["instId"])
        if sync.conn_id != conn_id:
            raise FeedProtocolError(f"okx: {sync.symbol} arrived on connection {conn_id}")
        action = msg["action"]
        (data,) = msg["data"]
        bids = data["bids"]
        asks = data["asks"]
        if not isinstance(bids, list) or not isinstance(asks, list):
            raise FeedProtocolError("okx: bids/asks are not lists")
        seq_id = data.get("seqId")
        prev_seq_id = data.get("prevSeqId")
        if seq_id is not None and (type(seq_id) is not int or type(prev_seq_id) is not int):
            raise FeedProtocolError("okx: seqId/prevSeqId are not integers")
        exch_ts_ns = int(data["ts"]) * NS_PER_MS
        if action == "snapshot":
            sync.on(Kind.SNAPSHOT)
            sync.stats.snapshots += 1
            update = BookUpdate(True, bids, asks, seq_id or 0, exch_ts_ns)
        elif action == "update":
            sync.on(Kind.DELTA)
            if sync.state is not State.LIVE:
                sync.stats.stale_dropped += 1
                return
            if seq_id is not None and not self.chain_holds(sync, seq_id, prev_seq_id):
                return
            if not bids and not asks:
                sync.seq = seq_id
                sync.stats.keepalives += 1  # nothing changed: nothing to publish
                return
            update = BookUpdate(False, bids, asks, seq_id or 0, exch_ts_ns)
        else:
            raise FeedProtocolError(f"okx: unexpected action {action!r}"[:200])
        if not self.apply(sync, update):
            return
        sync.seq = seq_id
        expected = data.get("checksum", 0)
        if expected:
            if checksum(self.books[sync.symbol]) != expected:
                self.resync(sync, "checksum")
                return
            sync.stats.checksums_ok += 1
        self.publish(sync)

    def chain_holds(self, sync, seq_id, prev_seq_id):
        """prevSeqId must equal the last seqId; keepalives and resets are not gaps."""
        if prev_seq_id != sync.seq:
            self.resync(sync, "gap")
            return False
        if seq_id < prev_seq_id:
            sync.stats.resets += 1  # after maintenance ids restart lower: the chain still holds
        return True
