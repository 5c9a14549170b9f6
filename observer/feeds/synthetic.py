"""The synthetic feed: a seeded random walk per symbol, so the whole path runs without a network.

Why it exists: `observer --feed synthetic:BTCUSD,ETHUSD` must show live books before any exchange
adapter works, tests need a feed whose every book is known exactly (same seed, same books), and
benchmarks need a load generator whose rate is a parameter. It is a feed adapter like the
others (sans-IO, no socket, no loom): the shard calls `on_tick(now_ns)` and publishes the books
named by the `Publish` actions it returns.

The walk. Each symbol has a mid price in ticks (price exponent -2, size exponent -4). Bids sit
strictly below the mid and asks strictly above, so the book can never cross. An update either
moves the mid one tick (the level it lands on is deleted from the side it invades, and a level
is added behind it) or sets one level's size at a random distance from the mid (size 0 deletes
it). Updates are applied through the exact `Book` from their decimal text, as a real feed's are.

Rate and bounds: `rate_hz` updates per second per symbol, paced against the clock the caller
passes in. One tick applies at most `updates_per_tick_max` updates per symbol, so a caller that
stalls catches up over a few ticks instead of applying an unbounded burst (the backlog is
counted in `updates_skipped` and dropped, as an exchange feed would be resynced).
"""

from __future__ import annotations

import random

from observer.book import Book, BookUpdate
from observer.feeds.actions import Publish

EXCHANGE = "synthetic"
PRICE_EXP = -2
SIZE_EXP = -4
DEPTH_DEFAULT = 20
UPDATES_PER_TICK_MAX = 64
MID_TICKS_DEFAULT = {"BTCUSD": 5_000_000, "ETHUSD": 300_000}   # 50000.00, 3000.00
MID_TICKS_OTHER = 10_000                                        # 100.00


class SyntheticFeed:
    def __init__(self, symbols, *, rate_hz: float = 100.0, seed: int = 1,
                 depth: int = DEPTH_DEFAULT, updates_per_tick_max: int = UPDATES_PER_TICK_MAX):
        assert rate_hz > 0
        assert depth >= 2
        assert symbols
        self.exchange = EXCHANGE
        self.symbols = tuple(s.upper() for s in symbols)
        self.rate_hz = rate_hz
        self.depth = depth
        self.updates_per_tick_max = updates_per_tick_max
        self.period_ns = max(1, int(1e9 / rate_hz))
        self.books = {s: Book(f"{EXCHANGE}:{s}", depth_max=depth) for s in self.symbols}
        self._rng = random.Random(seed)
        self._mid = {s: MID_TICKS_DEFAULT.get(s, MID_TICKS_OTHER) for s in self.symbols}
        self._next_ns = {s: 0 for s in self.symbols}
        self.update_id = 0
        self.updates_skipped = 0
        self.started = False

    def start(self, now_ns: int) -> list[Publish]:
        """Load a full snapshot into every book; all are then live."""
        for symbol in self.symbols:
            mid = self._mid[symbol]
            bids = [self._level(mid - d) for d in range(1, self.depth + 1)]
            asks = [self._level(mid + d) for d in range(1, self.depth + 1)]
            self.update_id += 1
            self.books[symbol].apply(BookUpdate(True, bids, asks, self.update_id, now_ns))
            self._next_ns[symbol] = now_ns + self.period_ns
        self.started = True
        return [Publish(s) for s in self.symbols]

    def on_tick(self, now_ns: int) -> list[Publish]:
        """Apply the updates due by `now_ns`; returns the books to publish."""
        assert self.started
        actions = []
        for symbol in self.symbols:
            due = (now_ns - self._next_ns[symbol]) // self.period_ns + 1
            if due <= 0:
                continue
            n = min(due, self.updates_per_tick_max)
            self.updates_skipped += due - n
            for _ in range(n):
                self._step(symbol, now_ns)
            self._next_ns[symbol] += due * self.period_ns
            actions.append(Publish(symbol))
        return actions

    def next_deadline_ns(self) -> int:
        return min(self._next_ns.values())

    def _step(self, symbol: str, now_ns: int) -> None:
        rng = self._rng
        mid = self._mid[symbol]
        self.update_id += 1
        if rng.random() < 0.2:
            step = 1 if rng.random() < 0.5 else -1
            update = self._move(mid, step, now_ns)
            self._mid[symbol] = mid + step
        else:
            distance = rng.randrange(1, self.depth + 1)
            size = "0" if rng.random() < 0.1 else None
            if rng.random() < 0.5:
                level = self._level(mid - distance, size)
                update = BookUpdate(False, [level], [], self.update_id, now_ns)
            else:
                level = self._level(mid + distance, size)
                update = BookUpdate(False, [], [level], self.update_id, now_ns)
        self.books[symbol].apply(update)

    def _move(self, mid: int, step: int, now_ns: int) -> BookUpdate:
        """Move the mid by one tick: the new mid's level leaves the side it was on."""
        new_mid = mid + step
        if step > 0:   # the ask at new_mid goes; the old mid becomes a bid level
            return BookUpdate(False, [self._level(mid)], [(_price(new_mid), "0")],
                              self.update_id, now_ns)
        return BookUpdate(False, [(_price(new_mid), "0")], [self._level(mid)],
                          self.update_id, now_ns)

    def _level(self, price_ticks: int, size: str | None = None) -> tuple[str, str]:
        if size is None:
            size = _size(self._rng.randrange(1, 50_000))
        return (_price(price_ticks), size)


def _price(ticks: int) -> str:
    assert ticks > 0
    return f"{ticks // 100}.{ticks % 100:02d}"


def _size(units: int) -> str:
    return f"{units // 10_000}.{units % 10_000:04d}"
