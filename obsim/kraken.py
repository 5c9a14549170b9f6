"""Kraken spot WebSocket v2: the `book` channel with a CRC32 checksum on every message.

The true book is deeper than any subscription; a subscriber sees a window of `depth` levels per
side (10, 25, 100, 500 or 1000). Updates follow Kraken's rules, which the observer must handle:
- levels are sent in the order they changed, and one price may appear twice in one message;
- a level pushed out of the window by an insert is NOT deleted on the wire (the client
  truncates); a level deleted inside the window is sent with qty 0 and the level that moves
  into view is re-published;
- prices and quantities are JSON numbers carrying the instrument's full precision, trailing
  zeros included (`0.10000000`), because the checksum is computed from that text;
- the checksum covers the top 10 asks then the top 10 bids of the book after the message.
One window per (symbol, depth) is kept, as the clients of that depth see it, so the messages
are rendered once per depth. Subscribing twice to one symbol is refused ("Already
subscribed"): a client resyncs by unsubscribe then subscribe. `{"channel":"heartbeat"}` goes
to a connection after `heartbeat_s` without other traffic; `{"method":"ping"}` is answered with
`pong` unless a ping-deadline fault mutes it.
"""

from __future__ import annotations

import datetime

import orjson

from obsim.book import ASK, BID, Instrument, kraken_checksum, window
from obsim.venue import COMMON_FAULTS, Market, Venue, pad_json
from obsim.wire import Conn

DEPTHS = (10, 25, 100, 500, 1000)


def rfc3339_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Kraken(Venue):
    name = "kraken"
    ws_path = "/v2"
    faults = COMMON_FAULTS + ("bad_checksum",)

    def instrument(self, symbol: str) -> Instrument:
        return Instrument(price_decimals=1, size_decimals=8, tick_int=1)

    def init_market(self, market: Market) -> None:
        market.state["windows"] = {}               # depth -> (bids dict, asks dict)
        market.state["subs"] = {}                  # depth -> set of conns

    # -- the stream -----------------------------------------------------------------------

    def levels_json(self, inst: Instrument, levels) -> str:
        return ",".join(f'{{"price":{inst.price_text(p)},"qty":{inst.size_text(q)}}}' for p, q in levels)

    def message(self, market: Market, kind: str, bids, asks, checksum: int) -> bytes:
        inst = market.inst
        return (f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{market.symbol}",'
                f'"bids":[{self.levels_json(inst, bids)}],"asks":[{self.levels_json(inst, asks)}],'
                f'"checksum":{checksum},"timestamp":"{rfc3339_now()}"}}]}}').encode()

    def checksum(self, market: Market) -> int:
        crc = kraken_checksum(market.inst, market.book)
        if market.bad_checksum_next:
            market.bad_checksum_next -= 1
            crc ^= 0x5A5A5A5A
        return crc

    def window_update(self, before, after, changes, side: int) -> list[tuple[int, int]]:
        """Kraken's wire levels turning window `before` into (a superset of) `after`."""
        out = [(p, q) for s, p, q in changes if s == side and (p in after or p in before)]
        touched = {p for p, _ in out}
        out += [(p, q) for p, q in after.items() if p not in before and p not in touched]
        return out

    def publish(self, market: Market, changes: list, now_s: float) -> None:
        windows = market.state["windows"]
        if not windows:
            return
        checksum = None
        for depth, (bids0, asks0) in list(windows.items()):
            bids1, asks1 = window(market.book, depth)
            windows[depth] = (bids1, asks1)
            bids = self.window_update(bids0, bids1, changes, BID)
            asks = self.window_update(asks0, asks1, changes, ASK)
            if not bids and not asks:
                continue
            if checksum is None:
                checksum = self.checksum(market)
            self.broadcast(market.state["subs"].get(depth, ()), self.message(market, "update", bids, asks, checksum))

    def hide(self, market: Market, changes: list) -> None:
        windows = market.state["windows"]
        for depth in windows:
            windows[depth] = window(market.book, depth)

    def snapshot(self, market: Market, depth: int) -> bytes:
        bids, asks = window(market.book, depth)
        market.state["windows"][depth] = (bids, asks)
        payload = self.message(market, "snapshot", list(bids.items()), list(asks.items()),
                               self.checksum(market))
        size_bytes = self.take_oversized()
        self.counters["snapshots_served"] += 1
        return payload if size_bytes is None else pad_json(payload, size_bytes)

    # -- connections ----------------------------------------------------------------------

    def on_open(self, conn: Conn) -> None:
        conn.state["book"] = {}                    # symbol -> depth
        conn.send_payload(orjson.dumps({"channel": "status", "type": "update", "data": [{
            "version": "2.0.0", "system": "online", "api_version": "v2", "connection_id": conn.id}]}))

    def on_close(self, conn: Conn) -> None:
        for symbol, depth in conn.state["book"].items():
            self.drop_sub(self.markets[symbol], depth, conn)

    def drop_sub(self, market: Market, depth: int, conn: Conn) -> None:
        subs = market.state["subs"].get(depth)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del market.state["subs"][depth]
                market.state["windows"].pop(depth, None)

    def on_message(self, conn: Conn, message, now_s: float) -> None:
        req = self.parse_client_json(conn, message)
        time_in = rfc3339_now()
        if req is None:
            return self.ack(conn, {"error": "Malformed request", "method": "", "success": False}, time_in)
        method, req_id = req.get("method"), req.get("req_id")
        params = req.get("params") if isinstance(req.get("params"), dict) else {}
        if method == "ping":
            if now_s >= conn.pongs_muted_until_s:
                self.counters["pings_answered"] += 1
                self.ack(conn, {"method": "pong", "req_id": req_id}, time_in)
            return
        if method not in ("subscribe", "unsubscribe"):
            return self.ack(conn, {"error": f"Method not found: {method}", "success": False, "req_id": req_id}, time_in)
        if params.get("channel") != "book":
            return self.ack(conn, {"error": "Unsupported channel", "method": method, "success": False,
                                   "req_id": req_id}, time_in)
        depth = params.get("depth", 10)
        if depth not in DEPTHS:
            return self.ack(conn, {"error": f"Invalid depth {depth}", "method": method, "success": False,
                                   "req_id": req_id}, time_in)
        symbols = params.get("symbol")
        if not isinstance(symbols, list) or not symbols:
            return self.ack(conn, {"error": "symbol: expected a non-empty list", "method": method,
                                   "success": False, "req_id": req_id}, time_in)
        for symbol in symbols:
            if method == "subscribe":
                self.subscribe(conn, str(symbol), depth, params.get("snapshot", True), req_id, time_in)
            else:
                self.unsubscribe(conn, str(symbol), depth, req_id, time_in)

    def ack(self, conn: Conn, obj: dict, time_in: str) -> None:
        obj.update(time_in=time_in, time_out=rfc3339_now())
        conn.send_payload(orjson.dumps(obj))

    def subscribe(self, conn: Conn, symbol: str, depth: int, snapshot: bool, req_id, time_in: str) -> None:
        base = {"method": "subscribe", "symbol": symbol, "req_id": req_id}
        market = self.markets.get(symbol)
        if market is None:
            return self.ack(conn, {"error": f"Currency pair not supported {symbol}", "success": False, **base}, time_in)
        if symbol in conn.state["book"]:
            self.counters["subscribes_refused"] += 1
            return self.ack(conn, {"error": "Already subscribed", "success": False, **base}, time_in)
        self.counters["subscribes"] += 1
        conn.state["book"][symbol] = depth
        conn.state["subs"].add(symbol)
        self.ack(conn, {"method": "subscribe", "result": {"channel": "book", "depth": depth,
                        "snapshot": bool(snapshot), "symbol": symbol}, "success": True, "req_id": req_id}, time_in)
        if depth not in market.state["windows"] or snapshot:
            payload = self.snapshot(market, depth) if snapshot else None
            if payload is not None:
                conn.send_payload(payload)
            elif depth not in market.state["windows"]:
                market.state["windows"][depth] = window(market.book, depth)
        market.state["subs"].setdefault(depth, set()).add(conn)

    def unsubscribe(self, conn: Conn, symbol: str, depth: int, req_id, time_in: str) -> None:
        if conn.state["book"].get(symbol) != depth:
            return self.ack(conn, {"error": "Subscription Not Found", "method": "unsubscribe",
                                   "success": False, "symbol": symbol, "req_id": req_id}, time_in)
        del conn.state["book"][symbol]
        conn.state["subs"].discard(symbol)
        self.drop_sub(self.markets[symbol], depth, conn)
        self.ack(conn, {"method": "unsubscribe", "result": {"channel": "book", "depth": depth, "symbol": symbol},
                        "success": True, "req_id": req_id}, time_in)

    def housekeep(self, now_s: float) -> None:
        heartbeat = b'{"channel":"heartbeat"}'
        for conn in self.conns:
            if conn.state["book"] and now_s - conn.last_out_s >= self.opts.kraken_heartbeat_s:
                conn.send_payload(heartbeat)
                conn.last_out_s = now_s
