"""Backend choice: the default, an explicit name, and io_uring refused by a seccomp filter."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from observer import loom
from observer.loom.backend import PROBE_ORDER
from observer.testing import NO_IO_URING_PRELUDE

pytestmark = pytest.mark.timeout(60)

# In a child: forbid io_uring_setup with a seccomp filter, as a container runtime's profile
# does, then ask for io_uring and for the default.
REFUSED_CHILD = NO_IO_URING_PRELUDE + r"""
import json, sys
keep_log("observer.loom", logging.WARNING)

from observer import loom
from observer.loom.backend import unavailable_reason
first = loom.Loop("io_uring")
second = loom.Loop("io_uring")
default = loom.Loop()
print(json.dumps({"first": first.backend_name, "second": second.backend_name,
                  "default": default.backend_name, "reason": unavailable_reason("io_uring"),
                  "log": records}))
for loop in (first, second, default):
    loop.close()
"""


def test_default_backend_is_the_first_that_sets_up():
    loop = loom.Loop()
    try:
        expected = next(name for name in PROBE_ORDER if name in loom.available_backends())
        assert loop.backend_name == expected
    finally:
        loop.close()


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(loom.LoomError, match="unknown loom backend 'iocp'"):
        loom.Loop("iocp")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter below is x86-64 only")
def test_refused_io_uring_falls_back_to_epoll_and_says_so_once():
    out = subprocess.run([sys.executable, "-c", REFUSED_CHILD], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["first"] == "epoll"
    assert result["second"] == "epoll"
    assert result["default"] == "epoll"
    assert "Operation not permitted" in result["reason"]
    refusals = [line for line in result["log"] if "io_uring refused" in line]
    assert len(refusals) == 1, result["log"]
