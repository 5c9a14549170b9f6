"""A symbol the exchange does not list, end to end, for each exchange against obsim.

obsim refuses an unknown symbol the way each exchange does (Binance: REST depth HTTP 400
`{"code":-1121,"msg":"Invalid symbol."}`; Kraken, Coinbase, OKX, Bybit: a refused subscribe
with their own words). The observer is configured with every served symbol plus one misspelled
one per exchange, and must: publish that book invalid with the exchange's reason, log it once
as `symbol_refused` (JSON log lines, each with an event name), show it in `obctl list` and fail
`obctl snapshot` on it with one clear line, and keep the connection's other books live.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import obclient
from e2ekit import wait
from obsim.harness import Obsim
from obsim.simconfig import write_config
from kit.procs import ObserverProcess, unique_name
from obproto import symbols as symbol_names

# exchange -> (misspelled native symbol, the exchange's reason as obsim gives it)
REFUSED = {
    "binance": ("FOOUSDT", "Invalid symbol."),
    "binance-futures": ("FOOUSDT", "Invalid symbol."),
    "coinbase": ("FOO-USD", "FOO-USD is not a valid product"),
    "kraken": ("FOO/USD", "Currency pair not supported FOO/USD"),
    "okx": ("FOO-USDT", "channel:books,instId:FOO-USDT doesn't exist"),
    "bybit": ("FOOUSDT", "Invalid symbol :[orderbook.50.FOOUSDT]"),
}
SIM_ARGS = ["--exchanges", ",".join(REFUSED), "--rate", "40", "--depth", "60", "--seed", "5",
            "--coinbase-depth", "200"]
LIVE_PUBLISHES = 20          # records the good books publish after the refusal, before the checks
EXIT_INVALID = 4
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*")

pytestmark = pytest.mark.timeout(300)   # the first test starts obsim and an observer on six feeds


@pytest.fixture(scope="module")
def sim():
    with Obsim(SIM_ARGS) as sim:
        yield sim


@pytest.fixture(scope="module")
def obs(sim):
    obs = ObserverProcess(None, name=unique_name("refused"), extra_args=["--log-format", "json"])
    try:
        feeds = [(exchange, [*sim.info["exchanges"][exchange]["symbols"], bad])
                 for exchange, (bad, _) in REFUSED.items()]
        config_path = os.path.join(obs.workdir, "observer.toml")
        write_config(config_path, sim.info, feeds, name=obs.name, depth=10)
        obs.args += ["--config", config_path]
        obs.start()
        obs.wait_ready(90, books_live=False).close()
        yield obs
        assert obs.stop() == 0, obs.log_text()
    finally:
        obs.close()


@pytest.fixture(scope="module")
def client(obs):
    with obclient.connect(obs.socket_path, client_name="refused") as client:
        yield client


def log_events(obs) -> list[dict]:
    """Every line of the observer's log, parsed: each must be JSON with an event name."""
    events = []
    for line in obs.log_text().splitlines():
        event = json.loads(line)
        assert EVENT_NAME.fullmatch(event["event"]), line
        events.append(event)
    return events


def obctl(obs, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OBSERVER_SOCKET=obs.socket_path)
    return subprocess.run([sys.executable, "-m", "obclient.obctl", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def book_name(exchange: str, native: str) -> str:
    return f"{exchange}:{symbol_names.normalise(native)}"


@pytest.mark.parametrize("exchange", list(REFUSED))
def test_unknown_symbol_is_refused_once_and_shown(sim, obs, client, exchange):
    bad, reason = REFUSED[exchange]
    bad_name = book_name(exchange, bad)
    good = [book_name(exchange, n) for n in sim.info["exchanges"][exchange]["symbols"]]

    wait(lambda: client.snapshot(bad_name, 0).invalid, f"{bad_name} published invalid")
    snap = client.snapshot(bad_name, 10)
    assert snap.stale and snap.note == reason and snap.n_bids == snap.n_asks == 0
    wait(lambda: all(not client.snapshot(n, 0).stale for n in good), f"{exchange}: good books live")

    # The others keep publishing; meanwhile the refused book is never asked for again.
    seqs = {n: client.snapshot(n, 0).seq for n in good}
    wait(lambda: all(client.snapshot(n, 0).seq >= seqs[n] + LIVE_PUBLISHES for n in good),
         f"{exchange}: {LIVE_PUBLISHES} more publishes of every good book")
    refused = [e for e in log_events(obs) if e["event"] == "symbol_refused" and e["book"] == bad_name]
    assert len(refused) == 1, refused
    assert refused[0]["level"] == "error" and refused[0]["reason"] == reason
    assert refused[0]["native"] == bad
    stats = {row["book"]: row for row in client.stats().books}
    assert stats[bad_name]["invalid"] == reason and stats[bad_name]["stale_marks"] == 1
    assert all("invalid" not in stats[n] and not client.snapshot(n, 0).invalid for n in good)
    # (No reconnect or request because of the refusal: tests/feeds/test_feed_refused.py checks
    # that over an hour of ticks; here a loaded machine may reconnect for its own reasons.)

    shown = obctl(obs, "snapshot", bad_name)
    assert shown.returncode == EXIT_INVALID, shown
    assert shown.stderr == f"{bad_name}: invalid symbol ({reason})\n" and shown.stdout == ""
    listed = obctl(obs, "list")
    assert listed.returncode == 0, listed
    row = next(line for line in listed.stdout.splitlines() if line.startswith(bad_name + " "))
    assert row.endswith(f"invalid symbol ({reason})")
    rows = json.loads(obctl(obs, "list", "--json").stdout)
    assert next(r for r in rows if r["book"] == bad_name)["invalid"] == reason
