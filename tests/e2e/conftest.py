"""One obsim serving all six exchanges and one observer process running all six feeds in one
shard, shared by the tests of a module (starting them per test would cost most of the budget).
Each test faults only its own venue, so the others keep streaming around it."""

import os

import pytest

import obclient
from e2ekit import RingRecorder
from obsim.harness import Obsim
from obsim.simconfig import write_config
from kit.procs import ObserverProcess, unique_name

SIM_EXCHANGES = ("binance", "binance-futures", "coinbase", "kraken", "okx", "bybit")
SIM_ARGS = ["--exchanges", ",".join(SIM_EXCHANGES), "--rate", "40", "--depth", "60", "--seed", "11",
            "--okx-checksum", "legacy",           # the legacy CRC32 is verified when non-zero
            "--binance-rest-weight-max", "100000", "--binance-ban-s", "1"]
LAG_BOUND_MS = 300.0   # a 1.5 s stall must show as lagging; a busy box may also (harmless)
DEPTH = 10


@pytest.fixture(scope="module")
def sim():
    with Obsim(SIM_ARGS) as sim:
        yield sim


@pytest.fixture(scope="module")
def obs(sim):
    obs = ObserverProcess(None, name=unique_name("e2e"))
    try:
        config_path = os.path.join(obs.workdir, "observer.toml")
        write_config(config_path, sim.info, SIM_EXCHANGES, name=obs.name, depth=DEPTH,
                     lag_bound_ms=LAG_BOUND_MS)
        obs.args += ["--config", config_path]
        obs.start()
        obs.wait_ready(90).close()
        yield obs
        assert obs.stop() == 0, obs.log_text()
        assert not os.path.exists(obs.socket_path)
    finally:
        obs.close()


@pytest.fixture(scope="module")
def client(obs):
    with obclient.connect(obs.socket_path, client_name="e2e") as client:
        yield client


@pytest.fixture(scope="module")
def ring(obs):
    recorder = RingRecorder(obs.socket_path).start()
    yield recorder
    recorder.stop()
    assert recorder.error is None, recorder.error
