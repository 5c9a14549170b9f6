"""Fixtures for the loom suite: one loop per test on every backend this machine runs.

Sockets and fds a test makes go through `closing`, so each test leaves nothing open, and unix
socket paths live in a temp dir named after the pid and a random token.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile

import pytest

from observer import loom
from observer.loom.backend import unavailable_reason

BACKENDS = ["io_uring", "epoll", "kqueue"]
AVAILABLE = loom.available_backends()


def _param(name):
    """A backend this machine cannot run is skipped with an unconditional `skip` mark (decided
    here, at collection), not `skipif`: pytest's `-ra` summary folds mark skips of one reason
    into one line per module, where each `skipif` would be a line per test (54 for kqueue on
    Linux, burying the end of `make test`)."""
    if name in AVAILABLE:
        return pytest.param(name)
    reason = f"the {name} backend cannot run on this machine: {unavailable_reason(name)}"
    return pytest.param(name, marks=pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Fold those skips per module also for tests with marks of their own (parametrize,
    timeout): pytest keeps their line apart only because their function carries `pytestmark`."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and report.when == "setup" and item.get_closest_marker("skip"):
        report.keywords = {k: v for k, v in report.keywords.items() if k != "pytestmark"}


@pytest.fixture(params=[_param(name) for name in BACKENDS])
def backend(request):
    return request.param


@pytest.fixture
def loop(backend):
    loop = loom.Loop(backend)
    assert loop.backend_name == backend
    yield loop
    loop.close()


@pytest.fixture
def closing():
    """Register sockets/fds to close at the end of the test: `closing(sock)` returns it."""
    things = []

    def add(*objs):
        things.extend(objs)
        return objs[0] if len(objs) == 1 else objs

    yield add
    for obj in things:
        try:
            if isinstance(obj, int):
                os.close(obj)
            else:
                obj.close()
        except OSError:
            pass


@pytest.fixture
def sockdir():
    path = tempfile.mkdtemp(prefix=f"loom-{os.getpid()}-{secrets.token_hex(4)}-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tcp_pair(closing):
    """A connected TCP loopback pair (blocking sockets; loom makes them non-blocking)."""
    listener = closing(socket.create_server(("127.0.0.1", 0)))
    client = closing(socket.create_connection(listener.getsockname()))
    server, _ = listener.accept()
    closing(server)
    return client, server
