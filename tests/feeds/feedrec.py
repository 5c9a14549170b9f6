"""Read the recorded exchange traffic that is kept in the repository (tests/data/recordings).

Each line of a `*.ws.*` file is a connection (`<url> <-> <ts>`), a sent message
(`<url> <- <ts>: <text>`) or a received frame (`<ts>: <text>`); `*.http.*` lines are
`<url> -> <ts>: <body>`. 
"""

from pathlib import Path

import pytest

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"   # in the repo


def path(name):
    file = RECORDINGS / name
    if not file.is_file():
        pytest.fail(f"recording {name} not found in tests/data/recordings")
    return file


def frames(name):
    """[(ts_s, text)] of received frames, in file order."""
    out = []
    with open(path(name), encoding="utf-8") as lines:
        for line in lines:
            line = line.rstrip("\n")
            head, sep, text = line.partition(": ")
            if not sep or " " in head:
                continue  # connection or sent-message line
            out.append((float(head), text))
    return out


def http_replies(name):
    """[(url, ts_s, body)] of REST replies."""
    out = []
    with open(path(name), encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            head, _, body = line.rstrip("\n").partition(": ")
            url, arrow, ts = head.split(" ")
            assert arrow == "->"
            out.append((url, float(ts), body))
    return out


class RefBook:
    """An independent reference book: dicts of Decimal, sorted on every read (slow, obvious)."""

    def __init__(self):
        from decimal import Decimal

        self.D = Decimal
        self.bids = {}
        self.asks = {}

    def set(self, side, price, size):
        book = self.bids if side == 0 else self.asks
        if self.D(size) == 0:
            book.pop(self.D(price), None)
        else:
            book[self.D(price)] = self.D(size)

    def load(self, bids, asks):
        self.bids.clear()
        self.asks.clear()
        for level in bids:
            self.set(0, level[0], level[1])
        for level in asks:
            self.set(1, level[0], level[1])

    def truncate(self, depth):
        for side in (0, 1):
            keep = self.levels(side)[:depth]
            book = self.bids if side == 0 else self.asks
            book.clear()
            book.update(keep)

    def levels(self, side, n=None):
        book = self.bids if side == 0 else self.asks
        ordered = sorted(book.items(), reverse=(side == 0))
        return ordered if n is None else ordered[:n]


def as_decimal_levels(book, side, n=None):
    """A Book's levels converted to Decimal with its exponents, for comparing with RefBook."""
    from decimal import Decimal

    scale_p = Decimal(1).scaleb(book.price_exp)
    scale_s = Decimal(1).scaleb(book.size_exp)
    return [(Decimal(p) * scale_p, Decimal(s) * scale_s) for p, s in book.levels(side, n)]
