"""Kraken spot WebSocket v2, `book` channel, with the CRC32 checksum (docs/EXCHANGES.md section 3).

Kraken has no sequence numbers: the checksum is the only integrity check, and it is computed
over the decimal TEXT of the top 10 levels per side. v2 sends prices and sizes as JSON numbers,
and a binary float cannot carry "0.00100000". So messages are read decimal-preserving: before
orjson parses them, the numbers of the `price` and `qty` keys are turned into strings by one
bytes regex (bench_parse_kraken.py measures it against `json.loads(parse_float=str)`, the
other exact approach: on small updates the two are within noise of each other, about 3x the
plain orjson floor; orjson alone cannot keep the text).

Per symbol:
- One subscribe for all symbols of a connection; Kraken acks each symbol separately (ACK).
- A snapshot replaces the book; updates apply level by level in wire order (one message may set
  a price twice), then each side is truncated to the subscribed depth (Kraken sends no delete
  for a level pushed out of the window), then the checksum is verified FROM THE STORED BOOK
  (C3): at the learned exponents, a level's text with the dot and leading zeros stripped is
  exactly its integer mantissa, so the checksum string is the mantissas in order.
- A mismatch (or a crossed book) resyncs: unsubscribe, then subscribe (Kraken refuses a
  duplicate subscribe), and updates still in flight are dropped until the new snapshot.

Liveness: Kraken sends a heartbeat each second once subscribed; `silence_max_s` of quiet asks
the driver to reconnect. The app-level ping is sent only when idle (it never is while
heartbeats flow).
"""

import re
import zlib
from itertools import chain

import orjson

from observer.book import ASK, BID, BookUpdate
from observer.feeds.actions import FeedProtocolError
from observer.feeds.base import Adapter
from observer.feeds.clock import rfc3339_ns
from observer.feeds.sync import Kind, State

DEPTHS = (10, 25, 100, 500, 1000)
CHECKSUM_LEVELS = 10

# `"price":45283.5` -> `"price":"45283.5"`: keep the literal text of the number.
_NUMBER_TO_TEXT = re.compile(rb'("(?:price|qty)":)(-?[0-9][0-9.eE+-]*)')


def _quoted(match):
    # A function, not a template: re expands `\1` templates in Python, twice as slow here.
    return match[1] + b'"' + match[2] + b'"'


def loads_exact(data):
    """Parse a Kraken v2 message keeping price and qty as their exact wire text."""
    if isinstance(data, str):
        data = data.encode()
    try:
        return orjson.loads(_NUMBER_TO_TEXT.sub(_quoted, data))
    except orjson.JSONDecodeError as exc:
        raise FeedProtocolError(f"kraken: not JSON: {exc}"[:200]) from None


def checksum(book):
    """Kraken's CRC32 over the top 10 asks then bids, from the stored integers."""
    ask_px, ask_sz = book.top(ASK, CHECKSUM_LEVELS)
    bid_px, bid_sz = book.top(BID, CHECKSUM_LEVELS)
    text = "".join(map(str, chain(*zip(ask_px, ask_sz), *zip(bid_px, bid_sz))))
    return zlib.crc32(text.encode())


def level_pairs(levels):
    """[{"price": "1.5", "qty": "2"}, ...] -> [("1.5", "2"), ...], checking the shape."""
    if not isinstance(levels, list):
        raise FeedProtocolError("kraken: levels are not a list")
    return [(level["price"], level["qty"]) for level in levels]


class KrakenAdapter(Adapter):
    exchange = "kraken"
    ws_url_default = "wss://ws.kraken.com/v2"
    symbols_per_conn_max = 50
    send_rate_per_s = 5.0
    send_burst = 10
    ping_idle_s = 20.0
    silence_max_s = 10.0
    connects_per_s = 2.0  # Cloudflare throttles attempts per IP (no public number)

    def __init__(self, symbols, *, depth=10, **options):
        if depth not in DEPTHS:
            raise ValueError(f"kraken: depth must be one of {DEPTHS}, got {depth}")
        super().__init__(symbols, depth=depth, **options)
        self.req_id = 0

    @staticmethod
    def subscription_depths(category=None):
        return DEPTHS

    def book_depth_max(self):
        return self.depth

    def request_text(self, method, natives):
        self.req_id += 1
        params = {"channel": "book", "symbol": natives, "depth": self.depth}
        if method == "subscribe":
            params["snapshot"] = True
        return orjson.dumps({"method": method, "params": params, "req_id": self.req_id}).decode()

    def subscribe_conn(self, conn_id):
        natives = [sync.native for sync in self.conn_syncs(conn_id)]
        self.send(conn_id, self.request_text("subscribe", natives))

    def recover(self, sync):
        sync.on(Kind.RESUBSCRIBE)
        self.send(sync.conn_id, self.request_text("unsubscribe", [sync.native]))
        self.send(sync.conn_id, self.request_text("subscribe", [sync.native]))

    def ping_message(self):
        self.req_id += 1
        return orjson.dumps({"method": "ping", "req_id": self.req_id}).decode()

    # ------------------------------------------------------------------------ messages

    def handle(self, conn_id, data, recv_ns):
        msg = loads_exact(data)
        if not isinstance(msg, dict):
            raise FeedProtocolError("kraken: message is not an object")
        channel = msg.get("channel")
        if channel == "book":
            self.on_book(conn_id, msg)
        elif channel in ("heartbeat", "status"):
            for sync in self.conn_syncs(conn_id):
                sync.stats.keepalives += 1
        elif "method" in msg:
            self.on_reply(conn_id, msg)
        else:
            raise FeedProtocolError(f"kraken: unexpected message on channel {channel!r}"[:200])

    def on_reply(self, conn_id, msg):
        method = msg["method"]
        if method in ("pong", "unsubscribe"):
            return
        if method != "subscribe":
            raise FeedProtocolError(f"kraken: unexpected method {method!r}"[:200])
        if msg.get("success") is not True:
            # A refusal naming a symbol of ours: try that book again (unsubscribe + subscribe).
            native = msg.get("symbol")
            if native in self.by_native and self.syncs[self.by_native[native]].conn_id == conn_id:
                self.resync(self.syncs[self.by_native[native]], "bad_message")
            raise FeedProtocolError(f"kraken: subscribe refused: {msg.get('error')!r}"[:300])
        sync = self.sync_for_native(msg["result"]["symbol"])
        sync.on(Kind.ACK)

    def on_book(self, conn_id, msg):
        kind = msg.get("type")
        (element,) = msg["data"]
        sync = self.sync_for_native(element["symbol"])
        if sync.conn_id != conn_id:
            raise FeedProtocolError(f"kraken: {sync.symbol} arrived on connection {conn_id}")
        expected = element["checksum"]
        if type(expected) is not int:
            raise FeedProtocolError("kraken: checksum is not an integer")
        bids = level_pairs(element["bids"])
        asks = level_pairs(element["asks"])
        exch_ts_ns = rfc3339_ns(element["timestamp"]) if "timestamp" in element else 0
        if kind == "snapshot":
            sync.on(Kind.SNAPSHOT)
            sync.stats.snapshots += 1
            update = BookUpdate(True, bids, asks, 0, exch_ts_ns)
        elif kind == "update":
            sync.on(Kind.DELTA)
            if sync.state is not State.LIVE:
                sync.stats.stale_dropped += 1  # tail of a subscription being replaced
                return
            update = BookUpdate(False, bids, asks, 0, exch_ts_ns)
        else:
            raise FeedProtocolError(f"kraken: unexpected book message type {kind!r}"[:200])
        if not self.apply(sync, update):
            return
        if checksum(self.books[sync.symbol]) != expected:
            self.resync(sync, "checksum")
            return
        sync.stats.checksums_ok += 1
        self.publish(sync)
