"""What two or more loom modules share: errors, the operation record, per-fd state.

An `Op` is one I/O operation handed to a backend: what to do (`kind`), on what fd (`state`),
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
import logging
import os
import socket

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
        self.in_flight = False   # submitted, and neither completed nor cancelled
        self.cancelled = False   # io_uring: cancelled while the kernel still holds it
        self.user_data = 0       # io_uring: the key of this op in the backend's table
        self.keep = None         # io_uring: the buffer the kernel points into (kept alive)
        self.successor = None    # io_uring: the op held back until this cancelled one ends

    def __repr__(self) -> str:
        fd = self.state.fd if self.state is not None else -1
        return f"<Op {KIND_NAMES.get(self.kind, self.kind)} fd={fd}>"


class FdState:
    """What one loop knows about one fd. Created on first use, dropped by `loom.close()`."""

    __slots__ = ("fd", "obj", "sock", "file", "short_drains", "reader", "writer",
                 "in_hint", "out_hint", "registered", "backend_extra")

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
        self.registered = False   # the backend watches it (register / unregister set this)
        self.backend_extra = None  # the backend's own record of this fd, if it keeps one


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


def connect_result(sock: socket.socket):
    """After a writable edge: 0 if connected, the OSError if it failed, None if not yet.

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
            return None
        return exc
    return 0


def deliver(op: Op, result, log: logging.Logger) -> None:
    """Hand a completion to its callback. A user callback's error is logged, never lost in the
    loop; an internal error stops the loop."""
    try:
        op.callback(result)
    except LoomInternalError:
        raise
    except Exception:
        log.exception("callback_failed", {"callback": repr(op.callback), "op": repr(op)})
