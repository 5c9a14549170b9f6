"""The kqueue backend (BSD, macOS): the epoll backend's contract on kqueue.

Each fd gets a read and a write filter, added once with `EV_CLEAR` (kqueue's edge trigger),
so an event means "something changed" and the parked call runs until EAGAIN, exactly as with
epoll's `EPOLLET`. Its events are translated into the shared `EV_*` bits and dispatched by
_readiness.py, as epoll's are. The contract suite runs against it wherever `select.kqueue`
exists; on Linux it cannot run.
"""

from __future__ import annotations

import select

from ._common import LoomError
from ._readiness import EV_IN, EV_OUT, EV_RDHUP, ReadinessBackend
from .backend import BackendUnavailable


class KqueueBackend(ReadinessBackend):
    name = "kqueue"

    def __init__(self):
        if not hasattr(select, "kqueue"):
            raise BackendUnavailable("kqueue", "this OS has no select.kqueue")
        try:
            self._kq = select.kqueue()
        except OSError as exc:
            raise BackendUnavailable("kqueue", f"kqueue: {exc.strerror}") from None
        super().__init__()

    def _change(self, fd: int, flags: int) -> None:
        """Apply `flags` to both filters; one may be refused (some fds have no write side),
        both refused is an error."""
        errors = []
        for kind in (select.KQ_FILTER_READ, select.KQ_FILTER_WRITE):
            try:
                self._kq.control([select.kevent(fd, kind, flags)], 0, 0)
            except OSError as exc:
                errors.append(exc)
        if len(errors) == 2:
            raise errors[0]

    def _watch(self, fd: int) -> None:
        try:
            self._change(fd, select.KQ_EV_ADD | select.KQ_EV_CLEAR)
        except OSError as exc:
            raise LoomError(f"fd {fd} cannot be watched by kqueue: {exc}") from None

    def _unwatch(self, fd: int) -> None:
        try:
            self._change(fd, select.KQ_EV_DELETE)
        except OSError:
            pass                       # already closed: the kernel dropped the filters

    def _wait(self, timeout_s: float | None, events_max: int) -> list:
        """kevents as (fd, EV_* bits): a read filter is IN (with RDHUP at EOF), a write
        filter is OUT."""
        events = []
        for event in self._kq.control(None, events_max, timeout_s):
            if event.filter == select.KQ_FILTER_READ:
                eof = event.flags & select.KQ_EV_EOF
                events.append((event.ident, EV_IN | EV_RDHUP if eof else EV_IN))
            elif event.filter == select.KQ_FILTER_WRITE:
                events.append((event.ident, EV_OUT))
        return events

    def _close_poller(self) -> None:
        self._kq.close()
