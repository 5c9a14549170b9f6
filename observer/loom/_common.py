"""Pieces two or more loom modules share: errors, the operation record, per-fd state.

An `Op` is one I/O operation handed to a backend: what to do (`kind`), on what (`target`, `fd`),
with which buffer, and whom to tell (`callback(result)`, where `result` is the operation's value
or an `OSError` instance). A fiber owns one `Op` and reuses it for every wait, so waiting on I/O
allocates nothing once warm. `FdState` is what a loop remembers about one fd: the object it was
registered for, whether it is a stream socket, the parked reader and writer, and two hints
(`in_hint`, `out_hint`) that say whether calling straight away is likely to succeed, so that the
fiber calls skip the ~1.9 µs of a failed non-blocking call when the fd is known to be drained.
"""

from __future__ import annotations

import errno
import io
import os
import logging
import socket
from dataclasses import dataclass

# Operation kinds. Readiness backends perform the call themselves; io_uring submits it.
RECV = 1        # sock.recv_into(buf, nbytes)
SEND = 2        # sock.send(data)
ACCEPT = 3      # sock.accept()
CONNECT = 4     # connect already started; completes when the socket is writable
READ = 5        # fd read into buf
WRITE = 6       # fd write of data
POLL_IN = 7     # readiness only (wait_readable)
POLL_OUT = 8    # readiness only (wait_writable)

KIND_NAMES = {RECV: "recv", SEND: "send", ACCEPT: "accept", CONNECT: "connect", READ: "read",
              WRITE: "write", POLL_IN: "wait_readable", POLL_OUT: "wait_writable"}
READ_KINDS = frozenset((RECV, ACCEPT, READ, POLL_IN))

log = logging.getLogger("observer.loom")

FDS_MAX = 65536              # fds one loop tracks at once; past it registration is an error


class LoomError(Exception):
    """Misuse of loom: calling a fiber function outside a fiber, two readers on one fd, ..."""


class LoomInternalError(Exception):
    """A bug inside the loop itself; the loop stops loudly rather than limp on."""


class Cancelled(BaseException):
    """Raised at a fiber's wait point by `Fiber.cancel()`.

    A BaseException, like trio's, so that `except Exception` in user code does not swallow it.
    """


class ClosedError(OSError):
    """The fd was closed through `loom.close()` while an operation waited on it."""

    def __init__(self, what: str):
        super().__init__(errno.EBADF, f"{what} was closed while an operation waited on it")


class Op:
    """One operation in flight; reused by its owner (a fiber) across waits."""

    __slots__ = ("kind", "state", "buf", "nbytes", "data", "callback", "user_data",
                 "in_flight", "cancelled", "keep", "successor")

    def __init__(self, callback=None):
        self.kind = 0
        self.state: FdState | None = None
        self.buf = None          # writable buffer for RECV/READ
        self.nbytes = 0          # 0 = the whole buffer
        self.data = None         # bytes-like for SEND/WRITE
        self.callback = callback
        self.user_data = 0       # io_uring: the key of this op in the backend's table
        self.in_flight = False
        self.cancelled = False
        self.keep = None         # io_uring: objects the kernel points into (kept alive)
        self.successor = None    # io_uring: the op held back until this cancelled one ends

    def __repr__(self) -> str:
        fd = self.state.fd if self.state is not None else -1
        return f"<Op {KIND_NAMES.get(self.kind, self.kind)} fd={fd}>"


class FdState:
    """What one loop knows about one fd. Created on first use, dropped by `loom.close()`."""

    __slots__ = ("fd", "obj", "sock", "file", "short_drains", "reader", "writer",
                 "in_hint", "out_hint", "registered", "pushback", "pushback_accept",
                 "zombie_in", "zombie_out")

    def __init__(self, obj, fd: int):
        self.fd = fd
        self.obj = obj                                   # the socket, or the int fd
        self.sock = obj if isinstance(obj, socket.socket) else None
        # Plain fds go through FileIO because its readinto/write return None on EAGAIN
        # instead of raising: no exception cost on the would-block path.
        self.file = None if self.sock is not None else io.FileIO(fd, "r+", closefd=False)
        # A short read drained a stream socket, so the next call waits for a new edge. Not
        # after a hang-up: the EOF that follows is not a new edge (the backend clears this
        # flag on EPOLLRDHUP/HUP/EV_EOF), nor for datagram/seqpacket sockets or plain fds.
        self.short_drains = self.sock is not None and self.sock.type == socket.SOCK_STREAM
        self.reader: Op | None = None
        self.writer: Op | None = None
        self.in_hint = True       # a call now may succeed (unknown counts as yes)
        self.out_hint = True
        self.registered = False
        # io_uring only: what an op got after its waiter gave up, for the next caller.
        self.pushback = bytearray()
        self.pushback_accept: list = []
        self.zombie_in: Op | None = None      # a cancelled op still in the kernel
        self.zombie_out: Op | None = None


def fd_of(obj) -> int:
    """The fd of a socket or int; a closed socket is a clear error, not fd -1."""
    if isinstance(obj, int):
        if obj < 0:
            raise OSError(errno.EBADF, f"bad file descriptor {obj}")
        return obj
    fd = obj.fileno()
    if fd < 0:
        raise OSError(errno.EBADF, "socket is closed")
    return fd


def make_nonblocking(state: FdState) -> None:
    """Sockets and fds handed to loom are non-blocking; loom sets that itself."""
    if state.sock is not None:
        state.sock.setblocking(False)
    else:
        os.set_blocking(state.fd, False)


def buffer_len(buf, nbytes: int) -> int:
    """How many bytes a read into `buf` asks for (`nbytes` 0 means the whole buffer)."""
    if isinstance(buf, memoryview):
        size = buf.nbytes
    elif isinstance(buf, bytearray):
        size = len(buf)
    else:
        size = memoryview(buf).nbytes
    if nbytes < 0 or nbytes > size:
        raise ValueError(f"nbytes={nbytes} outside the buffer of {size} bytes")
    return nbytes or size


WOULD_BLOCK = object()       # perform() result: not ready, stay parked


def perform(op: Op):
    """Do the call of a parked op now that its fd looks ready (readiness backends).

    Returns the op's result, an OSError instance (delivered to the waiter), or WOULD_BLOCK.
    Updates the fd's hints: a stream read or write that moved fewer bytes than asked means the
    kernel buffer was drained (or filled), so the next call should wait for a fresh edge.
    """
    state = op.state
    kind = op.kind
    try:
        if kind == RECV:
            n = state.sock.recv_into(op.buf, op.nbytes)
            if state.short_drains and 0 < n < (op.nbytes or len(op.buf)):
                state.in_hint = False
            return n
        if kind == READ:
            n = state.file.readinto(op.buf)
            return WOULD_BLOCK if n is None else n
        if kind == SEND:
            n = state.sock.send(op.data)
            if n < len(op.data):
                state.out_hint = False
            return n
        if kind == WRITE:
            n = state.file.write(op.data)
            return WOULD_BLOCK if n is None else n
        if kind == ACCEPT:
            conn, addr = state.sock.accept()
            conn.setblocking(False)
            return conn, addr
        if kind == CONNECT:
            return connect_result(state.sock)
        return 0                                    # POLL_IN / POLL_OUT: readiness is all
    except (BlockingIOError, InterruptedError):
        return WOULD_BLOCK
    except OSError as exc:
        return exc


def connect_result(sock: socket.socket):
    """After a writable edge: 0 if connected, the OSError if it failed, else WOULD_BLOCK.

    Discussion: a socket registered before `connect()` may report a spurious writable edge
    (an unconnected TCP socket polls as writable), so SO_ERROR == 0 alone does not prove the
    connection is up; `getpeername()` does.
    """
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        return OSError(err, os.strerror(err))
    try:
        sock.getpeername()
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return WOULD_BLOCK
        return exc
    return 0


def deliver(op: Op, result, log) -> None:
    """Hand a completion to its callback. A user callback's error is logged, never lost in the
    loop; an internal error stops the loop."""
    try:
        op.callback(result)
    except LoomInternalError:
        raise
    except Exception:
        log.exception("loom: callback %r for %r raised", op.callback, op)


def take_pushback(state: FdState, buf, nbytes: int) -> int:
    """io_uring: bytes an abandoned read got after its waiter left are returned first."""
    view = memoryview(buf).cast("B")
    n = min(len(state.pushback), nbytes or len(view))
    view[:n] = state.pushback[:n]
    del state.pushback[:n]
    return n


@dataclass(frozen=True)
class BackendStats:
    backend: str
    submitted: int
    completed: int
    polls: int
    pending: int
    overflow_high_water: int = 0       # readiness backends have no submission queue


class ReadinessBackend:
    """What epoll and kqueue share: ops parked on their fd (one reader, one writer), performed
    by `_attempt` when an event says the fd is ready.

    An op submitted while its fd's hint says "ready" (an edge arrived while nobody waited) goes
    on the `_runnable` list, which the next poll performs before it blocks; so no edge is ever
    lost between a failed call and the park.
    """

    name = "readiness"
    # A poll sets `in_hint` on an fd's IN edge even when no reader is parked, so a fiber may
    # poll itself and then call (calls._recv_wait_inline); io_uring has no readiness to show.
    hints_from_poll = True

    def __init__(self):
        self._runnable: list[Op] = []
        self.pending = 0
        self.submitted = 0
        self.completed = 0
        self.polls = 0

    def _run_runnable(self) -> int:
        runnable, self._runnable = self._runnable, []
        done = 0
        for op in runnable:
            done += self._attempt(op)
        return done

    # -- operations (shared) --------------------------------------------------------------------

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

    def _attempt(self, op: Op) -> int:
        """Perform a parked op whose fd looks ready; deliver it unless it would block.

        Discussion: every readiness wait ends here, so the common case (a stream recv) is
        done inline rather than through `perform` and `deliver`. The in-flight test comes
        first, for every kind: `_run_runnable` walks a snapshot of the list, and a callback
        earlier in that pass may have cancelled this op (`loop.cancel`, a fiber's cancel or
        timeout, `loom.close`). Performing it anyway would consume data nobody waits for,
        call a callback that was withdrawn and count the op done twice.
        """
        if not op.in_flight:
            return 0                       # cancelled after it was queued
        state = op.state
        if op.kind == RECV:
            try:
                result = state.sock.recv_into(op.buf, op.nbytes)
            except (BlockingIOError, InterruptedError):
                state.in_hint = False
                return 0
            except OSError as exc:
                result = exc
            else:
                if state.short_drains and 0 < result < (op.nbytes or len(op.buf)):
                    state.in_hint = False
            state.reader = None
        else:
            result = perform(op)
            if result is WOULD_BLOCK:
                if op.kind in READ_KINDS:
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
        try:
            op.callback(result)
        except LoomInternalError:
            raise
        except Exception:
            log.exception("loom: callback %r for %r raised", op.callback, op)
        return 1

    def statistics(self) -> BackendStats:
        return BackendStats(self.name, self.submitted, self.completed, self.polls, self.pending)
