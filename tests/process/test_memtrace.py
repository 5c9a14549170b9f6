"""observer/telemetry/memtrace.py: a shard's memory tracing, off unless its environment variable asks.

A real Shard (synthetic feed, real segment, real loom loop) in this process: with the variable
unset nothing is traced and no fiber is added; with it set the shard logs its reports every
period and stops tracing when it stops.
"""

import logging
import os
import secrets
import time
import tracemalloc

import pytest

from observer import loom
from observer.telemetry import memtrace
from observer.config.settings import FeedConfig, ObserverConfig
from observer.shard.feedplan import plan
from observer.shard.runner import Shard
from observer.shm import Segment

pytestmark = pytest.mark.timeout(60)

PERIOD_S = 0.05
REPORTS_N = 2
DEADLINE_S = 30.0


def run_shard(until) -> Shard:
    """Run a shard until `until(shard)` is true (checked each 10 ms, at most DEADLINE_S)."""
    config = ObserverConfig(feeds=(FeedConfig("synthetic", ("BTCUSD", "ETHUSD"), rate_hz=500),))
    descs, feeds, index_of = plan(config)
    segment = Segment.create(f"/obtest-memtrace-{os.getpid()}-{secrets.token_hex(4)}", descs,
                             1, 8, 64)
    segment.seal()
    loop = loom.Loop()
    shard = Shard(0, segment.writer(0), feeds, index_of)

    def main():
        shard.start(loop)
        fibers_n = len(shard._fibers)
        deadline_s = time.monotonic() + DEADLINE_S
        while not until(shard) and time.monotonic() < deadline_s:
            loom.sleep(0.01)
        shard.stop()
        return fibers_n

    try:
        shard.fibers_started = loop.run(main)
    finally:
        loop.close()
        segment.close()
    return shard


def test_off_unless_asked(monkeypatch):
    monkeypatch.delenv(memtrace.ENV_PERIOD_S, raising=False)
    assert memtrace.period_s() is None
    assert memtrace.period_s({memtrace.ENV_PERIOD_S: "soon"}) is None   # logged, stays off
    assert memtrace.period_s({memtrace.ENV_PERIOD_S: "0"}) is None
    shard = run_shard(lambda shard: shard.passes >= 3)
    assert shard.fibers_started == 2               # the feed and the heartbeat, nothing else
    assert not tracemalloc.is_tracing()


def test_a_shard_reports_every_period_and_stops_tracing_when_it_stops(monkeypatch, caplog):
    assert not tracemalloc.is_tracing()            # else this test would stop someone's tracing
    monkeypatch.setenv(memtrace.ENV_PERIOD_S, str(PERIOD_S))
    caplog.set_level(logging.INFO, logger="observer.telemetry.memtrace")

    def events():
        return [r.getMessage() for r in caplog.records if r.name == "observer.telemetry.memtrace"]

    shard = run_shard(lambda shard: events().count("memtrace_totals") >= REPORTS_N)
    assert shard.fibers_started == 3
    assert events().count("memtrace_totals") >= REPORTS_N
    assert events().count("memtrace_types") == events().count("memtrace_totals")
    assert not tracemalloc.is_tracing()
