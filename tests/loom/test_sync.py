"""Event and Queue between fibers."""

from __future__ import annotations

import pytest

from observer import loom

pytestmark = pytest.mark.timeout(30)


def test_event_wakes_every_waiter_with_the_value(loop):
    event = loom.Event()
    got = []

    def waiter(i):
        got.append((i, event.wait()))

    def main():
        fibers = [loop.spawn(waiter, i) for i in range(3)]
        loom.sleep(0.001)
        assert not event.is_set()
        event.post("go")
        for fiber in fibers:
            fiber.join()
        assert event.wait() == "go"          # set: returns at once
        event.clear()
        assert not event.is_set()

    loop.run(main)
    assert sorted(got) == [(0, "go"), (1, "go"), (2, "go")]


def test_event_wait_timeout(loop):
    def main():
        with pytest.raises(TimeoutError):
            loom.Event().wait(0.01)

    loop.run(main)


def test_queue_is_fifo_and_bounded(loop):
    queue = loom.Queue(2)
    got = []

    def producer():
        for i in range(10):
            queue.put(i)                     # waits while full
            assert queue.qsize() <= 2

    def consumer():
        for _ in range(10):
            got.append(queue.get())
            loom.sleep(0)

    def main():
        p = loop.spawn(producer)
        c = loop.spawn(consumer)
        p.join()
        c.join()

    loop.run(main)
    assert got == list(range(10))


def test_queue_nowait_errors_name_the_condition(loop):
    def main():
        queue = loom.Queue(1)
        with pytest.raises(loom.QueueEmpty):
            queue.get_nowait()
        queue.put_nowait(1)
        with pytest.raises(loom.QueueFull, match="maxsize=1"):
            queue.put_nowait(2)

    loop.run(main)


def test_queue_needs_a_bound():
    with pytest.raises(ValueError, match="maxsize"):
        loom.Queue(0)
