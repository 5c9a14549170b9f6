"""The watchdog names a fiber that blocks the loop, with its stack."""

from __future__ import annotations

import pytest

import logging
import time

from observer import loom

pytestmark = pytest.mark.timeout(30)


def blocks_the_loop_deliberately():
    time.sleep(0.25)                          # a blocking call: exactly what must be caught


def test_watchdog_reports_blocking_fiber_with_name_and_stack(backend, caplog):
    loop = loom.Loop(backend, watchdog_s=0.05)
    try:
        with caplog.at_level(logging.WARNING, logger="observer.loom"):
            loop.run(blocks_the_loop_deliberately)
    finally:
        loop.close()
    reports = loop.watchdog_reports()
    assert len(reports) == 1
    report = reports[0]
    assert report.fiber_name == "blocks_the_loop_deliberately"
    assert "blocks_the_loop_deliberately" in report.stack
    assert "time.sleep(0.25)" in report.stack
    assert report.ran_s >= 0.05
    assert loop.stats().watchdog_reports == 1
    # One line, with the event name, the fiber and the times as fields; the stack only at debug.
    assert [(r.getMessage(), r.args["fiber"]) for r in caplog.records] == [
        ("fiber_stalled", "blocks_the_loop_deliberately")]
    assert caplog.records[0].args["ran_ms"] >= 50 and caplog.records[0].args["bound_ms"] == 50


def test_watchdog_stack_is_logged_at_debug_only_as_a_field(backend):
    """With --log-format json the line's `event` is the event name, the stack a field of its
    own `fiber_stalled_stack` line, which only debug logging shows."""
    import io
    import json

    from observer.telemetry import logs

    lines = {}
    for level in ("info", "debug"):
        out = io.StringIO()
        logs.setup("json", level, stream=out)
        loop = loom.Loop(backend, watchdog_s=0.05)
        try:
            loop.run(blocks_the_loop_deliberately)
        finally:
            loop.close()
            logging.getLogger().handlers.clear()
        lines[level] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in lines["info"]] == ["fiber_stalled"]
    assert lines["info"][0]["fiber"] == "blocks_the_loop_deliberately"
    assert [e["event"] for e in lines["debug"]] == ["fiber_stalled", "fiber_stalled_stack"]
    assert "time.sleep(0.25)" in lines["debug"][1]["stack"]


def test_watchdog_quiet_for_yielding_fibers(backend):
    # A generous bound: on a busy machine a descheduled process must not look like a stall.
    loop = loom.Loop(backend, watchdog_s=0.5)

    def polite():
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            loom.sleep(0.001)

    try:
        loop.run(polite)
    finally:
        loop.close()
    assert loop.watchdog_reports() == []


def test_stall_rule_tells_a_descheduled_process_from_a_blocking_fiber():
    from observer.loom.watchdog import is_stall

    bound_s = 0.05
    assert not is_stall(0.04, 0.04, "R", bound_s)          # under the bound: never
    assert is_stall(0.08, 0.07, "R", bound_s)              # computing: CPU spent in the fiber
    assert is_stall(0.08, 0.001, "S", bound_s)             # asleep in a blocking call
    assert is_stall(0.08, 0.001, "D", bound_s)             # in uninterruptible I/O
    assert not is_stall(0.08, 0.001, "R", bound_s)         # runnable, not running: the machine
    assert is_stall(0.08, None, None, bound_s)             # no evidence available: wall time


COMPUTE_CPU_S = 0.3    # six times the bound, in CPU time of the loop's thread


def test_watchdog_reports_a_computing_fiber(backend):
    """The fiber computes until the loop thread has spent COMPUTE_CPU_S of CPU, not of wall
    time: on a loaded machine a wall-clock busy loop may get less CPU than the stall rule asks
    for (half the bound), and the watchdog rightly stays quiet about a descheduled process."""
    loop = loom.Loop(backend, watchdog_s=0.05)

    def computes_too_long():
        cpu_end_s = time.thread_time() + COMPUTE_CPU_S
        while time.thread_time() < cpu_end_s:
            pass

    try:
        loop.run(computes_too_long)
    finally:
        loop.close()
    reports = loop.watchdog_reports()
    assert len(reports) == 1
    assert reports[0].fiber_name.endswith("computes_too_long")
