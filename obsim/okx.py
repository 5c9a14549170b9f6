"""OKX v5 public: the `books` channel (400 levels) with the seqId / prevSeqId chain.

Reproduced: `seqId` jumps by 1-93 between messages and `prevSeqId` names the previous one; an
update with no changes (`seqId == prevSeqId`) arrives after `keepalive_s` (60 s) without a
depth change; a maintenance reset (fault `reset`) makes `seqId` smaller than `prevSeqId` while
the chain still holds. The checksum is the legacy signed CRC32 over the top 25 levels
(interleaved bid:ask, wire text) in `--okx-checksum legacy` mode, and always 0 in the default
`zero` mode, as OKX has sent since 2026-06-23. Clients keep the connection with the text
`ping` (answered `pong`); a connection with no subscription, or with nothing pushed to it, for
`idle_s` (30 s) is closed; more than 480 subscribe requests in an hour on one connection are
refused (60014). Levels are `[price, size, "0", orders]`, all strings. Subscribing
again to a channel already held re-sends a snapshot (OKX's way to get a fresh one).
"""

from __future__ import annotations

import random
import time
from collections import deque

import orjson

from obsim.book import Instrument, okx_checksum, window, window_diff
from obsim.source import stable_seed
from obsim.venue import COMMON_FAULTS, Market, Venue, pad_json
from obsim.wire import Conn

BOOKS_DEPTH = 400
SEQ_JUMP_MAX = 93
SUBSCRIBES_TRACKED = 10_000          # bounds the per-connection subscribe window


class Okx(Venue):
    name = "okx"
    ws_path = "/ws/v5/public"
    faults = COMMON_FAULTS + ("bad_checksum", "reset", "keepalive")

    def instrument(self, symbol: str) -> Instrument:
        # OKX's strings carry no trailing zeros, and its legacy checksum is over those strings.
        return Instrument(price_decimals=1, size_decimals=8, tick_int=1, minimal_text=True)

    def init_market(self, market: Market) -> None:
        market.state.update(seq=1000, window=None, subs=set(), last_keepalive_s=0.0,
                            rng=random.Random(stable_seed(self.opts.seed, self.name, "seq", market.symbol)))

    def sequence_of(self, market: Market):
        return market.state["seq"]

    # -- rendering ------------------------------------------------------------------------

    def levels_json(self, inst: Instrument, levels) -> str:
        return ",".join(f'["{inst.price_text(p)}","{inst.size_text(q)}","0","{1 + q % 7 if q else 0}"]'
                        for p, q in levels)

    def checksum(self, market: Market) -> int:
        value = okx_checksum(market.inst, market.book) if self.opts.okx_checksum == "legacy" else 0
        if market.bad_checksum_next:
            market.bad_checksum_next -= 1
            value = value + 1 if value != 0 else 123456789
        return value

    def message(self, market: Market, action: str, bids, asks, prev_seq: int, seq: int) -> bytes:
        inst = market.inst
        ts_ms = time.time_ns() // 1_000_000
        return (f'{{"arg":{{"channel":"books","instId":"{market.symbol}"}},"action":"{action}","data":[{{'
                f'"asks":[{self.levels_json(inst, asks)}],"bids":[{self.levels_json(inst, bids)}],'
                f'"ts":"{ts_ms}","checksum":{self.checksum(market)},"prevSeqId":{prev_seq},"seqId":{seq}}}]}}').encode()

    def next_seq(self, market: Market) -> tuple[int, int]:
        prev = market.state["seq"]
        if market.reset_next:
            market.reset_next -= 1
            seq = 1 + market.state["rng"].randrange(0, 5)              # maintenance: seqId restarts low
        else:
            seq = prev + 1 + market.state["rng"].randrange(0, SEQ_JUMP_MAX)
        market.state["seq"] = seq
        return prev, seq

    def snapshot(self, market: Market) -> bytes:
        bids, asks = window(market.book, BOOKS_DEPTH)
        market.state["window"] = (bids, asks)
        self.counters["snapshots_served"] += 1
        payload = self.message(market, "snapshot", list(bids.items()), list(asks.items()), -1, market.state["seq"])
        size_bytes = self.take_oversized()
        return payload if size_bytes is None else pad_json(payload, size_bytes)

    # -- the stream -----------------------------------------------------------------------

    def diff(self, market: Market):
        before = market.state["window"]
        after = window(market.book, BOOKS_DEPTH)
        market.state["window"] = after
        return window_diff(before[0], after[0]), window_diff(before[1], after[1])

    def publish(self, market: Market, changes: list, now_s: float) -> None:
        if not market.state["subs"]:
            market.state["window"] = None
            return
        bids, asks = self.diff(market)
        if not bids and not asks:
            return
        prev, seq = self.next_seq(market)
        self.broadcast(market.state["subs"], self.message(market, "update", bids, asks, prev, seq))

    def hide(self, market: Market, changes: list) -> None:
        if market.state["subs"]:
            self.diff(market)
            self.next_seq(market)

    def keepalive(self, market: Market, now_s: float) -> None:
        """The no-change update: seqId == prevSeqId == the last seqId, no levels."""
        market.state["last_keepalive_s"] = now_s
        seq = market.state["seq"]
        self.broadcast(market.state["subs"], self.message(market, "update", [], [], seq, seq))

    # -- connections ----------------------------------------------------------------------

    def on_open(self, conn: Conn) -> None:
        conn.state["conn_id"] = f"{conn.id:08x}"

    def on_close(self, conn: Conn) -> None:
        for market in self.markets.values():
            market.state["subs"].discard(conn)

    def on_message(self, conn: Conn, message, now_s: float) -> None:
        if message == "ping":
            if now_s >= conn.pongs_muted_until_s:
                self.counters["pings_answered"] += 1
                conn.send_payload(b"pong")
            return
        req = self.parse_client_json(conn, message)
        if req is None:
            return self.error(conn, None, "60012", "Invalid request: not a JSON object")
        op, req_id, args = req.get("op"), req.get("id"), req.get("args")
        if op not in ("subscribe", "unsubscribe"):
            return self.error(conn, req_id, "60012", f"Invalid request: unknown op {op}")
        if not isinstance(args, list) or not all(isinstance(a, dict) for a in args):
            return self.error(conn, req_id, "60012", "Invalid request: args must be a list of objects")
        if op == "subscribe" and not self.admit_subscribe(conn, now_s):
            self.counters["subscribes_refused"] += 1
            return self.error(conn, req_id, "60014", "Requests too frequent.")
        for arg in args:
            market = self.markets.get(arg.get("instId"))
            if arg.get("channel") != "books" or market is None:
                self.error(conn, req_id, "60018",
                           f"Wrong URL or channel:{arg.get('channel')},instId:{arg.get('instId')} doesn't exist.")
                continue
            self.reply(conn, {"event": op, "arg": {"channel": "books", "instId": market.symbol}}, req_id)
            if op == "subscribe":
                self.counters["subscribes"] += 1
                conn.state["subs"].add(market.symbol)
                if not market.state["subs"]:
                    market.state["window"] = None
                market.state["subs"].add(conn)
                conn.send_payload(self.snapshot(market))
            else:
                conn.state["subs"].discard(market.symbol)
                market.state["subs"].discard(conn)

    def admit_subscribe(self, conn: Conn, now_s: float) -> bool:
        """OKX's 480 subscribe requests per hour per connection (flag: --okx-subscribes-per-hour-max)."""
        times = conn.state.setdefault("subscribe_times", deque(maxlen=SUBSCRIBES_TRACKED))
        while times and now_s - times[0] > 3600.0:
            times.popleft()
        if len(times) >= min(self.opts.okx_subscribes_per_hour_max, SUBSCRIBES_TRACKED):
            return False
        times.append(now_s)
        return True

    def reply(self, conn: Conn, obj: dict, req_id) -> None:
        if req_id is not None:
            obj = {"id": req_id, **obj}
        obj["connId"] = conn.state["conn_id"]
        conn.send_payload(orjson.dumps(obj))

    def error(self, conn: Conn, req_id, code: str, msg: str) -> None:
        self.counters["errors_sent"] += 1
        self.reply(conn, {"event": "error", "code": code, "msg": msg}, req_id)

    def housekeep(self, now_s: float) -> None:
        idle_s = self.opts.okx_idle_s
        for conn in list(self.conns):
            silent_s = now_s - (conn.last_out_s if conn.state["subs"] else conn.opened_s)
            if silent_s > idle_s:
                self.close_conn(conn, 4004, "No data received in 30s.", "closes_idle")
        for market in self.markets.values():
            quiet_s = now_s - max(market.last_change_s, market.state["last_keepalive_s"])
            if market.state["subs"] and quiet_s >= self.opts.okx_keepalive_s:
                self.keepalive(market, now_s)

    def inject_special(self, kind, markets, params, now_s) -> None:
        if kind == "keepalive":
            for market in markets:
                if market.state["subs"]:
                    self.keepalive(market, now_s)
            return
        super().inject_special(kind, markets, params, now_s)
