"""Slots on the control socket, against a real observer process: the idle limit and pings, the
per-process limit, and BUSY (never a reset) when the observer is out of file descriptors."""

import os
import resource
import select
import subprocess
import sys
import time

import orjson
import pytest

import obclient
from obclient.protocol import ClientProtocol
from observer import loom
from kit.procs import ObserverProcess, wait_until
from obproto import messages as m

from test_server_hostile import (REPLY_WAIT_S, await_reply, hello, open_fds, raw_connect,
                                 read_messages, read_until_closed)

IDLE_S = 1.5                     # small, so that several idle periods pass in a test
PER_PID_DEFAULT = 32             # observer/config/settings.py CLIENTS_PER_PID_MAX, the shipped default
STALE_AFTER_S = 60.0             # only the socket may detach these clients, not a starved heartbeat


@pytest.fixture(scope="module")
def observer(tmp_path_factory):
    config = tmp_path_factory.mktemp("limits") / "observer.toml"
    config.write_text(f'[observer]\nclient_idle_s = {IDLE_S}\nlog_format = "json"\n')
    with ObserverProcess(rate=500, extra_args=["--config", str(config)]) as obs:
        obs.wait_ready().close()
        yield obs


def hello_or_refusal(sock):
    """The `welcome`, or the `error` the server closed us with."""
    proto = ClientProtocol("many")
    req_id, data = proto.hello(want_fds=False)
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass                                  # refused and closed before our hello went out
    while (reply := proto.take_reply(req_id)) is None:
        try:
            more = read_messages(sock, proto)
        except ConnectionResetError:
            more = b""         # (our hello arrived as the server closed): after its error
        if not more:
            assert proto.unsolicited_errors, "closed without a word"
            return proto.unsolicited_errors[-1]
    return reply


def test_welcome_tells_the_idle_limit(observer):
    sock, proto = raw_connect(observer.socket_path), ClientProtocol("t")
    welcome = hello(sock, proto)
    assert welcome.version == 2
    assert welcome.idle_s == IDLE_S
    sock.close()


def test_a_peer_that_says_hello_and_then_nothing_is_closed_with_idle(observer):
    sock, proto = raw_connect(observer.socket_path), ClientProtocol("silent")
    hello(sock, proto)
    read_until_closed(sock, proto)          # no timing asserted: it ends, and says why
    error = proto.unsolicited_errors[-1]
    assert error.code == m.ErrorCode.IDLE
    assert f"client_idle_s={IDLE_S:g}" in error.message
    sock.close()


def test_bytes_that_never_make_a_message_do_not_keep_a_connection(observer):
    sock, proto = raw_connect(observer.socket_path), ClientProtocol("trickle")
    hello(sock, proto)
    _, frame = proto.request(m.ListBooks)
    sock.settimeout(IDLE_S / 4)
    try:
        for byte in frame[:-1]:             # one byte of a request every idle_s / 4
            sock.send(bytes([byte]))
            try:
                if not read_messages(sock, proto):
                    break
            except TimeoutError:
                continue
        sock.settimeout(REPLY_WAIT_S)
        read_until_closed(sock, proto)
    except (BrokenPipeError, ConnectionResetError):
        pass                                # a byte sent as it closed us: after its error
    assert proto.unsolicited_errors[-1].code == m.ErrorCode.IDLE
    sock.close()


def test_a_peer_that_pings_stays_past_several_idle_periods(observer):
    sock, proto = raw_connect(observer.socket_path), ClientProtocol("pinger")
    hello(sock, proto)
    deadline_s = time.monotonic() + 2.5 * IDLE_S
    while time.monotonic() < deadline_s:
        sock.sendall(m.PING_FRAME)          # no reply to a ping
        time.sleep(IDLE_S * m.PING_AFTER_IDLE_FRACTION / 2)
    req_id, data = proto.request(m.ListBooks)
    sock.sendall(data)
    assert type(await_reply(sock, proto, req_id)) is m.BookList
    assert not proto.unsolicited_errors
    sock.close()


@pytest.mark.parametrize("busy_poll", [False, True])
def test_an_obclient_following_updates_stays_attached_for_several_idle_periods(observer,
                                                                               busy_poll):
    client = obclient.connect(observer.socket_path, client_name="follower",
                              stale_after_s=STALE_AFTER_S)
    deadline_s = time.monotonic() + 2.5 * IDLE_S
    records = 0
    for _ in client.updates(["BTCUSD"], timeout_s=REPLY_WAIT_S, busy_poll=busy_poll):
        records += 1
        if time.monotonic() > deadline_s:
            break
    assert records > 0
    assert client.attaches == 1
    assert client.detaches == 0, client.detach_reason
    assert client._att.pings >= 2
    client.close()


def test_an_obclient_reading_snapshots_stays_attached_for_several_idle_periods(observer):
    client = obclient.connect(observer.socket_path, client_name="reader",
                              stale_after_s=STALE_AFTER_S)
    book = client.book("BTCUSD")
    deadline_s = time.monotonic() + 2.5 * IDLE_S
    while time.monotonic() < deadline_s:
        assert not book.snapshot(1).stale
        time.sleep(0.05)
    assert client.detaches == 0, client.detach_reason
    assert client._att.pings >= 2             # sent from the snapshot calls alone
    client.close()


def test_an_obclient_closed_for_idleness_reattaches_at_its_next_call(observer):
    """An application that makes no call for longer than idle_s is closed; its next call
    reattaches at once and answers from the live book."""
    client = obclient.connect(observer.socket_path, client_name="sleeper")
    poller = select.poll()
    poller.register(client._att.sock, select.POLLRDHUP)
    assert poller.poll(REPLY_WAIT_S * 1000)   # closed by the server while we made no call
    snap = client.snapshot("BTCUSD", 1)
    assert not snap.stale
    assert client.detaches == 1
    assert "IDLE" in client.detach_reason
    assert client.attaches == 2
    client.close()


def test_one_process_cannot_take_every_slot(observer):
    """One process opening 256 connections gets clients_per_pid_max of them and a BUSY naming
    that limit for the rest; another process is still served; the silent ones go at idle_s."""
    socks, results = [], []
    try:
        for _ in range(256):
            sock = raw_connect(observer.socket_path)
            socks.append(sock)
            results.append(hello_or_refusal(sock))
            for held, result in zip(socks, results):   # however slow this loop: none goes idle
                if type(result) is m.Welcome:
                    held.sendall(m.PING_FRAME)
        kinds = [type(r) for r in results]
        assert kinds.count(m.Welcome) == PER_PID_DEFAULT
        busy = [r for r in results if type(r) is m.Error]
        assert {r.code for r in busy} == {m.ErrorCode.BUSY}
        assert {r.message for r in busy} == {
            f"clients_per_pid_max={PER_PID_DEFAULT} reached for pid {os.getpid()}"}
        done = subprocess.run([sys.executable, "-m", "obclient.obctl", "--socket",
                               observer.socket_path, "list"],
                              capture_output=True, text=True, timeout=REPLY_WAIT_S)
        assert done.returncode == 0, done.stderr
        for sock, result in zip(socks, results):        # silent from now on
            if type(result) is m.Welcome:
                proto = ClientProtocol()
                read_until_closed(sock, proto)
                assert proto.unsolicited_errors[-1].code == m.ErrorCode.IDLE
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: observer_clients(observer) == 0, REPLY_WAIT_S, "our slots to come back")
    sock = raw_connect(observer.socket_path)
    assert type(hello_or_refusal(sock)) is m.Welcome
    sock.close()


def observer_clients(observer) -> int:
    """Connections the observer holds now, besides the one asking (a process of its own)."""
    done = subprocess.run([sys.executable, "-m", "obclient.obctl", "--socket",
                           observer.socket_path, "stats", "--json"],
                          capture_output=True, text=True, timeout=REPLY_WAIT_S)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)["observer"]["clients"] - 1


@pytest.mark.parametrize("backend", loom.available_backends())
def test_out_of_fds_a_new_peer_gets_busy_not_a_reset(backend):
    with ObserverProcess(rate=50, extra_args=["--backend", backend]) as obs:
        obs.wait_ready().close()
        pid = obs.proc.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        socks, results = [], []
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds(pid) + 3, hard))
        try:
            for _ in range(12):
                sock = raw_connect(obs.socket_path)
                sock.settimeout(5.0)             # a peer left in the backlog fails here
                socks.append(sock)
                results.append(hello_or_refusal(sock))
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        welcomes = [r for r in results if type(r) is m.Welcome]
        busy = [r for r in results if type(r) is m.Error]
        assert len(welcomes) + len(busy) == len(results)
        assert busy
        assert {r.code for r in busy} == {m.ErrorCode.BUSY}
        assert all("out of file descriptors (EMFILE)" in r.message for r in busy)
        for sock in socks:
            sock.close()
        client = obclient.connect(obs.socket_path)       # fds back: served again
        assert not client.snapshot("BTCUSD", 1).stale
        client.close()


def test_json_log_keeps_a_hostile_client_name_exact_and_inert(observer):
    from test_server_hostile import EVIL_NAME, UNSAFE_BYTES

    client = obclient.connect(observer.socket_path, client_name=EVIL_NAME)
    client.close()

    def disconnect_line():
        for line in observer.log_text().splitlines():
            if line.startswith("{") and "client_disconnected" in line:
                record = orjson.loads(line)
                if record.get("client") == EVIL_NAME:
                    return line
        return None

    line = wait_until(disconnect_line, REPLY_WAIT_S, "the disconnect line")
    for unsafe in UNSAFE_BYTES:
        assert unsafe not in line.encode()
