"""Helpers shared by the process tests: the cores to pin to, and a reader thread that watches
books through its own client for the whole of a test."""

import os
import threading
import time

import pytest

import obclient

WATCH_JOIN_S = 60.0
ALLOWED = sorted(os.sched_getaffinity(0))
TWO_CORES = ",".join(map(str, ALLOWED[:2]))
needs_two_cores = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two allowed cores to run "
                                     "two pinned shards")


class Watcher(threading.Thread):
    """Reads `names` continuously through its own client; records every stale copy seen and
    whether the books kept changing."""

    def __init__(self, socket_path, names):
        super().__init__(daemon=True)
        self.client = obclient.connect(socket_path, client_name="watcher")
        self.names = names
        self.done = threading.Event()
        self.stale_seen: list[str] = []
        self.reads = 0
        self.first_seq = {n: self.client.snapshot(n, 0).seq for n in names}
        self.last_seq = dict(self.first_seq)

    def run(self):
        while not self.done.is_set():
            for name in self.names:
                snap = self.client.snapshot(name, 0)
                if snap.stale:
                    self.stale_seen.append(name)
                self.last_seq[name] = snap.seq
                self.reads += 1
            time.sleep(0.002)

    def finish(self):
        self.done.set()
        self.join(WATCH_JOIN_S)
        self.client.close()
