"""obsim's pieces without sockets: exact text, books, checksums, sources, recordings."""

from __future__ import annotations

import random
import zlib

import pytest

from obsim import replay
from obsim.book import (ASK, BID, Instrument, TrueBook, kraken_checksum, okx_checksum, parse_scaled,
                               scaled_text, window, window_diff)
from obsim.source import CycleSource, RandomWalk, ReplaySource

from .simkit import recordings_dir


def book_of(inst: Instrument, bids, asks) -> TrueBook:
    book = TrueBook()
    for side, levels in ((BID, bids), (ASK, asks)):
        for price, size in levels:
            book.set(side, parse_scaled(price, inst.price_decimals), parse_scaled(size, inst.size_decimals))
    return book


def test_scaled_text_is_exact_and_round_trips():
    assert scaled_text(10000000, 8) == "0.10000000"
    assert scaled_text(4528350, 1) == "452835.0"
    assert scaled_text(7, 0) == "7"
    rng = random.Random(3)
    for _ in range(2000):
        value, decimals = rng.randrange(0, 10 ** 12), rng.randrange(0, 10)
        assert parse_scaled(scaled_text(value, decimals), decimals) == value
    with pytest.raises(ValueError):
        parse_scaled("0.123", 2)


def test_kraken_checksum_documented_example():
    inst = Instrument(1, 8)
    asks = [("45285.2", "0.00100000"), ("45286.4", "1.54571953"), ("45286.6", "1.54571109"),
            ("45289.6", "1.54560911"), ("45290.2", "0.15890660"), ("45291.8", "1.54553491"),
            ("45294.7", "0.04454749"), ("45296.1", "0.35380000"), ("45297.5", "0.09945542"),
            ("45299.5", "0.18772827")]
    bids = [("45283.5", "0.10000000"), ("45283.4", "1.54582015"), ("45282.1", "0.10000000"),
            ("45281.0", "0.10000000"), ("45280.3", "1.54592586"), ("45279.0", "0.07990000"),
            ("45277.6", "0.03310103"), ("45277.5", "0.30000000"), ("45277.3", "1.54602737"),
            ("45276.6", "0.15445238")]
    assert kraken_checksum(inst, book_of(inst, bids, asks)) == 3310070434


def signed_crc(text: str) -> int:
    crc = zlib.crc32(text.encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def test_okx_checksum_interleaves_and_continues_with_the_longer_side():
    # OKX's documented rule on the text OKX sends and obsim renders for it ("3366", not "3366.0").
    inst = Instrument(1, 0, minimal_text=True)
    book = book_of(inst, [("3366.1", "7"), ("3366", "6")], [("3366.8", "9"), ("3368", "8")])
    assert okx_checksum(inst, book) == signed_crc("3366.1:7:3366.8:9:3366:6:3368:8")
    assert okx_checksum(inst, book) == -1881014294   # the doc's own vector
    book = book_of(inst, [("3366.1", "7")], [("3366.8", "9"), ("3368", "8"), ("3372", "8")])
    assert okx_checksum(inst, book) == 831078360      # the doc's second vector
    deep = book_of(inst, [(f"{3000 - i}", "1") for i in range(30)], [(f"{4000 + i}", "2") for i in range(30)])
    expected = ":".join(f"{3000 - i}:1:{4000 + i}:2" for i in range(25))     # top 25 only
    assert okx_checksum(inst, deep) == signed_crc(expected)


def test_minimal_text_drops_trailing_zeros_only():
    inst = Instrument(1, 8, minimal_text=True)
    assert [inst.price_text(v) for v in (33660, 33661, 0)] == ["3366", "3366.1", "0"]
    assert [inst.size_text(v) for v in (50000000, 100, 1200000000)] == ["0.5", "0.000001", "12"]


def test_true_book_sets_deletes_and_orders():
    book = TrueBook()
    book.set(BID, 100, 5)
    book.set(BID, 102, 1)
    book.set(ASK, 105, 2)
    book.set(BID, 101, 0)                 # deleting an absent level is a no-op
    book.set(BID, 100, 0)
    assert book.top(BID) == [(102, 1)] and book.top(ASK, 5) == [(105, 2)]
    book.check()


def test_window_diff_turns_one_window_into_the_next():
    rng = random.Random(5)
    for _ in range(200):
        before = {rng.randrange(50): rng.randrange(1, 9) for _ in range(10)}
        after = {rng.randrange(50): rng.randrange(1, 9) for _ in range(10)}
        rebuilt = dict(before)
        for price, size in window_diff(before, after):
            if size:
                rebuilt[price] = size
            else:
                rebuilt.pop(price)
        assert rebuilt == after


def test_random_walk_is_seeded_uncrossed_and_bounded():
    inst = Instrument(2, 4, tick_int=5)
    books = []
    for _ in range(2):
        walk = RandomWalk(inst, 11, 5_000_000, 30, 50_000)
        book = TrueBook()
        walk.seed_book(book)
        for _ in range(3000):
            walk.step(book)
            assert book.depth(BID) <= 30 and book.depth(ASK) <= 30
        book.check()
        books.append(book.sizes)
    assert books[0] == books[1]


def test_cycle_source_materializes_the_exact_book_at_any_position():
    inst = Instrument(2, 4)
    walk = RandomWalk(inst, 3, 1_000_000, 40, 9999, changes_per_event=4)
    cycle = CycleSource(walk, 230, checkpoint_every=50)
    lazy = TrueBook()
    cycle.seed_book(lazy)
    eager = lazy.copy()
    rng = random.Random(9)
    for _ in range(1000):                 # more than four full cycles, reads at random moments
        for side, price, size in cycle.step(lazy):
            eager.set(side, price, size)
        if rng.random() < 0.1:
            assert cycle.materialize(lazy).sizes == eager.sizes
    assert cycle.materialize(lazy).sizes == eager.sizes


def test_replay_source_keeps_the_book_valid():
    book = TrueBook()
    events = [[(BID, 100, 1), (ASK, 99, 3)], [(BID, 98, 2)]]      # crosses for an instant
    source = ReplaySource([(BID, 97, 1), (ASK, 101, 1)], events, depth_max=2)
    source.seed_book(book)
    while source.step(book) is not None:
        book.check()
    assert book.depth(BID) <= 2


def test_every_recording_converts_and_replays_cleanly():
    recordings = recordings_dir()
    for exchange in replay.RECORDING_FILES:
        books = replay.load(exchange, recordings)
        assert books, exchange
        for symbol, (inst, initial, events) in books.items():
            source = ReplaySource(initial, events, 1000)
            book = TrueBook()
            source.seed_book(book)
            while source.step(book) is not None:
                pass
            book.check()
            assert book.depth(BID) and book.depth(ASK), (exchange, symbol)


def test_kraken_window_is_top_depth():
    book = TrueBook()
    for i in range(1, 30):
        book.set(BID, 1000 - i, i)
        book.set(ASK, 1000 + i, i)
    bids, asks = window(book, 10)
    assert list(bids) == [999 - i for i in range(10)] and list(asks) == [1001 + i for i in range(10)]
