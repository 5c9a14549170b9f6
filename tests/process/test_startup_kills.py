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
import subprocess
import sys
import time

import pytest

import obclient
from kit.procs import processes_with, shm_entries, unique_name, wait_until

from prockit import ALLOWED, TWO_CORES, ShmWatcher

WAIT_S = 60.0
INSTANTS_MIN = 32               # kill instants per mode, 0 ms first, evenly spaced to ready
FORKER = """
import os, signal, sys
import observer.cli, observer.process.supervisor
import observer.process.shardmanager, observer.feeds.synthetic
signal.signal(signal.SIGCHLD, signal.SIG_IGN)      # the kernel reaps the killed observers
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os._exit(observer.cli.main(sys.argv[1:]))
    print(pid, flush=True)
"""

MODES = [pytest.param([], id="one-process")]
MODES.append(pytest.param(["--cores", TWO_CORES], id="shard-processes",
                          marks=pytest.mark.skipif(len(ALLOWED) < 2,
                                                   reason="needs two allowed cores")))


class Forker:
    def __init__(self, tmp_path, name: str, extra: list[str]):
        self.path = str(tmp_path / "observer.sock")
        self.log = open(tmp_path / "observer.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FORKER, "--feed", "synthetic:BTCUSD,ETHUSD", "--rate", "50",
             "--name", name, "--socket", self.path, *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def start(self) -> int:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> int:
        self.proc.stdin.close()
        code = self.proc.wait(WAIT_S)
        self.log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _serving(path: str) -> bool:
    try:
        with obclient.connect(path, timeout_s=WAIT_S):
            return True
    except obclient.ObserverUnavailable:
        return False


def _kill_and_check(forker: Forker, pid: int, name: str, watcher: ShmWatcher, what: str) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(forker.path), WAIT_S,
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
    forker = Forker(tmp_path, name, extra)
    try:
        begun_s = time.monotonic()
        pid = forker.start()
        wait_until(lambda: _serving(forker.path), WAIT_S, "the first start-up to serve")
        ready_s = time.monotonic() - begun_s
        _kill_and_check(forker, pid, name, watcher, "once ready")
        instants_s = [ready_s * i / INSTANTS_MIN for i in range(INSTANTS_MIN + 1)]
        for instant_s in instants_s:
            pid = forker.start()
            time.sleep(instant_s)
            _kill_and_check(forker, pid, name, watcher, f"killed after {instant_s:.4f} s")
        assert forker.close() == 0
    finally:
        forker.kill()
        watcher.close()
    assert watcher.names_with(name) == []
    assert sorted(os.listdir(tmp_path)) == ["observer.log"]
    assert "Traceback" not in (tmp_path / "observer.log").read_text()
