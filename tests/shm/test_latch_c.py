"""client/obproto/_latch_c against client/obproto/latch.py's own code: the same bytes, the same records, the
same refusals. The compiled path is what runs by default; the Python path is its reference."""

from __future__ import annotations

import os
import random
import struct
import time

import numpy as np
import pytest

from obproto.segment import SegmentReader
from observer.book import ASK, BID, Book, BookUpdate
from obproto import latch, layout
from obproto.layout import BookDesc
from shm_doubles import BookDouble

pytestmark = pytest.mark.skipif(
    latch._latch_c is None, reason="obproto._latch_c was not built: no C compiler or Python headers "
                                   "at install (tests/test_package.py fails if they were there)")

DESCS = [BookDesc("binance", "BTCUSDT", "btcusdt", 0), BookDesc("kraken", "BTCUSD", "XBT/USD", 0)]
DEPTH = 4
RING = 16


@pytest.fixture
def compiled(monkeypatch):
    """Build writers and followers on the compiled path (True) or the Python one (False)."""
    def use(on: bool) -> None:
        monkeypatch.setattr(latch, "COMPILED", on)
    return use


def random_book(rng: random.Random) -> BookDouble:
    book = BookDouble(rng.randint(-10, 2), rng.randint(-12, 0))
    mid = rng.randint(1, 10**12)
    bids = [(mid - 1 - k, rng.randint(1, 2**62)) for k in range(rng.randint(0, DEPTH + 2))]
    asks = [(mid + k, rng.randint(1, 2**62)) for k in range(rng.randint(0, DEPTH + 2))]
    book.set(bids, asks, rng.randint(0, 2**64 - 1), rng.randint(-2**63, 2**63 - 1))
    return book


def without_publish_times(segment) -> np.ndarray:
    """What publishing wrote (stats, shards, slots, rings), the writer's clocks zeroed."""
    g = segment.geometry
    data = np.frombuffer(segment.map, np.uint8).copy()
    slots = np.frombuffer(data, layout.slot_dtype(g.depth_max), count=g.books_n,
                          offset=g.slots_offset)
    for k in range(2):
        slots["copies"][:, k]["head"]["publish_ts_ns"] = 0
    records = np.frombuffer(data, layout.RING_RECORD, count=g.ring_records * g.shards_n,
                            offset=g.rings_offset)
    records["publish_ts_ns"] = 0
    stats = np.frombuffer(data, layout.BOOK_STATS, count=g.books_n, offset=g.stats_offset)
    stats["last_update_ns"] = 0
    shards = np.frombuffer(data, layout.SHARD, count=g.shards_n, offset=g.shards_offset)
    shards["heartbeat_ns"] = 0
    return data[g.stats_offset:]  # the header before it holds the generation and start time


def test_both_paths_leave_the_same_bytes(make_segment, compiled):
    rng = random.Random(20261204)
    books = [random_book(rng) for _ in range(3 * RING)]  # laps the ring several times
    flags = [rng.randrange(4) for _ in books]
    recv_ts_ns = [rng.randint(0, 2**63 - 1) for _ in books]
    images = []
    for on, suffix in ((True, "-c"), (False, "-py")):
        compiled(on)
        segment = make_segment(DESCS, depth_max=DEPTH, ring_records=RING, suffix=suffix)
        writer = segment.writer(0)
        kind = type(writer._publish[0])
        assert (kind.__name__ == "builtin_function_or_method") is on  # the path asked for
        for i, (book, f, recv) in enumerate(zip(books, flags, recv_ts_ns)):
            writer.publish(i % 2, book, stale=bool(f & 1), lagging=bool(f & 2), recv_ts_ns=recv)
        writer.mark_stale(1)  # the cold path after the hot one: sequences stay shared
        writer.publish(1, books[0])
        assert (writer.seq(0), writer.seq(1)) == (len(books) // 2, len(books) // 2 + 2)
        images.append(without_publish_times(segment))
        writer.release()
    differ = np.flatnonzero(images[0] != images[1])
    assert differ.size == 0, f"first differing byte offsets: {differ[:16]}"


def real_book(rng: random.Random) -> Book:
    """An observer.book.Book (whose `top_lists` the compiled publisher reads) at random depth,
    exponents and values, up to the int64 edge."""
    book = Book("t:X")
    mid = rng.randint(2 * DEPTH + 2, 2**62)
    top = rng.choice((10, 2**62 - mid))
    book.apply(BookUpdate(True, [(str(mid - 1 - k), str(rng.randint(1, 2**62)))
                                 for k in range(rng.randint(0, DEPTH + 2))],
                          [(str(mid + k), str(rng.randint(1, 2**62)))
                           for k in range(rng.randint(0, min(DEPTH + 2, top)))],
                          rng.randint(0, 2**64 - 1)))
    book.exch_ts_ns = rng.randint(-2**63, 2**63 - 1)
    book.price_exp, book.size_exp = rng.randint(-10, 0), rng.randint(-12, 0)
    return book


def test_the_compiled_export_leaves_the_numpy_export_top_bytes(make_segment, compiled):
    """The compiled publisher copies a Book's top from `top_lists`; the Python path calls
    Book.export_top (numpy): the segments must be byte for byte the same."""
    rng = random.Random(20261206)
    books = [real_book(rng) for _ in range(3 * RING)]
    assert any(book.depth(BID) > DEPTH for book in books)      # full and partial copies
    assert any(book.depth(ASK) < DEPTH for book in books)
    images = []
    for on, suffix in ((True, "-c"), (False, "-py")):
        compiled(on)
        segment = make_segment(DESCS, depth_max=DEPTH, ring_records=RING, suffix=suffix)
        writer = segment.writer(0)
        for i, book in enumerate(books):
            writer.publish(i % 2, book, recv_ts_ns=i)
        images.append(without_publish_times(segment))
        writer.release()
    differ = np.flatnonzero(images[0] != images[1])
    assert differ.size == 0, f"first differing byte offsets: {differ[:16]}"


@pytest.mark.parametrize("bad, error", [("not_a_tuple", TypeError), ("three", TypeError),
                                        ("uneven", AssertionError), ("big", OverflowError),
                                        ("not_int", TypeError)])
def test_a_bad_top_lists_publishes_nothing(make_segment, compiled, bad, error):
    compiled(True)
    segment = make_segment(DESCS, depth_max=DEPTH, ring_records=RING)
    writer = segment.writer(0)
    writer.publish(0, real_book(random.Random(7)))
    before = bytes(segment.map)
    book = real_book(random.Random(8))
    bids, bid_sizes, asks, ask_sizes = book.top_lists
    book.top_lists = {"not_a_tuple": [bids, bid_sizes, asks, ask_sizes],
                      "three": (bids, bid_sizes, asks),
                      "uneven": (bids, bid_sizes[:-1], asks, ask_sizes),
                      "big": (bids[:-1] + [2**64], bid_sizes, asks, ask_sizes),
                      "not_int": (bids, bid_sizes[:-1] + ["1"], asks, ask_sizes)}[bad]
    with pytest.raises(error):
        writer.publish(0, book)
    g = segment.geometry
    words, was = np.frombuffer(segment.map, np.uint64), np.frombuffer(before, np.uint64)
    for word in (g.slots_offset // 8, g.shards_offset // 8):      # seq and head unchanged
        assert words[word] == was[word]
    writer.release()


def test_publish_stamps_the_realtime_clock(make_segment):
    segment = make_segment(DESCS, depth_max=DEPTH, ring_records=RING)
    writer = segment.writer(0)
    before = time.time_ns()
    writer.publish(0, random_book(random.Random(1)))
    after = time.time_ns()
    record = np.frombuffer(segment.map, layout.RING_RECORD, count=1,
                           offset=segment.geometry.rings_offset)[0]
    assert before <= record["publish_ts_ns"] <= after
    writer.release()


BAD_BOOKS = [("counts", AssertionError), ("price_exp", OverflowError),
             ("update_id", (OverflowError, struct.error)), ("export_raises", ZeroDivisionError)]


@pytest.mark.parametrize("on, bad, error",
                         [(on, *case) for on in (True, False) for case in BAD_BOOKS]
                         # the Python path unpacks any pair; the compiled one wants a tuple
                         + [(True, "not_a_tuple", TypeError)])
def test_a_bad_book_publishes_nothing(make_segment, compiled, bad, error, on):
    compiled(on)
    segment = make_segment(DESCS, depth_max=DEPTH, ring_records=RING)
    writer = segment.writer(0)
    good = random_book(random.Random(2))
    writer.publish(0, good)
    before = bytes(segment.map)
    book = random_book(random.Random(3))
    if bad == "counts":
        book.export_top = lambda *views: (DEPTH + 1, 0)
    elif bad == "price_exp":
        book.price_exp = 300
    elif bad == "update_id":
        book.update_id = -1
    elif bad == "export_raises":
        book.export_top = lambda *views: 1 / 0
    else:
        book.export_top = lambda *views: [1, 1]
    with pytest.raises(error):
        writer.publish(0, book)
    # Nothing a reader trusts changed: the slot's sequence, the ring head, the records.
    g = segment.geometry
    words = np.frombuffer(segment.map, np.uint64)
    was = np.frombuffer(before, np.uint64)
    for word in (g.slots_offset // 8, g.shards_offset // 8):
        assert words[word] == was[word]
    ring = slice(g.rings_offset // 8, (g.rings_offset + g.ring_bytes) // 8)
    assert np.array_equal(words[ring], was[ring])
    assert writer.publish(0, good) == 2  # and the writer goes on
    writer.release()


def test_a_released_mapping_raises_instead_of_being_written(make_segment, compiled):
    compiled(True)
    segment = make_segment(DESCS, depth_max=DEPTH, ring_records=RING)
    writer = segment.writer(0)
    publish = writer._publish[0]  # held past release, as a careless caller might
    writer.release()
    with pytest.raises(ValueError):
        publish(random_book(random.Random(4)), layout.FLAG_PUBLISHED, 0)


def follower_pair(segment, compiled):
    fd = segment.reader_fd()
    out = []
    for on in (True, False):
        compiled(on)
        reader = SegmentReader(fd, segment.eventfds)
        out.append((reader, reader.follow()))
    os.close(fd)
    return out


def test_take_and_spin_agree_with_the_python_path(make_segment, compiled):
    segment = make_segment(DESCS, depth_max=DEPTH, ring_records=RING)
    writer = segment.writer(0)
    (reader_c, c), (reader_py, py) = follower_pair(segment, compiled)
    take_c, take_py = c._take[0], py._take[0]
    spin_c, spin_py = c._spin[0], py._spin[0]
    spin_take_c, spin_take_py = c._spin_take[0], py._spin_take[0]
    assert take_c(0) is None and take_py(0) is None  # not written yet
    assert spin_c(0, 1000) is False and spin_py(0, 1000) is False
    assert spin_take_c(0, 1000) is None and spin_take_py(0, 1000) is None
    rng = random.Random(5)
    for pos in range(RING):
        writer.publish(pos % 2, random_book(rng), recv_ts_ns=pos)
        assert spin_c(pos, 10**9) is True and spin_py(pos, 10**9) is True
        got_c, got_py = take_c(pos), take_py(pos)
        assert type(got_c) is type(got_py)
        assert got_c == got_py and got_c.book_seq == pos // 2 + 1 and got_c.recv_ts_ns == pos
        assert spin_take_c(pos, 10**9) == got_c == spin_take_py(pos, 10**9)
    writer.publish(0, random_book(rng))  # overwrites position 0
    assert take_c(0) is latch.LAPPED and take_py(0) is latch.LAPPED
    assert spin_take_c(0, 1000) is latch.LAPPED and spin_take_py(0, 1000) is latch.LAPPED
    assert take_c(RING + 1) is None and take_py(RING + 1) is None
    for reader in (reader_c, reader_py):
        reader.close()
    with pytest.raises(ValueError):  # a closed reader's mapping is never read
        take_c(RING)
    with pytest.raises(ValueError):
        spin_c(RING, 1000)
    with pytest.raises(ValueError):
        spin_take_c(RING, 1000)
    writer.release()


def test_spin_next_returns_after_its_timeout(make_segment, compiled):
    segment = make_segment(DESCS, depth_max=DEPTH, ring_records=RING)
    (reader, follower), (other, _) = follower_pair(segment, compiled)
    t0 = time.monotonic()
    assert follower.spin_next(0.003) is None
    assert time.monotonic() - t0 >= 0.003
    reader.close()
    other.close()


def test_hot_paths_keep_no_memory(make_segment):
    import tracemalloc

    segment = make_segment(DESCS, depth_max=DEPTH, ring_records=RING)
    writer = segment.writer(0)
    fd = segment.reader_fd()
    reader = SegmentReader(fd, segment.eventfds)
    follower = reader.follow()
    book = random_book(random.Random(6))
    for _ in range(2000):  # warm
        writer.publish(0, book)
        follower.spin_next(1.0)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(20_000):
        book.update_id += 1
        writer.publish(0, book)
        assert follower.spin_next(1.0).update_id == book.update_id
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.count_diff for s in after.compare_to(before, "lineno") if s.count_diff > 0)
    assert grown < 20, after.compare_to(before, "lineno")[:5]  # not per message
    reader.close()
    os.close(fd)
    writer.release()
