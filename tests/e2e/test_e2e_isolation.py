"""Six feeds in one observer (one shard, one loop): one stalled feed holds up none of the
others, shows as lagging while its held frames drain (C11), and `obctl stats` reports it all."""

import json
import os
import subprocess
import sys
import time

import pytest

from e2ekit import Venue, wait

EXCHANGES = ("binance", "binance-futures", "coinbase", "kraken", "okx", "bybit")
STALLED = "kraken"
STALL_S = 2.5
PUBLISHES_DURING_STALL_MIN = 5


@pytest.mark.timeout(90)
def test_six_feeds_one_stalled_the_others_keep_publishing(sim, obs, client, ring):
    venues = {e: Venue(sim, client, ring, e, e) for e in EXCHANGES}
    for venue in venues.values():
        venue.wait_live("start")
    stalled = venues[STALLED]
    marks = {name: ring.mark(name) for v in venues.values() for name in v.names}
    before = stalled.stats()
    fault_ns = time.time_ns()
    sim.fault(STALLED, "stall", duration_s=STALL_S)
    # The held frames arrive late, once the stall is over, stamped with their old event times:
    # lagging, counted (nothing is counted while the frames are held).
    stalled.wait_grew("lagging_count", before, "stall")
    stalled.wait_publishing(3, "after the stall")
    # The stalled feed's longest silence since the fault, from its own ring records...
    times = [fault_ns] + sorted(u.publish_ts_ns for name in stalled.names
                                for u in ring.since(name, marks[name]) if not u.stale)
    silence_start_ns, silence_end_ns = max(zip(times, times[1:]), key=lambda p: p[1] - p[0])
    # ...during which every book of every other feed kept publishing live.
    for exchange, venue in venues.items():
        if exchange == STALLED:
            continue
        for name in venue.names:
            during = [u for u in ring.since(name, marks[name])
                      if not u.stale and silence_start_ns < u.publish_ts_ns < silence_end_ns]
            assert len(during) >= PUBLISHES_DURING_STALL_MIN, (
                f"{name} published {len(during)} times while {STALLED} was stalled "
                f"({(silence_end_ns - silence_start_ns) / 1e9:.3f} s, {len(times)} records of "
                f"{STALLED}, {len(ring.since(name, marks[name]))} of {name})")
    wait(lambda: all(not client.snapshot(n, 0).lagging for n in stalled.names),
         f"{STALLED}: lagging cleared once caught up")
    ring.check()


@pytest.mark.timeout(60)
def test_obctl_stats_shows_every_book_with_its_counters(sim, obs, client):
    env = dict(os.environ, OBSERVER_SOCKET=obs.socket_path)
    run = subprocess.run([sys.executable, "-m", "obclient.obctl", "stats", "--json"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    books = {row["book"]: row for row in json.loads(run.stdout)["books"]}
    expected = {f"{e}:{n.replace('/', '').replace('-', '')}" for e in EXCHANGES
                for n in sim.info["exchanges"][e]["symbols"]}
    assert set(books) == expected
    for name, row in books.items():
        for field in ("updates", "gaps", "resyncs", "checksum_errors", "reconnects", "snapshots",
                      "lag_ns", "lagging_count", "messages", "stale", "lagging"):
            assert field in row, (name, field)
        assert row["snapshots"] >= 1 and row["messages"] >= 1 and row["updates"] >= 1, row
    text = subprocess.run([sys.executable, "-m", "obclient.obctl", "stats"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert text.returncode == 0, text.stderr
    assert all(name in text.stdout for name in expected)
    assert "reconnects" in text.stdout and "lag_ms" in text.stdout
