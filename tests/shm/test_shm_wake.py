"""Wake modes (observer/shm/wake.py): the plain eventfd write and the io_uring worker's write
reach every reader process; a full ring or a refused io_uring still wakes them."""

from __future__ import annotations

import json
import os
import platform
import select
import subprocess
import sys
import time

import numpy as np
import pytest

import obclient
from obproto import updates
from obproto.segment import SegmentReader
from observer.config.settings import ConfigError, config_from_dict
from observer.shm.wake import AUTO_URING_CLIENTS, ShardWaker, UringWaker
from kit.procs import NO_IO_URING_PRELUDE, ObserverProcess, wait_until
from obproto import layout
from obproto.layout import BookDesc
from shm_doubles import BookDouble

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0
READERS_N = 3


def _reader_child(fd: int, wake_fds, ready_w: int, out_w: int) -> None:
    code = 1
    try:
        reader = SegmentReader(fd, wake_fds)
        follower = reader.follow()
        os.write(ready_w, b"r")
        woke = follower.wait(WAIT_S)  # blocks in epoll until the flush's wake-up
        got = [u.update_id for u in follower.poll()]
        os.write(out_w, json.dumps({"woke": woke, "got": got}).encode() + b"\n")
        reader.close()
        code = 0
    finally:
        os._exit(code)


@pytest.mark.parametrize("wake", ["eventfd", "io_uring", "auto"])
def test_a_flush_wakes_every_sleeping_reader_process(make_segment, wake):
    seg = make_segment([BookDesc("x", "BTCUSD", "btcusd", 0)])
    fd = seg.reader_fd()
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    pids = []
    try:
        for _ in range(READERS_N):
            pid = os.fork()
            if pid == 0:
                _reader_child(fd, [seg.wake_fd(0)], ready_w, out_w)   # as a client gets it
            pids.append(pid)
        got = b""
        while got.count(b"r") < READERS_N:
            got += os.read(ready_r, READERS_N)
        writer = seg.writer(0, wake=wake)
        if wake == "auto":
            seg.set_clients(AUTO_URING_CLIENTS)  # as the supervisor stores it
            writer.heartbeat()  # where the writer looks
        if wake != "eventfd":
            assert isinstance(writer._wake.__self__, UringWaker)  # not the fallback
        book = BookDouble(-2, -8)
        book.set([(100, 1)], [(101, 1)], 7, 0)
        writer.publish(0, book)
        assert writer.flush()
        reports = b""
        while reports.count(b"\n") < READERS_N:
            chunk = os.read(out_r, 4096)
            assert chunk, "a reader died"
            reports += chunk
        for line in reports.splitlines():
            assert json.loads(line) == {"woke": True, "got": [7]}
    finally:
        for pid in pids:
            os.waitpid(pid, 0)
        for f in (fd, ready_r, ready_w, out_r, out_w):
            os.close(f)


def test_a_full_ring_writes_directly():
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    ep = select.epoll()
    ep.register(efd, select.EPOLLIN | select.EPOLLET)
    waker = UringWaker(efd, entries=2)
    try:
        waker.wake()
        assert ep.poll(WAIT_S) == [(efd, select.EPOLLIN)]  # the worker's write
        deadline_s = time.monotonic() + WAIT_S
        while waker._in_flight and time.monotonic() < deadline_s:  # its completion posted
            waker._ring.reap(waker._on_completion)
        assert waker._in_flight == 0 and waker.errors == 0
        waker._in_flight = waker._ring.sq_entries  # as if the worker were that far behind
        waker.wake()
        assert waker.direct_writes == 1
        assert ep.poll(WAIT_S) == [(efd, select.EPOLLIN)]
        assert os.eventfd_read(efd) == 2
    finally:
        waker.close()
        ep.close()
        os.close(efd)


REFUSED_CHILD = NO_IO_URING_PRELUDE + r"""
import json, os, select
keep_log("observer.shm")
from observer.shm.wake import ShardWaker
efd = os.eventfd(0, os.EFD_NONBLOCK)
ep = select.epoll()
ep.register(efd, select.EPOLLIN | select.EPOLLET)
waker = ShardWaker(efd, "io_uring")
waker.wake()
woke = bool(ep.poll(5.0))
auto = ShardWaker(efd, "auto")
direct = auto.choose(1000) is auto.direct
print(json.dumps({"woke": woke, "direct": direct, "log": records}))
waker.close()
auto.close()
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the seccomp filter is x86-64 only")
def test_refused_io_uring_wakes_directly_and_says_so():
    out = subprocess.run([sys.executable, "-c", REFUSED_CHILD], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["woke"] is True and result["direct"] is True
    assert len([line for line in result["log"] if "wake_uring_refused" in line]) == 2, result["log"]


def test_unknown_wake_mode_is_refused():
    with pytest.raises(ValueError, match="wake mode 'futex'"):
        ShardWaker(0, "futex")
    with pytest.raises(ConfigError, match="wake: must be one of auto, eventfd, io_uring, got 'futex'"):
        config_from_dict({"observer": {"wake": "futex"}})


def test_observer_with_io_uring_wake_delivers_updates(tmp_path):
    with ObserverProcess(rate=300, workdir=str(tmp_path), extra_args=["--wake", "io_uring"]) as obs:
        obs.wait_ready().close()
        with obclient.connect(obs.socket_path) as client:
            got = []
            for update in client.updates(["BTCUSD"], timeout_s=WAIT_S):
                got.append(update)
                if len(got) == 20:
                    break
        assert len(got) == 20
        assert all(a.book_seq < b.book_seq for a, b in zip(got, got[1:]))
        assert "refused" not in obs.log_text()


def _ahead_word(seg) -> int:
    g = seg.geometry
    return (g.shards_offset + layout.SHARD.fields["wake_ahead"][1]) // 8


def test_wake_ahead_sets_the_word_and_any_flush_clears_it(make_segment):
    seg = make_segment([BookDesc("x", "BTCUSD", "btcusd", 0)])
    words = np.frombuffer(seg.map, np.uint64)
    writer = seg.writer(0)
    writer.wake_ahead()
    assert words[_ahead_word(seg)] == 1
    assert os.eventfd_read(seg.eventfds[0]) == 1  # the early write
    assert writer.flush() is False  # nothing published (a ping): no write, the word cleared
    assert words[_ahead_word(seg)] == 0
    writer.wake_ahead()
    writer.publish(0, _book(1))
    writer.wake_ahead()  # a second message in the same batch: the flush is due anyway
    assert os.eventfd_read(seg.eventfds[0]) == 1
    assert writer.flush() is True and words[_ahead_word(seg)] == 0
    assert os.eventfd_read(seg.eventfds[0]) == 1


def _book(update_id: int):
    book = BookDouble(-2, -8)
    book.set([(100, 1)], [(101, 1)], update_id, 0)
    return book


@pytest.mark.parametrize("method", ["wait", "wait_next"])
def test_a_reader_woken_ahead_spins_for_the_record(make_segment, monkeypatch, method):
    """Woken by wake_ahead with nothing new yet, wait() spins until the record lands, with no
    second eventfd write (the writer here never flushes)."""
    monkeypatch.setattr(updates, "WAKE_AHEAD_SPIN_MAX_NS", int(WAIT_S * 1e9))
    seg = make_segment([BookDesc("x", "BTCUSD", "btcusd", 0)])
    fds = seg.client_fds()
    reader = SegmentReader(fds[0], fds[1:], own_fds=True)
    follower = reader.follow()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            writer = seg.writer(0)
            writer.wake_ahead()
            time.sleep(0.05)  # "parsing": the reader is awake and spinning by now
            writer.publish(0, _book(9))
            code = 0
        finally:
            os._exit(code)
    try:
        if method == "wait":
            assert follower.wait(WAIT_S) is True
            assert [u.update_id for u in follower.poll()] == [9]
        else:
            assert follower.wait_next(WAIT_S).update_id == 9
    finally:
        os.waitpid(pid, 0)
        reader.close()
    assert os.eventfd_read(seg.eventfds[0]) == 1  # only the early write happened


def test_a_stale_wake_up_or_an_abandoned_wake_ahead_ends_the_wait(make_segment, monkeypatch):
    monkeypatch.setattr(updates, "WAKE_AHEAD_SPIN_MAX_NS", 20_000_000)
    seg = make_segment([BookDesc("x", "BTCUSD", "btcusd", 0)])
    fds = seg.client_fds()
    reader = SegmentReader(fds[0], fds[1:], own_fds=True)
    follower = reader.follow()
    words = np.frombuffer(seg.map, np.uint64)
    try:
        os.eventfd_write(seg.eventfds[0], 1)  # an edge with no wake-ahead and no record
        assert follower.wait(WAIT_S) is False
        words[_ahead_word(seg)] = 1  # a shard that died between wake_ahead and flush
        os.eventfd_write(seg.eventfds[0], 1)
        assert follower.wait(WAIT_S) is False  # gave up after the spin bound
    finally:
        reader.close()


def test_wake_ahead_can_be_turned_off(make_segment):
    seg = make_segment([BookDesc("x", "BTCUSD", "btcusd", 0)])
    writer = seg.writer(0, wake_ahead=False)
    writer.wake_ahead()
    with pytest.raises(BlockingIOError):
        os.eventfd_read(seg.eventfds[0])  # nothing written
    assert config_from_dict({"observer": {"wake_ahead": False}}).wake_ahead is False
    with pytest.raises(ConfigError, match="wake_ahead: must be true or false, got 1"):
        config_from_dict({"observer": {"wake_ahead": 1}})


def test_auto_follows_the_number_of_clients(make_segment):
    seg = make_segment([BookDesc("x", "BTCUSD", "btcusd", 0)])
    writer = seg.writer(0)  # auto is the default
    assert writer._wake is writer._wakers[0].direct
    for clients_n, uring in ((AUTO_URING_CLIENTS - 1, False), (AUTO_URING_CLIENTS, True),
                             (500, True), (1, False)):
        seg.set_clients(clients_n)
        writer.heartbeat()
        assert isinstance(getattr(writer._wake, "__self__", None), UringWaker) is uring


def test_the_supervisor_counts_clients_in_the_segment(tmp_path):
    with ObserverProcess(rate=50, workdir=str(tmp_path)) as obs:
        obs.wait_ready().close()
        with obclient.connect(obs.socket_path) as first, obclient.connect(obs.socket_path):
            words = np.frombuffer(first._att.reader.map, np.uint64)
            index = layout.HEADER.fields["clients_n"][1] // 8
            wait_until(lambda: words[index] == 2, WAIT_S, "clients_n == 2")
            del words
