"""The exact book: fixed-point parsing, apply, truncation, crossing, export, against a reference."""

import random
import tracemalloc
from decimal import Decimal

import numpy as np
import pytest

from observer.book import ASK, BID, Book, BookCrossed, BookError, BookUpdate
from observer.book.fixed import parse_decimal, render_fixed, render_minimal


@pytest.mark.parametrize(
    "text, expected",
    [("0.35130000", (35130000, 8)), ("30316", (30316, 0)), ("5.16", (516, 2)), ("0", (0, 0)),
     ("1e-05", (1, 5)), ("2.5E+3", (2500, 0)), ("00.10", (10, 2)), (".5", (5, 1)),
     ("9e18", (9 * 10**18, 0)), ("0e100", (0, 0))],
)
def test_parse_decimal_exact(text, expected):
    assert parse_decimal(text) == expected


@pytest.mark.parametrize("text", ["", ".", "-1", "+1", "1_000", " 1", "1 ", "nan", "inf", "1e", "١٢",
                                  "0x10", "1.2.3", "1e-40"])
def test_parse_decimal_rejects(text):
    with pytest.raises(ValueError):
        parse_decimal(text)


@pytest.mark.parametrize("text", ["1e19", "1e10000000", "12.5e99999999", "1E+999999999999"])
def test_parse_decimal_refuses_huge_exponents_at_once(text):
    """Past int64's 19 digits the text is refused before 10**exponent is computed (on the old
    code "1e10000000" ran for minutes)."""
    with pytest.raises(ValueError, match="integer digits"):
        parse_decimal(text)


def test_render_round_trips():
    assert render_minimal(303160, -1) == "30316"
    assert render_minimal(516, -2) == "5.16"
    assert render_minimal(5, -3) == "0.005"
    assert render_fixed(100000, -8) == "0.00100000"
    assert render_fixed(452852, -1) == "45285.2"


def test_exponent_learned_from_wire_and_rescaled_exactly():
    book = Book("t:X", paranoid=True)
    book.apply(BookUpdate(True, [["100.5", "1"], ["100.4", "2.50"]], [["101", "3"]]))
    assert (book.price_exp, book.size_exp) == (-1, -2)
    assert book.levels(BID) == [(1005, 100), (1004, 250)]
    book.apply(BookUpdate(False, [["100.55", "1"], ["100.4", "0"]], [["102", "1.001"]]))
    assert (book.price_exp, book.size_exp) == (-2, -3)
    assert book.levels(BID) == [(10055, 1000), (10050, 1000)]
    assert book.levels(ASK) == [(10100, 3000), (10200, 1001)]
    assert book.rescales == 3  # bids' snapshot, then each finer text


def test_two_close_prices_never_merge():
    book = Book("t:X", paranoid=True)
    book.apply(BookUpdate(True, [["0.1", "1"], ["0.10000000000000001", "2"]], []))
    assert book.depth(BID) == 2


def test_crossed_is_reported_not_asserted():
    book = Book("t:X", paranoid=True)
    book.apply(BookUpdate(True, [["100", "1"]], [["101", "1"]]))
    with pytest.raises(BookCrossed):
        book.apply(BookUpdate(False, [["101", "1"]], []))
    assert book.is_crossed()


def test_bad_text_and_int64_overflow_raise():
    book = Book("t:X")
    with pytest.raises(ValueError):
        book.apply(BookUpdate(False, [["abc", "1"]], []))
    with pytest.raises(BookError):
        book.apply(BookUpdate(False, [["9" * 20, "1"]], []))


def test_depth_max_truncates_worst_levels():
    book = Book("t:X", depth_max=3, paranoid=True)
    book.apply(BookUpdate(True, [[str(p), "1"] for p in range(90, 100)], [[str(p), "1"] for p in range(100, 110)]))
    assert [p for p, _ in book.levels(BID)] == [99, 98, 97]
    assert [p for p, _ in book.levels(ASK)] == [100, 101, 102]
    assert book.levels_dropped == 0  # truncation to the subscribed depth is the protocol, not a loss
    assert (book.worst(BID), book.worst(ASK)) == (97, 102)
    assert (book.levels(BID)[-1][0], book.levels(ASK)[-1][0]) == (97, 102)
    book.clear()
    assert (book.worst(BID), book.worst(ASK)) == (0, 0)


def test_levels_max_drops_and_counts():
    book = Book("t:X", levels_max=5, paranoid=True)
    book.apply(BookUpdate(True, [[str(p), "1"] for p in range(1, 9)], []))
    assert book.depth(BID) == 5
    assert book.levels_dropped == 3
    assert book.best()[0] == 8


def test_export_top_into_views_best_first():
    book = Book("t:X", paranoid=True)
    book.apply(BookUpdate(True, [["99", "1"], ["98", "2"], ["97", "3"]], [["100", "4"], ["101", "5"]]))
    arrays = np.zeros((4, 2), dtype="<i8")
    assert book.export_top(*arrays) == (2, 2)
    assert arrays.tolist() == [[99, 98], [1, 2], [100, 101], [4, 5]]
    assert book.best() == (99, 1, 100, 4)


def test_export_top_allocates_nothing_that_stays():
    book = Book("t:X")
    book.apply(BookUpdate(True, [[str(1000 - i), "1"] for i in range(500)],
                          [[str(1001 + i), "1"] for i in range(500)]))
    arrays = np.zeros((4, 50), dtype="<i8")
    views = [arrays[i] for i in range(4)]
    for _ in range(100):
        book.export_top(*views)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(1000):
        book.export_top(*views)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # Only what observer/book made counts: tracemalloc sees every thread of the process, and a
    # thread another test left running must not decide this one.
    grown = [str(stat) for stat in after.compare_to(before, "lineno")
             if "observer/book/" in stat.traceback[0].filename and stat.size_diff > 0]
    assert grown == []


def test_random_walk_matches_reference():
    rng = random.Random(20261122)
    book = Book("t:X", paranoid=True)
    ref = {BID: {}, ASK: {}}
    book.apply(BookUpdate(True, [], []))
    for _ in range(3000):
        mid = 1000
        side = rng.choice((BID, ASK))
        price = rng.randint(mid - 60, mid) if side == BID else rng.randint(mid + 1, mid + 60)
        cents = rng.choice(("", ".5", ".25", ".125"))
        size = rng.choice(("0", "1", "2.5", "0.001", "7"))
        text = f"{price}{cents}"
        levels = [[text, size]]
        book.apply(BookUpdate(False, levels if side == BID else [], levels if side == ASK else []))
        if Decimal(size) == 0:
            ref[side].pop(Decimal(text), None)
        else:
            ref[side][Decimal(text)] = Decimal(size)
    for side in (BID, ASK):
        expected = sorted(ref[side].items(), reverse=(side == BID))
        got = [(Decimal(p).scaleb(book.price_exp), Decimal(s).scaleb(book.size_exp))
               for p, s in book.levels(side)]
        assert got == expected


def test_parse_column_matches_parse_decimal():
    from observer.book.fixed import parse_column

    texts = ["0.35130000", "30316", "5.", ".5", "00.10", "7"]
    assert parse_column(texts) == ([parse_decimal(t)[0] for t in texts], [parse_decimal(t)[1] for t in texts])
    assert parse_column(["1e-05", "2"]) == ([1, 2], [5, 0])  # the per-text path
    assert parse_column([]) == ([], [])
    for bad in (["1", "1_0"], ["1", " 2"], ["-1"], ["1", 5], ["."]):
        with pytest.raises((ValueError, AttributeError)):
            parse_column(bad)


def test_snapshot_with_duplicates_zeros_and_mixed_decimals():
    book = Book("t:X", paranoid=True)
    book.apply(BookUpdate(True, [["100", "1"], ["99.5", "0"], ["100.0", "2"], ["98.25", "3.5"]],
                          [["101", "0.125"], ["101.00", "0.5"]]))
    assert (book.price_exp, book.size_exp) == (-2, -3)
    assert book.levels(BID) == [(10000, 2000), (9825, 3500)]
    assert book.levels(ASK) == [(10100, 500)]


@pytest.mark.parametrize("slot_depth", [1, 2, 3, 5])
def test_export_top_full_and_partial_slots(slot_depth):
    book = Book("t:X", paranoid=True)
    book.apply(BookUpdate(True, [["99", "1"], ["98", "2"], ["97", "3"]], [["100", "4"], ["101", "5"], ["102", "6"]]))
    arrays = np.full((4, slot_depth), -7, dtype="<i8")
    n = min(3, slot_depth)
    assert book.export_top(*arrays) == (n, n)
    assert arrays[:, :n].tolist() == [[99, 98, 97][:n], [1, 2, 3][:n], [100, 101, 102][:n], [4, 5, 6][:n]]
