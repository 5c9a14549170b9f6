"""The watchdog: a fiber must never block the loop, and when one does we say which.

A daemon thread samples the loop every `bound_s / 4`: the running fiber and the loop's switch
counter. If the same fiber is still running at the same switch count for `bound_s` or longer,
it has run that long without yielding: the watchdog logs its name and its stack (taken from
`sys._current_frames()` for the loop's thread, which is the fiber's frame while it runs) and
counts the report. One report per stall. The loop pays nothing per switch beyond the counter it
keeps for stats anyway; the thread only exists while `run()` does.
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
        reported_switches = -1
        while not self._stop.wait(interval_s):
            fiber = self._loop._current
            switches = self._loop._switches
            now = time.monotonic()
            if fiber is None:
                seen_switches = -1
                continue
            if switches != seen_switches:
                seen_switches = switches
                seen_since = now
                continue
            ran_s = now - seen_since + interval_s      # it was running before we first saw it
            if switches != reported_switches and ran_s >= self.bound_s:
                reported_switches = switches
                self._report(fiber, ran_s)

    def _report(self, fiber, ran_s: float) -> None:
        frame = sys._current_frames().get(self._loop_thread_id)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
        self.reports.append(WatchdogReport(fiber.name, ran_s, stack))
        self.reports_total += 1
        log.warning("loom watchdog: fiber %r has run %.0f ms without yielding (bound %.0f ms):"
                    "\n%s", fiber.name, ran_s * 1e3, self.bound_s * 1e3, stack)
