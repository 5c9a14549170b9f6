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
    assert any("blocks_the_loop_deliberately" in r.getMessage() for r in caplog.records)


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
