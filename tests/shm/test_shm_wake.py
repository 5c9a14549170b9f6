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

import pytest

import obclient
from obclient.segment import SegmentReader
from observer.config import ConfigError, config_from_dict
from observer.shm.wake import UringWaker, make_waker
from observer.testing import NO_IO_URING_PRELUDE, ObserverProcess
from proto.layout import BookDesc
from shm_doubles import BookDouble

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0
READERS_N = 3


def _reader_child(fd: int, eventfds, ready_w: int, out_w: int) -> None:
    code = 1
    try:
        reader = SegmentReader(fd, eventfds)
        follower = reader.follow()
        os.write(ready_w, b"r")
        woke = follower.wait(WAIT_S)  # blocks in epoll until the flush's wake-up
        got = [u.update_id for u in follower.poll()]
        os.write(out_w, json.dumps({"woke": woke, "got": got}).encode() + b"\n")
        reader.close()
        code = 0
    finally:
        os._exit(code)


@pytest.mark.parametrize("wake", ["eventfd", "io_uring"])
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
                _reader_child(fd, seg.eventfds, ready_w, out_w)
            pids.append(pid)
        got = b""
        while got.count(b"r") < READERS_N:
            got += os.read(ready_r, READERS_N)
        writer = seg.writer(0, wake=wake)
        if wake == "io_uring":
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
import json, logging, os, select
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("observer.shm").addHandler(Keep())
from observer.shm.wake import make_waker
efd = os.eventfd(0, os.EFD_NONBLOCK)
ep = select.epoll()
ep.register(efd, select.EPOLLIN | select.EPOLLET)
wake, close = make_waker(efd, "io_uring")
wake()
print(json.dumps({"woke": bool(ep.poll(5.0)), "log": records}))
close()
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the seccomp filter is x86-64 only")
def test_refused_io_uring_wakes_directly_and_says_so():
    out = subprocess.run([sys.executable, "-c", REFUSED_CHILD], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["woke"] is True
    assert [line for line in result["log"] if "wake = io_uring refused" in line], result["log"]


def test_unknown_wake_mode_is_refused():
    with pytest.raises(ValueError, match="wake mode 'futex'"):
        make_waker(0, "futex")
    with pytest.raises(ConfigError, match="wake 'futex'"):
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
