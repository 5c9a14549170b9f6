"""Many clients: a shard paces its wake-ups (observer/shm/writer.py, Pacing) and loses nothing;
a shard's eventfd reaches as many clients as the kernel allows (client/obproto/segment.py, epoll).

The pacing tests use the real writer, the real eventfd seen through wake fds as clients get
them, and, for delivery, the real Shard on a loom loop with reader processes that block in
epoll with no timeout: a deferred wake-up that were never paid would leave them asleep (the
test's hang guard fails it)."""

from __future__ import annotations

import os
import select
import signal
import struct

import pytest

from obproto.segment import SegmentReader
from observer import loom
from observer.shard.runner import Shard
from observer.shard.tickfeed import TickedFeed
from observer.shm.wake import PACE_CLIENTS_MIN, ROTATE_CLIENTS_MIN
from obproto import layout
from obproto.layout import BookDesc
from shm_doubles import BookDouble

pytestmark = pytest.mark.timeout(90)

GAP_NS_PER_CLIENT = 50_000_000  # 50 ms a client: with 16 clients a 0.8 s gap, far above any
# scheduling delay here, so which flushes fall inside a gap does not depend on the machine
READERS_N = PACE_CLIENTS_MIN
RECORDS_N = 300
HANG_GUARD_S = 60.0
_RESULT = struct.Struct("<qqqq")  # records, holes, laps, last book_seq


def _book(update_id: int) -> BookDouble:
    book = BookDouble(-2, -8)
    book.set([(100, 1)], [(101, 1)], update_id, 0)
    return book


def _edges(ep: select.epoll) -> int:
    """How many wake-ups reached this client since the last look (0 or 1: edge-triggered)."""
    return len(ep.poll(0))


def _observer(seg) -> SegmentReader:
    """A reader of the segment, for its shard counters (closed with the segment's fixture)."""
    return SegmentReader(seg.reader_fd(), own_fds=True)


def _paced_writer(make_segment, clients_n: int):
    seg = make_segment([BookDesc("x", "BTCUSD", "btcusd", 0)], ring_records=4096)
    seg.set_clients(clients_n)
    writer = seg.writer(0, wake="eventfd")
    owed: list[int] = []
    writer.pace_wakes(GAP_NS_PER_CLIENT, owed.append)
    writer.heartbeat()  # where the writer reads the client count
    ep = select.epoll()
    ep.register(seg.wake_fd(0), select.EPOLLIN | select.EPOLLET)  # as obclient's Client does
    return seg, writer, owed, ep


def test_flushes_inside_the_gap_defer_one_wake_up_and_flush_owed_pays_it(make_segment):
    seg, writer, owed, ep = _paced_writer(make_segment, PACE_CLIENTS_MIN)
    assert writer.wake_gap_ns == PACE_CLIENTS_MIN * GAP_NS_PER_CLIENT
    view = _observer(seg)
    flushes = lambda: view.shard_stats(0)["flushes"]  # noqa: E731
    writer.publish(0, _book(1))
    assert writer.flush()
    assert _edges(ep) == 1 and flushes() == 1 and owed == []
    for update_id in (2, 3, 4):  # inside the gap: published, not announced
        writer.publish(0, _book(update_id))
        assert writer.flush()
    assert _edges(ep) == 0 and flushes() == 1
    assert len(owed) == 1  # the pacer is told once, with the gap's end
    assert writer.flush_owed(owed[-1])  # the pacer, at the due time
    assert _edges(ep) == 1 and flushes() == 2
    assert not writer.flush_owed(owed[-1])  # paid: nothing more
    assert not writer.flush()  # nothing new
    assert _edges(ep) == 0 and len(owed) == 1
    view.close()


def test_wake_ahead_is_off_while_pacing_and_few_clients_are_not_paced(make_segment):
    seg, writer, owed, ep = _paced_writer(make_segment, PACE_CLIENTS_MIN)
    view = _observer(seg)
    writer.wake_ahead()
    assert view.shard_stats(0)["wake_ahead"] == 0 and _edges(ep) == 0
    view.close()
    seg.set_clients(PACE_CLIENTS_MIN - 1)
    writer.heartbeat()
    assert writer.wake_gap_ns == 0
    for update_id in (1, 2, 3):
        writer.publish(0, _book(update_id))
        writer.flush()
        assert _edges(ep) == 1  # every flush wakes
    assert owed == []


def test_a_writer_without_a_pacer_never_defers(make_segment):
    seg = make_segment([BookDesc("x", "BTCUSD", "btcusd", 0)])
    seg.set_clients(10 * PACE_CLIENTS_MIN)
    writer = seg.writer(0, wake="eventfd")
    writer.heartbeat()
    assert writer.wake_gap_ns == 0


class BurstFeed:
    """A clock-driven sans-IO adapter (run by TickedFeed, as the synthetic walk is) that
    publishes RECORDS_N updates of one book, one per pass as fast as the loop turns, then
    nothing: the last ones land inside a gap, with no flush after them, so only the pacer can
    announce them."""

    exchange = "x"

    def __init__(self):
        self.books = {"BTCUSD": _book(0)}
        self.sent = 0
        self.idle_ns = 3600 * 10**9

    def start(self, now_ns):
        return self.on_tick(now_ns)

    def on_tick(self, now_ns):
        from observer.feeds.actions import Publish

        if self.sent >= RECORDS_N:
            return []
        self.sent += 1
        self.books["BTCUSD"].set([(100, 1)], [(101, 1)], self.sent, 0)   # in place: the sink holds it
        return [Publish("BTCUSD")]

    def next_deadline_ns(self):
        import time

        return time.time_ns() + (self.idle_ns if self.sent >= RECORDS_N else 0)


def _blocking_reader(fd: int, wake_fd: int, ready_w: int, out_w: int) -> None:
    """Follow the ring blocking in epoll with no timeout, until the last record."""
    code = 1
    try:
        reader = SegmentReader(fd, [wake_fd])
        follower = reader.follow()
        os.write(ready_w, b"r")
        records = holes = laps = 0
        last = 0
        while last < RECORDS_N:
            follower.wait(None)
            for update in follower.poll():
                if update.kind == layout.KIND_RESYNC:
                    laps += 1
                elif update.book_seq != last + 1:
                    holes += 1
                records += 1
                last = update.book_seq
        os.write(out_w, _RESULT.pack(records, holes, laps, last))
        code = 0
    finally:
        os._exit(code)


@pytest.mark.parametrize("groups_n, clients_n", [(1, READERS_N), (3, READERS_N),
                                                 (3, ROTATE_CLIENTS_MIN)])
def test_many_blocking_readers_get_every_record_and_the_last_deferred_wake_up(
        make_segment, groups_n, clients_n):
    """Readers spread over `groups_n` wake groups (observer/shm/wakegroups.py), woken all at
    once per gap or, with `clients_n` from ROTATE_CLIENTS_MIN, in turn: a group whose last
    wake-up were never paid would hang its readers. The gap is the same 0.8 s in all three."""
    seg = make_segment([BookDesc("x", "BTCUSD", "btcusd", 0)], ring_records=4096)
    seg.set_wake_groups((1 << groups_n) - 1)
    fd = seg.reader_fd()
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    pids = []
    results = None
    try:
        for k in range(READERS_N):
            pid = os.fork()
            if pid == 0:
                _blocking_reader(fd, seg.wake_fd(0, k % groups_n), ready_w, out_w)
            pids.append(pid)
        os.close(ready_w)
        os.close(out_w)
        ready_w = out_w = -1
        got = b""
        while len(got) < READERS_N:
            chunk = os.read(ready_r, READERS_N)
            assert chunk, "a reader died before it was ready"
            got += chunk
        seg.set_clients(clients_n)  # as the supervisor does (a hint: more than are here)
        writer = seg.writer(0, wake="eventfd")
        shard = Shard(0, writer, [TickedFeed(BurstFeed())], {("x", "BTCUSD"): 0},
                      wake_gap_us_per_client=GAP_NS_PER_CLIENT * READERS_N // clients_n // 1000)
        results = _run_until_reported(shard, out_r)
        view = _observer(seg)
        flushes = view.shard_stats(0)["flushes"]
        view.close()
    finally:
        for fd_ in (ready_r, ready_w, out_r, out_w, fd):
            if fd_ >= 0:
                os.close(fd_)
        for pid in pids:
            if results is None:          # the shard failed: readers would wait for ever
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert len(results) == READERS_N
    for records, holes, laps, last in results:
        assert (holes, laps, last) == (0, 0, RECORDS_N)
        assert records == RECORDS_N
    # Paced: RECORDS_N flushes (one per pass) woke each group a handful of times only.
    assert shard.passes >= RECORDS_N
    assert groups_n + 1 <= flushes < groups_n * RECORDS_N // 10


def _run_until_reported(shard, out_r: int) -> list[tuple]:
    loop = loom.Loop()
    data = bytearray()

    def main():
        shard.start(loop)
        try:
            with loom.timeout(HANG_GUARD_S):  # a hang guard: readers left asleep fail here
                while len(data) < READERS_N * _RESULT.size:
                    loom.wait_readable(out_r)
                    data.extend(os.read(out_r, 4096))
        finally:
            shard.stop()

    try:
        loop.run(main)
    finally:
        loop.close()
    return [_RESULT.unpack_from(data, i) for i in range(0, len(data), _RESULT.size)]


def test_a_shard_eventfd_reaches_300_clients_each_waiting_in_its_own_epoll(make_segment):
    """obclient's Client waits in its own epoll; its SegmentReader must not put the wake fd in
    a second one: Linux refuses a 501st epoll nested one level on one eventfd (EINVAL), which
    with two per client stopped the 250th client of a shard at attach."""
    seg = make_segment([BookDesc("x", "BTCUSD", "btcusd", 0)])
    clients = []
    try:
        for _ in range(300):
            wake_fd = seg.wake_fd(0)
            reader = SegmentReader(seg.reader_fd(), [wake_fd], own_fds=True)
            ep = select.epoll()
            clients.append((reader, ep))
            ep.register(wake_fd, select.EPOLLIN | select.EPOLLET)  # as Client.attach does
        writer = seg.writer(0, wake="eventfd")
        writer.publish(0, _book(1))
        writer.flush()
        assert all(_edges(ep) == 1 for _, ep in clients)
        assert clients[0][0].wait(0) != []  # a reader's own wait still works (its epoll, made now)
    finally:
        for reader, ep in clients:
            ep.close()
            reader.close()
