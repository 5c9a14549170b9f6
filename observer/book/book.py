"""The exact L2 book: one instrument, two sides, integer prices and sizes.

What it owns: for each side a sorted Python list of integer keys and a parallel list of sizes,
the two exponents (C3), the exchange's last update id and event time, and its counters. What it
never does: parse JSON, know an exchange's sync rules, or do I/O. Feed adapters decide *when*
to apply; the book decides *how*, and reports a crossed book instead of hiding it.

Layout, and why. Each side keeps its best level at the END of its lists: bids store the price,
asks store the negated price, so both lists ascend towards the best. Nearly all traffic touches
the top of a book, and inserting or deleting near the end of a Python list moves only the few
pointers behind it. One `bisect` finds a level (O(log n)); there is no dict beside the lists, so
a level is one key and one size and nothing can disagree. Reading the top is `keys[-1]`: O(1),
never a re-sort (the fault measured in cryptofeed, docs/FIGURES.md section 1).

Snapshots are built by sorting once (O(n log n)) rather than by n inserts, since a Coinbase
snapshot holds tens of thousands of levels and arrives best-first (inserting at the far end of
the list each time would be quadratic).

Limits: `levels_max` bounds each side (past it the worst levels are dropped and counted:
they are the ones nobody can vouch for anyway); `depth_max` is the subscribed depth of a
depth-limited channel (Kraken, Bybit, OKX), and the book truncates to it after every message,
as those exchanges require.

Invariants, asserted after each apply (cheap, O(1)): both lists of a side have one length,
depth is at most `levels_max`, the best sizes are positive. Inserts assert their neighbours,
so sortedness holds by construction; `check()` verifies everything in O(levels) and tests call
it after every apply (`paranoid=True`). A crossed book (best bid >= best ask) is not an
assertion: it is what a lost message looks like, so `apply` raises `BookCrossed` after the
update is in, and the adapter resyncs.

Two implementations of the level loop. `apply_side` runs per message for every level, so it is
also written in C (observer/book/_book_c.c: about 5x less time for a ten-level diff, no text
cache needed): it takes every plain level and hands back the first one that is not (a finer
exponent, an odd text), which `apply_levels` here applies before the C goes on. This module's
code is the reference and the fallback when the extension was not built or
OBSERVER_PURE_PYTHON=1 (`COMPILED`); tests/book/test_book_c.py holds both to the same levels
after every message. A compiled publisher reads the top of the book from `top_lists`.

The book parses no messages, with one narrow exception on the hottest path: `apply_text_diff`
takes a diff's two level arrays as the wire's bytes (spans an adapter's compiled scanner
found) and its compiled loop reads the price and size texts in place, so no list or string is
made per level; anything not plain there leaves the book untouched for the parsed path.
"""

import os
from bisect import bisect_left
from itertools import islice
from operator import lt, neg
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from observer.book.fixed import (DECIMALS_MAX, MANTISSA_MAX, POW10, parse_column,
                                 parse_decimal_slow, scale_column)

try:  # the level loop compiled (observer/book/_book_c.c); apply_levels is its reference
    from observer.book import _book_c
except ImportError:  # built without a C compiler: the same levels, more interpreter time
    _book_c = None

# Whether apply_side uses _book_c (read per call, so a test can compare both paths in one
# process). OBSERVER_PURE_PYTHON=1 turns it off for a whole process.
COMPILED = _book_c is not None and not os.environ.get("OBSERVER_PURE_PYTHON")

BID = 0
ASK = 1


class BookError(ValueError):
    """A level the book cannot hold: bad text, out of range, or past a limit."""


class BookCrossed(BookError):
    """Best bid >= best ask after an update: the book lost a message and must resync."""


@dataclass(slots=True)
class BookUpdate:
    """One exchange message's worth of levels. Levels are sequences whose [0] is the price
    text and [1] the size text, exactly as parsed from the wire (extra fields ignored)."""

    is_snapshot: bool
    bids: Sequence
    asks: Sequence
    update_id: int = 0
    exch_ts_ns: int = 0


class Book:
    """An exact L2 book. See the module essay for layout and invariants."""

    text_cache_max = 4096  # decimal texts remembered per field (price, size)

    def __init__(self, name, *, levels_max=100_000, depth_max=0, paranoid=False):
        assert levels_max > 0
        assert depth_max >= 0
        self.name = name
        self.levels_max = levels_max
        self.depth_max = depth_max  # 0: no truncation beyond levels_max
        self.paranoid = paranoid
        self.price_exp = 0
        self.size_exp = 0
        self.update_id = 0
        self.exch_ts_ns = 0
        self.updates = 0
        self.levels_dropped = 0
        self.rescales = 0
        self._keys = ([], [])  # per side, ascending towards the best level
        self._sizes = ([], [])
        # The same four lists for a compiled exporter (client/obproto/_latch_c): they live as long as
        # the book (every change is in place), each ascending to its best level at the end.
        self.top_lists = (self._keys[BID], self._sizes[BID], self._keys[ASK], self._sizes[ASK])
        self._price_ints = {}  # text -> int at the current exponent (see text_int)
        self._size_ints = {}

    # ----------------------------------------------------------------------------- control

    def clear(self):
        """Forget every level (exponents stay: they only ever get finer)."""
        for side in (BID, ASK):
            self._keys[side].clear()
            self._sizes[side].clear()
        self.update_id = 0
        self.exch_ts_ns = 0

    def apply(self, update):
        """Apply a snapshot (replaces the book) or a delta, then check the result.

        Raises BookError on bad level text (the book may then be half-applied: the caller
        must resync it) and BookCrossed when the result is crossed.
        """
        if update.is_snapshot:
            self.load_side(BID, update.bids)
            self.load_side(ASK, update.asks)
        elif COMPILED and type(update.bids) is list and type(update.asks) is list:
            # apply_side's compiled path for both sides, with one frame fewer each (per message)
            bids, asks = update.bids, update.asks
            done = _book_c.set_levels(self._keys[BID], self._sizes[BID], bids, 0, False,
                                      -self.price_exp, -self.size_exp)
            if done < len(bids):
                self.apply_side(BID, bids, done)
            done = _book_c.set_levels(self._keys[ASK], self._sizes[ASK], asks, 0, True,
                                      -self.price_exp, -self.size_exp)
            if done < len(asks):
                self.apply_side(ASK, asks, done)
        else:
            self.apply_side(BID, update.bids)
            self.apply_side(ASK, update.asks)
        self.end_update(update.update_id, update.exch_ts_ns)

    def apply_text_diff(self, data, b0, b1, a0, a1, update_id, exch_ts_ns):
        """A delta whose levels are still wire text: `data[b0:b1]` and `data[a0:a1]` are its
        bid and ask arrays, `[["price","size"],...]`, as an adapter's scanner found
        them (observer/feeds/_binance_c.c). Applied only if every level is plain (then True,
        with the same result as `apply` of the parsed levels, end_update included); else
        False and the book is untouched: the caller parses the message and calls `apply`.
        """
        if not COMPILED:
            return False
        if not _book_c.set_text_levels(self._keys[BID], self._sizes[BID], self._keys[ASK],
                                       self._sizes[ASK], data, b0, b1, a0, a1,
                                       -self.price_exp, -self.size_exp):
            return False
        self.end_update(update_id, exch_ts_ns)
        return True

    def apply_side(self, side, levels, done=0):
        """Set each level in wire order (a price may repeat in one message: last wins);
        `done`: levels already applied by the compiled loop, which stopped at `levels[done]`."""
        if not COMPILED or type(levels) is not list and type(levels) is not tuple:
            self.apply_levels(side, levels)
            return
        keys = self._keys[side]
        sizes = self._sizes[side]
        negate = side == ASK
        if not done:
            done = _book_c.set_levels(keys, sizes, levels, 0, negate, -self.price_exp,
                                      -self.size_exp)
        while done < len(levels):  # a level the C does not take: apply it here, then go on
            self.apply_levels(side, levels[done : done + 1])
            done = _book_c.set_levels(keys, sizes, levels, done + 1, negate, -self.price_exp,
                                      -self.size_exp)

    def apply_levels(self, side, levels):
        """apply_side's reference: each level through the text cache and side_set."""
        keys = self._keys[side]
        sizes = self._sizes[side]
        price_ints = self._price_ints
        size_ints = self._size_ints
        sign = -1 if side == ASK else 1
        for level in levels:
            price = price_ints.get(level[0])
            if price is None:
                price = self.text_int(level[0], True)
            size = size_ints.get(level[1])
            if size is None:
                size = self.text_int(level[1], False)
            side_set(keys, sizes, sign * price, size)

    def load_side(self, side, levels):
        """Replace one side from a snapshot, in bulk and sorting once; later duplicates win."""
        price_m, price_d = parse_column(level[0] for level in levels)
        size_m, size_d = parse_column(level[1] for level in levels)
        self.rescale(max(max(price_d, default=0), -self.price_exp),
                     max(max(size_d, default=0), -self.size_exp))
        prices = scale_column(price_m, price_d, -self.price_exp)
        amounts = scale_column(size_m, size_d, -self.size_exp)
        if prices and max(prices) > MANTISSA_MAX or amounts and max(amounts) > MANTISSA_MAX:
            raise BookError(f"{self.name}: a snapshot value exceeds int64 at the book's exponents")
        if side == ASK:
            prices = map(neg, prices)
        by_key = dict(zip(prices, amounts))  # wire order: a repeated price keeps its last size
        keys = self._keys[side]
        sizes = self._sizes[side]
        if 0 in amounts:
            keys[:] = sorted(key for key, size in by_key.items() if size)
        else:
            keys[:] = sorted(by_key)
        sizes[:] = map(by_key.__getitem__, keys)

    def end_update(self, update_id, exch_ts_ns):
        """Close one message: truncate, record ids, assert invariants, detect a cross."""
        bid_keys, ask_keys = self._keys
        limit = self.depth_max or self.levels_max
        if len(bid_keys) > limit or len(ask_keys) > limit:
            self.enforce_limits()
        self.update_id = update_id
        if exch_ts_ns:
            self.exch_ts_ns = exch_ts_ns
        self.updates += 1
        # The invariants (module essay), here rather than in a method: once per message.
        bid_sizes, ask_sizes = self._sizes
        assert len(bid_keys) == len(bid_sizes) and len(ask_keys) == len(ask_sizes)
        assert len(bid_keys) <= self.levels_max and len(ask_keys) <= self.levels_max
        assert not bid_sizes or bid_sizes[-1] > 0
        assert not ask_sizes or ask_sizes[-1] > 0
        if self.paranoid:
            self.check()
        if bid_keys and ask_keys and bid_keys[-1] >= -ask_keys[-1]:
            raise BookCrossed(f"{self.name}: crossed book (bid {bid_keys[-1]} >= ask {-ask_keys[-1]})")

    def enforce_limits(self):
        for side in (BID, ASK):
            keys = self._keys[side]
            if self.depth_max and len(keys) > self.depth_max:
                side_truncate(keys, self._sizes[side], self.depth_max)
            if len(keys) > self.levels_max:
                self.levels_dropped += side_truncate(keys, self._sizes[side], self.levels_max)

    # ------------------------------------------------------------------------------ values

    def text_int(self, text, is_price):
        """Decimal text as an int at the book's exponent (making it finer if needed), cached.

        Discussion: the same few hundred price texts come back message after message near the
        top of a book, so a text -> int dict (bounded by `text_cache_max`, emptied when full
        and on every rescale) turns most parses into one lookup.
        """
        # parse_decimal's fast path, inlined: this runs for every size that is new.
        head, _, tail = text.partition(".")
        digits = head + tail
        decimals = len(tail)
        if digits.isdigit() and digits.isascii() and decimals <= DECIMALS_MAX:
            mantissa = int(digits)
        else:
            mantissa, decimals = parse_decimal_slow(text)
        if is_price:
            if decimals > -self.price_exp:
                self.rescale(decimals, -self.size_exp)
            value = mantissa * POW10[-self.price_exp - decimals]
            cache = self._price_ints
        else:
            if decimals > -self.size_exp:
                self.rescale(-self.price_exp, decimals)
            value = mantissa * POW10[-self.size_exp - decimals]
            cache = self._size_ints
        if value > MANTISSA_MAX:
            raise BookError(f"{self.name}: {text!r} exceeds int64 at the book's exponent"[:200])
        if len(cache) >= self.text_cache_max:
            cache.clear()
        cache[text] = value
        return value

    def rescale(self, price_decimals, size_decimals):
        """Make the exponents finer, multiplying what the book holds (exact, rare)."""
        assert price_decimals <= DECIMALS_MAX
        assert size_decimals <= DECIMALS_MAX
        if price_decimals == -self.price_exp and size_decimals == -self.size_exp:
            return
        price_factor = POW10[price_decimals + self.price_exp]
        size_factor = POW10[size_decimals + self.size_exp]
        for side in (BID, ASK):
            scale_list(self._keys[side], price_factor)
            scale_list(self._sizes[side], size_factor)
        self.price_exp = -price_decimals
        self.size_exp = -size_decimals
        self._price_ints.clear()
        self._size_ints.clear()
        self.rescales += 1

    # ----------------------------------------------------------------------------- reading

    def best(self):
        """(bid_px, bid_sz, ask_px, ask_sz) as ints, 0 for an empty side. O(1)."""
        bid_keys, ask_keys = self._keys
        bid_sizes, ask_sizes = self._sizes
        bid_px = bid_keys[-1] if bid_keys else 0
        bid_sz = bid_sizes[-1] if bid_sizes else 0
        ask_px = -ask_keys[-1] if ask_keys else 0
        ask_sz = ask_sizes[-1] if ask_sizes else 0
        return bid_px, bid_sz, ask_px, ask_sz

    def depth(self, side):
        return len(self._keys[side])

    def worst(self, side):
        """The price of a side's worst level as an int, 0 for an empty side. O(1)."""
        keys = self._keys[side]
        if not keys:
            return 0
        return -keys[0] if side == ASK else keys[0]

    def count_at_least(self, side, price):
        """Levels of a side at `price` or better (bids >= price, asks <= price). O(log n)."""
        keys = self._keys[side]
        return len(keys) - bisect_left(keys, -price if side == ASK else price)

    def is_crossed(self):
        bid_keys, ask_keys = self._keys
        return bool(bid_keys) and bool(ask_keys) and bid_keys[-1] >= -ask_keys[-1]

    def levels(self, side, n=None):
        """[(price_int, size_int), ...] best first; for tests and checksums."""
        keys = self._keys[side]
        sizes = self._sizes[side]
        count = len(keys) if n is None else min(n, len(keys))
        sign = -1 if side == ASK else 1
        return [(sign * keys[-1 - i], sizes[-1 - i]) for i in range(count)]

    def top(self, side, n):
        """(prices, sizes): two lists of the best n levels, best first (for checksums)."""
        keys = self._keys[side][-n:]
        keys.reverse()
        sizes = self._sizes[side][-n:]
        sizes.reverse()
        if side == ASK:
            keys = list(map(neg, keys))
        return keys, sizes

    def export_top(self, bid_px, bid_sz, ask_px, ask_sz):
        """Fill four int64 views best first; return (n_bids, n_asks).

        No buffer is allocated: each side's tail is sliced (a short-lived list of at most
        len(view) references, from the free lists) and copied into a reversed view.
        """
        n_bids = side_export(self._keys[BID], self._sizes[BID], False, bid_px, bid_sz)
        n_asks = side_export(self._keys[ASK], self._sizes[ASK], True, ask_px, ask_sz)
        return n_bids, n_asks

    # -------------------------------------------------------------------------- invariants

    def check(self):
        """Full O(levels) check: strictly sorted sides, no zero or negative sizes, depth.
        Iterated in C (map, min): per message on a 12,000-level book (Coinbase's) the
        generator form cost 4 ms, enough to make a paranoid session fall behind its feed."""
        for side in (BID, ASK):
            keys = self._keys[side]
            sizes = self._sizes[side]
            assert all(map(lt, keys, islice(keys, 1, None))), f"{self.name}: side {side} unsorted"
            assert not sizes or min(sizes) > 0, f"{self.name}: side {side} has a zero size"
            assert not self.depth_max or len(keys) <= self.depth_max
            assert len(keys) <= self.levels_max


# ---------------------------------------------------------------------------------- leaves


def side_set(keys, sizes, key, size):
    """Set one level to an absolute size (0 deletes; deleting an unknown level is a no-op).

    Returns +1 inserted, -1 deleted, 0 otherwise.
    """
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        if size:
            sizes[i] = size
            return 0
        del keys[i]
        del sizes[i]
        return -1
    if not size:
        return 0
    keys.insert(i, key)
    sizes.insert(i, size)
    assert i == 0 or keys[i - 1] < key
    assert i + 1 == len(keys) or key < keys[i + 1]
    return 1


def side_truncate(keys, sizes, depth):
    """Keep the best `depth` levels (the list ends); return how many were dropped."""
    excess = len(keys) - depth
    if excess <= 0:
        return 0
    del keys[:excess]
    del sizes[:excess]
    return excess


def side_export(keys, sizes, negate, px_out, sz_out):
    """Copy the best levels into two int64 views, best first; return the count."""
    n = min(len(keys), len(px_out))
    if n == len(px_out):
        # The common case (the book is deeper than the slot): whole-array operations, no
        # sub-views to create, which is most of the cost at this size.
        px_out[:] = keys[: -n - 1 : -1]
        sz_out[:] = sizes[: -n - 1 : -1]
        if negate:
            np.negative(px_out, out=px_out)
    elif n:
        px_out[n - 1 :: -1] = keys[-n:]
        sz_out[n - 1 :: -1] = sizes[-n:]
        if negate:
            np.negative(px_out[:n], out=px_out[:n])
    return n


def scale_list(values, factor):
    if factor != 1:
        values[:] = [value * factor for value in values]
