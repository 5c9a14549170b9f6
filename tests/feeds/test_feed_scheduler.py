"""Rate-limit policy: the REST weight budget, the snapshot scheduler, the send bucket.

Sans-IO, so the clock is plain integers. The scheduler is also tested against obsim's real
weight accounting in test_feed_startup.py.
"""

import pytest

from observer.feeds.scheduler import NS_PER_S, SendLimiter, SnapshotScheduler, WeightBudget

SPOT_TIERS = ((100, 5), (500, 25), (1000, 50), (5000, 250))
HEADER = "x-mbx-used-weight-1m"


def scheduler_of(weight_max=6000, *, limit_pref=1000, limit_min=None, reserve=0.0, share=1.0,
                 inflight_max=1000, **options):
    budget = WeightBudget(weight_max=weight_max, window_s=60, share=share, reserve=reserve)
    return SnapshotScheduler(budget, tiers=SPOT_TIERS, limit_pref=limit_pref, limit_min=limit_min,
                             inflight_max=inflight_max, weight_header=HEADER, **options)


def request_all(scheduler, n):
    for i in range(n):
        scheduler.request(f"S{i}")


def probe(scheduler, now_ns=0):
    """The first request goes alone; a good reply lets the burst go."""
    (symbol, limit), = scheduler.due(now_ns)
    assert scheduler.due(now_ns) == []
    assert scheduler.on_reply(symbol, 200, {}, now_ns)
    return symbol, limit


def test_a_burst_waits_for_one_good_reply_and_again_after_a_429():
    scheduler = scheduler_of()
    request_all(scheduler, 4)
    assert len(scheduler.due(0)) == 1 and scheduler.due(0) == []
    assert not scheduler.on_reply("S0", 429, {"retry-after": "1"}, 0)
    assert scheduler.due(NS_PER_S // 2) == []
    assert scheduler.due(NS_PER_S) == [("S0", 1000)]   # alone again, not S0..S3
    assert scheduler.due(NS_PER_S) == []
    assert scheduler.on_reply("S0", 200, {}, NS_PER_S)
    assert [s for s, _ in scheduler.due(NS_PER_S)] == ["S1", "S2", "S3"]


def test_a_burst_spends_the_whole_budget_then_waits_for_the_window():
    scheduler = scheduler_of(6000)
    request_all(scheduler, 200)
    first = [probe(scheduler)] + scheduler.due(0)
    assert len(first) == 120 and all(limit == 1000 for _, limit in first)  # 6000 / 50, at once
    for symbol, _ in first[1:]:
        assert scheduler.on_reply(symbol, 200, {HEADER: "6000"}, NS_PER_S)
    # a request leaves the window a minute after its reply (when the exchange counted it is
    # not known, only that it was before the reply)
    assert scheduler.due(59 * NS_PER_S) == []
    (again,) = scheduler.due(60 * NS_PER_S)   # the probe's weight is back: it goes, alone
    assert scheduler.on_reply(again[0], 200, {}, 60 * NS_PER_S + 1)
    assert len(scheduler.due(61 * NS_PER_S)) == 79


def test_in_flight_bound():
    scheduler = scheduler_of(inflight_max=3)
    request_all(scheduler, 6)
    probe(scheduler)
    assert [s for s, _ in scheduler.due(0)] == ["S1", "S2", "S3"]
    assert scheduler.due(0) == []
    scheduler.on_reply("S2", 200, {}, 1)
    assert [s for s, _ in scheduler.due(1)] == ["S4"]


def test_the_small_limit_when_the_budget_cannot_serve_everyone_deep():
    scheduler = scheduler_of(1000, limit_pref=500, limit_min=100)
    request_all(scheduler, 100)
    limits = [probe(scheduler)[1]] + [limit for _, limit in scheduler.due(0)]
    # deep (25) while the rest could still go at 5: 1000 - 25 n >= 5 (99 - n + ... ) -> 25 deep
    assert len(limits) == 100
    assert limits.count(500) == 25 and limits.count(100) == 75
    assert scheduler.requests_small == 75
    assert scheduler.budget.room(0) == 0


def test_deep_requests_keep_room_for_a_reconnect_at_the_small_limit():
    scheduler = scheduler_of(6000, limit_pref=500, limit_min=100, reserve=0.1, books_kept=200)
    request_all(scheduler, 200)
    cold = [probe(scheduler)[1]] + [limit for _, limit in scheduler.due(0)]
    # 5400 usable: n deep (25) + (200 - n) small (5) + 200 kept x 5 <= 5400 -> n = 170
    assert (cold.count(500), cold.count(100)) == (170, 30)
    for i in range(1, 200):
        scheduler.on_reply(f"S{i}", 200, {}, NS_PER_S)
    request_all(scheduler, 200)                          # a reconnect: every book again
    again = scheduler.due(NS_PER_S + 1)
    assert [limit for _, limit in again] == [100] * 200  # the kept 1000, all at once


def test_the_header_counts_what_others_spent():
    scheduler = scheduler_of(6000)
    scheduler.request("A")
    assert scheduler.due(0) == [("A", 1000)]
    scheduler.on_reply("A", 200, {HEADER: "5950"}, NS_PER_S)  # others spent 5900 of it
    scheduler.request("B")
    scheduler.request("C")
    assert scheduler.due(2 * NS_PER_S) == [("B", 1000)]  # room for one: 5950 + 50 = 6000
    assert scheduler.on_reply("B", 200, {}, 3 * NS_PER_S)
    assert scheduler.budget.used(60 * NS_PER_S) == 6000
    assert scheduler.due(60 * NS_PER_S) == []
    # a window after A's reply, all that header counted has left; B has not
    assert scheduler.budget.used(61 * NS_PER_S) == 50
    assert scheduler.due(61 * NS_PER_S) == [("C", 1000)]


def test_a_lower_header_never_lets_us_spend_past_our_own_log():
    scheduler = scheduler_of(1000, limit_pref=100)
    request_all(scheduler, 300)
    sent = [probe(scheduler)] + scheduler.due(0)
    assert len(sent) == 200  # 1000 / 5
    assert scheduler.due(NS_PER_S) == []
    # the exchange's fixed minute turned over: it counts only this request
    scheduler.on_reply(sent[-1][0], 200, {HEADER: "5"}, NS_PER_S)
    assert scheduler.budget.used(NS_PER_S) == 5
    assert scheduler.budget.room(NS_PER_S) == 0  # our own log is exact for our weight: still full


def test_share_caps_this_feed_below_the_ip():
    scheduler = scheduler_of(6000, share=0.5)
    request_all(scheduler, 200)
    probe(scheduler)
    assert len(scheduler.due(0)) == 59


def test_retry_after_blocks_the_queue():
    scheduler = scheduler_of()
    scheduler.request("A")
    scheduler.request("B")
    assert scheduler.due(0)[0][0] == "A"
    assert not scheduler.on_reply("A", 429, {"retry-after": "7"}, NS_PER_S)
    assert scheduler.due(7 * NS_PER_S) == []
    assert [s for s, _ in scheduler.due(8 * NS_PER_S)][:1] == ["A"]  # requeued first
    assert scheduler.rate_limited == 1


def test_ban_without_retry_after_waits_retry_max():
    scheduler = scheduler_of(retry_max_s=30)
    scheduler.request("A")
    scheduler.due(0)
    scheduler.on_reply("A", 418, {}, 0)
    assert scheduler.due(29 * NS_PER_S) == []
    assert scheduler.due(31 * NS_PER_S) == [("A", 1000)]


def test_failures_back_off_exponentially():
    scheduler = scheduler_of(retry_s=1.0, retry_max_s=8.0)
    scheduler.request("A")
    now = 0
    waits = []
    for _ in range(6):
        assert scheduler.due(now) == [("A", 1000)]
        scheduler.on_reply("A", 0, None, now)
        waits.append((scheduler.blocked_until_ns - now) // NS_PER_S)
        now = scheduler.blocked_until_ns
    assert waits == [1, 2, 4, 8, 8, 8]


def test_queue_limit_is_an_error():
    scheduler = scheduler_of(queue_max=2)
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
