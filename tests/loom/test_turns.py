"""Turn ends without a switch (`fiber.end_turn`): a fiber whose reads keep completing at once
polls on its own greenlet when nobody else can run; these tests check it still hands over when
someone can (a due timer, another fiber's I/O, a cancel), on every backend."""

from __future__ import annotations

import socket

import pytest

from observer import loom
from observer.loom import fiber as fibers
from observer.loom.calls import FULL_READ_TURN_BYTES

pytestmark = pytest.mark.timeout(60)

STREAM_BYTES = 50_000           # read one byte at a time: hundreds of turn ends


def _stream(sock, progress, total=STREAM_BYTES):
    buf = bytearray(1)
    while progress[0] < total:
        progress[0] += loom.recv_into(sock, buf)


def _pair():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    a.sendall(b"x" * STREAM_BYTES)       # whole stream queued: every read completes at once
    return a, b


def test_a_due_timer_interrupts_a_streaming_fiber(loop):
    a, b = _pair()
    progress = [0]
    woke_at = []

    def sleeper():
        loom.sleep(0.001)
        woke_at.append(progress[0])

    def main():
        loop.spawn(sleeper)
        _stream(b, progress)

    try:
        loop.run(main)
    finally:
        a.close()
        b.close()
    assert progress[0] == STREAM_BYTES
    assert len(woke_at) == 1
    assert woke_at[0] < STREAM_BYTES              # woke mid-stream, not after it


def test_another_fibers_io_completes_while_one_streams(loop):
    a, b = _pair()
    c, d = socket.socketpair()
    progress = [0]
    got_at = []

    def waiter():
        assert loom.recv_into(d, bytearray(4)) == 4
        got_at.append(progress[0])

    def main():
        w = loop.spawn(waiter)
        loom.sleep(0)                             # the waiter parks on d
        _stream(b, progress, 100)
        loom.sendall(c, b"ping")                  # completes the waiter's read
        _stream(b, progress)
        w.join()

    try:
        loop.run(main)
    finally:
        for s in (a, b, c, d):
            s.close()
    assert len(got_at) == 1
    assert got_at[0] < STREAM_BYTES               # woken mid-stream by a turn end's poll
    assert loop.stats().fibers_live == 0


def test_a_cancel_reaches_a_streaming_fiber_at_a_turn_end(loop):
    a, b = _pair()
    progress = [0]

    def main():
        me = fibers.current_fiber()
        loop.call_later(0.001, me.cancel)
        _stream(b, progress)

    loop.spawn(main, name="streamer")
    try:
        loop.run()
    finally:
        a.close()
        b.close()
    assert 0 < progress[0] < STREAM_BYTES


def test_a_reader_waiting_alone_gets_closed_error_when_a_callback_closes_its_fd(loop):
    """The reader waits by polling on its own greenlet (epoll) or as a parked op (io_uring);
    either way a close through the loop from another completion's callback ends its wait
    with ClosedError."""
    import threading

    a, b = socket.socketpair()
    c, d = socket.socketpair()
    kick = threading.Timer(0.05, d.send, (b"k",))

    def on_kick(result):
        loop.forget(b)
        b.close()

    def main():
        loop.read(c, bytearray(1), on_kick)
        kick.start()
        with pytest.raises(loom.ClosedError):
            loom.recv_into(b, bytearray(4))

    try:
        loop.run(main)
    finally:
        kick.join()
        for s in (a, b, c, d):
            s.close()


def _drain_steps(loop, buffer_bytes: int, buffers_n: int) -> list[int]:
    """Bytes a fiber draining a queued backlog read between two turns of another fiber."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    a.sendall(b"x" * (buffer_bytes * buffers_n))  # the backlog, queued before anyone reads
    progress = [0]
    seen = []                                     # the reader's progress at each other turn

    def other():
        while progress[0] < buffer_bytes * buffers_n:
            seen.append(progress[0])
            loom.sleep(0)

    def main():
        watcher = loop.spawn(other)
        buf = bytearray(buffer_bytes)
        while progress[0] < buffer_bytes * buffers_n:
            progress[0] += loom.recv_into(b, buf)
        watcher.join()

    with a, b:                                    # closed whatever happens
        loop.run(main)
    assert len(seen) >= 3, seen                   # the other fiber saw the drain go by
    return [later - earlier for earlier, later in zip(seen, seen[1:])]


def test_a_read_that_fills_its_buffer_ends_the_turn(loop):
    """A backlog is read one buffer per turn (calls.py, fairness): between two full reads of a
    fiber draining it, another ready fiber runs; without the rule the drain went on for
    IMMEDIATE_RUN_MAX reads, a whole backlog of feed messages parsed in one turn."""
    buffer_bytes, buffers_n = FULL_READ_TURN_BYTES, 16
    steps = _drain_steps(loop, buffer_bytes, buffers_n)
    assert sum(steps) >= buffer_bytes * (buffers_n - 2)   # it saw every read but the ends
    assert max(steps) <= buffer_bytes                     # one full read per turn at most


def test_full_reads_of_a_small_buffer_spend_one_call_each(loop):
    """One message per read (a buffer below FULL_READ_TURN_BYTES, filled every time) is not a
    backlog's worth: such reads spend the turn's budget one call each, as short reads do, so
    the drain goes on for several reads between the other fiber's turns."""
    buffer_bytes = 100
    assert max(_drain_steps(loop, buffer_bytes, 400)) > buffer_bytes
