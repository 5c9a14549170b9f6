"""How a shard's flush wakes its clients: one eventfd write, done here or by a kernel worker.

Why two ways. A flush is one `write` of 1 to an eventfd per wake group in use, whatever the
number of clients (C6; observer/shm/wakegroups.py: each group's eventfd has its own waker
here), but inside that write the kernel wakes every client asleep on it: about 1 µs per sleeping
client measured here, so 100 sleeping clients make a 20 µs flush a 120 µs one, on the shard's
own thread. `UringWaker` hands the same write to io_uring with IOSQE_ASYNC: a kernel io-wq
worker thread performs it (and the wake-ups), and the shard pays a submission whose cost does
not depend on the number of clients. For a few clients the plain write is cheaper (no ring, no
worker to wake, one hop less), so the default, `auto`, writes directly below
AUTO_URING_CLIENTS attached clients and goes through io_uring from there (measured here: about
1 µs per sleeping client against 5-25 µs more for a submission, cold).

Both are hints for readers (C6): a lost or late wake-up is covered by the readers' check, wait
with a timeout, check again. Neither ever blocks: the eventfd is non-blocking, the ring never
waits for a completion, and a ring with no free entry falls back to the plain write.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

from observer.config.settings import WAKE_MODES  # one list: the config key's choices are these modes
from observer.loom import uring as ur

AUTO_URING_CLIENTS = 16  # auto: from this many attached clients, wake through io_uring
PACE_CLIENTS_MIN = 16  # writers that pace wake-ups (writer.py, Pacing) do from this many clients
ROTATE_CLIENTS_MIN = 128  # and wake one group per slot, in turn, from this many (writer.py):
# measured (bench/fanout.py, 2 CPUs), 65 clients woken at once cost the shard less than the
# extra writes of a turn (mostly x0.87-1.00 of its rate alone against x0.76-0.90), 257 cost
# it half its rate and more (x0.31-0.53 against x0.81-0.88 in turn)
RING_ENTRIES = 16  # writes in flight at most; more means the worker is behind: write directly
_IOSQE_ASYNC = 1 << 4  # always punt to an io-wq worker, never complete inline in the enter
# The 8 bytes every write sends. Module-level, so it outlives any ring: a write still with the
# worker when its ring is closed reads memory that is still there.
_ONE = ctypes.c_uint64(1)

log = logging.getLogger("observer.shm")


def eventfd_wake(fd: int) -> None:
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:
        pass  # counter saturated (2**64 - 2 unread writes): every reader has a wake-up pending


class UringWaker:
    """`wake()`: submit the eventfd write to an io-wq worker; reap completions now and then.

    Every slot of its ring holds the same prepared write, so a wake is a tail store and one
    `io_uring_enter`; completions are reaped once REAP_AT are in flight, not per wake.
    """

    def __init__(self, fd: int, entries: int = RING_ENTRIES):
        self.fd = fd
        self._ring = ur.Ring(entries, entries * 2)
        self._ring.fill_all(ur.OP_WRITE, fd, 0, ctypes.addressof(_ONE), 8, 0, 0, _IOSQE_ASYNC)
        self._entries = self._ring.sq_entries
        self._reap_at = max(1, self._entries // 2)
        self._in_flight = 0
        self.direct_writes = 0  # wake-ups written here because the ring was full or refused
        self.errors = 0

    def wake(self) -> None:
        if self._in_flight >= self._reap_at:
            self._ring.reap(self._on_completion)
            if self._in_flight >= self._entries:  # the worker is that far behind
                self.direct_writes += 1
                eventfd_wake(self.fd)
                return
        self._in_flight += 1
        if self._ring.submit_next() < 0:  # not taken now (EBUSY, EAGAIN, ...): write it here;
            self.direct_writes += 1       # the slot goes with the next enter, a spare wake-up
            eventfd_wake(self.fd)

    def _on_completion(self, _user_data: int, res: int) -> None:
        self._in_flight -= 1
        if res < 0 and -res != 11:  # EAGAIN: counter saturated, as in eventfd_wake
            self.errors += 1
            if self.errors == 1:
                log.warning("wake_write_failed", {"error": os.strerror(-res),
                                                  "effect": "readers fall back on their wait timeout"})

    def close(self) -> None:
        """Close the ring; a write still with the worker completes or is cancelled."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None


class ShardWaker:
    """What a shard's writer calls to wake its clients: `wake`, chosen by mode.

    `eventfd`: the plain write. `io_uring`: UringWaker, or the plain write where io_uring is
    refused (one log line). `auto`: the plain write while fewer than AUTO_URING_CLIENTS
    clients are attached, UringWaker from then on; the writer calls `choose(clients_n)` at its
    heartbeat with the count the supervisor keeps in the segment header, so no publish pays
    for the choice.

    `wake` may raise BlockingIOError (the eventfd counter saturated, 2**64 - 2 unread writes:
    every reader has a wake-up pending); callers ignore it. The plain write is
    `os.eventfd_write` itself, no Python frame between: it is on the latency path.
    """

    def __init__(self, fd: int, mode: str):
        if mode not in WAKE_MODES:
            raise ValueError(f"wake mode {mode!r}: expected one of {', '.join(WAKE_MODES)}")
        self.fd = fd
        self.mode = mode
        self.direct = functools.partial(os.eventfd_write, fd, 1)
        self._uring: UringWaker | None = None
        self._uring_refused = False
        self.wake = self._uring_wake() if mode == "io_uring" else self.direct

    def choose(self, clients_n: int):
        """The wake callable for `clients_n` attached clients (auto mode; else unchanged)."""
        if self.mode == "auto":
            self.wake = self._uring_wake() if clients_n >= AUTO_URING_CLIENTS else self.direct
        return self.wake

    def _uring_wake(self):
        if self._uring is None and not self._uring_refused:
            try:
                self._uring = UringWaker(self.fd)
            except (ur.RingRefused, OSError) as exc:
                self._uring_refused = True
                log.warning("wake_uring_refused", {"wake": self.mode, "error": str(exc),
                                                   "effect": "flushes write the eventfd directly"})
        return self.direct if self._uring is None else self._uring.wake

    def close(self) -> None:
        if self._uring is not None:
            self._uring.close()
            self._uring = None
        self.wake = self.direct
