"""What every simulated exchange shares: markets, connections, the tick, faults, counters.

A venue is one exchange protocol on one port. It owns its markets (one true book and one source
per symbol, never shared with another venue: each exchange's book is its own), the set of open
connections, and its counters. The server calls three things on it: `tick` (consume the events
due since the last tick and render them), `flush` (one write per connection), and `housekeep`
(about ten times a second: keepalives, idle and deadline checks). Connections come in through
`serve` (the `websockets` handler) and REST requests through `http`.

Subclasses (one module per exchange) supply the protocol: `on_message` (client JSON in),
`publish` (a change list out, in that exchange's format), `hide` (the same change list
applied but never sent: an injected sequence gap), and optionally REST routes and keepalives.

Faults are armed per venue and optionally per symbol, and are consumed by the code path they
affect (the next event, the next snapshot, the next REST reply). Everything is single-threaded
on one asyncio loop, so no state here needs a lock.
"""

from __future__ import annotations

import abc
import asyncio
import http
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import orjson
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from obsim.book import ASK, BID, Instrument, TrueBook
from obsim.source import CycleSource, RandomWalk, ReplaySource, stable_seed
from obsim.wire import Conn, text_frame

log = logging.getLogger("obsim")
CONNECT_ATTEMPTS_TRACKED = 1000     # bounds the connection-limit window (all limits are below it)
COUNTER_NAMES = (        # always reported, 0 until counted; venues may add more
    "connections", "subscribes", "subscribes_refused", "snapshots_served", "messages_sent",
    "faults_injected", "gaps_injected", "pings_sent", "pongs_received", "pings_answered",
    "closes_rate_limit", "closes_ping_timeout", "closes_idle", "closes_slow_consumer",
    "connects_refused", "bad_client_messages", "errors_sent", "handler_errors",
    "rest_requests", "rest_429", "rest_418")
EVENTS_PER_TICK_MAX = 2000          # a late tick never bursts more than this per symbol
COMMON_FAULTS = ("gap", "disconnect", "stall", "fragment", "garbage", "oversized_snapshot",
                 "ping_deadline")
MID_PRICES = {"BTC": 50000, "ETH": 3000, "SOL": 150, "XRP": 1, "DOGE": 1}
QUOTES = ("USDT", "USDC", "USD", "EUR", "BTC", "ETH")


class FaultError(ValueError):
    """A fault request the venue cannot honour (unknown kind, bad parameter)."""


@dataclass
class Market:
    symbol: str
    inst: Instrument
    book: TrueBook
    source: RandomWalk | CycleSource | ReplaySource
    due: float = 0.0
    events_total: int = 0
    drop_next: int = 0
    bad_checksum_next: int = 0
    reset_next: int = 0
    last_change_s: float = field(default_factory=time.monotonic)
    state: dict = field(default_factory=dict)      # venue-specific: update ids, windows

    def current_book(self) -> TrueBook:
        """The true book as of the last event sent (a lazy source applies its backlog now)."""
        materialize = getattr(self.source, "materialize", None)
        return self.book if materialize is None else materialize(self.book)


def base_asset(symbol: str) -> str:
    plain = symbol.replace("-", "").replace("/", "").upper()
    for quote in QUOTES:
        if plain.endswith(quote) and len(plain) > len(quote):
            return plain[: -len(quote)]
    return plain


def json_response(status: int, obj, headers: tuple = ()) -> Response:
    return body_response(status, orjson.dumps(obj), headers)


def body_response(status: int, body: bytes, headers: tuple = ()) -> Response:
    phrase = http.HTTPStatus(status).phrase
    hdrs = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                    ("Connection", "close"), *headers])
    return Response(status, phrase, hdrs, body)


def number_param(params: dict, name: str, default, kind):
    """A fault parameter as int or float, or a FaultError naming it."""
    try:
        return kind(params.get(name, default))
    except (TypeError, ValueError):
        raise FaultError(f"{name}= must be a number, got {params.get(name)!r}") from None


def pad_json(payload: bytes, size_bytes: int) -> bytes:
    """The same JSON made `size_bytes` long with insignificant whitespace (oversized fault)."""
    if len(payload) >= size_bytes:
        return payload
    return payload[:-1] + b" " * (size_bytes - len(payload)) + payload[-1:]


class Venue(abc.ABC):
    name = "venue"
    ws_path = "/"                        # what the printed ws_url ends with
    faults: tuple[str, ...] = COMMON_FAULTS
    inbound_per_s_max: int | None = None
    lazy_book_ok = False                 # True where nothing renders from the book per event
    connect_window_s = 1.0

    def __init__(self, opts, symbols: list[str], replay: dict | None) -> None:
        self.opts = opts
        self.markets: dict[str, Market] = {}
        self.conns: set[Conn] = set()
        self.counters: Counter = Counter()
        self.paused = False
        self.armed: Counter = Counter()            # venue-wide one-shot faults by kind
        self.fault_params: dict[str, dict] = {}
        self.port = 0
        self.connect_attempts: deque[float] = deque(maxlen=CONNECT_ATTEMPTS_TRACKED)
        self.stamps = None                         # a StampLog (--send-stamps), set by the CLI
        for symbol in symbols:
            self.add_market(symbol, replay)

    # -- set-up ---------------------------------------------------------------------------

    def instrument(self, symbol: str) -> Instrument:
        return Instrument(price_decimals=2, size_decimals=8, tick_int=1)

    def depth_max(self) -> int:
        return self.opts.depth

    def add_market(self, symbol: str, replay: dict | None) -> None:
        if replay is not None:
            inst, initial, events = replay[symbol]
            source = ReplaySource(initial, events, self.depth_max())
        else:
            inst = self.instrument(symbol)
            mid = MID_PRICES.get(base_asset(symbol), 100) * 10 ** inst.price_decimals
            mid = max(mid, 8 * (self.depth_max() + 2) * inst.tick_int)   # room for the whole book
            mid -= mid % inst.tick_int
            size_max_int = 5 * 10 ** inst.size_decimals
            seed = stable_seed(self.opts.seed, self.name, symbol)
            source = RandomWalk(inst, seed, mid, self.depth_max(), size_max_int,
                                changes_per_event=self.opts.changes_per_event)
            if self.lazy_book_ok and self.opts.precompute_events > 0:
                source = CycleSource(source, self.opts.precompute_events)
        market = Market(symbol, inst, TrueBook(), source)
        source.seed_book(market.book)
        market.book.check()
        self.markets[symbol] = market
        self.init_market(market)

    def init_market(self, market: Market) -> None:
        """Venue-specific per-market state (update ids, windows)."""

    # -- the stream ---------------------------------------------------------------------

    def tick(self, now_s: float, dt_s: float) -> None:
        if self.paused:
            return
        for market in self.markets.values():
            market.due += self.opts.rate * dt_s
            count = min(int(market.due), EVENTS_PER_TICK_MAX)
            market.due = min(market.due - count, 1.0)
            self.step_events(market, count, now_s)

    def step_events(self, market: Market, count: int, now_s: float) -> None:
        """The market's next `count` events, one at a time; a venue may send them at once."""
        for _ in range(count):
            if not self.step_market(market, now_s):
                break

    def step_market(self, market: Market, now_s: float) -> bool:
        changes = market.source.step(market.book)
        if changes is None:
            return False
        market.events_total += 1
        market.last_change_s = now_s
        if market.drop_next:
            market.drop_next -= 1
            self.counters["gaps_injected"] += 1
            self.hide(market, changes)
        else:
            self.publish(market, changes, now_s)
        return True

    @abc.abstractmethod
    def publish(self, market: Market, changes: list, now_s: float) -> None:
        raise NotImplementedError

    @abc.abstractmethod
    def hide(self, market: Market, changes: list) -> None:
        raise NotImplementedError

    def flush(self, now_s: float) -> None:
        for conn in list(self.conns):
            if conn.closed:
                continue
            if not conn.flush(now_s) and conn.close_reason.startswith("slow"):
                self.counters["closes_slow_consumer"] += 1      # counted once: closed from now on

    def housekeep(self, now_s: float) -> None:
        """Keepalives and deadlines; subclasses extend."""

    def subscribers(self, key) -> list[Conn]:
        return [c for c in self.conns if key in c.state.get("subs", ())]

    def broadcast(self, conns, payload: bytes, stamp_key=None) -> None:
        """Send one message to `conns`; `stamp_key` (symbol bytes, update id): record its send
        time in the stamp log, if obsim keeps one (obsim/stamps.py)."""
        frame = text_frame(payload)
        for conn in conns:
            conn.send(frame, payload, stamp_key)
            self.counters["messages_sent"] += 1

    # -- connections ----------------------------------------------------------------------

    async def serve(self, ws) -> None:
        conn = Conn(ws, self.opts.send_bytes_max)
        conn.stamps = self.stamps
        conn.state["subs"] = set()
        self.conns.add(conn)
        self.counters["connections"] += 1
        try:
            self.on_open(conn)
            conn.flush(time.monotonic())
            async for message in ws:
                now_s = time.monotonic()
                if self.over_inbound_limit(conn, now_s):
                    conn.closed = True
                    await ws.close(1008, "Too many requests")
                    break
                try:
                    self.on_message(conn, message, now_s)
                except Exception:                  # a bug here must not look like bad input
                    self.counters["handler_errors"] += 1
                    log.exception("%s: handling %r failed", self.name, message[:200])
                    await ws.close(1011, "internal error")
                    break
                conn.flush(now_s)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            self.conns.discard(conn)
            self.on_close(conn)

    def over_inbound_limit(self, conn: Conn, now_s: float) -> bool:
        count = conn.count_inbound(now_s)
        if self.inbound_per_s_max is None or count <= self.inbound_per_s_max:
            return False
        self.counters["closes_rate_limit"] += 1
        return True

    def on_open(self, conn: Conn) -> None:
        pass

    def on_close(self, conn: Conn) -> None:
        pass

    @abc.abstractmethod
    def on_message(self, conn: Conn, message, now_s: float) -> None:
        raise NotImplementedError

    def parse_client_json(self, conn: Conn, message):
        """Client JSON, or None after counting it (the caller answers in the exchange's way)."""
        try:
            obj = orjson.loads(message)
        except orjson.JSONDecodeError:
            self.counters["bad_client_messages"] += 1
            return None
        if not isinstance(obj, dict):
            self.counters["bad_client_messages"] += 1
            return None
        return obj

    def close_conn(self, conn: Conn, code: int, reason: str, counter: str) -> None:
        if conn.closed:
            return
        self.counters[counter] += 1
        conn.closed = True
        asyncio.ensure_future(conn.ws.close(code, reason))

    def http(self, ws, request) -> Response | None:
        """REST routes; None lets the WebSocket handshake proceed (WS paths only)."""
        path = request.path.partition("?")[0]
        if self.is_ws_path(path):
            return self.admit_connection()
        return json_response(404, {"error": f"no route {path}"})

    def admit_connection(self) -> Response | None:
        """The exchange's connection-attempt limit: past it, the handshake gets a 429."""
        attempts_max, window_s = self.connect_limit()
        if attempts_max <= 0:
            return None
        now_s = time.monotonic()
        attempts = self.connect_attempts
        while attempts and now_s - attempts[0] > window_s:
            attempts.popleft()
        if len(attempts) >= attempts_max:
            self.counters["connects_refused"] += 1
            retry_s = max(1, round(window_s - (now_s - attempts[0])))
            return json_response(429, {"error": f"more than {attempts_max} connections in {window_s:g} s"},
                                 (("Retry-After", str(retry_s)),))
        attempts.append(now_s)
        return None

    def connect_limit(self) -> tuple[int, float]:
        """(attempts, window_s) from the `--<exchange>-connects-max` flag; 0 = unlimited."""
        return (getattr(self.opts, f"{self.name.replace('-', '_')}_connects_max", 0),
                self.connect_window_s)

    def is_ws_path(self, path: str) -> bool:
        return path == self.ws_path

    # -- faults ---------------------------------------------------------------------------

    def inject(self, kind: str, symbol: str | None, params: dict) -> None:
        if kind not in self.faults:
            raise FaultError(f"{self.name} has no fault {kind!r}; it has {', '.join(self.faults)}")
        if symbol is not None and symbol not in self.markets:
            raise FaultError(f"{self.name} has no symbol {symbol!r}")
        markets = [self.markets[symbol]] if symbol else list(self.markets.values())
        count = number_param(params, "count", 1, int)
        duration_s = number_param(params, "duration_s", 2.0, float)
        for name in ("size_bytes", "fragment_bytes", "retry_after_s", "timeout_s"):
            if name in params:
                number_param(params, name, 0, float)
        if count < 1 or not 0 < duration_s <= 3600:
            raise FaultError("count must be >= 1 and 0 < duration_s <= 3600")
        self.counters["faults_injected"] += 1
        now_s = time.monotonic()
        if kind == "gap":
            for market in markets:
                market.drop_next += count
        elif kind == "disconnect":
            for conn in list(self.conns):
                conn.abort("disconnect fault")
        elif kind == "stall":
            for conn in self.conns:
                conn.stalled_until_s = now_s + duration_s
        elif kind == "fragment":
            for conn in self.conns:
                conn.fragment_left += count
                conn.fragment_bytes = int(params.get("fragment_bytes", conn.fragment_bytes))
        elif kind == "garbage":
            self.broadcast(list(self.conns), b'{"garbage": \x7f not json ]]')
        elif kind == "oversized_snapshot":
            self.armed[kind] += count
            self.fault_params[kind] = {"size_bytes": int(params.get("size_bytes", 8 << 20))}
        elif kind == "bad_checksum":
            for market in markets:
                market.bad_checksum_next += count
        elif kind == "reset":
            for market in markets:
                market.reset_next += count
        else:
            self.inject_special(kind, markets, params, now_s)

    def inject_special(self, kind: str, markets: list[Market], params: dict, now_s: float) -> None:
        """Exchange-specific faults (ping_deadline, REST errors, keepalives, shutdown)."""
        if kind == "ping_deadline":
            for conn in self.conns:
                conn.pongs_muted_until_s = now_s + float(params.get("duration_s", 2.0))
            return
        raise FaultError(f"{self.name}: fault {kind!r} not implemented")

    def take_oversized(self) -> int | None:
        """Bytes to pad the next snapshot to, if an oversized-snapshot fault is armed."""
        if not self.armed["oversized_snapshot"]:
            return None
        self.armed["oversized_snapshot"] -= 1
        return self.fault_params["oversized_snapshot"]["size_bytes"]

    # -- control ----------------------------------------------------------------------------

    def true_book(self, symbol: str, depth: int | None) -> dict:
        market = self.markets[symbol]
        inst, book = market.inst, market.current_book()
        return {
            "exchange": self.name,
            "symbol": symbol,
            "bids": [[inst.price_text(p), inst.size_text(q)] for p, q in book.top(BID, depth)],
            "asks": [[inst.price_text(p), inst.size_text(q)] for p, q in book.top(ASK, depth)],
            "bid_levels": book.depth(BID),
            "ask_levels": book.depth(ASK),
            "events": market.events_total,
            "sequence": self.sequence_of(market),
            "paused": self.paused,
        }

    def sequence_of(self, market: Market):
        return None

    def stats(self) -> dict:
        out = dict.fromkeys(COUNTER_NAMES, 0)
        out.update(self.counters)
        out["connections_open"] = len(self.conns)
        out["paused"] = self.paused
        return out
