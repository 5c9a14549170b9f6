"""The watchdog: a fiber must never block the loop, and when one does we say which.

A daemon thread samples the loop every `bound_s / 4`: the running fiber and the loop's switch
counter. If the same fiber is still running at the same switch count for `bound_s` or longer,
it has run that long without yielding: the watchdog logs one line, `fiber_stalled` (fiber,
ran_ms, bound_ms), and, only when debug logging is on, `fiber_stalled_stack` with its stack
(taken from `sys._current_frames()` for the loop's thread, which is the fiber's frame while it
runs) as a field; the stack is also kept in the report (`loop.watchdog_reports()`). One report
per stall. The loop pays nothing per switch beyond the counter it
keeps for stats anyway; the thread only exists while `run()` does.

Discussion: on a shared machine a whole process can be descheduled for tens of milliseconds.
Wall time alone would then blame whatever fiber happened to be running. So a stall needs, beyond
the wall-clock bound, evidence that the loop thread itself spent it: either it burnt at least half
the bound in CPU time (a fiber computing too long), or it sits in the kernel asleep (a fiber in a
blocking call such as `time.sleep` or a blocking `recv`). A thread that was runnable but not
running (state `R` with little CPU) is the machine's doing, not the fiber's. Where the thread's CPU
clock or its /proc state cannot be read, the watchdog falls back to wall time alone.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass

log = logging.getLogger("observer.loom")

WATCHDOG_S = 0.050          # default bound: a fiber running 50 ms without yielding is a bug
REPORTS_KEPT_MAX = 16       # recent reports kept for loop.watchdog_reports()
CPU_SHARE_MIN = 0.5         # of the bound, in loop-thread CPU time, to blame a computing fiber


def is_stall(ran_s: float, cpu_s: float | None, state: str | None, bound_s: float) -> bool:
    """Whether a fiber seen running `ran_s` (wall) without yielding has blocked the loop.

    `cpu_s`: CPU time the loop thread spent meanwhile (None: unknown); `state`: the loop thread's
    scheduler state letter from /proc (None: unknown). See the module's Discussion."""
    if ran_s < bound_s:
        return False
    if cpu_s is None or state is None:
        return True
    return cpu_s >= bound_s * CPU_SHARE_MIN or state in ("S", "D")


@dataclass(frozen=True)
class WatchdogReport:
    fiber_name: str
    ran_s: float            # at least this long without yielding when seen
    stack: str


class Watchdog:
    def __init__(self, loop, bound_s: float = WATCHDOG_S):
        assert bound_s > 0
        self._loop = loop
        self.bound_s = bound_s
        self.reports: collections.deque[WatchdogReport] = collections.deque(
            maxlen=REPORTS_KEPT_MAX)
        self.reports_total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_thread_id = 0

    def start(self) -> None:
        self._loop_thread_id = threading.get_ident()
        self._cpu_clock = _thread_cpu_clock(self._loop_thread_id)
        self._stat_path = f"/proc/self/task/{threading.get_native_id()}/stat"
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name="loom-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _main(self) -> None:
        interval_s = max(0.001, self.bound_s / 4)
        seen_switches = -1
        seen_since = 0.0
        seen_cpu_s = 0.0
        reported_switches = -1
        while not self._stop.wait(interval_s):
            fiber = self._loop.current
            switches = self._loop.switches
            now = time.monotonic()
            if fiber is None:
                seen_switches = -1
                continue
            if switches != seen_switches:
                seen_switches = switches
                seen_since = now
                seen_cpu_s = self._loop_cpu_s() or 0.0
                continue
            ran_s = now - seen_since + interval_s      # it was running before we first saw it
            if switches == reported_switches or ran_s < self.bound_s:
                continue
            cpu_now_s = self._loop_cpu_s()
            cpu_s = None if cpu_now_s is None else cpu_now_s - seen_cpu_s + interval_s
            if is_stall(ran_s, cpu_s, self._loop_state(), self.bound_s):
                reported_switches = switches
                self._report(fiber, ran_s)

    def _loop_cpu_s(self) -> float | None:
        if self._cpu_clock is None:
            return None
        try:
            return time.clock_gettime(self._cpu_clock)
        except OSError:
            return None

    def _loop_state(self) -> str | None:
        """The loop thread's scheduler state letter (R, S, D, ...), None where unreadable."""
        try:
            with open(self._stat_path, "rb") as stat:
                text = stat.read()
        except OSError:
            return None
        # The command name in parentheses may hold spaces; the state follows the last ')'.
        return text[text.rfind(b")") + 2:][:1].decode() or None

    _cpu_clock: int | None = None
    _stat_path = ""

    def _report(self, fiber, ran_s: float) -> None:
        frame = sys._current_frames().get(self._loop_thread_id)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
        self.reports.append(WatchdogReport(fiber.name, ran_s, stack))
        self.reports_total += 1
        # loom stands alone: plain logging, the event name as message and a dict of fields
        # (observer/telemetry/logs.py renders them as fields).
        log.warning("fiber_stalled", {"fiber": fiber.name, "ran_ms": round(ran_s * 1e3),
                                      "bound_ms": round(self.bound_s * 1e3)})
        if log.isEnabledFor(logging.DEBUG):
            log.debug("fiber_stalled_stack", {"fiber": fiber.name, "stack": stack})


def _thread_cpu_clock(thread_id: int) -> int | None:
    """The CPU-time clock of a thread of this process, None where the platform has none."""
    try:
        return time.pthread_getcpuclockid(thread_id)
    except (AttributeError, OSError):
        return None
