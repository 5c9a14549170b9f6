"""C11, bytes waiting unread: an observer whose feed reader is held back (the process SIGSTOPped
while obsim sends a burst) reports the backlog of that connection as `unread_bytes` in its
stats (JSON, `obctl stats`, Prometheus) while it works through it, and 0 once caught up.

Real parts throughout: obsim over wss:// and https://, the observer as its own process, stats
over the control socket. Nothing is timed: each check is a wait for a condition, with a deadline.
"""

import os
import signal
import subprocess
import sys

import pytest

import obclient
from e2ekit import wait
from obsim.harness import Obsim
from obsim.simconfig import write_config
from kit.procs import ObserverProcess, unique_name

SYMBOL = "BTCUSDT"
BOOK = f"binance:{SYMBOL}"
SIM_ARGS = ["--exchanges", "binance", "--symbol", f"binance={SYMBOL}", "--rate", "20",
            "--depth", "200", "--changes-per-event", "10", "--seed", "5",
            "--binance-rest-weight-max", "100000"]
BURST_EVENTS = 20_000    # several MB of depth updates: more than one loop turn can parse
DEADLINE_S = 60.0


def book_row(client):
    return next(row for row in client.stats().books if row["book"] == BOOK)


@pytest.mark.timeout(150)
def test_unread_bytes_shows_a_held_back_reader_and_clears_when_caught_up():
    with Obsim(SIM_ARGS) as sim:
        obs = ObserverProcess(None, name=unique_name("unread"))
        try:
            config_path = os.path.join(obs.workdir, "observer.toml")
            write_config(config_path, sim.info, [("binance", [SYMBOL])], name=obs.name,
                         depth=10, lag_bound_ms=1000)
            obs.args += ["--config", config_path, "--log-level", "warning"]
            obs.start()
            with obs.wait_ready(90) as client:
                # Caught up: nothing waits on the connection (a sample may catch one frame in
                # flight, so this waits for the 0 rather than asserting the first reading).
                wait(lambda: book_row(client)["unread_bytes"] == 0, "a caught-up feed shows 0",
                     DEADLINE_S)
                seen = held_back_burst(sim, obs, client)
                assert seen > 0, "no sample saw the backlog"
                wait(lambda: book_row(client)["unread_bytes"] == 0 and
                     not client.book(BOOK).snapshot(0).stale, "unread back to 0 after the burst",
                     DEADLINE_S)
                check_obctl_shows_it(obs)
            assert obs.stop() == 0, obs.log_text()
        finally:
            obs.close()


def held_back_burst(sim, obs, client) -> int:
    """Freeze the observer, have obsim send a burst into its socket, thaw it, and return the
    largest `unread_bytes` a stats reply showed while it worked through the burst."""
    os.kill(obs.proc.pid, signal.SIGSTOP)
    try:
        assert sim.step("binance", count=BURST_EVENTS, symbol=SYMBOL)["events"] > 0
    finally:
        os.kill(obs.proc.pid, signal.SIGCONT)
    seen = [0]

    def backlog_seen():
        seen[0] = max(seen[0], book_row(client)["unread_bytes"])
        return seen[0] > 0

    wait(backlog_seen, "a stats sample showing the unread backlog", DEADLINE_S)
    return seen[0]


def check_obctl_shows_it(obs):
    env = dict(os.environ, OBSERVER_SOCKET=obs.socket_path)
    text = subprocess.run([sys.executable, "-m", "obclient.obctl", "stats"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert text.returncode == 0, text.stderr
    header = next(line for line in text.stdout.splitlines() if line.startswith("book "))
    assert "unread_b" in header.split()
    row = next(line for line in text.stdout.splitlines() if line.startswith(BOOK))
    assert row.split()[header.split().index("unread_b")] == "0"
    prom = subprocess.run([sys.executable, "-m", "obclient.obctl", "stats", "--prometheus"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert prom.returncode == 0, prom.stderr
    assert "# TYPE observer_book_unread_bytes gauge" in prom.stdout
    assert any(line.startswith("observer_book_unread_bytes{") and f'book="{BOOK}"' in line
               and line.endswith(" 0") for line in prom.stdout.splitlines())
