"""loom: our fiber event loop on greenlet (io_uring, epoll and kqueue backends).

Completion, not readiness: a fiber calls `loom.recv_into(sock, buf)` and gets the byte count
back; the backend decides how. See loop.py for the design and docs/SEAMS.md for the surface.

    from observer import loom

    def main():
        conn, _ = loom.accept(listener)
        n = loom.recv_into(conn, buf)

    loom.Loop().run(main)
"""

from ._common import Cancelled, ClosedError, LoomError, LoomInternalError
from .backend import PROBE_ORDER, BackendUnavailable, available_backends
from .calls import (JoinReport, accept, cancel_and_join, close, connect, join_all, read, recv,
                    recv_into, run_in_thread, sendall, sleep, wait_readable, wait_writable,
                    write)
from .fiber import Fiber, current_fiber, timeout
from .loop import Loop, LoopStats, TimerHandle
from .pin import allowed_cores, pin
from .sync import Event, Queue, QueueEmpty, QueueFull
from .watchdog import WatchdogReport

__all__ = [
    "BackendUnavailable", "Cancelled", "ClosedError", "Event", "Fiber", "JoinReport", "Loop",
    "LoopStats", "LoomError", "LoomInternalError", "PROBE_ORDER", "Queue", "QueueEmpty",
    "QueueFull", "TimerHandle", "WatchdogReport", "accept", "allowed_cores", "available_backends",
    "cancel_and_join", "close", "connect", "current_fiber", "join_all", "pin", "read", "recv",
    "recv_into", "run_in_thread", "sendall", "sleep", "timeout", "wait_readable",
    "wait_writable", "write",
]
