"""Timeouts and cancellation at every wait point, on every backend.

After a wait is abandoned the fd (or queue, or event) must still work: the abandoned operation
must be gone from the backend, not left to swallow the next completion.
"""

from __future__ import annotations

import os
import random
import socket
import time

import pytest

from observer import loom

pytestmark = pytest.mark.timeout(30)


def fill_socket(sock):
    """Fill the send buffer so that the next send would block."""
    sock.setblocking(False)
    chunk = b"\0" * 65536
    while True:
        try:
            sock.send(chunk)
        except BlockingIOError:
            return


def fill_pipe(fd):
    os.set_blocking(fd, False)
    while True:
        try:
            os.write(fd, b"\0" * 65536)
        except BlockingIOError:
            return


def make_waits(loop, closing, sockdir):
    """name -> (wait callable, how to check the resource still works afterwards)."""
    a, b = closing(*socket.socketpair())
    full_a, full_b = closing(*socket.socketpair())
    fill_socket(full_a)
    r, w = closing(*os.pipe())
    fr, fw = closing(*os.pipe())
    fill_pipe(fw)
    listener = closing(socket.create_server(("127.0.0.1", 0)))
    path = os.path.join(sockdir, "full")
    unix_listener = closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    unix_listener.bind(path)
    unix_listener.listen(0)
    backlog = [closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) for _ in range(4)]
    unix_client = closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    event = loom.Event()
    empty_queue = loom.Queue(1)
    full_queue = loom.Queue(1)
    full_queue.put_nowait("x")

    def fill_unix_backlog():
        for sock in backlog:
            sock.setblocking(False)
            try:
                sock.connect(path)
            except BlockingIOError:
                pass

    def after_recv():
        loom.sendall(a, b"ok")
        assert loom.recv(b, 2) == b"ok"

    def after_read():
        os.write(w, b"ok")
        assert loom.read(r, bytearray(2)) == 2

    def after_queue():
        empty_queue.put_nowait(1)
        assert empty_queue.get() == 1

    def never_done():
        loom.sleep(3600)

    def unix_connect():
        fill_unix_backlog()
        loom.connect(unix_client, path)

    return {
        "sleep": (lambda: loom.sleep(3600), None),
        "recv_into": (lambda: loom.recv_into(b, bytearray(4)), after_recv),
        "sendall": (lambda: loom.sendall(full_a, b"\0" * 1_000_000), None),
        "accept": (lambda: loom.accept(listener), None),
        "connect_unix_backlog_full": (unix_connect, None),
        "read": (lambda: loom.read(r, bytearray(4)), after_read),
        "write": (lambda: loom.write(fw, b"\0" * 65536), None),
        "wait_readable": (lambda: loom.wait_readable(b), after_recv),
        "wait_writable": (lambda: loom.wait_writable(full_a), None),
        "run_in_thread": (lambda: loom.run_in_thread(time.sleep, 0.3), None),
        "event_wait": (lambda: event.wait(), None),
        "queue_get": (lambda: empty_queue.get(), after_queue),
        "queue_put": (lambda: full_queue.put("y"), None),
        "join": (lambda: loop.spawn(never_done, name="never").join(), None),
    }


WAIT_NAMES = ["sleep", "recv_into", "sendall", "accept", "connect_unix_backlog_full", "read",
              "write", "wait_readable", "wait_writable", "run_in_thread", "event_wait",
              "queue_get", "queue_put", "join"]


@pytest.mark.parametrize("name", WAIT_NAMES)
def test_timeout_at_wait_point(loop, closing, sockdir, name):
    waits = make_waits(loop, closing, sockdir)
    wait, after = waits[name]

    def main():
        with pytest.raises(TimeoutError):
            with loom.timeout(0.02):
                wait()
        if after is not None:
            after()
        return "survived"

    assert loop.run(main) == "survived"
    loop.stop()


@pytest.mark.parametrize("name", WAIT_NAMES)
def test_cancel_at_wait_point(loop, closing, sockdir, name):
    waits = make_waits(loop, closing, sockdir)
    wait, after = waits[name]
    reached = loom.Event()

    def victim():
        reached.post()
        wait()

    def main():
        fiber = loop.spawn(victim, name=f"victim-{name}")
        reached.wait()
        loom.sleep(0.005)                  # the victim is parked at its wait point
        fiber.cancel()
        with pytest.raises(loom.Cancelled):
            fiber.join(timeout_s := 5.0)
        assert fiber.done
        if after is not None:
            after()
        return "survived"

    assert loop.run(main) == "survived"


def test_cancel_before_start_never_runs(loop):
    ran = []

    def main():
        fiber = loop.spawn(ran.append, 1)
        fiber.cancel()
        with pytest.raises(loom.Cancelled):
            fiber.join()

    loop.run(main)
    assert ran == []


def test_timeout_none_and_unexpired_scope_do_nothing(loop):
    def main():
        with loom.timeout(None):
            loom.sleep(0.001)
        with loom.timeout(10.0) as scope:
            loom.sleep(0.001)
        assert not scope.expired
        assert loop.stats().timers_live == 0

    loop.run(main)


def test_nested_timeouts_fire_the_inner_first(loop):
    def main():
        with loom.timeout(10.0) as outer:
            with pytest.raises(TimeoutError):
                with loom.timeout(0.01) as inner:
                    loom.sleep(3600)
        assert inner.expired
        assert not outer.expired

    loop.run(main)


def test_item_handed_over_before_cancel_is_not_lost(loop):
    """A getter woken with an item and cancelled before it runs still returns the item."""
    queue = loom.Queue(4)
    got = []

    def getter():
        got.append(queue.get())
        loom.sleep(3600)                   # the deferred cancel lands here

    def main():
        fiber = loop.spawn(getter)
        loom.sleep(0.001)
        queue.put_nowait("item")           # getter is READY with the item
        fiber.cancel()                     # deferred to its next wait point
        with pytest.raises(loom.Cancelled):
            fiber.join()

    loop.run(main)
    assert got == ["item"]


def test_random_timeouts_mid_stream_lose_and_reorder_nothing(loop, closing):
    """Receivers with tiny random timeouts while senders trickle data: every byte arrives,
    in order. On io_uring this drives cancels that lose the race to a completion (the bytes
    are kept for the next recv), so it is the test of that hand-over."""
    rng = random.Random(20261122)
    pairs = [closing(*socket.socketpair()) for _ in range(10)]
    payloads = [rng.randbytes(20000) for _ in pairs]
    got = [bytearray() for _ in pairs]
    timeouts = [0]

    def sender(i):
        a, data, offset = pairs[i][0], payloads[i], 0
        while offset < len(data):
            n = rng.randrange(1, 300)
            loom.sendall(a, data[offset:offset + n])
            offset += n
            if rng.random() < 0.3:
                loom.sleep(rng.random() * 0.0005)
        a.shutdown(socket.SHUT_WR)

    def receiver(i):
        b, buf = pairs[i][1], bytearray(512)
        while True:
            try:
                with loom.timeout(rng.random() * 0.0008):
                    n = loom.recv_into(b, buf, rng.randrange(1, 512))
            except TimeoutError:
                timeouts[0] += 1
                continue
            if n == 0:
                return
            got[i] += buf[:n]

    def main():
        fibers = [loop.spawn(sender, i) for i in range(len(pairs))]
        fibers += [loop.spawn(receiver, i) for i in range(len(pairs))]
        for fiber in fibers:
            fiber.join()

    loop.run(main)
    assert timeouts[0] > 0, "no wait was ever abandoned: the test did not test anything"
    for i, payload in enumerate(payloads):
        assert bytes(got[i]) == payload, f"pair {i}: stream differs"
