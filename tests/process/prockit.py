"""Helpers shared by the process tests: the cores to pin to, a reader thread that watches books
through its own client for the whole of a test, and a watcher of /dev/shm."""

import ctypes
import os
import struct
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


class ShmWatcher:
    """Every name created in /dev/shm while it runs (inotify: nothing is missed, however short
    its life), so a test can assert that none of ours ever existed, not only that none is left.
    `names_with(text)` after `close()`."""

    IN_CREATE = 0x100
    IN_MOVED_TO = 0x80
    IN_NONBLOCK = 0o4000
    _EVENT = struct.Struct("iIII")

    def __init__(self, directory: str = "/dev/shm"):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(self.IN_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        watch = libc.inotify_add_watch(self.fd, directory.encode(),
                                       self.IN_CREATE | self.IN_MOVED_TO)
        assert watch >= 0, os.strerror(ctypes.get_errno())
        self.names: list[str] = []

    def drain(self) -> None:
        """Read the events queued so far (call often enough that the queue never overflows)."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                _, mask, _, length = self._EVENT.unpack_from(data, offset)
                name = data[offset + self._EVENT.size:offset + self._EVENT.size + length]
                self.names.append(name.rstrip(b"\0").decode(errors="replace"))
                offset += self._EVENT.size + length

    def close(self) -> None:
        self.drain()
        os.close(self.fd)

    def names_with(self, text: str) -> list[str]:
        return [n for n in self.names if text in n]
