"""The io_uring backend: the kernel performs the operation, we collect completions.

Submission is batched: `submit()` only writes an SQE into the shared ring; the next `poll()`
hands every entry written during the loop pass to the kernel in one `io_uring_enter`, which
also waits for completions (one enter costs about as much as one epoll_wait from Python, and
io_uring only wins when many submissions share it). The fiber calls above try the non-blocking
call first, so only what would block reaches this backend (glommio's pattern).

Limits: the SQ ring holds `sq_entries` (the batch); operations in flight are at most
`cq_entries`, so the completion ring can never overflow. An op that does not fit waits in the
overflow queue (bounded by `overflow_max`) and is written to the ring as entries free up; its
high-water mark is in the stats.

Operation map: recv/send/read/write/accept are the kernel's own opcodes; connect and
wait_readable/wait_writable are POLL_ADD (connect was started by the fiber call; the poll
waits for it to finish and SO_ERROR says how).

Cancellation: an op not yet handed to the kernel becomes a NOP (its entry's user_data gets
`NOP_BIT`, so its CQE is known to carry no result: a NOP's 0 is not an accepted fd 0 nor an
EOF); one in the kernel gets an ASYNC_CANCEL. If it completed anyway (the race is real: data
can arrive first), nothing is lost: received bytes are kept on the fd (`pushback`) and returned
by the next recv, and an accepted connection is kept for the next accept. Either way its
callback is never called once it was cancelled. What a cancelled op left behind, and the
cancelled op still in the kernel per direction, live in the fd's `backend_extra` (a
`_Leftovers`, None for every fd that has none): the next op on that fd takes the bytes or the
connection at the next poll, or waits behind the cancelled op so bytes keep their order.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import socket

from . import uring as ur
from ._common import (ACCEPT, CONNECT, POLL_IN, POLL_OUT, READ, READ_KINDS, RECV, SEND, WRITE,
                      FdState, LoomError, Op, connect_result, deliver)
from .backend import Backend, BackendStats, BackendUnavailable

log = logging.getLogger("observer.loom")

SQ_ENTRIES = 256           # submission batch per enter
CQ_ENTRIES = 4096          # also the bound on ops in flight
OVERFLOW_MAX = 65536       # ops waiting for room; past it submit is an error
CANCEL_KEY = 0             # user_data of our ASYNC_CANCEL entries (their CQEs are ignored)
KEY_MAX = 1 << 62          # op keys are 1 .. KEY_MAX
NOP_BIT = 1 << 63          # set on the key of a cancelled op whose entry became a NOP
POLLIN, POLLOUT = 0x1, 0x4
MSG_NOSIGNAL = 0x4000
OFF_CURRENT = 0xFFFFFFFFFFFFFFFF   # read/write at the current position (pipes: any)
CLOSE_DRAIN_POLLS = 100            # at close, wait up to this many 10 ms polls for cancels
_SOCK_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


class _Leftovers:
    """What cancelled ops left on one fd (its `backend_extra`), kept only while non-empty."""

    __slots__ = ("pushback", "accepted", "zombie_in", "zombie_out")

    def __init__(self):
        self.pushback = bytearray()      # bytes a cancelled read got, for the next read
        self.accepted: list = []         # connections a cancelled accept got, for the next
        self.zombie_in: Op | None = None     # a cancelled op still in the kernel, per
        self.zombie_out: Op | None = None    # direction: the next one waits behind it

    def empty(self) -> bool:
        return not (self.pushback or self.accepted or self.zombie_in or self.zombie_out)


class UringBackend(Backend):
    name = "io_uring"
    edge_hints = False          # completions, not readiness: a fiber's wait is an op here

    def __init__(self, sq_entries: int = SQ_ENTRIES, cq_entries: int = CQ_ENTRIES,
                 overflow_max: int = OVERFLOW_MAX):
        try:
            self._ring = ur.Ring(sq_entries, cq_entries)
        except (OSError, ValueError) as exc:
            raise BackendUnavailable("io_uring", str(exc)) from None
        self.inflight_max = self._ring.cq_entries
        self.overflow_max = overflow_max
        self._ops: dict[int, Op] = {}          # user_data -> op, for every op in the kernel
        self._unsubmitted = 0                  # SQEs written since the last enter
        self._unsent: dict[int, int] = {}      # user_data -> SQ slot, for NOP-ing on cancel
        self._overflow: collections.deque[Op] = collections.deque()
        self._now: list[Op] = []               # ops served from leftovers at the next poll
        self._next_key = 1
        self.pending = 0
        self.submitted = 0
        self.completed = 0
        self.polls = 0
        self.enters = 0
        self.overflow_high_water = 0
        self._handle = self._on_cqe            # bound once

    # -- fds -------------------------------------------------------------------------------

    def register(self, state: FdState) -> None:
        state.registered = True                # nothing to tell the kernel ahead of time

    def unregister(self, state: FdState) -> None:
        state.registered = False

    # -- operations ------------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        state = op.state
        reads = op.kind in READ_KINDS
        if reads:
            if state.reader is not None:
                raise LoomError(f"fd {state.fd} already has a waiting reader ({state.reader})")
            state.reader = op
        else:
            if state.writer is not None:
                raise LoomError(f"fd {state.fd} already has a waiting writer ({state.writer})")
            state.writer = op
        op.in_flight = True
        op.cancelled = False
        self.pending += 1
        self.submitted += 1
        left = state.backend_extra
        if left is not None:
            zombie = left.zombie_in if reads else left.zombie_out
            if zombie is not None:              # one op per direction in the kernel
                zombie.successor = op
                return
            if _serves(left, op.kind):          # what a cancelled op got comes first
                self._now.append(op)
                return
        self._enqueue(op)

    def _enqueue(self, op: Op) -> None:
        if self._overflow or not self._room():
            if len(self._overflow) >= self.overflow_max:
                self._unpark(op)
                self._finish(op)                # refused: not pending, never completes
                raise LoomError(f"overflow_max={self.overflow_max} ops wait for submission")
            self._overflow.append(op)
            if len(self._overflow) > self.overflow_high_water:
                self.overflow_high_water = len(self._overflow)
            return
        self._push(op)

    def _room(self) -> bool:
        return len(self._ops) < self.inflight_max and self._ring.sq_space() > 0

    def _push(self, op: Op) -> None:
        key = self._next_key
        self._next_key = key + 1 if key < KEY_MAX else 1
        op.user_data = key
        state = op.state
        kind = op.kind
        if kind == RECV or kind == READ:
            view = _pin(op, op.buf, ur.PYBUF_WRITABLE)
            length = min(op.nbytes, view.len) if op.nbytes else view.len
            opcode = ur.OP_RECV if kind == RECV else ur.OP_READ
            off = 0 if kind == RECV else OFF_CURRENT
            args = (opcode, state.fd, off, view.buf or 0, length, 0)
        elif kind == SEND or kind == WRITE:
            view = _pin(op, op.data, ur.PYBUF_SIMPLE)
            if kind == SEND:
                args = (ur.OP_SEND, state.fd, 0, view.buf or 0, view.len, MSG_NOSIGNAL)
            else:
                args = (ur.OP_WRITE, state.fd, OFF_CURRENT, view.buf or 0, view.len, 0)
        elif kind == ACCEPT:
            args = (ur.OP_ACCEPT, state.fd, 0, 0, 0, _SOCK_FLAGS)
        else:                                   # CONNECT, POLL_IN, POLL_OUT
            events = POLLIN if kind == POLL_IN else POLLOUT
            args = (ur.OP_POLL_ADD, state.fd, 0, 0, 0, events)
        slot = self._ring.sq_tail & self._ring.sq_mask
        self._ring.push(*args, key)
        self._ops[key] = op
        self._unsent[key] = slot
        self._unsubmitted += 1

    def cancel(self, op: Op) -> None:
        """Withdraw an op whose waiter gave up; see the module notes for what cannot be."""
        if not op.in_flight or op.cancelled:
            return
        op.cancelled = True
        self._unpark(op)
        state = op.state
        left = state.backend_extra
        if left is not None:
            for zombie in (left.zombie_in, left.zombie_out):
                if zombie is not None and zombie.successor is op:   # held, never submitted
                    zombie.successor = None
                    self._finish(op)
                    return
        if op in self._now:
            self._now.remove(op)
            self._finish(op)
            return
        if op in self._overflow:
            self._overflow.remove(op)
            self._finish(op)
            return
        slot = self._unsent.pop(op.user_data, None)
        if slot is not None:                    # still in the ring: make it a NOP
            key = op.user_data | NOP_BIT
            self._ops[key] = self._ops.pop(op.user_data)
            ur.SQE.pack_into(self._ring.sqes, slot * 64, ur.OP_NOP, 0, 0, -1, 0, 0, 0, 0,
                             key, 0, 0, 0, 0, 0)
            return
        if self._ring.sq_space() > 0:
            self._ring.push(ur.OP_ASYNC_CANCEL, -1, 0, op.user_data, 0, 0, CANCEL_KEY)
            self._unsubmitted += 1
        else:                                   # no room right now: enter, then cancel
            self._enter(False, None)
            self._ring.push(ur.OP_ASYNC_CANCEL, -1, 0, op.user_data, 0, 0, CANCEL_KEY)
            self._unsubmitted += 1
        # The op stays in flight (its buffer pinned) until the kernel posts its CQE, and
        # later ops in its direction wait for that (see _on_cqe), so bytes keep their order.
        left = _leftovers(state)
        if op.kind in READ_KINDS:
            left.zombie_in = op
            state.in_hint = False
        else:
            left.zombie_out = op

    def has_runnable(self) -> bool:
        return self._unsubmitted > 0 or bool(self._now) or self._ring.completions_waiting()

    def poll(self, timeout_s: float | None) -> int:
        """One enter: submit this pass's entries and wait (unless timeout 0); then reap."""
        self.polls += 1
        done = 0
        if self._now:
            done = self._serve_leftovers()
            timeout_s = 0.0
        ring = self._ring
        wait = timeout_s != 0.0 and not ring.completions_waiting()
        if self._unsubmitted or wait:
            self._enter(wait, timeout_s)
        done += ring.reap(self._handle)
        while self._overflow and self._room():
            self._push(self._overflow.popleft())
        return done

    def _serve_leftovers(self) -> int:
        """Complete the ops submitted while their fd held what a cancelled op got. One at a
        time off the list, so that a callback cancelling a later one finds it there."""
        done = 0
        while self._now:
            op = self._now.pop(0)
            result = _take_leftover(op)
            assert result is not None           # one reader per fd: nobody took it meanwhile
            self._complete_now(op, result)
            done += 1
        return done

    def _enter(self, wait: bool, timeout_s: float | None) -> None:
        to_submit = self._unsubmitted
        self.enters += 1
        submitted = self._ring.enter(to_submit, wait, timeout_s)
        assert submitted <= to_submit
        if submitted == to_submit:
            self._unsubmitted = 0
            self._unsent.clear()
        else:                                   # SUBMIT_ALL: only on a hard error
            raise OSError(f"io_uring_enter took {submitted} of {to_submit} entries")

    def _on_cqe(self, key: int, res: int) -> None:
        if key == CANCEL_KEY:
            return
        op = self._ops.pop(key, None)
        if op is None:
            return
        self._unsent.pop(key, None)
        view = op.keep
        if view is not None:
            ur.release_buffer(ctypes.byref(view))
            op.keep = None
        if op.cancelled:                        # nobody waits: keep what it got, if it ran
            if not key & NOP_BIT:
                self._salvage(op, res)
            self._finish(op)
            self._bury(op)
            return
        result = self._result(op, res)
        self._unpark(op)
        self._finish(op)
        if result is None:                      # a spurious CONNECT poll: wait again
            self.submitted -= 1
            self.submit(op)
            return
        self.completed += 1
        deliver(op, result, log)

    def _result(self, op: Op, res: int):
        if res < 0:
            return OSError(-res, os.strerror(-res))
        kind = op.kind
        state = op.state
        if kind == RECV:
            # A short stream read drained the socket: submit next time instead of trying.
            state.in_hint = ((not state.short_drains or res >= (op.nbytes or len(op.buf)))
                             and not _holds_bytes(state))
            return res
        if kind == READ:
            state.in_hint = not _holds_bytes(state)
            return res
        if kind == SEND or kind == WRITE:
            state.out_hint = True
            return res
        if kind == ACCEPT:
            return _accepted(res)
        if kind == CONNECT:
            return connect_result(state.sock)
        if kind in (POLL_IN, POLL_OUT):
            return 0
        return res

    def _bury(self, zombie: Op) -> None:
        """A cancelled op has left the kernel: release the op held behind it."""
        state = zombie.state
        left = state.backend_extra
        if left is None:
            return                      # cancelled before it reached the kernel
        if left.zombie_in is zombie:
            left.zombie_in = None
        elif left.zombie_out is zombie:
            left.zombie_out = None
        else:
            return
        op, zombie.successor = zombie.successor, None
        result = None if op is None else _take_leftover(op)
        _tidy(state)
        if result is not None:
            self._complete_now(op, result)
        elif op is not None:
            self._enqueue(op)

    def _complete_now(self, op: Op, result) -> None:
        self._unpark(op)
        self._finish(op)
        self.completed += 1
        deliver(op, result, log)

    def _salvage(self, op: Op, res: int) -> None:
        """A cancelled op that completed anyway: keep what it got for the next caller.

        Only the raw `res` is read (a byte count or an accepted fd): nothing else about a
        cancelled op is interpreted, since its fd may be closed by now.
        """
        if res < 0:
            return                               # -ECANCELED, or an error nobody waits for
        if op.kind in (RECV, READ) and res > 0:
            _leftovers(op.state).pushback += bytes(memoryview(op.buf).cast("B")[:res])
            op.state.in_hint = False             # the fast path must not read past it
        elif op.kind == ACCEPT:
            _leftovers(op.state).accepted.append(_accepted(res))
            op.state.in_hint = False             # nor accept past it

    def _unpark(self, op: Op) -> None:
        state = op.state
        if state.reader is op:
            state.reader = None
        elif state.writer is op:
            state.writer = None

    def _finish(self, op: Op) -> None:
        op.in_flight = False
        self.pending -= 1
        assert self.pending >= 0

    def statistics(self) -> BackendStats:
        return BackendStats("io_uring", self.submitted, self.completed, self.polls, self.pending,
                            self.overflow_high_water, self.enters)

    def close(self) -> None:
        """Cancel what is in the kernel and wait for it, so no buffer is written after we
        release it; then unmap."""
        for op in list(self._ops.values()):
            if not op.cancelled:
                op.callback = _ignore
                self.cancel(op)
        deadline = CLOSE_DRAIN_POLLS
        while self._ops and deadline:
            self.poll(0.01)
            deadline -= 1
        if self._ops:
            log.error("loom io_uring: %d ops still in the kernel at close", len(self._ops))
        self._ring.close()


def _ignore(result) -> None:
    pass


def _leftovers(state: FdState) -> _Leftovers:
    left = state.backend_extra
    if left is None:
        left = state.backend_extra = _Leftovers()
    return left


def _tidy(state: FdState) -> None:
    """Drop an emptied record, so that `backend_extra` is None on every fd without leftovers
    (the only test the hot path makes)."""
    left = state.backend_extra
    if left is not None and left.empty():
        state.backend_extra = None


def _holds_bytes(state: FdState) -> bool:
    left = state.backend_extra
    return left is not None and bool(left.pushback)


def _serves(left: _Leftovers, kind: int) -> bool:
    """Whether an op of `kind` completes from these leftovers without the kernel."""
    if kind == RECV or kind == READ:
        return bool(left.pushback)
    return kind == ACCEPT and bool(left.accepted)


def _take_leftover(op: Op):
    """The result `op` gets from what a cancelled op left on its fd, or None if nothing."""
    state = op.state
    left = state.backend_extra
    if left is None or not _serves(left, op.kind):
        return None
    if op.kind == ACCEPT:
        result = left.accepted.pop(0)
    else:
        view = memoryview(op.buf).cast("B")
        result = min(len(left.pushback), op.nbytes or len(view))
        view[:result] = left.pushback[:result]
        del left.pushback[:result]
    _tidy(state)
    return result


def _accepted(fd: int):
    """What an accept completion hands over: the new socket (non-blocking) and its peer."""
    conn = socket.socket(fileno=fd)
    try:
        addr = conn.getpeername()
    except OSError:
        addr = None
    return conn, addr


def _pin(op: Op, buf, flags: int) -> ur.PyBuffer:
    """Hold the buffer (and learn its address) until the kernel is done with it."""
    view = ur.PyBuffer()
    if ur.get_buffer(buf, ctypes.byref(view), flags) != 0:
        raise LoomError(f"{op}: cannot take a {'writable ' if flags else ''}buffer from "
                        f"{type(buf).__name__}")
    op.keep = view
    return view
