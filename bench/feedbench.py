"""Shared parts of the bench_parse_<exchange>.py scripts (each stays a few lines).

A seeded random walk makes an exchange's messages in memory (`Walk`): a 200-level book, then
updates of 1-10 levels near the top in that exchange's current wire format with a valid
continuity chain (and for Kraken a valid checksum). Each contender consumes the same messages:

- observer: the adapter's `on_message` (parse, sync rules, exact book, checksum, Publish);
- the floor: `orjson.loads` alone (no book at all: nobody can be faster than this);
- cryptofeed-style: orjson, `Decimal` per price and size, into cryptofeed's C `order-book`;
- extra peers a script adds (Kraken: `json.loads(parse_float=str)`, the other exact parse).

One line per contender: µs per message, messages/s, and the ratio to observer.
"""

import random
import time
from decimal import Decimal

import orjson

from observer.book import Book, BookUpdate

SEED = 20261122
MESSAGES = 5000
REPEATS = 3


class Walk:
    """A random book walk producing (bids, asks) text updates; keeps its own book to stay sane."""

    def __init__(self, *, depth_max=0, tick_decimals=1, size_decimals=8, levels=200):
        self.rng = random.Random(SEED)
        self.tick = 10**-tick_decimals
        self.tick_decimals = tick_decimals
        self.size_decimals = size_decimals
        self.mid = 50_000 * 10**tick_decimals
        self.book = Book("walk:X", depth_max=depth_max)
        self.bids0 = [(self.px(self.mid - 1 - i), self.sz()) for i in range(levels)]
        self.asks0 = [(self.px(self.mid + 1 + i), self.sz()) for i in range(levels)]
        self.book.apply(BookUpdate(True, self.bids0, self.asks0))

    def px(self, ticks):
        return f"{ticks / 10**self.tick_decimals:.{self.tick_decimals}f}"

    def sz(self, zero=False):
        if zero:
            return f"{0:.{self.size_decimals}f}"
        return f"{self.rng.randint(1, 10**6) / 10**4:.{self.size_decimals}f}"

    def step(self):
        """One message's (bids, asks); never crosses the walk's own book."""
        rng = self.rng
        self.mid += rng.choice((-1, 0, 0, 1))
        best_bid, _, best_ask, _ = self.book.best()
        scale = 10 ** (-self.book.price_exp - self.tick_decimals)
        bid_ceiling = min(self.mid, best_ask // scale) - 1 if best_ask else self.mid - 1
        ask_floor = max(self.mid, best_bid // scale) + 1 if best_bid else self.mid + 1
        bids, asks = [], []
        for _ in range(rng.randint(1, 10)):
            distance = int(rng.expovariate(1 / 8))
            zero = rng.random() < 0.25
            if rng.random() < 0.5:
                bids.append((self.px(bid_ceiling - distance), self.sz(zero)))
            else:
                asks.append((self.px(ask_floor + distance), self.sz(zero)))
        self.book.apply(BookUpdate(False, bids, asks))
        return bids, asks


def time_consumer(consume, messages):
    consume(messages[: len(messages) // 10])  # warm-up
    best_ns = None
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        consume(messages)
        elapsed = time.perf_counter_ns() - start
        best_ns = elapsed if best_ns is None else min(best_ns, elapsed)
    return best_ns / len(messages) / 1000


def adapter_consumer(make_live_adapter):
    """A consumer feeding the messages to a fresh adapter whose book is already live."""

    def consume(messages):
        adapter = make_live_adapter()
        published = 0
        for data in messages:
            published += len(adapter.on_message(0, data, 2))
        assert published >= len(messages) * 0.9, "the adapter stopped publishing: bench input is wrong"

    return consume


def floor_consumer(messages):
    for data in messages:
        orjson.loads(data)


def cryptofeed_style(levels_of):
    """orjson + Decimal + order-book; `levels_of(msg)` yields (side, price_text, size_text)."""

    def consume(messages):
        from order_book import OrderBook  # here: report() skips the peer when not installed

        book = OrderBook(max_depth=0)
        sides = (book.bids, book.asks)
        for data in messages:
            for side, price_text, size_text in levels_of(orjson.loads(data)):
                price = Decimal(price_text)
                size = Decimal(size_text)
                target = sides[side]
                if size:
                    target[price] = size
                elif price in target:
                    del target[price]
            book.bids.index(0) if len(book.bids) else None

    return consume


def data_levels(msg):
    """(side, price, size) of a message whose `data` holds `b` and `a` (Binance, Bybit)."""
    data = msg["data"]
    for p, s in data["b"]:
        yield 0, p, s
    for p, s in data["a"]:
        yield 1, p, s


def report_against_peers(bench, adapter_name, live, levels_of, messages):
    """The three contenders every exchange has: our adapter (`live()` makes it synced), the
    orjson floor and the cryptofeed-style book (`levels_of` reads a message's levels)."""
    report(bench, [
        (adapter_name, adapter_consumer(live)),
        ("orjson.loads only (floor)", floor_consumer),
        ("orjson+Decimal+order-book (cf)", cryptofeed_style(levels_of)),
    ], messages)


def report(bench, contenders, messages):
    results = []
    for name, consume in contenders:
        try:
            results.append((name, time_consumer(consume, messages)))
        except ImportError as exc:
            print(f"{bench}: {name:34s} skipped ({exc.name} not installed: pip install -e '.[bench]')")
    ours = results[0][1]
    for name, us in results:
        print(f"{bench}: {name:34s} {us:7.2f} us/message {1e6 / us:10.0f} msg/s  x{us / ours:5.2f} vs observer")

