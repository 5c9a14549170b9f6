"""Real reader processes against a real segment: torn reads, a stopped reader, shared wake-ups."""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from obproto import latch, layout
from obproto.layout import BookDesc
from shm_doubles import RampBook

READER = Path(__file__).resolve().parent / "shm_reader_proc.py"
DEADLINE_S = 60  # for "wait until" steps only; a busy machine may be slow, never wrong


def spawn(mode: str, *args, fds) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(READER), mode, *map(str, args)],
                            pass_fds=fds, stdout=subprocess.PIPE, text=True)


def read_line(proc: subprocess.Popen, timeout_s: float = DEADLINE_S) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"reader {proc.pid} said nothing within {timeout_s} s"
    line = proc.stdout.readline()
    assert line, f"reader {proc.pid} exited early with {proc.wait()}"
    return line


def end(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.fixture
def reader_fd_of():
    fds = []

    def make(segment):
        fds.append(segment.reader_fd())
        return fds[-1]

    yield make
    for fd in fds:
        os.close(fd)


@pytest.fixture
def wake_fd_of():
    """A client's wake fd for shard 0 (Segment.wake_fd), closed after the test."""
    fds = []

    def make(segment):
        fds.append(segment.wake_fd(0))
        return fds[-1]

    yield make
    for fd in fds:
        os.close(fd)


def publish_until_done(writer, book, procs) -> int:
    """Publish as fast as possible until every reader process has exited."""
    deadline = time.monotonic() + DEADLINE_S
    publishes = 0
    while any(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "readers did not finish"
        for _ in range(50):
            book.update_id += 1
            writer(book)
            publishes += 1
    return publishes


class UnlatchedWriter:
    """The control: writes the copy readers are told to use, in place, without the latch."""

    def __init__(self, segment):
        g = segment.geometry
        slot = np.frombuffer(segment.map, layout.slot_dtype(g.depth_max), count=1,
                             offset=g.slots_offset)[0]
        seq = int(slot["seq"])
        self.seq = seq  # stays: readers keep accepting the copy while it is rewritten
        self.copy = slot["copies"][seq & 1]  # readers load seq (unchanged) and read this one
        self.head_offset = (g.slots_offset + layout.slot_dtype(g.depth_max).fields["copies"][1]
                            + (seq & 1) * layout.copy_dtype(g.depth_max).itemsize)
        self.map = segment.map

    def __call__(self, book) -> None:
        c = self.copy
        n, _ = book.export_top(c["bid_px"], c["bid_sz"], c["ask_px"], c["ask_sz"])
        struct.pack_into(layout.COPY_HEAD_FORMAT, self.map, self.head_offset, self.seq, n, n,
                         book.price_exp, book.size_exp, layout.FLAG_PUBLISHED, book.update_id,
                         0, 0, 0)


def run_torn(segment, fd, writer_fn, readers_n, duration_s, torn_stop, depth):
    book = RampBook(depth)
    procs = [spawn("torn", fd, depth, duration_s, torn_stop, fds=[fd]) for _ in range(readers_n)]
    try:
        publishes = publish_until_done(writer_fn, book, procs)
        results = [json.loads(read_line(p)) for p in procs]
    finally:
        end(procs)
    return publishes, results


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_latch_gives_zero_torn_reads_and_control_tears(make_segment, reader_fd_of, monkeypatch,
                                                       compiled):
    if compiled and latch._latch_c is None:
        pytest.skip("obproto._latch_c was not built: no C compiler or Python headers at install "
                    "(tests/test_package.py fails if they were there)")
    monkeypatch.setattr(latch, "COMPILED", compiled)  # the writer's path (client/obproto/latch.py)
    depth = 256
    segment = make_segment([BookDesc("sim", "TORN", "torn", 0)], depth_max=depth)
    fd = reader_fd_of(segment)
    writer = segment.writer(0)

    publishes, results = run_torn(segment, fd, lambda b: writer.publish(0, b), readers_n=3,
                                  duration_s=3.0, torn_stop=1, depth=depth)
    assert all(r["reads"] > 100 for r in results), results
    assert all(r["distinct"] > 10 for r in results), results  # readers saw it move
    assert [r["torn"] for r in results] == [0, 0, 0], results

    if not compiled:
        return  # the control below is the same for both writers
    # The same readers and the same check, with the latch removed: tearing must be seen, or
    # the test above proves nothing.
    _, control = run_torn(segment, fd, UnlatchedWriter(segment), readers_n=2,
                          duration_s=10.0, torn_stop=20, depth=depth)
    assert sum(r["torn"] for r in control) > 0, control


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def wait_state(pid: int, state: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while proc_state(pid) != state:
        assert time.monotonic() < deadline, f"process {pid} never reached state {state}"
        time.sleep(0.005)


def test_stopped_reader_never_slows_writer_and_resyncs(make_segment, reader_fd_of, wake_fd_of):
    from shm_doubles import BookDouble

    ring_records = 64
    segment = make_segment(ring_records=ring_records)
    fd = reader_fd_of(segment)
    wake_fd = wake_fd_of(segment)
    writer = segment.writer(0)
    book = BookDouble()
    final_id = 20 * ring_records
    proc = spawn("follow", fd, wake_fd, final_id, fds=[fd, wake_fd])
    try:
        assert read_line(proc).strip() == "ready"
        for i in range(1, 11):
            book.set([(1000 + i, 1)], [(5000, 1)], i)
            writer.publish(0, book)
        writer.flush()
        os.kill(proc.pid, signal.SIGSTOP)
        wait_state(proc.pid, "T")
        for i in range(11, final_id + 1):  # 20 rings' worth while the reader cannot run
            book.set([(1000 + i, 1)], [(5000, 1)], i)
            writer.publish(0, book)
            if i % 8 == 0:
                writer.flush()
        writer.flush()
        assert proc_state(proc.pid) == "T"  # the writer finished all of it without the reader
        os.kill(proc.pid, signal.SIGCONT)
        result = json.loads(read_line(proc))
    finally:
        end([proc])
    assert result["last_id"] == final_id
    assert result["overruns"] >= 1
    assert result["order_errors"] == 0
    assert result["resync_ids"] and result["resync_ids"][0] > final_id - ring_records
    assert result["records"] < final_id  # it skipped what it could not keep, by design


def test_every_reader_gets_every_wakeup(make_segment, reader_fd_of, wake_fd_of):
    """Each reader waits on its own wake fd, as clients do (one epoll per client watching the
    shard's eventfd): one flush wakes all of them, every round."""
    from shm_doubles import BookDouble

    segment = make_segment()
    fd = reader_fd_of(segment)
    writer = segment.writer(0)
    book = BookDouble()
    rounds = 15
    wake_fds = [wake_fd_of(segment) for _ in range(3)]
    procs = [spawn("wakes", fd, w, rounds, fds=[fd, w]) for w in wake_fds]
    try:
        for p in procs:
            assert read_line(p).strip() == "ready"
        for i in range(1, rounds + 1):
            book.set([(100, 1)], [(101, 1)], i)
            writer.publish(0, book)
            writer.flush()
            for p in procs:  # lockstep: every reader reports this round before the next
                got = json.loads(read_line(p))
                assert got == {"ids": [i], "woke": True}, (p.pid, i, got)
    finally:
        end(procs)
