"""Bybit v5 public: `orderbook.{depth}.{symbol}` snapshot + delta, spot and linear.

Each (symbol, depth) topic is one stream with its own window and update id `u`, shared by all
its subscribers: a delta turns the previous window into the new one exactly (levels leaving
the window are deleted explicitly) and `u` goes up by one per message, so a client checks
`u == previous u + 1`. A gap fault advances `u` without sending; a `reset` fault re-sends a
snapshot with `u = 1` (Bybit's "service restarted" signal). Depth 1 is snapshot-only and is
re-pushed with the same `u` after `level1_repush_s` (3 s) without change.

Spot and linear differ where clients trip: the key order of a push (spot has `ts` before
`type`, linear after), the subscribe ack (`ret_msg` "subscribe" vs ""), and spot's limit of 10
args per subscribe; both cap a connection's topics at 21,000 characters. A duplicate
subscribe is refused ("already subscribed"); a resync is unsubscribe then subscribe. `{"op":"ping"}` is answered unless a ping-deadline fault mutes it;
a connection with neither client messages nor data for `idle_s` (10 min) is closed.

Spot also serves the full-depth stream `orderbook.full.{symbol}` (Bybit, 2026): deltas only,
no snapshot on subscribe, `u` + 1 per event whoever listens, initialised from REST
`GET /v5/market/full_orderbook?category=spot&symbol=` (fields `s,b,a,ts,u,seq,cts`).
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import orjson

from obsim.book import ASK, BID, Instrument, window, window_diff
from obsim.venue import COMMON_FAULTS, Market, Venue, json_response, pad_json
from obsim.wire import Conn

DEPTHS = (1, 50, 200, 1000)
FULL = "full"                         # orderbook.full.{symbol}: spot, delta-only, REST-initialised
FULL_REST_PATH = "/v5/market/full_orderbook"
SPOT_ARGS_MAX = 10
ARGS_CHARS_MAX = 21_000               # total topic characters per connection (public streams)


class BybitSpot(Venue):
    name = "bybit"
    category = "spot"
    ws_path = "/v5/public/spot"
    connect_window_s = 300.0
    faults = COMMON_FAULTS + ("reset",)

    def instrument(self, symbol: str) -> Instrument:
        return Instrument(price_decimals=2, size_decimals=6, tick_int=10)

    def init_market(self, market: Market) -> None:
        market.state["topics"] = {}            # depth -> {"u", "window", "subs", "pushed_s"}
        market.state["seq"] = 5_000_000
        market.state["full"] = {"u": 1_000_000, "subs": set()}  # every event, subscribed or not

    def sequence_of(self, market: Market):
        sequence = {str(d): t["u"] for d, t in market.state["topics"].items()}
        sequence[FULL] = market.state["full"]["u"]
        return sequence

    # -- rendering ------------------------------------------------------------------------

    def message(self, market: Market, depth: int, kind: str, bids, asks, u: int) -> bytes:
        inst = market.inst
        b = ",".join(f'["{inst.price_text(p)}","{inst.size_text(q)}"]' for p, q in bids)
        a = ",".join(f'["{inst.price_text(p)}","{inst.size_text(q)}"]' for p, q in asks)
        ts_ms = time.time_ns() // 1_000_000
        topic = f'"topic":"orderbook.{depth}.{market.symbol}"'
        data = f'"data":{{"s":"{market.symbol}","b":[{b}],"a":[{a}],"u":{u},"seq":{market.state["seq"]}}}'
        if self.category == "spot":
            return f'{{{topic},"ts":{ts_ms},"type":"{kind}",{data},"cts":{ts_ms}}}'.encode()
        return f'{{{topic},"type":"{kind}","ts":{ts_ms},{data},"cts":{ts_ms}}}'.encode()

    def snapshot(self, market: Market, depth: int, topic: dict) -> bytes:
        bids, asks = window(market.book, depth)
        topic["window"] = (bids, asks)
        topic["pushed_s"] = time.monotonic()
        self.counters["snapshots_served"] += 1
        payload = self.message(market, depth, "snapshot", list(bids.items()), list(asks.items()), topic["u"])
        size_bytes = self.take_oversized()
        return payload if size_bytes is None else pad_json(payload, size_bytes)

    # -- the stream -----------------------------------------------------------------------

    def publish(self, market: Market, changes: list, now_s: float) -> None:
        market.state["seq"] += 1 + len(changes)
        reset = market.reset_next > 0
        market.reset_next = 0
        self.publish_full(market, changes, reset)
        for depth, topic in market.state["topics"].items():
            if reset:
                topic["u"] = 1
                self.broadcast(topic["subs"], self.snapshot(market, depth, topic))
                continue
            bids0, asks0 = topic["window"]
            bids1, asks1 = window(market.book, depth)
            bids, asks = window_diff(bids0, bids1), window_diff(asks0, asks1)
            if not bids and not asks:
                continue
            topic["u"] += 1
            topic["window"] = (bids1, asks1)
            if depth == 1:
                topic["pushed_s"] = now_s
                payload = self.message(market, depth, "snapshot", list(bids1.items()), list(asks1.items()), topic["u"])
            else:
                payload = self.message(market, depth, "delta", bids, asks, topic["u"])
            self.broadcast(topic["subs"], payload)

    def publish_full(self, market: Market, changes: list, reset: bool) -> None:
        """The full-depth stream: every change, each price once, `u` + 1 per event (1 after a reset)."""
        full = market.state["full"]
        full["u"] = 1 if reset else full["u"] + 1
        if not full["subs"]:
            return
        final = {(s, p): q for s, p, q in changes}
        bids = [(p, q) for (s, p), q in final.items() if s == BID]
        asks = [(p, q) for (s, p), q in final.items() if s == ASK]
        self.broadcast(full["subs"], self.message(market, FULL, "delta", bids, asks, full["u"]))

    def hide(self, market: Market, changes: list) -> None:
        market.state["seq"] += 1 + len(changes)
        market.state["full"]["u"] += 1
        for depth, topic in market.state["topics"].items():
            after = window(market.book, depth)
            if after != topic["window"]:
                topic["u"] += 1
                topic["window"] = after

    # -- connections ----------------------------------------------------------------------

    def on_open(self, conn: Conn) -> None:
        conn.state["conn_id"] = f"obsim-{conn.id}"
        conn.state["topics"] = {}                  # topic name -> (market, depth)

    def on_close(self, conn: Conn) -> None:
        for market, depth in conn.state["topics"].values():
            self.drop_sub(market, depth, conn)

    def drop_sub(self, market: Market, depth, conn: Conn) -> None:
        if depth == FULL:
            market.state["full"]["subs"].discard(conn)
            return
        topic = market.state["topics"].get(depth)
        if topic is not None:
            topic["subs"].discard(conn)
            if not topic["subs"]:
                del market.state["topics"][depth]

    def reply(self, conn: Conn, op: str, req_id, success: bool, ret_msg: str) -> None:
        obj = {"success": success, "ret_msg": ret_msg, "conn_id": conn.state["conn_id"]}
        if req_id is not None:
            obj["req_id"] = req_id
        obj["op"] = op
        conn.send_payload(orjson.dumps(obj))

    def parse_topic(self, name) -> tuple[Market, int | str] | None:
        parts = str(name).split(".")
        if len(parts) == 3 and parts[:2] == ["orderbook", FULL] and self.category == "spot":
            market = self.markets.get(parts[2])
            return None if market is None else (market, FULL)
        if len(parts) != 3 or parts[0] != "orderbook" or not parts[1].isdigit():
            return None
        market, depth = self.markets.get(parts[2]), int(parts[1])
        return (market, depth) if market is not None and depth in DEPTHS else None

    def on_message(self, conn: Conn, message, now_s: float) -> None:
        req = self.parse_client_json(conn, message)
        if req is None:
            return self.reply(conn, "", None, False, "error:request not a JSON object")
        op, req_id, args = req.get("op"), req.get("req_id"), req.get("args", [])
        if op == "ping":
            if now_s >= conn.pongs_muted_until_s:
                self.counters["pings_answered"] += 1
                self.reply(conn, "ping", req_id, True, "pong")
            return
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            return self.reply(conn, str(op), req_id, False, f"error:unknown op or bad args: {op}")
        if self.category == "spot" and len(args) > SPOT_ARGS_MAX:
            return self.reply(conn, op, req_id, False, f"error:args size >{SPOT_ARGS_MAX}")
        held_chars = sum(len(name) for name in conn.state["topics"])
        if op == "subscribe" and held_chars + sum(len(str(a)) for a in args) > ARGS_CHARS_MAX:
            return self.reply(conn, op, req_id, False, f"error:args length over {ARGS_CHARS_MAX} characters")
        for name in args:
            if not self.one_topic(conn, op, name, req_id):
                return
        self.reply(conn, op, req_id, True, "subscribe" if self.category == "spot" else "")
        if op == "subscribe":
            for name in args:
                market, depth = self.parse_topic(name)
                if depth != FULL:                  # the full stream has no snapshot: REST has it
                    conn.send_payload(self.snapshot(market, depth, market.state["topics"][depth]))

    def one_topic(self, conn: Conn, op: str, name, req_id) -> bool:
        parsed = self.parse_topic(name)
        if parsed is None:
            self.reply(conn, op, req_id, False, f"error:handler not found,topic:{name}")
            return False
        market, depth = parsed
        held = name in conn.state["topics"]
        if op == "subscribe" and held:
            self.counters["subscribes_refused"] += 1
            self.reply(conn, op, req_id, False, f"error:already subscribed,topic:{name}")
            return False
        if op == "unsubscribe":
            if held:
                del conn.state["topics"][name]
                conn.state["subs"].discard(name)
                self.drop_sub(market, depth, conn)
            return True
        self.counters["subscribes"] += 1
        conn.state["topics"][name] = (market, depth)
        conn.state["subs"].add(name)
        if depth == FULL:
            market.state["full"]["subs"].add(conn)
            return True
        topic = market.state["topics"].setdefault(depth, {"u": 1_000_000, "window": ({}, {}), "subs": set(), "pushed_s": 0.0})
        topic["subs"].add(conn)
        return True

    def http(self, ws, request):
        split = urlsplit(request.path)
        if split.path != FULL_REST_PATH or self.category != "spot":
            return super().http(ws, request)
        self.counters["rest_requests"] += 1
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        market = self.markets.get(query.get("symbol", ""))
        if query.get("category") != "spot" or market is None:
            return json_response(200, {"retCode": 10001, "retMsg": "params error: category/symbol", "result": {}})
        self.counters["snapshots_served"] += 1
        inst, book, now_ms = market.inst, market.current_book(), time.time_ns() // 1_000_000
        levels = [[inst.price_text(p), inst.size_text(q)] for p, q in book.top(BID)], \
            [[inst.price_text(p), inst.size_text(q)] for p, q in book.top(ASK)]
        result = {"s": market.symbol, "b": levels[0], "a": levels[1], "ts": now_ms,
                  "u": market.state["full"]["u"], "seq": market.state["seq"], "cts": now_ms}
        return json_response(200, {"retCode": 0, "retMsg": "OK", "result": result, "time": now_ms})

    def housekeep(self, now_s: float) -> None:
        for conn in list(self.conns):
            if now_s - max(conn.last_in_s, conn.last_out_s) > self.opts.bybit_idle_s:
                self.close_conn(conn, 1000, "idle", "closes_idle")
        for market in self.markets.values():
            topic = market.state["topics"].get(1)
            if topic and now_s - topic["pushed_s"] >= self.opts.bybit_level1_repush_s:
                self.broadcast(topic["subs"], self.snapshot(market, 1, topic))
                self.counters["snapshots_served"] -= 1          # a re-push, not a served snapshot


class BybitLinear(BybitSpot):
    name = "bybit-linear"
    category = "linear"
    ws_path = "/v5/public/linear"
