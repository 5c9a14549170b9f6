"""A tiny stand-in for observer.book.Book with the four members docs/SEAMS.md names.

Test-only: the shm tests must not depend on the book engine being finished. Levels are held as
plain lists of (price_int, size_int), best first.
"""

from __future__ import annotations


class BookDouble:
    def __init__(self, price_exp: int = -2, size_exp: int = -8):
        self.price_exp = price_exp
        self.size_exp = size_exp
        self.update_id = 0
        self.exch_ts_ns = 0
        self.bids: list[tuple[int, int]] = []
        self.asks: list[tuple[int, int]] = []

    def set(self, bids, asks, update_id: int, exch_ts_ns: int = 0) -> None:
        self.bids, self.asks = list(bids), list(asks)
        self.update_id, self.exch_ts_ns = update_id, exch_ts_ns

    def export_top(self, bid_px, bid_sz, ask_px, ask_sz) -> tuple[int, int]:
        n_bids = min(len(self.bids), len(bid_px))
        n_asks = min(len(self.asks), len(ask_px))
        for k in range(n_bids):
            bid_px[k], bid_sz[k] = self.bids[k]
        for k in range(n_asks):
            ask_px[k], ask_sz[k] = self.asks[k]
        return n_bids, n_asks

    def best(self) -> tuple[int, int, int, int]:
        bid = self.bids[0] if self.bids else (0, 0)
        ask = self.asks[0] if self.asks else (0, 0)
        return bid[0], bid[1], ask[0], ask[1]

    def levels(self, side: str, n: int | None = None) -> list[tuple[int, int]]:
        levels = self.bids if side == "bid" else self.asks
        return list(levels if n is None else levels[:n])


class RampBook:
    """A book whose consistency is checkable from any copy of it, for the torn-read tests.

    Publication i has every size equal to i and update_id i, over fixed ladders; numpy slice
    stores fill each array in one call, and a copy mixing two publications shows as sizes that
    differ from each other or from update_id.
    """

    def __init__(self, depth: int, price_exp: int = -2, size_exp: int = 0):
        import numpy as np

        self.price_exp, self.size_exp = price_exp, size_exp
        self.update_id = 0
        self.exch_ts_ns = 0
        self.depth = depth
        self._bid_px = 1_000_000 - np.arange(depth, dtype=np.int64)
        self._ask_px = 1_000_001 + np.arange(depth, dtype=np.int64)

    def export_top(self, bid_px, bid_sz, ask_px, ask_sz) -> tuple[int, int]:
        n = min(self.depth, len(bid_px))
        bid_px[:n] = self._bid_px[:n]
        bid_sz[:n] = self.update_id
        ask_px[:n] = self._ask_px[:n]
        ask_sz[:n] = self.update_id
        return n, n

    def best(self):
        return int(self._bid_px[0]), self.update_id, int(self._ask_px[0]), self.update_id

    def levels(self, side, n=None):
        px = self._bid_px if side == "bid" else self._ask_px
        return [(int(p), self.update_id) for p in px[:n]]
