"""obsim end to end from the command line, and a clean stop that logs no warning.

`obsim --write-config PATH` writes the observer config for what it serves; `observer --config
PATH` runs it as is (the test adds only `--name` and `--socket`, unique to the run, and JSON
logs) and `obctl snapshot` shows a live book. SIGTERM and SIGINT then stop it cleanly: every
log line is JSON with an event name, none from the stop on is a warning or worse, and no
`book_stale` is logged for the books a clean stop closes on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib

import pytest

from e2ekit import wait
from obsim.harness import Obsim
from kit.procs import ObserverProcess, unique_name

pytestmark = pytest.mark.timeout(300)

QUIET_LEVELS = ("warning", "error", "critical")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    config_path = tmp_path_factory.mktemp("obsim-config") / "observer.toml"
    with Obsim(["--exchanges", "kraken,binance,bybit-linear", "--rate", "20",
                "--write-config", str(config_path)]) as sim:
        yield sim, config_path


def test_written_config_names_every_served_exchange(served):
    sim, config_path = served
    config = tomllib.loads(config_path.read_text())
    feeds = {(f["exchange"], f.get("category")): f for f in config["feed"]}
    assert set(feeds) == {("kraken", None), ("binance", None), ("bybit", "linear")}
    for (exchange, category), feed in feeds.items():
        served_as = sim.info["exchanges"]["bybit-linear" if category else exchange]
        assert feed["ws_url"] == served_as["ws_url"] and feed["ca_file"] == sim.info["ca_file"]
        assert feed["symbols"] == served_as["symbols"]
    assert feeds[("binance", None)]["rest_url"] == sim.info["exchanges"]["binance"]["rest_url"]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_observer_runs_the_written_config_and_stops_quietly(served, signum, code):
    sim, config_path = served
    obs = ObserverProcess(None, name=unique_name("simcfg"),
                          extra_args=["--config", str(config_path), "--log-format", "json"])
    try:
        obs.start()
        obs.wait_ready(120).close()
        env = dict(os.environ, OBSERVER_SOCKET=obs.socket_path)
        shown = subprocess.run([sys.executable, "-m", "obclient.obctl", "snapshot",
                                "kraken:BTCUSD", "--depth", "3"], env=env, capture_output=True,
                               text=True, timeout=60)
        assert shown.returncode == 0, shown
        assert shown.stdout.startswith("kraken:BTCUSD  update ") and "  live\n" in shown.stdout
        assert obs.stop(signum) == code, obs.log_text()
        events = [json.loads(line) for line in obs.log_text().splitlines()]
    finally:
        obs.close()
    assert all(e["event"].isidentifier() and e["event"].islower() for e in events), events
    names = [e["event"] for e in events]
    stopping = names.index("observer_stopping")
    assert [e for e in events[stopping:] if e["level"] in QUIET_LEVELS] == []
    assert "book_stale" not in names
