"""Backend choice: the default, an explicit name, and io_uring refused by a seccomp filter."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from observer import loom
from observer.loom.backend import PROBE_ORDER

pytestmark = pytest.mark.timeout(60)

# In a child: forbid io_uring_setup (syscall 425 on x86-64) with a seccomp filter, as a
# container runtime's profile does, then ask for io_uring and for the default.
REFUSED_CHILD = r"""
import ctypes, json, logging, sys
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("observer.loom").addHandler(Keep())
logging.getLogger("observer.loom").setLevel(logging.WARNING)

class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]
LD_ABS, JEQ, RET = 0x20, 0x15, 0x06
program = (Filter * 6)(
    Filter(LD_ABS, 0, 0, 4), Filter(JEQ, 0, 3, 0xC000003E),      # x86-64 only
    Filter(LD_ABS, 0, 0, 0), Filter(JEQ, 0, 1, 425),             # io_uring_setup
    Filter(RET, 0, 0, 0x00050000 | 1),                           # -> EPERM
    Filter(RET, 0, 0, 0x7FFF0000))                               # everything else: allow
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                           # PR_SET_NO_NEW_PRIVS
prog = Prog(6, program)
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0          # PR_SET_SECCOMP, FILTER

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
