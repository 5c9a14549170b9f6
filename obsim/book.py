"""The simulator's true book: exact, in scaled integers, one per exchange and symbol.

Why scaled integers: every exchange sends decimal text, and two of them (Kraken, OKX) checksum
that text. A price here is `price_int * 10**-price_decimals`, a size `size_int *
10**-size_decimals`; the wire text is rendered from the integers by one function per
instrument, so the text a client checksums and the text the control API reports are the same
characters, trailing zeros included. Nothing here is ever a binary float.

The book keeps, per side, a dict price -> size and a sorted list of prices (bisect), so a
change costs O(log n) to find plus a list shift, and the top N is a slice. It knows nothing of
exchanges, messages or sockets; the venues render it.

Discussion: the simulator is the reference the observer's books are compared against, so it
is written independently of `observer.book` (which it must never import) and as plainly as
possible: correctness first, then speed where the benchmark needs it (Binance's hot path only
calls `set` and two formatters).
"""

from __future__ import annotations

import bisect
import zlib

BID = 0
ASK = 1
SIDES = (BID, ASK)


class TextCache:
    """int -> exact wire text for one precision, bounded (`entries_max`), cleared when full.

    Rendering is the simulator's hot path; prices near the mid repeat all the time."""

    __slots__ = ("decimals", "texts", "entries_max", "minimal")

    def __init__(self, decimals: int, entries_max: int = 1 << 16, minimal: bool = False) -> None:
        self.decimals = decimals
        self.texts: dict[int, str] = {}
        self.entries_max = entries_max
        self.minimal = minimal      # OKX sends "3366" and "0.5", not "3366.0" and "0.50000000"

    def __call__(self, value_int: int) -> str:
        text = self.texts.get(value_int)
        if text is None:
            if len(self.texts) >= self.entries_max:
                self.texts.clear()
            text = scaled_text(value_int, self.decimals)
            if self.minimal and "." in text:
                text = text.rstrip("0").rstrip(".")
            self.texts[value_int] = text
        return text


class Instrument:
    """How one symbol's integers become wire text (the exchange's precision)."""

    __slots__ = ("price_decimals", "size_decimals", "tick_int", "lot_int", "price_text",
                 "size_text")

    def __init__(self, price_decimals: int, size_decimals: int, tick_int: int = 1,
                 minimal_text: bool = False, lot_int: int = 1) -> None:
        assert 0 <= price_decimals <= 12
        assert 0 <= size_decimals <= 12
        assert tick_int >= 1                  # the random walk moves prices in steps of this
        assert lot_int >= 1                   # and sizes in multiples of this
        self.price_decimals = price_decimals
        self.size_decimals = size_decimals
        self.tick_int = tick_int
        self.lot_int = lot_int
        self.price_text = TextCache(price_decimals, minimal=minimal_text)
        self.size_text = TextCache(size_decimals, minimal=minimal_text)

    def __repr__(self) -> str:
        return (f"Instrument({self.price_decimals}, {self.size_decimals}, tick_int={self.tick_int}, "
                f"lot_int={self.lot_int})")


def scaled_text(value_int: int, decimals: int) -> str:
    """Exact decimal text of value_int * 10**-decimals with exactly `decimals` digits after the point."""
    assert value_int >= 0
    if decimals == 0:
        return str(value_int)
    whole, frac = divmod(value_int, 10 ** decimals)
    return f"{whole}.{frac:0{decimals}d}"


def parse_scaled(text: str, decimals: int) -> int:
    """Inverse of scaled_text for any decimal text with at most `decimals` fractional digits."""
    whole, _, frac = text.strip().partition(".")
    frac = frac.rstrip("0")
    if len(frac) > decimals:
        raise ValueError(f"{text!r} has more than {decimals} decimals")
    return int(whole or "0") * 10 ** decimals + int((frac or "0").ljust(decimals, "0"))


def decimals_of(text: str) -> int:
    """Significant fractional digits of a decimal string ("0.10" -> 1, "42000" -> 0)."""
    _, _, frac = text.partition(".")
    return len(frac.rstrip("0"))


class TrueBook:
    """One exact L2 book: price_int -> size_int per side, prices kept sorted."""

    __slots__ = ("sizes", "prices", "changes_total")

    def __init__(self) -> None:
        self.sizes: tuple[dict[int, int], dict[int, int]] = ({}, {})
        self.prices: tuple[list[int], list[int]] = ([], [])   # ascending on both sides
        self.changes_total = 0

    def set(self, side: int, price_int: int, size_int: int) -> None:
        """Set the absolute size at a price; 0 deletes (deleting an absent level is a no-op)."""
        assert price_int > 0
        assert size_int >= 0
        sizes = self.sizes[side]
        self.changes_total += 1
        if size_int == 0:
            if sizes.pop(price_int, None) is not None:
                prices = self.prices[side]
                del prices[bisect.bisect_left(prices, price_int)]
            return
        if price_int not in sizes:
            bisect.insort(self.prices[side], price_int)
        sizes[price_int] = size_int

    def clear(self) -> None:
        for side in SIDES:
            self.sizes[side].clear()
            self.prices[side].clear()

    def top(self, side: int, n: int | None = None) -> list[tuple[int, int]]:
        """Best first: bids high to low, asks low to high."""
        prices = self.prices[side]
        sizes = self.sizes[side]
        if side == BID:
            count = len(prices) if n is None else min(n, len(prices))
            picked = prices[len(prices) - count:][::-1]
        else:
            picked = prices if n is None else prices[:n]
        return [(p, sizes[p]) for p in picked]

    def best(self, side: int) -> int | None:
        prices = self.prices[side]
        if not prices:
            return None
        return prices[-1] if side == BID else prices[0]

    def depth(self, side: int) -> int:
        return len(self.prices[side])

    def copy(self) -> TrueBook:
        other = TrueBook()
        for side in SIDES:
            other.sizes[side].update(self.sizes[side])
            other.prices[side].extend(self.prices[side])
        return other

    def check(self) -> None:
        """Invariants: sorted, no zero size, not crossed."""
        for side in SIDES:
            assert self.prices[side] == sorted(self.sizes[side])
            assert all(size > 0 for size in self.sizes[side].values())
        bid, ask = self.best(BID), self.best(ASK)
        assert bid is None or ask is None or bid < ask, (bid, ask)


def window(book: TrueBook, depth: int) -> tuple[dict[int, int], dict[int, int]]:
    """The top `depth` levels per side as dicts (what a depth-limited channel shows)."""
    return (dict(book.top(BID, depth)), dict(book.top(ASK, depth)))


def window_diff(before: dict[int, int], after: dict[int, int]) -> list[tuple[int, int]]:
    """Absolute-size updates turning `before` into `after` exactly (0 = delete)."""
    out = [(p, q) for p, q in after.items() if before.get(p) != q]
    out.extend((p, 0) for p in before if p not in after)
    return out


def kraken_checksum(inst: Instrument, book: TrueBook) -> int:
    """Kraken's CRC32 over the top 10 asks then top 10 bids: '.' removed, leading zeros removed."""
    parts = []
    for side in (ASK, BID):
        for price_int, size_int in book.top(side, 10):
            parts.append(inst.price_text(price_int).replace(".", "").lstrip("0"))
            parts.append(inst.size_text(size_int).replace(".", "").lstrip("0"))
    return zlib.crc32("".join(parts).encode())


def okx_checksum(inst: Instrument, book: TrueBook) -> int:
    """OKX's legacy checksum: top 25 interleaved bid:ask, signed CRC32 of the wire text."""
    bids, asks = book.top(BID, 25), book.top(ASK, 25)
    parts = []
    for rank in range(max(len(bids), len(asks))):
        for levels in (bids, asks):
            if rank < len(levels):
                parts.append(inst.price_text(levels[rank][0]))
                parts.append(inst.size_text(levels[rank][1]))
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc
