"""Exchange timestamps (observer/feeds/clock.py): exact nanoseconds, and no memory per second."""

import calendar
import time
import tracemalloc

import pytest

from observer.feeds import clock

SECONDS_N = 3600               # an hour of exchange time, one message a second


def stamp(epoch_s: int, fraction: str = ".123456789") -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s)) + fraction + "Z"


def test_rfc3339_exact_nanoseconds():
    epoch_s = calendar.timegm((2026, 11, 1, 12, 0, 0))
    assert clock.rfc3339_ns(stamp(epoch_s)) == epoch_s * 1_000_000_000 + 123_456_789
    assert clock.rfc3339_ns(stamp(epoch_s, ".5")) == epoch_s * 1_000_000_000 + 500_000_000
    assert clock.rfc3339_ns(stamp(epoch_s, "")) == epoch_s * 1_000_000_000
    assert clock.rfc3339_ns(stamp(epoch_s, "")[:-1] + "+00:00") == epoch_s * 1_000_000_000
    with pytest.raises(ValueError):
        clock.rfc3339_ns(stamp(epoch_s)[:-1] + "+01:00")


def test_rfc3339_keeps_no_memory_per_second_of_exchange_time():
    """tracemalloc over an hour of exchange time, one message a second: what clock.py keeps
    stays within a minute's cache, about 0 blocks per message. It kept every second's prefix
    and value up to 4096 of them (68 minutes) before emptying: about 2 blocks per message, a
    creep that a soak of an hour still saw as a leak."""
    start_s = calendar.timegm((2026, 11, 1, 0, 0, 0))
    texts = [stamp(start_s + i) for i in range(SECONDS_N)]     # made before tracing
    clock._prefix_ns.clear()
    only_clock = [tracemalloc.Filter(True, clock.__file__)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(only_clock)
        for text in texts:
            last_ns = clock.rfc3339_ns(text)          # only the last is kept: ints are traced
        after = tracemalloc.take_snapshot().filter_traces(only_clock)
    finally:
        tracemalloc.stop()
    assert last_ns == (start_s + SECONDS_N - 1) * 1_000_000_000 + 123_456_789
    kept_blocks = sum(stat.count_diff for stat in after.compare_to(before, "filename"))
    assert kept_blocks / SECONDS_N < 0.05
