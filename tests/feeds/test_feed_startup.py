"""Start-up against obsim's real REST weight accounting: the snapshot scheduler spends the
budget in bursts and never draws a 429, and a book waiting for its snapshot syncs exactly from
the raw frames it buffered, applied a chunk per loop turn (feeds/binance.py, feeds/scheduler.py).

obsim counts weight in a sliding window as Binance does per minute; here the window is scaled
down (`--binance-rest-window-s`) so that two windows pass within a test.
"""

import time
from decimal import Decimal

import pytest

from observer import loom
from observer.book import ASK, BID
from observer.feeds import make_adapter
from observer.feeds.session import Session, SessionLimits
from observer.feeds.sync import State
from obsim.harness import Obsim

pytestmark = pytest.mark.timeout(150)

DEADLINE_S = 60.0
COMPARE_DEPTH = 10


def wait(predicate, what, timeout_s=DEADLINE_S):
    """A deadline for something to happen (inside a fiber), never a timing assertion."""
    deadline_s = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        loom.sleep(0.01)


def all_live(adapter):
    return all(sync.state is State.LIVE for sync in adapter.syncs.values())


def differences(sim, adapter):
    found = []
    for symbol, sync in adapter.syncs.items():
        true = sim.book("binance", sync.native, depth=COMPARE_DEPTH)
        book = adapter.books[symbol]
        for side, key in ((BID, "bids"), (ASK, "asks")):
            ours = [(Decimal(p).scaleb(book.price_exp), Decimal(s).scaleb(book.size_exp))
                    for p, s in book.levels(side, COMPARE_DEPTH)]
            theirs = [(Decimal(p), Decimal(s)) for p, s in true[key]]
            if ours != theirs:
                found.append((symbol, key, ours[:3], theirs[:3]))
    return found


def converge(sim, adapter):
    """Paused: wait until what was in flight arrived and the books equal the true books."""
    sim.pause("binance")
    try:
        deadline_s = time.monotonic() + DEADLINE_S
        while (differences(sim, adapter) or not all_live(adapter)) and time.monotonic() < deadline_s:
            loom.sleep(0.05)
        assert all_live(adapter)
        assert differences(sim, adapter) == []
    finally:
        sim.resume("binance")


def run(adapter, sim, body):
    session = Session(adapter, lambda actions, recv_ns: None, ca_file=sim.ca_file, seed=3,
                      limits=SessionLimits(backoff_initial_s=0.05, backoff_max_s=0.5))
    loop = loom.Loop()

    def main():
        session.start(loop)
        try:
            body(session)
        finally:
            session.stop()

    try:
        loop.run(main)
    finally:
        loop.close()
    return session


def test_snapshots_spend_the_budget_in_bursts_and_never_draw_a_429():
    symbols = [f"S{i:02d}USDT" for i in range(20)]
    window_s, weight_max = 3.0, 60   # 12 snapshots of weight 5 per window
    args = ["--exchanges", "binance", "--symbol", "binance=" + ",".join(symbols), "--rate", "10",
            "--depth", "100", "--seed", "3", "--binance-rest-weight-max", str(weight_max),
            "--binance-rest-window-s", str(window_s), "--binance-connects-max", "0"]
    with Obsim(args) as sim:
        adapter = make_adapter("binance", symbols, ws_url=sim.ws_url("binance"),
                               rest_url=sim.rest_url("binance"), depth=COMPARE_DEPTH, paranoid=True,
                               rest_weight_max=weight_max, rest_window_s=window_s, rest_reserve=0,
                               snapshot_inflight_max=20)
        scheduler = adapter.scheduler
        assert (scheduler.limit_pref, scheduler.weight_pref) == (100, 5)
        bursts = []   # (now_ns, symbols started) of every call that started any
        due = scheduler.due

        def recording_due(now_ns):
            started = due(now_ns)
            if started:
                bursts.append((now_ns, len(started)))
            return started

        scheduler.due = recording_due

        def body(session):
            wait(lambda: all_live(adapter), "all 20 books live")
            converge(sim, adapter)

        run(adapter, sim, body)
        counters = sim.counters("binance")
    assert counters["rest_429"] == 0 and counters["rest_418"] == 0
    assert scheduler.requests == 20 and scheduler.rate_limited == 0
    # one probe, then the rest of the budget at once on its good reply, then the others as
    # that weight leaves the window
    assert bursts[0][1] == 1 and bursts[1][1] == weight_max // 5 - 1
    later = [now_ns for now_ns, _ in bursts[2:]]
    assert all(now_ns - bursts[0][0] >= window_s * 1e9 for now_ns in later)
    assert sum(n for _, n in bursts) == 20


def test_a_waiting_book_syncs_exactly_from_its_buffered_frames():
    """The stream is paused; the snapshot request is held (rest_stall) and then answered with
    the book as it was before (stale_snapshot: obsim's oldest kept state), while 40 events are
    stepped: the book can only be right if those 40 buffered frames are applied on top."""
    steps = 40
    args = ["--exchanges", "binance", "--symbol", "binance=BTCUSDT", "--start-paused",
            "--depth", "200", "--seed", "4", "--binance-rest-weight-max", "100000",
            "--binance-connects-max", "0"]
    with Obsim(args) as sim:
        adapter = make_adapter("binance", ["BTCUSDT"], ws_url=sim.ws_url("binance"),
                               rest_url=sim.rest_url("binance"), depth=COMPARE_DEPTH, paranoid=True)
        adapter.catch_up_bytes = 2048        # a backlog of several turns
        sync = adapter.syncs["BTCUSDT"]
        sim.fault("binance", "rest_stall", duration_s=2.0)
        sim.fault("binance", "stale_snapshot")
        seen = {}

        def body(session):
            wait(lambda: "BTCUSDT" in adapter.scheduler.inflight, "the snapshot requested")
            sim.step("binance", count=steps, symbol="BTCUSDT")
            wait(lambda: len(sync.buffer) >= steps or sync.live, "the stepped frames buffered")
            seen["frames"] = list(sync.buffer)
            seen["bytes"] = sync.buffer_bytes
            wait(lambda: all_live(adapter), "the book live")
            assert differences(sim, adapter) == []   # still paused: nothing else moved
            wait(lambda: session.stats.memory_trims >= 1, "memory returned once nothing waits")

        session = run(adapter, sim, body)
    assert len(seen["frames"]) == steps
    assert all(type(frame) is bytes for frame in seen["frames"])
    assert seen["bytes"] == sum(map(len, seen["frames"]))
    stats = sync.stats
    assert (stats.snapshots, stats.gaps, stats.snapshots_old, stats.overflows) == (1, 0, 0, 0)
    assert stats.messages == 1 + steps, str(stats.as_dict())  # the snapshot, then every buffered frame applied
    assert session.stats.catch_ups >= 1          # applied over more than one turn
