"""obsim as a process: its start-up line, control API, start-time faults, clean exits."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from obsim.harness import Obsim, ObsimError
from kit.procs import wait_until

WAIT_S = 15.0
TICKED_EVENTS = 10      # Kraken events at --rate 50: a fifth of a second of the sim's ticks
ALL = ["binance", "binance-futures", "coinbase", "kraken", "okx", "bybit", "bybit-linear"]


def test_start_line_names_every_venue_and_exit_removes_temp_files():
    sim = Obsim(["--coinbase-depth", "200"])
    sim.start()
    try:
        info = sim.info
        assert set(info["exchanges"]) == set(ALL)
        paths = {"kraken": "/v2", "okx": "/ws/v5/public", "bybit": "/v5/public/spot",
                 "bybit-linear": "/v5/public/linear", "binance": "", "coinbase": ""}
        for name, path in paths.items():
            url = info["exchanges"][name]["ws_url"]
            assert url.startswith("wss://127.0.0.1:") and url.endswith(path)
            assert info["exchanges"][name]["rest_url"].startswith("https://127.0.0.1:")
        assert info["control_url"].startswith("https://127.0.0.1:")
        ca = Path(info["ca_file"])
        assert ca.read_text().startswith("-----BEGIN CERTIFICATE-----")
        assert sim.call("GET", "/info") == info
        proc = sim.proc
        sim.proc.send_signal(signal.SIGTERM)
        assert sim.proc.wait(10) == 0
        assert not ca.parent.exists()           # obsim removed its own files on SIGTERM
    finally:
        sim.stop()
    assert proc.returncode == 0


def test_sigint_also_exits_cleanly():
    sim = Obsim(["--exchanges", "okx"])
    sim.start()
    ca_dir = Path(sim.ca_file).parent
    sim.proc.send_signal(signal.SIGINT)
    assert sim.proc.wait(10) == 0
    assert not ca_dir.exists()                  # obsim removed its own files
    sim.stop()


def test_tls_is_real_a_client_without_the_ca_is_refused():
    with Obsim(["--exchanges", "binance"]) as sim:
        import http.client
        from urllib.parse import urlsplit
        split = urlsplit(sim.rest_url("binance"))
        conn = http.client.HTTPSConnection(split.hostname, split.port, context=ssl.create_default_context(),
                                           timeout=10)
        with pytest.raises(ssl.SSLCertVerificationError):
            conn.request("GET", "/api/v3/depth?symbol=BTCUSDT")
        conn.close()


def test_bad_arguments_fail_clearly():
    with pytest.raises(ObsimError, match="unknown exchange 'nope'"):
        with Obsim(["--exchanges", "nope"]):
            pass
    with pytest.raises(ObsimError, match="needs --recordings"):
        with Obsim(["--source", "replay"]):
            pass
    result = subprocess.run([sys.executable, "-m", "obsim.cli", "--rate", "fast"],
                            capture_output=True, timeout=30)
    assert result.returncode == 2 and b"--rate" in result.stderr


def test_fault_at_start_and_step_while_paused():
    with Obsim(["--exchanges", "kraken,binance", "--fault", "kraken:gap:at_s=0.2,count=2",
                "--fault", "binance:rest_429", "--rate", "50"]) as sim:
        wait_until(lambda: sim.counters("kraken").get("faults_injected", 0) >= 1, WAIT_S,
                   "the start-time fault injected")
        status, _ = sim.request(sim.rest_url("binance"), "GET", "/api/v3/depth", {"symbol": "BTCUSDT"})
        assert status == 429
        sim.pause("binance")
        before = sim.book("binance", "ETHUSDT")
        # Paused, nothing moves: shown once the sim has ticked on (Kraken, still running and
        # ticked in the same turns, made TICKED_EVENTS events), not after a wall-clock wait.
        kraken = sim.info["exchanges"]["kraken"]["symbols"][0]
        kraken_events = sim.book("kraken", kraken)["events"]
        wait_until(lambda: sim.book("kraken", kraken)["events"] >= kraken_events + TICKED_EVENTS,
                   WAIT_S, "kraken ticked on while binance is paused")
        assert sim.book("binance", "ETHUSDT") == before
        assert sim.step("binance", count=7, symbol="ETHUSDT") == {"events": 7, "messages": 0}  # no subscriber
        after = sim.book("binance", "ETHUSDT")
        assert after["events"] == before["events"] + 7 and after["sequence"] > before["sequence"]
        with pytest.raises(ObsimError, match="no route"):
            sim.call("GET", "/nope")
        with pytest.raises(ObsimError, match="has no symbol"):
            sim.book("binance", "NOPE")
        with pytest.raises(ObsimError, match="depth"):
            sim.call("GET", "/book", exchange="binance", symbol="BTCUSDT", depth="x")
        status, body = sim.request(sim.rest_url("kraken"), "GET", "/api/v3/depth")
        assert status == 404 and "error" in json.loads(body)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_obsim_exits_when_the_process_that_started_it_dies():
    # A parent that starts obsim through the harness and is then killed without cleaning up.
    script = ("import sys, time; from obsim.harness import Obsim; s = Obsim(['--exchanges', 'okx']); "
              "s.start(); print(s.proc.pid, s.ca_file, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        pid_text, ca_file = parent.stdout.readline().decode().split()
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    pid = int(pid_text)
    wait_until(lambda: not _running(pid), WAIT_S, "obsim to end with its parent")
    assert not Path(ca_file).parent.exists()            # and it cleaned up on the way out
    Path(ca_file).parent.parent.rmdir()                 # the dead parent's harness directory
