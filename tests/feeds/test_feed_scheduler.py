"""Rate-limit policy with integer time: staggered snapshots, Retry-After, weight, send buckets."""

import pytest

from observer.feeds.scheduler import NS_PER_S, SendLimiter, SnapshotScheduler


def test_snapshots_are_staggered_and_one_at_a_time():
    scheduler = SnapshotScheduler(interval_s=1.0, inflight_max=1)
    for symbol in ("A", "B", "C"):
        scheduler.request(symbol)
    scheduler.request("A")  # idempotent while queued
    assert scheduler.due(0) == ["A"]
    assert scheduler.due(5 * NS_PER_S) == []  # A still in flight
    assert scheduler.on_reply("A", 200, {}, 5 * NS_PER_S)
    assert scheduler.due(5 * NS_PER_S) == ["B"]
    scheduler.on_reply("B", 200, {}, 5 * NS_PER_S)
    assert scheduler.due(5 * NS_PER_S + NS_PER_S // 2) == []  # spaced by interval_s
    assert scheduler.due(6 * NS_PER_S) == ["C"]


def test_retry_after_blocks_the_whole_queue():
    scheduler = SnapshotScheduler(interval_s=0)
    scheduler.request("A")
    scheduler.request("B")
    assert scheduler.due(0) == ["A"]
    assert not scheduler.on_reply("A", 429, {"retry-after": "7"}, NS_PER_S)
    assert scheduler.due(7 * NS_PER_S) == []
    assert scheduler.due(8 * NS_PER_S) == ["A"]  # requeued first
    assert scheduler.rate_limited == 1


def test_ban_without_retry_after_waits_the_maximum():
    scheduler = SnapshotScheduler(interval_s=0, retry_max_s=30)
    scheduler.request("A")
    scheduler.due(0)
    scheduler.on_reply("A", 418, {}, 0)
    assert scheduler.due(29 * NS_PER_S) == []
    assert scheduler.due(31 * NS_PER_S) == ["A"]


def test_failures_back_off_exponentially():
    scheduler = SnapshotScheduler(interval_s=0, retry_s=1.0, retry_max_s=8.0)
    scheduler.request("A")
    now = 0
    waits = []
    for _ in range(5):
        assert scheduler.due(now) == ["A"]
        scheduler.on_reply("A", 0, None, now)
        waits.append((scheduler.blocked_until_ns - now) // NS_PER_S)
        now = scheduler.blocked_until_ns
    assert waits == [1, 2, 4, 8, 8]


def test_used_weight_near_the_limit_pauses():
    scheduler = SnapshotScheduler(interval_s=0, weight_header="x-mbx-used-weight-1m", weight_soft_max=4800)
    scheduler.request("A")
    scheduler.request("B")
    scheduler.due(0)
    assert scheduler.on_reply("A", 200, {"x-mbx-used-weight-1m": "5000"}, 0)
    assert scheduler.due(NS_PER_S) == []
    assert scheduler.due(11 * NS_PER_S) == ["B"]
    assert scheduler.weight_pauses == 1


def test_queue_limit_is_an_error():
    scheduler = SnapshotScheduler(queue_max=2)
    scheduler.request("A")
    scheduler.request("B")
    with pytest.raises(OverflowError):
        scheduler.request("C")


def test_send_bucket_rate_and_burst():
    limiter = SendLimiter(rate_per_s=5, burst=2)
    limiter.reset(0, 0)
    for i in range(5):
        limiter.push(0, f"m{i}")
    assert limiter.ready(0, 0) == ["m0", "m1"]
    assert limiter.ready(0, NS_PER_S // 10) == []
    assert limiter.ready(0, NS_PER_S // 5) == ["m2"]
    assert limiter.ready(0, 2 * NS_PER_S) == ["m3", "m4"]


def test_shared_bucket_counts_every_connection():
    limiter = SendLimiter(rate_per_s=1, burst=2, shared=True)
    limiter.reset(0, 0)
    limiter.reset(1, 0)
    for conn in (0, 1):
        limiter.push(conn, "sub")
        limiter.push(conn, "hb")
    assert limiter.ready(0, 0) == ["sub", "hb"]
    assert limiter.ready(1, 0) == []  # the per-IP bucket is empty
    assert limiter.ready(1, NS_PER_S) == ["sub"]


def test_send_queue_limit_is_an_error():
    limiter = SendLimiter(rate_per_s=1, burst=1, queue_max=1)
    limiter.push(0, "a")
    with pytest.raises(OverflowError):
        limiter.push(0, "b")
