"""A session keeps nothing per reconnect or per resync that only the cyclic GC would free.

Why this matters more than it looks: a shard in steady state allocates almost no containers
(measured: no collection at all, not even of generation 0, over 80k messages), so CPython's
cyclic GC may not run for hours. Anything a reconnect or a REST resync leaves in a reference
cycle is then kept as if leaked: a dead WebSocket with its TLS state and 256 KiB frame buffer,
a finished snapshot fiber with its Op, fd state and socket (bench/soak.py, observer/telemetry/memtrace.py).

The probe runs in a fresh interpreter (the GC is switched off process-wide while it counts),
against a real obsim over WebSocket + TLS and HTTPS: Binance, because it has both paths (the
stream reconnects; a sequence gap is resynced by a REST snapshot fetched in its own fiber).
"""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(180)

FAULTS_N = 3

_PROBE = r"""
import collections, gc, json, sys, time
from observer import loom
from observer.feeds import make_adapter
from observer.feeds.session import Session, SessionLimits
from obsim.harness import Obsim
from kit.procs import wait_until

FAULTS_N = int(sys.argv[1])
DEADLINE_S = 60.0

def wait(predicate, what):
    wait_until(predicate, DEADLINE_S, what, sleep=loom.sleep)

with Obsim(["--exchanges", "binance", "--rate", "50", "--seed", "5",
            "--binance-rest-weight-max", "100000", "--binance-connects-max", "0"]) as sim:
    adapter = make_adapter("binance", sim.info["exchanges"]["binance"]["symbols"],
                           ws_url=sim.ws_url("binance"), rest_url=sim.rest_url("binance"))
    session = Session(adapter, lambda actions, recv_ns: None, ca_file=sim.ca_file,
                      limits=SessionLimits(backoff_initial_s=0.05, backoff_max_s=0.1), seed=1)
    live = lambda: all(sync.live for sync in adapter.syncs.values())
    resyncs = lambda: sum(sync.stats.resyncs for sync in adapter.syncs.values())

    def main():
        session.start(loop)
        wait(live, "books live")
        gc.collect()
        gc.disable()
        for kind, count in (("disconnect", lambda: session.stats.connects), ("gap", resyncs)):
            for _ in range(FAULTS_N):
                before = count()
                sim.fault("binance", kind, symbol=adapter.syncs[next(iter(adapter.syncs))].native)
                wait(lambda: count() > before, f"{kind} noticed")
                wait(live, f"books live after {kind}")
        loom.sleep(0.2)                     # the last snapshot fiber has ended
        gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()
        kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()
        report = {"reconnects": session.stats.connects - 1, "resyncs": resyncs(),
                  "snapshot_fetches": session.stats.snapshot_fetches, "cyclic_garbage": found,
                  "kinds": dict(kinds.most_common(8))}
        session.stop()
        loop.stop()
        return report

    loop = loom.Loop()
    try:
        print(json.dumps(loop.run(main)))
    finally:
        loop.close()
"""


def test_reconnects_and_rest_resyncs_leave_no_cyclic_garbage():
    done = subprocess.run([sys.executable, "-c", _PROBE, str(FAULTS_N)], capture_output=True,
                          text=True, timeout=170, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["reconnects"] >= FAULTS_N
    assert report["resyncs"] >= FAULTS_N
    assert report["snapshot_fetches"] >= 2 * FAULTS_N     # after each gap and each reconnect
    assert report["cyclic_garbage"] == 0, report["kinds"]
