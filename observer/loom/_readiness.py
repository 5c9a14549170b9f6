"""What epoll and kqueue share: ops parked on their fd, performed when an event says it is ready.

A readiness backend turns readiness into completions, so the loop above sees completions only,
as with io_uring. An op that would block is parked on its fd (one reader and one writer per fd);
when an event arrives the backend performs the call itself (`_perform`) and, on EAGAIN, keeps it
parked for the next edge. Edges are edge-triggered (EPOLLET, EV_CLEAR): an event means
"something changed", so a parked call runs until EAGAIN, and the fd's hints remember an edge that
came while nobody waited.

An op submitted while its fd's hint says "ready" (an edge arrived while nobody waited) goes on
the `_runnable` list, which the next poll performs before it blocks; so no edge is ever lost
between a failed call and the park.

Subclasses give the kernel side only: `_watch(fd)` / `_unwatch(fd)`, `_wait(timeout_s,
events_max) -> [(fd, bits)]` with the `EV_*` bits below (epoll's own values, so epoll passes its
events through untouched), and `_close_poller()`. The dispatch of those events is here, once.
"""

from __future__ import annotations

import abc
import logging

from ._common import (ACCEPT, CONNECT, POLL_IN, POLL_OUT, READ, READ_KINDS, RECV, SEND, WRITE,
                      FdState, LoomError, LoomInternalError, Op, connect_result)
from .backend import Backend, BackendStats

log = logging.getLogger("observer.loom")

EVENTS_MAX = 256        # events taken per poll; the rest wait for the next pass

# Event bits, with epoll's values (backend_epoll.py asserts they match select's).
EV_IN = 0x001
EV_OUT = 0x004
EV_ERR = 0x008
EV_HUP = 0x010
EV_RDHUP = 0x2000
_WAKES_READER = EV_IN | EV_ERR | EV_HUP | EV_RDHUP
_WAKES_WRITER = EV_OUT | EV_ERR | EV_HUP
_PEER_GONE = EV_HUP | EV_RDHUP | EV_ERR


class ReadinessBackend(Backend):
    name = "readiness"
    edge_hints = True

    def __init__(self):
        self._fds: dict[int, FdState] = {}
        self._runnable: list[Op] = []
        self.pending = 0
        self.submitted = 0
        self.completed = 0
        self.polls = 0

    # -- the kernel side, per subclass ---------------------------------------------------------

    @abc.abstractmethod
    def _watch(self, fd: int) -> None:
        """Watch both directions of `fd`, edge-triggered."""

    @abc.abstractmethod
    def _unwatch(self, fd: int) -> None:
        """Stop watching `fd` (it may be closed already: the kernel dropped it then)."""

    # `_wait(timeout_s, events_max) -> [(fd, bits)]` is an attribute, so that epoll can bind
    # its `epoll.poll` straight in: no Python frame between a poll and its events.
    _wait = None

    @abc.abstractmethod
    def _close_poller(self) -> None:
        ...

    # -- fds -------------------------------------------------------------------------------------

    def register(self, state: FdState) -> None:
        self._watch(state.fd)
        self._fds[state.fd] = state
        state.registered = True

    def unregister(self, state: FdState) -> None:
        if self._fds.get(state.fd) is state:
            del self._fds[state.fd]
            self._unwatch(state.fd)
        state.registered = False

    # -- operations ------------------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        state = op.state
        if op.kind in READ_KINDS:
            if state.reader is not None:
                raise LoomError(f"fd {state.fd} already has a waiting reader ({state.reader})")
            state.reader = op
            if op.kind == POLL_IN:
                state.in_hint = False          # wait for a new edge, not a stale one
            ready = state.in_hint
        else:
            if state.writer is not None:
                raise LoomError(f"fd {state.fd} already has a waiting writer ({state.writer})")
            state.writer = op
            if op.kind in (POLL_OUT, CONNECT):
                state.out_hint = False
            ready = state.out_hint
        op.in_flight = True
        self.pending += 1
        self.submitted += 1
        if ready:
            self._runnable.append(op)

    def cancel(self, op: Op) -> None:
        """Unpark an op whose waiter gave up (timeout, cancel). Nothing is in the kernel."""
        if not op.in_flight:
            return
        state = op.state
        if state.reader is op:
            state.reader = None
        elif state.writer is op:
            state.writer = None
        if op in self._runnable:
            self._runnable.remove(op)
        op.in_flight = False
        self.pending -= 1
        assert self.pending >= 0

    def has_runnable(self) -> bool:
        return bool(self._runnable)

    def poll(self, timeout_s: float | None) -> int:
        """Wait up to `timeout_s` (None: no limit) for events; perform and deliver what is
        ready. Every wait ends here, so nothing is looked up that the events do not need."""
        done = 0
        if self._runnable:
            runnable, self._runnable = self._runnable, []
            for op in runnable:
                done += self._perform(op)
            timeout_s = 0.0
        self.polls += 1
        fds = self._fds
        for fd, bits in self._wait(timeout_s, EVENTS_MAX):
            state = fds.get(fd)
            if state is None:
                continue
            if bits & _WAKES_READER:
                if bits & _PEER_GONE:
                    state.short_drains = False     # EOF pending: a short read is not "empty"
                state.in_hint = True
                if state.reader is not None:
                    done += self._perform(state.reader)
            if bits & _WAKES_WRITER:
                state.out_hint = True
                if state.writer is not None:
                    done += self._perform(state.writer)
        return done

    def _perform(self, op: Op) -> int:
        """Do the call of a parked op whose fd looks ready and deliver its result; 1 if it
        completed, 0 if it would block (it stays parked for the next edge).

        Discussion: the in-flight test comes first, for every kind: `poll` walks a snapshot of
        the runnable list, and a callback earlier in that pass may have cancelled this op
        (`loop.cancel`, a fiber's cancel or timeout, `loom.close`). Performing it anyway would
        consume data nobody waits for, call a callback that was withdrawn and count the op done
        twice. A None result means "would block" (FileIO says so instead of raising).
        """
        if not op.in_flight:
            return 0
        state = op.state
        kind = op.kind
        try:
            if kind == RECV:
                result = state.sock.recv_into(op.buf, op.nbytes)
                if state.short_drains and 0 < result < (op.nbytes or len(op.buf)):
                    state.in_hint = False          # a short stream read drained the socket
            elif kind == SEND:
                result = state.sock.send(op.data)
                if result < len(op.data):
                    state.out_hint = False         # a short send filled the buffer
            elif kind == READ:
                result = state.file.readinto(op.buf)
            elif kind == WRITE:
                result = state.file.write(op.data)
            elif kind == ACCEPT:
                conn, addr = state.sock.accept()
                conn.setblocking(False)
                result = (conn, addr)
            elif kind == CONNECT:
                result = connect_result(state.sock)
            else:
                result = 0                         # POLL_IN / POLL_OUT: readiness is all
        except (BlockingIOError, InterruptedError):
            result = None
        except OSError as exc:
            result = exc
        if result is None:
            if kind in READ_KINDS:
                state.in_hint = False
            else:
                state.out_hint = False
            return 0
        if state.reader is op:
            state.reader = None
        else:
            state.writer = None
        op.in_flight = False
        self.pending -= 1
        assert self.pending >= 0
        self.completed += 1
        try:                                       # _common.deliver, inlined: every wait
            op.callback(result)                    # ends here
        except LoomInternalError:
            raise
        except Exception:
            log.exception("callback_failed", {"callback": repr(op.callback), "op": repr(op)})
        return 1

    def statistics(self) -> BackendStats:
        return BackendStats(self.name, self.submitted, self.completed, self.polls, self.pending)

    def close(self) -> None:
        self._close_poller()
        self._fds.clear()
