"""Coinbase Advanced Trade `level2` (docs/EXCHANGES.md section 2).

The book: a `snapshot` event replaces it (full depth, both sides: asks are labelled `offer`,
the label cryptofeed misses), `update` events set absolute sizes in order. There is no
per-product sequence; `sequence_num` counts every message on a connection, across channels and
products. So continuity is per connection: a jump makes every book on that connection suspect,
and they are all resubscribed with ONE unsubscribe and ONE subscribe (not two messages per
product: Coinbase allows 8 messages a second per IP).

Limits honoured: subscribe on open (Coinbase closes a connection silent for 5 s), one channel
per subscribe message, the `heartbeats` channel beside `level2` (idle channels are closed
without it, and it proves liveness on illiquid products), at most `symbols_per_conn_max`
products per connection (the server refuses more than about 16 level2 products per session).
Snapshots are multi-megabyte single frames: the driver's `message_bytes_max` must allow them,
and the book loads them by sorting once.
"""

import orjson

from observer.book import BookUpdate
from observer.feeds.actions import FeedProtocolError
from observer.feeds.base import Adapter
from observer.feeds.clock import rfc3339_ns
from observer.feeds.sync import Kind, State

SIDES = {"bid": 0, "offer": 1}


class CoinbaseAdapter(Adapter):
    exchange = "coinbase"
    ws_url_default = "wss://advanced-trade-ws.coinbase.com"
    symbols_per_conn_max = 15
    send_rate_per_s = 6.0  # Coinbase allows 8 per second per IP, across every connection
    send_burst = 6
    send_limit_per_ip = True
    connects_per_s = 4.0  # Coinbase: 8 connections per second per IP
    silence_max_s = 10.0  # heartbeats arrive every second

    def __init__(self, symbols, **options):
        super().__init__(symbols, **options)
        self.conn_seq = {}  # conn_id -> last sequence_num
        self.resubscribe_pending = {}  # conn_id -> set of natives

    def request_text(self, kind, channel, natives):
        return orjson.dumps({"type": kind, "product_ids": natives, "channel": channel}).decode()

    def subscribe_conn(self, conn_id):
        natives = [sync.native for sync in self.conn_syncs(conn_id)]
        self.conn_seq.pop(conn_id, None)
        self.resubscribe_pending.pop(conn_id, None)
        self.send(conn_id, self.request_text("subscribe", "level2", natives))
        self.send(conn_id, self.request_text("subscribe", "heartbeats", natives))

    def recover(self, sync):
        sync.on(Kind.RESUBSCRIBE)
        self.resubscribe_pending.setdefault(sync.conn_id, set()).add(sync.native)

    def pump(self):
        """Send the resubscribes gathered during one input as one pair of messages."""
        for conn_id, natives in self.resubscribe_pending.items():
            if conn_id in self.open_conns and natives:
                ordered = sorted(natives)
                self.send(conn_id, self.request_text("unsubscribe", "level2", ordered))
                self.send(conn_id, self.request_text("subscribe", "level2", ordered))
                self.flush_sends(conn_id)
        self.resubscribe_pending.clear()

    # ------------------------------------------------------------------------ messages

    def handle(self, conn_id, data, recv_ns):
        msg = self.loads(data)
        if not isinstance(msg, dict):
            raise FeedProtocolError("coinbase: message is not an object")
        if msg.get("type") == "error":
            raise FeedProtocolError(f"coinbase: error: {msg.get('message')!r}"[:300])
        channel = msg["channel"]
        events = msg["events"]
        if not isinstance(events, list):
            raise FeedProtocolError("coinbase: events is not a list")
        self.check_sequence(conn_id, msg["sequence_num"])
        if channel == "l2_data":
            for event in events:
                self.on_level2(conn_id, event)
        elif channel == "subscriptions":
            for event in events:
                for native in event["subscriptions"].get("level2", ()):
                    sync = self.sync_for_native(native)
                    if sync.state is State.SUBSCRIBING:
                        sync.on(Kind.ACK)
        elif channel == "heartbeats":
            for sync in self.conn_syncs(conn_id):
                sync.stats.keepalives += 1
        else:
            raise FeedProtocolError(f"coinbase: unexpected channel {channel!r}"[:200])

    def check_sequence(self, conn_id, sequence_num):
        """Messages on a connection are numbered without holes; a hole resyncs all its books."""
        if type(sequence_num) is not int:
            raise FeedProtocolError("coinbase: sequence_num is not an integer")
        last = self.conn_seq.get(conn_id)
        if last is not None and sequence_num <= last:
            raise FeedProtocolError(f"coinbase: sequence_num went back from {last} to {sequence_num}")
        self.conn_seq[conn_id] = sequence_num
        if last is None or sequence_num == last + 1:
            return
        for sync in self.conn_syncs(conn_id):
            if sync.state is not State.SUBSCRIBING:
                self.resync(sync, "gap")

    def on_level2(self, conn_id, event):
        sync = self.sync_for_native(event["product_id"])
        if sync.conn_id != conn_id:
            raise FeedProtocolError(f"coinbase: {sync.symbol} arrived on connection {conn_id}")
        updates = event["updates"]
        if not isinstance(updates, list):
            raise FeedProtocolError("coinbase: updates is not a list")
        sides = ([], [])
        exch_ts_ns = 0
        for level in updates:
            sides[SIDES[level["side"]]].append((level["price_level"], level["new_quantity"]))
        kind = event["type"]
        if kind == "update" and updates:
            exch_ts_ns = rfc3339_ns(updates[-1]["event_time"])
        if kind == "snapshot":
            sync.on(Kind.SNAPSHOT)
            sync.stats.snapshots += 1
            update = BookUpdate(True, sides[0], sides[1], 0, exch_ts_ns)
        elif kind == "update":
            sync.on(Kind.DELTA)
            if sync.state is not State.LIVE:
                sync.stats.stale_dropped += 1
                return
            update = BookUpdate(False, sides[0], sides[1], 0, exch_ts_ns)
        else:
            raise FeedProtocolError(f"coinbase: unexpected event type {kind!r}"[:200])
        if self.apply(sync, update):
            self.publish(sync)
