"""The calls a fiber makes: sleep, recv_into, sendall, accept, connect, read, write, ...

Each is a few lines over `fiber.suspend()`. I/O calls try the non-blocking call first when the
fd's hint says it may succeed (glommio's pattern, and what makes a read with data waiting cost
one syscall and no switch); only what would block becomes an operation for the backend, and the
fiber waits for its completion. Whether io_uring ran the call in the kernel or epoll waited for
an edge and ran it here is invisible from this side, and nothing here asks which backend runs:
a `recv_into` that would block first asks the loop to wait for its fd's edge with no op parked
(`Loop.poll_inline`, the hottest wait; the loop says no where that cannot work), then parks an
op.

Fairness: a fiber whose calls keep completing at once would never yield, so each turn has a
budget of `IMMEDIATE_RUN_MAX` (loop.py) such calls (`loop.budget`, spent here and refilled by
the loop at each turn), after which it ends its turn (`fiber.end_turn`: a yield when another fiber
is ready or a timer is due, else a zero-timeout poll and no switch). A `recv_into` that completes
at once and fills a buffer of at least `FULL_READ_TURN_BYTES` spends the whole budget: the fd
holds a backlog, and what the caller makes of a buffer's worth (a 64 KiB read is a thousand feed
messages to parse) is a turn's work, so a fiber draining a backlog reads once per turn. Short
reads, the steady state of a stream read as fast as it arrives, and full reads of small buffers
(one message per read, where ending the turn on each would cost a poll per message: +37 % CPU
per message in bench/loop_echo.py's permsg) spend one call each.

Stopping other fibers: `cancel_and_join(fibers, timeout_s=...)` is the one way; see its notes.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from dataclasses import dataclass

from greenlet import getcurrent

from ._common import (ACCEPT, CONNECT, POLL_IN, POLL_OUT, READ, RECV, SEND, WRITE, Cancelled,
                      LoomError, Op)
from .fiber import current_fiber, end_turn, join_fiber, suspend, timeout, yield_now

CONNECT_RETRY_S = 0.001        # a unix listener with a full backlog: retry this often
FULL_READ_TURN_BYTES = 4096    # a read filling a buffer this big or bigger ends the turn (notes)

log = logging.getLogger("observer.loom")


def _spend(loop) -> None:
    """A call completed at once: it spends one of the turn's budget; at zero the turn ends."""
    loop.budget -= 1
    if loop.budget <= 0:
        end_turn(loop.current)


def _outside() -> LoomError:
    return LoomError("this loom call must run inside a fiber (loop.spawn / loop.run)")


def _wait_op(fiber, state, kind, buf=None, nbytes=0, data=None):
    if state.sock is not None and state.sock.fileno() < 0:    # closed behind loom's back
        raise OSError(errno.EBADF, "socket is closed")
    op = fiber.op
    if op is None or op.in_flight:
        op = fiber.op = Op(fiber.on_op_done)
    op.kind = kind
    op.state = state
    op.buf = buf
    op.nbytes = nbytes
    op.data = data
    loop = fiber.loop
    loop.submit(op)
    try:
        return suspend(fiber, loop.abandon_op, op)
    finally:
        if not op.in_flight:             # io_uring: an abandoned op keeps its buffer
            op.buf = None
            op.data = None


def sleep(delay_s: float) -> None:
    """Suspend the fiber for `delay_s` seconds; 0 just yields to the other ready fibers."""
    fiber = current_fiber()
    if delay_s <= 0:
        yield_now(fiber)
        return
    loop = fiber.loop
    suspend(fiber, loop.cancel_timer, loop.arm_timer(delay_s, loop.reschedule, fiber))


def recv_into(sock, buf, nbytes: int = 0) -> int:
    """Receive into `buf` (at most `nbytes`, 0 = all of it); returns the count, 0 at EOF.

    Discussion: this is the hottest call in observer, so the common case is inlined: the
    loop straight from the greenlet, the fd state from the loop's one-entry cache (the slow
    path `state_for` registers and handles a reused fd number), one recv, and the
    fairness budget. The recv after an edge wait spends none: a new turn began there.
    """
    try:
        loop = getcurrent().loop
    except AttributeError:
        raise _outside() from None
    state = loop.last_state if sock is loop.last_obj else loop.state_for(sock)
    if state.in_hint:                            # False while io_uring holds leftovers
        try:
            n = sock.recv_into(buf, nbytes)
        except BlockingIOError:
            state.in_hint = False
        else:
            if n < (nbytes or len(buf)):
                if n and state.short_drains:
                    state.in_hint = False        # a short stream read drained the socket
                loop.budget -= 1
            elif n >= FULL_READ_TURN_BYTES:
                loop.budget = 0                  # a full read: a backlog, a turn's worth
            else:
                loop.budget -= 1                 # a full small buffer: one message
            if loop.budget <= 0:
                end_turn(loop.current)
            return n
    while loop.poll_inline(loop.current, True, state):      # the fd's edge came
        try:
            n = sock.recv_into(buf, nbytes)
        except BlockingIOError:
            state.in_hint = False                # a stale edge: wait for the next one
            continue
        if n < (nbytes or len(buf)) and n and state.short_drains:
            state.in_hint = False
        return n
    return _wait_op(loop.current, state, RECV, buf, nbytes)


def recv(sock, n: int) -> bytes:
    """Receive up to `n` bytes (b"" at EOF). Allocates; hot paths use recv_into."""
    buf = bytearray(n)
    count = recv_into(sock, buf)
    del buf[count:]
    return bytes(buf)


def sendall(sock, data) -> None:
    """Send all of `data`, waiting for buffer space as often as needed."""
    try:
        loop = getcurrent().loop
    except AttributeError:
        raise _outside() from None
    state = loop.last_state if sock is loop.last_obj else loop.state_for(sock)
    kind = type(data)
    view = None
    if kind is bytes or kind is bytearray:
        total = len(data)
    elif kind is memoryview and data.itemsize == 1 and data.contiguous:
        view = data
        total = len(data)
    else:
        view = memoryview(data).cast("B")
        total = len(view)
    sent = 0
    if state.out_hint:
        try:
            sent = sock.send(data)
        except BlockingIOError:
            state.out_hint = False
        else:
            if sent == total:
                loop.budget -= 1
                if loop.budget <= 0:
                    end_turn(loop.current)
                return
            state.out_hint = False               # a short send filled the buffer
    if view is None:
        view = memoryview(data)
    fiber = loop.current
    while sent < total:
        sent += _wait_op(fiber, state, SEND, data=view[sent:])


def accept(sock):
    """Accept one connection: `(conn, addr)`, conn already non-blocking."""
    fiber = current_fiber()
    state = fiber.loop.state_for(sock)
    if state.in_hint:
        try:
            conn, addr = sock.accept()
        except BlockingIOError:
            state.in_hint = False
        else:
            conn.setblocking(False)
            _spend(fiber.loop)
            return conn, addr
    return _wait_op(fiber, state, ACCEPT)


def connect(sock, addr) -> None:
    """Connect to a numeric address (resolve names first, e.g. in run_in_thread)."""
    fiber = current_fiber()
    state = fiber.loop.state_for(sock)
    while True:
        err = sock.connect_ex(addr)
        if err in (0, errno.EISCONN):
            return
        if err == errno.EINPROGRESS:
            _wait_op(fiber, state, CONNECT)
            return
        if err == errno.EAGAIN and sock.family == socket.AF_UNIX:
            sleep(CONNECT_RETRY_S)               # the listener's backlog is full
            continue
        raise OSError(err, f"connect to {addr!r}: {os.strerror(err)}")


def read(fd: int, buf) -> int:
    """Read from a plain fd (pipe, eventfd, tty) into `buf`; returns the count, 0 at EOF."""
    fiber = current_fiber()
    state = fiber.loop.state_for(fd)
    if state.sock is not None:
        return recv_into(state.sock, buf)
    if state.in_hint:                            # False while io_uring holds leftovers
        n = state.file.readinto(buf)
        if n is not None:
            _spend(fiber.loop)
            return n
        state.in_hint = False
    return _wait_op(fiber, state, READ, buf)


def write(fd: int, data) -> int:
    """Write some of `data` to a plain fd; returns how many bytes went (at least one)."""
    fiber = current_fiber()
    state = fiber.loop.state_for(fd)
    if state.sock is not None:
        return _send_some(fiber, state, data)
    if state.out_hint:
        n = state.file.write(data)
        if n is not None:
            _spend(fiber.loop)
            return n
        state.out_hint = False
    return _wait_op(fiber, state, WRITE, data=data)


def _send_some(fiber, state, data) -> int:
    try:
        n = state.sock.send(data)
    except BlockingIOError:
        state.out_hint = False
        return _wait_op(fiber, state, SEND, data=data)
    _spend(fiber.loop)
    return n


def wait_readable(obj) -> None:
    """Wait for new readiness after your own non-blocking call returned EAGAIN."""
    fiber = current_fiber()
    _wait_op(fiber, fiber.loop.state_for(obj), POLL_IN)


def wait_writable(obj) -> None:
    """Wait until the fd has buffer space again after your own call returned EAGAIN."""
    fiber = current_fiber()
    _wait_op(fiber, fiber.loop.state_for(obj), POLL_OUT)


def close(obj) -> None:
    """Close a socket or fd that loom knows; fibers waiting on it get `ClosedError`."""
    fiber = current_fiber()
    fiber.loop.forget(obj)
    if isinstance(obj, int):
        os.close(obj)
    else:
        obj.close()


def run_in_thread(fn, *args):
    """Run a blocking `fn(*args)` on the loop's thread pool; return its result or raise."""
    fiber = current_fiber()
    pool = fiber.loop.threads
    job = pool.submit(fiber, fn, args)
    return suspend(fiber, pool.abandon, job)


@dataclass(frozen=True)
class JoinReport:
    """What `cancel_and_join` / `join_all` saw when they returned."""

    late: tuple          # fibers still running at the deadline (each was logged by name)
    failed: tuple        # fibers that ended with an error other than Cancelled: `fiber.error`
                         # (loom logged it, by name, when the fiber ended; it is not raised)


def cancel_and_join(fibers, *, timeout_s: float | None) -> JoinReport:
    """Cancel `fibers` and wait until they have finished, `timeout_s` at most in all (None: no
    limit). The calling fiber is skipped if it is among them.

    A target's own `Cancelled` is the expected end and is swallowed; a target's other error
    is reported (`JoinReport.failed`), never raised into the caller. A cancel (or another
    `loom.timeout` scope's TimeoutError) aimed at the caller while it waits is not lost: it
    is raised once the join is over, at the latest at the deadline.

    Discussion: why the caller's own cancel waits for the join. A stopper joins so that it can
    release what the targets use (a socket, the writer's segment) once they are gone; if its
    own cancel cut the join short, its unwinding would release them under fibers that still
    run once more before they see their cancel. So the join goes on to its deadline and the
    cancel is raised after, like trio's cleanup in a shielded scope with a deadline. Called
    outside a fiber (plain code, a loop callback), nothing can wait: the targets are cancelled
    and the report lists those not finished as late (loop.close() ends them).
    """
    me = _running_fiber()
    targets = [fiber for fiber in fibers if fiber is not me]
    for fiber in targets:
        if not fiber.done:
            fiber.cancel()
    return join_all(targets, timeout_s=timeout_s)


def join_all(fibers, *, timeout_s: float | None) -> JoinReport:
    """Wait, without cancelling them, until `fibers` have finished: `cancel_and_join`'s wait,
    with the same rules (targets' errors reported, the caller's own interrupt raised after)."""
    me = _running_fiber()
    targets = [fiber for fiber in fibers if fiber is not me]
    own = _wait_all(targets, timeout_s) if me is not None else None
    late = tuple(fiber for fiber in targets if not fiber.done)
    if me is not None:
        for fiber in late:
            log.warning("fiber_join_timeout", {"fiber": fiber.name, "timeout_s": timeout_s})
    failed = tuple(fiber for fiber in targets if fiber.done and fiber.error is not None
                   and not isinstance(fiber.error, Cancelled))
    if own is not None:
        raise own
    return JoinReport(late, failed)


def _wait_all(targets, timeout_s: float | None) -> BaseException | None:
    """Wait for every target until the deadline; return the first interrupt aimed at the
    caller meanwhile (a Cancelled, or another scope's TimeoutError), else None.

    `join_fiber` only waits: it never raises the target's error, so whatever a wait raises
    here is the caller's own. The caller's cancel is one-shot, so waiting again after it works.
    """
    own = None
    scope = timeout(timeout_s)
    with scope:
        for target in targets:
            while not target.done:
                try:
                    join_fiber(target, None)
                except (Cancelled, TimeoutError) as exc:
                    if exc is scope.error:
                        return own             # our deadline: the rest are late
                    if own is None:
                        own = exc
    return own


def _running_fiber():
    """The fiber running now, or None on the loop greenlet, outside any loop, or in a loop
    callback (which may run on a fiber's greenlet during its inline poll: not that fiber)."""
    fiber = getattr(getcurrent(), "fiber", None)
    if fiber is None or fiber.loop.current is not fiber:
        return None
    return fiber
