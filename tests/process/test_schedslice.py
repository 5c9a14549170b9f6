"""The shard's scheduler slice (observer/shard/schedslice.py): asked of the real kernel, in a child
process so the test runner keeps its own."""

from __future__ import annotations

import os
import platform

import pytest

from observer.shard import schedslice

def _kernel() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(platform.machine() != "x86_64",
                                 reason="sched_setattr syscall numbers are x86-64's"),
              pytest.mark.skipif(_kernel() < (6, 12),
                                 reason="custom EEVDF slices came with Linux 6.12")]


def _in_child(fn) -> int:
    """Run fn() in a forked child; its return value (a small int) is the exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_request_slice_sets_the_calling_threads_slice_and_keeps_its_nice():
    def child() -> int:
        os.nice(3)
        if not schedslice.request_slice(250_000):
            return 1
        attr = schedslice.get_attr()
        if attr.sched_runtime != 250_000:
            return 2
        return 0 if os.nice(0) >= 3 else 3
    assert _in_child(child) == 0


def test_a_thread_not_sched_other_is_left_alone():
    def child() -> int:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        before = schedslice.get_attr().sched_runtime
        if schedslice.request_slice(250_000):
            return 1
        return 0 if schedslice.get_attr().sched_runtime == before else 2
    assert _in_child(child) == 0
