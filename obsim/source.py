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

import math
import random
import zlib
from collections.abc import Sequence

from obsim.book import ASK, BID, Instrument, TrueBook

Change = tuple[int, int, int]


def stable_seed(seed: int, *names: str) -> int:
    return zlib.crc32("/".join((str(seed),) + names).encode())


class RandomWalk:
    """A seeded random-walk book: mid moves by ticks, sizes change near the top.

    Discussion: one `getrandbits(64)` per touched level supplies the price choices (side,
    distance, delete, duplicate) through precomputed tables, and one more its size; this is the
    benchmark's hot path, and five `random` calls per level made the generator, not the
    network, the limit.

    Sizes, as real diff streams carry them. A level's size is the sum of the orders resting
    there, so an update changes it by one order's quantity (log-uniform between one lot and
    `size_max_int`, so most texts are new), and an order cancelled soon after it was placed
    puts the level's previous size back (`REVERT_P`), which is how the same text recurs in real
    traffic. Deletes come from `DELETE_ONE_IN` of the touched levels, from the mid crossing
    levels and from the depth limit. bench/size_texts.py compares the result with the Binance
    recordings (how often a size text was already seen in the stream, what a parser's text
    cache would hit): a pool of a few thousand sizes, as before, made 91 % of them repeats,
    where the recordings have 10-45 %.
    """

    DELETE_ONE_IN = 16                   # touched levels set to 0 (real streams: 2-8 % zeros)
    REVERT_P = 0.2                       # a change that restores the level's previous size
    PREVIOUS_MAX = 1 << 16               # remembered previous sizes (cleared when full)

    def __init__(self, inst: Instrument, seed: int, mid_price_int: int, depth_max: int,
                 size_max_int: int, duplicate_p: float = 0.05, move_p: float = 0.1,
                 changes_per_event: int = 0) -> None:
        assert depth_max >= 2
        assert mid_price_int > (depth_max + 2) * inst.tick_int * 4
        assert size_max_int >= inst.lot_int
        self.inst = inst
        self.rng = random.Random(seed)
        self.mid_int = mid_price_int
        self.depth_max = depth_max
        self.move_p = move_p
        self.changes_per_event = changes_per_event       # 0: 1-3 at random
        self.size_decades = math.log10(size_max_int / inst.lot_int)
        self.previous: dict[tuple[int, int], int] = {}   # (side, price) -> size before the last
        self.distances = [1 + min(int(self.rng.expovariate(0.35)), depth_max - 1) for _ in range(1024)]
        self.duplicate_below = int(duplicate_p * 1024)

    def seed_book(self, book: TrueBook) -> None:
        """Fill both sides to depth_max levels, one level per tick from the mid."""
        tick = self.inst.tick_int
        for k in range(1, self.depth_max + 1):
            book.set(BID, self.mid_int - k * tick, self.order_int(self.rng.getrandbits(24)))
            book.set(ASK, self.mid_int + k * tick, self.order_int(self.rng.getrandbits(24)))

    def order_int(self, bits24: int) -> int:
        """One order's quantity: log-uniform over lots, from 24 random bits."""
        return self.inst.lot_int * int(10 ** (bits24 / (1 << 24) * self.size_decades))

    def next_size(self, book: TrueBook, side: int, price_int: int) -> int:
        """The level's size after one order arrives, leaves, or is cancelled right back."""
        bits = self.rng.getrandbits(32)
        current = book.sizes[side].get(price_int, 0)
        previous = self.previous.get((side, price_int))
        if previous and (bits >> 24) < self.REVERT_P * 256:
            size = previous
        else:
            order = self.order_int(bits & 0xFFFFFF)
            size = current - order if current > order and bits & (1 << 31) else current + order
        if len(self.previous) >= self.PREVIOUS_MAX:
            self.previous.clear()
        self.previous[(side, price_int)] = current
        return size

    def step(self, book: TrueBook) -> list[Change]:
        changes: list[Change] = []
        if self.rng.random() < self.move_p:
            self._move_mid(book, changes)
        for _ in range(self.changes_per_event or 1 + self.rng.randrange(3)):
            self._touch_level(book, changes, self.rng.getrandbits(64))
        trim_depth(book, self.depth_max, changes)
        return changes

    def _move_mid(self, book: TrueBook, changes: list[Change]) -> None:
        """Move the mid one tick and delete the levels it crossed, so bid < mid < ask holds."""
        up = self.rng.random() < 0.5
        self.mid_int += self.inst.tick_int if up else -self.inst.tick_int
        side = ASK if up else BID
        while (best := book.best(side)) is not None and (best <= self.mid_int if up else best >= self.mid_int):
            apply(book, changes, side, best, 0)

    def _touch_level(self, book: TrueBook, changes: list[Change], bits: int) -> None:
        side = bits & 1
        offset = self.distances[(bits >> 1) & 1023] * self.inst.tick_int
        price_int = self.mid_int - offset if side == BID else self.mid_int + offset
        if (bits >> 25) & 1023 < self.duplicate_below:
            apply(book, changes, side, price_int, self.next_size(book, side, price_int))
        deleted = (bits >> 11) % self.DELETE_ONE_IN == 0
        apply(book, changes, side, price_int, 0 if deleted else self.next_size(book, side, price_int))


class CycleSource:
    """A random walk computed ahead as a closed cycle of events, applied to the book lazily.

    Why: at the rates the ingest benchmark needs (well past 24k events/s), applying ten level
    changes to a sorted book and rendering them costs more than sending. Here the walk runs
    `events_n` steps at start-up on a shadow book, then one closing event returns the shadow to
    the initial book, so the sequence repeats forever and stays exact. `step` only advances a
    position; the true book is brought up to date when someone reads it (`materialize`: REST
    snapshot, control API), from the nearest of the checkpoints taken every
    `checkpoint_every` events, so a read costs at most that many events. Venues may cache each
    event's rendered text by `index`, which makes the hot path a splice of ids and a timestamp.
    """

    def __init__(self, walk: RandomWalk, events_n: int, checkpoint_every: int = 1000) -> None:
        assert events_n >= 1
        assert checkpoint_every >= 1
        self.walk = walk
        self.events_n = events_n
        self.checkpoint_every = checkpoint_every
        self.events: list[list[Change]] = []
        self.checkpoints: list[TrueBook] = []
        self.position = 0            # events handed out in this cycle (next index)
        self.applied = 0             # events[:applied] of this cycle are in the live book
        self.index = -1              # index of the event the last step returned (render cache key)

    def seed_book(self, book: TrueBook) -> None:
        self.walk.seed_book(book)
        shadow = book.copy()
        for i in range(self.events_n):
            if i % self.checkpoint_every == 0:
                self.checkpoints.append(shadow.copy())
            self.events.append(self.walk.step(shadow))
        closing: list[Change] = []
        for side in (BID, ASK):
            target = book.sizes[side]
            for price_int in list(shadow.sizes[side]):
                if price_int not in target:
                    apply(shadow, closing, side, price_int, 0)
            for price_int, size_int in target.items():
                if shadow.sizes[side].get(price_int) != size_int:
                    apply(shadow, closing, side, price_int, size_int)
        self.events.append(closing)
        assert shadow.sizes == book.sizes

    def step(self, book: TrueBook) -> list[Change]:
        self.index = self.position
        self.position += 1
        if self.position == len(self.events):      # cycle closed: the book is the initial one
            self._restore(book, 0)
            self.position = 0
        return self.events[self.index]

    def advance(self, book: TrueBook, count: int) -> list[tuple[int, int]]:
        """Hand out the next `count` events at once, as `step` would one by one: the
        (start, stop) index ranges of `events` they are, in order (two where the cycle closes)."""
        spans = []
        while count > 0:
            start = self.position
            stop = min(start + count, len(self.events))
            spans.append((start, stop))
            count -= stop - start
            self.index, self.position = stop - 1, stop
            if self.position == len(self.events):
                self._restore(book, 0)
                self.position = 0
        return spans

    def _restore(self, book: TrueBook, base: int) -> None:
        checkpoint = self.checkpoints[base]
        book.clear()
        for side in (BID, ASK):
            book.sizes[side].update(checkpoint.sizes[side])
            book.prices[side].extend(checkpoint.prices[side])
        self.applied = base * self.checkpoint_every

    def materialize(self, book: TrueBook) -> TrueBook:
        """Bring the live book up to the last event handed out (`position` events this cycle)."""
        target = self.position
        if target < self.applied or target - self.applied > self.checkpoint_every:
            self._restore(book, min(target // self.checkpoint_every, len(self.checkpoints) - 1))
        for event in self.events[self.applied:target]:
            for side, price_int, size_int in event:
                book.set(side, price_int, size_int)
        self.applied = target
        return book


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
        uncross(book, [])
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
