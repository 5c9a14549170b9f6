"""Backend choice: the default probes and falls back (one log line); a backend asked for by name
is taken exactly or is a clear error, also from the command line."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from observer import loom
from observer.loom.backend import BACKENDS, PROBE_ORDER
from kit.procs import (SYS_EPOLL_CREATE, SYS_EPOLL_CREATE1, SYS_IO_URING_SETUP,
                              refusing_prelude, unique_name)

pytestmark = pytest.mark.timeout(60)
x86_64_only = pytest.mark.skipif(platform.machine() != "x86_64",
                                 reason="the seccomp filter is x86-64 only")

# In a child whose seccomp filter refuses a backend's setup syscall: ask for each of the names
# in NAMES (None: the default) twice, and report what each got and what loom logged.
CHILD = r"""
import json
keep_log("observer.loom", logging.WARNING)
from observer import loom
got = []
for name in NAMES + NAMES:
    try:
        loop = loom.Loop(name)
    except loom.BackendUnavailable as exc:
        got.append({"error": str(exc), "backend": exc.backend, "reason": exc.reason})
    else:
        got.append({"backend_name": loop.backend_name})
        loop.close()
print(json.dumps({"got": got, "log": records}))
"""


def _in_child(syscalls, names):
    source = refusing_prelude(*syscalls) + CHILD.replace("NAMES", repr(names))
    out = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["got"], result["log"]


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


@x86_64_only
def test_a_refused_backend_asked_for_by_name_is_a_clear_error_never_a_substitute():
    """io_uring refused (as by a container's seccomp profile): Loop("io_uring") raises
    BackendUnavailable naming it and why, every time; the default, epoll, needs no fallback
    and logs nothing."""
    got, log = _in_child([SYS_IO_URING_SETUP], ["io_uring", None])
    forced, default = got[0], got[1]
    assert forced["backend"] == "io_uring"
    assert "Operation not permitted" in forced["reason"]
    assert "'io_uring'" in forced["error"]
    assert got[2] == forced                           # the second ask fails the same way
    assert default == {"backend_name": "epoll"}
    assert log == []


@x86_64_only
@pytest.mark.skipif("io_uring" not in loom.available_backends(),
                    reason="io_uring cannot run here, so nothing is left to fall back to")
def test_the_default_falls_back_past_a_refused_backend_with_one_log_line():
    got, log = _in_child([SYS_EPOLL_CREATE, SYS_EPOLL_CREATE1], [None, "epoll"])
    assert got[0] == {"backend_name": "io_uring"}
    assert got[2] == {"backend_name": "io_uring"}
    assert got[1]["backend"] == "epoll"               # asked for by name: no fallback
    assert "Operation not permitted" in got[1]["reason"]
    assert len(log) == 1, log                         # once per process, not per loop
    assert "running on io_uring" in log[0]
    assert "epoll" in log[0]
    assert "Operation not permitted" in log[0]


def _cli_cases():
    cases = [pytest.param("io_uring", [SYS_IO_URING_SETUP], "Operation not permitted",
                          marks=x86_64_only)]
    missing = [name for name in BACKENDS if name not in loom.available_backends()]
    if missing:                                       # kqueue on Linux, epoll on BSD
        cases.append(pytest.param(missing[0], [], f"select.{missing[0]}"))
    return cases


@pytest.mark.parametrize(("backend", "syscalls", "reason"), _cli_cases())
def test_a_backend_that_cannot_run_is_a_one_line_error_from_the_command_line(
        backend, syscalls, reason, tmp_path):
    args = ["--feed", "synthetic:BTCUSD", "--name", unique_name(), "--backend", backend,
            "--socket", str(tmp_path / "observer.sock")]
    source = (refusing_prelude(*syscalls) +
              f"from observer import cli\nraise SystemExit(cli.main({args!r}))\n")
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert backend in done.stderr                     # names the backend
    assert reason in done.stderr                      # and says why
    assert list(tmp_path.iterdir()) == []             # nothing was created
