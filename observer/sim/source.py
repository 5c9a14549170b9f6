"""Where the simulator's book changes come from: a seeded random walk, or a recording.

A source owns nothing but a position: `step(book)` decides the next event's level changes,
applies them to the exchange's true book, and returns them in application order as
`[(side, price_int, size_int), ...]` (size 0 = delete). The venue then renders that list in its
exchange's format. Both sources keep the book uncrossed and no deeper than `depth_max` per side
by emitting explicit deletes, so every venue's stream fully describes its true book.

The random walk is seeded per (seed, exchange, symbol) with a stable hash, so two runs with the
same seed produce the same books, and the rate only decides how fast the sequence is consumed.
It moves a mid price by whole ticks, deletes levels the mid crosses, and changes 1-3 levels
near the top (geometric distance), sometimes writing one price twice in one event (Kraken sends
that; every client must process levels in wire order).

The recordings (real 2021-2022 traffic, older formats) are converted by `replay.py` into the
same change lists; `ReplaySource` plays them once and then goes quiet.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

from observer.sim.book import ASK, BID, Instrument, TrueBook

Change = tuple[int, int, int]


def stable_seed(seed: int, *names: str) -> int:
    return zlib.crc32("/".join((str(seed),) + names).encode())


class RandomWalk:
    """A seeded random-walk book: mid moves by ticks, sizes change near the top."""

    def __init__(self, inst: Instrument, seed: int, mid_price_int: int, depth_max: int,
                 size_max_int: int, duplicate_p: float = 0.05, move_p: float = 0.1) -> None:
        assert depth_max >= 2
        assert mid_price_int > (depth_max + 2) * inst.tick_int * 4
        self.inst = inst
        self.rng = random.Random(seed)
        self.mid_int = mid_price_int
        self.depth_max = depth_max
        self.size_max_int = size_max_int
        self.duplicate_p = duplicate_p
        self.move_p = move_p

    def seed_book(self, book: TrueBook) -> None:
        """Fill both sides to depth_max levels, one level per tick from the mid."""
        tick = self.inst.tick_int
        for k in range(1, self.depth_max + 1):
            book.set(BID, self.mid_int - k * tick, self._size())
            book.set(ASK, self.mid_int + k * tick, self._size())

    def step(self, book: TrueBook) -> list[Change]:
        changes: list[Change] = []
        if self.rng.random() < self.move_p:
            self._move_mid(book, changes)
        for _ in range(1 + self.rng.randrange(3)):
            self._touch_level(book, changes)
        trim_depth(book, self.depth_max, changes)
        return changes

    def _size(self) -> int:
        return self.rng.randrange(1, self.size_max_int + 1)

    def _move_mid(self, book: TrueBook, changes: list[Change]) -> None:
        """Move the mid one tick and delete the levels it crossed, so bid < mid < ask holds."""
        up = self.rng.random() < 0.5
        self.mid_int += self.inst.tick_int if up else -self.inst.tick_int
        crossed_side = ASK if up else BID
        for price_int in list(book.prices[crossed_side]):
            crossed = price_int <= self.mid_int if up else price_int >= self.mid_int
            if crossed:
                apply(book, changes, crossed_side, price_int, 0)

    def _touch_level(self, book: TrueBook, changes: list[Change]) -> None:
        side = BID if self.rng.random() < 0.5 else ASK
        distance = 1 + min(int(self.rng.expovariate(0.35)), self.depth_max - 1)
        offset = distance * self.inst.tick_int
        price_int = self.mid_int - offset if side == BID else self.mid_int + offset
        size_int = 0 if self.rng.random() < 0.25 else self._size()
        if self.rng.random() < self.duplicate_p:
            apply(book, changes, side, price_int, self._size())      # overwritten just below
        apply(book, changes, side, price_int, size_int)


class ReplaySource:
    """Plays one recorded symbol's converted events once, then produces nothing."""

    def __init__(self, initial: Sequence[Change], events: Sequence[Sequence[Change]],
                 depth_max: int) -> None:
        self.initial = initial
        self.events = events
        self.depth_max = depth_max
        self.position = 0

    def seed_book(self, book: TrueBook) -> None:
        for side, price_int, size_int in self.initial:
            book.set(side, price_int, size_int)
        trim_depth(book, self.depth_max, [])

    def step(self, book: TrueBook) -> list[Change] | None:
        if self.position >= len(self.events):
            return None
        changes: list[Change] = []
        for side, price_int, size_int in self.events[self.position]:
            apply(book, changes, side, price_int, size_int)
        self.position += 1
        uncross(book, changes)
        trim_depth(book, self.depth_max, changes)
        return changes


def apply(book: TrueBook, changes: list[Change], side: int, price_int: int, size_int: int) -> None:
    book.set(side, price_int, size_int)
    changes.append((side, price_int, size_int))


def trim_depth(book: TrueBook, depth_max: int, changes: list[Change]) -> None:
    """Delete the worst levels past depth_max, explicitly, so streams describe the whole book."""
    for side in (BID, ASK):
        prices = book.prices[side]
        while len(prices) > depth_max:
            worst = prices[0] if side == BID else prices[-1]
            apply(book, changes, side, worst, 0)


def uncross(book: TrueBook, changes: list[Change]) -> None:
    """Recordings can cross for an instant (one side updated before the other): delete the
    older side's crossed levels so the true book stays a valid book."""
    while True:
        bid, ask = book.best(BID), book.best(ASK)
        if bid is None or ask is None or bid < ask:
            return
        apply(book, changes, ASK, ask, 0)
