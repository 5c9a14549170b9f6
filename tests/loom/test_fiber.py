"""Fiber invariants: pooled runners, exactly one wake per wait, contained failures."""

from __future__ import annotations

import logging

import greenlet
import pytest

from observer import loom

pytestmark = pytest.mark.timeout(30)
from observer.loom import fiber as fibers


def test_calls_outside_a_fiber_are_a_clear_error():
    with pytest.raises(loom.LoomError, match="inside a fiber"):
        loom.sleep(0)


def test_run_returns_main_result_and_runs_other_fibers(loop):
    seen = []

    def worker(i):
        loom.sleep(0)
        seen.append(i)

    def main():
        for i in range(5):
            loop.spawn(worker, i)
        loom.sleep(0.001)
        return "main result"

    assert loop.run(main) == "main result"
    assert sorted(seen) == list(range(5))


def test_run_without_main_ends_when_no_fiber_is_left(loop):
    done = []
    loop.spawn(lambda: (loom.sleep(0.002), done.append(1)))
    loop.run()
    assert done == [1]


def test_runners_are_pooled_and_reused(loop):
    runners = set()

    def record():
        runners.add(id(greenlet.getcurrent()))

    def main():
        for _ in range(50):
            loop.spawn(record).join()

    loop.run(main)
    assert len(runners) <= 2                  # main's runner and one reused for all 50


def test_fiber_failure_is_contained_logged_and_reraised_by_join(loop, caplog):
    def bad():
        raise ValueError("boom")

    def main():
        fiber = loop.spawn(bad, name="the-bad-one")
        with pytest.raises(ValueError, match="boom"):
            fiber.join()
        return "still running"

    with caplog.at_level(logging.ERROR, logger="observer.loom"):
        assert loop.run(main) == "still running"
    assert any(record.getMessage() == "fiber_failed" and record.args["fiber"] == "the-bad-one"
               for record in caplog.records)


def test_main_failure_is_reraised_by_run(loop):
    def main():
        raise RuntimeError("main failed")

    with pytest.raises(RuntimeError, match="main failed"):
        loop.run(main)


def test_double_wake_is_an_internal_error(loop):
    def main():
        fiber = fibers.current_fiber()
        with pytest.raises(loom.LoomInternalError):
            loop.reschedule(fiber, None)      # running, not waiting: a second wake

    loop.run(main)


def test_resume_only_from_the_loop(loop):
    def main():
        with pytest.raises(loom.LoomInternalError):
            fibers.resume(loop, fibers.current_fiber())

    loop.run(main)


def test_join_self_is_an_error(loop):
    def main():
        with pytest.raises(loom.LoomError, match="join itself"):
            fibers.current_fiber().join()

    loop.run(main)


def test_join_timeout(loop):
    def main():
        sleeper = loop.spawn(loom.sleep, 3600)
        with pytest.raises(TimeoutError):
            sleeper.join(0.01)
        sleeper.cancel()

    loop.run(main)


def test_deadlock_is_reported_not_hung(loop):
    def main():
        loom.Event().wait()

    with pytest.raises(loom.LoomError, match="deadlock"):
        loop.run(main)


def test_stop_returns_from_run(loop):
    def stopper():
        loom.sleep(0.001)
        loop.stop()

    loop.spawn(stopper)
    loop.spawn(loom.sleep, 3600)
    loop.run()
    assert loop.stats().fibers_live == 1


def test_busy_fiber_yields_so_others_run(loop):
    """A fiber whose reads always complete at once still lets the others run."""
    import socket

    a, b = socket.socketpair()
    a.sendall(b"x" * 100_000)
    ticks = []

    def reader():
        buf = bytearray(1)
        for _ in range(1000):
            loom.recv_into(b, buf)

    def ticker():
        for _ in range(5):
            ticks.append(1)
            loom.sleep(0)

    def main():
        r = loop.spawn(reader)
        t = loop.spawn(ticker)
        r.join()
        t.join()

    try:
        loop.run(main)
    finally:
        a.close()
        b.close()
    assert len(ticks) == 5
    assert loop.stats().ops_immediate >= 1000


def test_internal_error_stops_the_loop_loudly(loop):
    """A loop bug (here: a timer waking a fiber that is not waiting) closes the loop and
    raises out of run(); nothing limps on."""

    def main():
        fiber = fibers.current_fiber()
        loop.call_later(0.0, loop.reschedule, fiber, None)
        loom.sleep(0)                      # READY in the queue when the bogus wake fires
        loom.sleep(3600)

    loop.spawn(main)
    with pytest.raises(loom.LoomInternalError, match="not waiting"):
        loop.run()
    with pytest.raises(loom.LoomError, match="closed"):
        loop.spawn(print)


def test_run_returns_when_main_ends_while_another_fiber_waits_on_io(loop):
    """A fiber parked on I/O that never comes must not hold run() once main is done."""
    import socket

    a, b = socket.socketpair()
    try:
        loop.spawn(loom.recv_into, b, bytearray(4))        # waits forever
        assert loop.run(lambda: "main done") == "main done"
    finally:
        a.close()
        b.close()


def test_timers_fire_while_the_only_other_fiber_waits_on_io(loop):
    """A fiber waiting on a socket polls on its own greenlet; a sleeper still wakes on time
    and its send completes the wait."""
    import socket

    a, b = socket.socketpair()

    def sender():
        loom.sleep(0.01)
        loom.sendall(a, b"ping")

    def main():
        loop.spawn(sender)
        buf = bytearray(4)
        with loom.timeout(10.0):
            assert loom.recv_into(b, buf) == 4
        return bytes(buf)

    try:
        assert loop.run(main) == b"ping"
    finally:
        a.close()
        b.close()


def test_watchdog_ignores_a_fiber_blocked_in_an_inline_poll(backend):
    """Waiting for I/O is not running: no report, however long the wait."""
    import socket
    import threading

    a, b = socket.socketpair()
    loop = loom.Loop(backend, watchdog_s=0.1)
    timer = threading.Timer(0.4, a.send, (b"late",))
    timer.start()
    try:
        assert loop.run(loom.recv_into, b, bytearray(4)) == 4
    finally:
        timer.join()
        loop.close()
        a.close()
        b.close()
    assert loop.watchdog_reports() == []


def test_a_finished_fiber_is_freed_without_the_cyclic_gc(loop, closing):
    """A fiber that waited on I/O keeps nothing once done, so reference counting alone frees
    it. Its Op's callback is the fiber's own bound method: kept after the end, that cycle (with
    the op's fd state and socket) waits for a full GC, which a shard in steady state may not
    run for hours (bench/soak.py)."""
    import gc
    import socket
    import weakref

    a, b = closing(*socket.socketpair())

    def main():
        fiber = loop.spawn(loom.recv, b, 4)
        loom.sleep(0)                          # the reader runs, finds nothing, waits
        assert fiber.op is not None            # so it did make its Op: the case under test
        loom.sendall(a, b"ping")
        assert fiber.join(5.0) == b"ping"
        return weakref.ref(fiber)

    gc.disable()
    try:
        ref = loop.run(main)
        kept = ref() is not None
    finally:
        gc.enable()
    assert not kept
