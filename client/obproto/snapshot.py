"""What a reader hands to a strategy: a consistent book copy and an update record.

Both carry exact integers and their exponents (C3); floats are derived on request by dividing
by an exact power of ten, which rounds each value once, correctly. `Decimal` values are exact.
"""

from __future__ import annotations

import enum
import functools
import operator
from decimal import Decimal
from typing import NamedTuple

import numpy as np

from obproto import layout


DEPTH_ALL = 0  # depth 0 (or None): every level the book has, as on the wire (PROTOCOL.md)


def check_depth(depth) -> int:
    """The one depth rule (obclient, obctl and the wire's `snapshot`): an integer >= 0, where
    0 (or None) means every level; a depth past what the book holds gets what it holds.
    Anything else (negative, bool, float, text) is a ValueError saying so."""
    if depth is None:
        return DEPTH_ALL
    if type(depth) is not int:
        try:
            if isinstance(depth, bool):
                raise TypeError
            depth = operator.index(depth)        # numpy integers are fine, floats are not
        except TypeError:
            raise ValueError(f"depth must be an integer >= 0 (0 or None: all levels), "
                             f"got {depth!r}") from None
    if depth < 0:
        raise ValueError(f"depth must be an integer >= 0 (0 or None: all levels), got {depth}")
    return depth


def _to_float(values: np.ndarray, exp: int) -> np.ndarray:
    # value * 10**exp: divide by the exact 10**-exp (exact as a float up to 10**22) so each
    # result is the correctly rounded float of the decimal, not a product of two roundings.
    if exp <= 0:
        return values.astype(np.float64) / float(10 ** -exp)
    return values.astype(np.float64) * float(10 ** exp)


def _to_decimal(value: int, exp: int) -> Decimal:
    return Decimal(value).scaleb(exp)


class BookSnapshot:
    """A consistent copy of one book's top levels, best first on both sides."""

    __slots__ = ("book_index", "seq", "n_bids", "n_asks", "price_exp", "size_exp", "flags",
                 "update_id", "exch_ts_ns", "recv_ts_ns", "publish_ts_ns", "bid_px", "bid_sz",
                 "ask_px", "ask_sz")

    def __init__(self, book_index: int, seq: int, head: tuple, bid_px, bid_sz, ask_px, ask_sz):
        (_, self.n_bids, self.n_asks, self.price_exp, self.size_exp, self.flags,
         self.update_id, self.exch_ts_ns, self.recv_ts_ns, self.publish_ts_ns) = head
        self.book_index = book_index
        self.seq = seq
        self.bid_px, self.bid_sz, self.ask_px, self.ask_sz = bid_px, bid_sz, ask_px, ask_sz
        self.n_bids, self.n_asks = len(bid_px), len(ask_px)  # levels in this copy (<= depth)

    @property
    def stale(self) -> bool:
        """True when the book is not known to be right, including never published."""
        return bool(self.flags & layout.FLAG_STALE) or not self.flags & layout.FLAG_PUBLISHED

    @property
    def lagging(self) -> bool:
        return bool(self.flags & layout.FLAG_LAGGING)

    @property
    def bids(self) -> np.ndarray:
        """(n, 2) float64: price, size; best (highest) first."""
        return np.column_stack((_to_float(self.bid_px, self.price_exp),
                                _to_float(self.bid_sz, self.size_exp)))

    @property
    def asks(self) -> np.ndarray:
        """(n, 2) float64: price, size; best (lowest) first."""
        return np.column_stack((_to_float(self.ask_px, self.price_exp),
                                _to_float(self.ask_sz, self.size_exp)))

    def bids_decimal(self) -> list[tuple[Decimal, Decimal]]:
        return [(_to_decimal(int(p), self.price_exp), _to_decimal(int(s), self.size_exp))
                for p, s in zip(self.bid_px, self.bid_sz)]

    def asks_decimal(self) -> list[tuple[Decimal, Decimal]]:
        return [(_to_decimal(int(p), self.price_exp), _to_decimal(int(s), self.size_exp))
                for p, s in zip(self.ask_px, self.ask_sz)]

    def check(self) -> None:
        """Re-check the book invariants after reading shared memory (raises ValueError)."""
        _check_side(self.bid_px, self.bid_sz, "bid", descending=True)
        _check_side(self.ask_px, self.ask_sz, "ask", descending=False)
        if self.n_bids and self.n_asks and not self.bid_px[0] < self.ask_px[0]:
            raise ValueError(f"book {self.book_index} crossed: bid {self.bid_px[0]} >= "
                             f"ask {self.ask_px[0]}")

    def __repr__(self) -> str:
        return (f"BookSnapshot(book={self.book_index}, update_id={self.update_id}, "
                f"bids={self.n_bids}, asks={self.n_asks}, stale={self.stale})")


def _check_side(px: np.ndarray, sz: np.ndarray, side: str, descending: bool) -> None:
    steps = np.diff(px)
    if len(steps) and not (np.all(steps < 0) if descending else np.all(steps > 0)):
        raise ValueError(f"{side} prices not strictly sorted best first")
    if len(sz) and not np.all(sz > 0):
        raise ValueError(f"{side} side holds a level with size <= 0")


class Kind(enum.IntEnum):
    """What an `Update` says (`update.kind`); members equal the raw values (1, 2, 3)."""

    UPDATE = layout.KIND_UPDATE    # the book changed
    STALE = layout.KIND_STALE      # the book is not known to be right (or the observer went)
    RESYNC = layout.KIND_RESYNC    # re-read from the book's slot: after a lap or a reattach


KIND_UPDATE, KIND_STALE, KIND_RESYNC = Kind.UPDATE, Kind.STALE, Kind.RESYNC


class Update(NamedTuple):
    """One ring record (C5): a book changed (KIND_UPDATE), went stale (KIND_STALE), or, after
    this reader was lapped, was re-read from its slot (KIND_RESYNC). Field order is the ring
    record's, after its seq word; `kind` is the raw int (it equals the `Kind` member).

    `name` is the book's `exchange:SYMBOL`: records from a client are of a subclass made per
    observer segment (`named_update_type`) whose class holds the names, so a record costs
    nothing more for carrying it.
    """

    book_index: int
    kind: int
    flags: int
    price_exp: int
    size_exp: int
    book_seq: int
    update_id: int
    exch_ts_ns: int
    recv_ts_ns: int
    publish_ts_ns: int
    bid_px: int
    bid_sz: int
    ask_px: int
    ask_sz: int

    _book_names = ()    # book_index -> name, set on the per-segment subclass

    @property
    def name(self) -> str:
        """The book's `exchange:SYMBOL` ("" for a record made outside a client)."""
        names = self._book_names
        return names[self[0]] if self[0] < len(names) else ""

    @property
    def stale(self) -> bool:
        return bool(self.flags & layout.FLAG_STALE)

    @property
    def bid(self) -> float:
        return self.bid_px / 10.0 ** -self.price_exp

    @property
    def ask(self) -> float:
        return self.ask_px / 10.0 ** -self.price_exp

    @property
    def bid_decimal(self) -> Decimal:
        """The best bid price, exact."""
        return _to_decimal(self.bid_px, self.price_exp)

    @property
    def ask_decimal(self) -> Decimal:
        """The best ask price, exact."""
        return _to_decimal(self.ask_px, self.price_exp)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={v!r}" for f, v in zip(self._fields, self))
        return f"Update(name={self.name!r}, {fields})"

    def __reduce__(self):
        """Pickled (a multiprocessing queue) with its name; the class is made again on load."""
        return _unpickled_update, (tuple(self), self.name)


def named_update_type(names) -> type:
    """An `Update` subclass whose records know their book's name: `names[book_index]`. Same
    layout as a tuple (no slots), so the compiled ring reader makes its records directly. One
    class per list of names (readers of one observer share it; a reattach makes no new one)."""
    return _named_update_type(tuple(names))


@functools.lru_cache(maxsize=16)
def _named_update_type(names: tuple) -> type:
    return type("Update", (Update,), {"__slots__": (), "_book_names": names})


def _unpickled_update(fields: tuple, name: str) -> Update:
    names = [""] * (fields[0] + 1)
    names[fields[0]] = name
    return named_update_type(names)(*fields)
