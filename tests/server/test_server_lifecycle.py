"""Observer process lifecycle: clean stops, one observer per name, kill -9 leaves nothing (C9)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import obclient
from kit.procs import (ObserverForker, ObserverProcess, processes_with, shm_entries,
                              unique_name, wait_until)

KILL_CYCLES = 50
WAIT_S = 30.0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_removes_socket_and_segment(signum):
    with ObserverProcess() as obs:
        obs.wait_ready().close()
        assert os.path.exists(obs.socket_path)
        assert shm_entries(obs.name) == []          # the segment is a memfd: never named
        assert obs.stop(signum) == (130 if signum == signal.SIGINT else 0)   # cli.py essay
        assert not os.path.exists(obs.socket_path)
        wait_until(lambda: not processes_with(obs.name), WAIT_S, "the reaper to exit")
        assert shm_entries(obs.name) == []
        assert "Traceback" not in obs.log_text()


REAPER_HELD_S = 0.3      # the watchdog's bound (50 ms) six times over


def test_a_clean_stop_waiting_for_a_slow_reaper_keeps_its_loop_running():
    """The clean stop waits for the reaper child, which on a busy machine may wait a while for
    a CPU. Held stopped (SIGSTOP) through the stop here: the observer still exits 0, and its
    loop ran meanwhile (a blocking waitpid in the stopping fiber was reported stalled)."""
    with ObserverProcess() as obs:
        obs.wait_ready().close()
        (reaper,) = children_of(obs.proc.pid)
        os.kill(reaper, signal.SIGSTOP)
        try:
            obs.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: not os.path.exists(obs.socket_path), WAIT_S,
                       "the stop to remove the socket (the reaper is next)")
            time.sleep(REAPER_HELD_S)          # what is held, not a wait for something
        finally:
            os.kill(reaper, signal.SIGCONT)
        assert obs.proc.wait(WAIT_S) == 0
        assert "observer_stopping" in obs.log_text()
        assert "fiber_stalled" not in obs.log_text()


def children_of(pid: int) -> list[int]:
    task_dir = f"/proc/{pid}/task"
    found = []
    for tid in os.listdir(task_dir):
        with open(f"{task_dir}/{tid}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


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
    obs = ObserverProcess()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(obs.socket_path)                       # bound, never listening: a dead server's
    stale.close()
    with obs:
        obs.wait_ready().close()


def test_bad_command_lines_are_one_line_errors():
    cases = [
        (["--feed", "nosuch:BTCUSD"], "exchange: must be one of"),
        (["--feed", "synthetic"], "expected EXCHANGE:SYMBOL"),
        ([], "no feeds"),
        (["--feed", "synthetic:BTCUSD", "--rate", "0"], "--rate: must be a finite number"),
    ]
    for args, text in cases:
        done = subprocess.run([sys.executable, "-m", "observer.cli", *args, "--name",
                               unique_name()], capture_output=True, text=True, timeout=WAIT_S)
        assert done.returncode == 2, args
        assert text in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def _connectable(path):
    try:
        obclient.connect(path, timeout_s=WAIT_S).close()
    except obclient.ObserverUnavailable:
        return False
    return True


def test_kill_9_cycles_leave_nothing_behind(tmp_path):
    """Each cycle: start an observer, serve, kill -9. The reaper removes the socket; the segment
    never had a name to leave; the lock is an abstract socket the kernel frees."""
    name = unique_name("k")
    path = str(tmp_path / "observer.sock")
    args = ["--feed", "synthetic:BTCUSD,ETHUSD", "--rate", "50", "--name", name, "--socket", path]
    # forked from one parent: 50 cycles cost 50 start-ups, not 50 interpreter and numpy imports
    with ObserverForker(args, tmp_path / "observer.log") as forker:
        for cycle in range(KILL_CYCLES):
            pid = forker.start()
            wait_until(lambda: _connectable(path), WAIT_S, f"observer up (cycle {cycle})")
            assert shm_entries(name) == [], cycle
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not os.path.exists(path), WAIT_S,
                       f"the socket to be removed after kill -9 (cycle {cycle})")
        assert forker.close() == 0
        wait_until(lambda: not processes_with(name), WAIT_S, "every observer process to be gone")
        assert shm_entries(name) == []
        assert sorted(os.listdir(tmp_path)) == ["observer.log"]
        assert "Traceback" not in (tmp_path / "observer.log").read_text()
        with ObserverProcess(name=name, socket_path=path) as again:   # name and path free
            again.wait_ready().close()


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
        assert client._att.reader.geometry.depth_max == 3      # the segment is sized by it
        snap = client.book("SOLUSD").snapshot()
        assert 1 <= snap.n_bids <= 3 and 1 <= snap.n_asks <= 3
        client.close()


def test_unusable_socket_directory_is_a_one_line_error(tmp_path):
    missing = str(tmp_path / "no" / "such" / "dir" / "observer.sock")
    done = subprocess.run([sys.executable, "-m", "observer.cli", "--feed", "synthetic:BTCUSD",
                           "--name", unique_name(), "--socket", missing],
                          capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 2
    assert f"cannot bind control socket {missing}" in done.stderr
    assert "Traceback" not in done.stderr


def _start_and_die_after_bind(path: str) -> int:
    """Fork a real supervisor (one shard, nothing else) that SIGKILLs itself the moment its
    control socket is bound and listening: the window the reaper must cover. Its pid."""
    pid = os.fork()
    if pid != 0:
        return pid
    try:
        from observer import loom
        from observer.server.control import ControlServer
        from observer.process.supervisor import Supervisor
        from obproto.layout import BookDesc

        bind = ControlServer.start

        def bind_then_die(server):
            bind(server)
            os.kill(os.getpid(), signal.SIGKILL)

        ControlServer.start = bind_then_die
        Supervisor(loom.Loop(), name=unique_name("b"), book_descs=[BookDesc("x", "Y", "y", 0)],
                   shards_n=1, depth_max=4, socket_path=path).start()
    finally:
        os._exit(1)                            # not reached: killed above


def test_a_kill_9_right_after_bind_leaves_no_socket_file(tmp_path):
    path = str(tmp_path / "observer.sock")
    pid = _start_and_die_after_bind(path)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    wait_until(lambda: not os.path.exists(path), WAIT_S, "the reaper to remove the socket file")


def test_a_reaper_told_nothing_leaves_what_is_not_a_dead_socket(tmp_path):
    """Without the socket's identity (its observer died before binding, or while binding), the
    reaper removes only a socket nobody listens on: never a file that is not a socket, never
    a socket a live server answers on."""
    from observer.process.reaper import Reaper

    not_socket = tmp_path / "plain"
    not_socket.write_text("precious")
    live_path = str(tmp_path / "live.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(live_path)
    live.listen(1)
    dead_path = str(tmp_path / "dead.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(dead_path)
    dead.close()
    try:
        for path in (str(not_socket), live_path, dead_path):
            Reaper(path).stop()                 # EOF with no identity; stop() reaps it
        assert not_socket.read_text() == "precious"
        assert os.path.exists(live_path)
        assert not os.path.exists(dead_path)
    finally:
        live.close()
