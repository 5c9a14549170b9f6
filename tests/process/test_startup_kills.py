"""kill -9 at any instant of start-up leaves nothing behind (C9; issue 12, points 2 and 12).

A parent that imported the observer once forks one observer per cycle (a fresh interpreter per
cycle would spend the test's time importing) and the test kills it with SIGKILL after 0 ms, and
then at evenly spaced instants up to the time it took to become ready, with and without shard
processes. After every kill: no socket file (the reaper's job), no process of ours (the zygote
and the shards die with the supervisor), and no /dev/shm entry of ours, not even for an
instant: an inotify watcher on /dev/shm sees every name created during all the start-ups.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import obclient
from kit.procs import ObserverForker, processes_with, shm_entries, unique_name, wait_until

from prockit import ALLOWED, TWO_CORES, ShmWatcher

WAIT_S = 60.0
INSTANTS_MIN = 32               # kill instants per mode, 0 ms first, evenly spaced to ready

MODES = [pytest.param([], id="one-process")]
MODES.append(pytest.param(["--cores", TWO_CORES], id="shard-processes",
                          marks=pytest.mark.skipif(len(ALLOWED) < 2,
                                                   reason="needs two allowed cores")))


def _serving(path: str) -> bool:
    try:
        with obclient.connect(path, timeout_s=WAIT_S):
            return True
    except obclient.ObserverUnavailable:
        return False


def _kill_and_check(forker: ObserverForker, path: str, pid: int, name: str, watcher: ShmWatcher,
                    what: str) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(path), WAIT_S,
               f"the socket file removed ({what})")
    wait_until(lambda: processes_with(name) == [forker.proc.pid], WAIT_S,
               f"every process of ours gone but the forker ({what})")
    watcher.drain()
    assert shm_entries(name) == [], what
    assert watcher.names_with(name) == [], what


@pytest.mark.parametrize("extra", MODES)
def test_kill_9_at_any_instant_of_start_up_leaves_nothing(tmp_path, extra):
    name = unique_name("k")
    watcher = ShmWatcher()
    path = str(tmp_path / "observer.sock")
    args = ["--feed", "synthetic:BTCUSD,ETHUSD", "--rate", "50", "--name", name, "--socket", path,
            *extra]
    try:
        with ObserverForker(args, tmp_path / "observer.log") as forker:
            begun_s = time.monotonic()
            pid = forker.start()
            wait_until(lambda: _serving(path), WAIT_S, "the first start-up to serve")
            ready_s = time.monotonic() - begun_s
            _kill_and_check(forker, path, pid, name, watcher, "once ready")
            instants_s = [ready_s * i / INSTANTS_MIN for i in range(INSTANTS_MIN + 1)]
            for instant_s in instants_s:
                pid = forker.start()
                time.sleep(instant_s)       # the instant of start-up to kill at, not a wait
                _kill_and_check(forker, path, pid, name, watcher,
                                f"killed after {instant_s:.4f} s")
            assert forker.close() == 0
    finally:
        watcher.close()
    assert watcher.names_with(name) == []
    assert sorted(os.listdir(tmp_path)) == ["observer.log"]
    assert "Traceback" not in (tmp_path / "observer.log").read_text()
