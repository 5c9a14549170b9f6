"""observer/book/_book_c against book.py's own level loop: the same levels after every message.

Two books get the same messages, one applying them through the compiled loop and one through
the pure-Python reference; after every message both must hold the same levels, exponents and
counters, and a message that fails must fail the same way (type and text) in both. Streams:
random ones built to hit every branch (new, changed, deleted and unknown levels, repeated
prices, finer exponents mid-message, odd and bad texts, values past int64, tuples), and the
real Binance spot and futures recordings (tests/data/recordings), from their REST snapshots.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from observer.book import ASK, BID, Book, BookUpdate
from observer.book import book as book_mod

pytestmark = pytest.mark.skipif(
    book_mod._book_c is None, reason="observer.book._book_c was not built: no C compiler or "
    "Python headers at install (tests/test_package.py fails if they were there)")

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"   # in the repo


class Pair:
    """A compiled book and a reference book fed the same messages."""

    def __init__(self, **options) -> None:
        self.compiled = Book("t:C", paranoid=True, **options)
        self.reference = Book("t:P", paranoid=True, **options)
        self.messages = 0

    def apply(self, update: BookUpdate) -> None:
        outcomes = [self._apply(self.compiled, update, True),
                    self._apply(self.reference, update, False)]
        self.messages += 1
        assert outcomes[0] == outcomes[1], f"message {self.messages}: {update}"
        self.assert_same()

    @staticmethod
    def _apply(book: Book, update: BookUpdate, compiled: bool):
        saved = book_mod.COMPILED
        book_mod.COMPILED = compiled
        try:
            book.apply(update)
        except Exception as exc:            # the same failure, or the difference is the bug
            return type(exc), str(exc).replace(book.name, "")
        finally:
            book_mod.COMPILED = saved
        return None

    def assert_same(self) -> None:
        c, r = self.compiled, self.reference
        where = f"after message {self.messages}"
        assert (c.price_exp, c.size_exp, c.rescales) == (r.price_exp, r.size_exp, r.rescales), where
        assert c.levels(BID) == r.levels(BID), where
        assert c.levels(ASK) == r.levels(ASK), where
        assert (c.update_id, c.levels_dropped) == (r.update_id, r.levels_dropped), where


def text_of(rng: random.Random, thousandths: int, decimals: int) -> str:
    """`thousandths / 1000` rounded to `decimals` (0-3), in one of the spellings exchanges use."""
    value = thousandths // 10 ** (3 - decimals)
    digits = str(value).rjust(decimals + 1, "0")
    text = f"{digits[:-decimals]}.{digits[-decimals:]}" if decimals else digits
    form = rng.random()
    if form < 0.05 and decimals:
        return text.lstrip("0") if text[0] == "0" else "0" + text     # ".5" / "00.10"
    if form < 0.08 and not decimals:
        return text + "."                                          # "5."
    if form < 0.15:
        return text + "0" * rng.randint(1, 3)                      # trailing zeros: precision
    return text


ODD_TEXTS = ["1e-05", "2.5E+3", "abc", "1_000", " 1", "+5", "-1", "", ".", "1.2.3", "9" * 19,
             "9" * 25, "0." + "0" * 18 + "1", "١٢", "nan"]


def random_level(rng: random.Random, mid: int, side: int, decimals_max: int, odd_p: float):
    """One level near `mid` (in thousandths); finer texts only once `decimals_max` allows."""
    distance = int(rng.expovariate(1 / 6)) * 10 ** (3 - decimals_max)
    price = mid - 1000 - distance if side == BID else mid + 1000 + distance
    price_text = text_of(rng, price, rng.randint(0, decimals_max))
    size_text = "0" if rng.random() < 0.25 else text_of(rng, rng.randint(1, 10**6),
                                                       rng.randint(0, decimals_max))
    roll = rng.random()
    if roll < odd_p:
        return [rng.choice(ODD_TEXTS), size_text] if roll < odd_p / 2 else [price_text, rng.choice(ODD_TEXTS)]
    if roll < odd_p * 1.2:
        return rng.choice(([price_text], [5, size_text], [price_text, None], {"p": price_text},
                           "ab"))
    level = [price_text, size_text, "extra"] if roll < 0.05 else [price_text, size_text]
    return tuple(level) if roll > 0.97 else level


@pytest.mark.parametrize("seed", range(6))
def test_random_streams_leave_the_same_levels(seed):
    rng = random.Random(seed)
    pair = Pair(levels_max=400 if seed % 2 else 100_000)
    mid = 100_000_000                                  # thousandths

    def snapshot(update_id):
        return BookUpdate(True, [[str(mid // 1000 - 1 - k), "1"] for k in range(50)],
                          [[str(mid // 1000 + 1 + k), "2"] for k in range(50)], update_id)

    pair.apply(snapshot(1))
    odd_p = 0.0 if seed < 2 else 0.02
    for message in range(1500):
        decimals_max = min(3, message // 300)          # finer texts arrive mid-stream
        mid += rng.choice((-1, 0, 0, 1)) * 10 ** (3 - decimals_max)
        bids = [random_level(rng, mid, BID, decimals_max, odd_p) for _ in range(rng.randint(0, 6))]
        asks = [random_level(rng, mid, ASK, decimals_max, odd_p) for _ in range(rng.randint(0, 6))]
        if rng.random() < 0.05 and bids:
            bids.append(list(bids[0]) if isinstance(bids[0], (list, tuple)) else bids[0])
        pair.apply(BookUpdate(False, bids, asks, message + 2))
        if pair.compiled.is_crossed():                 # what an adapter does: a new snapshot
            pair.apply(snapshot(message + 2))
    assert pair.compiled.rescales > 1                  # finer exponents arrived mid-stream
    assert pair.compiled.depth(BID) + pair.compiled.depth(ASK) > 20


def test_the_compiled_loop_is_the_one_taking_plain_levels():
    """Only the reference fills the text caches: a compiled book that applied plain levels
    has empty caches, so the test above cannot pass by running Python twice."""
    pair = Pair()
    pair.apply(BookUpdate(True, [["100.5", "1"]], [["101.5", "1"]]))
    pair.apply(BookUpdate(False, [["100.4", "2"], ["100.3", "7"]], [["101.6", "0"]]))
    assert pair.compiled._price_ints == {} and pair.compiled._size_ints == {}
    assert pair.reference._price_ints and pair.reference._size_ints


def test_a_finer_exponent_mid_message_is_handed_back_and_applied_in_order():
    pair = Pair()
    pair.apply(BookUpdate(True, [["100", "1"]], [["102", "1"]]))
    pair.apply(BookUpdate(False, [["99", "2"], ["99.5", "3"], ["99.25", "0.125"], ["100", "0"]],
                          [["101.75", "1"], ["101.75", "0"]]))
    assert pair.compiled.levels(BID) == [(9950, 3000), (9925, 125), (9900, 2000)]
    assert pair.compiled.levels(ASK) == [(10200, 1000)]


def recorded_depth(name: str) -> list[dict]:
    path = RECORDINGS / name
    if not path.is_file():
        pytest.fail(f"recording {name} not found in tests/data/recordings")
    events = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            head, sep, text = line.partition(": ")
            if sep and " " not in head and "depthUpdate" in text:
                msg = orjson.loads(text)
                events.append(msg.get("data", msg))
    return events


def recorded_snapshots(name: str) -> dict[str, dict]:
    with open(RECORDINGS / name, encoding="utf-8") as lines:
        return {line.split("symbol=")[1].split("&")[0]: orjson.loads(line.partition(": ")[2])
                for line in lines if line.strip()}


@pytest.mark.parametrize("ws_name, http_name", [("BINANCE.ws.1.0", "BINANCE.http.0.0"),
                                                ("BINANCE_FUTURES.ws.1.0", "BINANCE_FUTURES.http.0.0")])
def test_recorded_streams_leave_the_same_levels(ws_name, http_name):
    events = recorded_depth(ws_name)
    snapshots = recorded_snapshots(http_name)
    pairs = {}
    for event in events:
        symbol = event["s"]
        if symbol not in pairs:
            pairs[symbol] = Pair()
            snap = snapshots[symbol]
            pairs[symbol].apply(BookUpdate(True, snap["bids"], snap["asks"], snap["lastUpdateId"]))
        if event["u"] > pairs[symbol].reference.update_id:
            pairs[symbol].apply(BookUpdate(False, event["b"], event["a"], event["u"]))
    assert sum(pair.messages for pair in pairs.values()) > 100
    assert all(pair.compiled.depth(BID) > 100 for pair in pairs.values())


TEXTS = ["5", "5.", ".5", "0", "000", "0.0", "1" * 18, "1" * 19, "9" * 18, "0.00000001",
         "0.000000001", "123456789.12345678", "12345678901.2345678", "92233720368.54775807",
         "92233720368.54775808", "", ".", "1.2.3", "-1", "+1", "1e3", " 1", "1 ", "١", "0x1",
         "01.10"]


@pytest.mark.parametrize("price", ["100.5", "0.00000001", "1" * 19])
@pytest.mark.parametrize("size", TEXTS)
def test_text_levels_take_exactly_what_set_levels_takes(price, size):
    """set_text_levels (a diff's levels read from its bytes) accepts a level exactly when
    set_levels calls it plain, and leaves the same side; otherwise it leaves the book as it
    was (all or nothing)."""
    def side():
        return [100, 200], [7, 8]

    keys, sizes = side()
    taken = book_mod._book_c.set_levels(keys, sizes, [[price, size]], 0, False, 8, 8) == 1
    bids = orjson.dumps([[price, size]])
    wire = bids + b"[]"                 # the bids' span, then the asks' (empty)
    text_keys, text_sizes = side()
    ask_keys, ask_sizes = side()
    applied = book_mod._book_c.set_text_levels(text_keys, text_sizes, ask_keys, ask_sizes, wire,
                                               0, len(bids), len(bids), len(wire), 8, 8)
    assert applied == taken
    assert (text_keys, text_sizes) == ((keys, sizes) if taken else side())
    assert (ask_keys, ask_sizes) == side()
