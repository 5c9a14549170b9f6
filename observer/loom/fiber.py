"""Fibers: the only module that switches greenlets.

A `Fiber` is one spawned call (`fn(*args)`) with a name, a state and an outcome. It runs on a
pooled greenlet (a "runner"): creating a greenlet costs 8–10 µs here while handing work to a
parked one costs about 0.4 µs, so runners are kept after their fiber finishes, up to
`RUNNERS_POOLED_MAX`, and reused.

Two functions move control, and nothing else in loom calls `greenlet.switch`:
- `suspend(fiber, abandon_fn, abandon_arg)`: the fiber parks itself and switches to the loop
  (or, when nothing else is ready, runs the poll phase on its own greenlet: `_poll_inline`).
  It returns the value the waker passed, or raises the exception it passed. `abandon_fn(arg)`
  undoes the wait (unparks the op, cancels the timer, leaves the waiters list) when a cancel or
  timeout wakes the fiber instead of the thing it waited for.
- `resume(loop, fiber)`: the loop switches into a fiber taken from its ready queue.

Exactly one wake per wait: `Loop.reschedule` asserts the fiber is WAITING and moves it to READY,
so a second wake is a loop bug and fails loudly. A cancel or timeout that arrives while the
fiber is READY (already woken) is deferred and raised at its next wait point, so a value already
handed over (a queue item, a byte count) is never lost.
"""

from __future__ import annotations

import greenlet

from ._common import Cancelled, LoomError, LoomInternalError

NEW, READY, RUNNING, WAITING, DONE = range(5)
STATE_NAMES = ("new", "ready", "running", "waiting", "done")
RUNNERS_POOLED_MAX = 256       # idle runner greenlets kept for reuse
IMMEDIATE_RUN_MAX = 64         # calls completing at once before a fiber yields its turn


class Runner(greenlet.greenlet):
    """A pooled greenlet; `fiber` is the fiber it currently runs (None while pooled)."""

    # Slots, not a __dict__: `getcurrent().loop` starts every fast call (about 15 ns saved).
    __slots__ = ("fiber", "loop")

    def __init__(self, loop):
        super().__init__(run=_runner_main, parent=loop._loop_greenlet)
        self.fiber: Fiber | None = None
        self.loop = loop                 # the fast paths in calls.py start from here


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
        self.on_op_done = self._on_op_done   # bound once: I/O completions allocate nothing

    def __repr__(self) -> str:
        return f"<Fiber {self.name!r} {STATE_NAMES[self.state]}>"

    @property
    def done(self) -> bool:
        return self.state == DONE

    def _on_op_done(self, result) -> None:
        """Completion callback of this fiber's Op: make it ready with the result or the error.

        Discussion: `Loop.reschedule` inlined, since every I/O wait ends here.
        """
        if self.state != WAITING:
            raise LoomInternalError(f"completion for {self!r}, which is not waiting")
        self.state = READY
        if type(result) is int or not isinstance(result, BaseException):
            self.value = result
        else:
            self.throw = result
        self.loop._ready.append(self)

    def cancel(self) -> None:
        """Raise `Cancelled` at the fiber's current (or next) wait point."""
        self.loop.interrupt(self, Cancelled(f"fiber {self.name!r} cancelled"))

    def join(self, timeout: float | None = None):
        """Wait for the fiber to finish; return its result or re-raise its exception."""
        if self.state != DONE:
            from . import calls                      # calls imports fiber; import late
            calls.join_fiber(self, timeout)
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
    if not (loop._inline_ok and not loop._ready and _poll_inline(loop, fiber)):
        loop._loop_greenlet.switch()
    throw = fiber.throw
    if throw is not None:
        fiber.throw = None
        raise throw
    value = fiber.value
    fiber.value = None
    return value


def _poll_inline(loop, fiber: Fiber) -> bool:
    """Run the loop's poll phase on this fiber's own greenlet; True if it woke only us.

    Discussion: when the waiting fiber is the only thing that could run next (nothing is
    ready; only I/O or a timer can wake anyone), switching to the loop greenlet just to
    poll and switch straight back costs two switches and a pass of bookkeeping per wait,
    about a microsecond. So the fiber polls itself (until the next timer's deadline at most),
    and if the completion it gets is its own and nobody else's and no timer is due, it carries
    on as a new turn. Otherwise it switches to the loop, which expires timers and runs the
    woken fibers in order as usual. Not done while the loop is stopping or its main
    fiber has finished (`_inline_ok`), so run() still returns promptly. A loop bug raised
    during the poll is handed to the loop greenlet, which raises it from run().
    """
    timers = loop._timers
    if timers.live:
        timeout_s = max(0.0, timers.next_deadline_s() - loop._clock())
    elif loop._backend.pending:
        timeout_s = None
    else:
        return False                     # nothing can wake anyone: the loop says deadlock
    loop._current = None                 # the watchdog must not count a blocked poll
    try:
        loop._backend.poll(timeout_s)
    except LoomInternalError as exc:
        loop._internal_error = exc
        return False
    ready = loop._ready
    if len(ready) != 1 or ready[0] is not fiber:
        return False
    if timers.live and timers.next_deadline_s() <= loop._clock():
        return False                     # the loop fires due timers first
    ready.popleft()
    fiber.state = RUNNING
    loop._current = fiber
    loop._switches += 1
    loop._immediate += IMMEDIATE_RUN_MAX - loop._budget
    loop._budget = IMMEDIATE_RUN_MAX
    return True


def end_turn(fiber: Fiber) -> None:
    """The fairness budget ran out: give the others their turn, cheaply when there are none.

    Discussion: a fiber whose calls keep completing at once (a stream read faster than it
    arrives) ends its turn every `IMMEDIATE_RUN_MAX` calls. Switching to the loop for a pass
    that finds nobody else to run costs two switches and a poll, about 0.1 µs per call at 64.
    So when nothing else is ready and no timer is due, the fiber polls (timeout 0) on its own
    greenlet, only if an operation is pending at all, and carries on as a new turn if that
    woke nobody. Otherwise it yields as before; a pending cancel is raised there.
    """
    loop = fiber.loop
    if loop._ready or not loop._inline_ok or fiber.deferred is not None:
        yield_now(fiber)
        return
    timers = loop._timers
    if timers.live and timers.next_deadline_s() <= loop._clock():
        yield_now(fiber)                 # the loop fires due timers first
        return
    if loop._backend.pending:            # nothing pending: no poll can wake anyone
        try:
            loop._backend.poll(0.0)
        except LoomInternalError as exc:
            loop._internal_error = exc   # resume() raises it from the loop greenlet
            yield_now(fiber)
            return
        if loop._ready or fiber.deferred is not None:   # the poll woke someone: their turn
            yield_now(fiber)
            return
    loop._switches += 1                  # a turn boundary, as the watchdog counts them
    loop._immediate += IMMEDIATE_RUN_MAX - loop._budget
    loop._budget = IMMEDIATE_RUN_MAX


def yield_now(fiber: Fiber) -> None:
    """Go to the back of the ready queue (a wait point: a pending cancel is raised here)."""
    deferred = fiber.deferred
    if deferred is not None:
        fiber.deferred = None
        raise deferred
    loop = fiber.loop
    fiber.state = READY
    loop._ready.append(fiber)
    loop._loop_greenlet.switch()
    throw = fiber.throw
    if throw is not None:
        fiber.throw = None
        raise throw


def resume(loop, fiber: Fiber) -> None:
    """Run one ready fiber until it waits again or finishes (called on the loop greenlet)."""
    if loop._current is not None:       # a fiber runs: we are not on the loop greenlet
        raise LoomInternalError(f"resume of {fiber!r} called from fiber {loop._current!r}")
    if fiber.state == NEW:
        runner = loop._runners.pop() if loop._runners else Runner(loop)
        runner.fiber = fiber
        fiber.runner = runner
    elif fiber.state != READY:
        raise LoomInternalError(f"resume of {fiber!r}, which is not ready")
    fiber.state = RUNNING               # (abandon_fn is only read while WAITING)
    loop._current = fiber
    loop._switches += 1
    loop._budget = IMMEDIATE_RUN_MAX             # the fairness budget restarts per turn
    fiber.runner.switch()
    loop._immediate += IMMEDIATE_RUN_MAX - loop._budget
    loop._current = None
    if loop._internal_error is not None:       # raised during a fiber's inline poll
        error, loop._internal_error = loop._internal_error, None
        raise error


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
            loop._fiber_finished(fiber, None, fiber.deferred)   # cancelled before it started
        else:
            try:
                result = fiber.fn(*fiber.args)
            except greenlet.GreenletExit:
                raise
            except BaseException as exc:         # contained: stored, logged, re-raised by join
                loop._fiber_finished(fiber, None, exc)
            else:
                loop._fiber_finished(fiber, result, None)
        runner.fiber = None
        fiber.runner = None
        fiber = result = None                    # a parked runner keeps no fiber alive
        if len(loop._runners) >= RUNNERS_POOLED_MAX:
            return                               # the greenlet ends; control goes to the loop
        loop._runners.append(runner)
        loop._loop_greenlet.switch()             # parked until resume hands it a new fiber
