"""Coinbase Advanced Trade: `level2` (delivered on channel `l2_data`) and `heartbeats`.

What a client must survive, reproduced here:
- one channel per subscribe message (`channel`, singular); the subscribe name is `level2` but
  messages arrive on `l2_data`, asks are labelled `offer`;
- `sequence_num` counts every message on the connection, across channels and products,
  starting at 0; a gap fault drops one message and still advances it, so the jump is visible;
- the snapshot is the whole book in one frame, several megabytes for a deep book (12000 levels
  per side by default, about 2.5 MB);
- a ping-deadline fault stops the heartbeats for `duration_s` (Coinbase's only liveness signal);
- no subscribe within `subscribe_deadline_s` (5 s) closes the connection; more than
  `l2_products_max` (16) level2 products on one connection is refused with Coinbase's
  "too many L2 streams" error; a connection without a `heartbeats` subscription is closed
  after `idle_s` (60 s) without level2 data.
Because `sequence_num` differs per connection, a message is rendered once as a head and a tail
and each connection's number is spliced in between.
"""

from __future__ import annotations

import time

import orjson

from obsim.book import ASK, BID
from obsim.kraken import rfc3339_now
from obsim.venue import COMMON_FAULTS, Market, Venue, pad_json
from obsim.wire import Conn

SIDE_NAMES = {BID: "bid", ASK: "offer"}
TOO_MANY = "too many L2 streams requested in a single session"


class Coinbase(Venue):
    name = "coinbase"
    ws_path = ""
    faults = COMMON_FAULTS + ("reset",)

    def depth_max(self) -> int:
        return self.opts.coinbase_depth

    def is_ws_path(self, path: str) -> bool:
        return path in ("", "/")

    def init_market(self, market: Market) -> None:
        market.state["subs"] = set()

    # -- rendering ------------------------------------------------------------------------

    def updates_json(self, market: Market, levels, event_time: str) -> str:
        inst = market.inst
        return ",".join(
            f'{{"side":"{SIDE_NAMES[s]}","event_time":"{event_time}","price_level":"{inst.price_text(p)}",'
            f'"new_quantity":"{inst.size_text(q)}"}}' for s, p, q in levels)

    def parts(self, channel: str, events_json: str) -> tuple[bytes, bytes]:
        head = f'{{"channel":"{channel}","client_id":"","timestamp":"{rfc3339_now()}","sequence_num":'.encode()
        return head, f',"events":{events_json}}}'.encode()

    def send_numbered(self, conn: Conn, head: bytes, tail: bytes) -> None:
        seq = conn.state["seq"]
        conn.state["seq"] = seq + 1
        conn.send_payload(head + str(seq).encode() + tail)
        self.counters["messages_sent"] += 1

    def snapshot_parts(self, market: Market) -> tuple[bytes, bytes]:
        levels = [(BID, p, q) for p, q in market.book.top(BID)] + [(ASK, p, q) for p, q in market.book.top(ASK)]
        events = (f'[{{"type":"snapshot","product_id":"{market.symbol}","updates":['
                  f'{self.updates_json(market, levels, "1970-01-01T00:00:00Z")}]}}]')
        self.counters["snapshots_served"] += 1
        return self.parts("l2_data", events)

    def send_snapshot(self, conn: Conn, market: Market, parts: tuple[bytes, bytes] | None = None) -> None:
        head, tail = parts or self.snapshot_parts(market)
        size_bytes = self.take_oversized()
        if size_bytes is not None:               # the whole frame, head and number included
            tail = pad_json(tail, size_bytes - len(head) - len(str(conn.state["seq"])))
        self.send_numbered(conn, head, tail)
        conn.state["last_data_s"] = conn.last_out_s = time.monotonic()

    # -- the stream -----------------------------------------------------------------------

    def publish(self, market: Market, changes: list, now_s: float) -> None:
        subs = market.state["subs"]
        if not subs:
            return
        if market.reset_next:
            market.reset_next -= 1
            parts = self.snapshot_parts(market)
            for conn in subs:
                self.send_snapshot(conn, market, parts)
            return
        final = [(s, p, q) for (s, p), q in {(s, p): q for s, p, q in changes}.items()]   # each price once
        events = (f'[{{"type":"update","product_id":"{market.symbol}","updates":['
                  f'{self.updates_json(market, final, rfc3339_now())}]}}]')
        head, tail = self.parts("l2_data", events)
        for conn in subs:
            self.send_numbered(conn, head, tail)
            conn.state["last_data_s"] = now_s

    def hide(self, market: Market, changes: list) -> None:
        for conn in market.state["subs"]:
            conn.state["seq"] += 1

    # -- connections ----------------------------------------------------------------------

    def on_open(self, conn: Conn) -> None:
        conn.state.update(seq=0, level2=[], heartbeats=False, subscribed=False,
                          last_data_s=conn.opened_s, heartbeat_counter=0, last_heartbeat_s=conn.opened_s)

    def on_close(self, conn: Conn) -> None:
        for market in self.markets.values():
            market.state["subs"].discard(conn)

    def error(self, conn: Conn, message: str) -> None:
        self.counters["errors_sent"] += 1
        conn.send_payload(orjson.dumps({"type": "error", "message": message}))

    def on_message(self, conn: Conn, message, now_s: float) -> None:
        req = self.parse_client_json(conn, message)
        if req is None:
            return self.error(conn, "malformed JSON: expected an object")
        kind, channel = req.get("type"), req.get("channel")
        if kind not in ("subscribe", "unsubscribe"):
            return self.error(conn, f"unknown message type {kind!r}")
        if not isinstance(channel, str):
            return self.error(conn, "channel (one string) is required")
        products = req.get("product_ids", [])
        if not isinstance(products, list):
            return self.error(conn, "product_ids must be a list")
        if channel == "heartbeats":
            conn.state["heartbeats"] = kind == "subscribe"
        elif channel == "level2":
            if not self.level2(conn, kind, [str(p) for p in products]):
                return
        else:
            return self.error(conn, f"Failed to subscribe: unknown channel {channel}")
        if kind == "subscribe":
            conn.state["subscribed"] = True
            self.counters["subscribes"] += 1
        self.send_subscriptions(conn)
        if kind == "subscribe" and channel == "level2":
            for product in products:
                self.send_snapshot(conn, self.markets[product])

    def level2(self, conn: Conn, kind: str, products: list[str]) -> bool:
        unknown = [p for p in products if p not in self.markets]
        if unknown:
            self.error(conn, f"Failed to subscribe: unknown product {unknown[0]}")
            return False
        current = conn.state["level2"]
        if kind == "unsubscribe":
            for product in products or list(current):
                if product in current:
                    current.remove(product)
                    self.markets[product].state["subs"].discard(conn)
            return True
        added = [p for p in products if p not in current]
        if len(current) + len(added) > self.opts.coinbase_l2_products_max:
            self.counters["subscribes_refused"] += 1
            self.error(conn, TOO_MANY)
            return False
        for product in added:
            current.append(product)
            conn.state["subs"].add(product)
            self.markets[product].state["subs"].add(conn)
        return True

    def send_subscriptions(self, conn: Conn) -> None:
        subs = {}
        if conn.state["level2"]:
            subs["level2"] = list(conn.state["level2"])
        if conn.state["heartbeats"]:
            subs["heartbeats"] = ["heartbeats"]
        head, tail = self.parts("subscriptions", orjson.dumps([{"subscriptions": subs}]).decode())
        self.send_numbered(conn, head, tail)

    def housekeep(self, now_s: float) -> None:
        opts = self.opts
        for conn in list(self.conns):
            state = conn.state
            if not state["subscribed"] and now_s - conn.opened_s > opts.coinbase_subscribe_deadline_s:
                self.close_conn(conn, 1000, "subscribe deadline", "closes_subscribe_deadline")
            elif state["level2"] and not state["heartbeats"] and now_s - state["last_data_s"] > opts.coinbase_idle_s:
                self.close_conn(conn, 1000, "idle channel closed (no heartbeats subscription)", "closes_idle")
            elif (state["heartbeats"] and now_s >= conn.pongs_muted_until_s       # ping_deadline mutes them
                  and now_s - state["last_heartbeat_s"] >= opts.coinbase_heartbeat_s):
                state["last_heartbeat_s"] = now_s
                state["heartbeat_counter"] += 1
                event = f'[{{"current_time":"{rfc3339_now()}","heartbeat_counter":{state["heartbeat_counter"]}}}]'
                self.send_numbered(conn, *self.parts("heartbeats", event))
