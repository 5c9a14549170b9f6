"""Publishing and reading back in one process: exact values, flags, ring, stats, batching."""

from __future__ import annotations

import os
import tracemalloc
from decimal import Decimal

import numpy as np
import pytest

from obproto.segment import SegmentReader
from observer.shm import Segment
from observer.shm.wake import ROTATE_CLIENTS_MIN
from obproto import layout
from obproto.layout import BookDesc
from shm_doubles import BookDouble

DESCS = [BookDesc("binance", "BTCUSDT", "btcusdt", 0), BookDesc("kraken", "BTCUSD", "XBT/USD", 1),
         BookDesc("okx", "ETHUSDT", "ETH-USDT", 1)]


@pytest.fixture
def seg(make_segment):
    return make_segment(DESCS, shards_n=2, depth_max=4, ring_records=16)


@pytest.fixture
def reader(seg):
    fd = seg.reader_fd()
    reader = SegmentReader(fd, seg.eventfds)
    yield reader
    reader.close()
    os.close(fd)


def book_with(bids, asks, update_id=1, exch_ts_ns=0, price_exp=-2, size_exp=-8):
    book = BookDouble(price_exp, size_exp)
    book.set(bids, asks, update_id, exch_ts_ns)
    return book


def test_descriptors_round_trip(reader):
    books = reader.books()
    got = [(b.exchange, b.symbol, b.native, b.shard_index) for b in books]
    assert got == [tuple(d) for d in DESCS]
    assert books[1].name == "kraken:BTCUSD"


def test_unpublished_book_reads_empty_and_stale(reader):
    snap = reader.snapshot(0)
    assert snap.n_bids == 0
    assert snap.stale


def test_publish_reads_back_exact(seg, reader):
    big = 9_007_199_254_740_993  # 2**53 + 1: not a float, must survive exactly
    book = book_with([(6_543_210, big), (6_543_209, 7)], [(6_543_211, 3)], update_id=77,
                     exch_ts_ns=123)
    seq = seg.writer(0).publish(0, book, recv_ts_ns=456)
    snap = reader.snapshot(0)
    assert snap.seq == seq == 1
    assert list(snap.bid_px) == [6_543_210, 6_543_209]
    assert list(snap.bid_sz) == [big, 7]
    assert list(snap.ask_px) == [6_543_211]
    assert (snap.price_exp, snap.size_exp) == (-2, -8)
    assert (snap.update_id, snap.exch_ts_ns, snap.recv_ts_ns) == (77, 123, 456)
    assert snap.publish_ts_ns > 0
    assert not snap.stale and not snap.lagging
    assert snap.bids_decimal()[0] == (Decimal("65432.10"), Decimal("90071992.54740993"))
    assert snap.bids[0, 0] == 65432.10
    assert snap.asks[0, 0] == 65432.11
    snap.check()


def test_depth_limits_and_clamps(seg, reader):
    levels = [(1000 - k, 1) for k in range(10)]
    seg.writer(0).publish(0, book_with(levels, [(2000 + k, 1) for k in range(2)]))
    assert reader.snapshot(0).n_bids == 4  # depth_max of the segment
    top = reader.top(0)
    assert (top.n_bids, top.n_asks) == (1, 1)
    assert reader.snapshot(0, depth=0).n_bids == 4  # 0 = all levels, as on the wire
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="depth must be an integer >= 0"):
            reader.snapshot(0, depth=bad)


def test_flags_stale_lagging_and_mark_stale(seg, reader):
    w = seg.writer(1)
    w.publish(2, book_with([(10, 1)], [(11, 1)]), lagging=True)
    assert reader.snapshot(2).lagging
    w.publish(2, book_with([(10, 2)], [(11, 1)]))
    w.mark_stale(2)
    snap = reader.snapshot(2)
    assert snap.stale
    assert list(snap.bid_sz) == [2]  # the last book stays readable, flagged
    assert reader.book_stats(2)["stale_marks"] == 1


def test_exponent_change_is_published(seg, reader):
    w = seg.writer(0)
    w.publish(0, book_with([(100, 1)], [(101, 1)], price_exp=-1))
    w.publish(0, book_with([(1000, 1)], [(1010, 1)], price_exp=-2))
    snap = reader.snapshot(0)
    assert snap.price_exp == -2
    assert snap.bids[0, 0] == 10.0


def test_writer_refuses_other_shards_book(seg):
    with pytest.raises(ValueError, match="does not belong to shard 0"):
        seg.writer(0).publish(1, book_with([], []))


def test_ring_records_follow_publishes_in_order(seg, reader):
    follower = reader.follow([1])
    w = seg.writer(1)
    for i in range(1, 6):
        w.publish(1 + i % 2, book_with([(100 + i, i)], [(200, 1)], update_id=i))
    w.mark_stale(1)
    got = follower.poll()
    assert [(u.book_index, u.update_id, u.kind) for u in got[:5]] == [
        (2, 1, 1), (1, 2, 1), (2, 3, 1), (1, 4, 1), (2, 5, 1)]
    assert got[5].kind == layout.KIND_STALE and got[5].stale
    assert got[4].bid_px == 105 and got[4].bid == 1.05
    assert follower.overruns == 0
    assert follower.poll() == []


def test_follower_from_oldest_and_lap_resync(seg, reader):
    w = seg.writer(0)
    for i in range(1, 41):  # ring holds 16
        w.publish(0, book_with([(100 + i, 1)], [(500, 1)], update_id=i))
    assert [u.update_id for u in reader.follow([0], from_oldest=True).poll()] == list(range(25, 41))
    follower = reader.follow([0])
    for i in range(41, 61):
        w.publish(0, book_with([(100 + i, 1)], [(500, 1)], update_id=i))
    got = follower.poll()
    assert follower.overruns == 1
    assert [(u.kind, u.update_id, u.bid_px) for u in got] == [(layout.KIND_RESYNC, 60, 160)]


def test_poll_goes_by_record_seq_not_head(seg, reader):
    """A record is taken when its seq says whole (before the head moves), never while 0."""
    follower = reader.follow([0])
    w = seg.writer(0)
    w.publish(0, book_with([(101, 1)], [(500, 1)], update_id=1))
    words = np.frombuffer(seg.map, np.uint64)
    g = seg.geometry
    head_word = (g.shards_offset + layout.SHARD.fields["head"][1]) // 8
    record_word = g.rings_offset // 8  # record 0's seq word
    words[head_word] = 0  # as if the writer had not stored the head yet
    assert [u.update_id for u in follower.poll()] == [1]
    words[head_word] = 1
    w.publish(0, book_with([(102, 1)], [(500, 1)], update_id=2))
    stride = layout.RING_RECORD.itemsize // 8
    words[record_word + stride] = 0  # record 1 mid-write: its seq is 0
    assert follower.poll() == [] and follower.overruns == 0
    words[record_word + stride] = 2
    assert [u.update_id for u in follower.poll()] == [2]
    words[record_word + 2 * stride] = 3 + 16  # record 2 holds the next lap's record: lapped
    got = follower.poll()
    assert follower.overruns == 1 and [u.kind for u in got] == [layout.KIND_RESYNC]


@pytest.mark.parametrize("method", ["spin_next", "wait_next"])
def test_next_hands_out_records_in_order_and_resyncs_after_a_lap(seg, reader, method):
    w = seg.writer(0)
    follower = reader.follow([0])
    take = getattr(follower, method)
    assert take(0.01) is None  # nothing published: back after the timeout
    for i in range(1, 4):
        w.publish(0, book_with([(100 + i, 1)], [(500, 1)], update_id=i))
    w.flush()
    assert [take(1.0).update_id for _ in range(3)] == [1, 2, 3]
    assert take(0.01) is None
    for i in range(4, 30):  # the ring holds 16: lapped
        w.publish(0, book_with([(100 + i, 1)], [(500, 1)], update_id=i))
    w.flush()
    resync = take(1.0)
    assert (resync.kind, resync.update_id, follower.overruns) == (layout.KIND_RESYNC, 29, 1)
    w.publish(0, book_with([(200, 1)], [(500, 1)], update_id=30))
    w.flush()
    assert take(1.0).update_id == 30


@pytest.mark.parametrize("method", ["spin_next", "wait_next"])
def test_next_over_two_rings_keeps_the_rest_for_poll(seg, reader, method):
    follower = reader.follow()  # both shards: spin_next / wait_next go by poll()
    w0, w1 = seg.writer(0), seg.writer(1)
    w0.publish(0, book_with([(101, 1)], [(500, 1)], update_id=1))
    w1.publish(1, book_with([(102, 1)], [(500, 1)], update_id=2))
    w1.publish(2, book_with([(103, 1)], [(500, 1)], update_id=3))
    take = getattr(follower, method)
    assert take(1.0).update_id == 1
    assert follower.pending()
    assert [u.update_id for u in follower.poll()] == [2, 3]  # the backlog first, in order
    assert not follower.pending() and take(0.01) is None


def test_stats_counters_live_in_segment(seg, reader):
    w = seg.writer(1)
    stats = w.book_stats(1)
    stats.gaps += 2
    stats.lag_ns = -5  # clocks disagree: signed
    w.publish(1, book_with([(1, 1)], [(2, 1)], exch_ts_ns=9), recv_ts_ns=11)
    got = reader.book_stats(1)
    assert (got["gaps"], got["lag_ns"], got["updates"]) == (2, -5, 1)
    assert (got["last_exch_ts_ns"], got["last_recv_ns"]) == (9, 11)
    assert stats.as_dict()["gaps"] == 2


def test_one_eventfd_write_per_batch(seg, reader):
    w = seg.writer(1)
    assert not w.flush()  # nothing published: no wake-up
    for i in range(10):
        w.publish(1 + i % 2, book_with([(1, 1)], [(2, 1)], update_id=i))
    assert w.flush()
    assert reader.wait(1.0)  # the edge reached our epoll
    assert reader.shard_stats(1)["flushes"] == 1
    # Test-only peek at the counter (clients never read it): exactly one write.
    assert os.eventfd_read(seg.eventfds[1]) == 1


def test_wait_checks_before_sleeping(seg, reader):
    follower = reader.follow()
    assert not follower.wait(0.01)  # nothing: times out
    seg.writer(0).publish(0, book_with([(1, 1)], [(2, 1)]))  # no flush: no edge at all
    assert follower.wait(30.0)  # still returns at once: it checks the ring first
    assert len(follower.poll()) == 1
    assert follower.spin(0.001) is False


def test_heartbeats_and_generation(make_segment):
    seg = make_segment(generation=7)
    reader = SegmentReader(seg.reader_fd(), own_fds=True)
    try:
        assert reader.generation == 7
        seg.heartbeat(now_ns=123)
        seg.writer(0).heartbeat(now_ns=456)
        assert reader.heartbeat_ns() == 123
        assert reader.shard_heartbeat_ns(0) == 456
        assert reader.shard_stats(0)["writer_pid"] == os.getpid()
        assert not reader.closed
        seg.mark_closed()
        assert reader.closed
    finally:
        reader.close()


def test_attach_in_forked_process_writes_visible(make_segment):
    seg = make_segment(sealed=False)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the shard: attach by the inherited fd before the seal, publish after it
        code = 1
        try:
            shard = Segment.attach_fd(seg.fd, seg.all_eventfds, seg.board_fd)
            os.write(ready_w, b"r")
            os.read(go_r, 1)
            shard.writer(0).publish(0, book_with([(42, 1)], [(43, 1)], update_id=5))
            shard.writer(0).flush()
            shard.close()
            code = 0
        finally:
            os._exit(code)
    for fd in (ready_w, go_r):
        os.close(fd)
    assert os.read(ready_r, 1) == b"r"
    seg.seal()
    os.write(go_w, b"g")
    _, status = os.waitpid(pid, 0)
    for fd in (ready_r, go_w):
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    with SegmentReader(seg.reader_fd(), own_fds=True) as reader:
        snap = reader.snapshot(0)
        assert (snap.update_id, int(snap.bid_px[0])) == (5, 42)
        assert reader.shard_stats(0)["writer_pid"] == pid


@pytest.mark.parametrize("groups", ["one", "three", "three paced"])
def test_publish_allocates_nothing_once_warm(seg, groups):
    """Also when a flush writes several wake groups, or one in turn while pacing
    (observer/shm/wakegroups.py)."""
    if groups != "one":
        seg.set_wake_groups(0b1101)
        seg.set_clients(ROTATE_CLIENTS_MIN)  # paced: one group per slot, in turn
    w = seg.writer(1)
    if groups == "three paced":
        w.pace_wakes(1, _no_pacer)  # 1 ns a client: every flush is past its slot
    w.heartbeat()
    book = book_with([(100 - k, 1 + k) for k in range(4)], [(101 + k, 1) for k in range(4)])
    for _ in range(1000):  # warm-up
        w.publish(1, book, recv_ts_ns=1)
        w.flush()
    # Count only what our code allocates: in the full suite other tests' threads may still be
    # allocating in this process, and tracemalloc traces every thread.
    ours = [tracemalloc.Filter(True, f"*{part}*") for part in
            ("observer/shm/", "client/obproto/", "client/obclient/", "tests/shm/")]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(ours)
        for i in range(20_000):
            w.publish(1, book, recv_ts_ns=i)
            if i % 8 == 0:
                w.flush()
        after = tracemalloc.take_snapshot().filter_traces(ours)
    finally:
        tracemalloc.stop()
    grown = [d for d in after.compare_to(before, "lineno") if d.size_diff > 0]
    assert sum(d.size_diff for d in grown) <= 1024, grown[:5]  # nothing retained per publish
    assert all(d.count_diff < 20 for d in grown), grown[:5]  # nor one object per publish


def _no_pacer(due_ns: int) -> None:
    pass  # the flushes pay every owed wake-up themselves (see the caller)


def test_segment_refuses_bad_descriptors(segment_name):
    fds_before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(layout.LayoutError, match="shard 3"):
        Segment.create(segment_name, [BookDesc("x", "Y", "y", 3)], 2, 4, 16)
    with pytest.raises(layout.LayoutError, match="power of two"):
        Segment.create(segment_name, DESCS, 2, 4, 100)
    with pytest.raises(layout.LayoutError, match="symbol"):
        Segment.create(segment_name, [BookDesc("x", "Y" * 60, "y", 0)], 1, 4, 16)
    assert sorted(os.listdir("/proc/self/fd")) == fds_before  # nothing made, nothing left


def test_segments_are_unnamed_so_two_with_one_label_coexist(make_segment, segment_name):
    first, second = make_segment(), make_segment()
    assert first.fd != second.fd
    assert os.readlink(f"/proc/self/fd/{first.fd}").startswith("/memfd:" + segment_name)
    assert not [e for e in os.listdir("/dev/shm") if segment_name in e]
    assert np.dtype(layout.RING_RECORD).itemsize == 96


def test_restarted_shard_writer_resumes_sequences(make_segment):
    """A shard restarted on the same segment continues the slot and ring sequences."""
    seg = make_segment(sealed=False)
    first = seg.writer(0)
    for i in range(1, 4):
        first.publish(0, book_with([(100 + i, 1)], [(200, 1)], update_id=i))
    shard = Segment.attach_fd(seg.fd, seg.all_eventfds, seg.board_fd)  # the restarted shard's own mapping
    seg.seal()
    try:
        with SegmentReader(seg.reader_fd(), own_fds=True) as reader:
            follower = reader.follow([0])
            seq = shard.writer(0).publish(0, book_with([(104, 1)], [(200, 1)], update_id=4))
            assert seq == 4
            assert [(u.update_id, u.book_seq) for u in follower.poll()] == [(4, 4)]
            assert follower.overruns == 0
            assert reader.snapshot(0).update_id == 4
    finally:
        shard.close()


def test_wait_wakes_on_registered_socket_hangup(reader):
    import select
    import socket

    ours, theirs = socket.socketpair()
    try:
        reader.register(ours.fileno())
        assert reader.wait(0.01) == []
        theirs.close()  # the observer died: its end of the control socket is gone
        events = reader.wait(30.0)
        assert [fd for fd, _ in events] == [ours.fileno()]
        assert events[0][1] & (select.EPOLLHUP | select.EPOLLIN)
    finally:
        ours.close()
        theirs.close()
