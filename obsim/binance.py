"""Binance spot and USD-M futures: diff depth streams plus REST depth snapshots.

Spot ids are contiguous (`U == previous u + 1`); futures ids jump, and only `pu == previous u`
links events, so the futures venue draws random gaps between events that are not gaps (the trap
docs/EXCHANGES.md section 1b warns about). The REST snapshot's `lastUpdateId` is the last event
applied to the true book when the request is served, so a client that buffers from its connect and
drops `u <= lastUpdateId` (futures `u < lastUpdateId`) syncs exactly.

Limits enforced as Binance does: more than `inbound_per_s_max` client messages in a second
closes the connection (5 spot, 10 futures); the server pings every `ping_interval_s` (20 s spot,
180 s futures) and drops a connection that has not answered within `pong_timeout_s` (60 s, 600 s);
a connection is closed at `lifetime_s` (24 h); REST weight is counted per minute (6000 spot,
2400 futures) in a sliding window, with 429 + Retry-After (until the window frees) past it,
and 418 (banned for `ban_s`) for a client that keeps asking during a Retry-After (requests
arriving within `retry_grace_s` of the 429 were on their way before the client could read it:
refused with 429 again, not banned); a `rest_stall` fault holds the next reply for `duration_s`
(the connection open, nothing sent), so a client's other symbols must not wait on it. Each limit has a command-line flag so tests can scale time.

`/api/v3/exchangeInfo` (`/fapi/v1/exchangeInfo`) lists the served symbols with their tick and
lot sizes, which clients such as cryptofeed load before anything else.

Frames are rendered once per event (bare payload, then one combined wrapper per stream name)
and the same bytes go to every subscriber: this is the venue the ingest benchmark drives hard.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson

from obsim.book import ASK, BID, Instrument
from obsim.framecycle import ID_END, ID_FIRST, FrameCycle, span_ids
from obsim.source import CycleSource, stable_seed
from obsim.venue import COMMON_FAULTS, Market, Venue, base_asset, body_response, json_response, pad_json
from obsim.wire import Conn, text_frame

HISTORY_LEN = 10                  # snapshots kept for the "snapshot older than the stream" fault
HISTORY_EVERY_S = 0.5


class BinanceSpot(Venue):
    name = "binance"
    ws_path = ""                                  # the base; clients append /ws/... or /stream
    connect_window_s = 300.0
    faults = COMMON_FAULTS + ("rest_429", "rest_418", "rest_stall", "stale_snapshot", "server_shutdown")
    rest_path = "/api/v3/depth"
    info_path = "/api/v3/exchangeInfo"
    futures = False
    lazy_book_ok = True

    def __init__(self, opts, symbols, replay) -> None:
        prefix = "binance_futures" if self.futures else "binance"
        self.inbound_per_s_max = getattr(opts, f"{prefix}_inbound_per_s")
        self.ping_interval_s = getattr(opts, f"{prefix}_ping_interval_s")
        self.pong_timeout_s = getattr(opts, f"{prefix}_pong_timeout_s")
        self.lifetime_s = getattr(opts, f"{prefix}_lifetime_s")
        self.rest_weight_max = getattr(opts, f"{prefix}_rest_weight_max")
        self.rest_window_s = getattr(opts, f"{prefix}_rest_window_s")
        self.ban_s = opts.binance_ban_s
        self.rest_log: deque[tuple[float, int]] = deque(maxlen=100_000)
        self.retry_until_s = 0.0
        self.refused_at_s = float("-inf")
        self.retry_grace_s = opts.binance_retry_grace_s
        self.banned_until_s = 0.0
        self.history_due_s = 0.0
        super().__init__(opts, symbols, replay)

    def instrument(self, symbol: str) -> Instrument:
        if self.futures:
            return Instrument(price_decimals=2, size_decimals=3, tick_int=10)
        # BTCUSDT's filters: tick 0.01, lot 0.00001, both sent with 8 decimals
        return Instrument(price_decimals=8, size_decimals=8, tick_int=10 ** 6, lot_int=10 ** 3)

    def init_market(self, market: Market) -> None:
        # frames of a precomputed cycle need ids of a fixed width (obsim/framecycle.py)
        market.state["u"] = ID_FIRST if self.frames_ok(market) else 1_000_000
        market.state["rng"] = random.Random(stable_seed(self.opts.seed, self.name, "ids", market.symbol))
        market.state["history"] = deque(maxlen=HISTORY_LEN)
        # the seeded book is the first kept state: a stale_snapshot right after start-up
        # must not depend on whether the housekeeper has run yet
        market.state["history"].append((market.state["u"], market.current_book().copy()))
        market.state["subs"] = {}                 # conn -> list of stream names

    def sequence_of(self, market: Market):
        return market.state["u"]

    # -- the stream -----------------------------------------------------------------------

    def next_ids(self, market: Market, n_changes: int) -> tuple[int, int, int]:
        """(U, u, pu) of the next event; futures ids are not contiguous."""
        prev_u = market.state["u"]
        if self.futures:
            rng = market.state["rng"]
            first = prev_u + 1 + rng.randrange(0, 40)
            last = first + rng.randrange(0, 3 * n_changes + 1)
        else:
            first = prev_u + 1
            last = first + max(n_changes, 1) - 1
        market.state["u"] = last
        return first, last, prev_u

    def hide(self, market: Market, changes: list) -> None:
        self.next_ids(market, len(changes))

    def publish(self, market: Market, changes: list, now_s: float) -> None:
        first, last, prev_u = self.next_ids(market, len(changes))
        subs = market.state["subs"]
        if not subs:
            return
        bids, asks = self.render_levels(market, changes)
        rendered: dict[tuple[bool, str | None], tuple[bytes, bytes]] = {}
        for conn, names in subs.items():
            micros = conn.state["micros"]
            for name in names:
                key = (micros, name if conn.state["combined"] else None)
                frame = rendered.get(key)
                if frame is None:
                    data = self.event_json(market, first, last, prev_u, bids, asks, micros)
                    payload = b'{"stream":"%s","data":%s}' % (name.encode(), data) if key[1] else data
                    frame = rendered[key] = (text_frame(payload), payload)
                conn.send(*frame)
                self.counters["messages_sent"] += 1

    def frames_ok(self, market: Market) -> bool:
        """Whether this market's events may go out as precomputed frames (framecycle.py):
        spot (futures ids jump at random) from a precomputed cycle."""
        return not self.futures and isinstance(market.source, CycleSource)

    def step_events(self, market: Market, count: int, now_s: float) -> None:
        """A precomputed cycle's events as precomputed frames, a batch per connection; one by
        one where a fault needs them so (a gap, a fragmented frame) or ids outgrow their width."""
        subs = market.state["subs"]
        if (not self.frames_ok(market) or market.drop_next or market.state["u"] < ID_FIRST
                or any(conn.fragment_left for conn in subs)):
            return super().step_events(market, count, now_s)
        widths = self.cycle_widths(market)
        if market.state["u"] + count * int(widths.max()) >= ID_END:
            return super().step_events(market, count, now_s)
        market.events_total += count
        market.last_change_s = now_s
        now_us = time.time_ns() // 1000
        for start, stop in market.source.advance(market.book, count):
            first, last = span_ids(widths, start, stop, market.state["u"])
            market.state["u"] = int(last[-1])
            batches: dict = {}
            for conn, names in subs.items():
                micros = conn.state["micros"]
                for name in names:
                    key = (micros, name if conn.state["combined"] else None)
                    if key not in batches:
                        batches[key] = self.frame_cycle(market, key).take(
                            start, stop, first, last, now_us if micros else now_us // 1000)
                    conn.send(batches[key])
                    self.counters["messages_sent"] += stop - start

    def cycle_widths(self, market: Market) -> np.ndarray:
        """Ids each cycle event takes (its changes, at least 1), as `next_ids` counts them."""
        widths = market.state.get("widths")
        if widths is None:
            widths = market.state["widths"] = np.array(
                [max(len(event), 1) for event in market.source.events], np.int64)
        return widths

    def frame_cycle(self, market: Market, key: tuple[bool, str | None]) -> FrameCycle:
        """The cycle rendered as one stream variant's frames (built at its first use)."""
        cycles = market.state.setdefault("frame_cycles", {})
        if key not in cycles:
            micros, name = key
            events = market.source.events

            def render(index, first, last, event_ts):
                bids, asks = self.render_levels(market, events[index], index)
                data = self.event_payload(market, first, last, first - 1, bids, asks, event_ts)
                return b'{"stream":"%s","data":%s}' % (name.encode(), data) if name else data

            cycles[key] = FrameCycle(len(events), render, micros)
        return cycles[key]

    def render_levels(self, market: Market, changes: list, index: int | None = None) -> tuple[str, str]:
        """The "b" and "a" arrays' insides; cached per event when the source is a cycle."""
        if index is None:
            index = getattr(market.source, "index", None)
        cache = market.state.setdefault("render", {})
        if index is not None and index in cache:
            return cache[index]
        inst = market.inst
        final = {(s, p): q for s, p, q in changes}        # Binance sends each price once per event
        bids = ",".join(f'["{inst.price_text(p)}","{inst.size_text(q)}"]' for (s, p), q in final.items() if s == BID)
        asks = ",".join(f'["{inst.price_text(p)}","{inst.size_text(q)}"]' for (s, p), q in final.items() if s == ASK)
        if index is not None:
            cache[index] = (bids, asks)
        return bids, asks

    def event_json(self, market, first, last, prev_u, bids, asks, micros) -> bytes:
        now_us = time.time_ns() // 1000
        event_ts = now_us if micros else now_us // 1000
        return self.event_payload(market, first, last, prev_u, bids, asks, event_ts)

    def event_payload(self, market, first, last, prev_u, bids, asks, event_ts) -> bytes:
        if self.futures:
            head = f'"E":{event_ts},"T":{event_ts},"s":"{market.symbol}","U":{first},"u":{last},"pu":{prev_u}'
        else:
            head = f'"E":{event_ts},"s":"{market.symbol}","U":{first},"u":{last}'
        return f'{{"e":"depthUpdate",{head},"b":[{bids}],"a":[{asks}]}}'.encode()

    # -- connections ----------------------------------------------------------------------

    def is_ws_path(self, path: str) -> bool:
        return path == "/stream" or path == "/ws" or path.startswith("/ws/")

    def on_open(self, conn: Conn) -> None:
        split = urlsplit(conn.path)
        query = parse_qs(split.query)
        conn.state["micros"] = query.get("timeUnit", [""])[0].upper() == "MICROSECOND"
        conn.state["combined"] = split.path == "/stream"
        names = query.get("streams", [""])[0].split("/") if conn.state["combined"] else split.path[4:].split("/")
        for name in filter(None, names):
            self.subscribe_stream(conn, name)
        conn.state["keepalive"] = asyncio.ensure_future(self.keepalive(conn))

    def on_close(self, conn: Conn) -> None:
        for market in self.markets.values():
            market.state["subs"].pop(conn, None)
        task = conn.state.get("keepalive")
        if task is not None:
            task.cancel()

    def stream_market(self, name: str) -> Market | None:
        symbol, _, kind = name.partition("@")
        market = self.markets.get(symbol.upper())
        allowed = ("depth", "depth@100ms", "depth@250ms", "depth@500ms") if self.futures else ("depth", "depth@100ms")
        return market if kind in allowed and symbol == symbol.lower() else None

    def subscribe_stream(self, conn: Conn, name: str) -> bool:
        market = self.stream_market(name)
        if market is None:
            return False
        if len(conn.state["subs"]) >= self.opts.binance_streams_max:
            return False
        names = market.state["subs"].setdefault(conn, [])
        if name not in names:
            names.append(name)
            conn.state["subs"].add(name)
            self.counters["subscribes"] += 1
        return True

    def on_message(self, conn: Conn, message, now_s: float) -> None:
        req = self.parse_client_json(conn, message)
        if req is None:
            return self.reply(conn, {"error": {"code": 3, "msg": "Invalid JSON: expected an object"}, "id": None})
        req_id, method, params = req.get("id"), req.get("method"), req.get("params", [])
        if not isinstance(params, list):
            return self.reply(conn, {"error": {"code": 1, "msg": "Invalid value type: expected list"}, "id": req_id})
        if method == "SUBSCRIBE":
            bad = [name for name in params if not isinstance(name, str) or not self.subscribe_stream(conn, name)]
            if bad:
                return self.reply(conn, {"error": {"code": 2, "msg": f"Invalid request: unknown stream {bad[0]} "
                                                   f"or over {self.opts.binance_streams_max} streams"}, "id": req_id})
            return self.reply(conn, {"result": None, "id": req_id})
        if method == "UNSUBSCRIBE":
            for name in params:
                market = self.stream_market(str(name))
                if market is not None and name in market.state["subs"].get(conn, []):
                    market.state["subs"][conn].remove(name)
                    conn.state["subs"].discard(name)
            return self.reply(conn, {"result": None, "id": req_id})
        if method == "LIST_SUBSCRIPTIONS":
            return self.reply(conn, {"result": sorted(conn.state["subs"]), "id": req_id})
        if method == "SET_PROPERTY" and len(params) == 2 and params[0] == "combined":
            conn.state["combined"] = bool(params[1])
            return self.reply(conn, {"result": None, "id": req_id})
        if method == "GET_PROPERTY" and params == ["combined"]:
            return self.reply(conn, {"result": conn.state["combined"], "id": req_id})
        self.reply(conn, {"error": {"code": 2, "msg": f"Invalid request: method {method!r}"}, "id": req_id})

    def reply(self, conn: Conn, obj) -> None:
        conn.send_payload(orjson.dumps(obj))

    async def keepalive(self, conn: Conn) -> None:
        while not conn.closed:
            await asyncio.sleep(self.ping_interval_s)
            await self.ping_once(conn, self.pong_timeout_s)

    async def ping_once(self, conn: Conn, timeout_s: float) -> None:
        """Ping and drop the connection if no pong comes within timeout_s (Binance's rule)."""
        try:
            waiter = await conn.ws.ping()
        except Exception:                       # already closing: nothing to enforce
            return
        self.counters["pings_sent"] += 1
        try:
            await asyncio.wait_for(waiter, timeout_s)
            self.counters["pongs_received"] += 1
        except asyncio.TimeoutError:
            if not conn.closed:
                self.counters["closes_ping_timeout"] += 1
                conn.abort("pong timeout")
        except Exception:
            pass

    def housekeep(self, now_s: float) -> None:
        for conn in list(self.conns):
            if now_s - conn.opened_s > self.lifetime_s:
                self.close_conn(conn, 1000, "connection lifetime reached", "closes_lifetime")
        if now_s >= self.history_due_s:
            self.history_due_s = now_s + HISTORY_EVERY_S
            for market in self.markets.values():
                market.state["history"].append((market.state["u"], market.current_book().copy()))

    def inject_special(self, kind, markets, params, now_s) -> None:
        count = int(params.get("count", 1))
        if kind == "ping_deadline":
            timeout_s = float(params.get("timeout_s", 1.0))
            for conn in list(self.conns):
                asyncio.ensure_future(self.ping_once(conn, timeout_s))
        elif kind in ("rest_429", "rest_418", "rest_stall", "stale_snapshot"):
            self.armed[kind] += count
            self.fault_params[kind] = params
        elif kind == "server_shutdown":
            self.server_shutdown(float(params.get("duration_s", 0.5)))
        else:
            super().inject_special(kind, markets, params, now_s)

    def server_shutdown(self, close_after_s: float) -> None:
        event_ms = time.time_ns() // 1_000_000
        bare = b'{"e":"serverShutdown","E":%d}' % event_ms
        for conn in list(self.conns):
            combined = conn.state["combined"]
            conn.send_payload(b'{"stream":"!serverShutdown","data":%s}' % bare if combined else bare)
            asyncio.get_running_loop().call_later(close_after_s, conn.abort, "server shutdown")

    # -- REST -----------------------------------------------------------------------------

    def http(self, ws, request):
        split = urlsplit(request.path)
        if split.path == self.info_path:
            return self.exchange_info()
        if split.path != self.rest_path:
            return super().http(ws, request)
        self.counters["rest_requests"] += 1
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        now_s = time.monotonic()
        refused = self.refuse_rest(now_s)
        if refused is not None:
            return refused
        market = self.markets.get(query.get("symbol", ""))
        if market is None:
            return json_response(400, {"code": -1121, "msg": "Invalid symbol."})
        limit = self.parse_limit(query.get("limit"))
        if limit is None:
            return json_response(400, {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."})
        used = self.charge_weight(now_s, self.weight_of(limit))
        if used > self.rest_weight_max:
            return self.too_many(now_s, "Too much request weight used", self.window_frees_s(now_s))
        if self.armed["rest_stall"]:
            self.armed["rest_stall"] -= 1
            delay_s = float(self.fault_params["rest_stall"].get("duration_s", 2.0))
            return self.snapshot_later(market, limit, used, delay_s)
        return self.snapshot_response(market, limit, used)

    async def snapshot_later(self, market: Market, limit: int, used: int, delay_s: float):
        """A stalled REST reply: nothing for delay_s, then the book as it is by then."""
        await asyncio.sleep(delay_s)
        return self.snapshot_response(market, limit, used)

    def snapshot_response(self, market: Market, limit: int, used: int):
        self.counters["snapshots_served"] += 1
        body = self.snapshot_body(market, limit)
        size_bytes = self.take_oversized()
        if size_bytes is not None:
            body = pad_json(body, size_bytes)
        return self.raw_response(body, used)

    def exchange_info(self):
        """`exchangeInfo` for the served symbols: what clients such as cryptofeed load first."""
        self.counters["rest_requests"] += 1
        now_s = time.monotonic()
        refused = self.refuse_rest(now_s)
        if refused is not None:
            return refused
        used = self.charge_weight(now_s, 1 if self.futures else 20)
        if used > self.rest_weight_max:
            return self.too_many(now_s, "Too much request weight used")
        symbols = [self.symbol_info(market) for market in self.markets.values()]
        obj = {"timezone": "UTC", "serverTime": time.time_ns() // 1_000_000, "rateLimits": [], "symbols": symbols}
        return self.raw_response(orjson.dumps(obj), used)

    def symbol_info(self, market: Market) -> dict:
        inst = market.inst
        base = base_asset(market.symbol)
        info = {"symbol": market.symbol, "status": "TRADING", "baseAsset": base,
                "quoteAsset": market.symbol[len(base):], "baseAssetPrecision": inst.size_decimals,
                "quotePrecision": inst.price_decimals, "isSpotTradingAllowed": not self.futures,
                "isMarginTradingAllowed": False,
                "filters": [{"filterType": "PRICE_FILTER", "minPrice": inst.price_text(inst.tick_int),
                             "maxPrice": inst.price_text(10 ** (inst.price_decimals + 7)),
                             "tickSize": inst.price_text(inst.tick_int)},
                            {"filterType": "LOT_SIZE", "minQty": inst.size_text(inst.lot_int),
                             "maxQty": inst.size_text(10 ** (inst.size_decimals + 5)),
                             "stepSize": inst.size_text(inst.lot_int)}]}
        if self.futures:
            info.update(contractType="PERPETUAL", contractStatus="TRADING", pricePrecision=inst.price_decimals,
                        quantityPrecision=inst.size_decimals)
        return info

    def raw_response(self, body: bytes, used: int):
        return body_response(200, body, (("X-MBX-USED-WEIGHT-1M", str(used)),))

    def refuse_rest(self, now_s: float):
        """Faults first, then the ban and the Retry-After window, as Binance escalates."""
        if self.armed["rest_418"]:
            self.armed["rest_418"] -= 1
            self.banned_until_s = now_s + float(self.fault_params["rest_418"].get("retry_after_s", self.ban_s))
        if now_s < self.banned_until_s:
            self.counters["rest_418"] += 1
            retry_s = max(1, round(self.banned_until_s - now_s))
            return json_response(418, {"code": -1003, "msg": "Way too many requests; IP banned."},
                                 (("Retry-After", str(retry_s)),))
        if self.armed["rest_429"]:
            self.armed["rest_429"] -= 1
            self.retry_until_s = 0.0                        # a refusal of its own
            return self.too_many(now_s, "Too many requests (fault)",
                                 float(self.fault_params["rest_429"].get("retry_after_s", 1)))
        if now_s < self.retry_until_s:
            if now_s - self.refused_at_s < self.retry_grace_s:
                # on its way before the client could have read the 429: refused, not banned
                return self.too_many(now_s, "Too many requests (in flight at the 429)")
            self.banned_until_s = now_s + self.ban_s       # asked again during Retry-After
            return self.refuse_rest(now_s)
        return None

    def too_many(self, now_s: float, msg: str, wait_s: float = 1.0):
        self.counters["rest_429"] += 1
        if now_s >= self.retry_until_s:
            self.refused_at_s = now_s                       # a new refusal: its grace starts
        self.retry_until_s = max(self.retry_until_s, now_s + wait_s)
        retry_s = max(1, math.ceil(self.retry_until_s - now_s))  # never early: that is a ban
        return json_response(429, {"code": -1003, "msg": msg}, (("Retry-After", str(retry_s)),))

    def parse_limit(self, text: str | None) -> int | None:
        default = 500 if self.futures else 100
        try:
            limit = default if text is None else int(text)
        except ValueError:
            return None
        if self.futures:
            return limit if limit in (5, 10, 20, 50, 100, 500, 1000) else None
        return limit if 1 <= limit <= 5000 else None

    def weight_of(self, limit: int) -> int:
        if self.futures:
            return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250

    def charge_weight(self, now_s: float, weight: int) -> int:
        """Weight used in the sliding window, this request included (a refused one counts)."""
        while self.rest_log and now_s - self.rest_log[0][0] >= self.rest_window_s:
            self.rest_log.popleft()
        self.rest_log.append((now_s, weight))
        return sum(w for _, w in self.rest_log)

    def window_frees_s(self, now_s: float) -> float:
        """Seconds until the used weight is back under the limit (what Retry-After says)."""
        used = sum(w for _, w in self.rest_log)
        wait_s = 1.0
        for sent_s, weight in self.rest_log:
            if used <= self.rest_weight_max:
                break
            used -= weight
            wait_s = sent_s + self.rest_window_s - now_s
        return max(1.0, wait_s)

    def snapshot_body(self, market: Market, limit: int) -> bytes:
        update_id, book = market.state["u"], market.current_book()
        if self.armed["stale_snapshot"] and market.state["history"]:
            self.armed["stale_snapshot"] -= 1
            update_id, book = market.state["history"][0]
        inst = market.inst
        obj = {"lastUpdateId": update_id}
        if self.futures:
            now_ms = time.time_ns() // 1_000_000
            obj.update(E=now_ms, T=now_ms)
        obj["bids"] = [[inst.price_text(p), inst.size_text(q)] for p, q in book.top(BID, limit)]
        obj["asks"] = [[inst.price_text(p), inst.size_text(q)] for p, q in book.top(ASK, limit)]
        return orjson.dumps(obj)


class BinanceFutures(BinanceSpot):
    name = "binance-futures"
    rest_path = "/fapi/v1/depth"
    info_path = "/fapi/v1/exchangeInfo"
    futures = True
