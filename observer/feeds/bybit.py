"""Bybit v5 public `orderbook.{depth}.{symbol}` (docs/EXCHANGES.md section 5), spot and linear.

After a subscribe Bybit pushes a `snapshot`, then `delta`s. The rules:
- Any `snapshot` replaces the book: the first one, a server-side reset, and the level-1 stream
  that is snapshot-only and re-pushed with the same `u` when unchanged for 3 s.
- `u == 1` means the service restarted and the message is full data: the book is replaced even
  if it came as a delta (counted in `resets`).
- Deltas continue by `u == previous u + 1` (Bybit documents it for the full stream; client
  libraries enforce it on `orderbook.N` too, and so do we). A delta with `u <= previous u` is
  stale and dropped; `u > previous u + 1` is a gap: unsubscribe, then subscribe (Bybit refuses
  a duplicate subscribe).
- Books are truncated to the subscribed depth after every message.

Bybit's acks do not name topics, so a subscribe's `req_id` remembers its symbols; a refused
subscribe retries those books. Keepalive is `{"op":"ping"}` after `ping_idle_s` of quiet (Bybit
cuts a connection after 10 min without traffic); spot takes at most 10 args per request.
"""

import orjson

from observer.book import BookUpdate
from observer.feeds.actions import FeedProtocolError
from observer.feeds.base import Adapter
from observer.feeds.clock import NS_PER_MS
from observer.feeds.sync import Kind, State

DEPTHS = {"spot": (1, 50, 200, 1000), "linear": (1, 50, 200, 1000)}
ARGS_PER_REQUEST_MAX = 10
PENDING_REQUESTS_MAX = 1024  # subscribes awaiting their ack (acks name no topic, only req_id)


class BybitAdapter(Adapter):
    exchange = "bybit"
    ws_url_default = "wss://stream.bybit.com/v5/public/spot"
    symbols_per_conn_max = 100
    send_rate_per_s = 5.0
    send_burst = 10
    ping_idle_s = 20.0
    silence_max_s = 45.0
    connects_per_s = 0.8  # Bybit: 500 connections per 5 minutes per IP

    def __init__(self, symbols, *, category="spot", depth=50, ws_url=None, **options):
        if category not in DEPTHS:
            raise ValueError(f"bybit: category must be one of {tuple(DEPTHS)}, got {category!r}")
        if depth not in DEPTHS[category]:
            raise ValueError(f"bybit: depth must be one of {DEPTHS[category]}, got {depth}")
        self.category = category
        default_url = f"wss://stream.bybit.com/v5/public/{category}"
        super().__init__(symbols, ws_url=ws_url or default_url, depth=depth, **options)
        self.req_id = 0
        self.requests = {}  # req_id -> natives of a pending subscribe

    @staticmethod
    def subscription_depths(category="spot"):
        return DEPTHS[category]

    def book_depth_max(self):
        return self.depth

    def topic(self, native):
        return f"orderbook.{self.depth}.{native}"

    def request(self, conn_id, op, natives):
        for start in range(0, len(natives), ARGS_PER_REQUEST_MAX):
            chunk = natives[start : start + ARGS_PER_REQUEST_MAX]
            self.req_id += 1
            if op == "subscribe":
                if len(self.requests) >= PENDING_REQUESTS_MAX:
                    self.requests.clear()  # replies lost long ago; the sync deadline covers them
                self.requests[str(self.req_id)] = chunk
            args = [self.topic(native) for native in chunk]
            self.send(conn_id, orjson.dumps({"req_id": str(self.req_id), "op": op, "args": args}).decode())

    def subscribe_conn(self, conn_id):
        self.request(conn_id, "subscribe", [sync.native for sync in self.conn_syncs(conn_id)])

    def recover(self, sync):
        sync.on(Kind.RESUBSCRIBE)
        self.request(sync.conn_id, "unsubscribe", [sync.native])
        self.request(sync.conn_id, "subscribe", [sync.native])

    def ping_message(self):
        self.req_id += 1
        return orjson.dumps({"req_id": str(self.req_id), "op": "ping"}).decode()

    # ------------------------------------------------------------------------ messages

    def handle(self, conn_id, data, recv_ns):
        msg = self.loads(data)
        if not isinstance(msg, dict):
            raise FeedProtocolError("bybit: message is not an object")
        if "topic" in msg:
            self.on_orderbook(conn_id, msg)
        elif msg.get("op") in ("ping", "pong"):
            return
        elif "success" in msg:
            self.on_reply(conn_id, msg)
        else:
            raise FeedProtocolError("bybit: unexpected message")

    def on_reply(self, conn_id, msg):
        natives = self.requests.pop(str(msg.get("req_id")), ())
        if msg["success"] is True:
            for native in natives:
                sync = self.sync_for_native(native)
                if sync.state is State.SUBSCRIBING:
                    sync.on(Kind.ACK)
            return
        for native in natives:
            self.resync(self.sync_for_native(native), "bad_message")
        raise FeedProtocolError(f"bybit: request refused: {msg.get('ret_msg')!r}"[:300])

    def on_orderbook(self, conn_id, msg):
        topic = msg["topic"]
        data = msg["data"]
        sync = self.sync_for_native(data["s"])
        if topic != self.topic(sync.native) or sync.conn_id != conn_id:
            raise FeedProtocolError(f"bybit: unexpected topic {topic!r} on connection {conn_id}"[:200])
        update_id = data["u"]
        bids = data["b"]
        asks = data["a"]
        if type(update_id) is not int or not isinstance(bids, list) or not isinstance(asks, list):
            raise FeedProtocolError("bybit: u/b/a of the wrong type")
        exch_ts_ns = msg["ts"] * NS_PER_MS if type(msg.get("ts")) is int else 0
        kind = msg["type"]
        if kind == "snapshot" or (kind == "delta" and update_id == 1):
            if update_id == 1 and sync.seq is not None:
                sync.stats.resets += 1
            sync.on(Kind.SNAPSHOT)
            sync.stats.snapshots += 1
            update = BookUpdate(True, bids, asks, update_id, exch_ts_ns)
        elif kind == "delta":
            sync.on(Kind.DELTA)
            if sync.state is not State.LIVE:
                sync.stats.stale_dropped += 1
                return
            if update_id <= sync.seq:
                sync.stats.stale_dropped += 1
                return
            if update_id != sync.seq + 1:
                self.resync(sync, "gap")
                return
            update = BookUpdate(False, bids, asks, update_id, exch_ts_ns)
        else:
            raise FeedProtocolError(f"bybit: unexpected type {kind!r}"[:200])
        if not self.apply(sync, update):
            return
        sync.seq = update_id
        self.publish(sync)
