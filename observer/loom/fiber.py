"""Fibers: the only module that switches greenlets.

A `Fiber` is one spawned call (`fn(*args)`) with a name, a state and an outcome. It runs on a
pooled greenlet (a "runner"): creating a greenlet costs 8–10 µs here while handing work to a
parked one costs about 0.4 µs, so runners are kept after their fiber finishes, up to
`RUNNERS_POOLED_MAX`, and reused (`RunnerPool`, one per loop).

Two functions move control, and nothing else in loom calls `greenlet.switch`:
- `suspend(fiber, abandon_fn, abandon_arg)`: the fiber parks itself and switches to the loop
  (or, when nothing else is ready, runs the poll phase on its own greenlet: `Loop.poll_inline`).
  It returns the value the waker passed, or raises the exception it passed. `abandon_fn(arg)`
  undoes the wait (unparks the op, cancels the timer, leaves the waiters list) when a cancel or
  timeout wakes the fiber instead of the thing it waited for.
- `resume(loop, fiber)`: the loop switches into a fiber taken from its ready queue.
`yield_now` (to the back of the queue) and `end_turn` (the turn budget ran out) are the two
ways a running fiber gives up its turn without waiting for anything.

Waiting on another fiber (`join_fiber`, behind `Fiber.join`) and the `timeout` scope live here
too, not in calls.py: `Fiber.join` needs both, and calls.py imports this module, never the
other way round.

Exactly one wake per wait: `Loop.reschedule` asserts the fiber is WAITING and moves it to READY,
so a second wake is a loop bug and fails loudly. A cancel or timeout that arrives while the
fiber is READY (already woken) is deferred and raised at its next wait point, so a value already
handed over (a queue item, a byte count) is never lost.
"""

from __future__ import annotations

import functools

import greenlet

from ._common import Cancelled, LoomError, LoomInternalError

NEW, READY, RUNNING, WAITING, DONE = range(5)
STATE_NAMES = ("new", "ready", "running", "waiting", "done")
RUNNERS_POOLED_MAX = 256       # idle runner greenlets kept for reuse


class Runner(greenlet.greenlet):
    """A pooled greenlet; `fiber` is the fiber it currently runs (None while pooled)."""

    # Slots, not a __dict__: `getcurrent().loop` starts every fast call (about 15 ns saved).
    __slots__ = ("fiber", "loop")

    def __init__(self, loop):
        super().__init__(run=_runner_main, parent=loop.greenlet)
        self.fiber: Fiber | None = None
        self.loop = loop                 # the fast paths in calls.py start from here


class RunnerPool:
    """The idle runners of one loop."""

    __slots__ = ("_loop", "_idle")

    def __init__(self, loop):
        self._loop = loop
        self._idle: list[Runner] = []

    def take(self, fiber: Fiber) -> Runner:
        """A runner for a new fiber: a parked one, else a new greenlet."""
        runner = self._idle.pop() if self._idle else Runner(self._loop)
        runner.fiber = fiber
        fiber.runner = runner
        return runner

    def park(self, runner: Runner) -> bool:
        """Keep a runner whose fiber finished; False when the pool is full (it ends)."""
        if len(self._idle) >= RUNNERS_POOLED_MAX:
            return False
        self._idle.append(runner)
        return True

    def close(self) -> None:
        for runner in self._idle:
            kill_runner(runner)
        self._idle.clear()


class Fiber:
    __slots__ = ("loop", "fn", "args", "name", "state", "runner", "result", "error",
                 "value", "throw", "deferred", "abandon_fn", "abandon_arg", "joiners",
                 "op", "on_op_done", "__weakref__")

    def __init__(self, loop, fn, args, name: str | None):
        self.loop = loop
        self.fn = fn
        self.args = args
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        self.state = NEW
        self.runner: Runner | None = None
        self.result = None
        self.error: BaseException | None = None
        self.value = None          # what the next resume hands to the fiber
        self.throw = None          # or the exception it raises there
        self.deferred = None       # a cancel/timeout to raise at the next wait point
        self.abandon_fn = None
        self.abandon_arg = None
        self.joiners: list | None = None
        self.op = None             # the fiber's reusable Op, made on first I/O wait
        # The callback of that Op, made once: I/O completions allocate nothing.
        self.on_op_done = functools.partial(loop.complete, self)

    def __repr__(self) -> str:
        return f"<Fiber {self.name!r} {STATE_NAMES[self.state]}>"

    @property
    def done(self) -> bool:
        return self.state == DONE

    def cancel(self) -> None:
        """Raise `Cancelled` at the fiber's current (or next) wait point."""
        self.loop.interrupt(self, Cancelled(f"fiber {self.name!r} cancelled"))

    def join(self, timeout: float | None = None):
        """Wait for the fiber to finish; return its result or re-raise its exception."""
        if self.state != DONE:
            join_fiber(self, timeout)
        if self.error is not None:
            raise self.error
        return self.result


def current_fiber() -> Fiber:
    """The running fiber; a clear error when called from the loop or from plain code."""
    fiber = getattr(greenlet.getcurrent(), "fiber", None)
    if fiber is None:
        raise LoomError("this loom call must run inside a fiber (loop.spawn / loop.run)")
    return fiber


def suspend(fiber: Fiber, abandon_fn, abandon_arg):
    """Park the running fiber until the loop resumes it; return the value or raise."""
    deferred = fiber.deferred
    if deferred is not None:
        fiber.deferred = None
        if abandon_fn is not None:
            abandon_fn(abandon_arg)
        raise deferred
    fiber.state = WAITING
    fiber.abandon_fn = abandon_fn
    fiber.abandon_arg = abandon_arg
    loop = fiber.loop
    if not loop.poll_inline(fiber, True):
        loop.greenlet.switch()
    throw = fiber.throw
    if throw is not None:
        fiber.throw = None
        raise throw
    value = fiber.value
    fiber.value = None
    return value


def end_turn(fiber: Fiber) -> None:
    """The turn budget ran out: give the others their turn, cheaply when there are none.

    Discussion: a fiber whose calls keep completing at once (a stream read faster than it
    arrives) ends its turn every `loop.IMMEDIATE_RUN_MAX` calls. Switching to the loop for a
    pass that finds nobody else to run costs two switches and a poll, about 0.1 µs per call
    at 64. So it polls without blocking on its own greenlet (`Loop.poll_inline`) and goes on
    as a new turn if that woke nobody; otherwise it yields (a pending cancel is raised there).
    """
    if not fiber.loop.poll_inline(fiber, False):
        yield_now(fiber)


def yield_now(fiber: Fiber) -> None:
    """Go to the back of the ready queue (a wait point: a pending cancel is raised here)."""
    deferred = fiber.deferred
    if deferred is not None:
        fiber.deferred = None
        raise deferred
    loop = fiber.loop
    loop.requeue(fiber)
    loop.greenlet.switch()
    throw = fiber.throw
    if throw is not None:
        fiber.throw = None
        raise throw


def resume(loop, fiber: Fiber) -> None:
    """Run one ready fiber until it waits again or finishes (called on the loop greenlet)."""
    if loop.current is not None:        # a fiber runs: we are not on the loop greenlet
        raise LoomInternalError(f"resume of {fiber!r} called from fiber {loop.current!r}")
    if fiber.state == NEW:
        loop.runners.take(fiber)
    elif fiber.state != READY:
        raise LoomInternalError(f"resume of {fiber!r}, which is not ready")
    loop.begin_turn(fiber)
    fiber.runner.switch()               # back when it waits, yields or ends


def kill_runner(runner: Runner) -> None:
    """End a runner greenlet (pooled or mid-fiber) by raising GreenletExit in it."""
    if not runner.dead:
        runner.throw(greenlet.GreenletExit)


def _runner_main() -> None:
    runner = greenlet.getcurrent()
    while True:
        fiber = runner.fiber
        loop = fiber.loop
        if fiber.deferred is not None and isinstance(fiber.deferred, Cancelled):
            loop.fiber_finished(fiber, None, fiber.deferred)   # cancelled before it started
        else:
            try:
                result = fiber.fn(*fiber.args)
            except greenlet.GreenletExit:
                raise
            except BaseException as exc:         # contained: stored, logged, re-raised by join
                loop.fiber_finished(fiber, None, exc)
            else:
                loop.fiber_finished(fiber, result, None)
        runner.fiber = None
        fiber.runner = None
        fiber = result = None                    # a parked runner keeps no fiber alive
        if not loop.runners.park(runner):
            return                               # the greenlet ends; control goes to the loop
        loop.greenlet.switch()                   # parked until resume hands it a new fiber


def join_fiber(target, timeout_s: float | None) -> None:
    fiber = current_fiber()
    if target is fiber:
        raise LoomError(f"fiber {fiber.name!r} cannot join itself")
    if target.joiners is None:
        target.joiners = []
    target.joiners.append(fiber)
    with timeout(timeout_s):
        suspend(fiber, _leave_joiners, (target, fiber))


def _leave_joiners(target_fiber) -> None:
    target, fiber = target_fiber
    if target.joiners and fiber in target.joiners:
        target.joiners.remove(fiber)


class timeout:
    """`with loom.timeout(s):` raises TimeoutError at the fiber's wait point after `s` seconds.

    None means no limit. Nested scopes each fire on their own deadline; a scope that fired but
    whose error was never delivered (the fiber had already been woken) clears it on exit.
    """

    __slots__ = ("delay_s", "fiber", "entry", "error")

    def __init__(self, delay_s: float | None):
        self.delay_s = delay_s
        self.fiber = None
        self.entry = None
        self.error = None

    def __enter__(self):
        if self.delay_s is not None:
            fiber = self.fiber = current_fiber()
            self.entry = fiber.loop.arm_timer(self.delay_s, _fire_timeout, self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.entry is not None:
            self.fiber.loop.cancel_timer(self.entry)
            self.entry = None
        if self.error is not None and self.fiber.deferred is self.error:
            self.fiber.deferred = None
        return False

    @property
    def expired(self) -> bool:
        return self.error is not None


def _fire_timeout(scope: timeout) -> None:
    scope.entry = None
    scope.error = TimeoutError(f"timed out after {scope.delay_s} s")
    scope.fiber.loop.interrupt(scope.fiber, scope.error)
