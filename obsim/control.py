"""The control API: HTTPS + JSON on its own port, for tests, benchmarks and people.

Every request is a GET or a body-less POST with its arguments in the query string (the
`websockets` request parser, which serves this port, reads no bodies), and every answer is one
JSON object. Bad arguments get a 400 naming what is wrong; nothing a client sends here can stop
the simulator.

  GET  /info                                       the start-up line again
  GET  /book?exchange=E&symbol=S[&depth=N]         the true book, exact decimal strings, best first
  GET  /counters[?exchange=E]                      connections, subscribes, snapshots, faults, pings...
  POST /pause[?exchange=E]   POST /resume[?exchange=E]
  POST /step?exchange=E[&symbol=S][&count=N]       produce N events now (also while paused);
                                                   answers the events and the messages they sent
  POST /fault?exchange=E&kind=K[&symbol=S][&count=N][&duration_s=X][&...]

Pause exists so a test can stop the stream, let its client drain, and compare the client's book
with `/book` deterministically; `step` then advances the stream by exact amounts.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

from obsim.venue import FaultError, json_response

DEPTH_DEFAULT = 50
STEP_COUNT_MAX = 100_000


class BadRequest(ValueError):
    pass


class Control:
    def __init__(self, sim) -> None:
        self.sim = sim
        self.requests = 0

    def handle(self, ws, request):
        self.requests += 1
        split = urlsplit(request.path)
        args = {k: v[-1] for k, v in parse_qs(split.query).items()}
        route = {
            "/info": self.info, "/book": self.book, "/counters": self.counters,
            "/pause": self.pause, "/resume": self.resume, "/step": self.step, "/fault": self.fault,
        }.get(split.path)
        if route is None:
            return json_response(404, {"error": f"no route {split.path}"})
        try:
            return json_response(200, route(args))
        except (BadRequest, FaultError, ValueError) as exc:      # every bad argument, named
            return json_response(400, {"error": str(exc)})

    def venues(self, args, required: bool = False) -> list:
        name = args.get("exchange")
        if name is None:
            if required:
                raise BadRequest("exchange= is required")
            return list(self.sim.venues.values())
        venue = self.sim.venues.get(name)
        if venue is None:
            raise BadRequest(f"unknown exchange {name!r}; serving {', '.join(self.sim.venues)}")
        return [venue]

    def info(self, args) -> dict:
        return self.sim.endpoints()

    def book(self, args) -> dict:
        venue = self.venues(args, required=True)[0]
        symbol = args.get("symbol", "")
        if symbol not in venue.markets:
            raise BadRequest(f"{venue.name} has no symbol {symbol!r}; it has {', '.join(venue.markets)}")
        depth = self.int_arg(args, "depth", DEPTH_DEFAULT, 1, 1_000_000)
        return venue.true_book(symbol, depth)

    def counters(self, args) -> dict:
        return {venue.name: venue.stats() for venue in self.venues(args)}

    def pause(self, args) -> dict:
        for venue in self.venues(args):
            venue.paused = True
        return {"paused": [v.name for v in self.venues(args)]}

    def resume(self, args) -> dict:
        for venue in self.venues(args):
            venue.paused = False
        return {"resumed": [v.name for v in self.venues(args)]}

    def step(self, args) -> dict:
        venue = self.venues(args, required=True)[0]
        count = self.int_arg(args, "count", 1, 1, STEP_COUNT_MAX)
        symbol = args.get("symbol")
        if symbol is not None and symbol not in venue.markets:
            raise BadRequest(f"{venue.name} has no symbol {symbol!r}")
        markets = [venue.markets[symbol]] if symbol else list(venue.markets.values())
        now_s = time.monotonic()
        produced = 0
        # An event need not send anything: one that leaves the book as it was (a delete of an
        # absent level) is no diff at all for OKX. A test stepping through a gap needs to know.
        sent_before = venue.counters["messages_sent"]
        for market in markets:
            for _ in range(count):
                produced += venue.step_market(market, now_s)
        venue.flush(now_s)
        return {"events": produced, "messages": venue.counters["messages_sent"] - sent_before}

    def fault(self, args) -> dict:
        venue = self.venues(args, required=True)[0]
        kind = args.pop("kind", None)
        if kind is None:
            raise BadRequest("kind= is required")
        symbol = args.pop("symbol", None)
        args.pop("exchange")
        venue.inject(kind, symbol, args)
        venue.flush(time.monotonic())
        return {"injected": kind, "exchange": venue.name, "symbol": symbol}

    @staticmethod
    def int_arg(args, name: str, default: int, low: int, high: int) -> int:
        try:
            value = int(args.get(name, default))
        except ValueError:
            raise BadRequest(f"{name}= must be an integer") from None
        if not low <= value <= high:
            raise BadRequest(f"{name}= must be in [{low}, {high}]")
        return value
