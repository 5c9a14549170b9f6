"""The loop: one thread, many fibers, completions in, fibers out.

What the loop owns: the ready queue (fibers woken and waiting for their turn), the timer heap,
one backend (io_uring, epoll or kqueue, behind `backend.Backend`) that turns operations into
completions, the fd table (its base class, fdtable.py), the runner greenlets kept for reuse,
and the turn: which fiber runs now (`current`), the turn counter (`switches`) and the turn's
budget of calls that complete at once (`budget`).

What it never does: parse bytes, know about feeds or books, or allocate per event once warm.
A fiber waiting on I/O reuses its one `Op`; a completion calls the op's callback, which for a
fiber is `Loop.complete`, bound to it once, and puts it on the ready queue.

The one way fibers talk to the loop: `fiber.suspend()` after registering what should wake them
(an op with `loop.submit`, a timer with `loop.arm_timer`, a place in a waiters list), and
`loop.reschedule()` from whoever wakes them. Everything in `calls.py` and `sync.py` is a few lines
on top of that. fiber.py and calls.py use only the loop's public members (docs/SEAMS.md lists
them); the one piece of loop state they write is the budget (a call that completed at once
spends one).

A pass reads as three phases: poll the backend (not blocking when fibers are ready, else until
the next deadline), fire expired timers, then run the fibers that were ready when the phase
began (ones woken during it wait for the next pass, so a busy fiber cannot starve I/O).

The shortcut, in one place (`poll_inline`): when a fiber would switch to the loop only for the
loop to poll and switch straight back (nobody else is ready), it runs phase 1 on its own
greenlet, and goes on as a new turn if that woke nobody but itself and no timer is due; else it
switches to the loop as usual. That saves two switches and a pass, about a microsecond, for a
fiber that waits (`fiber.suspend`), one whose turn budget ran out (`fiber.end_turn`), and a
`recv_into` that would block: on epoll and kqueue, which report edges on every registered fd
(`Backend.edge_hints`), it waits for its fd's edge with no op parked and calls recv itself,
skipping the ~2 µs of Python of the op path (park, perform, call back, queue, dequeue).
Every turn, resumed by the loop or going on after such a poll, begins in `begin_turn`.

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
from ._common import (READ, RECV, SEND, WRITE, ClosedError, FdState, LoomError, LoomInternalError,
                      Op)
from .backend import make_backend
from .fdtable import FdTable
from .fiber import DONE, NEW, READY, RUNNING, WAITING, Fiber
from .threads import ThreadPool
from .timers import TimerQueue
from .watchdog import WATCHDOG_S, Watchdog

log = logging.getLogger("observer.loom")

FIBERS_MAX = 100_000          # live fibers per loop; spawning past it is an error
SPIN_S_MAX = 0.001            # spin-before-sleep above a millisecond only burns the core
IMMEDIATE_RUN_MAX = 64        # calls completing at once before a fiber yields its turn


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
        return self._loop.cancel_timer(self._entry)


class Loop(FdTable):
    def __init__(self, backend: str | None = None, *, clock=time.monotonic,
                 watchdog_s: float | None = WATCHDOG_S, spin_s: float = 0.0,
                 threads_max: int = 4, fibers_max: int = FIBERS_MAX):
        if spin_s:
            _check_spin(spin_s)
        self._backend = make_backend(backend)
        super().__init__(self._backend)            # the fd table (fdtable.py)
        self.backend_name = self._backend.name
        self._edge_waits = self._backend.edge_hints
        self._clock = clock
        self._spin_s = spin_s
        self._timers = TimerQueue()
        self._ready: collections.deque[Fiber] = collections.deque()
        self._fibers: set[Fiber] = set()
        self._fibers_max = fibers_max
        self._spawned = 0
        self._running = False
        self._stopping = False
        self._closed = False
        self._inline_ok = False      # a fiber may run phase 1 on its own greenlet
        self._main: Fiber | None = None
        self._internal_error: LoomInternalError | None = None
        self._immediate = 0          # try-first completions of the turns before this one
        # The fiber interface (see the module notes): fiber.py and calls.py use these.
        self.greenlet = greenlet.getcurrent()      # what a fiber switches to
        self.current: Fiber | None = None          # the running fiber (None: the loop, a poll)
        self.switches = 0                          # turns begun (the watchdog reads it)
        self.budget = IMMEDIATE_RUN_MAX            # calls left to complete at once this turn
        self.runners = fibers.RunnerPool(self)
        self.threads = ThreadPool(self, threads_max)
        self.abandon_op = self._backend.cancel     # bound once: no allocation per I/O wait
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

    def complete(self, fiber: Fiber, result) -> None:
        """The callback of a fiber's I/O op (bound to the fiber once): wake it with the result,
        raised at its wait point when it is an exception. `reschedule`, inlined: every I/O wait
        ends here."""
        if fiber.state != WAITING:
            raise LoomInternalError(f"completion for {fiber!r}, which is not waiting")
        fiber.state = READY
        if type(result) is int or not isinstance(result, BaseException):
            fiber.value = result
        else:
            fiber.throw = result
        self._ready.append(fiber)

    def requeue(self, fiber: Fiber) -> None:
        """The running fiber yields: it goes to the back of the ready queue."""
        fiber.state = READY
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

    def fiber_finished(self, fiber: Fiber, result, error: BaseException | None) -> None:
        """A fiber's function returned or raised (on its runner, at the end of its last turn)."""
        fiber.state = DONE
        fiber.result = result
        fiber.error = error
        fiber.deferred = None
        # A finished fiber keeps nothing of its I/O. Its Op's callback is the fiber's own bound
        # `on_op_done`, so fiber -> op -> callback -> fiber is a cycle that only the cyclic GC
        # would free (with the op's fd state and socket), and a steady shard may not run it for
        # hours: every finished snapshot fiber would stay.
        fiber.op = fiber.on_op_done = fiber.abandon_fn = fiber.abandon_arg = None
        fiber.fn = fiber.args = None         # nor its closure (a connection's buffers, say)
        self._fibers.discard(fiber)
        if fiber is self._main:
            self._inline_ok = False          # run() returns now; nobody may block in a poll
        if error is not None and not isinstance(error, fibers.Cancelled):
            log.error("fiber_failed", {"fiber": fiber.name}, exc_info=error)
        joiners, fiber.joiners = fiber.joiners, None
        for joiner in joiners or ():
            if joiner.state == WAITING:
                self.reschedule(joiner, None)

    # -- running ---------------------------------------------------------------------------

    def run(self, main=None, *args):
        """Run until `main(*args)` returns (its result, or its error re-raised), or until no
        fiber, timer or operation is left, or until `stop()`."""
        if self._running:
            raise LoomError("loop.run called while the loop runs")
        if self._closed:
            raise LoomError("run on a closed loop")
        if greenlet.getcurrent() is not self.greenlet:
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
            log.critical("loop_internal_error", {"action": "closing the loop"}, exc_info=True)
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
        if ready:
            timeout_s = 0.0
        else:
            timeout_s = self._until_deadline_s()
            if timeout_s is None and not backend.pending:
                if not backend.has_runnable():
                    self._deadlocked()
                timeout_s = 0.0
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
            self.current = None                       # back on the loop greenlet
            if self._internal_error is not None:      # met by a fiber's own poll
                error, self._internal_error = self._internal_error, None
                raise error

    def _until_deadline_s(self) -> float | None:
        """How long phase 1 may block: until the next timer (0 if one is due), None if none."""
        timers = self._timers
        if timers.live:
            return max(0.0, timers.next_deadline_s() - self._clock())
        return None

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

    # -- turns: the one place a fiber's turn begins, and phase 1 on a fiber's greenlet ------

    def begin_turn(self, fiber: Fiber) -> None:
        """`fiber` runs now: resumed by the loop (fiber.resume), or going on after its own
        poll (poll_inline). The turn's budget restarts; the turn counter moves (the watchdog
        tells a stall from progress by it)."""
        fiber.state = RUNNING
        self.current = fiber
        self.switches += 1
        self._immediate += IMMEDIATE_RUN_MAX - self.budget
        self.budget = IMMEDIATE_RUN_MAX

    def poll_inline(self, fiber: Fiber, block: bool, edge: FdState | None = None) -> bool:
        """Run phase 1 on `fiber`'s own greenlet instead of switching to the loop. True: it
        goes on as a new turn. False: it must switch to the loop (suspend, yield) or, for an
        edge wait, park an op and suspend. See the module notes for the three callers:
        `fiber.suspend` (`fiber` WAITING, `block`), `fiber.end_turn` (RUNNING, not `block`) and
        `calls.recv_into` waiting for an IN edge on `edge` (RUNNING, `block`).

        Discussion: it polls only when nobody is ready, no timer is due, no cancel is pending,
        and the loop is running and not stopping (`_inline_ok`, so run() returns promptly
        once main is done). A waiting fiber with nothing that could wake it (no op, no timer)
        goes to the loop, which reports the deadlock. After the poll it goes on only if the
        poll woke nobody else (a waiting fiber: woke it alone) and no timer fell due. While it
        polls it is not current: the watchdog must not count a blocked poll, and a completion
        callback run here must not act as that fiber (calls._running_fiber). A loop bug raised
        by the poll is kept for the loop to raise (_run_once) and ends the inlining.
        """
        if edge is not None and (not self._edge_waits or edge.reader is not None
                                 or edge.sock.fileno() < 0):   # closed behind loom's back:
            return False                                      # the op path raises EBADF
        running = fiber.state == RUNNING
        backend = self._backend
        timers = self._timers
        ready = self._ready
        while True:
            if not self._inline_ok or ready or fiber.deferred is not None:
                return False
            if timers.live:
                timeout_s = timers.next_deadline_s() - self._clock()
                if timeout_s <= 0.0:
                    return False                      # the loop fires due timers first
                if not block:
                    timeout_s = 0.0
            elif not block:
                timeout_s = 0.0
            elif not running and not backend.pending:
                return False                          # nothing can wake it: the loop says so
            else:
                timeout_s = None                      # an op or (edge wait) the fd wakes it
            if block or backend.pending:              # else no poll can wake anyone
                self.current = None
                try:
                    backend.poll(timeout_s)
                except LoomInternalError as exc:
                    self._internal_error = exc
                    self._inline_ok = False
                if running:
                    self.current = fiber
                if edge is not None and not edge.registered:
                    raise ClosedError(f"fd {edge.fd}")
                if not self._inline_ok:
                    return False
                if timers.live and timers.next_deadline_s() <= self._clock():
                    return False                      # the loop fires due timers first
                if running:
                    if ready or fiber.deferred is not None:
                        return False                  # it woke someone: their turn
                elif len(ready) == 1 and ready[0] is fiber:
                    ready.popleft()                   # it woke the waiter alone
                else:
                    return False
            self.begin_turn(fiber)
            if edge is None or edge.in_hint:
                return True

    # -- timers and ops (fds: state_for and forget, from FdTable) ----------------------------

    def arm_timer(self, delay_s: float, callback, arg=None) -> list:
        """`callback(arg)` in `delay_s` seconds, from phase 2; returns the entry to cancel."""
        return self._timers.arm(self._clock() + delay_s, callback, arg)

    def cancel_timer(self, entry: list) -> bool:
        return self._timers.cancel(entry)

    def submit(self, op: Op) -> None:
        """Start an op whose kind, fd state and buffer are set; its callback runs later."""
        self._backend.submit(op)

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
        return TimerHandle(self, self.arm_timer(delay_s, _call_with_args, (callback, args)))

    # -- introspection and shutdown --------------------------------------------------------

    def stats(self) -> LoopStats:
        b = self._backend.statistics()
        return LoopStats(
            backend=self.backend_name, switches=self.switches,
            ops_immediate=self._immediate + IMMEDIATE_RUN_MAX - self.budget,
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
        self.runners.close()
        self.threads.close()
        self._backend.close()
        self._fd_clear()

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
        log.exception("callback_failed", {"callback": repr(callback)})


def _check_spin(spin_s: float) -> None:
    if not 0 < spin_s <= SPIN_S_MAX:
        raise ValueError(f"spin_s={spin_s} outside (0, {SPIN_S_MAX}]")
    if len(os.sched_getaffinity(0)) != 1:
        raise ValueError("spin-before-sleep needs the loop pinned to its own core "
                         "(loom.pin([core]) first): spinning on a shared core slows both sides")
