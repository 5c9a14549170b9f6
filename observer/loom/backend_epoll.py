"""The epoll backend: readiness turned into completions.

Each fd is registered once, edge-triggered, for both directions (re-registering on every wait
costs about 0.5 µs here). An operation that would block is parked on its fd (one reader and one
writer per fd); when an edge arrives the backend performs the call itself and, on EAGAIN, keeps
it parked for the next edge. The loop above only ever sees completions, as with io_uring.

Parking, performing and the `_runnable` list are shared with kqueue (`_common.ReadinessBackend`).
"""

from __future__ import annotations

import select

from ._common import FdState, LoomError, ReadinessBackend
from .backend import BackendUnavailable

EVENTS_MAX = 256        # events taken per poll; the rest wait for the next pass
if hasattr(select, "epoll"):           # importable anywhere; only Linux has epoll
    _IN = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
    _OUT = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
    _HUP = select.EPOLLHUP | select.EPOLLRDHUP | select.EPOLLERR
    _MASK = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET


class EpollBackend(ReadinessBackend):
    name = "epoll"

    def __init__(self):
        if not hasattr(select, "epoll"):
            raise BackendUnavailable("epoll", "this OS has no select.epoll")
        super().__init__()
        try:
            self._ep = select.epoll()
        except OSError as exc:          # a seccomp profile, the fd limit
            raise BackendUnavailable("epoll", f"epoll_create: {exc.strerror}") from None
        self._fds: dict[int, FdState] = {}

    # -- fds -------------------------------------------------------------------------------

    def register(self, state: FdState) -> None:
        try:
            self._ep.register(state.fd, _MASK)
        except FileExistsError:        # a stale registration of a reused fd number
            self._ep.modify(state.fd, _MASK)
        except PermissionError as exc:  # regular files: epoll refuses them
            raise LoomError(f"fd {state.fd} cannot be polled (regular file?): {exc}") from None
        self._fds[state.fd] = state
        state.registered = True

    def unregister(self, state: FdState) -> None:
        if self._fds.get(state.fd) is state:
            del self._fds[state.fd]
            try:
                self._ep.unregister(state.fd)
            except (OSError, ValueError):
                pass                   # already closed: the kernel dropped it
        state.registered = False

    def poll(self, timeout_s: float | None) -> int:
        """Wait up to `timeout_s` (None: forever) for edges; perform and deliver what is ready."""
        done = 0
        if self._runnable:
            done = self._run_runnable()
            timeout_s = 0.0
        self.polls += 1
        fds = self._fds
        # Every wait ends here, so nothing is looked up or bound that the events do not need
        # (epoll.poll takes None for "forever").
        for fd, mask in self._ep.poll(timeout_s, EVENTS_MAX):
            state = fds.get(fd)
            if state is None:
                continue
            if mask & _IN:
                if mask & _HUP:
                    state.short_drains = False     # EOF pending: a short read is not "empty"
                state.in_hint = True
                if state.reader is not None:
                    done += self._attempt(state.reader)
            if mask & _OUT:
                state.out_hint = True
                if state.writer is not None:
                    done += self._attempt(state.writer)
        return done

    def close(self) -> None:
        self._ep.close()
        self._fds.clear()
