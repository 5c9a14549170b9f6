"""Timer logic with a hand-advanced clock: no sleeps, integer-exact deadlines."""

import pytest

from observer import loom

pytestmark = pytest.mark.timeout(30)
from observer.loom.timers import PRUNE_MIN, TimerQueue


class FakeClock:
    def __init__(self):
        self.now_s = 0.0

    def __call__(self):
        return self.now_s


def test_fires_in_deadline_order_and_only_when_due():
    timers = TimerQueue()
    fired = []
    for deadline in (3.0, 1.0, 2.0, 1.0):
        timers.arm(deadline, fired.append, deadline)
    assert timers.next_deadline_s() == 1.0
    assert timers.expire(0.999) == 0
    assert timers.expire(1.0) == 2
    assert fired == [1.0, 1.0]
    assert timers.next_deadline_s() == 2.0
    assert timers.expire(10.0) == 2
    assert fired == [1.0, 1.0, 2.0, 3.0]
    assert timers.next_deadline_s() is None
    assert len(timers) == 0


def test_cancel_is_lazy_and_counted():
    timers = TimerQueue()
    fired = []
    first = timers.arm(1.0, fired.append, "a")
    timers.arm(2.0, fired.append, "b")
    assert timers.cancel(first) is True
    assert timers.cancel(first) is False
    assert len(timers) == 1
    assert timers.next_deadline_s() == 2.0
    timers.expire(5.0)
    assert fired == ["b"]


def test_prune_keeps_heap_bounded_by_live_count():
    timers = TimerQueue()
    entries = [timers.arm(float(i), lambda _: None) for i in range(PRUNE_MIN * 4)]
    for entry in entries[: PRUNE_MIN * 3]:
        timers.cancel(entry)
    assert len(timers) == PRUNE_MIN
    assert len(timers._heap) <= 2 * len(timers) + 1


def test_limit_is_named():
    timers = TimerQueue(timers_max=2)
    timers.arm(1.0, print)
    timers.arm(1.0, print)
    with pytest.raises(OverflowError, match="timers_max=2"):
        timers.arm(1.0, print)


def test_expire_batch_bound_keeps_a_pass_finite():
    timers = TimerQueue()

    def rearm(_):
        timers.arm(0.0, rearm)

    timers.arm(0.0, rearm)
    assert timers.expire(0.0, batch_max=100) == 100


def test_loop_sleep_and_timeout_follow_the_fake_clock():
    """The loop reads only its clock: advancing the fake clock is what makes sleeps end."""
    clock = FakeClock()
    loop = loom.Loop("epoll", clock=clock, watchdog_s=None)
    order = []

    def sleeper(name, delay_s):
        loom.sleep(delay_s)
        order.append((name, clock.now_s))

    def scoped():
        with pytest.raises(TimeoutError):
            with loom.timeout(5.0):
                loom.sleep(100.0)
        order.append(("timeout", clock.now_s))

    def ticker():
        while clock.now_s < 20.0:
            clock.now_s += 1.0
            loom.sleep(0)

    loop.spawn(sleeper, "late", 10.0)
    loop.spawn(sleeper, "early", 2.0)
    loop.spawn(scoped)
    loop.spawn(ticker)
    loop.run()
    loop.close()
    # Woken on the first pass at or after the deadline (the ticker may tick once more first).
    assert [name for name, _ in order] == ["early", "timeout", "late"]
    for (_, woke_s), deadline_s in zip(order, (2.0, 5.0, 10.0)):
        assert deadline_s <= woke_s <= deadline_s + 1.0


def test_call_later_with_fake_clock():
    clock = FakeClock()
    loop = loom.Loop("epoll", clock=clock, watchdog_s=None)
    fired = []
    loop.call_later(3.0, fired.append, "x")
    handle = loop.call_later(4.0, fired.append, "cancelled")
    handle.cancel()

    def advance():
        for _ in range(10):
            clock.now_s += 1.0
            loom.sleep(0)

    loop.run(advance)
    loop.close()
    assert fired == ["x"]
