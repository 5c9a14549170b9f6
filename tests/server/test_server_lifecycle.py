"""Observer process lifecycle: clean stops, one observer per name, kill -9 leaves nothing (C9)."""

import os
import signal
import socket
import subprocess
import sys

import pytest

import obclient
from observer.testing import ObserverProcess, processes_with, shm_entries, unique_name, wait_until

KILL_CYCLES = 50
WAIT_S = 30.0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_removes_socket_and_segment(signum):
    with ObserverProcess() as obs:
        obs.wait_ready().close()
        assert os.path.exists(obs.socket_path)
        assert shm_entries(obs.name) == []          # the name is unlinked at start-up
        assert obs.stop(signum) == 0
        assert not os.path.exists(obs.socket_path)
        wait_until(lambda: not processes_with(obs.name), WAIT_S, "the reaper to exit")
        assert shm_entries(obs.name) == []
        assert "Traceback" not in obs.log_text()


def test_second_observer_with_same_name_refuses_while_first_lives():
    with ObserverProcess() as first:
        first.wait_ready().close()
        second_socket = os.path.join(first.workdir, "second.sock")
        second = subprocess.run(
            [sys.executable, "-m", "observer.cli", "--feed", "synthetic:BTCUSD",
             "--name", first.name, "--socket", second_socket],
            capture_output=True, text=True, timeout=WAIT_S)
        assert second.returncode == 3
        assert "already running" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert not os.path.exists(second_socket)
        client = obclient.connect(first.socket_path)       # the first is untouched
        assert not client.snapshot("BTCUSD").stale
        client.close()
        first.kill()
        with ObserverProcess(name=first.name) as again:    # the name is free once it died
            again.wait_ready().close()


def test_second_observer_on_a_live_socket_refuses():
    with ObserverProcess() as first:
        first.wait_ready().close()
        second = subprocess.run(
            [sys.executable, "-m", "observer.cli", "--feed", "synthetic:BTCUSD",
             "--name", unique_name(), "--socket", first.socket_path],
            capture_output=True, text=True, timeout=WAIT_S)
        assert second.returncode == 3
        assert "another observer is serving" in second.stderr
        assert os.path.exists(first.socket_path)


def test_stale_socket_file_is_replaced():
    with ObserverProcess() as obs:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(obs.socket_path)                   # bound, never listening: a dead server's
        stale.close()
        obs.start()
        obs.wait_ready().close()


def test_bad_command_lines_are_one_line_errors():
    cases = [
        (["--feed", "nosuch:BTCUSD"], "unknown exchange"),
        (["--feed", "synthetic"], "expected EXCHANGE:SYMBOL"),
        ([], "no feeds"),
        (["--feed", "synthetic:BTCUSD", "--rate", "0"], "--rate must be positive"),
    ]
    for args, text in cases:
        done = subprocess.run([sys.executable, "-m", "observer.cli", *args, "--name",
                               unique_name()], capture_output=True, text=True, timeout=WAIT_S)
        assert done.returncode == 2, args
        assert text in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_kill_9_cycles_leave_nothing_behind():
    """Each cycle: start, serve live books, kill -9. The reaper removes the socket; the segment
    never had a name to leave; the lock is an abstract socket the kernel frees."""
    name = unique_name("k")
    with ObserverProcess(name=name, rate=50) as obs:
        for cycle in range(KILL_CYCLES):
            if cycle:
                obs.start()
            client = obs.wait_ready(books_live=cycle % 10 == 0)
            client.close()
            assert shm_entries(name) == [], cycle
            obs.kill()
            wait_until(lambda: not os.path.exists(obs.socket_path), WAIT_S,
                       f"the socket to be removed after kill -9 (cycle {cycle})")
        wait_until(lambda: not processes_with(name), WAIT_S, "every observer process to be gone")
        assert shm_entries(name) == []
        assert os.listdir(obs.workdir) == [os.path.basename(obs.log_path)]
        assert "Traceback" not in obs.log_text()


def test_config_file_sets_depth_and_feeds(tmp_path):
    config = tmp_path / "observer.toml"
    config.write_text('[observer]\ndepth = 3\n\n[[feed]]\nexchange = "synthetic"\n'
                      'symbols = ["SOLUSD"]\nrate_hz = 50.0\n')
    obs = ObserverProcess(extra_args=["--config", str(config)], workdir=str(tmp_path))
    obs.args.remove("--feed")
    obs.args.remove("synthetic:BTCUSD,ETHUSD")              # the file names the feeds
    with obs:
        client = obs.wait_ready()
        assert [b.name for b in client.books()] == ["synthetic:SOLUSD"]
        snap = client.book("SOLUSD").snapshot()
        assert snap.n_bids == 3 and snap.n_asks == 3
        client.close()
