"""`observer --cores`: shard processes, restarts, clean stops and kill -9 cycles (C1, C9).

Real processes throughout: a supervisor and one pinned shard process per core, serving
synthetic feeds (the exchange path is tested end to end in tests/e2e). Waits are conditions
with deadlines, never fixed sleeps, so a busy machine only makes them slower.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import obclient
from observer import loom
from observer.process.instance import InstanceLock
from kit.procs import (ObserverForker, ObserverProcess, processes_with, shm_entries,
                              unique_name, wait_until)
from obproto import layout

from prockit import ALLOWED, TWO_CORES, Watcher, needs_two_cores

WAIT_S = 60.0
FEEDS = ["--feed", "synthetic:SOLUSD,XRPUSD"]         # with the harness's BTCUSD,ETHUSD feed


def _shards(client) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for b in client.books():
        out.setdefault(b.shard_index, []).append(b.name)
    return out


def _shard_row(client, index: int) -> dict:
    return client.stats().observer["shard_list"][index]


def _json_events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("backend", loom.available_backends())
@needs_two_cores
def test_killed_shard_restarts_resyncs_and_the_other_never_goes_stale(backend):
    obs = ObserverProcess(rate=100, extra_args=[*FEEDS, "--cores", TWO_CORES, "--backend",
                                                backend, "--log-format", "json"])
    with obs:
        client = obs.wait_ready()
        shards = _shards(client)
        assert sorted(shards) == [0, 1] and all(len(v) == 2 for v in shards.values())
        victim, other = shards[0], shards[1]
        stream = client.stream(victim + other)
        stream.poll()                                   # start the cursor here
        watcher = Watcher(obs.socket_path, other)
        watcher.start()
        generation = client.generation
        old = _shard_row(client, 0)
        other_pid = _shard_row(client, 1)["pid"]
        assert old["alive"] and old["core"] == ALLOWED[0] and old["restarts"] == 0

        kill_ns = time.time_ns()
        os.kill(old["pid"], signal.SIGKILL)
        records = []

        def stale_records_for_victim():
            records.extend(stream.poll())
            stale = {client.books()[r.book_index].name for r in records
                     if r.kind == layout.KIND_STALE}
            return set(victim) <= stale

        wait_until(stale_records_for_victim, WAIT_S, "the killed shard's books to go stale")

        def victim_fresh():
            records.extend(stream.poll())
            snaps = [client.snapshot(n, 0) for n in victim]
            return all(not s.stale and s.publish_ts_ns > kill_ns for s in snaps)

        wait_until(victim_fresh, WAIT_S, "the restarted shard to publish its books again")
        new = _shard_row(client, 0)
        assert new["restarts"] == 1 and new["alive"] and new["pid"] != old["pid"]
        assert _shard_row(client, 1)["pid"] == other_pid
        assert _shard_row(client, 1)["restarts"] == 0
        wait_until(lambda: all(watcher.last_seq[n] > watcher.first_seq[n] + 5 for n in other),
                   WAIT_S, "the other shard's books to keep changing")
        watcher.finish()
        assert watcher.stale_seen == []                  # never stale, read throughout
        assert watcher.reads > 10
        records.extend(stream.poll())
        index_of = {b.name: b.book_index for b in client.books()}
        assert not [r for r in records if r.kind == layout.KIND_STALE
                    and r.book_index in {index_of[n] for n in other}]
        assert client.attached and client.generation == generation and client.attaches == 1

        metrics = subprocess.run([sys.executable, "-m", "obclient.obctl", "--socket",
                                  obs.socket_path, "stats", "--prometheus"],
                                 capture_output=True, text=True, timeout=WAIT_S)
        assert metrics.returncode == 0, metrics.stderr
        assert (f'observer_shard_restarts_total{{instance_name="{obs.name}",shard="0"}} 1'
                in metrics.stdout.splitlines())
        client.close()
        assert obs.stop() == 0
        events = _json_events(obs.log_text())
        exits = [e for e in events if e["event"] == "shard_exit"]
        restarts = [e for e in events if e["event"] == "shard_restart"]
        assert len(exits) == 1 and len(restarts) == 1, events
        assert exits[0]["shard"] == 0 and exits[0]["reason"] == "killed by SIGKILL"
        assert set(exits[0]["books"].split(",")) == set(victim)
        assert restarts[0]["reason"] == "killed by SIGKILL"
        assert "Traceback" not in obs.log_text()


STOPS = [(b, signal.SIGTERM) for b in loom.available_backends()]
STOPS.append((loom.available_backends()[0], signal.SIGINT))


@pytest.mark.parametrize("backend,signum", STOPS)
@needs_two_cores
def test_sigterm_stops_every_shard_and_leaves_nothing(backend, signum):
    obs = ObserverProcess(extra_args=[*FEEDS, "--cores", TWO_CORES, "--backend", backend])
    with obs:
        client = obs.wait_ready()
        pids = [s["pid"] for s in client.stats().observer["shard_list"]]
        client.close()
        assert obs.stop(signum) == (130 if signum == signal.SIGINT else 0)    # cli.py essay
        assert not os.path.exists(obs.socket_path)
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid)
        wait_until(lambda: not processes_with(obs.name), WAIT_S, "every observer process gone")
        assert shm_entries(obs.name) == []
        lock = InstanceLock(obs.name)
        lock.acquire()                                    # the name is free
        lock.release()
        text = obs.log_text()
        assert "Traceback" not in text
        assert f"backend={backend}" in text.split("observer_ready", 1)[1].splitlines()[0]
        assert text.count("shard_started") == 2 and text.count("shard_stopped") == 2
        assert "shard_exit" not in text and "shard_kill" not in text     # an orderly stop
        assert all(f"backend={backend}" in line for line in text.splitlines()
                   if "shard_started" in line)


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def test_a_core_this_machine_lacks_is_a_clear_error_and_leaves_nothing(tmp_path):
    bad = [ALLOWED[-1] + 1, ALLOWED[-1] + 2]             # e.g. 2,3 on a 2-core machine
    name = unique_name("c")
    socket_path = str(tmp_path / "observer.sock")
    done = subprocess.run([sys.executable, "-m", "observer.cli", "--feed", "synthetic:BTCUSD",
                           "--cores", ",".join(map(str, bad)), "--name", name,
                           "--socket", socket_path],
                          capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"core(s) {bad[0]},{bad[1]} do not exist or are not allowed" in done.stderr
    assert f"allowed cores: {','.join(map(str, ALLOWED))}" in done.stderr
    assert os.listdir(tmp_path) == []
    assert shm_entries(name) == [] and processes_with(name) == []
    lock = InstanceLock(name)
    lock.acquire()
    lock.release()


# Each cycle forks a supervisor from a parent that imported the observer once (the zygote
# each supervisor starts is a fresh interpreter, and its shards are its forks, as in production).
# 25 cycles, each one until both shards run (forks of a zygote that has mapped the segment and
# imported a shard's modules: a whole start-up); kills from the first instant of start-up on are
# tests/process/test_startup_kills.py's.
KILL_CYCLES = 25
LIVE_EVERY = 5           # every 5th cycle waits until the shards serve before the kill


@needs_two_cores
@pytest.mark.xdist_group("busy_cores")     # never beside test_interrupt_crash's burners (why there)
def test_kill_9_cycles_of_the_multi_shard_observer_leave_nothing(tmp_path):
    name = unique_name("m")
    path = str(tmp_path / "observer.sock")
    shard_marker = f"observer.process.zygote --name {name} "
    args = ["--feed", "synthetic:BTCUSD,ETHUSD", "--feed", "synthetic:SOLUSD", "--rate", "50",
            "--cores", TWO_CORES, "--name", name, "--socket", path]
    with ObserverForker(args, tmp_path / "observer.log") as forker:
        for cycle in range(KILL_CYCLES):
            pid = forker.start()
            wait_until(lambda: len(processes_with(shard_marker, "ob-shard")) == 2, WAIT_S,
                       f"two shard processes (cycle {cycle})")
            if cycle % LIVE_EVERY == LIVE_EVERY - 1:
                wait_until(lambda: _books_live(path), WAIT_S, f"live books (cycle {cycle})")
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not os.path.exists(path), WAIT_S,
                       f"the socket removed after kill -9 (cycle {cycle})")
            wait_until(lambda: not processes_with(shard_marker), WAIT_S,
                       f"the zygote and shards to die with their supervisor (cycle {cycle})")
        assert forker.close() == 0
        wait_until(lambda: not processes_with(name), WAIT_S, "every observer process gone")
        assert shm_entries(name) == []
        assert sorted(os.listdir(tmp_path)) == ["observer.log"]
        assert "Traceback" not in (tmp_path / "observer.log").read_text()
        with ObserverProcess(name=name, socket_path=path,
                             extra_args=["--cores", TWO_CORES]) as again:   # all free
            again.wait_ready().close()


def _books_live(path) -> bool:
    try:
        with obclient.connect(path, timeout_s=WAIT_S) as client:
            return all(not client.snapshot(b.name, 0).stale for b in client.books())
    except obclient.ObserverUnavailable:
        return False


@needs_two_cores
def test_a_shard_that_ignores_sigterm_is_killed_after_the_deadline_and_a_twin_is_refused():
    """A stopped (SIGSTOP) shard cannot act on SIGTERM: the stop still ends, by SIGKILL after
    the supervisor's deadline. Meanwhile a second observer with the same name exits 3."""
    obs = ObserverProcess(extra_args=[*FEEDS, "--cores", TWO_CORES])
    with obs:
        client = obs.wait_ready()
        pids = [s["pid"] for s in client.stats().observer["shard_list"]]
        client.close()
        twin = subprocess.run([sys.executable, "-m", "observer.cli", "--feed", "synthetic:BTCUSD",
                               "--cores", TWO_CORES, "--name", obs.name, "--socket",
                               os.path.join(obs.workdir, "twin.sock")],
                              capture_output=True, text=True, timeout=WAIT_S)
        assert twin.returncode == 3 and "already running" in twin.stderr
        assert len(processes_with(f"observer.process.zygote --name {obs.name} ", "ob-shard")) == 2
        os.kill(pids[0], signal.SIGSTOP)
        assert obs.stop(signal.SIGTERM) == 0
        assert not os.path.exists(obs.socket_path)
        assert all(_zombie_or_gone(pid) for pid in pids)
        text = obs.log_text()
        assert text.count("shard_kill") == 1 and "shard=0" in text.split("shard_kill", 1)[1]
        assert "Traceback" not in text


@needs_two_cores
def test_a_dead_zygote_stops_the_observer_with_an_error_and_leaves_nothing():
    """No process can map the sealed segment writable once the zygote is gone, so no shard
    could ever restart: the observer says so once and exits 1, for a service manager to start
    the next generation."""
    obs = ObserverProcess(extra_args=[*FEEDS, "--cores", TWO_CORES, "--log-format", "json"])
    with obs:
        client = obs.wait_ready()
        shard_pids = [s["pid"] for s in client.stats().observer["shard_list"]]
        assert not client.snapshot("BTCUSD", 0).stale
        zygotes = processes_with(f"observer.process.zygote --name {obs.name} ", "ob-zygote")
        assert len(zygotes) == 1
        os.kill(zygotes[0], signal.SIGKILL)
        assert obs.proc.wait(WAIT_S) == 1
        wait_until(lambda: not processes_with(obs.name), WAIT_S, "every observer process gone")
        assert all(_zombie_or_gone(pid) for pid in shard_pids)
        assert not os.path.exists(obs.socket_path)
        assert shm_entries(obs.name) == []
        wait_until(lambda: client.snapshot("BTCUSD", 0).stale, WAIT_S, "the client to see it")
        client.close()
        text = obs.log_text()
        exits = [e for e in _json_events(text) if e["event"] == "zygote_exit"]
        assert len(exits) == 1, text
        assert exits[0]["zygote_pid"] == zygotes[0] and exits[0]["reason"] == "killed by SIGKILL"
        assert "observer: stopped: zygote exited (killed by SIGKILL)" in text
        assert "Traceback" not in text
