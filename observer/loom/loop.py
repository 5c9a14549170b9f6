"""The loop: one thread, many fibers, completions in, fibers out.

What the loop owns: the ready queue (fibers woken and waiting for their turn), the timer heap,
one backend (io_uring, epoll or kqueue) that turns operations into completions, the table of
fds it has registered, the runner greenlets kept for reuse, and the fiber that runs right now.

What it never does: parse bytes, know about feeds or books, or allocate per event once warm.
A fiber waiting on I/O reuses its one `Op`; a completion calls the op's callback, which for a
fiber is a bound method made once that puts the fiber on the ready queue.

The one way fibers talk to the loop: `fiber.suspend()` after registering what should wake them
(an op with the backend, a timer, a place in a waiters list), and `loop.reschedule()` from
whoever wakes them. Everything in `calls.py` and `sync.py` is a few lines on top of that.

A pass reads as three phases: poll the backend (not blocking when fibers are ready, else until
the next deadline), fire expired timers, then run the fibers that were ready when the phase
began (ones woken during it wait for the next pass, so a busy fiber cannot starve I/O). One
shortcut: a fiber that waits while nothing else is ready runs the poll phase itself, on its own
greenlet, and carries on if it alone was woken (fiber._poll_inline: two switches saved per wait).

Loop bugs are fatal (`LoomInternalError` closes the loop and propagates); fiber bugs are
contained (stored on the fiber, logged with its name, re-raised by `join()`).
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass

import greenlet

from . import fiber as fibers
from ._common import (FDS_MAX, READ, RECV, SEND, WRITE, ClosedError, FdState, LoomError,
                      LoomInternalError, Op, fd_of, make_nonblocking)
from .backend import make_backend
from .fiber import DONE, NEW, READY, RUNNING, WAITING, Fiber
from .threads import ThreadPool
from .timers import TimerQueue
from .watchdog import WATCHDOG_S, Watchdog

log = logging.getLogger("observer.loom")

FIBERS_MAX = 100_000          # live fibers per loop; spawning past it is an error
SPIN_S_MAX = 0.001            # spin-before-sleep above a millisecond only burns the core


@dataclass(frozen=True)
class LoopStats:
    backend: str
    switches: int
    ops_immediate: int          # calls that completed without waiting (try-first)
    ops_submitted: int          # operations handed to the backend
    ops_completed: int          # completions the backend delivered
    overflow_high_water: int    # io_uring: most ops waiting for a free submission entry
    timers_armed: int           # timers armed since the loop started
    timers_live: int
    watchdog_reports: int
    fibers_spawned: int
    fibers_live: int
    polls: int


class TimerHandle:
    """What `call_later` returns: `cancel()` disarms it."""

    __slots__ = ("_loop", "_entry")

    def __init__(self, loop, entry):
        self._loop = loop
        self._entry = entry

    def cancel(self) -> bool:
        return self._loop._timers.cancel(self._entry)


class Loop:
    def __init__(self, backend: str | None = None, *, clock=time.monotonic,
                 watchdog_s: float | None = WATCHDOG_S, spin_s: float = 0.0,
                 threads_max: int = 4, fibers_max: int = FIBERS_MAX):
        if spin_s:
            _check_spin(spin_s)
        self._backend = make_backend(backend)
        self.backend_name = self._backend.name
        self._clock = clock
        self._spin_s = spin_s
        self._timers = TimerQueue()
        self._ready: collections.deque[Fiber] = collections.deque()
        self._fds: dict[int, FdState] = {}
        self._fibers: set[Fiber] = set()
        self._runners: list = []
        self._current: Fiber | None = None
        self._loop_greenlet = greenlet.getcurrent()
        self._running = False
        self._stopping = False
        self._closed = False
        self._inline_ok = False      # a waiting fiber may poll on its own greenlet (fiber.py)
        self._main: Fiber | None = None
        self._internal_error: LoomInternalError | None = None
        self._switches = 0
        self._immediate = 0          # try-first completions (stats, summed per turn)
        self._budget = 0             # try-first completions left in this turn (fiber.resume)
        self._last_obj = None        # one-entry cache of the last fd state used by a call
        self._last_state: FdState | None = None
        self._spawned = 0
        self._fibers_max = fibers_max
        self._cancel_op = self._backend.cancel          # bound once: no allocation per wait
        self._cancel_timer = self._timers.cancel
        self._threads = ThreadPool(self, threads_max)
        self._watchdog = Watchdog(self, watchdog_s) if watchdog_s else None

    # -- fibers ----------------------------------------------------------------------------

    def spawn(self, fn, *args, name: str | None = None) -> Fiber:
        if self._closed:
            raise LoomError("spawn on a closed loop")
        if len(self._fibers) >= self._fibers_max:
            raise LoomError(f"fibers_max={self._fibers_max} live fibers reached")
        fiber = Fiber(self, fn, args, name)
        self._fibers.add(fiber)
        self._spawned += 1
        self._ready.append(fiber)
        return fiber

    def reschedule(self, fiber: Fiber, value=None, throw: BaseException | None = None) -> None:
        """Wake a waiting fiber with a value (or an exception to raise). Exactly once."""
        if fiber.state != WAITING:
            raise LoomInternalError(f"reschedule of {fiber!r}: it is not waiting")
        fiber.state = READY
        fiber.value = value
        fiber.throw = throw
        self._ready.append(fiber)

    def interrupt(self, fiber: Fiber, exc: BaseException) -> None:
        """Deliver a cancel or timeout: now if the fiber waits, else at its next wait point."""
        if fiber.state == WAITING:
            if fiber.abandon_fn is not None:
                fiber.abandon_fn(fiber.abandon_arg)
            self.reschedule(fiber, None, exc)
        elif fiber.state in (NEW, READY, RUNNING):
            fiber.deferred = exc
        # DONE: nothing left to interrupt.

    def _fiber_finished(self, fiber: Fiber, result, error: BaseException | None) -> None:
        fiber.state = DONE
        fiber.result = result
        fiber.error = error
        fiber.deferred = None
        # A finished fiber keeps nothing of its I/O. Its Op's callback is the fiber's own bound
        # `on_op_done`, so fiber -> op -> callback -> fiber is a cycle that only the cyclic GC
        # would free (with the op's fd state and socket), and a steady shard may not run it for
        # hours: every finished snapshot fiber would stay.
        fiber.op = fiber.on_op_done = fiber.abandon_fn = fiber.abandon_arg = None
        self._fibers.discard(fiber)
        if fiber is self._main:
            self._inline_ok = False          # run() returns now; nobody may block in a poll
        if error is not None and not isinstance(error, fibers.Cancelled):
            log.error("loom: fiber %r failed", fiber.name, exc_info=error)
        joiners, fiber.joiners = fiber.joiners, None
        for joiner in joiners or ():
            if joiner.state == WAITING:
                self.reschedule(joiner, None)

    def _wake_fiber(self, fiber: Fiber) -> None:
        self.reschedule(fiber, None)

    # -- running ---------------------------------------------------------------------------

    def run(self, main=None, *args):
        """Run until `main(*args)` returns (its result, or its error re-raised), or until no
        fiber, timer or operation is left, or until `stop()`."""
        if self._running:
            raise LoomError("loop.run called while the loop runs")
        if self._closed:
            raise LoomError("run on a closed loop")
        if greenlet.getcurrent() is not self._loop_greenlet:
            raise LoomError("loop.run must be called from the greenlet that created the loop")
        main_fiber = self._main = self.spawn(main, *args) if main is not None else None
        self._running = True
        self._stopping = False
        self._inline_ok = not self._spin_s
        if self._watchdog is not None:
            self._watchdog.start()
        try:
            while not self._stopping:
                if main_fiber is not None:
                    if main_fiber.state == DONE:
                        break
                elif not self._has_work():
                    break
                self._run_once()
        except LoomInternalError:
            log.critical("loom: internal error, closing the loop", exc_info=True)
            self._running = False
            self._inline_ok = False
            self.close()
            raise
        finally:
            self._running = False
            self._inline_ok = False
            self._main = None
            if self._watchdog is not None:
                self._watchdog.stop()
        if main_fiber is not None and main_fiber.state == DONE:
            return main_fiber.join()
        return None

    def stop(self) -> None:
        """Make `run()` return after the current pass."""
        self._stopping = True
        self._inline_ok = False

    def _has_work(self) -> bool:
        return bool(self._fibers or self._timers.live or self._backend.pending)

    def _run_once(self) -> None:
        ready = self._ready
        timers = self._timers
        backend = self._backend
        if ready:                                     # the backend shortens this itself when
            timeout_s = 0.0                           # it has work of its own (has_runnable)
        elif timers.live:
            timeout_s = max(0.0, timers.next_deadline_s() - self._clock())
        elif backend.pending:
            timeout_s = None
        elif backend.has_runnable():
            timeout_s = 0.0
        else:
            self._deadlocked()
        if timeout_s != 0.0 and self._spin_s:
            timeout_s = self._spin(timeout_s)
        backend.poll(timeout_s)                       # phase 1: completions make fibers ready
        if timers.live:
            timers.expire(self._clock())              # phase 2: deadlines make fibers ready
        count = len(ready)                            # phase 3: run those ready now, no more
        resume = fibers.resume
        popleft = ready.popleft
        while count:
            count -= 1
            resume(self, popleft())

    def _spin(self, timeout_s: float | None) -> float | None:
        """Poll without sleeping for up to spin_s: a halted vCPU takes ~25 µs to wake."""
        clock = time.perf_counter
        spin_end = clock() + (self._spin_s if timeout_s is None else min(self._spin_s, timeout_s))
        while clock() < spin_end:
            if self._backend.poll(0.0):
                return 0.0
        if timeout_s is None:
            return None
        return max(0.0, timeout_s - self._spin_s)

    def _deadlocked(self) -> None:
        names = sorted(f.name for f in self._fibers)[:10]
        raise LoomError(f"deadlock: {len(self._fibers)} fibers wait and nothing can wake them "
                        f"(no timer, no I/O, no thread job): {names}")

    # -- fds -------------------------------------------------------------------------------

    def state_for(self, obj) -> FdState:
        """The loop's record of a socket or fd, registering it (non-blocking) on first use."""
        fd = fd_of(obj)
        state = self._fds.get(fd)
        if state is not None and state.obj == obj:
            return state
        if state is not None:                      # fd number reused by a new object
            self._drop_state(state, None)
        if len(self._fds) >= FDS_MAX:
            raise LoomError(f"fds_max={FDS_MAX} fds registered with one loop")
        state = FdState(obj, fd)
        make_nonblocking(state)
        self._backend.register(state)
        self._fds[fd] = state
        return state

    def forget(self, obj) -> None:
        """Drop an fd before it is closed; ops waiting on it fail with `ClosedError`."""
        fd = fd_of(obj)
        state = self._fds.get(fd)
        if state is not None:
            self._drop_state(state, ClosedError(f"fd {fd}"))

    def _drop_state(self, state: FdState, error: OSError | None) -> None:
        self._last_obj = self._last_state = None
        for op in (state.reader, state.writer):
            if op is not None:
                self._backend.cancel(op)
                if error is not None:
                    op.callback(error)
        self._backend.unregister(state)
        del self._fds[state.fd]

    # -- the callback layer ----------------------------------------------------------------

    def read(self, fd, buf, callback, nbytes: int = 0) -> Op:
        """Read (or recv) into `buf`; later `callback(n)` or `callback(OSError)`."""
        state = self.state_for(fd)
        op = Op(callback)
        op.kind = RECV if state.sock is not None else READ
        op.state = state
        op.buf = buf if not nbytes or state.sock is not None else memoryview(buf)[:nbytes]
        op.nbytes = nbytes if state.sock is not None else 0
        self._backend.submit(op)
        return op

    def write(self, fd, data, callback) -> Op:
        """Write (or send) some of `data`; later `callback(n_written)` or `callback(OSError)`."""
        state = self.state_for(fd)
        op = Op(callback)
        op.kind = SEND if state.sock is not None else WRITE
        op.state = state
        op.data = data
        self._backend.submit(op)
        return op

    def cancel(self, op: Op) -> None:
        """Withdraw a callback-layer op; its callback is not called."""
        self._backend.cancel(op)

    def call_later(self, delay_s: float, callback, *args) -> TimerHandle:
        entry = self._timers.arm(self._clock() + delay_s, _call_with_args, (callback, args))
        return TimerHandle(self, entry)

    # -- introspection and shutdown --------------------------------------------------------

    def stats(self) -> LoopStats:
        b = self._backend.statistics()
        return LoopStats(
            backend=self.backend_name, switches=self._switches, ops_immediate=self._immediate,
            ops_submitted=b.submitted, ops_completed=b.completed,
            overflow_high_water=b.overflow_high_water, timers_armed=self._timers.armed_total,
            timers_live=self._timers.live,
            watchdog_reports=self._watchdog.reports_total if self._watchdog else 0,
            fibers_spawned=self._spawned, fibers_live=len(self._fibers), polls=b.polls)

    def watchdog_reports(self) -> list:
        return list(self._watchdog.reports) if self._watchdog else []

    def close(self) -> None:
        """End every fiber (GreenletExit at its wait point), the threads and the backend."""
        if self._closed:
            return
        if self._running:
            raise LoomError("close the loop after run() returns")
        self._closed = True
        for fiber in list(self._fibers):
            if fiber.runner is not None:
                fibers.kill_runner(fiber.runner)
        self._fibers.clear()
        for runner in self._runners:
            fibers.kill_runner(runner)
        self._runners.clear()
        self._threads.close()
        self._backend.close()
        self._fds.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _call_with_args(callback_args) -> None:
    callback, args = callback_args
    try:
        callback(*args)
    except LoomInternalError:
        raise
    except Exception:
        log.exception("loom: call_later callback %r raised", callback)


def _check_spin(spin_s: float) -> None:
    if not 0 < spin_s <= SPIN_S_MAX:
        raise ValueError(f"spin_s={spin_s} outside (0, {SPIN_S_MAX}]")
    if len(os.sched_getaffinity(0)) != 1:
        raise ValueError("spin-before-sleep needs the loop pinned to its own core "
                         "(loom.pin([core]) first): spinning on a shared core slows both sides")
