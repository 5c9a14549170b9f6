"""The epoll backend: readiness turned into completions (the dispatch is in _readiness.py).

Each fd is registered once, edge-triggered, for both directions (re-registering on every wait
costs about 0.5 µs here). `epoll.poll` is bound straight in as the readiness `_wait`, and its
event masks are the shared `EV_*` bits, so a poll runs no Python between the kernel and the
dispatch.
"""

from __future__ import annotations

import select

from ._common import LoomError
from ._readiness import EV_ERR, EV_HUP, EV_IN, EV_OUT, EV_RDHUP, ReadinessBackend
from .backend import BackendUnavailable

if hasattr(select, "epoll"):
    assert select.EPOLLIN == EV_IN
    assert select.EPOLLOUT == EV_OUT
    assert select.EPOLLERR == EV_ERR
    assert select.EPOLLHUP == EV_HUP
    assert select.EPOLLRDHUP == EV_RDHUP
    _MASK = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET


class EpollBackend(ReadinessBackend):
    name = "epoll"

    def __init__(self):
        if not hasattr(select, "epoll"):
            raise BackendUnavailable("epoll", "this OS has no select.epoll")
        try:
            self._ep = select.epoll()
        except OSError as exc:          # a seccomp profile, the fd limit
            raise BackendUnavailable("epoll", f"epoll_create: {exc.strerror}") from None
        super().__init__()
        self._wait = self._ep.poll           # (timeout_s, events_max) -> [(fd, mask)]

    def _watch(self, fd: int) -> None:
        try:
            self._ep.register(fd, _MASK)
        except FileExistsError:        # a stale registration of a reused fd number
            self._ep.modify(fd, _MASK)
        except PermissionError as exc:  # regular files: epoll refuses them
            raise LoomError(f"fd {fd} cannot be polled (regular file?): {exc}") from None

    def _unwatch(self, fd: int) -> None:
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):
            pass                       # already closed: the kernel dropped it

    def _close_poller(self) -> None:
        self._ep.close()
