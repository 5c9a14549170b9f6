"""Clients cannot disturb each other or write the segment, whatever their uid (C6, C8).

A real observer, a victim and a hostile client, each its own process, meeting only through the
control socket and what it passes (tests/server/isolation_peers.py). Facts, not durations: every
record reaches the victim, every one of its waits ended by an event rather than by its (long)
timeout, each write path is refused with the kernel's reason and the bytes aimed at are
unchanged.

Who plays the "same uid". Run as root (here and on CI), root's own rights would make the test
prove nothing: root may ptrace anyone. The interpreter of this host is not readable by other
uids, so the unprivileged same-uid pair is the observer and the hostile client both as uid 0
with every capability dropped (setpriv clears the bounding set, so their exec regains none): the
kernel then treats them as two processes of one ordinary uid. Run as anyone else, both are that
user. Another uid in `allow_uids` is played by a hostile that drops to uid 65534 after its
imports (root only: only root can become another uid).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kit.procs import ObserverProcess
from obproto import layout

PEERS = Path(__file__).resolve().parent / "isolation_peers.py"
WAIT_S = 60.0                 # deadlines for "until" steps only
VICTIM_WAIT_S = 5.0           # the victim's own wait timeout: long, so a timeout is a fact
VICTIM_RECORDS = 300
NOBODY = 65534
ROOT = os.geteuid() == 0
ALLOWED_CORES = sorted(os.sched_getaffinity(0))
TWO_CORES = ",".join(map(str, ALLOWED_CORES[:2]))


def _unprivileged() -> list[str]:
    """The command prefix that makes a root process an ordinary one of the same uid."""
    if not ROOT:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, and setpriv (util-linux) is missing to drop capabilities")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all"]


def _peer(mode: str, *args, launcher=()) -> subprocess.Popen:
    return subprocess.Popen([*launcher, sys.executable, str(PEERS), mode, *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _line(proc: subprocess.Popen, timeout_s: float = WAIT_S) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"peer {proc.pid} said nothing within {timeout_s} s"
    line = proc.stdout.readline()
    assert line, f"peer {proc.pid} exited early with {proc.wait()}"
    return line.strip()


def _end(*procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


# -- point 1: wake-ups -------------------------------------------------------------------------

HOSTILES = [pytest.param((), id="same-uid"),
            pytest.param(("--as-uid", NOBODY), id="allowed-uid", marks=pytest.mark.skipif(
                not ROOT, reason="only root can act as another uid (65534)"))]


@pytest.mark.parametrize("as_uid", HOSTILES)
def test_a_hostile_client_cannot_delay_or_steal_a_victims_wakeups(as_uid):
    obs = ObserverProcess(rate=200)
    os.chmod(obs.workdir, 0o755)
    config = Path(obs.workdir) / "observer.toml"
    config.write_text(f"[observer]\nallow_uids = [{NOBODY}]\n")
    obs.args += ["--config", str(config)]
    with obs:
        obs.wait_ready().close()
        os.chmod(obs.socket_path, 0o666)         # the operator lets the allowed uid reach it
        victim = _peer("victim", obs.socket_path, VICTIM_RECORDS, VICTIM_WAIT_S)
        hostile = None
        try:
            assert _line(victim) == "ready"                 # attached before the attack
            hostile = _peer("hostile-wake", obs.socket_path, *as_uid)
            assert _line(hostile) == "attacking"
            victim.stdin.write("go\n")
            victim.stdin.flush()
            got = json.loads(_line(victim))
            hostile.stdin.close()
            did = json.loads(_line(hostile))
            eventfds = _observer_eventfds(obs.proc.pid) if ROOT else []
        finally:
            _end(victim, *([hostile] if hostile else []))
    # Every record reached the victim, and it always woke because of one.
    assert got["by_timeout"] == 0, got
    assert got["waits"] == got["by_event"] > 0, got
    assert got["overruns"] == 0, got
    assert got["records"] == got["published"] >= VICTIM_RECORDS, got
    # The hostile really tried, and what it was handed refused or shrugged off each attempt.
    assert did["rounds"] > 1 and did["held"] == 0, did
    for key, value in did["first"].items():
        attempt = key.split(":", 1)[1]
        # reopen: ENXIO (an epoll has nothing to open), or EACCES first for a process that
        # changed uid (the kernel made it non-dumpable, so its /proc/self is root's)
        expected = {"read": {"EINVAL"}, "write_saturate": {"EINVAL"},
                    "reopen": {"ENXIO", "EACCES"}, "clear_nonblock": {"allowed"},
                    "epoll_wait": {"allowed"}, "add_own_fd": {"allowed"}}[attempt]
        assert value in expected, (key, value)
    assert did["closes"] == ["allowed"] * len(did["closes"])
    # Seen by root only (the observer is not dumpable): the shard's eventfd itself is still
    # non-blocking, so its write can never block, and far from saturation, so it never fails.
    for flags, count in eventfds:
        assert flags & os.O_NONBLOCK, oct(flags)
        assert count < 2**63, count


def _observer_eventfds(pid: int) -> list[tuple[int, int]]:
    """(open flags, counter) of every eventfd the observer process holds, from fdinfo."""
    found = []
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{entry}") != "anon_inode:[eventfd]":
                continue
            with open(f"/proc/{pid}/fdinfo/{entry}") as f:
                info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except FileNotFoundError:
            continue
        found.append((int(info["flags"].strip(), 8), int(info["eventfd-count"].strip(), 16)))
    assert found
    return found


# -- point 2: the segment's bytes and the observer's processes --------------------------------

# What every attempt must give, by the attacker's relation to the observer. "allowed" where the
# attempt is harmless by itself (the reopen and fchmod of a same-uid owner); the writes through
# what it got are then refused by the seals.
SAME_UID = {
    "handed_mmap_write": "EACCES", "handed_mprotect_write": "EACCES", "handed_pwrite": "EBADF",
    "handed_ftruncate": "EINVAL", "handed_fallocate_punch": "EBADF", "reopen_rdwr": "EACCES",
    "fchmod_0600": "allowed", "reopen_rdwr_after_fchmod": "allowed",
    "reopened_mmap_write": "EPERM", "reopened_mprotect_write": "EACCES",
    "reopened_pwrite": "EPERM", "reopened_ftruncate": "EPERM",
    "reopened_fallocate_punch": "EPERM", "reopened_write_state": "EPERM",
}
OTHER_UID = {**{k: v for k, v in SAME_UID.items() if not k.startswith("reopened_")},
             "fchmod_0600": "EPERM", "reopen_rdwr_after_fchmod": "EACCES"}
PROCESS_ATTEMPTS = {"proc_fd_open": "EACCES", "proc_mem": "EACCES", "pidfd_getfd": "EPERM",
                    "ptrace_attach": "EPERM", "process_vm_writev": "EPERM"}


def _observer_with_shards(launcher, config_text: str | None = None) -> ObserverProcess:
    """An observer with two shard processes, its private directory open to other uids."""
    obs = ObserverProcess(rate=100, launcher=launcher, extra_args=["--cores", TWO_CORES])
    os.chmod(obs.workdir, 0o755)
    if config_text is not None:
        config = Path(obs.workdir) / "observer.toml"
        config.write_text(config_text)
        obs.args += ["--config", str(config)]
    return obs


def _assert_refused(did: dict, expected: dict) -> None:
    tried = did["tried"]
    for attempt, outcome in expected.items():
        assert tried[attempt] == outcome, (attempt, tried[attempt])
    roles = [k[: -len("_ptrace_attach")] for k in tried if k.endswith("_ptrace_attach")]
    assert "supervisor" in roles and "zygote" in roles, roles
    assert sum(r.startswith("shard_") for r in roles) == 2, roles
    for role in roles:
        for attempt, outcome in PROCESS_ATTEMPTS.items():
            assert tried[f"{role}_{attempt}"] == outcome, (role, attempt)
    assert did["descs_unchanged"] and did["magic_unchanged"], did
    assert did["state"] == layout.STATE_LIVE, did


@pytest.mark.skipif(len(ALLOWED_CORES) < 2, reason="needs two allowed cores for two shards")
def test_a_same_uid_client_cannot_write_the_segment_or_reach_the_observers_processes():
    launcher = _unprivileged()
    with _observer_with_shards(launcher) as obs:
        client = obs.wait_ready()
        hostile = _peer("hostile-write", obs.socket_path, launcher=launcher)
        try:
            did = json.loads(_line(hostile))
        finally:
            _end(hostile)
        assert not client.snapshot("BTCUSD", 0).stale          # still serving, still live
        # A write of the header's state would have detached it as "observer shut down"; a
        # detach for a late heartbeat (a loaded host) is not the hostile's doing.
        assert client.attached and "shut down" not in client.detach_reason
        client.close()
        assert obs.stop() == 0
    _assert_refused(did, SAME_UID)


@pytest.mark.skipif(not ROOT, reason="only root can act as another uid (65534)")
@pytest.mark.skipif(len(ALLOWED_CORES) < 2, reason="needs two allowed cores for two shards")
def test_another_allowed_uid_gets_the_same_refusals():
    launcher = _unprivileged()
    with _observer_with_shards(launcher, f"[observer]\nallow_uids = [{NOBODY}]\n") as obs:
        client = obs.wait_ready()
        os.chmod(obs.socket_path, 0o666)         # the operator lets that uid reach the socket
        hostile = _peer("hostile-write", obs.socket_path, "--as-uid", NOBODY)
        try:
            did = json.loads(_line(hostile))
        finally:
            _end(hostile)
        assert not client.snapshot("BTCUSD", 0).stale
        client.close()
        assert obs.stop() == 0
    _assert_refused(did, OTHER_UID)
