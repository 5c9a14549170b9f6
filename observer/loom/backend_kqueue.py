"""The kqueue backend (BSD, macOS): the epoll backend's contract on kqueue.

Each fd gets a read and a write filter, added once with `EV_CLEAR` (kqueue's edge trigger),
so an event means "something changed" and the parked call runs until EAGAIN, exactly as with
epoll's `EPOLLET`. Parking and performing are shared with epoll (`_common.ReadinessBackend`).
The contract suite runs against it wherever `select.kqueue` exists; on Linux it cannot run.
"""

from __future__ import annotations

import select

from ._common import FdState, LoomError, ReadinessBackend
from .backend import BackendUnavailable

EVENTS_MAX = 256        # events taken per poll; the rest wait for the next pass


class KqueueBackend(ReadinessBackend):
    name = "kqueue"

    def __init__(self):
        if not hasattr(select, "kqueue"):
            raise BackendUnavailable("kqueue", "this OS has no select.kqueue")
        super().__init__()
        try:
            self._kq = select.kqueue()
        except OSError as exc:
            raise BackendUnavailable("kqueue", f"kqueue: {exc.strerror}") from None
        self._fds: dict[int, FdState] = {}

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

    def register(self, state: FdState) -> None:
        try:
            self._change(state.fd, select.KQ_EV_ADD | select.KQ_EV_CLEAR)
        except OSError as exc:
            raise LoomError(f"fd {state.fd} cannot be watched by kqueue: {exc}") from None
        self._fds[state.fd] = state
        state.registered = True

    def unregister(self, state: FdState) -> None:
        if self._fds.get(state.fd) is state:
            del self._fds[state.fd]
            try:
                self._change(state.fd, select.KQ_EV_DELETE)
            except OSError:
                pass                   # already closed: the kernel dropped the filters
        state.registered = False

    def poll(self, timeout_s: float | None) -> int:
        """Wait up to `timeout_s` (None: forever) for events; perform and deliver what is ready."""
        done = 0
        if self._runnable:
            done = self._run_runnable()
            timeout_s = 0.0
        self.polls += 1
        events = self._kq.control(None, EVENTS_MAX, timeout_s)
        fds = self._fds
        for event in events:
            state = fds.get(event.ident)
            if state is None:
                continue
            if event.filter == select.KQ_FILTER_READ:
                if event.flags & select.KQ_EV_EOF:
                    state.short_drains = False     # EOF pending: a short read is not "empty"
                state.in_hint = True
                if state.reader is not None:
                    done += self._attempt(state.reader)
            elif event.filter == select.KQ_FILTER_WRITE:
                state.out_hint = True
                if state.writer is not None:
                    done += self._attempt(state.writer)
        return done

    def close(self) -> None:
        self._kq.close()
        self._fds.clear()
