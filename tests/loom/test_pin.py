"""Pinning runs in a child process so that the test runner keeps its own affinity."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from observer import loom

CHILD_TIMEOUT_S = 60     # a child importing observer on a busy host: a bound, not a measure
# Above the child's own bound: at 30 s the test was killed while a slow child was still in
# its imports, before its own 60 s bound could say anything.
pytestmark = pytest.mark.timeout(2 * CHILD_TIMEOUT_S)

CHILD = """
import os, sys
from observer import loom
core = int(sys.argv[1])
assert loom.pin([core]) == [core]
assert os.sched_getaffinity(0) == {core}
loop = loom.Loop(spin_s=0.0001)
loop.run(loom.sleep, 0.001)
loop.close()
print("pinned", core)
"""


def test_pin_to_an_allowed_core_in_a_child():
    core = loom.allowed_cores()[-1]
    out = subprocess.run([sys.executable, "-c", CHILD, str(core)], capture_output=True,
                         text=True, timeout=CHILD_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"pinned {core}"


def test_pin_to_a_missing_core_names_the_allowed_ones():
    missing = max(loom.allowed_cores()) + 1000
    with pytest.raises(ValueError) as info:
        loom.pin([missing])
    message = str(info.value)
    assert str(missing) in message
    assert str(loom.allowed_cores()) in message


def test_spin_needs_a_pinned_loop():
    if len(os.sched_getaffinity(0)) == 1:
        pytest.skip("this process is already confined to one core")
    with pytest.raises(ValueError, match="pinned"):
        loom.Loop(spin_s=0.0001)
